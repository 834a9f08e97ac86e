"""S2SSession: the asyncio driver of one translation stream.

One logical stream may span several WebSocket connections: after a retryable failure the
session reconnects and replays the input whose translation had not arrived, and before the
service's 300 s cap (or on :meth:`S2SSession.update`) it opens a standby connection and
switches to it at a pause. Output of an older connection is always delivered before output
of a newer one, so the caller sees one ordered stream.

Input path: ``send_audio`` converts to mono int16, resamples to the wire input rate with a
stateful resampler, cuts exact 80 ms chunks and appends them to the input log. A single
sender task sends the log to the active connection; the log doubles as the replay buffer.

Output path: one reader task per connection parses messages into events and queues them
(bounded: a slow consumer pauses reading). The iterator drains connections in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import aiohttp
import numpy as np

from . import protocol
from ._version import __version__
from .audio import (
    AudioInput,
    Chunker,
    Int16Array,
    PauseDetector,
    StreamResampler,
    WireDecoder,
    encode_samples,
    to_int16_mono,
    wav_header,
)
from .config import S2SConfig
from .errors import (
    AuthenticationError,
    ConfigurationError,
    ConnectionLostError,
    GradiumError,
    ProtocolError,
    ServerError,
    error_from_server,
)
from .events import Event, InputSpeechStarted, InputSpeechStopped, Reconnected, SessionRenewed
from .formats import CHUNK_SECONDS, get_format
from .protocol import AudioOut, EndOfStream, Ready

logger = logging.getLogger("gradium_plugins.session")

_CLIENT_NAME = f"gradium-plugins/{__version__}"
# Output younger than this at a failure may be cut short: its utterance is replayed.
_OUTPUT_IN_PROGRESS_S = 0.5
# Chunks of input re-sent before an utterance start, so the server hears its onset.
_REPLAY_PREROLL_CHUNKS = 2
# A forced switch happens this long before the cap when no pause came.
_CAP_SAFETY_S = 1.0
# Fallback for update(): switch without a pause after this long.
_UPDATE_SWITCH_TIMEOUT_S = 8.0


@dataclass(slots=True)
class _End:
    """Marks the end of one connection's output in its queue."""

    eos: bool
    error: GradiumError | None = None


@dataclass(slots=True)
class _Utt:
    start: int  # chunk index
    end: int | None = None


class _Connection:
    """One WebSocket connection and its bookkeeping."""

    def __init__(
        self,
        index: int,
        ws: aiohttp.ClientWebSocketResponse,
        config: S2SConfig,
        limit: int,
        wake: asyncio.Event | None = None,
    ) -> None:
        self.index = index
        self.ws = ws
        self.config = config
        self.fmt_in = get_format(config.input_format)
        self.decoder = WireDecoder(get_format(config.output_format))
        self.queue: deque[Any] = deque()
        self.limit = limit
        # Set on every push; the session passes its own state event so the iterator waits on one event.
        self.has_item = wake if wake is not None else asyncio.Event()
        self.has_space = asyncio.Event()
        self.has_space.set()
        self.reader: asyncio.Task[None] | None = None
        self.ready: Ready | None = None
        self.ready_event = asyncio.Event()
        now = time.monotonic()
        self.opened_at = now
        self.last_rx = now
        self.ping_sent_at: float | None = None
        self.reading = False
        self.first_chunk = 0
        self.sent_chunks = 0
        self.texts = 0
        self.last_output_at = 0.0
        self.eos_sent_at: float | None = None
        self.error_frame: GradiumError | None = None
        self.failed: GradiumError | None = None
        self.finished = False  # reader ended (EOS or failure)
        self.retired = False  # renewed away: no more input, drains its output
        self.wav_header_sent = False
        self.out_offset: float | None = None

    @property
    def request_id(self) -> str | None:
        return self.ready.request_id if self.ready else None

    @property
    def sent_s(self) -> float:
        return self.sent_chunks * CHUNK_SECONDS

    def push(self, item: Any) -> None:
        self.queue.append(item)
        self.has_item.set()

    async def send(self, text: str) -> None:
        await self.ws.send_str(text)


class S2SSession:
    """A speech-to-speech translation stream over Gradium's S2S WebSocket API.

    Use as an async context manager, send audio with :meth:`send_audio`, finish with
    :meth:`end_input`, and iterate over the session for events until :class:`EndOfStream`.

    Args:
        config: The validated settings.
        http_session: An ``aiohttp.ClientSession`` to reuse (frameworks have one); by
            default the session creates and closes its own.

    Raises:
        GradiumError: Subclasses from iteration, :meth:`send_audio` and :meth:`connect`.
    """

    def __init__(self, config: S2SConfig, *, http_session: aiohttp.ClientSession | None = None) -> None:
        if not isinstance(config, S2SConfig):
            raise ConfigurationError("config must be an S2SConfig")
        self.config = config
        self._http = http_session
        self._own_http = http_session is None
        self._fmt_in = get_format(config.input_format)
        self._wire_rate = self._fmt_in.input_rate
        self._chunk_samples = round(self._wire_rate * CHUNK_SECONDS)
        self._chunker = Chunker(self._chunk_samples)
        self._resampler: StreamResampler | None = None
        self._pauses = PauseDetector(self._wire_rate)
        self._utts: deque[_Utt] = deque()
        # Input log: chunk i lives at _log[i - _log_base]; _send_pos is the next chunk to send.
        self._log: deque[Int16Array] = deque()
        # Monotonic time each logged chunk was last sent (0.0: not yet), aligned with _log.
        self._log_sent: deque[float] = deque()
        self._log_base = 0
        self._log_end = 0
        self._send_pos = 0
        self._input_ended = False
        self._replay_chunks = max(1, round(config.replay_buffer_s / CHUNK_SECONDS))
        self._max_pending_chunks = max(1, round(config.max_pending_input_s / CHUNK_SECONDS))
        self._active: _Connection | None = None
        self._standby: _Connection | None = None
        self._standby_reason = ""
        self._standby_since = 0.0
        self._renewing: asyncio.Task[None] | None = None
        self._out_conns: deque[_Connection] = deque()
        self._conn_count = 0
        self._wake_sender = asyncio.Event()
        self._send_lock = asyncio.Lock()
        self._sender_waiting = False
        self._space = asyncio.Event()
        self._state = asyncio.Event()  # any change the iterator may wait for
        self._tasks: set[asyncio.Task[Any]] = set()
        self._sender: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._recovering: asyncio.Task[None] | None = None
        self._fatal: GradiumError | None = None
        self._started = False
        self._closed = False
        self._done = False
        self._first_ready_yielded = False
        self._out_audio_s = 0.0
        self._first_send_wall: float | None = None
        self._fast_warned = False
        self._pending_update: dict[str, Any] | None = None
        self._input_listeners: list[Callable[[InputSpeechStarted | InputSpeechStopped], None]] = []

    # --- public properties -------------------------------------------------------------

    @property
    def request_id(self) -> str | None:
        """Request id of the connection currently receiving input (for support)."""
        conn = self._active or (self._out_conns[-1] if self._out_conns else None)
        return conn.request_id if conn else None

    @property
    def output_sample_rate(self) -> int:
        """Sample rate of :class:`AudioOut` events."""
        return get_format(self.config.output_format).output_rate

    @property
    def input_sample_rate(self) -> int:
        """Sample rate of the audio sent on the wire."""
        return self._wire_rate

    @property
    def closed(self) -> bool:
        """True once the session is closed or has failed for good."""
        return self._closed

    @property
    def input_seconds(self) -> float:
        """Seconds of input accepted so far (after resampling and chunking)."""
        return self._log_end * CHUNK_SECONDS

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("open" if self._started else "new")
        return (
            f"S2SSession(target_language={self.config.target_language!r}, url={self.config._safe_url()!r}, "
            f"state={state}, request_id={self.request_id!r})"
        )

    def add_input_listener(self, callback: Callable[[InputSpeechStarted | InputSpeechStopped], None]) -> None:
        """Call ``callback`` synchronously when the input's pause detector finds speech start / stop.

        Adapters use it for speech events and time-to-first-audio metrics; it runs inside
        :meth:`send_audio`, so keep it short.
        """
        self._input_listeners.append(callback)

    # --- lifecycle ---------------------------------------------------------------------

    async def __aenter__(self) -> S2SSession:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def connect(self) -> None:
        """Open the first connection and send ``setup`` (``ready`` is awaited in the background).

        Raises:
            AuthenticationError: Credentials were refused.
            ConnectionLostError: The server could not be reached within ``connect_timeout``.
            GradiumError: Other failures.
        """
        if self._started:
            return
        if self._closed:
            raise GradiumError("session is closed")
        self._started = True
        try:
            conn = await self._open_connection(self.config)
        except BaseException:
            await self.aclose()
            raise
        conn.first_chunk = 0
        self._active = conn
        self._out_conns.append(conn)
        self._sender = self._spawn(self._send_loop(), "sender")
        self._watchdog = self._spawn(self._watch_loop(), "watchdog")

    async def start(self) -> None:
        """Start connecting in the background and return at once.

        :meth:`send_audio` buffers input until the connection is ready (up to
        ``max_pending_input_s``). Retryable connection failures are retried with the
        reconnect policy; a final failure is raised from iteration and from ``send_audio``.
        Frameworks use this so a pipeline never blocks on the network.
        """
        if self._started:
            return
        if self._closed:
            raise GradiumError("session is closed")
        self._started = True
        self._sender = self._spawn(self._send_loop(), "sender")
        self._watchdog = self._spawn(self._watch_loop(), "watchdog")
        self._recovering = self._spawn(self._recover(None, None), "connect")

    async def aclose(self) -> None:
        """Close every connection now, dropping pending output. Idempotent."""
        if self._closed and not self._tasks and self._http is None:
            return
        self._closed = True
        self._done = True
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current]
        for t in tasks:
            t.cancel()
        conns = {c for c in (self._active, self._standby, *self._out_conns) if c is not None}
        for c in conns:
            if c.reader is not None and c.reader is not current:
                c.reader.cancel()
                tasks.append(c.reader)
        for c in conns:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(c.ws.close(), 1.0)
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)
        if self._own_http and self._http is not None:
            await self._http.close()
            self._http = None
        self._state.set()
        self._space.set()

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        task.set_name(f"gradium-s2s-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # --- input -------------------------------------------------------------------------

    async def send_audio(self, data: AudioInput, sample_rate: int | None = None, channels: int = 1) -> None:
        """Queue audio for translation.

        Args:
            data: ``bytes`` of s16le samples, or a numpy int16 / float array (float in
                -1..1 is clipped, never wrapped); interleaved or ``(frames, channels)``.
            sample_rate: Rate of ``data``; defaults to the input format's rate. Any rate.
            channels: Channel count of interleaved input; channels are averaged.

        Waits only when more than ``max_pending_input_s`` of input is waiting to be sent
        (while reconnecting or when the server reads slowly).

        Raises:
            AudioFormatError: The audio cannot be interpreted.
            GradiumError: The session has failed or input was already ended.
        """
        self._raise_if_failed()
        if self._input_ended:
            raise GradiumError("send_audio() called after end_input()")
        samples = to_int16_mono(data, channels)
        rate = sample_rate or self._wire_rate
        before = self._log_end
        if self._resampler is None or self._resampler.in_rate != rate:
            if self._resampler is not None:
                self._append(self._resampler.flush())
            self._resampler = StreamResampler(rate, self._wire_rate)
        if not self._started:
            await self.connect()
        self._append(self._resampler.process(samples))
        if self._log_end != before or self._first_send_wall is None:
            # Input seconds only change when a chunk completes: checking in between finds nothing.
            self._check_pace()
        if self._log_end != before:
            await self._send_inline()
        while self._log_end - self._send_pos > self._max_pending_chunks and not self._closed:
            self._space.clear()
            await self._space.wait()
            self._raise_if_failed()

    async def end_input(self) -> None:
        """Finish the input: flush the resampler tail, append trailing silence, then ``end_of_stream``.

        Keep iterating afterwards: the remaining translations and :class:`EndOfStream` follow.
        """
        self._raise_if_failed()
        if self._input_ended:
            return
        if not self._started:
            await self.connect()
        if self._resampler is not None:
            self._append(self._resampler.flush())
        rest = self._chunker.flush()
        if rest.size:
            self._append_chunks([np.concatenate((rest, np.zeros(self._chunk_samples - rest.size, np.int16)))])
        n_silence = round(self.config.trailing_silence_s / CHUNK_SECONDS)
        zero = np.zeros(self._chunk_samples, dtype=np.int16)
        self._append_chunks([zero] * n_silence)
        for kind, idx in self._pauses.flush():
            self._on_pause_event(kind, idx)
        self._input_ended = True
        self._wake_sender.set()

    async def update(self, **changes: Any) -> None:
        """Change settings mid-stream (e.g. ``target_language``, ``voice_id``) without losing input.

        A new server session is opened with the new settings; input switches to it at the
        next pause (or after a few seconds without one, replaying the utterance in
        progress). Output already in flight in the old language is still delivered first.

        Raises:
            ConfigurationError: The new settings are invalid (checked before anything changes).
        """
        allowed = {
            "target_language",
            "voice_id",
            "source_language",
            "model_name",
            "stt_model_name",
            "tts_model_name",
            "json_config",
        }
        unknown = set(changes) - allowed
        if unknown:
            raise ConfigurationError(
                f"update() cannot change {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(allowed))}"
            )
        new_config = self.config.replace(**changes)
        self._raise_if_failed()
        if not self._started:
            self.config = new_config
            return
        if self._input_ended:
            raise GradiumError("update() called after end_input()")
        self._pending_update = {"config": new_config}
        await self._start_renewal("update", new_config)

    def _append(self, samples: Int16Array) -> None:
        if samples.size:
            chunks = self._chunker.push(samples)
            if chunks:
                self._append_chunks(chunks)

    def _append_chunks(self, chunks: list[Int16Array]) -> None:
        if not chunks:
            return
        for chunk in chunks:
            self._log.append(chunk)
            self._log_sent.append(0.0)
        self._log_end += len(chunks)
        block = chunks[0] if len(chunks) == 1 else np.concatenate(chunks)
        for kind, idx in self._pauses.push(block):
            self._on_pause_event(kind, idx)
        # Keep unsent input always; keep sent input up to the replay buffer size.
        keep_from = min(self._send_pos, self._log_end - self._replay_chunks)
        while self._log_base < keep_from:
            self._log.popleft()
            self._log_sent.popleft()
            self._log_base += 1
        while self._utts and self._utts[0].end is not None and self._utts[0].end < self._log_base:
            self._utts.popleft()
        # No wake-up here: send_audio() sends inline or wakes the sender, end_input() wakes it.

    def _on_pause_event(self, kind: str, sample_index: int) -> None:
        chunk = sample_index // self._chunk_samples
        if kind == "start":
            self._utts.append(_Utt(chunk))
        elif self._utts and self._utts[-1].end is None:
            self._utts[-1].end = chunk
        if self._input_listeners:
            input_s = sample_index / self._wire_rate
            # The detector runs on the newest audio; date the event back to when its sample arrived.
            at = time.monotonic() - max(0.0, self._pauses.position / self._wire_rate - input_s)
            ev: InputSpeechStarted | InputSpeechStopped = (
                InputSpeechStarted(input_s, at) if kind == "start" else InputSpeechStopped(input_s, at)
            )
            for cb in self._input_listeners:
                cb(ev)

    def _check_pace(self) -> None:
        now = time.monotonic()
        if self._first_send_wall is None:
            self._first_send_wall = now
            return
        elapsed = now - self._first_send_wall
        # The service drops sentences when fed much faster than real time.
        # (is_local parses the URL: test it last, not on every call of the hot path.)
        if not self._fast_warned and self.input_seconds > 1.5 * elapsed + 5.0 and not self.config.is_local:
            self._fast_warned = True
            logger.warning(
                "input arrives faster than real time (%.1f s of audio in %.1f s); the service may drop "
                "sentences: pace the input (realtime_factor) or send live audio",
                self.input_seconds,
                elapsed,
            )

    # --- connections -------------------------------------------------------------------

    async def _http_session(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = aiohttp.ClientSession()
            self._own_http = True
        return self._http

    async def _mint_token(self, config: S2SConfig) -> str:
        http = await self._http_session()
        url = f"{config.http_base}/api-keys/token"
        try:
            async with http.get(
                url,
                headers={"x-api-key": config.api_key or ""},
                timeout=aiohttp.ClientTimeout(total=config.connect_timeout),
            ) as resp:
                if resp.status in (401, 403):
                    raise AuthenticationError(
                        "the API key was refused when minting a session token", code=resp.status
                    )
                if resp.status != 200:
                    raise ServerError(
                        f"token endpoint answered HTTP {resp.status}",
                        code=resp.status,
                        retryable=resp.status >= 500 or resp.status == 429,
                    )
                body = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ConnectionLostError(f"could not mint a session token: {type(exc).__name__}") from None
        token = body.get("token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise ProtocolError("token endpoint returned no token")
        return token

    async def _open_connection(self, config: S2SConfig) -> _Connection:
        """Open a WebSocket, start its reader and send ``setup``."""
        http = await self._http_session()
        headers = {"x-api-source": _CLIENT_NAME}
        params: dict[str, str] = {}
        if config.auth_mode == "token" and config.api_key:
            params["token"] = await self._mint_token(config)
        elif config.api_key:
            if config.auth_mode == "api-key-header":
                headers["Authorization"] = f"Api-Key {config.api_key}"
            else:
                headers["x-api-key"] = config.api_key
        try:
            ws = await asyncio.wait_for(
                http.ws_connect(
                    config.url,
                    headers=headers,
                    params=params or None,
                    autoping=False,
                    heartbeat=None,
                    compress=0,
                    max_msg_size=16 * 1024 * 1024,
                    timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=2.0),
                ),
                config.connect_timeout,
            )
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status in (401, 403):
                raise AuthenticationError(
                    f"the server refused the credentials (HTTP {exc.status})", code=exc.status
                ) from None
            retry = exc.status >= 500 or exc.status == 429
            raise ServerError(
                f"WebSocket handshake failed with HTTP {exc.status}", code=exc.status, retryable=retry
            ) from None
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise ConnectionLostError(
                f"could not connect to {config._safe_url()}: {type(exc).__name__}: {_safe_exc(exc, config)}"
            ) from None
        self._conn_count += 1
        conn = _Connection(self._conn_count, ws, config, self.config.output_queue_size, self._state)
        conn.reader = asyncio.ensure_future(self._read_loop(conn))
        conn.reader.set_name(f"gradium-s2s-reader-{conn.index}")
        try:
            await conn.send(
                protocol.setup_message(
                    model_name=config.model_name,
                    input_format=config.input_format,
                    output_format=config.output_format,
                    voice_id=config.voice_id,
                    json_config=config.setup_json_config(),
                    stt_model_name=config.stt_model_name,
                    tts_model_name=config.tts_model_name,
                    client_req_id=config.client_req_id,
                    close_ws_on_eos=config.close_ws_on_eos,
                )
            )
        except Exception as exc:  # noqa: BLE001 - any transport failure ends the connection
            conn.reader.cancel()
            await ws.close()
            raise ConnectionLostError(
                f"connection failed while sending setup: {type(exc).__name__}"
            ) from None
        logger.debug("connection %d opened", conn.index)
        return conn

    async def _read_loop(self, conn: _Connection) -> None:
        ws = conn.ws
        try:
            while True:
                conn.reading = True
                msg = await ws.receive()
                conn.reading = False
                conn.last_rx = time.monotonic()
                conn.ping_sent_at = None
                if msg.type is aiohttp.WSMsgType.TEXT:
                    if self._handle_message(conn, msg.data):
                        return
                elif msg.type is aiohttp.WSMsgType.PING:
                    await ws.pong(msg.data)
                elif msg.type is aiohttp.WSMsgType.PONG:
                    pass
                elif msg.type is aiohttp.WSMsgType.BINARY:
                    raise ProtocolError("server sent a binary frame; the protocol uses JSON text frames")
                else:  # CLOSE, CLOSING, CLOSED, ERROR
                    self._fail(conn, self._close_error(conn, msg))
                    return
                # Backpressure: a slow consumer pauses reading (the watchdog ignores the silence).
                if len(conn.queue) >= conn.limit:
                    conn.has_space.clear()
                    await conn.has_space.wait()
        except asyncio.CancelledError:
            raise
        except GradiumError as exc:
            self._fail(conn, exc)
        except Exception as exc:  # noqa: BLE001 - any transport failure ends the connection
            self._fail(conn, ConnectionLostError(f"connection failed: {type(exc).__name__}"))
        finally:
            conn.reading = False

    def _handle_message(self, conn: _Connection, data: str) -> bool:
        """Queue the event of one message; return True when the connection's output ended."""
        ev = protocol.parse_server_message(data)
        if isinstance(ev, protocol.RawAudio):
            samples = conn.decoder.decode(ev.payload)
            conn.last_output_at = conn.last_rx
            conn.push(
                AudioOut(samples.tobytes(), conn.decoder.sample_rate, ev.start_s, ev.stop_s, ev.stream_id)
            )
        elif isinstance(ev, protocol.TextOut):
            conn.texts += 1
            conn.last_output_at = conn.last_rx
            conn.push(ev)
        elif isinstance(ev, Ready):
            conn.ready = ev
            conn.ready_event.set()
            logger.info("session ready (request_id=%s, connection %d)", ev.request_id, conn.index)
            if not self._first_ready_yielded:
                self._first_ready_yielded = True
                conn.push(ev)
        elif isinstance(ev, EndOfStream):
            conn.finished = True
            conn.push(_End(eos=True))
            self._state.set()
            return True
        elif isinstance(ev, protocol.ErrorEvent):
            err = error_from_server(ev.message, ev.code, conn.request_id)
            if "session" in ev.message.lower() and (
                "limit" in ev.message.lower() or "duration" in ev.message.lower()
            ):
                err.retryable = True
            conn.error_frame = err
            self._fail(conn, err)
            return True
        else:
            conn.push(ev)
        return False

    def _close_error(self, conn: _Connection, msg: aiohttp.WSMessage) -> GradiumError:
        if conn.error_frame is not None:
            return conn.error_frame
        code = conn.ws.close_code
        if msg.type is aiohttp.WSMsgType.ERROR:
            return ConnectionLostError(
                f"connection lost: {type(msg.data).__name__}", code=code, request_id=conn.request_id
            )
        if code == 1008:
            return AuthenticationError(
                "server closed the connection with 1008 (policy violation) "
                "without an error message: check the API key and setup",
                code=code,
                request_id=conn.request_id,
            )
        if code in (None, 1006):
            return ConnectionLostError(
                "connection dropped without a close frame (code 1006) before end_of_stream",
                code=code,
                request_id=conn.request_id,
            )
        what = "closed normally" if code == 1000 else f"closed with code {code}"
        return ConnectionLostError(
            f"server {what} before end_of_stream", code=code, request_id=conn.request_id
        )

    def _fail(self, conn: _Connection, exc: GradiumError) -> None:
        """Record a connection failure and decide: recover, renew later, or give up."""
        if conn.failed is not None or conn.finished or self._closed:
            return
        conn.failed = exc
        conn.finished = True
        if conn.reader is not None and conn.reader is not asyncio.current_task():
            conn.reader.cancel()
        self._spawn(_abort(conn.ws), f"abort-{conn.index}")
        logger.warning("connection %d failed: %s", conn.index, exc)
        if conn is self._standby:
            self._standby = None
            conn.push(_End(eos=False, error=exc))
            if not exc.retryable:
                self._set_fatal(exc)
            return
        if conn.retired:
            # Its input already moved on; what it had not yet translated is reported, not silent.
            logger.error("output of a renewed session was cut (%s); its last utterance may be missing", exc)
            conn.push(_End(eos=False, error=None))
            return
        conn.push(_End(eos=False, error=exc))
        if conn is self._active:
            self._active = None
            if exc.retryable and self.config.reconnect and self.config.max_reconnect_attempts > 0:
                self._recovering = self._spawn(self._recover(conn, exc), "recover")
            else:
                self._set_fatal(exc)
        self._state.set()

    def _set_fatal(self, exc: GradiumError) -> None:
        if self._fatal is None:
            self._fatal = exc
        self._state.set()
        self._space.set()
        self._wake_sender.set()

    def _raise_if_failed(self) -> None:
        if self._fatal is not None:
            raise self._fatal
        if self._closed:
            raise GradiumError("session is closed")

    # --- recovery ----------------------------------------------------------------------

    def _end_sent_before(self, utt: _Utt, moment: float) -> bool:
        if utt.end is None:
            return False
        idx = utt.end - self._log_base
        if idx < 0:
            return True  # older than the replay buffer: long since sent
        if idx >= len(self._log_sent):
            return False
        sent = self._log_sent[idx]
        return 0.0 < sent <= moment

    def _replay_point(self, conn: _Connection) -> int:
        """First chunk to re-send after ``conn`` failed: the first utterance with no complete output."""
        utts = [u for u in self._utts if u.start >= conn.first_chunk]
        done = conn.texts
        if done and time.monotonic() - conn.last_output_at < _OUTPUT_IN_PROGRESS_S:
            done -= 1  # its output may have been cut mid-utterance
        # A service may split one utterance into several texts: never count as done an utterance
        # whose end had not even been sent when the last output arrived.
        done = min(done, sum(1 for u in utts if self._end_sent_before(u, conn.last_output_at)))
        if done < len(utts):
            point = utts[done].start - _REPLAY_PREROLL_CHUNKS
        else:
            point = self._send_pos
            # An utterance still open at the failure started before the send position.
            if utts and utts[-1].end is None:
                point = min(point, utts[-1].start - _REPLAY_PREROLL_CHUNKS)
        return max(point, conn.first_chunk, 0)

    async def _recover(self, failed: _Connection | None, exc: GradiumError | None) -> None:
        """Open a connection with backoff: after ``failed`` broke, or the first one (``start()``)."""
        t0 = time.monotonic()
        replayed = 0.0
        if failed is not None:
            point = self._replay_point(failed)
            lost = max(0, self._log_base - point)
            if lost:
                logger.error(
                    "replay buffer too small: %.2f s of input before the failure cannot be re-sent",
                    lost * CHUNK_SECONDS,
                )
            self._send_pos = max(point, self._log_base)
            replayed = max(0, failed.first_chunk + failed.sent_chunks - self._send_pos) * CHUNK_SECONDS
        max_attempts = max(1, self.config.max_reconnect_attempts) if self.config.reconnect else 1
        delay = self.config.reconnect_backoff_s
        attempts = 0
        while not self._closed:
            attempts += 1
            try:
                conn = await self._open_connection(self.config)
                await self._await_ready(conn)
            except GradiumError as err:
                if not err.retryable:
                    self._set_fatal(err)
                    return
                out_of_budget = time.monotonic() - t0 + delay > self.config.reconnect_budget_s
                if attempts >= max_attempts or out_of_budget:
                    what = f"connection lost ({exc.message})" if exc else "could not connect"
                    self._set_fatal(
                        ConnectionLostError(
                            f"{what} and {attempts} attempt(s) failed (last: {err.message}); "
                            f"{self.input_seconds - self._send_pos * CHUNK_SECONDS:.1f} s "
                            "of input were not translated",
                            code=err.code,
                            request_id=exc.request_id if exc else None,
                        )
                    )
                    return
                await asyncio.sleep(delay * random.uniform(0.5, 1.5))
                delay = min(delay * 2, self.config.reconnect_backoff_max_s)
                continue
            downtime = time.monotonic() - t0
            conn.first_chunk = self._send_pos
            if exc is not None:
                conn.push(Reconnected(attempts, downtime, replayed, exc.message))
            self._active = conn
            self._out_conns.append(conn)
            logger.info(
                "reconnected after %d attempt(s) in %.3f s, replaying %.2f s of input",
                attempts,
                downtime,
                replayed,
            )
            self._wake_sender.set()
            self._state.set()
            return

    async def _await_ready(self, conn: _Connection) -> None:
        """Wait for ``ready`` on a connection that must be usable before input moves to it."""
        waiter = asyncio.ensure_future(conn.ready_event.wait())
        done_reader = conn.reader
        assert done_reader is not None
        try:
            await asyncio.wait(
                {waiter, done_reader}, timeout=self.config.ready_timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            waiter.cancel()
        if conn.ready is not None:
            return
        err = conn.failed or ConnectionLostError(
            f"no ready message within ready_timeout={self.config.ready_timeout} s"
        )
        conn.finished = True
        conn.reader.cancel() if conn.reader else None
        await _abort(conn.ws)
        raise err

    # --- renewal -----------------------------------------------------------------------

    async def _start_renewal(self, reason: str, config: S2SConfig) -> None:
        if self._renewing is not None and not self._renewing.done():
            if reason != "update":
                return
            self._renewing.cancel()
        if self._standby is not None:
            old = self._standby
            self._standby = None
            self._spawn(_close_quietly(old), "close-standby")
        self._renewing = self._spawn(self._open_standby(reason, config), "renew")

    async def _open_standby(self, reason: str, config: S2SConfig) -> None:
        delay = self.config.reconnect_backoff_s
        for attempt in range(1, max(1, self.config.max_reconnect_attempts) + 1):
            try:
                conn = await self._open_connection(config)
                await self._await_ready(conn)
            except GradiumError as err:
                if not err.retryable:
                    self._set_fatal(err)
                    return
                logger.warning("opening a standby session failed (attempt %d): %s", attempt, err)
                await asyncio.sleep(delay * random.uniform(0.5, 1.5))
                delay = min(delay * 2, self.config.reconnect_backoff_max_s)
                continue
            self._standby = conn
            self._standby_reason = reason
            self._standby_since = time.monotonic()
            self._wake_sender.set()
            return
        logger.error("could not open a standby session; the current one continues until it fails or ends")

    def _maybe_renew(self, conn: _Connection) -> None:
        cap = self.config.max_session_s
        if cap is None or self._standby is not None or self._input_ended:
            return
        if conn.sent_s >= cap - self.config.renew_margin_s and (
            self._renewing is None or self._renewing.done()
        ):
            self._renewing = self._spawn(self._open_standby("max_session", self.config), "renew")

    def _chunk_in_pause(self, chunk: int) -> bool:
        """Whether input chunk ``chunk`` lies in a confirmed pause (outside every utterance)."""
        if chunk >= self._log_end - 1:
            # The newest audio: the detector's live state (it leaves speech only after a full pause).
            return not self._pauses.in_speech
        for utt in reversed(self._utts):
            if utt.end is None:
                if chunk >= utt.start - 1:
                    return False
                continue
            if utt.end + 1 < chunk:
                return True
            if chunk >= utt.start - 1:
                return False
        return True

    def _switch_deadline_s(self) -> float:
        """Input seconds after which a connection must hand over (room left for its trailing silence)."""
        cap = self.config.max_session_s
        if cap is None:
            return float("inf")
        return cap - self.config.trailing_silence_s - _CAP_SAFETY_S

    def _switch_decision(self, conn: _Connection) -> str | None:
        """Return "pause" or "forced" when input should move to the standby now."""
        if self._standby is None:
            return None
        if self._chunk_in_pause(self._send_pos):
            return "pause"
        if conn.sent_s >= self._switch_deadline_s():
            return "forced"
        if (
            self._standby_reason == "update"
            and time.monotonic() - self._standby_since > _UPDATE_SWITCH_TIMEOUT_S
        ):
            return "forced"
        return None

    def _switch(self, old: _Connection, how: str) -> None:
        new = self._standby
        assert new is not None
        self._standby = None
        gap = 0.0
        if how == "forced" and self._utts and self._utts[-1].end is None:
            start = max(self._utts[-1].start - _REPLAY_PREROLL_CHUNKS, self._log_base, old.first_chunk)
            # Re-send the utterance in progress so the new session hears it whole, unless it is
            # so long that replaying it would run the new session into the same wall.
            if (self._send_pos - start) * CHUNK_SECONDS <= min(10.0, self._switch_deadline_s() / 2):
                gap = (self._send_pos - start) * CHUNK_SECONDS
                self._send_pos = start
        new.first_chunk = self._send_pos
        old.retired = True
        if self._standby_reason == "update":
            self.config = new.config
            self._pending_update = None
        new.push(
            SessionRenewed(
                self._standby_reason,
                new.request_id,
                how == "pause",
                gap,
                new.config.target_language,
                new.config.voice_id,
            )
        )
        self._active = new
        self._out_conns.append(new)
        self._spawn(self._retire(old), f"retire-{old.index}")
        logger.info("switched to a new session (%s, %s)", self._standby_reason, how)
        self._state.set()

    async def _retire(self, conn: _Connection) -> None:
        """Finish an old connection: silence so its last sentence is finalised, then end_of_stream."""
        silence = np.zeros(round(conn.fmt_in.input_rate * CHUNK_SECONDS), dtype=np.int16)
        try:
            msg = protocol.audio_message(encode_samples(silence, conn.fmt_in), conn.config.client_req_id)
            for _ in range(round(self.config.trailing_silence_s / CHUNK_SECONDS)):
                await conn.send(msg)
            await conn.send(protocol.end_of_stream_message(conn.config.client_req_id))
            conn.eos_sent_at = time.monotonic()
        except Exception as exc:  # noqa: BLE001 - any transport failure ends the connection
            self._fail(conn, ConnectionLostError(f"renewed connection failed: {type(exc).__name__}"))

    # --- sender and watchdog -----------------------------------------------------------

    async def _send_loop(self) -> None:
        while not self._closed:
            async with self._send_lock:
                progressed = await self._send_step()
            if progressed:
                continue
            self._wake_sender.clear()
            if self._has_send_work():
                continue
            self._sender_waiting = True
            try:
                await self._wake_sender.wait()
            finally:
                self._sender_waiting = False

    def _has_send_work(self) -> bool:
        conn = self._active
        if conn is None or self._fatal is not None:
            return False
        return self._send_pos < self._log_end or (self._input_ended and conn.eos_sent_at is None)

    async def _send_inline(self) -> None:
        """Send new chunks from the caller's task while the sender task is parked (saves a task switch)."""
        if not self._sender_waiting or self._send_lock.locked():
            self._wake_sender.set()
            return
        async with self._send_lock:
            while self._send_pos < self._log_end and not self._closed:
                if not await self._send_step():
                    break
        if self._send_pos < self._log_end:
            self._wake_sender.set()

    async def _send_step(self) -> bool:
        """Do the next piece of sending work; return False when there is nothing to do now.

        Called with ``_send_lock`` held, from the sender task or inline from ``send_audio``.
        """
        conn = self._active
        if conn is None or self._fatal is not None or self._closed:
            return False
        if self._standby is not None and self._send_pos < self._log_end:
            how = self._switch_decision(conn)
            if how is not None:
                self._switch(conn, how)
                return True
        if (
            conn.sent_s >= self._switch_deadline_s() + CHUNK_SECONDS
            and self._standby is None
            and not self._input_ended
        ):
            # Never run into the cap: hold input (buffered) until the standby is ready.
            self._maybe_renew(conn)
            return False
        if self._send_pos < self._log_end:
            if self._send_pos < self._log_base:
                self._send_pos = self._log_base
            chunk = self._log[self._send_pos - self._log_base]
            try:
                if conn.fmt_in.codec == "wav" and not conn.wav_header_sent:
                    payload = wav_header(conn.fmt_in.input_rate) + encode_samples(chunk, conn.fmt_in)
                    conn.wav_header_sent = True
                else:
                    payload = encode_samples(chunk, conn.fmt_in)
                await conn.send(protocol.audio_message(payload, conn.config.client_req_id))
            except Exception as exc:  # noqa: BLE001 - any transport failure ends the connection
                self._fail(
                    conn,
                    exc
                    if isinstance(exc, GradiumError)
                    else ConnectionLostError(f"sending audio failed: {type(exc).__name__}"),
                )
                return True
            if conn is self._active:
                self._log_sent[self._send_pos - self._log_base] = time.monotonic()
                self._send_pos += 1
                conn.sent_chunks += 1
                self._space.set()
                self._maybe_renew(conn)
            return True
        if self._input_ended and conn.eos_sent_at is None:
            try:
                await conn.send(protocol.end_of_stream_message(conn.config.client_req_id))
                conn.eos_sent_at = time.monotonic()
            except Exception as exc:  # noqa: BLE001 - any transport failure ends the connection
                self._fail(conn, ConnectionLostError(f"sending end_of_stream failed: {type(exc).__name__}"))
            return True
        return False

    async def _watch_loop(self) -> None:
        cfg = self.config
        tick = 0.25 if cfg.heartbeat_interval is None else min(0.25, cfg.heartbeat_interval / 4)
        while not self._closed:
            await asyncio.sleep(tick)
            now = time.monotonic()
            for conn in {c for c in (self._active, self._standby, *self._out_conns) if c is not None}:
                if conn.finished:
                    continue
                if conn.ready is None and now - conn.opened_at > cfg.ready_timeout:
                    self._fail(
                        conn,
                        ConnectionLostError(f"no ready message within ready_timeout={cfg.ready_timeout} s"),
                    )
                    continue
                if not conn.reading:
                    continue  # paused by backpressure or busy: silence proves nothing
                quiet = now - conn.last_rx
                hb = cfg.heartbeat_interval
                if hb is not None:
                    if conn.ping_sent_at is not None and now - conn.ping_sent_at > hb:
                        self._fail(
                            conn,
                            ConnectionLostError(
                                f"server stopped responding (no pong within {hb:.1f} s)",
                                request_id=conn.request_id,
                            ),
                        )
                        continue
                    if conn.ping_sent_at is None and quiet > hb:
                        conn.ping_sent_at = now
                        self._spawn(_ping(conn), "ping")
                if (
                    conn.eos_sent_at is not None
                    and now - max(conn.last_rx, conn.eos_sent_at) > cfg.drain_timeout
                ):
                    self._fail(
                        conn,
                        ConnectionLostError(
                            f"no end_of_stream within drain_timeout={cfg.drain_timeout} s",
                            request_id=conn.request_id,
                        ),
                    )
                    continue
                if cfg.idle_timeout is not None and quiet > cfg.idle_timeout and conn.sent_chunks:
                    self._fail(
                        conn,
                        ConnectionLostError(
                            f"no message from the server for idle_timeout={cfg.idle_timeout} s",
                            request_id=conn.request_id,
                        ),
                    )

    # --- output ------------------------------------------------------------------------

    def __aiter__(self) -> S2SSession:
        return self

    async def __anext__(self) -> Event:
        try:
            return await self._next_event()
        except asyncio.CancelledError:
            # A cancelled consumer means nobody will read this stream: close it promptly.
            await asyncio.shield(self.aclose())
            raise

    async def _next_event(self) -> Event:
        while True:
            if self._done:
                if self._fatal is not None and not self._closed_by_eos:
                    raise self._fatal
                raise StopAsyncIteration
            if not self._out_conns:
                if self._fatal is not None:
                    self._done = True
                    raise self._fatal
                if not self._started:
                    raise GradiumError("iterate after connect() (or use `async with S2SSession(...)`)")
                self._state.clear()
                await self._state.wait()
                continue
            conn = self._out_conns[0]
            if conn.out_offset is None:
                conn.out_offset = self._out_audio_s
            if not conn.queue:
                if self._fatal is not None and conn.failed is None and not conn.retired:
                    self._done = True
                    raise self._fatal
                # Every connection's push sets _state too: one wait, no helper tasks per event.
                self._state.clear()
                await self._state.wait()
                continue
            item = conn.queue.popleft()
            if len(conn.queue) < conn.limit:
                conn.has_space.set()
            if isinstance(item, _End):
                if item.eos and not conn.retired and conn is self._active and self._input_ended:
                    self._out_conns.popleft()
                    self._done = True
                    self._closed_by_eos = True
                    self._spawn(self._finish(), "finish")
                    return EndOfStream()
                if item.eos and not conn.retired and conn is self._active:
                    # The server ended the stream although input continues: treat as a failure.
                    conn.finished = False
                    self._out_conns.popleft()
                    self._fail(conn, ConnectionLostError("server sent end_of_stream before the input ended"))
                    continue
                self._out_conns.popleft()
                if item.error is not None and not item.error.retryable:
                    self._done = True
                    self._set_fatal(item.error)
                    raise item.error
                continue
            return self._shift(conn, item)

    _closed_by_eos = False

    def _shift(self, conn: _Connection, ev: Any) -> Event:
        """Move timestamps of a later connection onto the session's continuous output timeline."""
        offset = conn.out_offset or 0.0
        if isinstance(ev, AudioOut):
            if ev.stop_s is not None:
                self._out_audio_s = max(self._out_audio_s, ev.stop_s + offset)
            else:
                self._out_audio_s += ev.duration_s
            if offset and ev.start_s is not None:
                return AudioOut(
                    ev.pcm,
                    ev.sample_rate,
                    ev.start_s + offset,
                    None if ev.stop_s is None else ev.stop_s + offset,
                    ev.stream_id,
                )
        elif isinstance(ev, protocol.TextOut) and offset and ev.start_s is not None:
            return protocol.TextOut(
                ev.text, ev.start_s + offset, None if ev.stop_s is None else ev.stop_s + offset, ev.stream_id
            )
        result: Event = ev
        return result

    async def _finish(self) -> None:
        await asyncio.sleep(0)
        await self.aclose()


def _safe_exc(exc: BaseException, config: S2SConfig) -> str:
    text = str(exc)
    if config.api_key:
        text = text.replace(config.api_key, "***")
    return text[:200]


async def _abort(ws: aiohttp.ClientWebSocketResponse) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(ws.close(code=1001), 0.5)


async def _close_quietly(conn: _Connection) -> None:
    if conn.reader is not None:
        conn.reader.cancel()
    await _abort(conn.ws)


async def _ping(conn: _Connection) -> None:
    with contextlib.suppress(Exception):
        await conn.ws.ping()
