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
* Limits (:class:`~gradium_plugins.local.ServerLimits`): setup and idle timeouts, a
  connection cap (HTTP 503), a send timeout for clients that do not read, byte budgets for
  messages and buffered input, a bounded connection history. A WAV input header must declare
  integer PCM, 8-48 kHz, >= 1 channel, 8/16/24/32-bit (else ``error`` 1008 naming the field).
* PCM payloads are a byte stream: a payload may end inside a sample; the partial sample is
  kept for the next payload (a partial sample left at ``end_of_stream`` is dropped).
* Safe defaults: a non-loopback host needs an API key (or ``insecure=True``); a browser
  (``Origin`` header) is refused by a server without a key unless its origin is allowed;
  credentials never reach a log.

Plain HTTP on the same port: ``GET /api/api-keys/token`` (JSON ``{"token", "expires_at"}``),
``GET /api/voices/`` and ``GET /api/voices/{uid}`` (the flagship catalogue).

The implementation is split by concern: :mod:`.connection` (one connection's lifecycle, faults,
timeouts), :mod:`.stream` (one request's audio in and out), :mod:`.limits`, :mod:`.records`,
:mod:`.security` and :mod:`.http`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib
import logging
import signal
from collections.abc import Iterable
from typing import Any

from websockets.asyncio.server import Server, ServerConnection
from websockets.asyncio.server import serve as ws_serve
from websockets.http11 import Request, Response
from websockets.protocol import State

from ..errors import ConfigurationError
from .connection import Connection
from .echo import EchoEngine
from .engine import Engine
from .faults import FaultSpec, plan_for
from .http import json_response, rest_response
from .limits import ServerLimits
from .records import (
    END_ABORTED,
    END_AUTH,
    END_CLIENT,
    END_EOS,
    END_ERROR,
    END_FAULT_CLOSE,
    END_IDLE_TIMEOUT,
    END_INTERNAL,
    END_SERVER,
    END_SESSION_CAP,
    END_SETUP_TIMEOUT,
    END_SLOW_CLIENT,
    END_STALLED,
    ConnectionRecord,
)
from .security import RedactingLogger, check_binding, origin_allowed
from .tokens import TokenStore

__all__ = [
    "END_ABORTED",
    "END_AUTH",
    "END_CLIENT",
    "END_EOS",
    "END_ERROR",
    "END_FAULT_CLOSE",
    "END_IDLE_TIMEOUT",
    "END_INTERNAL",
    "END_SERVER",
    "END_SESSION_CAP",
    "END_SETUP_TIMEOUT",
    "END_SLOW_CLIENT",
    "END_STALLED",
    "ENGINES",
    "S2S_PATH",
    "ConnectionRecord",
    "LocalServer",
    "ServerLimits",
    "serve",
]

logger = logging.getLogger(__name__)

#: WebSocket route of the S2S endpoint.
S2S_PATH = "/api/speech/s2s"
ENGINES = ("echo", "offline")


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
        connections: :class:`ConnectionRecord` of the last ``limits.history`` WebSocket
            connections, in accept order (older ones are forgotten; see :attr:`connections_total`).
        connections_total: WebSocket connections accepted since the start.
        limits: The :class:`ServerLimits` in force.
        allowed_origins: Browser origins allowed to connect (None: see :func:`serve`).
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
        input_queue_chunks: int,
        limits: ServerLimits,
        allowed_origins: Iterable[str] | None,
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
        self.limits = limits
        self.allowed_origins = None if allowed_origins is None else tuple(allowed_origins)
        self.connections: list[ConnectionRecord] = []
        self.connections_total = 0
        self.closing = False
        self._live: set[Connection] = set()
        self._ws_options: dict[str, Any] = {
            "ping_interval": ping_interval,
            "ping_timeout": ping_timeout,
            "close_timeout": close_timeout,
            "max_size": limits.max_message_bytes,
            "max_queue": limits.max_queued_messages,
            "open_timeout": limits.handshake_timeout_s,
        }
        self._server: Server | None = None

    def __repr__(self) -> str:
        return (
            f"LocalServer(url={self.url!r}, engine={self.engine.name!r}, connections={len(self.connections)})"
        )

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
            logger=RedactingLogger(logging.getLogger("websockets.server")),
            **self._ws_options,
        )
        sock = self._server.sockets[0]
        self.port = int(sock.getsockname()[1])
        logger.info("local S2S server (%s engine) listening on %s", self.engine.name, self.url)

    def abort_connections(self) -> int:
        """Abort every open connection's TCP connection now (no close frame); return how many."""
        live = list(self._live)
        for conn in live:
            conn.fire("abort", "aborted by LocalServer.abort_connections()")
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
                conn.fire("shutdown", "server closing")  # stop the engine, close 1001
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
        record = ConnectionRecord(index=self.connections_total, path=path)
        self.connections_total += 1
        self.connections.append(record)
        excess = len(self.connections) - self.limits.history
        if excess > 0:
            del self.connections[:excess]  # a server running for days forgets old connections
        try:
            plan = plan_for(self._faults, record.index)
        except Exception:
            logger.exception("fault plan callable failed; connection %d runs without faults", record.index)
            plan = None
        conn = Connection(self, ws, record, plan)
        self._live.add(conn)
        try:
            await conn.run()
        finally:
            self._live.discard(conn)

    def _open_connections(self) -> int:
        # Connections past their handshake whose handler has not returned (closing ones included).
        if self._server is None:
            return 0
        return sum(1 for c in self._server.all_connections if c.protocol.state is not State.CONNECTING)

    def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        path = request.path.partition("?")[0]
        if "websocket" not in request.headers.get("Upgrade", "").lower():
            return rest_response(self.tokens, request)
        if path.rstrip("/") != S2S_PATH:
            return json_response(404, {"detail": f"no WebSocket endpoint at {path}"})
        origin = request.headers.get("Origin")
        if not origin_allowed(origin, self.allowed_origins, self.tokens.enabled):
            logger.warning(
                "refused a WebSocket handshake from origin %r (not allowed)",
                origin[:200] if origin else origin,
            )
            return json_response(
                403,
                {
                    "detail": f"origin {origin!r} is not allowed; start the server "
                    "with --allow-origin ORIGIN (allowed_origins=[...])"
                },
            )
        cap = self.limits.max_connections
        if cap is not None and self._open_connections() >= cap:
            return json_response(503, {"detail": f"server busy: {cap} connections open (max_connections)"})
        return None


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
    max_size: int | None = None,
    input_queue_chunks: int = 256,
    limits: ServerLimits | None = None,
    allowed_origins: Iterable[str] | None = None,
    insecure: bool = False,
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
        max_size: Largest message accepted; overrides ``limits.max_message_bytes`` when given.
        input_queue_chunks: Input chunks buffered for the engine before reading pauses (the
            byte budget ``limits.max_input_buffer_bytes`` applies too).
        limits: Timeouts, connection cap, byte budgets and history (default:
            :class:`ServerLimits`'s safe defaults).
        allowed_origins: Browser origins (``Origin`` header) allowed to open a WebSocket;
            ``["*"]`` allows all. None: browsers are refused when there is no ``api_key``
            (clients that are not browsers send no ``Origin`` and are not affected).
        insecure: Allow a non-loopback ``host`` without ``api_key`` (logged as a warning).

    Returns:
        The running :class:`LocalServer`; close it with ``await server.close()`` or use it as an
        async context manager.

    Raises:
        ConfigurationError: Unknown engine name, the offline engine's module cannot be imported,
            or a non-loopback ``host`` without ``api_key`` nor ``insecure``.
        Exception: Whatever the engine's constructor or ``start()`` raises (the offline engine
            raises ``OfflineEngineUnavailable`` naming the missing packages).
    """
    check_binding(host, api_key, insecure)
    limits = limits or ServerLimits()
    if max_size is not None:
        limits = dataclasses.replace(limits, max_message_bytes=max_size)
    eng, owned = _make_engine(engine)
    server = LocalServer(
        eng,
        owns_engine=owned,
        host=host,
        port=port,
        api_key=api_key,
        faults=faults,
        max_session_s=max_session_s,
        output_realtime=output_realtime,
        stamp=stamp,
        token_ttl_s=token_ttl_s,
        ping_interval=ping_interval,
        ping_timeout=ping_timeout,
        close_timeout=close_timeout,
        input_queue_chunks=input_queue_chunks,
        limits=limits,
        allowed_origins=allowed_origins,
    )
    try:
        await server.start()
    except BaseException:
        if owned:
            await eng.aclose()
        raise
    return server
