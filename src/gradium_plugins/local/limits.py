"""Limits of the local server: timeouts, connection cap, byte budgets, history, input validation.

Defaults are safe for a server that runs for days on a shared machine; every one can be changed
(``serve(limits=ServerLimits(...))`` or the ``serve`` command's flags, see the docs' local server
page). None switches a limit off.
"""

from __future__ import annotations

import asyncio
import struct
from collections import deque
from dataclasses import dataclass

from ..audio import Int16Array

#: Sample rates a WAV input header may declare.
WAV_MIN_RATE = 8000
WAV_MAX_RATE = 48000
#: Bits per sample a WAV input header may declare.
WAV_BITS = (8, 16, 24, 32)
_PCM_TAGS = (1, 0xFFFE)  # integer PCM, WAVE_FORMAT_EXTENSIBLE


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """What one client may cost the local server, and how long it may wait.

    Attributes:
        max_connections: WebSocket connections open at once; one more is refused with HTTP 503
            before the handshake completes.
        handshake_timeout_s: Time a client has to complete the HTTP/WebSocket handshake (an
            unfinished request, "slowloris", is dropped).
        setup_timeout_s: Time from the handshake to the first ``setup``; then ``error`` 1008 and
            close 1008.
        idle_timeout_s: Longest silence of a client while the server waits for its ``audio``,
            ``end_of_stream`` or next ``setup`` (``close_ws_on_eos`` false); then ``error`` 1008 and
            close 1008. Real-time clients send a message every 80 ms; the plugins' session
            treats this error as final, so a client that may pause longer should send silence.
        send_timeout_s: Longest time one outgoing message may wait for the client to read;
            then the connection ends (``error`` 1008 if it still fits, then close or TCP abort).
        max_message_bytes: Largest client message (the JSON text, base64 audio included); a
            larger one is refused by a close 1009.
        max_queued_messages: Client messages buffered before the server stops reading the socket.
        max_input_buffer_bytes: Decoded input audio waiting for the engine; at the budget the
            server stops reading the socket, so TCP pushes back on a client faster than the
            engine (a file sent faster than real time waits, it is not cut).
        history: Connection records kept in ``LocalServer.connections`` (the most recent).
    """

    max_connections: int | None = 256
    handshake_timeout_s: float | None = 10.0
    setup_timeout_s: float | None = 10.0
    idle_timeout_s: float | None = 300.0
    send_timeout_s: float | None = 30.0
    max_message_bytes: int = 2**20
    max_queued_messages: int = 4
    max_input_buffer_bytes: int = 2**20
    history: int = 1000

    def __post_init__(self) -> None:
        for name in ("handshake_timeout_s", "setup_timeout_s", "idle_timeout_s", "send_timeout_s"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be > 0 or None")
        if self.max_connections is not None and self.max_connections < 1:
            raise ValueError("max_connections must be >= 1 or None")
        for name in ("max_message_bytes", "max_queued_messages", "max_input_buffer_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.history < 0:
            raise ValueError("history must be >= 0")


class InputBuffer:
    """Decoded input waiting for the engine, bounded in bytes and in chunks.

    One producer (the socket reader) and one consumer (the engine). ``put`` waits while the
    buffer is full; a chunk larger than the whole budget still passes once the buffer is empty.
    ``None`` marks the end of the input.
    """

    def __init__(self, max_bytes: int, max_items: int) -> None:
        self._items: deque[Int16Array | None] = deque()
        self._max_bytes = max_bytes
        self._max_items = max_items
        self.bytes = 0
        self.peak = 0
        self._space = asyncio.Event()
        self._filled = asyncio.Event()

    def empty(self) -> bool:
        """Whether nothing waits."""
        return not self._items

    async def put(self, item: Int16Array | None) -> None:
        """Add a chunk (None: end of input), waiting for room."""
        size = 0 if item is None else item.nbytes
        while self._items and (self.bytes + size > self._max_bytes or len(self._items) >= self._max_items):
            self._space.clear()
            await self._space.wait()
        self._items.append(item)
        self.bytes += size
        self.peak = max(self.peak, self.bytes)
        self._filled.set()

    async def get(self) -> Int16Array | None:
        """Take the oldest chunk, waiting for one."""
        while not self._items:
            self._filled.clear()
            await self._filled.wait()
        item = self._items.popleft()
        if item is not None:
            self.bytes -= item.nbytes
        self._space.set()
        return item


@dataclass(frozen=True, slots=True)
class WavInfo:
    """The format a WAV input header declares."""

    channels: int
    sample_rate: int
    bits: int


def check_wav_header(data: bytes) -> WavInfo:
    """Validate the RIFF/WAVE header at the start of a client's first WAV payload.

    The whole header (up to the ``data`` chunk) must be in that payload. Accepted: integer PCM,
    :data:`WAV_MIN_RATE`-:data:`WAV_MAX_RATE` Hz, one or more channels, 8/16/24/32-bit samples.

    Raises:
        ValueError: What is wrong, naming the field (the server's ``error`` 1008 message).
    """
    if data[8:12] != b"WAVE":
        raise ValueError("WAV header: not a RIFF/WAVE header")
    info: WavInfo | None = None
    pos = 12
    while pos + 8 <= len(data):
        cid, size = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        if cid == b"fmt ":
            if size < 16:
                raise ValueError(f"WAV header: fmt chunk is {size} bytes, expected at least 16")
            if pos + 24 > len(data):
                raise ValueError(
                    "WAV header: fmt chunk is truncated; send the whole header in the first message"
                )
            tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", data[pos + 8 : pos + 24])
            if tag not in _PCM_TAGS:
                raise ValueError(f"WAV header: format tag {tag} is not integer PCM (1 or 65534)")
            if channels < 1:
                raise ValueError(f"WAV header: channels is {channels}, expected 1 or more")
            if bits not in WAV_BITS:
                raise ValueError(f"WAV header: bits per sample is {bits}, expected 8, 16, 24 or 32")
            if not WAV_MIN_RATE <= rate <= WAV_MAX_RATE:
                raise ValueError(
                    f"WAV header: sample rate {rate} Hz is out of range ({WAV_MIN_RATE}-{WAV_MAX_RATE} Hz)"
                )
            info = WavInfo(channels, rate, bits)
        elif cid == b"data":
            if info is None:
                raise ValueError("WAV header: no fmt chunk before the data chunk")
            return info
        pos += 8 + size + (size & 1)
    if info is None:
        raise ValueError(
            "WAV header: fmt chunk missing or truncated; send the whole header in the first message"
        )
    raise ValueError("WAV header: no data chunk in the first audio message")
