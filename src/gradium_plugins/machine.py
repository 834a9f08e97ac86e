"""The session's decisions as a pure state machine (sans-I/O: no sockets, no asyncio, no clock).

The asyncio driver (:mod:`.session`) feeds it what happened — input chunks, server messages,
connections opened or lost, the time — and carries out what it returns: :class:`Open`,
:class:`Send`, :class:`Ping` and :class:`Close` actions, events for the consumer (in stream
order), and :meth:`SessionMachine.next_deadline`, the next time :meth:`SessionMachine.tick`
must run. Every timer of the session is one of those deadlines, so a state that has work
always has a deadline or a pending action: the driver can never spin or stall.
"""

from __future__ import annotations

import logging
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import protocol
from .actions import Action, Close, Open, Ping, Send
from .audio import Int16Array, PauseDetector, encode_samples, wav_header
from .backoff import Backoff
from .config import S2SConfig
from .connstate import Conn, ConnState, Role, close_error
from .errors import ConnectionLostError, GradiumError, ProtocolError, error_from_server
from .events import (
    Event,
    InputDropped,
    InputSpeechStarted,
    InputSpeechStopped,
    Reconnected,
    UpdateRejected,
)
from .formats import CHUNK_SECONDS, get_format
from .outputs import OutputQueue
from .protocol import AudioOut, EndOfStream, Ready, TextOut
from .renewal import UPDATE_SWITCH_TIMEOUT_S, Renewal
from .utterances import UtteranceTracker

logger = logging.getLogger("gradium_plugins.session")

#: Output frames whose peak is below this are silence (they start no translation).
_VOICED_PEAK = 64


@dataclass(slots=True)
class _Update:
    changes: dict[str, Any]
    config: S2SConfig
    attempts: int = 0


@dataclass(slots=True)
class _Outage:
    started: float
    reason: str
    replayed_s: float
    attempts: int = 0


@dataclass
class SessionMachine(Renewal):
    """Input log, connections, replay, renewal, backoff and deadlines of one logical stream.

    Args:
        config: Settings of the first connection.
        persistent: Never end the session on network failures (frameworks): keep buffering
            input (bounded) and retry with capped backoff.
        foreground: The first connection's failure is final (``connect()`` raises it).
        rng: Jitter source for backoff.
    """

    config: S2SConfig
    persistent: bool = False
    foreground: bool = False
    rng: random.Random = field(default_factory=random.Random)
    actions: list[Action] = field(default_factory=list)
    fatal: GradiumError | None = None
    input_ended: bool = False
    done: bool = False
    #: Set when a deadline may have moved earlier; the driver recomputes its timer only then.
    deadlines_changed: bool = True
    #: Input speech events found by the last input call (the driver hands them to listeners).
    speech: list[InputSpeechStarted | InputSpeechStopped] = field(default_factory=list)

    def __post_init__(self) -> None:
        cfg = self.config
        self._fmt_in = get_format(cfg.input_format)
        self.wire_rate = self._fmt_in.input_rate
        self.chunk_samples = round(self.wire_rate * CHUNK_SECONDS)
        self._pauses = PauseDetector(self.wire_rate)
        self.tracker = UtteranceTracker()
        self._log: deque[Int16Array] = deque()
        self._base = 0  # chunk index of _log[0]
        self.end = 0  # chunks accepted
        self.send_pos = 0  # next chunk for the active connection
        self._replay_chunks = max(1, round(cfg.replay_buffer_s / CHUNK_SECONDS))
        self._max_pending = max(1, round(cfg.max_pending_input_s / CHUNK_SECONDS))
        self.conns: dict[int, Conn] = {}
        self._next_id = 0
        self.active: Conn | None = None
        self.standby: Conn | None = None
        self.outputs = OutputQueue(cfg.max_output_buffer_bytes)
        self._first_ready = False
        self._started = False
        self._outage: _Outage | None = None
        self._reconnect_at: float | None = None
        self._standby_at: float | None = None  # retry of a failed standby
        self._update: _Update | None = None
        attempts = None if self.persistent or not cfg.reconnect else max(0, cfg.max_reconnect_attempts)
        self._backoff = Backoff(
            cfg.reconnect_backoff_s,
            cfg.reconnect_backoff_max_s,
            attempts,
            None if self.persistent else cfg.reconnect_budget_s,
            rng=self.rng,
        )

    # --- public state ----------------------------------------------------------------------

    @property
    def pending_input_chunks(self) -> int:
        """Accepted chunks not yet sent to a connection."""
        return self.end - self.send_pos

    @property
    def input_full(self) -> bool:
        """Whether ``send_audio`` should wait (non-persistent sessions only)."""
        return not self.persistent and self.pending_input_chunks > self._max_pending and self.fatal is None

    @property
    def retained_chunks(self) -> int:
        """Chunks held in the input log (unsent + kept for replay)."""
        return len(self._log)

    @property
    def request_id(self) -> str | None:
        """Request id of the connection receiving input (or the newest one)."""
        conn = self.active or (self.outputs.order[-1] if self.outputs.order else None)
        return conn.request_id if conn else None

    def take_actions(self) -> list[Action]:
        """Hand the pending actions to the driver."""
        actions, self.actions = self.actions, []
        return actions

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self, now: float) -> None:
        """Open the first connection."""
        if self._started:
            return
        self._started = True
        self._open(Role.ACTIVE, self.config, "first", now)

    def _open(self, role: Role, config: S2SConfig, reason: str, now: float) -> Conn:
        self.deadlines_changed = True
        self._next_id += 1
        conn = Conn(self._next_id, config, role, reason, created_at=now)
        self.conns[conn.id] = conn
        if role is Role.ACTIVE:
            self.active = conn
            conn.first = conn.sent_to = self.send_pos
            self.outputs.add(conn)
        else:
            self.standby = conn
        self.actions.append(Open(conn.id, config))
        return conn

    def opened(self, cid: int, now: float) -> None:
        """Connection ``cid`` is open and its ``setup`` was sent."""
        self.deadlines_changed = True
        conn = self.conns.get(cid)
        if conn is None or conn.state is not ConnState.OPENING:
            return
        conn.state = ConnState.OPEN
        conn.opened_at = conn.last_rx = conn.last_progress = now
        self._pump(now)

    def close(self) -> None:
        """The user closed the session: every connection goes."""
        self.done = True
        for conn in self.conns.values():
            if conn.state is not ConnState.CLOSED:
                conn.state = ConnState.CLOSED
                self.actions.append(Close(conn.id, 1000))

    # --- input -------------------------------------------------------------------------------

    def push_input(self, chunks: list[Int16Array], now: float, lag_s: float = 0.0) -> None:
        """Append whole input chunks (wire rate, mono int16) and send what can be sent.

        ``lag_s`` is how long ago the newest sample was handed in (the pause detector dates
        its events back by it).
        """
        if not chunks:
            return
        self._log.extend(chunks)
        self.end += len(chunks)
        block = chunks[0] if len(chunks) == 1 else np.concatenate(chunks)
        self._speech_events(self._pauses.push(block), now, lag_s)
        self._pump(now)

    def end_input(self, tail: list[Int16Array], now: float) -> None:
        """Append the last chunks (resampler tail, trailing silence) and end the input."""
        if tail:
            self._log.extend(tail)
            self.end += len(tail)
            self._speech_events(self._pauses.push(np.concatenate(tail)), now, 0.0)
        self._speech_events(self._pauses.flush(), now, 0.0)
        self.input_ended = True
        self._pump(now)

    def _speech_events(self, found: list[tuple[str, int]], now: float, lag_s: float) -> None:
        for kind, sample in found:
            input_s = sample / self.wire_rate
            at = now - lag_s - max(0.0, self._pauses.position / self.wire_rate - input_s)
            chunk = sample // self.chunk_samples
            ev = (
                self.tracker.speech_started(chunk, input_s, at)
                if kind == "start"
                else self.tracker.speech_stopped(chunk, input_s, at)
            )
            if ev is not None:
                self._emit(ev)
                self.speech.append(ev)

    def update(self, config: S2SConfig, changes: dict[str, Any], now: float) -> None:
        """Move to ``config`` at the next pause; a refusal is reported, never fatal."""
        self.deadlines_changed = True
        if self.standby is not None:
            self._drop(self.standby, 1000)
            self.standby = None
        self._standby_at = None
        self._update = _Update(changes, config)
        self._open(Role.STANDBY, config, "update", now)

    # --- sending -----------------------------------------------------------------------------

    def _pump(self, now: float) -> None:
        """Send what the active connection may take now; switch or retire connections."""
        conn = self.active
        if conn is None or conn.state not in (ConnState.OPEN, ConnState.READY) or self.done:
            self._trim(now)
            return
        if self.standby is not None and self.standby.state is ConnState.READY and self.send_pos < self.end:
            how = self._switch_decision(conn, now)
            if how is not None:
                self._switch(conn, how, now)
                conn = self.active
                assert conn is not None
        deadline = self._switch_deadline_chunks(conn)
        start = self.send_pos
        limit = self.end if self.input_ended else min(self.end, conn.first + deadline)
        while self.send_pos < limit:
            chunk = self._log[self.send_pos - self._base]
            payload = encode_samples(chunk, conn.fmt_in)
            if conn.fmt_in.codec == "wav" and not conn.wav_header_sent:
                payload = wav_header(conn.fmt_in.input_rate) + payload
                conn.wav_header_sent = True
            self.actions.append(Send(conn.id, protocol.audio_message(payload, conn.config.client_req_id)))
            self.send_pos += 1
        if self.send_pos != start:
            conn.sent_to = self.send_pos
            if self.tracker.mark_sent(self.send_pos, now):
                self.deadlines_changed = True
            self._maybe_renew(conn, now)
        if self.input_ended and self.send_pos == self.end and not conn.eos_queued:
            eos = protocol.end_of_stream_message(conn.config.client_req_id)
            self.actions.append(Send(conn.id, eos, eos=True))
            conn.eos_queued = True
            if conn.state is ConnState.READY:
                conn.state = ConnState.DRAINING
        self._trim(now)

    def _trim(self, now: float) -> None:
        """Drop input no replay can need; in persistent mode, drop the oldest past the budget."""
        if self.persistent and self.end - self.send_pos > self._max_pending:
            dropped = self.end - self.send_pos - self._max_pending
            self.send_pos += dropped
            seconds = dropped * CHUNK_SECONDS
            logger.warning(
                "no connection: dropped the oldest %.2f s of buffered input (budget full)", seconds
            )
            self._emit(InputDropped(seconds, "input buffer full while no connection was usable"))
        keep = self.tracker.retain_from()
        keep_from = self.send_pos if keep is None else min(self.send_pos, keep)
        keep_from = min(self.send_pos, max(keep_from, self.end - self._replay_chunks))
        while self._base < keep_from:
            self._log.popleft()
            self._base += 1

    # --- receiving ---------------------------------------------------------------------------

    def receive(self, cid: int, ev: Ready | TextOut | AudioOut | Any, now: float) -> None:
        """A parsed server message arrived on ``cid`` (audio already decoded)."""
        conn = self.conns.get(cid)
        if conn is None or conn.state is ConnState.CLOSED:
            return
        conn.last_rx = conn.last_progress = now
        conn.ping_sent_at = None
        if isinstance(ev, AudioOut):
            # Every 8th sample is plenty to tell speech from silence, at an eighth of the cost.
            pcm = np.frombuffer(ev.pcm, dtype="<i2")[::8]
            voiced = bool(pcm.size) and (int(pcm.max()) >= _VOICED_PEAK or int(pcm.min()) <= -_VOICED_PEAK)
            self._output(conn, ev, now, voiced=voiced, audio_s=ev.duration_s)
        elif isinstance(ev, TextOut):
            self._output(conn, ev, now, voiced=False, text=ev.text)
        elif isinstance(ev, Ready):
            self._ready(conn, ev, now)
        elif isinstance(ev, EndOfStream):
            self._end_of_stream(conn, now)
        elif isinstance(ev, protocol.ErrorEvent):
            err = error_from_server(ev.message, ev.code, conn.request_id)
            low = ev.message.lower()
            if "session" in low and ("limit" in low or "duration" in low):
                err.retryable = True
            self.failed(cid, err, now)
        else:
            self._push(conn, ev)

    def eos_sent(self, cid: int, now: float) -> None:
        """Our ``end_of_stream`` went out on ``cid`` (from then on the server's counts as an end)."""
        self.deadlines_changed = True
        conn = self.conns.get(cid)
        if conn is not None and conn.state is not ConnState.CLOSED:
            conn.eos_sent_at = now

    def alive(self, cid: int, now: float) -> None:
        """A pong (or any frame without protocol meaning) arrived: liveness, not progress."""
        conn = self.conns.get(cid)
        if conn is not None:
            conn.last_rx = now
            conn.ping_sent_at = None

    def _output(self, conn: Conn, ev: Event, now: float, *, voiced: bool, **kw: Any) -> None:
        span = (conn.first, conn.sent_to)
        for tev in self.tracker.output(
            conn.id, span, now, language=conn.config.target_language, voiced=voiced, **kw
        ):
            self._push(conn, tev)
            self.deadlines_changed = True  # a segment started or ended: its gap deadline
        self._push(conn, ev)

    def _ready(self, conn: Conn, ev: Ready, now: float) -> None:
        self.deadlines_changed = True
        expected = get_format(conn.config.output_format).output_rate
        if ev.sample_rate is not None and ev.sample_rate != expected:
            self.failed(
                conn.id,
                ProtocolError(
                    f"server announced output sample_rate={ev.sample_rate} for output_format="
                    f"{conn.config.output_format!r}, which is {expected} Hz",
                    request_id=ev.request_id,
                    retryable=False,
                ),
                now,
            )
            return
        conn.ready = ev
        conn.ready_at = now
        if conn.state is ConnState.OPEN:
            conn.state = ConnState.DRAINING if conn.eos_queued else ConnState.READY
        logger.info("session ready (request_id=%s, connection %d)", ev.request_id, conn.id)
        if conn is self.active:
            self._backoff.connected(now)
            if self._outage is not None:
                o = self._outage
                self._push(conn, Reconnected(o.attempts, now - o.started, o.replayed_s, o.reason))
                logger.info("reconnected after %d attempt(s) in %.3f s", o.attempts, now - o.started)
                self._outage = None
        if not self._first_ready:
            # The stream's first event, ahead of input speech events queued before it came.
            self._first_ready = True
            self.outputs.push_front(conn, ev)
        self._pump(now)

    def _end_of_stream(self, conn: Conn, now: float) -> None:
        self.deadlines_changed = True
        if conn.eos_sent_at is None:
            self.failed(conn.id, ConnectionLostError("server sent end_of_stream before the input ended"), now)
            return
        conn.state = ConnState.CLOSED
        self.actions.append(Close(conn.id, 1000))
        done = self.tracker.complete(conn.id, now)
        if done is not None:
            self._push(conn, done)
        for skipped in self.tracker.finish((conn.first, conn.sent_to), now):
            self._push(conn, skipped)
        if conn is self.active:
            self._push(conn, EndOfStream())

    def _push(self, conn: Conn, ev: Event) -> None:
        self.outputs.push(conn, ev)

    def _emit(self, ev: Event) -> None:
        """A session-level event: delivered after what is already queued."""
        self.outputs.emit(ev)

    def may_read(self, cid: int) -> bool:
        """Whether the reader of ``cid`` may take another message (byte budget for a slow consumer)."""
        conn = self.conns.get(cid)
        return conn is None or self.outputs.may_read(conn)

    def reading(self, cid: int, reading: bool, now: float) -> None:
        """The reader of ``cid`` paused (slow consumer) or resumed: silence then proves nothing."""
        self.deadlines_changed = True
        conn = self.conns.get(cid)
        if conn is not None:
            conn.reading = reading
            if reading:
                conn.last_rx = now
                conn.ping_sent_at = None

    # --- failures ----------------------------------------------------------------------------

    def closed(self, cid: int, code: int | None, reason: str, now: float) -> None:
        """The socket of ``cid`` closed (``code`` None: dropped without a close frame)."""
        conn = self.conns.get(cid)
        if conn is None or conn.state is ConnState.CLOSED:
            return
        self.failed(cid, close_error(code, reason, conn.request_id), now)

    def failed(self, cid: int, error: GradiumError, now: float) -> None:
        """Connection ``cid`` failed: recover, retry the standby, reject an update, or give up."""
        self.deadlines_changed = True
        conn = self.conns.get(cid)
        if conn is None or conn.state is ConnState.CLOSED:
            return
        self._drop(conn, 1011 if error.retryable else 1000)
        conn.error = error
        self.tracker.cut(cid)
        logger.warning("connection %d failed: %s", cid, error)
        if conn.role is Role.STANDBY:
            self._standby_failed(conn, error, now)
        elif conn.role is Role.RETIRED:
            logger.error("output of a renewed session was cut (%s); its last utterance may be missing", error)
        elif conn is self.active:
            self._active_failed(conn, error, now)

    def _drop(self, conn: Conn, code: int) -> None:
        conn.state = ConnState.CLOSED
        self.actions.append(Close(conn.id, code))

    def _standby_failed(self, conn: Conn, error: GradiumError, now: float) -> None:
        self.standby = None
        upd = self._update
        if conn.reason == "update" and upd is not None:
            upd.attempts += 1
            if not error.retryable or upd.attempts > max(1, self.config.max_reconnect_attempts):
                self._update = None
                logger.warning("settings change refused (%s); the current settings carry on", error)
                self._emit(UpdateRejected(error, dict(upd.changes)))
                return
        elif not error.retryable:
            self._fail(error)
            return
        delay = min(
            self.config.reconnect_backoff_max_s, self.config.reconnect_backoff_s * 2 ** min(conn.id, 6)
        )
        self._standby_at = now + delay * self.rng.uniform(0.5, 1.5)

    def _active_failed(self, conn: Conn, error: GradiumError, now: float) -> None:
        self.active = None
        self._backoff.disconnected()
        first_failure = self.foreground and conn.reason == "first" and conn.ready is None
        if not error.retryable or not self.config.reconnect or first_failure:
            self._fail(error)
            return
        point = self.tracker.replay_point((conn.first, conn.sent_to))
        new_pos = conn.sent_to if point is None else min(self.send_pos, point)
        if new_pos < self._base:
            logger.error(
                "replay buffer too small: %.2f s of input before the failure cannot be re-sent",
                (self._base - new_pos) * CHUNK_SECONDS,
            )
            new_pos = self._base
        replayed_s = max(0, self.send_pos - new_pos) * CHUNK_SECONDS
        self.send_pos = new_pos
        self.tracker.mark_replayed(new_pos)
        if self._outage is None:
            self._outage = _Outage(now, error.message, replayed_s)
        else:
            self._outage.replayed_s = max(self._outage.replayed_s, replayed_s)
        delay = self._backoff.failure(now)
        if delay is None:
            n = self._backoff.failures
            self._fail(
                ConnectionLostError(
                    f"connection lost ({error.message}) and {n} attempt(s) in a row failed; "
                    f"{self.pending_input_chunks * CHUNK_SECONDS:.1f} s of input were not translated",
                    code=error.code,
                    request_id=error.request_id,
                )
            )
            return
        self._reconnect_at = now + delay

    def _fail(self, error: GradiumError) -> None:
        self.deadlines_changed = True
        if self.fatal is None:
            self.fatal = error
        self._reconnect_at = self._standby_at = None
        for conn in self.conns.values():
            if conn.state is not ConnState.CLOSED:
                self._drop(conn, 1000)
        self.active = self.standby = None

    # --- time --------------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Run every decision that is due at ``now``."""
        self.deadlines_changed = True
        if self.done or self.fatal is not None:
            return
        if self._reconnect_at is not None and now >= self._reconnect_at and self.active is None:
            self._reconnect_at = None
            if self._outage is not None:
                self._outage.attempts += 1
            self._open(Role.ACTIVE, self.config, "reconnect", now)
        if self._standby_at is not None and now >= self._standby_at and self.standby is None:
            self._standby_at = None
            if self._update is not None:
                self._open(Role.STANDBY, self._update.config, "update", now)
            elif not self.input_ended:
                self._open(Role.STANDBY, self.config, "max_session", now)
        self._backoff.forgive(now)
        for conn in list(self.conns.values()):
            if conn.state is not ConnState.CLOSED:
                self._check(conn, now)
        for cid, ev in self.tracker.tick(now):
            target = self.conns.get(cid) if cid is not None else None
            if target is not None and target in self.outputs.order:
                self._push(target, ev)
            else:
                self._emit(ev)
        self._pump(now)

    def _check(self, conn: Conn, now: float) -> None:
        err, ping = conn.check(self.config, now)
        if ping:
            self.actions.append(Ping(conn.id))
        if err is not None:
            self.failed(conn.id, err, now)

    def next_deadline(self) -> float | None:
        """The next time :meth:`tick` must run (``None``: nothing is time-driven now)."""
        if self.done or self.fatal is not None:
            return None
        cfg = self.config
        best = self.tracker.next_deadline()
        standby = self.standby
        extra = (
            standby.ready_at + UPDATE_SWITCH_TIMEOUT_S
            if standby is not None and standby.reason == "update" and standby.state is ConnState.READY
            else None
        )
        for t in (self._reconnect_at, self._standby_at, self._backoff.healthy_deadline(), extra):
            if t is not None and (best is None or t < best):
                best = t
        for conn in self.conns.values():
            t = conn.deadline(cfg)
            if t is not None and (best is None or t < best):
                best = t
        return best

    # --- output ------------------------------------------------------------------------------

    def next_event(self) -> Event | None:
        """The next event for the consumer, in stream order (``None``: nothing yet).

        ``ready`` is the stream's first event: nothing is delivered before it.
        """
        ev = self.outputs.pop(not self._first_ready, self.active)
        if isinstance(ev, EndOfStream):
            self.done = True
        return ev

    @property
    def finished(self) -> bool:
        """Whether the stream is over (ended or failed) and every event was delivered."""
        return (self.fatal is not None or self.done) and self.outputs.empty
