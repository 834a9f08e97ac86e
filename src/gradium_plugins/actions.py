"""What the session machine asks its driver to do (the driver reports back what happened)."""

from __future__ import annotations

from dataclasses import dataclass

from .config import S2SConfig


@dataclass(frozen=True, slots=True)
class Open:
    """Open ``conn`` with ``config`` (token, WebSocket, ``setup``), then report ``SessionMachine.opened``."""

    conn: int
    config: S2SConfig


@dataclass(frozen=True, slots=True)
class Send:
    """Send ``text`` on ``conn`` (in order); report a failure with :meth:`SessionMachine.failed`.

    ``eos``: it is our ``end_of_stream``; report when it went out with ``SessionMachine.eos_sent``
    (the server's own ``end_of_stream`` only counts after that).
    """

    conn: int
    text: str
    eos: bool = False


@dataclass(frozen=True, slots=True)
class Ping:
    """Send a WebSocket ping on ``conn``."""

    conn: int


@dataclass(frozen=True, slots=True)
class Close:
    """Close ``conn`` now (its output is no longer read)."""

    conn: int
    code: int = 1000


Action = Open | Send | Ping | Close
