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
    eos_sent_at: float | None = None
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

    def deadlines(self, cfg: S2SConfig) -> list[float]:
        """Times at which this connection's state must be checked."""
        if self.state is ConnState.CLOSED:
            return []
        if self.state is ConnState.OPENING:
            return [self.created_at + connect_deadline_s(cfg)]
        times = []
        if self.state is ConnState.OPEN:
            times.append(self.opened_at + cfg.ready_timeout)
        if not self.reading:
            return times
        hb = cfg.heartbeat_interval
        if hb is not None:
            times.append(self.ping_sent_at + hb if self.ping_sent_at is not None else self.last_rx + hb)
        if self.eos_sent_at is not None:
            times.append(max(self.eos_sent_at, self.last_progress) + cfg.drain_timeout)
        elif cfg.idle_timeout is not None and self.sent_to > self.first:
            times.append(self.last_progress + cfg.idle_timeout)
        return times


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
