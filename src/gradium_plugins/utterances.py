"""Input utterances and their translations, paired (pure: the caller passes the clock).

The client's pause detector cuts the input into utterances; the server's output arrives in
*segments*: audio/text with no quiet gap longer than :data:`SEGMENT_GAP_S`, and a ``text`` that
follows audio opens a new one. Each segment is
paired with the oldest input utterance sent to that connection that still waits for one, except
that an utterance whose end went out long before the segment (more than the expected latency
window) is declared skipped: a noise burst the service ignored then costs one pairing, not every
later one. The pairing decides the replay point after a failure (only utterances without a
complete translation are re-sent) and the utterance-level events adapters turn into metrics.
"""

from __future__ import annotations

import statistics
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import Enum

from .events import (
    InputSpeechStarted,
    InputSpeechStopped,
    TranslationCompleted,
    TranslationSkipped,
    TranslationStarted,
)

#: Output quieter than this long ends a translation segment.
SEGMENT_GAP_S = 0.8
#: Chunks re-sent before an utterance's start so the server hears its onset.
PREROLL_CHUNKS = 2
#: Expected-latency window before any translation was measured (the service quotes ~3 s).
DEFAULT_WINDOW_S = 4.0
_MAX_WINDOW_S = 15.0

TrackerEvent = (
    InputSpeechStarted | InputSpeechStopped | TranslationStarted | TranslationCompleted | TranslationSkipped
)


class UttState(Enum):
    """Where an input utterance stands."""

    OPEN = "open"  # speech still going on
    ENDED = "ended"  # speech ended, no translation yet
    TRANSLATING = "translating"  # its translation is arriving
    DONE = "done"  # translation complete
    SKIPPED = "skipped"  # judged to have no translation


@dataclass(slots=True)
class Utterance:
    """One input utterance (chunk indices on the session's input log)."""

    index: int
    start: int
    start_s: float
    end: int | None = None
    ended_at: float | None = None  # when its last audio was handed in
    end_sent_at: float | None = None  # when its end last went out on a connection
    state: UttState = UttState.OPEN
    replayed: bool = False
    first_audio_at: float | None = None
    text: list[str] = field(default_factory=list)
    audio_s: float = 0.0

    @property
    def pending(self) -> bool:
        """Whether it still needs a (complete) translation."""
        return self.state in (UttState.OPEN, UttState.ENDED, UttState.TRANSLATING)


@dataclass(slots=True)
class _Segment:
    utt: Utterance | None
    language: str | None
    last_output_at: float
    started_at: float
    first_audio_at: float | None = None
    text: list[str] = field(default_factory=list)
    audio_s: float = 0.0


class UtteranceTracker:
    """Tracks input utterances and pairs translation segments with them, per connection."""

    def __init__(self) -> None:
        self.utts: deque[Utterance] = deque()
        self._count = 0
        self._segments: dict[int, _Segment] = {}
        self._ttfa: deque[float] = deque(maxlen=8)
        self._window = DEFAULT_WINDOW_S
        self._sent_scan = 0  # index into utts of the first utterance whose end may not be sent yet

    # --- input side ----------------------------------------------------------------------

    def speech_started(self, chunk: int, input_s: float, at: float) -> InputSpeechStarted:
        """An utterance started at input chunk ``chunk``."""
        utt = Utterance(self._count, chunk, input_s)
        self._count += 1
        self.utts.append(utt)
        return InputSpeechStarted(input_s, at, utt.index)

    def speech_stopped(self, chunk: int, input_s: float, at: float) -> InputSpeechStopped | None:
        """The open utterance ended at input chunk ``chunk``."""
        if not self.utts or self.utts[-1].end is not None:
            return None
        utt = self.utts[-1]
        utt.end = chunk
        utt.ended_at = at
        if utt.state is UttState.OPEN:
            utt.state = UttState.ENDED
        return InputSpeechStopped(input_s, at, utt.index, utt.start_s)

    def mark_sent(self, upto: int, now: float) -> None:
        """Input chunks before ``upto`` went out: note when each utterance end was sent."""
        utts = self.utts
        i = self._sent_scan
        while i < len(utts):
            end = utts[i].end
            if end is None or end >= upto:
                break
            if utts[i].end_sent_at is None:
                utts[i].end_sent_at = now
            i += 1
        self._sent_scan = i

    # --- output side ---------------------------------------------------------------------

    def window_s(self) -> float:
        """How long after an utterance's end its translation is expected to have started."""
        return self._window

    def _measured(self, ttfa: float) -> None:
        self._ttfa.append(ttfa)
        self._window = min(_MAX_WINDOW_S, max(DEFAULT_WINDOW_S, 2.5 * statistics.median(self._ttfa)))

    def output(
        self,
        conn: int,
        span: tuple[int, int],
        now: float,
        *,
        language: str | None,
        voiced: bool,
        audio_s: float = 0.0,
        text: str | None = None,
    ) -> list[TrackerEvent]:
        """Account translated output that arrived on ``conn`` (input chunks ``span`` were sent to it)."""
        events: list[TrackerEvent] = []
        seg = self._segments.get(conn)
        if seg is not None and text is not None and seg.audio_s > 0:
            # Text after audio opens the next translation (the service sends a segment's text
            # ahead of its audio), even when the two follow each other without a pause.
            done = self.complete(conn, now)
            if done is not None:
                events.append(done)
            seg = None
        if seg is None:
            if not voiced and text is None:
                return events  # silence between translations starts nothing
            seg = self._start_segment(conn, span, now, language, events)
        if voiced or text is not None:
            seg.last_output_at = now
        if text is not None:
            seg.text.append(text)
        if audio_s:
            seg.audio_s += audio_s
            if voiced and seg.first_audio_at is None:
                seg.first_audio_at = now
        return events

    def _start_segment(
        self, conn: int, span: tuple[int, int], now: float, language: str | None, events: list[TrackerEvent]
    ) -> _Segment:
        first, sent_to = span
        window = self.window_s()
        chosen: Utterance | None = None
        candidates = [u for u in self.utts if u.state in (UttState.OPEN, UttState.ENDED)]
        candidates = [u for u in candidates if first <= u.start < sent_to]
        for i, utt in enumerate(candidates):
            last = i == len(candidates) - 1
            if last or utt.end_sent_at is None or now - utt.end_sent_at <= window:
                chosen = utt
                break
            utt.state = UttState.SKIPPED
            events.append(TranslationSkipped(utt.index, now))
        seg = _Segment(chosen, language, now, now)
        if chosen is not None:
            chosen.state = UttState.TRANSLATING
        self._segments[conn] = seg
        events.append(
            TranslationStarted(
                chosen.index if chosen else None, now, language, bool(chosen and chosen.replayed)
            )
        )
        return seg

    def complete(self, conn: int, now: float) -> TranslationCompleted | None:
        """End the segment in progress on ``conn`` (quiet, or its stream ended)."""
        seg = self._segments.pop(conn, None)
        if seg is None:
            return None
        utt = seg.utt
        ttfa: float | None = None
        if utt is not None:
            utt.state = UttState.DONE
            utt.first_audio_at = seg.first_audio_at
            utt.text = seg.text
            utt.audio_s = seg.audio_s
            if seg.first_audio_at is not None and utt.ended_at is not None:
                ttfa = max(0.0, seg.first_audio_at - utt.ended_at)
                if not utt.replayed:
                    self._measured(ttfa)
        return TranslationCompleted(
            utt.index if utt else None,
            seg.language,
            ttfa,
            bool(utt and utt.replayed),
            " ".join(t.strip() for t in seg.text if t.strip()),
            seg.audio_s,
            now,
        )

    def cut(self, conn: int) -> None:
        """``conn`` failed mid-segment: its utterance goes back to waiting (it is replayed)."""
        seg = self._segments.pop(conn, None)
        if seg is not None and seg.utt is not None and seg.utt.state is UttState.TRANSLATING:
            seg.utt.state = UttState.ENDED if seg.utt.end is not None else UttState.OPEN

    # --- decisions -----------------------------------------------------------------------

    def replay_point(self, span: tuple[int, int]) -> int | None:
        """First input chunk to re-send after the connection that got ``span`` failed, if any."""
        first, sent_to = span
        for utt in self.utts:
            if utt.pending and utt.start < sent_to and (utt.end is None or utt.end >= first):
                return max(first, utt.start - PREROLL_CHUNKS)
        return None

    def mark_replayed(self, from_chunk: int) -> None:
        """Utterances from ``from_chunk`` on are sent again."""
        for i, utt in enumerate(self.utts):
            if utt.pending and (utt.end is None or utt.end >= from_chunk):
                utt.replayed = True
                utt.end_sent_at = None
                self._sent_scan = min(self._sent_scan, i)

    def retain_from(self) -> int | None:
        """Oldest input chunk still needed for a replay (``None``: none)."""
        while self.utts and not self.utts[0].pending:
            self.utts.popleft()
            self._sent_scan = max(0, self._sent_scan - 1)
        if not self.utts:
            return None
        return max(0, self.utts[0].start - PREROLL_CHUNKS)

    def in_pause(self, chunk: int, detector_in_speech: bool, newest: int) -> bool:
        """Whether input chunk ``chunk`` lies outside every utterance."""
        if chunk >= newest - 1:
            return not detector_in_speech
        for utt in reversed(self.utts):
            if utt.end is None:
                if chunk >= utt.start - 1:
                    return False
                continue
            if utt.end + 1 < chunk:
                return True
            if chunk >= utt.start - 1:
                return False
        return True

    def open_utterance(self) -> Utterance | None:
        """The utterance in progress, if any."""
        return self.utts[-1] if self.utts and self.utts[-1].end is None else None

    def tick(self, now: float) -> Iterator[tuple[int | None, TrackerEvent]]:
        """Complete quiet segments and give up on utterances that never got a translation.

        Yields ``(connection, event)``; completions belong to the connection whose output they
        close, skips to none.
        """
        for conn in [
            c
            for c, s in self._segments.items()
            if _completable(s) and now - s.last_output_at >= SEGMENT_GAP_S
        ]:
            done = self.complete(conn, now)
            if done is not None:
                yield conn, done
        expiry = 3 * self.window_s()
        for utt in self.utts:
            if utt.state is UttState.ENDED and utt.end_sent_at is not None and now - utt.end_sent_at > expiry:
                utt.state = UttState.SKIPPED
                yield None, TranslationSkipped(utt.index, now)

    def finish(self, span: tuple[int, int], now: float) -> list[TranslationSkipped]:
        """A connection's stream ended: utterances that ended on it and got nothing are skipped."""
        first, sent_to = span
        skipped = []
        for utt in self.utts:
            if (
                utt.state is UttState.ENDED
                and first <= utt.start
                and utt.end is not None
                and utt.end < sent_to
            ):
                utt.state = UttState.SKIPPED
                skipped.append(TranslationSkipped(utt.index, now))
        return skipped

    def next_deadline(self) -> float | None:
        """When :meth:`tick` has something to do."""
        # Runs after every input chunk and output message: no allocation on the common path.
        best: float | None = None
        for seg in self._segments.values():
            if _completable(seg):
                t = seg.last_output_at + SEGMENT_GAP_S
                if best is None or t < best:
                    best = t
        expiry = 3 * self._window
        for u in self.utts:
            if u.state is UttState.ENDED and u.end_sent_at is not None:
                t = u.end_sent_at + expiry
                if best is None or t < best:
                    best = t
        return best


def _completable(seg: _Segment) -> bool:
    """Whether a quiet segment may count as a complete translation.

    Not before it has audio, and not when its utterance's end had not even been sent when its
    last output came: that output was a partial (the service may split one utterance's text).
    """
    if seg.audio_s <= 0:
        return False
    utt = seg.utt
    return utt is None or (utt.end_sent_at is not None and utt.end_sent_at <= seg.last_output_at)
