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

import numpy as np
from loguru import logger  # type: ignore[import-not-found,unused-ignore]

from ..config import S2SConfig
from ..errors import AudioFormatError, GradiumError
from ..events import InputSpeechStarted, InputSpeechStopped
from ..session import S2SSession

if TYPE_CHECKING:
    from ._speakers import SpeakersMixin

# Silence sent after each outbound utterance so the service hears the pause that ends it.
_MIN_PAD_S = 0.5
_PAD_RATE = 16000


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
        self.session.add_input_listener(self._on_input_speech)
        self.context_prefix = uuid.uuid4().hex[:8]
        self.language = config.target_language
        self.paced = paced
        self._pad_s = max(_MIN_PAD_S, config.trailing_silence_s)
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
        self.input_utterances = 0  # input utterances started so far
        self.drop_below = 0  # output translating input utterances below this index is dropped

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
        """Queue the silence that ends an utterance (outbound role, after ``TTSStoppedFrame``)."""
        n = round(self._pad_s * _PAD_RATE)
        self._enqueue(_Input(np.zeros(n, np.int16).tobytes(), _PAD_RATE, 1, self._pad_s, counted=False))

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
        while True:
            if not self._input:
                if self._overflowing:
                    logger.warning(f"{self.owner}: {self._dropped_s:.1f} s of input dropped (backlog)")
                    self._overflowing, self._dropped_s = False, 0.0
                if self._ending:
                    return
                self._wake.clear()
                await self._wake.wait()
                t0, fed = time.monotonic(), 0.0  # a new burst: pace from now
                continue
            item = self._input.popleft()
            self._queued_s -= item.seconds
            try:
                await self.session.send_audio(item.audio, sample_rate=item.rate, channels=item.channels)
            except AudioFormatError as exc:
                await self.owner.report_bad_audio(exc)
                continue
            except GradiumError as exc:
                logger.trace(f"{self.owner}: input not sent: {exc}")  # the reader reports the failure
                return
            if item.counted:
                self.fed_s += item.seconds
            if factor:
                fed += item.seconds
                delay = t0 + fed / factor - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)

    def _on_input_speech(self, event: InputSpeechStarted | InputSpeechStopped) -> None:
        if isinstance(event, InputSpeechStarted):
            self.input_utterances = event.utterance + 1

    # --- output ------------------------------------------------------------------------

    def context_id(self, index: int) -> str:
        """The TTS context id of output utterance ``index``."""
        return f"gradium-s2s-{self.context_prefix}-{index}"

    async def _read(self) -> None:
        failure: GradiumError | None = None
        try:
            async for event in self.session:
                await self.owner.handle_event(self, event)
        except GradiumError as exc:
            failure = exc
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a bug here must not kill the pipeline silently
            await self.owner.report_bug(exc)
        await self.owner.speaker_ended(self, failure)

    def take_usage(self) -> float:
        """Seconds of real input not reported as usage yet."""
        delta = self.fed_s - self.reported_s
        self.reported_s = self.fed_s
        return delta
