"""S2SSession: the asyncio driver of one translation stream.

Every decision (replay, renewal, switching, backoff, deadlines, pairing input utterances with
their translations) is made by the pure :class:`~gradium_plugins.machine.SessionMachine`; this
module only owns the sockets and tasks: one task per connection that opens it and then reads it
straight into the machine, one sender that writes what the machine says in order (or the
caller's task does it inline when the sender is idle), and one timer armed at the machine's next
deadline. Output of an older connection is always delivered before output of a newer one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any

import aiohttp
import numpy as np

from . import protocol, transport
from .actions import Close, Open, Ping, Send
from .audio import (
    MAX_SAMPLE_RATE,
    AudioInput,
    Chunker,
    StreamResampler,
    WireDecoder,
    check_sample_rate,
    to_int16_mono,
)
from .config import S2SConfig
from .connstate import ConnState
from .errors import ConfigurationError, ConnectionLostError, GradiumError, ProtocolError
from .events import Event, InputSpeechStarted, InputSpeechStopped
from .formats import CHUNK_SECONDS, get_format
from .machine import SessionMachine
from .protocol import AudioOut, EndOfStream

logger = logging.getLogger("gradium_plugins.session")

_UPDATABLE = frozenset(
    {
        "target_language",
        "voice_id",
        "source_language",
        "model_name",
        "stt_model_name",
        "tts_model_name",
        "json_config",
    }
)
_SEND_ERRORS = (ConnectionError, aiohttp.ClientError, OSError, RuntimeError)


class S2SSession:
    """A speech-to-speech translation stream over Gradium's S2S WebSocket API.

    Use as an async context manager, send audio with :meth:`send_audio`, finish with
    :meth:`end_input`, and iterate over the session for events until :class:`EndOfStream`.

    Args:
        config: The validated settings (``config.persistent`` for framework use).
        http_session: An ``aiohttp.ClientSession`` whose connection pool to reuse; requests
            are made through a wrapper that never follows redirects.

    Raises:
        GradiumError: Subclasses from iteration, :meth:`send_audio` and :meth:`connect`.
    """

    def __init__(self, config: S2SConfig, *, http_session: aiohttp.ClientSession | None = None) -> None:
        if not isinstance(config, S2SConfig):
            raise ConfigurationError("config must be an S2SConfig")
        self._m = SessionMachine(config, persistent=config.persistent)
        self._user_http = http_session
        self._http: aiohttp.ClientSession | None = None
        self._wire_rate = self._m.wire_rate
        self._chunk_samples = self._m.chunk_samples
        self._chunker = Chunker(self._chunk_samples)
        self._resampler: StreamResampler | None = None
        self._odd = b""  # an odd trailing byte of s16le input, kept for the next call
        self._sockets: dict[int, aiohttp.ClientWebSocketResponse] = {}
        self._conn_tasks: dict[int, asyncio.Task[None]] = {}
        self._outbox: deque[Send] = deque()
        self._sending = False
        self._send_wake = asyncio.Event()
        self._changed = asyncio.Event()  # new events, or the stream ended
        self._space = asyncio.Event()  # output consumed or input sent
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._listeners: list[Callable[[InputSpeechStarted | InputSpeechStopped], None]] = []
        self._started = False
        self._closed = False
        self._waiting_connect = False
        self._space_waiters = 0
        self._first_send_wall: float | None = None
        self._fast_warned = False

    # --- public properties -------------------------------------------------------------

    @property
    def config(self) -> S2SConfig:
        """The settings in force (changed by :meth:`update` once the switch happened)."""
        return self._m.config

    @property
    def request_id(self) -> str | None:
        """Request id of the connection currently receiving input (for support)."""
        return self._m.request_id

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
        return self._closed or self._m.fatal is not None

    @property
    def input_seconds(self) -> float:
        """Seconds of input accepted so far (after resampling and chunking)."""
        return self._m.end * CHUNK_SECONDS

    def __repr__(self) -> str:
        state = "closed" if self.closed else ("open" if self._started else "new")
        return (
            f"S2SSession(target_language={self.config.target_language!r}, url={self.config._safe_url()!r}, "
            f"state={state}, request_id={self.request_id!r})"
        )

    def add_input_listener(self, callback: Callable[[InputSpeechStarted | InputSpeechStopped], None]) -> None:
        """Call ``callback`` synchronously when the input's pause detector finds speech start / stop.

        The same events are also delivered through iteration, in stream order; the callback runs
        inside :meth:`send_audio`, so keep it short.
        """
        self._listeners.append(callback)

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
        self._raise_if_failed()
        self._m.foreground = True
        self._begin()
        first = self._m.conns[1]
        self._waiting_connect = True
        try:
            while self._m.fatal is None and first.state is ConnState.OPENING:
                self._changed.clear()
                await self._changed.wait()
        finally:
            self._waiting_connect = False
        self._m.foreground = False
        if self._m.fatal is not None:
            err = self._m.fatal
            await self.aclose()
            raise err

    async def start(self) -> None:
        """Start connecting in the background and return at once.

        :meth:`send_audio` buffers input until a connection is usable (up to
        ``max_pending_input_s``); retryable failures are retried with the reconnect policy.
        Frameworks use this so a pipeline never blocks on the network.
        """
        if self._started:
            return
        self._raise_if_failed()
        self._begin()

    def _begin(self) -> None:
        self._started = True
        self._spawn(self._send_loop(), "sender")
        self._m.start(time.monotonic())
        self._after()

    async def aclose(self) -> None:
        """Close every connection now, dropping pending output. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._m.close()
        self._after()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        current = asyncio.current_task()
        tasks = [t for t in (*self._tasks, *self._conn_tasks.values()) if t is not current and not t.done()]
        for t in tasks:
            if t.get_name().startswith("gradium-s2s-close"):
                continue  # let the closes finish
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)
        if self._http is not None:
            await self._http.close()
            self._http = None
        self._changed.set()
        self._space.set()

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        task.set_name(f"gradium-s2s-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _raise_if_failed(self) -> None:
        if self._m.fatal is not None:
            raise self._m.fatal
        if self._closed:
            raise GradiumError("session is closed")

    # --- carrying out the machine's actions --------------------------------------------

    def _after(self, wake_sender: bool = True) -> None:
        """Carry out the machine's actions, re-arm its timer and wake whoever waits.

        ``wake_sender=False`` when the caller sends the outbox itself right after.
        """
        m = self._m
        for action in m.take_actions():
            if type(action) is Send:
                self._outbox.append(action)
            elif type(action) is Open:
                task = asyncio.ensure_future(self._run_connection(action.conn, action.config))
                task.set_name(f"gradium-s2s-conn-{action.conn}")
                self._conn_tasks[action.conn] = task
            elif type(action) is Close:
                self._close_socket(action.conn, action.code)
            elif type(action) is Ping:
                ws = self._sockets.get(action.conn)
                if ws is not None:
                    self._spawn(_ping(ws), "ping")
        if wake_sender and self._outbox and not self._sending:
            self._send_wake.set()
        deadline = m.next_deadline()
        if deadline is not None and (self._timer is None or deadline < self._timer_at - 1e-4):
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = deadline
            self._timer = asyncio.get_running_loop().call_later(
                max(0.0, deadline - time.monotonic()), self._on_timer
            )
        if m.outputs.count or m.fatal is not None or m.done or self._waiting_connect:
            self._changed.set()
        if self._space_waiters:
            self._space.set()

    def _on_timer(self) -> None:
        self._timer = None
        if not self._closed:
            self._m.tick(time.monotonic())
            self._after()

    def _close_socket(self, cid: int, code: int) -> None:
        ws = self._sockets.pop(cid, None)
        task = self._conn_tasks.pop(cid, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        if ws is not None:
            self._spawn(transport.abort(ws, code), f"close-{cid}")

    async def _send_loop(self) -> None:
        while True:
            await self._send_wake.wait()
            self._send_wake.clear()
            await self._drain_outbox()

    async def _drain_outbox(self) -> None:
        if self._sending:
            return
        self._sending = True
        try:
            while self._outbox:
                action = self._outbox.popleft()
                ws = self._sockets.get(action.conn)
                if ws is None:
                    continue  # closed since: the machine replays what it needs
                try:
                    await ws.send_str(action.text)
                except _SEND_ERRORS as exc:
                    err = ConnectionLostError(f"sending failed: {type(exc).__name__}")
                    self._m.failed(action.conn, err, time.monotonic())
                    self._after()
                    continue
                if action.eos:
                    self._m.eos_sent(action.conn, time.monotonic())
                    self._after()
        finally:
            self._sending = False

    def _http_session(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = transport.no_redirect_session(self._user_http)
        return self._http

    async def _run_connection(self, cid: int, config: S2SConfig) -> None:
        m = self._m
        try:
            ws = await transport.open_websocket(self._http_session(), config)
        except GradiumError as err:
            m.failed(cid, err, time.monotonic())
            self._after()
            return
        conn = m.conns.get(cid)
        if conn is None or conn.state is not ConnState.OPENING or self._closed:
            await transport.abort(ws)
            return
        self._sockets[cid] = ws
        m.opened(cid, time.monotonic())
        self._after(wake_sender=False)
        if self._outbox and not self._sending:
            await self._drain_outbox()
        await self._read(cid, ws, WireDecoder(get_format(config.output_format)))

    async def _read(self, cid: int, ws: aiohttp.ClientWebSocketResponse, decoder: WireDecoder) -> None:
        m = self._m
        text_type, pong_types = aiohttp.WSMsgType.TEXT, (aiohttp.WSMsgType.PONG, aiohttp.WSMsgType.PING)
        while cid in self._sockets:
            try:
                msg = await ws.receive()
            except (aiohttp.ClientError, OSError, RuntimeError) as exc:
                m.failed(
                    cid, ConnectionLostError(f"connection failed: {type(exc).__name__}"), time.monotonic()
                )
                self._after()
                return
            now = time.monotonic()
            if msg.type is text_type:
                try:
                    ev: Any = protocol.parse_server_message(msg.data)
                    if isinstance(ev, protocol.RawAudio):
                        pcm = decoder.decode(ev.payload).tobytes()
                        ev = AudioOut(pcm, decoder.sample_rate, ev.start_s, ev.stop_s, ev.stream_id)
                except GradiumError as err:
                    bad = (
                        err
                        if isinstance(err, ProtocolError)
                        else ProtocolError(f"undecodable audio: {err.message}")
                    )
                    m.failed(cid, bad, now)
                    self._after()
                    return
                m.receive(cid, ev, now)
            elif msg.type in pong_types:
                if msg.type is aiohttp.WSMsgType.PING:
                    await _pong(ws, msg.data)
                m.alive(cid, now)
            elif msg.type is aiohttp.WSMsgType.BINARY:
                m.failed(
                    cid, ProtocolError("server sent a binary frame; the protocol uses JSON text frames"), now
                )
            else:  # CLOSE, CLOSING, CLOSED, ERROR
                code = ws.close_code if msg.type is not aiohttp.WSMsgType.ERROR else None
                m.closed(cid, code, transport.close_reason(ws, msg), now)
            self._after()
            if not m.may_read(cid):
                await self._wait_for_space(cid)

    async def _wait_for_space(self, cid: int) -> None:
        """A slow consumer: stop reading (the peer's TCP window fills) until output is taken."""
        m = self._m
        m.reading(cid, False, time.monotonic())
        self._after()
        while not m.may_read(cid) and cid in self._sockets:
            await self._wait_space()
        m.reading(cid, True, time.monotonic())
        self._after()

    # --- input -------------------------------------------------------------------------

    async def send_audio(self, data: AudioInput, sample_rate: int | None = None, channels: int = 1) -> None:
        """Queue audio for translation.

        Args:
            data: ``bytes`` of s16le samples, or a numpy int16 / float array (float in
                -1..1 is clipped, never wrapped); interleaved or ``(frames, channels)``. An odd
                trailing byte of ``bytes`` input is kept and joined to the next call.
            sample_rate: Rate of ``data``; defaults to the input format's rate. Any rate.
            channels: Channel count of interleaved input; channels are averaged.

        Waits only when more than ``max_pending_input_s`` of input is waiting to be sent
        (while reconnecting or when the server reads slowly), except in persistent mode.

        Raises:
            AudioFormatError: The audio or its sample rate cannot be interpreted.
            GradiumError: The session has failed or input was already ended.
        """
        self._raise_if_failed()
        if self._m.input_ended:
            raise GradiumError("send_audio() called after end_input()")
        if sample_rate is None:
            rate = self._wire_rate
        elif type(sample_rate) is int and 0 < sample_rate <= MAX_SAMPLE_RATE:
            rate = sample_rate  # the common case, without the full check
        else:
            rate = check_sample_rate(sample_rate)
        if type(data) is bytes:
            if self._odd or len(data) % (2 * channels):
                data = self._whole_frames(data, channels)
        elif isinstance(data, bytearray | memoryview):
            data = self._whole_frames(bytes(data), channels)
        samples = to_int16_mono(data, channels)
        if not self._started:
            await self.connect()
        if self._resampler is None or self._resampler.in_rate != rate:
            tail = self._resampler.flush() if self._resampler is not None else None
            self._resampler = StreamResampler(rate, self._wire_rate)
            if tail is not None and tail.size:
                samples = np.concatenate((tail, self._resampler.process(samples)))
                chunks = self._chunker.push(samples)
            else:
                chunks = self._chunker.push(self._resampler.process(samples))
        else:
            chunks = self._chunker.push(self._resampler.process(samples))
        if chunks:
            now = time.monotonic()
            self._m.push_input(chunks, now)
            self._notify_listeners()
            self._check_pace(now)
            self._after(wake_sender=False)
            if self._outbox and not self._sending:
                await self._drain_outbox()
        while self._m.input_full and not self._closed:
            await self._wait_space()
            self._raise_if_failed()

    async def _wait_space(self) -> None:
        self._space.clear()
        self._space_waiters += 1
        try:
            await self._space.wait()
        finally:
            self._space_waiters -= 1

    def _whole_frames(self, data: bytes, channels: int) -> bytes:
        frame = 2 * max(1, channels)
        if self._odd:
            data = self._odd + data
        cut = len(data) - len(data) % frame
        self._odd = data[cut:]
        return data[:cut]

    def _notify_listeners(self) -> None:
        found = self._m.speech
        if found:
            self._m.speech = []
            for ev in found:
                for cb in self._listeners:
                    cb(ev)

    async def end_input(self) -> None:
        """Finish the input: flush the resampler tail, append trailing silence, then ``end_of_stream``.

        Keep iterating afterwards: the remaining translations and :class:`EndOfStream` follow.
        """
        self._raise_if_failed()
        if self._m.input_ended:
            return
        if not self._started:
            await self.connect()
        tail = []
        if self._resampler is not None:
            tail.extend(self._chunker.push(self._resampler.flush()))
        rest = self._chunker.flush()
        if rest.size:
            tail.append(np.concatenate((rest, np.zeros(self._chunk_samples - rest.size, np.int16))))
        zero = np.zeros(self._chunk_samples, dtype=np.int16)
        tail.extend([zero] * round(self.config.trailing_silence_s / CHUNK_SECONDS))
        self._m.end_input(tail, time.monotonic())
        self._notify_listeners()
        self._after(wake_sender=False)
        if self._outbox and not self._sending:
            await self._drain_outbox()

    async def update(self, **changes: Any) -> None:
        """Change settings mid-stream (e.g. ``target_language``, ``voice_id``) without losing input.

        A new server session is opened with the new settings; input switches to it at the next
        pause (or after a few seconds without one, replaying the utterance in progress). Output
        already in flight in the old language is still delivered first. If the server refuses
        the new settings, an :class:`~gradium_plugins.events.UpdateRejected` event is delivered
        and the current settings carry on: a refused change never ends the stream.

        Raises:
            ConfigurationError: The new settings are invalid (checked before anything changes).
        """
        unknown = set(changes) - _UPDATABLE
        if unknown:
            raise ConfigurationError(
                f"update() cannot change {', '.join(sorted(unknown))}; "
                f"allowed: {', '.join(sorted(_UPDATABLE))}"
            )
        new_config = self.config.replace(**changes)
        self._raise_if_failed()
        if not self._started:
            self._m.config = new_config
            return
        if self._m.input_ended:
            raise GradiumError("update() called after end_input()")
        self._m.update(new_config, dict(changes), time.monotonic())
        self._after()

    def _check_pace(self, now: float) -> None:
        if self._first_send_wall is None:
            self._first_send_wall = now
            return
        elapsed = now - self._first_send_wall
        # The service drops sentences when fed much faster than real time.
        if not self._fast_warned and self.input_seconds > 1.5 * elapsed + 5.0 and not self.config.is_local:
            self._fast_warned = True
            logger.warning(
                "input arrives faster than real time (%.1f s of audio in %.1f s); the service may drop "
                "sentences: pace the input (realtime_factor) or send live audio",
                self.input_seconds,
                elapsed,
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
        m = self._m
        while True:
            ev = m.next_event()
            if ev is not None:
                if self._space_waiters:
                    self._space.set()  # a paused reader may go on
                if isinstance(ev, EndOfStream):
                    self._spawn(self._finish(), "finish")
                return ev
            if m.fatal is not None and m.finished:
                raise m.fatal
            if m.done or self._closed:
                raise StopAsyncIteration
            if not self._started:
                raise GradiumError("iterate after connect() (or use `async with S2SSession(...)`)")
            self._changed.clear()
            await self._changed.wait()

    async def _finish(self) -> None:
        await asyncio.sleep(0)
        await self.aclose()


async def _ping(ws: aiohttp.ClientWebSocketResponse) -> None:
    try:
        await ws.ping()
    except _SEND_ERRORS:
        pass  # a dead socket shows up as a missing pong


async def _pong(ws: aiohttp.ClientWebSocketResponse, data: bytes) -> None:
    try:
        await ws.pong(data)
    except _SEND_ERRORS:
        pass
