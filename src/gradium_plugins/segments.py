"""Group the session's output into translated utterances.

Frameworks bracket speech (Pipecat ``TTSStartedFrame``/``TTSStoppedFrame``, LiveKit
``OutputSpeechStopped``), but the wire protocol has no utterance markers. An utterance here
starts with the first output after a quiet period and ends when a new ``text`` arrives after
audio, when the output stays quiet for ``gap_s``, or at a session boundary (end of stream,
reconnect, renewal).

:class:`UtteranceSegmenter` is sans-I/O (the caller passes the time); :func:`iter_utterances`
drives it over a live :class:`~gradium_plugins.session.S2SSession`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from .events import Event, Reconnected, SessionRenewed
from .protocol import AudioOut, EndOfStream, TextOut
from .session import S2SSession


@dataclass(frozen=True, slots=True)
class UtteranceStarted:
    """A translated utterance begins (its first text or audio follows)."""

    index: int


@dataclass(frozen=True, slots=True)
class UtteranceAudio:
    """Audio of the current utterance."""

    index: int
    audio: AudioOut


@dataclass(frozen=True, slots=True)
class UtteranceText:
    """Translated text of the current utterance."""

    index: int
    text: TextOut


@dataclass(frozen=True, slots=True)
class UtteranceEnded:
    """The utterance is complete.

    Attributes:
        index: Utterance number, from 0.
        text: All its text segments joined.
        audio_s: Seconds of audio it carried.
        reason: ``"text"``, ``"gap"``, ``"end"``, ``"boundary"`` or ``"interrupted"``.
    """

    index: int
    text: str
    audio_s: float
    reason: str


@dataclass(frozen=True, slots=True)
class Passthrough:
    """Any other session event (Ready, Reconnected, SessionRenewed, UnknownEvent, EndOfStream)."""

    event: Event


SegmentEvent = UtteranceStarted | UtteranceAudio | UtteranceText | UtteranceEnded | Passthrough


@dataclass
class _Current:
    index: int
    texts: list[str] = field(default_factory=list)
    audio_s: float = 0.0
    last_at: float = 0.0


class UtteranceSegmenter:
    """Turns session events into utterance brackets.

    Args:
        gap_s: Quiet output time that ends an utterance.
    """

    def __init__(self, gap_s: float = 0.6) -> None:
        self.gap_s = gap_s
        self._current: _Current | None = None
        self._next_index = 0

    @property
    def in_utterance(self) -> bool:
        """True between :class:`UtteranceStarted` and :class:`UtteranceEnded`."""
        return self._current is not None

    def deadline(self) -> float | None:
        """Time at which :meth:`poll` would end the current utterance, if one is open."""
        return None if self._current is None else self._current.last_at + self.gap_s

    def feed(self, event: Event, now: float) -> list[SegmentEvent]:
        """Process one session event received at ``now`` (monotonic seconds)."""
        out: list[SegmentEvent] = []
        if isinstance(event, TextOut):
            if self._current is not None and self._current.audio_s > 0:
                out.append(self._end("text"))
            cur = self._open(out, now)
            cur.texts.append(event.text)
            cur.last_at = now
            out.append(UtteranceText(cur.index, event))
        elif isinstance(event, AudioOut):
            cur = self._open(out, now)
            cur.audio_s += event.duration_s
            cur.last_at = now
            out.append(UtteranceAudio(cur.index, event))
        else:
            if isinstance(event, EndOfStream | Reconnected | SessionRenewed) and self._current is not None:
                out.append(self._end("end" if isinstance(event, EndOfStream) else "boundary"))
            out.append(Passthrough(event))
        return out

    def poll(self, now: float) -> list[SegmentEvent]:
        """End the current utterance if the output has been quiet for ``gap_s``."""
        deadline = self.deadline()
        if deadline is not None and now >= deadline:
            return [self._end("gap")]
        return []

    def interrupt(self) -> list[SegmentEvent]:
        """End the current utterance now (the application interrupted it)."""
        return [self._end("interrupted")] if self._current is not None else []

    def flush(self) -> list[SegmentEvent]:
        """End any open utterance (end of stream)."""
        return [self._end("end")] if self._current is not None else []

    def _open(self, out: list[SegmentEvent], now: float) -> _Current:
        if self._current is None:
            self._current = _Current(self._next_index, last_at=now)
            self._next_index += 1
            out.append(UtteranceStarted(self._current.index))
        return self._current

    def _end(self, reason: str) -> UtteranceEnded:
        cur = self._current
        assert cur is not None
        self._current = None
        return UtteranceEnded(
            cur.index, " ".join(t.strip() for t in cur.texts if t.strip()), cur.audio_s, reason
        )


async def iter_utterances(session: S2SSession, gap_s: float = 0.6) -> AsyncIterator[SegmentEvent]:
    """Iterate a session's events grouped into utterances.

    A helper task reads the session so that the quiet-gap timer can fire without cancelling
    the session's own iterator. Errors of the session are raised from this iterator.
    """
    seg = UtteranceSegmenter(gap_s)
    queue: asyncio.Queue[Event | BaseException | None] = asyncio.Queue(maxsize=64)

    async def pump() -> None:
        try:
            async for ev in session:
                await queue.put(ev)
            await queue.put(None)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            await queue.put(exc)

    task = asyncio.ensure_future(pump())
    try:
        while True:
            deadline = seg.deadline()
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                item = await asyncio.wait_for(queue.get(), timeout)
            except TimeoutError:
                for s in seg.poll(time.monotonic()):
                    yield s
                continue
            if item is None:
                for s in seg.flush():
                    yield s
                return
            if isinstance(item, BaseException):
                for s in seg.flush():
                    yield s
                raise item
            for s in seg.feed(item, time.monotonic()):
                yield s
    finally:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
