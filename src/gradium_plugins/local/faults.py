"""Fault injection for the local server.

A :class:`FaultPlan` describes what goes wrong on one connection. The server takes either one
plan for every connection or a callable ``connection_index -> FaultPlan | None`` (connections
are numbered from 0 in the order they are accepted), and the plan can be changed while the
server runs (``server.faults = ...``); a connection keeps the plan it started with.

Counting rules:

* "messages" are the protocol messages the server sent on the connection (``ready``, ``text``,
  ``audio``, ``end_of_stream``, ``error``), across every request of the connection; injected
  unknown or malformed messages are not counted. ``*_after_messages=N`` fires right after the
  N-th message (N=0: right after the WebSocket handshake).
* "seconds" count from the WebSocket handshake.
* "input seconds" are seconds of client audio received on the connection (at the input rate).

Only the first fault that fires acts; the connection ends with it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class FaultPlan:
    """What goes wrong on a connection. Every field defaults to "no fault".

    Attributes:
        abort_after_messages: Abort the TCP connection (no close frame, no error) after N messages.
        abort_after_s: Abort the TCP connection N seconds after the handshake.
        abort_after_input_s: Abort the TCP connection once N seconds of input were received.
        close_after_messages: Close the WebSocket with ``close_code`` after N messages.
        close_after_s: Close with ``close_code`` N seconds after the handshake.
        close_after_input_s: Close with ``close_code`` once N seconds of input were received.
        close_code: Close code of the ``close_after_*`` faults (1011 = internal error).
        close_with_error: Send an ``error`` frame (``close_message``, ``close_code``) before closing.
        close_message: Message of that ``error`` frame and reason of the close frame.
        stall_after_messages: Stall after N messages: stop sending and stop reading the socket
            (so WebSocket pings are not answered either), like a hung peer.
        stall_after_s: Stall N seconds after the handshake.
        stall_after_input_s: Stall once N seconds of input were received.
        stall_for_s: Abort the TCP connection after stalling that long (None: stay stalled until
            the client gives up or the server closes).
        malformed_after_messages: Send one frame of malformed JSON after N messages (the
            connection then goes on normally).
        unknown_every: Interleave a message of type ``unknown_type`` after every N messages.
        unknown_type: Type of those messages (``"step"`` mimics the STT/TTS endpoints).
        delay_output_s: Send every ``text``, ``audio`` and ``end_of_stream`` this many seconds
            later than it is produced (throughput unchanged, latency increased).
        ready_delay_s: Send ``ready`` this many seconds after ``setup``.
        send_ready: False: never send ``ready`` (and no output); input is read and discarded.
        reject_setup: Answer ``setup`` with an ``error`` frame carrying this message and code
            1008, then close 1008.
        max_session_s: Session length cap for this connection (overrides the server's).
    """

    abort_after_messages: int | None = None
    abort_after_s: float | None = None
    abort_after_input_s: float | None = None
    close_after_messages: int | None = None
    close_after_s: float | None = None
    close_after_input_s: float | None = None
    close_code: int = 1011
    close_with_error: bool = False
    close_message: str = "internal server error (injected fault)"
    stall_after_messages: int | None = None
    stall_after_s: float | None = None
    stall_after_input_s: float | None = None
    stall_for_s: float | None = None
    malformed_after_messages: int | None = None
    unknown_every: int | None = None
    unknown_type: str = "step"
    delay_output_s: float = 0.0
    ready_delay_s: float = 0.0
    send_ready: bool = True
    reject_setup: str | None = None
    max_session_s: float | None = None

    def __post_init__(self) -> None:
        if self.unknown_every is not None and self.unknown_every < 1:
            raise ValueError("unknown_every must be >= 1")
        if not 1000 <= self.close_code <= 4999 or self.close_code in (1004, 1005, 1006, 1015):
            raise ValueError(f"close_code {self.close_code} cannot be sent in a close frame")
        if self.delay_output_s < 0 or self.ready_delay_s < 0:
            raise ValueError("delays must be >= 0")

    @property
    def watches_messages(self) -> bool:
        """Whether sending a message can trigger something (the server skips the checks if not)."""
        return any(
            v is not None
            for v in (
                self.abort_after_messages,
                self.close_after_messages,
                self.stall_after_messages,
                self.malformed_after_messages,
                self.unknown_every,
            )
        )

    @property
    def watches_input(self) -> bool:
        """Whether receiving input can trigger a fault."""
        return any(v is not None for v in (self.abort_after_input_s, self.close_after_input_s,
                                           self.stall_after_input_s))


#: What ``serve(faults=...)`` accepts: one plan, a per-connection callable, or nothing.
FaultSpec = FaultPlan | Callable[[int], FaultPlan | None] | None


def plan_for(spec: FaultSpec, index: int) -> FaultPlan | None:
    """Resolve the plan of connection ``index``."""
    if spec is None or isinstance(spec, FaultPlan):
        return spec
    return spec(index)
