"""A local WebSocket server that speaks the Gradium S2S protocol, with fault injection.

``await serve()`` starts it on 127.0.0.1 (a free port by default); every test, benchmark and
example of the project talks to it. One connection runs as follows (see
``gradium-s2s-protocol.md``):

* The handshake is authenticated when the server has an API key (``x-api-key`` header,
  ``Authorization: Api-Key <key>``, or ``?token=`` minted by ``GET /api/api-keys/token``). A
  bad or missing key gets an ``error`` frame (code 1008) and a close 1008.
* ``setup`` must be the first message (else ``error`` 1008 and close 1008). Formats are checked
  (an unknown one is refused naming the allowed values; ``opus`` is refused as unsupported by
  the local server), then the engine opens a session and the server sends ``ready`` with the
  output sample rate and the 80 ms frame size.
* ``audio`` payloads are decoded from the input format (PCM rates, a WAV stream with its RIFF
  header in the first payload, µ-law, A-law) and resampled to 24 kHz mono for the engine.
* For each utterance the engine yields, the server sends one ``text`` message and then the
  audio in 80 ms frames (the last frame of an utterance carries the remainder, so it can be
  shorter) encoded in the output format, with ``start_s``/``stop_s`` on a gapless output
  timeline and ``stream_id`` 0. With WAV output the first audio payload of the stream starts
  with a streaming RIFF header. ``client_req_id`` is echoed on every reply when the client set one.
* After the client's ``end_of_stream`` the engine is drained, the server sends
  ``end_of_stream`` and closes 1000 — unless ``close_ws_on_eos`` was false: the socket then
  stays open for another ``setup``.
* Session cap (``max_session_s``): when the input of a stream exceeds it, the input up to the
  cap is processed and the utterances it completes are delivered (the one in progress at the
  cap is dropped), then the server sends
  ``{"type":"error","message":"session length limit of N s reached","code":1008}`` and closes
  1008. The service's exact behaviour at its 300 s cap is unknown; this is our model of it.

Plain HTTP on the same port: ``GET /api/api-keys/token`` (JSON ``{"token", "expires_at"}``),
``GET /api/voices/`` and ``GET /api/voices/{uid}`` (the flagship catalogue).
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import importlib
import json
import logging
import re
import signal
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, NoReturn
from urllib.parse import parse_qs

from websockets.asyncio.server import Server, ServerConnection
from websockets.asyncio.server import serve as ws_serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from ..audio import Int16Array, StreamResampler, WireDecoder, encode_samples, resample, wav_header
from ..errors import AudioFormatError, ConfigurationError, ProtocolError
from ..formats import CHUNK_SECONDS, SUPPORTED_FORMATS, UNSUPPORTED_FORMATS, AudioFormat, get_format
from ..protocol import (
    AudioIn,
    EndOfStreamIn,
    SetupRequest,
    error_message,
    parse_client_message,
    ready_message,
    server_audio_message,
    server_text_message,
)
from ..voices import FLAGSHIP_VOICES
from .echo import EchoEngine
from .engine import (
    ENGINE_INPUT_RATE,
    ENGINE_OUTPUT_RATE,
    Engine,
    EngineSession,
    EngineSetup,
    EngineSetupError,
    Utterance,
)
from .faults import FaultPlan, FaultSpec, plan_for
from .tokens import TokenStore, key_from_headers

logger = logging.getLogger(__name__)

#: WebSocket route of the S2S endpoint.
S2S_PATH = "/api/speech/s2s"
ENGINES = ("echo", "offline")

# How a connection ended (ConnectionRecord.ended).
END_EOS = "eos"  #: normal end: end_of_stream sent, close 1000
END_CLIENT = "client_closed"  #: the client closed or dropped the connection first
END_SERVER = "server_closed"  #: LocalServer.close() closed it (1001)
END_ERROR = "error"  #: protocol/setup error: error frame + close (code in close_code)
END_AUTH = "auth_failed"  #: bad or missing API key / token
END_SESSION_CAP = "session_cap"  #: max_session_s reached
END_ABORTED = "aborted"  #: TCP aborted by a fault (no close frame)
END_STALLED = "stalled"  #: stalled by a fault
END_FAULT_CLOSE = "fault_close"  #: closed by a close_after_* fault
END_INTERNAL = "internal_error"  #: the engine or the server failed (error 1011)


@dataclass(eq=False)
class ConnectionRecord:
    """What happened on one WebSocket connection (for tests and benchmarks).

    Attributes:
        index: Connection number, from 0 in accept order (the index fault callables receive).
        path: Request path of the handshake, without the query string.
        auth: ``"off"`` (server has no key), ``"key"``, ``"token"`` or ``"rejected"``.
        setups: Every ``setup`` message received, as parsed JSON.
        request_ids: ``request_id`` of every ``ready`` (one per accepted ``setup``).
        input_s: Seconds of input audio received (at the input rate), all requests together.
        utterances: Text of every utterance emitted, in order.
        messages_sent: Protocol messages sent (injected ones excluded).
        fault: Description of the fault that fired, if any.
        error: Message of the ``error`` frame the server sent, if any.
        ended: How the connection ended (one of the ``END_*`` constants), None while open.
        close_code: Code of the close frame the server sent, None if it sent none.
    """

    index: int
    path: str
    auth: str = "off"
    setups: list[dict[str, Any]] = field(default_factory=list)
    request_ids: list[str] = field(default_factory=list)
    input_s: float = 0.0
    utterances: list[str] = field(default_factory=list)
    messages_sent: int = 0
    fault: str | None = None
    error: str | None = None
    ended: str | None = None
    close_code: int | None = None
    _done: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    @property
    def setup(self) -> dict[str, Any] | None:
        """The last ``setup`` received, if any."""
        return self.setups[-1] if self.setups else None

    @property
    def done(self) -> bool:
        """Whether the connection is over."""
        return self._done.is_set()

    async def wait_ended(self, timeout_s: float = 10.0) -> str:
        """Wait until the connection is over; return :attr:`ended`.

        Raises:
            TimeoutError: Still open after ``timeout_s`` seconds.
        """
        async with asyncio.timeout(timeout_s):
            await self._done.wait()
        assert self.ended is not None
        return self.ended


class _Halt(Exception):
    """Unwinds a task after a fault fired or the connection failed."""


class _Finished(Exception):
    """Unwinds the connection after the server sent an error and closed."""


def _close_reason(message: str) -> str:
    # Close reasons are limited to 123 bytes of UTF-8.
    data = message.encode()[:123]
    return data.decode("utf-8", errors="ignore")


def _with_fields(msg: str, extra: str) -> str:
    """Append pre-encoded ``,"key":value`` pairs to a JSON object string."""
    return msg[:-1] + extra + "}" if extra else msg


_SECRET_HEADERS = frozenset({"x-api-key", "authorization", "cookie", "proxy-authorization"})
_TOKEN_RE = re.compile(r"(token=)[^&\s]+", re.IGNORECASE)


class _RedactingLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """The websockets server logger, minus secrets.

    At DEBUG level websockets logs every request header and the request line; API keys and
    ``?token=`` values must never reach a log.
    """

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        if args and isinstance(msg, str) and msg.startswith("<"):
            if len(args) == 2 and str(args[0]).lower() in _SECRET_HEADERS:
                args = (args[0], "<redacted>")
            else:
                args = tuple(_TOKEN_RE.sub(r"\1<redacted>", a) if isinstance(a, str) else a for a in args)
        super().log(level, msg, *args, **kwargs)


def _json_response(status: int, body: Any) -> Response:
    data = json.dumps(body, separators=(",", ":")).encode()
    st = http.HTTPStatus(status)
    headers = Headers(
        [("Content-Type", "application/json"), ("Content-Length", str(len(data))), ("Connection", "close")]
    )
    return Response(st.value, st.phrase, headers, data)


class _Request:
    """State of one request (one ``setup`` ... ``end_of_stream``) on a connection."""

    __slots__ = (
        "anchor", "completed", "decoder", "delay_s", "delayed", "frame", "idle", "in_rate", "input_s",
        "out_fmt", "out_rate", "out_samples", "queue", "resampler", "suffix", "tasks", "wav_header_pending",
    )

    def __init__(self, in_fmt: AudioFormat, out_fmt: AudioFormat, suffix: str, queue_chunks: int) -> None:
        self.decoder = WireDecoder(in_fmt, "input")
        self.resampler: StreamResampler | None = None
        self.in_rate = in_fmt.input_rate
        self.out_fmt = out_fmt
        self.out_rate = out_fmt.output_rate
        self.frame = round(self.out_rate * CHUNK_SECONDS)
        self.suffix = suffix
        self.input_s = 0.0
        self.out_samples = 0
        self.wav_header_pending = out_fmt.codec == "wav"
        # Bounded: when the engine falls behind, reading stops and TCP pushes back on the client.
        self.queue: asyncio.Queue[Int16Array | None] = asyncio.Queue(maxsize=queue_chunks)
        self.delayed: asyncio.Queue[tuple[float, str]] | None = None
        self.delay_s = 0.0
        self.tasks: list[asyncio.Task[None]] = []
        self.anchor: float | None = None
        self.completed = False
        # Set while the engine waits on an empty queue, i.e. all output of the input so far is out.
        self.idle = asyncio.Event()


class _Connection:
    """Drives one WebSocket connection."""

    def __init__(self, server: LocalServer, ws: ServerConnection, record: ConnectionRecord,
                 plan: FaultPlan | None) -> None:
        self.server = server
        self.ws = ws
        self.record = record
        self.plan = plan
        self.loop = asyncio.get_running_loop()
        self.halt = asyncio.Event()
        self.action: str | None = None  # set once: abort/stall/close/internal/shutdown/failed
        self.close_code = 1000
        self.close_error: str | None = None
        self.stalled = False
        self.suffix = ""  # ',"client_req_id":...' of the current request
        self.watch_messages = plan is not None and plan.watches_messages
        self.watch_input = plan is not None and plan.watches_input
        own_cap = plan.max_session_s if plan is not None else None
        self.max_session_s = own_cap if own_cap is not None else server.max_session_s

    # --- lifecycle ---------------------------------------------------------------------

    async def run(self) -> None:
        """Serve the connection until it ends, then act on a fault if one fired."""
        timers = self._start_timers()
        main = asyncio.create_task(self._main())
        halt = asyncio.create_task(self.halt.wait())
        closed = asyncio.create_task(self.ws.wait_closed())
        try:
            await asyncio.wait({main, halt, closed}, return_when=asyncio.FIRST_COMPLETED)
            if not main.done():
                main.cancel()
            await asyncio.gather(main, return_exceptions=True)
            await self._after_fault()
        finally:
            for task in (halt, closed, *timers):
                task.cancel()
            rec = self.record
            if rec.ended is None:
                rec.ended = END_SERVER if self.server.closing else END_CLIENT
            sent = self.ws.protocol.close_sent
            rec.close_code = sent.code if sent is not None else None
            rec._done.set()

    async def _main(self) -> None:
        try:
            await self._serve()
        except (_Halt, _Finished):
            pass
        except ConnectionClosed:
            pass  # ended is filled in by run()
        except Exception as exc:
            logger.exception("local server connection %d failed", self.record.index)
            self._fire("internal", f"internal server error: {type(exc).__name__}", code=1011)

    async def _after_fault(self) -> None:
        action = self.action
        ws = self.ws
        try:
            if action in ("close", "internal"):
                if self.close_error is not None:
                    await ws.send(_with_fields(error_message(self.close_error, self.close_code), self.suffix))
                    self.record.messages_sent += 1
                    self.record.error = self.close_error
                await self._close(self.close_code, _close_reason(self.close_error or ""))
            elif action == "shutdown":
                await self._close(1001, "server shutting down")
            elif action == "stall":
                stall_for = self.plan.stall_for_s if self.plan is not None else None
                try:
                    async with asyncio.timeout(stall_for):
                        await ws.wait_closed()
                except TimeoutError:
                    ws.transport.abort()
                    await ws.wait_closed()
            elif action == "abort":
                await ws.wait_closed()
        except ConnectionClosed:
            pass

    def _start_timers(self) -> list[asyncio.Task[None]]:
        plan = self.plan
        if plan is None:
            return []
        timers = []
        for delay, action in ((plan.abort_after_s, "abort"), (plan.close_after_s, "close"),
                              (plan.stall_after_s, "stall")):
            if delay is not None:
                timers.append(asyncio.create_task(self._timer(delay, action)))
        return timers

    async def _timer(self, delay: float, action: str) -> None:
        await asyncio.sleep(delay)
        self._fire_plan(action, f"{action} after {delay:g} s")

    # --- faults ------------------------------------------------------------------------

    def _fire_plan(self, action: str, detail: str) -> None:
        plan = self.plan
        assert plan is not None
        if action == "close":
            self._fire("close", detail, code=plan.close_code,
                       error=plan.close_message if plan.close_with_error else None)
        else:
            self._fire(action, detail)

    def _fire(self, action: str, detail: str, *, code: int = 1011, error: str | None = None) -> None:
        """Make a fault (or an internal error) take over the connection, effective immediately."""
        if self.action is not None:
            return
        self.action = action
        rec = self.record
        if action == "internal":
            rec.ended = END_INTERNAL
            self.close_code, self.close_error = code, detail
        elif action != "shutdown":
            rec.fault = detail
        if action == "abort":
            rec.ended = END_ABORTED
            self.ws.transport.abort()  # RST-like drop: no close frame, no error
        elif action == "stall":
            rec.ended = END_STALLED
            self._stall()
        elif action == "close":
            rec.ended = END_FAULT_CLOSE
            self.close_code, self.close_error = code, error
        elif action == "shutdown":
            rec.ended = END_SERVER
        self.halt.set()

    async def _close(self, code: int, reason: str) -> None:
        """Close and wait for the client's close frame.

        Incoming frames are drained meanwhile: once nobody calls ``recv()``, websockets' flow
        control stops reading the socket and the client's close frame would never be seen.
        """
        drain = asyncio.create_task(self._discard_incoming())
        try:
            await self.ws.close(code, reason)
        finally:
            drain.cancel()

    async def _discard_incoming(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                await self.ws.recv()

    def _stall(self) -> None:
        # websockets answers pings inside data_received(), so "not answering" means not reading
        # the socket at all. Its own flow control could resume reading: disable that too.
        self.stalled = True
        ws = self.ws
        ws.transport.pause_reading()
        assembler = getattr(ws, "recv_messages", None)
        if assembler is not None:
            assembler.resume = lambda: None
        keepalive = getattr(ws, "keepalive_task", None)
        if keepalive is not None:
            keepalive.cancel()  # a stalled peer sends no pings either

    async def _message_faults(self, n: int) -> None:
        plan = self.plan
        assert plan is not None
        if plan.abort_after_messages == n:
            self._fire_plan("abort", f"abort after {n} messages")
        elif plan.close_after_messages == n:
            self._fire_plan("close", f"close after {n} messages")
        elif plan.stall_after_messages == n:
            self._fire_plan("stall", f"stall after {n} messages")
        if self.action is not None:
            raise _Halt
        if plan.malformed_after_messages == n:
            await self.ws.send('{"type":"audio","audio":"AAAA')
        if plan.unknown_every is not None and n > 0 and n % plan.unknown_every == 0:
            extra = json.dumps({"type": plan.unknown_type, "step_idx": n // plan.unknown_every,
                                "injected": True}, separators=(",", ":"))
            await self.ws.send(_with_fields(extra, self.suffix))

    def _input_faults(self, seconds: float) -> None:
        plan = self.plan
        assert plan is not None
        for limit, action in ((plan.abort_after_input_s, "abort"), (plan.close_after_input_s, "close"),
                              (plan.stall_after_input_s, "stall")):
            if limit is not None and seconds >= limit:
                self._fire_plan(action, f"{action} after {limit:g} input seconds")
                raise _Halt

    # --- sending -----------------------------------------------------------------------

    async def _send(self, msg: str) -> None:
        if self.action is not None:
            raise _Halt
        await self.ws.send(msg)
        self.record.messages_sent += 1
        if self.watch_messages:
            await self._message_faults(self.record.messages_sent)

    async def _fail(self, message: str, code: int, ended: str) -> NoReturn:
        """Send an ``error`` frame, close with ``code`` and end the connection."""
        rec = self.record
        rec.ended, rec.error = ended, message
        if self.action is None:
            self.action = "failed"  # stops other senders
        try:
            await self.ws.send(_with_fields(error_message(message, code), self.suffix))
            rec.messages_sent += 1
            await self._close(code, _close_reason(message))
        except ConnectionClosed:
            pass
        raise _Finished

    async def _out(self, req: _Request, msg: str) -> None:
        """Send an output message, after the plan's output delay if any."""
        if req.delayed is None:
            await self._send(msg)
        else:
            await req.delayed.put((self.loop.time() + req.delay_s, msg))

    async def _delayed_sender(self, queue: asyncio.Queue[tuple[float, str]]) -> None:
        try:
            while True:
                due, msg = await queue.get()
                wait = due - self.loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                try:
                    await self._send(msg)
                finally:
                    queue.task_done()
        except (_Halt, ConnectionClosed):
            pass

    # --- protocol ----------------------------------------------------------------------

    async def _serve(self) -> None:
        rec = self.record
        store = self.server.tokens
        if store.enabled:
            request = self.ws.request
            assert request is not None
            query = request.path.partition("?")[2]
            problem = store.check_handshake(request.headers, query)
            if problem is not None:
                rec.auth = "rejected"
                await self._fail(problem, 1008, END_AUTH)
            rec.auth = "key" if key_from_headers(request.headers) is not None else "token"
        if self.watch_messages:
            await self._message_faults(0)
        while True:
            setup = await self._read_setup()
            if not await self._serve_request(setup):
                return

    async def _read_setup(self) -> SetupRequest:
        raw = await self.ws.recv()
        try:
            msg = parse_client_message(raw)
        except ProtocolError as exc:
            await self._fail(f"the first message must be 'setup': {exc.message}", 1008, END_ERROR)
        if not isinstance(msg, SetupRequest):
            await self._fail("the first message must be 'setup'", 1008, END_ERROR)
        with contextlib.suppress(ValueError):
            self.record.setups.append(json.loads(raw))
        return msg

    async def _format(self, name: str, what: str) -> AudioFormat:
        if name in UNSUPPORTED_FORMATS:
            await self._fail(f"{what} {name!r} is not supported by the local server "
                             f"({UNSUPPORTED_FORMATS[name]}); use one of: {', '.join(SUPPORTED_FORMATS)}",
                             1008, END_ERROR)
        try:
            return get_format(name)
        except KeyError:
            await self._fail(f"unknown {what} {name!r}; allowed values: {', '.join(SUPPORTED_FORMATS)}",
                             1008, END_ERROR)

    async def _serve_request(self, setup: SetupRequest) -> bool:
        """Serve one request; return True when the socket stays open for another ``setup``."""
        self.suffix = "" if setup.client_req_id is None else (
            ',"client_req_id":' + json.dumps(setup.client_req_id))
        in_fmt = await self._format(setup.input_format, "input_format")
        out_fmt = await self._format(setup.output_format, "output_format")
        if self.plan is not None and self.plan.reject_setup is not None:
            await self._fail(self.plan.reject_setup, 1008, END_ERROR)
        cfg = setup.json_config
        target, source = cfg.get("target_language"), cfg.get("source_language")
        if not isinstance(target, str | None) or not isinstance(source, str | None):
            await self._fail("json_config target_language and source_language must be strings",
                             1008, END_ERROR)
        try:
            session = self.server.engine.open(
                EngineSetup(target, source, setup.voice_id, setup.model_name, cfg))
        except EngineSetupError as exc:
            await self._fail(exc.message, exc.code, END_ERROR)

        req = _Request(in_fmt, out_fmt, self.suffix, self.server.input_queue_chunks)
        if self.plan is not None and self.plan.delay_output_s > 0:
            req.delay_s = self.plan.delay_output_s
            req.delayed = asyncio.Queue()
            req.tasks.append(asyncio.create_task(self._delayed_sender(req.delayed)))
        request_id = uuid.uuid4().hex
        self.record.request_ids.append(request_id)
        producer = asyncio.create_task(self._produce(req, session, request_id, setup.model_name))
        try:
            await self._read_input(req)
            await producer  # drain: every utterance, then end_of_stream
            if not req.completed:
                raise _Halt
        finally:
            for task in (producer, *req.tasks):
                task.cancel()
            await asyncio.gather(producer, *req.tasks, return_exceptions=True)
            try:
                await session.aclose()
            except Exception:
                logger.exception("engine session close failed")
        if setup.close_ws_on_eos:
            self.record.ended = END_EOS
            await self._close(1000, "")
            return False
        return True

    async def _read_input(self, req: _Request) -> None:
        """Read ``audio`` until ``end_of_stream``, feeding the engine queue."""
        ws, rec, queue = self.ws, self.record, req.queue
        cap = self.max_session_s
        while True:
            raw = await ws.recv()
            try:
                msg = parse_client_message(raw)
            except ProtocolError as exc:
                await self._fail(exc.message, 1008, END_ERROR)
            if type(msg) is AudioIn:
                try:
                    samples = req.decoder.decode(msg.payload)
                except AudioFormatError as exc:
                    await self._fail(f"invalid audio: {exc.message}", 1008, END_ERROR)
                if req.resampler is None:
                    # The rate is known now (a WAV stream carries it in its header).
                    req.in_rate = req.decoder.sample_rate
                    req.resampler = StreamResampler(req.in_rate, ENGINE_INPUT_RATE)
                if not samples.size:
                    continue
                seconds = samples.size / req.in_rate
                if cap is not None and req.input_s + seconds > cap:
                    await self._session_cap(req, samples, cap)
                req.input_s += seconds
                rec.input_s += seconds
                if self.watch_input:
                    self._input_faults(rec.input_s)
                out = req.resampler.process(samples)
                if out.size:
                    await queue.put(out)
            elif type(msg) is EndOfStreamIn:
                if req.resampler is not None:
                    tail = req.resampler.flush()
                    if tail.size:
                        await queue.put(tail)
                await queue.put(None)
                return
            else:
                await self._fail("'setup' was already received on this stream; send 'end_of_stream' first",
                                 1008, END_ERROR)

    async def _session_cap(self, req: _Request, samples: Int16Array, cap: float) -> NoReturn:
        """End a stream at its length cap.

        The input up to the cap is processed and every utterance it completes is delivered;
        the utterance in progress at the cap is dropped. Then ``error`` 1008 and close 1008.
        """
        keep = max(0, min(samples.size, round((cap - req.input_s) * req.in_rate)))
        assert req.resampler is not None
        out = req.resampler.process(samples[:keep])
        if out.size:
            await req.queue.put(out)
        if not req.queue.empty():
            req.idle.clear()  # may be stale: the engine has not taken the queued chunks yet
        seconds = samples.size / req.in_rate
        req.input_s += seconds
        self.record.input_s += seconds
        if self.plan is None or self.plan.send_ready:
            # Bounded wait: an engine that never settles must not keep the error from the client.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5.0):
                    await req.idle.wait()
                    if req.delayed is not None:
                        await req.delayed.join()
        await self._fail(f"session length limit of {cap:g} s reached", 1008, END_SESSION_CAP)

    @staticmethod
    async def _engine_input(req: _Request) -> AsyncIterator[Int16Array]:
        queue = req.queue
        while True:
            if queue.empty():
                req.idle.set()  # the engine has handled every chunk given so far
            item = await queue.get()
            req.idle.clear()
            if item is None:
                return
            yield item

    async def _produce(self, req: _Request, session: EngineSession, request_id: str, model: str) -> None:
        plan = self.plan
        try:
            if plan is not None and plan.ready_delay_s > 0:
                await asyncio.sleep(plan.ready_delay_s)
            if plan is not None and not plan.send_ready:
                while True:  # no ready, no output: swallow input until the client gives up
                    await req.queue.get()
            await self._send(_with_fields(
                ready_message(request_id, req.out_rate, req.frame, model), req.suffix))
            gen = session.run(self._engine_input(req))
            try:
                async for utt in gen:
                    await self._emit(req, utt)
            finally:
                aclose = getattr(gen, "aclose", None)
                if aclose is not None:
                    await aclose()
            await self._out(req, '{"type":"end_of_stream"' + req.suffix + "}")
            if req.delayed is not None:
                await req.delayed.join()
            req.completed = True
        except (_Halt, _Finished, ConnectionClosed):
            pass
        except Exception as exc:
            logger.exception("engine failed on connection %d", self.record.index)
            # The engine's own message says what is wrong (e.g. which package to install).
            detail = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
            message = f"internal server error in the engine: {type(exc).__name__}"
            self._fire("internal", f"{message}: {detail}" if detail else message, code=1011)

    async def _emit(self, req: _Request, utt: Utterance) -> None:
        """Send one utterance: its ``text``, then its audio in 80 ms frames."""
        rate = req.out_rate
        audio = utt.audio if rate == ENGINE_OUTPUT_RATE else resample(utt.audio, ENGINE_OUTPUT_RATE, rate)
        start = req.out_samples
        await self._out(req, _with_fields(
            server_text_message(utt.text, start / rate, (start + audio.size) / rate, 0), req.suffix))
        self.record.utterances.append(utt.text)
        fmt = req.out_fmt
        payload = encode_samples(audio, fmt)  # encode once, slice per frame
        width = fmt.bytes_per_sample()
        step = req.frame * width
        stamp, realtime, suffix = self.server.stamp, self.server.output_realtime, req.suffix
        for off in range(0, len(payload), step):
            chunk = payload[off : off + step]
            s0 = req.out_samples
            s1 = s0 + len(chunk) // width
            if req.wav_header_pending:
                chunk = wav_header(rate) + chunk
                req.wav_header_pending = False
            if realtime:
                await self._pace(req, s0 / rate)
            # A stamp rides in stream_id so that every client sees it through its public API.
            msg = server_audio_message(chunk, s0 / rate, s1 / rate, time.perf_counter_ns() if stamp else 0)
            if suffix:
                msg = msg[:-1] + suffix + "}"
            await self._out(req, msg)
            req.out_samples = s1

    async def _pace(self, req: _Request, t: float) -> None:
        # Real-time output: frame at output time t leaves at anchor + t. After idle time (or when
        # far behind) the clock restarts, like a synthesiser that starts speaking again.
        now = self.loop.time()
        if req.anchor is None or now - (req.anchor + t) > 0.1:
            req.anchor = now - t
            return
        wait = req.anchor + t - now
        if wait > 0:
            await asyncio.sleep(wait)


def _make_engine(engine: str | Engine) -> tuple[Engine, bool]:
    """Return ``(engine, owned)``: named engines are created (and later closed) by the server."""
    if isinstance(engine, Engine):
        return engine, False
    if engine == "echo":
        return EchoEngine(), True
    if engine == "offline":
        try:
            module = importlib.import_module("gradium_plugins.local.offline")
            factory = module.OfflineEngine
        except (ImportError, AttributeError) as exc:
            raise ConfigurationError(
                f"engine 'offline' is not available ({exc}); "
                "install the extra: pip install 'gradium-plugins[local]'"
            ) from None
        try:
            created = factory()
        except Exception as exc:  # noqa: BLE001 - OfflineEngineUnavailable and friends: say what to install
            raise ConfigurationError(f"engine 'offline' is not available: {exc}") from None
        if not isinstance(created, Engine):
            raise ConfigurationError("gradium_plugins.local.offline.OfflineEngine() did not return an Engine")
        return created, True
    raise ConfigurationError(f"unknown engine {engine!r}; allowed values: {', '.join(ENGINES)}")


class LocalServer:
    """A running local S2S server (create it with :func:`serve`).

    Attributes:
        host: Listening address.
        port: Listening port.
        engine: The engine serving every connection.
        connections: One :class:`ConnectionRecord` per WebSocket connection, in accept order.
        max_session_s: Session length cap for new connections (None: no cap).
        output_realtime: Pace output audio at real time instead of sending it as fast as produced.
        stamp: Send ``time.perf_counter_ns()`` (when produced) as the ``stream_id`` of every
            audio message, for latency benchmarks.
        tokens: API key and token store (``tokens.minted`` / ``tokens.consumed`` count tokens).
        closing: True once :meth:`close` started.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        owns_engine: bool,
        host: str,
        port: int,
        api_key: str | None,
        faults: FaultSpec,
        max_session_s: float | None,
        output_realtime: bool,
        stamp: bool,
        token_ttl_s: float,
        ping_interval: float | None,
        ping_timeout: float | None,
        close_timeout: float,
        max_size: int,
        input_queue_chunks: int,
    ) -> None:
        self.engine = engine
        self._owns_engine = owns_engine
        self.host = host
        self.port = port
        self.tokens = TokenStore(api_key, token_ttl_s)
        self._faults: FaultSpec = faults
        self.max_session_s = max_session_s
        self.output_realtime = output_realtime
        self.stamp = stamp
        self.input_queue_chunks = input_queue_chunks
        self.connections: list[ConnectionRecord] = []
        self.closing = False
        self._live: set[_Connection] = set()
        self._ws_options: dict[str, Any] = {
            "ping_interval": ping_interval, "ping_timeout": ping_timeout, "close_timeout": close_timeout,
            "max_size": max_size,
        }
        self._server: Server | None = None

    def __repr__(self) -> str:
        return (f"LocalServer(url={self.url!r}, engine={self.engine.name!r}, "
                f"connections={len(self.connections)})")

    @property
    def url(self) -> str:
        """WebSocket URL of the S2S endpoint (``ws://HOST:PORT/api/speech/s2s``)."""
        return f"ws://{self._url_host}:{self.port}{S2S_PATH}"

    @property
    def http_base(self) -> str:
        """Base URL of the REST routes (``http://HOST:PORT/api``)."""
        return f"http://{self._url_host}:{self.port}/api"

    @property
    def _url_host(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host

    @property
    def faults(self) -> FaultSpec:
        """Fault plan for new connections: one plan, a callable ``index -> plan | None``, or None."""
        return self._faults

    @faults.setter
    def faults(self, spec: FaultSpec) -> None:
        self._faults = spec

    @property
    def active(self) -> int:
        """Connections currently open."""
        return len(self._live)

    async def start(self) -> None:
        """Start the engine, then listen."""
        await self.engine.start()
        self._server = await ws_serve(
            self._handler,
            self.host,
            self.port,
            process_request=self._process_request,
            compression=None,
            write_limit=2**16,
            server_header=None,
            logger=_RedactingLogger(logging.getLogger("websockets.server")),
            **self._ws_options,
        )
        sock = self._server.sockets[0]
        self.port = int(sock.getsockname()[1])
        logger.info("local S2S server (%s engine) listening on %s", self.engine.name, self.url)

    def abort_connections(self) -> int:
        """Abort every open connection's TCP connection now (no close frame); return how many."""
        live = list(self._live)
        for conn in live:
            conn._fire("abort", "aborted by LocalServer.abort_connections()")
        return len(live)

    async def close(self) -> None:
        """Close every connection (1001; stalled ones are aborted) and stop listening. Idempotent."""
        if self.closing:
            return
        self.closing = True
        for conn in list(self._live):
            if conn.stalled:
                conn.ws.transport.abort()  # it does not read: a closing handshake would time out
            else:
                conn._fire("shutdown", "server closing")  # stop the engine, close 1001
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        if self._owns_engine:
            await self.engine.aclose()

    async def __aenter__(self) -> LocalServer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def serve_forever(self) -> None:
        """Run until cancelled or SIGINT / SIGTERM (where signal handlers are available), then close."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                    loop.remove_signal_handler(sig)
            await self.close()

    # --- connections -------------------------------------------------------------------

    async def _handler(self, ws: ServerConnection) -> None:
        request = ws.request
        path = request.path.partition("?")[0] if request is not None else ""
        record = ConnectionRecord(index=len(self.connections), path=path)
        self.connections.append(record)
        try:
            plan = plan_for(self._faults, record.index)
        except Exception:
            logger.exception("fault plan callable failed; connection %d runs without faults", record.index)
            plan = None
        conn = _Connection(self, ws, record, plan)
        self._live.add(conn)
        try:
            await conn.run()
        finally:
            self._live.discard(conn)

    # --- plain HTTP --------------------------------------------------------------------

    def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        path, _, query = request.path.partition("?")
        route = path.rstrip("/")
        if "websocket" in request.headers.get("Upgrade", "").lower():
            if route == S2S_PATH:
                return None
            return _json_response(404, {"detail": f"no WebSocket endpoint at {path}"})
        if getattr(request, "method", "GET") != "GET":
            return _json_response(405, {"detail": "only GET is supported here"})
        if route == "/api/api-keys/token":
            if not self.tokens.key_ok(key_from_headers(request.headers)):
                return _json_response(401, {"detail": "API key is invalid"})
            token, expires_at = self.tokens.mint()
            return _json_response(200, {"token": token, "expires_at": expires_at})
        if route == "/api/voices" or route.startswith("/api/voices/"):
            if not self.tokens.key_ok(key_from_headers(request.headers)):
                return _json_response(401, {"detail": "API key is invalid"})
            voices = _catalogue()
            if route == "/api/voices":
                params = parse_qs(query)
                skip = _int_param(params, "skip", 0)
                limit = _int_param(params, "limit", 100)
                return _json_response(200, voices[skip : skip + limit])
            uid = route.rsplit("/", 1)[1]
            for voice in voices:
                if voice["uid"] == uid:
                    return _json_response(200, voice)
            return _json_response(404, {"detail": f"voice {uid!r} not found"})
        return _json_response(404, {"detail": "Not Found"})


def _int_param(params: dict[str, list[str]], name: str, default: int) -> int:
    try:
        return max(0, int(params[name][0]))
    except (KeyError, ValueError, IndexError):
        return default


def _catalogue() -> list[dict[str, Any]]:
    return [
        {
            "uid": uid,
            "name": name,
            "description": f"{name}, flagship {lang} voice (local catalogue)",
            "language": lang,
            "is_catalog": True,
            "is_pro_clone": False,
            "tags": [{"category": "language", "value": lang}],
        }
        for lang, voices in FLAGSHIP_VOICES.items()
        for uid, name in voices.items()
    ]


async def serve(
    host: str = "127.0.0.1",
    port: int = 0,
    engine: str | Engine = "echo",
    *,
    api_key: str | None = None,
    faults: FaultSpec = None,
    max_session_s: float | None = None,
    output_realtime: bool = False,
    stamp: bool = False,
    token_ttl_s: float = 300.0,
    ping_interval: float | None = 20.0,
    ping_timeout: float | None = 20.0,
    close_timeout: float = 5.0,
    max_size: int = 16 * 2**20,
    input_queue_chunks: int = 256,
) -> LocalServer:
    """Start a local server speaking the Gradium S2S protocol.

    Args:
        host: Address to listen on.
        port: Port; 0 picks a free one (read it from ``server.port`` / ``server.url``).
        engine: ``"echo"`` (deterministic, see :class:`~gradium_plugins.local.echo.EchoEngine`),
            ``"offline"`` (real models, extra ``local``), or an :class:`Engine` instance (started
            here, but closed by its owner).
        api_key: Key clients must present (``x-api-key``, ``Authorization: Api-Key``, or a token
            minted from it); None accepts everyone.
        faults: One :class:`FaultPlan` for every connection, or ``index -> FaultPlan | None``
            (connections numbered from 0); changeable later through ``server.faults``.
        max_session_s: Cap on the input seconds of one stream (the service caps at 300 s);
            exceeding it gets ``error`` 1008 "session length limit of N s reached" and close 1008.
        output_realtime: Pace output audio at real time (default: as fast as produced).
        stamp: Send ``time.perf_counter_ns()`` as the ``stream_id`` of every audio message.
        token_ttl_s: Lifetime of tokens minted by ``GET /api/api-keys/token``.
        ping_interval: Server keepalive pings (None: off).
        ping_timeout: Close a connection whose pong is this late.
        close_timeout: Time the server waits for the client's close frame.
        max_size: Largest message accepted.
        input_queue_chunks: Input chunks buffered for the engine before reading pauses.

    Returns:
        The running :class:`LocalServer`; close it with ``await server.close()`` or use it as an
        async context manager.

    Raises:
        ConfigurationError: Unknown engine name, or the offline engine's module cannot be imported.
        Exception: Whatever the engine's constructor or ``start()`` raises (the offline engine
            raises ``OfflineEngineUnavailable`` naming the missing packages).
    """
    eng, owned = _make_engine(engine)
    server = LocalServer(
        eng, owns_engine=owned, host=host, port=port, api_key=api_key, faults=faults,
        max_session_s=max_session_s, output_realtime=output_realtime, stamp=stamp, token_ttl_s=token_ttl_s,
        ping_interval=ping_interval, ping_timeout=ping_timeout, close_timeout=close_timeout,
        max_size=max_size, input_queue_chunks=input_queue_chunks,
    )
    try:
        await server.start()
    except BaseException:
        if owned:
            await eng.aclose()
        raise
    return server
