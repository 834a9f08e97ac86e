"""The speakers of :class:`~gradium_plugins.pipecat.GradiumS2SService`: one session per participant.

Opened on a participant's first audio (at most ``max_speakers``), closed when they have sent
nothing for ``speaker_idle_s`` or when their session failed for good (their next audio opens
a new one at once); errors are reported with Pipecat's categories, recoverable ones throttled.
"""

from __future__ import annotations

import asyncio
import time

from loguru import logger  # type: ignore[import-not-found,unused-ignore]
from pipecat.metrics.metrics import STTUsage
from pipecat.utils.errors import ErrorCategory

from ..config import S2SConfig
from ..errors import GradiumError
from ..session import S2SSession
from ._output import OutputMixin
from ._speaker import Speaker


class SpeakersMixin(OutputMixin):  # type: ignore[misc]
    """Per-participant sessions and error reporting (the service sets the attributes)."""

    _config: S2SConfig
    _speakers: dict[str, Speaker]
    _refused: set[str]
    _input_closed: bool
    _idle_task: asyncio.Task[None] | None
    _last_report: dict[str, float]
    _max_speakers: int
    _speaker_idle_s: float
    _end_timeout_s: float

    @property
    def session(self) -> S2SSession | None:
        """The session of the first (usually only) speaker, or None while there is none."""
        return next(iter(self._speakers.values())).session if self._speakers else None

    @property
    def sessions(self) -> dict[str, S2SSession]:
        """The live sessions by ``user_id`` (``""`` for plain ``InputAudioRawFrame`` input)."""
        return {uid: sp.session for uid, sp in self._speakers.items()}

    # --- speakers ----------------------------------------------------------------------

    async def _speaker(self, user_id: str) -> Speaker | None:
        """The session of ``user_id``, opened on first use; None when refused."""
        sp = self._speakers.get(user_id)
        if sp is not None:
            return sp
        if self._input_closed or not self.is_usable:
            return None
        if user_id and "" in self._speakers and not self._speakers[""].got_input:
            # The session opened in setup() goes to the first participant.
            sp = self._speakers.pop("")
            sp.user_id = user_id
            self._speakers[user_id] = sp
            return sp
        if len(self._speakers) >= self._max_speakers:
            if user_id not in self._refused:
                self._refused.add(user_id)
                logger.warning(
                    f"{self}: {self._max_speakers} speakers already translated; ignoring {user_id!r}"
                )
            return None
        sp = Speaker(self, user_id, self._config, paced=self.role == "outbound")
        self._speakers[user_id] = sp
        await sp.open()
        logger.debug(f"{self}: session opened for {user_id or 'the input'} ({sp.session!r})")
        await self._call_event_handler("on_connected")
        if self._idle_task is None and self.role != "outbound":
            self._idle_task = self.create_task(self._close_idle_speakers(), "idle")
        return sp

    async def _drop_speaker(self, sp: Speaker) -> None:
        if self._speakers.get(sp.user_id) is sp:
            del self._speakers[sp.user_id]
        await sp.close()  # first: its reader pushes nothing more
        await self._release_output(sp)
        await self._report_usage(sp)
        await self._call_event_handler("on_disconnected")

    async def _restart_speaker(self, sp: Speaker) -> None:
        """Replace ``sp``'s session by a new one: whatever the old one still had is dropped."""
        dropped_s = sp.clear_input()
        logger.debug(f"{self}: interrupted; new session ({dropped_s:.2f} s of queued speech dropped)")
        await self._drop_speaker(sp)
        await self._speaker(sp.user_id)

    async def _close_idle_speakers(self) -> None:
        # A participant who left sends nothing more: end their session gracefully.
        while True:
            await asyncio.sleep(min(1.0, self._speaker_idle_s / 4))
            now = time.monotonic()
            for sp in list(self._speakers.values()):
                if sp.user_id and sp.got_input and now - sp.last_input_at > self._speaker_idle_s:
                    logger.debug(
                        f"{self}: no audio from {sp.user_id!r} for {self._speaker_idle_s:.0f} s; closing"
                    )
                    del self._speakers[sp.user_id]
                    await sp.end(self._end_timeout_s)
                    await self._drop_speaker(sp)

    async def _speaker_ended(self, sp: Speaker, failure: GradiumError | None) -> None:
        """Called by a speaker's reader when its session ended (end of stream or failure)."""
        await self._release_output(sp)
        await self._report_usage(sp)
        if failure is not None:
            await self._report_error("Gradium S2S: session failed", failure)
            if self._speakers.get(sp.user_id) is sp:
                # The next audio of this speaker opens a new session at once.
                del self._speakers[sp.user_id]
                await sp.close()
                await self._call_event_handler("on_disconnected")

    async def _close_all(self) -> None:
        idle, self._idle_task = self._idle_task, None
        if idle is not None and idle is not asyncio.current_task():
            await self.cancel_task(idle, timeout=1.0)
        for sp in list(self._speakers.values()):
            await self._drop_speaker(sp)

    async def _report_error(self, what: str, exc: GradiumError) -> None:
        """Push ``exc`` as an ``ErrorFrame``; recoverable ones at most once per backoff period."""
        message = f"{what}: {exc}"
        category = self._classify_error(exc) or ErrorCategory.UNKNOWN
        if not category.is_permanent:
            key, now = type(exc).__name__, time.monotonic()
            if now - self._last_report.get(key, -1e9) < self._config.reconnect_backoff_max_s:
                logger.debug(f"{self}: {message} (not reported again so soon)")
                return
            self._last_report[key] = now
        await self._call_event_handler("on_connection_error", message)
        await self.push_error(message, exception=exc, category=category)

    async def _report_bad_audio(self, exc: GradiumError) -> None:
        """Report input audio the core could not interpret."""
        await self.push_error(
            f"Gradium S2S: unusable input audio: {exc}", exception=exc, category=ErrorCategory.APPLICATION
        )

    async def _report_bug(self, exc: Exception) -> None:
        """Report an unexpected failure of the output handling."""
        await self.push_error(
            f"Gradium S2S: output handling failed: {exc}", exception=exc, category=ErrorCategory.UNKNOWN
        )

    async def _report_usage(self, sp: Speaker) -> None:
        """Report the speaker's real input seconds not reported yet (trailing silence excluded)."""
        seconds = sp.take_usage()
        if seconds > 0:
            await self.start_stt_usage_metrics(STTUsage(audio_seconds=round(seconds, 3)))
