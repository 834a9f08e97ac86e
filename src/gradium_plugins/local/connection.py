"""One WebSocket connection of the local server: lifecycle, timeouts, faults, sending, errors.

The requests (``setup`` ... ``end_of_stream``) a connection carries are served by
:mod:`.stream`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import TYPE_CHECKING, NoReturn

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.typing import Data

from ..errors import ProtocolError
from ..protocol import SetupRequest, error_message, parse_client_message
from .faults import FaultPlan
from .records import (
    END_ABORTED,
    END_AUTH,
    END_CLIENT,
    END_ERROR,
    END_FAULT_CLOSE,
    END_IDLE_TIMEOUT,
    END_INTERNAL,
    END_SERVER,
    END_SETUP_TIMEOUT,
    END_SLOW_CLIENT,
    END_STALLED,
    ConnectionRecord,
)
from .tokens import key_from_headers

if TYPE_CHECKING:
    from .server import LocalServer

logger = logging.getLogger("gradium_plugins.local.server")

# Longest wait to hand an error frame and a close frame to a client that does not read.
_SLOW_CLOSE_S = 1.0


class Halt(Exception):
    """Unwinds a task after a fault fired or the connection failed."""


class Finished(Exception):
    """Unwinds the connection after the server sent an error and closed."""


def close_reason(message: str) -> str:
    """A close reason: at most 123 bytes of UTF-8."""
    data = message.encode()[:123]
    return data.decode("utf-8", errors="ignore")


def with_fields(msg: str, extra: str) -> str:
    """Append pre-encoded ``,"key":value`` pairs to a JSON object string."""
    return msg[:-1] + extra + "}" if extra else msg


class Connection:
    """Drives one WebSocket connection."""

    def __init__(
        self, server: LocalServer, ws: ServerConnection, record: ConnectionRecord, plan: FaultPlan | None
    ) -> None:
        self.server = server
        self.limits = server.limits
        self.ws = ws
        self.record = record
        self.plan = plan
        self.loop = asyncio.get_running_loop()
        self.halt = asyncio.Event()
        self.action: str | None = None  # set once: abort/stall/close/internal/shutdown/slow/failed
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
        from .stream import serve_request

        try:
            await self._authenticate()
            if self.watch_messages:
                await self.message_faults(0)
            first = True
            while True:
                setup = await self._read_setup(first)
                first = False
                if not await serve_request(self, setup):
                    return
        except (Halt, Finished):
            pass
        except ConnectionClosed:
            pass  # ended is filled in by run()
        except Exception as exc:
            logger.exception("local server connection %d failed", self.record.index)
            self.fire("internal", f"internal server error: {type(exc).__name__}", code=1011)

    async def _after_fault(self) -> None:
        action = self.action
        ws = self.ws
        try:
            if action in ("close", "internal"):
                if self.close_error is not None:
                    if not await self._send_bounded(
                        with_fields(error_message(self.close_error, self.close_code), self.suffix)
                    ):
                        return
                    self.record.messages_sent += 1
                    self.record.error = self.close_error
                await self.close(self.close_code, close_reason(self.close_error or ""))
            elif action == "shutdown":
                await self.close(1001, "server shutting down")
            elif action == "slow":
                await self._close_slow_client()
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

    async def _close_slow_client(self) -> None:
        # The error and close frames queue behind the output the client has not read: give them
        # a moment, then drop the TCP connection (a closing handshake would never complete).
        message = self.record.error or ""
        try:
            async with asyncio.timeout(_SLOW_CLOSE_S):
                await self.ws.send(with_fields(error_message(message, 1008), self.suffix))
                self.record.messages_sent += 1
                await self.close(1008, close_reason(message))
        except TimeoutError:
            self.ws.transport.abort()
            await self.ws.wait_closed()

    def _start_timers(self) -> list[asyncio.Task[None]]:
        plan = self.plan
        if plan is None:
            return []
        timers = []
        for delay, action in (
            (plan.abort_after_s, "abort"),
            (plan.close_after_s, "close"),
            (plan.stall_after_s, "stall"),
        ):
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
            self.fire(
                "close",
                detail,
                code=plan.close_code,
                error=plan.close_message if plan.close_with_error else None,
            )
        else:
            self.fire(action, detail)

    def fire(self, action: str, detail: str, *, code: int = 1011, error: str | None = None) -> None:
        """Make a fault (or an internal error) take over the connection, effective immediately."""
        if self.action is not None:
            return
        self.action = action
        rec = self.record
        if action == "internal":
            rec.ended = END_INTERNAL
            self.close_code, self.close_error = code, detail
        elif action == "slow":
            rec.ended, rec.error = END_SLOW_CLIENT, detail
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

    async def close(self, code: int, reason: str) -> None:
        """Close and wait for the client's close frame.

        Incoming frames are drained meanwhile: once nobody calls ``recv()``, websockets' flow
        control stops reading the socket and the client's close frame would never be seen.
        """
        drain = asyncio.create_task(self._discard_incoming())
        # Bounded: a client that does not read keeps the close frame from leaving at all.
        bound = (self.limits.send_timeout_s or 30.0) + (self.ws.close_timeout or 0.0)
        try:
            async with asyncio.timeout(bound):
                await self.ws.close(code, reason)
        except TimeoutError:
            self.ws.transport.abort()
        finally:
            drain.cancel()

    async def _send_bounded(self, msg: str) -> bool:
        """Send outside the protocol flow (no counting, no faults); abort a client that does not read."""
        try:
            async with asyncio.timeout(self.limits.send_timeout_s):
                await self.ws.send(msg)
        except TimeoutError:
            self.ws.transport.abort()
            return False
        return True

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

    async def message_faults(self, n: int) -> None:
        """Act on the plan's ``*_after_messages`` rules after the ``n``-th message."""
        plan = self.plan
        assert plan is not None
        if plan.abort_after_messages == n:
            self._fire_plan("abort", f"abort after {n} messages")
        elif plan.close_after_messages == n:
            self._fire_plan("close", f"close after {n} messages")
        elif plan.stall_after_messages == n:
            self._fire_plan("stall", f"stall after {n} messages")
        if self.action is not None:
            raise Halt
        if plan.malformed_after_messages == n:
            await self.ws.send('{"type":"audio","audio":"AAAA')
        if plan.unknown_every is not None and n > 0 and n % plan.unknown_every == 0:
            extra = json.dumps(
                {"type": plan.unknown_type, "step_idx": n // plan.unknown_every, "injected": True},
                separators=(",", ":"),
            )
            await self.ws.send(with_fields(extra, self.suffix))

    def input_faults(self, seconds: float) -> None:
        """Act on the plan's ``*_after_input_s`` rules once ``seconds`` of input were received."""
        plan = self.plan
        assert plan is not None
        for limit, action in (
            (plan.abort_after_input_s, "abort"),
            (plan.close_after_input_s, "close"),
            (plan.stall_after_input_s, "stall"),
        ):
            if limit is not None and seconds >= limit:
                self._fire_plan(action, f"{action} after {limit:g} input seconds")
                raise Halt

    # --- receiving and sending ---------------------------------------------------------

    async def recv(self, timeout_s: float | None, what: str, ended: str) -> Data:
        """Receive one client message; fail with ``error`` 1008 when none comes in ``timeout_s``."""
        try:
            async with asyncio.timeout(timeout_s):
                return await self.ws.recv()
        except TimeoutError:
            await self.fail(f"{what} within {timeout_s:g} s: closing the connection", 1008, ended)

    async def recv_input(self) -> Data:
        """Receive the next message of a request (``audio`` or ``end_of_stream``)."""
        return await self.recv(self.limits.idle_timeout_s, "no message received", END_IDLE_TIMEOUT)

    async def send(self, msg: str) -> None:
        """Send a protocol message; a client that does not read it in time ends the connection."""
        if self.action is not None:
            raise Halt
        timeout = self.limits.send_timeout_s
        try:
            async with asyncio.timeout(timeout):
                await self.ws.send(msg)
        except TimeoutError:
            self.fire("slow", f"the client did not read the server's output for {timeout:g} s")
            raise Halt from None
        self.record.messages_sent += 1
        if self.watch_messages:
            await self.message_faults(self.record.messages_sent)

    async def fail(self, message: str, code: int, ended: str) -> NoReturn:
        """Send an ``error`` frame, close with ``code`` and end the connection."""
        rec = self.record
        rec.ended, rec.error = ended, message
        if self.action is None:
            self.action = "failed"  # stops other senders
        try:
            if await self._send_bounded(with_fields(error_message(message, code), self.suffix)):
                rec.messages_sent += 1
                await self.close(code, close_reason(message))
        except ConnectionClosed:
            pass
        raise Finished

    # --- handshake and setup -----------------------------------------------------------

    async def _authenticate(self) -> None:
        rec = self.record
        store = self.server.tokens
        if not store.enabled:
            return
        request = self.ws.request
        assert request is not None
        query = request.path.partition("?")[2]
        problem = store.check_handshake(request.headers, query)
        if problem is not None:
            rec.auth = "rejected"
            await self.fail(problem, 1008, END_AUTH)
        rec.auth = "key" if key_from_headers(request.headers) is not None else "token"

    async def _read_setup(self, first: bool) -> SetupRequest:
        # The first setup has the (short) setup timeout; on a kept socket (close_ws_on_eos
        # false) the next one may come after a pause: the idle timeout applies.
        if first:
            raw = await self.recv(self.limits.setup_timeout_s, "no 'setup' received", END_SETUP_TIMEOUT)
        else:
            raw = await self.recv(self.limits.idle_timeout_s, "no message received", END_IDLE_TIMEOUT)
        try:
            msg = parse_client_message(raw)
        except ProtocolError as exc:
            await self.fail(f"the first message must be 'setup': {exc.message}", 1008, END_ERROR)
        if not isinstance(msg, SetupRequest):
            await self.fail("the first message must be 'setup'", 1008, END_ERROR)
        self.record.add_setup(raw)
        return msg
