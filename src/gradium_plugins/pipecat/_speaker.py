"""One translation stream of :class:`~gradium_plugins.pipecat.GradiumS2SService`.

A :class:`Speaker` owns one :class:`~gradium_plugins.session.S2SSession` (one per participant),
the queue that hands input to it without blocking Pipecat's input task, and the reader that
turns the session's output into frames through the service.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

from loguru import logger  # type: ignore[import-not-found,unused-ignore]

from ..config import S2SConfig
from ..errors import AudioFormatError, GradiumError
from ..session import S2SSession

if TYPE_CHECKING:
    from ._speakers import SpeakersMixin

#: Seconds of silence a paced (outbound) line goes on sending after the last speech, so the
#: service hears the pause and flushes the translation (streaming models need input to advance).
LIVE_LINE_S = 10.0
#: Silence put after each agent utterance (and after an interruption cut one short).
PAUSE_S = 0.8


@dataclass(slots=True)
class _Input:
    audio: bytes
    rate: int
    channels: int
    seconds: float
    counted: bool = True  # real input (usage), not padding


class Speaker:
    """One participant's translation stream: input queue, session and output state.

    Args:
        owner: The service whose frames this stream produces.
        user_id: Participant id (``""`` for plain ``InputAudioRawFrame`` input).
        config: Core settings of the session.
        paced: Feed queued input at ``config.realtime_factor`` x real time (outbound role:
            a TTS service produces speech faster than real time).
    """

    def __init__(self, owner: SpeakersMixin, user_id: str, config: S2SConfig, *, paced: bool) -> None:
        self.owner = owner
        self.user_id = user_id
        self.session = S2SSession(config)
        self.context_prefix = uuid.uuid4().hex[:8]
        self.language = config.target_language
        self.paced = paced
        self._max_queued_s = config.max_pending_input_s
        self._input: deque[_Input] = deque()
        self._queued_s = 0.0
        self._dropped_s = 0.0
        self._overflowing = False
        self._wake = asyncio.Event()
        self._ending = False
        self._feeder: asyncio.Task[None] | None = None
        self._reader: asyncio.Task[None] | None = None
        self.got_input = False
        self.last_input_at = time.monotonic()
        self.fed_s = 0.0  # real input handed to the session (excludes padding and trailing silence)
        self.reported_s = 0.0
        # Output state, guarded by the owner's output lock.
        self.bracket: int | None = None  # the translation being pushed (numbers its context id)
        self.next_bracket = 0
        self.dropping = False  # the translation in progress is dropped (interrupted)
        self.bracket_has_audio = False
        self.speech_ends: dict[int, float] = {}  # input utterance -> time.time() its speech ended
        self.measuring: int | None = None  # input utterance whose TTFB / processing time runs
        self.holds_floor = False
        self.texts: list[str] = []
        self.last_speech_at = 0.0  # when real input was last handed to the session

    def __repr__(self) -> str:
        return f"Speaker(user_id={self.user_id!r}, {self.session!r})"

    # --- lifecycle ---------------------------------------------------------------------

    async def open(self) -> None:
        """Start connecting in the background and start the feeder and reader tasks."""
        await self.session.start()
        self._feeder = self.owner.create_task(self._feed(), f"feed-{self.user_id or 'default'}")
        self._reader = self.owner.create_task(self._read(), f"read-{self.user_id or 'default'}")

    async def end(self, timeout_s: float) -> bool:
        """Send what is queued, end the input and wait for the last translation.

        Returns:
            True when every translation arrived within ``timeout_s``.
        """
        deadline = time.monotonic() + timeout_s
        self._ending = True
        self._wake.set()
        if self._feeder is not None and not self._feeder.done():
            await asyncio.wait({self._feeder}, timeout=timeout_s)
        try:
            await self.session.end_input()
        except GradiumError as exc:
            logger.debug(f"{self.owner}: end_input failed: {exc}")
        if self._reader is None or self._reader.done():
            return True
        _, pending = await asyncio.wait({self._reader}, timeout=max(0.0, deadline - time.monotonic()))
        return not pending

    async def close(self) -> None:
        """Close the session now and stop the tasks (idempotent)."""
        self._ending = True
        await self.session.aclose()
        current = asyncio.current_task()
        for task in (self._feeder, self._reader):
            if task is not None and task is not current and not task.done():
                await self.owner.cancel_task(task, timeout=1.0)

    # --- input -------------------------------------------------------------------------

    def push(self, audio: bytes, rate: int, channels: int) -> None:
        """Queue input audio; never blocks (the feeder task hands it to the session)."""
        seconds = len(audio) / 2 / max(1, channels) / rate if rate else 0.0
        self.got_input = True
        self.last_input_at = time.monotonic()
        self._enqueue(_Input(audio, rate, channels, seconds))

    def pad(self) -> None:
        """Queue the pause that ends an agent utterance (outbound role, at ``TTSStoppedFrame``).

        Back-to-back TTS utterances would otherwise reach the service as one.
        """
        rate = self._input[-1].rate if self._input else 16000
        n = round(PAUSE_S * rate)
        self._enqueue(_Input(bytes(2 * n), rate, 1, PAUSE_S, counted=False))

    def in_flight(self) -> bool:
        """Whether speech handed in may still be untranslated or playing."""
        recent = time.monotonic() - self.last_speech_at < LIVE_LINE_S if self.last_speech_at else False
        return bool(self._input) or self.bracket is not None or recent

    def clear_input(self) -> float:
        """Drop the queued input (an interruption); return its duration in seconds."""
        dropped = self._queued_s
        self._input.clear()
        self._queued_s = 0.0
        return dropped

    def _enqueue(self, item: _Input) -> None:
        self._input.append(item)
        self._queued_s += item.seconds
        while self._queued_s > self._max_queued_s and len(self._input) > 1:
            old = self._input.popleft()
            self._queued_s -= old.seconds
            self._dropped_s += old.seconds
            if not self._overflowing:  # once per overflow, not once per frame
                self._overflowing = True
                logger.warning(
                    f"{self.owner}: input backlog over {self._max_queued_s:.0f} s; dropping the oldest"
                )
        self._wake.set()

    async def _feed(self) -> None:
        factor = self.session.config.realtime_factor if self.paced else None
        t0, fed = 0.0, 0.0
        live_left = 0.0  # seconds of silence still to send after the last speech (paced line)
        rate = 16000  # silence goes at the rate of the speech before it (no resampler switch)
        while True:
            if self._input:
                item = self._input.popleft()
                self._queued_s -= item.seconds
            elif factor and live_left > 0 and not self._ending:
                # Keep the line live after speech, as a microphone would: the service hears
                # the pause that ends the utterance and streams its translation out.
                item = _Input(bytes(2 * round(0.08 * rate)), rate, 1, 0.08, counted=False)
                live_left -= item.seconds
            else:
                if self._overflowing:
                    logger.warning(f"{self.owner}: {self._dropped_s:.1f} s of input dropped (backlog)")
                    self._overflowing, self._dropped_s = False, 0.0
                if self._ending:
                    return
                self._wake.clear()
                await self._wake.wait()
                t0, fed = time.monotonic(), 0.0  # a new burst: pace from now
                continue
            try:
                await self.session.send_audio(item.audio, sample_rate=item.rate, channels=item.channels)
            except AudioFormatError as exc:
                await self.owner._report_bad_audio(exc)
                continue
            except GradiumError as exc:
                logger.trace(f"{self.owner}: input not sent: {exc}")  # the reader reports the failure
                return
            if item.counted:
                self.fed_s += item.seconds
                self.last_speech_at = time.monotonic()
                live_left, rate = LIVE_LINE_S, item.rate
            if factor:
                fed += item.seconds
                delay = t0 + fed / factor - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)

    # --- output ------------------------------------------------------------------------

    def context_id(self, index: int) -> str:
        """The TTS context id of output utterance ``index``."""
        return f"gradium-s2s-{self.context_prefix}-{index}"

    async def _read(self) -> None:
        failure: GradiumError | None = None
        try:
            async for event in self.session:
                await self.owner._handle_event(self, event)
        except GradiumError as exc:
            failure = exc
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a bug here must not kill the pipeline silently
            await self.owner._report_bug(exc)
        await self.owner._speaker_ended(self, failure)

    def take_usage(self) -> float:
        """Seconds of real input not reported as usage yet."""
        delta = self.fed_s - self.reported_s
        self.reported_s = self.fed_s
        return delta
