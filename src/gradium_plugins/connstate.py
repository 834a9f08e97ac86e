"""What the session machine knows about one connection, and how a close becomes an error (pure)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from .config import S2SConfig
from .errors import AuthenticationError, ConnectionLostError, GradiumError, ProtocolError, ServerError
from .formats import AudioFormat, get_format
from .protocol import Ready


class ConnState(Enum):
    """Lifecycle of one WebSocket connection."""

    OPENING = "opening"  # token, TCP, upgrade, setup in progress (driver)
    OPEN = "open"  # setup sent, waiting for ready
    READY = "ready"  # ready received
    DRAINING = "draining"  # our end_of_stream sent, waiting for the server's
    CLOSED = "closed"  # finished or failed: nothing more is sent or read


class Role(Enum):
    """What a connection is for."""

    ACTIVE = "active"  # receives the input
    STANDBY = "standby"  # opened ahead of a renewal or settings change
    RETIRED = "retired"  # renewed away: drains its output


@dataclass(slots=True, eq=False)
class Conn:
    """One connection's bookkeeping (chunk indices on the session's input log)."""

    id: int
    config: S2SConfig
    role: Role
    reason: str  # first, reconnect, max_session, update
    created_at: float
    state: ConnState = ConnState.OPENING
    first: int = 0  # first input chunk sent on it
    sent_to: int = 0  # input chunks before this were sent on it
    opened_at: float = 0.0
    ready_at: float = 0.0
    ready: Ready | None = None
    last_rx: float = 0.0  # liveness: any frame, pongs included
    last_progress: float = 0.0  # progress: protocol messages only
    ping_sent_at: float | None = None
    reading: bool = True
    eos_queued: bool = False  # our end_of_stream handed to the driver
    eos_sent_at: float | None = None  # ... and confirmed on the wire
    wav_header_sent: bool = False
    error: GradiumError | None = None
    out: deque[Any] = field(default_factory=deque)
    out_bytes: int = 0
    out_offset: float | None = None
    fmt_in: AudioFormat = field(init=False)

    def __post_init__(self) -> None:
        self.fmt_in = get_format(self.config.input_format)

    @property
    def request_id(self) -> str | None:
        """The server's request id, once ready."""
        return self.ready.request_id if self.ready else None

    def deadline(self, cfg: S2SConfig) -> float | None:
        """The earliest time at which :meth:`check` has something to do (``None``: never)."""
        state = self.state
        if state is ConnState.CLOSED:
            return None
        if state is ConnState.OPENING:
            return self.created_at + connect_deadline_s(cfg)
        best = self.opened_at + cfg.ready_timeout if state is ConnState.OPEN else None
        if not self.reading:
            return best
        hb = cfg.heartbeat_interval
        if hb is not None:
            t = self.ping_sent_at + hb if self.ping_sent_at is not None else self.last_rx + hb
            best = t if best is None or t < best else best
        if self.eos_sent_at is not None:
            t = max(self.eos_sent_at, self.last_progress) + cfg.drain_timeout
            best = t if best is None or t < best else best
        elif cfg.idle_timeout is not None and self.sent_to > self.first:
            t = self.last_progress + cfg.idle_timeout
            best = t if best is None or t < best else best
        return best

    def check(self, cfg: S2SConfig, now: float) -> tuple[GradiumError | None, bool]:
        """Timeouts due at ``now``: the error that fails this connection, and whether to ping.

        Liveness (any frame, pongs included) and progress (protocol messages) are separate
        clocks: a server that answers pings but never finishes still hits ``drain_timeout``.
        """
        rid = self.request_id
        if self.state is ConnState.OPENING:
            if now - self.created_at > connect_deadline_s(cfg):
                return ConnectionLostError(
                    f"could not connect within connect_timeout={cfg.connect_timeout} s"
                ), False
            return None, False
        if self.state is ConnState.OPEN and now - self.opened_at > cfg.ready_timeout:
            msg = f"no ready message within ready_timeout={cfg.ready_timeout} s"
            return ConnectionLostError(msg), False
        if not self.reading:
            return None, False  # a paused reader (slow consumer): silence proves nothing
        ping = False
        hb = cfg.heartbeat_interval
        if hb is not None:
            if self.ping_sent_at is not None and now - self.ping_sent_at > hb:
                return ConnectionLostError(
                    f"server stopped responding (no pong within {hb:.1f} s)", request_id=rid
                ), False
            if self.ping_sent_at is None and now - self.last_rx > hb:
                self.ping_sent_at = now
                ping = True
        if self.eos_sent_at is not None:
            if now - max(self.eos_sent_at, self.last_progress) > cfg.drain_timeout:
                msg = f"no end_of_stream within drain_timeout={cfg.drain_timeout} s"
                return ConnectionLostError(msg, request_id=rid), ping
        elif cfg.idle_timeout is not None and self.sent_to > self.first:
            if now - self.last_progress > cfg.idle_timeout:
                msg = f"no message from the server for idle_timeout={cfg.idle_timeout} s"
                return ConnectionLostError(msg, request_id=rid), ping
        return None, ping


def connect_deadline_s(cfg: S2SConfig) -> float:
    """How long opening may take (a token request and the upgrade each get ``connect_timeout``)."""
    return 2 * cfg.connect_timeout + 1.0


#: Close codes that say the client did something wrong: retrying the same thing cannot help.
_CLIENT_FAULT = {
    1002: "protocol error",
    1003: "unsupported data",
    1007: "invalid data",
    1009: "message too big",
}


def close_error(code: int | None, reason: str, request_id: str | None) -> GradiumError:
    """The error a close without an ``error`` message means."""
    why = f": {reason[:200]}" if reason else ""
    if code in (None, 1005, 1006):
        return ConnectionLostError(
            "connection dropped without a close frame (code 1006) before end_of_stream",
            code=code,
            request_id=request_id,
        )
    if code == 1008:
        return AuthenticationError(
            f"server closed the connection with 1008 (policy violation){why or ' without a reason'}; "
            "check the API key and setup",
            code=code,
            request_id=request_id,
        )
    if code in _CLIENT_FAULT:
        return ProtocolError(
            f"server closed the connection with {code} ({_CLIENT_FAULT[code]}){why}",
            code=code,
            request_id=request_id,
            retryable=False,
        )
    if 4000 <= code <= 4999:
        return ServerError(
            f"server closed the connection with application code {code}{why}",
            code=code,
            request_id=request_id,
            retryable=False,
        )
    what = "closed the connection normally" if code == 1000 else f"closed the connection with code {code}"
    return ConnectionLostError(f"server {what} before end_of_stream{why}", code=code, request_id=request_id)
