"""What the local server remembers about its connections (for tests and benchmarks), bounded.

A server that runs for days must not keep every connection forever: ``LocalServer.connections``
holds the last ``ServerLimits.history`` records, each record keeps at most :data:`RECORD_ITEMS`
setups / request ids / utterances, and a setup larger than :data:`SETUP_KEEP_BYTES` is kept as
its small top-level fields only.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

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
END_SETUP_TIMEOUT = "setup_timeout"  #: no ``setup`` within ServerLimits.setup_timeout_s
END_IDLE_TIMEOUT = "idle_timeout"  #: no client message within ServerLimits.idle_timeout_s
END_SLOW_CLIENT = "slow_client"  #: the client did not read output within ServerLimits.send_timeout_s

#: Entries kept per list of a record (setups, request ids, utterances): the most recent ones.
RECORD_ITEMS = 1000
#: A setup message larger than this is recorded as its small top-level fields only.
SETUP_KEEP_BYTES = 8 * 1024
_SMALL_VALUE_BYTES = 256


@dataclass(eq=False)
class ConnectionRecord:
    """What happened on one WebSocket connection (for tests and benchmarks).

    Attributes:
        index: Connection number, from 0 in accept order (the index fault callables receive).
        path: Request path of the handshake, without the query string.
        auth: ``"off"`` (server has no key), ``"key"``, ``"token"`` or ``"rejected"``.
        setups: ``setup`` messages received, as parsed JSON (the last :data:`RECORD_ITEMS`; one
            larger than :data:`SETUP_KEEP_BYTES` keeps only its small top-level fields plus
            ``"_bytes"``, its size).
        request_ids: ``request_id`` of every ``ready`` (one per accepted ``setup``).
        input_s: Seconds of input audio received (at the input rate), all requests together.
        input_buffer_peak: Most bytes of decoded input that waited for the engine at once.
        utterances: Text of every utterance emitted, in order (the last :data:`RECORD_ITEMS`).
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
    input_buffer_peak: int = 0
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

    def add_setup(self, raw: str | bytes) -> None:
        """Record a ``setup`` message (its raw text), bounded in size."""
        try:
            parsed = json.loads(raw)
        except ValueError:
            return
        if not isinstance(parsed, dict):
            return
        if len(raw) > SETUP_KEEP_BYTES:
            parsed = {k: v for k, v in parsed.items() if _small(v)} | {"_bytes": len(raw)}
        keep_last(self.setups, parsed)


def _small(value: Any) -> bool:
    if isinstance(value, str):
        return len(value) <= _SMALL_VALUE_BYTES
    if isinstance(value, int | float | bool) or value is None:
        return True
    try:
        return len(json.dumps(value)) <= _SMALL_VALUE_BYTES
    except (TypeError, ValueError):
        return False


def keep_last(items: list[Any], item: Any, limit: int = RECORD_ITEMS) -> None:
    """Append ``item``, dropping the oldest entries beyond ``limit``."""
    items.append(item)
    if len(items) > limit:
        del items[: len(items) - limit]
