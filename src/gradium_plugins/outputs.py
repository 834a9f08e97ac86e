"""The consumer's side of the session: events in stream order, bounded in bytes (pure).

Each connection queues its own events; they are delivered connection after connection in the
order the connections took the input, so output of an older server session always comes before
output of a newer one. Timestamps of later connections are moved onto one continuous output
timeline. Session-level events (input speech, update rejections) queue behind what is already
there.
"""

from __future__ import annotations

from collections import deque

from .connstate import Conn, ConnState
from .events import Event
from .protocol import AudioOut, TextOut


class OutputQueue:
    """Per-connection event queues with a byte budget for decoded audio.

    Args:
        budget: Bytes of decoded audio buffered for a slow consumer before reading pauses.
    """

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.order: deque[Conn] = deque()  # delivery order
        self._loose: deque[Event] = deque()  # session events while no connection delivers
        self.bytes = 0
        self.count = 0  # events queued
        self._audio_s = 0.0

    def add(self, conn: Conn) -> None:
        """``conn`` takes the input now: its output is delivered after every older one."""
        conn.out.extend(self._loose)
        self._loose.clear()
        self.order.append(conn)

    def push(self, conn: Conn, ev: Event) -> None:
        """Queue an event of ``conn``."""
        conn.out.append(ev)
        self.count += 1
        if isinstance(ev, AudioOut):
            conn.out_bytes += len(ev.pcm)
            self.bytes += len(ev.pcm)

    def push_front(self, conn: Conn, ev: Event) -> None:
        """Queue an event of ``conn`` ahead of the rest (not audio)."""
        conn.out.appendleft(ev)
        self.count += 1

    def emit(self, ev: Event) -> None:
        """Queue a session-level event behind everything already queued."""
        if self.order:
            self.push(self.order[-1], ev)
        else:
            self._loose.append(ev)
            self.count += 1

    def may_read(self, conn: Conn) -> bool:
        """Whether ``conn``'s reader may take another message.

        The connection being delivered may always fill the budget on its own, so a newer
        connection's backlog can never block the older output the consumer is waiting for.
        """
        if self.order and conn is self.order[0]:
            return conn.out_bytes < self.budget
        return self.bytes < self.budget

    @property
    def empty(self) -> bool:
        """Whether nothing is queued."""
        return not self._loose and all(not c.out for c in self.order)

    def pop(self, hold: bool, active: Conn | None) -> Event | None:
        """The next event in stream order, or ``None``.

        Args:
            hold: Deliver nothing from an open connection yet (before the stream's ``ready``).
            active: The connection taking input (kept even when closed: its end comes last).
        """
        while self.order:
            head = self.order[0]
            if hold and head.state is not ConnState.CLOSED:
                return None
            if head.out:
                return self._take(head)
            if head.state is not ConnState.CLOSED or head is active:
                return None
            self.order.popleft()
        if self._loose:
            self.count -= 1
            return self._loose.popleft()
        return None

    def _take(self, head: Conn) -> Event:
        ev: Event = head.out.popleft()
        self.count -= 1
        if head.out_offset is None:
            head.out_offset = self._audio_s
        off = head.out_offset
        if isinstance(ev, AudioOut):
            head.out_bytes -= len(ev.pcm)
            self.bytes -= len(ev.pcm)
            if ev.stop_s is not None:
                self._audio_s = max(self._audio_s, ev.stop_s + off)
            else:
                self._audio_s += ev.duration_s
            if off and ev.start_s is not None:
                stop = None if ev.stop_s is None else ev.stop_s + off
                return AudioOut(ev.pcm, ev.sample_rate, ev.start_s + off, stop, ev.stream_id)
        elif isinstance(ev, TextOut) and off and ev.start_s is not None:
            stop = None if ev.stop_s is None else ev.stop_s + off
            return TextOut(ev.text, ev.start_s + off, stop, ev.stream_id)
        return ev
