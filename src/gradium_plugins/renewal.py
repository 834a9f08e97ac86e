"""Renewal before the service's session cap, and switching input to a standby connection.

Part of the session machine (pure, ``now`` passed in): a standby connection is opened ahead of the
cap (or for a settings change); input moves to it at the next pause, or is forced over shortly
before the cap, re-sending the utterance in progress; the old connection gets trailing silence and
its ``end_of_stream`` and drains its output.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from . import protocol
from .actions import Action, Send
from .audio import PauseDetector, encode_samples
from .config import S2SConfig
from .connstate import Conn, ConnState, Role
from .events import SessionRenewed
from .formats import CHUNK_SECONDS
from .outputs import OutputQueue
from .utterances import PREROLL_CHUNKS, UtteranceTracker

logger = logging.getLogger("gradium_plugins.session")

#: A forced switch happens this long before the cap when no pause came.
CAP_SAFETY_S = 1.0
#: After a settings change, switch without a pause after this long.
UPDATE_SWITCH_TIMEOUT_S = 8.0


class Renewal:
    """The renewal and switch decisions of :class:`~gradium_plugins.machine.SessionMachine`."""

    config: S2SConfig
    active: Conn | None
    standby: Conn | None
    input_ended: bool
    send_pos: int
    end: int
    _base: int
    _standby_at: float | None
    _update: Any
    _pauses: PauseDetector
    tracker: UtteranceTracker
    outputs: OutputQueue
    actions: list[Action]

    def _open(self, role: Role, config: S2SConfig, reason: str, now: float) -> Conn:
        raise NotImplementedError

    def _switch_deadline_chunks(self, conn: Conn) -> int:
        cap = self.config.max_session_s
        if cap is None:
            return 1 << 62
        return round((cap - self.config.trailing_silence_s - CAP_SAFETY_S) / CHUNK_SECONDS)

    def _maybe_renew(self, conn: Conn, now: float) -> None:
        cap = self.config.max_session_s
        if cap is None or self.standby is not None or self.input_ended or self._standby_at is not None:
            return
        if (conn.sent_to - conn.first) * CHUNK_SECONDS >= cap - self.config.renew_margin_s:
            self._open(Role.STANDBY, self.config, "max_session", now)

    def _switch_decision(self, conn: Conn, now: float) -> str | None:
        standby = self.standby
        assert standby is not None
        if self.tracker.in_pause(self.send_pos, self._pauses.in_speech, self.end):
            return "pause"
        if self.send_pos - conn.first >= self._switch_deadline_chunks(conn):
            return "forced"
        if standby.reason == "update" and now - standby.ready_at >= UPDATE_SWITCH_TIMEOUT_S:
            return "forced"
        return None

    def _switch(self, old: Conn, how: str, now: float) -> None:
        new = self.standby
        assert new is not None
        self.standby = None
        gap = 0.0
        utt = self.tracker.open_utterance()
        if how == "forced" and utt is not None:
            start = max(utt.start - PREROLL_CHUNKS, self._base, old.first)
            # Re-send the utterance in progress so the new session hears it whole, unless it is
            # so long that replaying it would run the new session into the same wall.
            limit = min(10.0, self._switch_deadline_chunks(old) * CHUNK_SECONDS / 2)
            if (self.send_pos - start) * CHUNK_SECONDS <= limit:
                gap = (self.send_pos - start) * CHUNK_SECONDS
                self.send_pos = start
                self.tracker.mark_replayed(start)
        new.role = Role.ACTIVE
        new.first = new.sent_to = self.send_pos
        if new.reason == "update":
            self.config = new.config
            self._update = None
        self.outputs.push_front(
            new,
            SessionRenewed(
                new.reason,
                new.request_id,
                how == "pause",
                gap,
                new.config.target_language,
                new.config.voice_id,
            ),
        )
        self.active = new
        self.outputs.add(new)
        self._retire(old, now)
        logger.info("switched to a new session (%s, %s)", new.reason, how)

    def _retire(self, conn: Conn, now: float) -> None:
        """Silence so the old session finalises its last sentence, then its end_of_stream."""
        conn.role = Role.RETIRED
        silence = np.zeros(round(conn.fmt_in.input_rate * CHUNK_SECONDS), dtype=np.int16)
        msg = protocol.audio_message(encode_samples(silence, conn.fmt_in), conn.config.client_req_id)
        for _ in range(round(self.config.trailing_silence_s / CHUNK_SECONDS)):
            self.actions.append(Send(conn.id, msg))
        self.actions.append(
            Send(conn.id, protocol.end_of_stream_message(conn.config.client_req_id), eos=True)
        )
        conn.eos_queued = True
        conn.state = ConnState.DRAINING
