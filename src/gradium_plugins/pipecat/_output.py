"""Translated utterances to Pipecat frames, per role, with metrics and interruptions."""

from __future__ import annotations

import asyncio
import time

from loguru import logger  # type: ignore[import-not-found,unused-ignore]
from pipecat.frames.frames import (
    Frame,
    TranscriptionFrame,
    TranslationFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
)
from pipecat.services.ai_service import AIService
from pipecat.transcriptions.language import Language
from pipecat.utils.text.base_text_aggregator import TextType
from pipecat.utils.time import time_now_iso8601
from pipecat.utils.tracing.service_decorators import traced_stt

from ..errors import GradiumError
from ..events import (
    Event,
    InputDropped,
    InputSpeechStopped,
    Reconnected,
    SessionRenewed,
    TranslationCompleted,
    TranslationSkipped,
    TranslationStarted,
    UpdateRejected,
)
from ..protocol import AudioOut, EndOfStream, Ready, TextOut, UnknownEvent
from ._speaker import Speaker


def pipecat_language(code: str | None) -> Language | None:
    """The Pipecat ``Language`` of a Gradium language code, if it has one."""
    if code is None:
        return None
    try:
        return Language(code)
    except ValueError:
        return None


def _wall(at: float) -> float:
    """Wall-clock time (what Pipecat's metrics use) of a ``time.monotonic()`` instant."""
    return time.time() - (time.monotonic() - at)


class OutputMixin(AIService):  # type: ignore[misc]
    """The output half of ``GradiumS2SService``: one bracket per translated utterance.

    Speakers take turns on the output (the "floor"): a translated utterance is pushed whole,
    then the next speaker's, so brackets never nest.
    """

    role: str
    audio_out: bool
    _transport_destination: str | None

    def _init_output(self) -> None:
        self._out_lock = asyncio.Lock()
        self._floor = asyncio.Lock()

    async def _update_rejected(
        self, sp: Speaker, error: GradiumError
    ) -> None:  # pragma: no cover - overridden
        """Handle a settings change the server refused (the service restores its settings)."""
        raise NotImplementedError

    async def _report_usage(self, sp: Speaker) -> None:  # pragma: no cover - overridden
        """Report usage of ``sp`` (the service implements it)."""
        raise NotImplementedError

    @traced_stt  # type: ignore[untyped-decorator,unused-ignore]
    async def _trace_translation(self, transcript: str, is_final: bool, language: Language | None) -> None:
        """Record a translated utterance for tracing (Pipecat's STT span, as its STT services do)."""

    async def _push_out(self, frame: Frame) -> None:
        if self._transport_destination is not None:
            frame.transport_destination = self._transport_destination
        await self.push_frame(frame)

    # --- translations ------------------------------------------------------------------

    async def _handle_event(self, sp: Speaker, event: Event) -> None:
        """Turn one event of ``sp``'s session into frames.

        The core brackets each translation: ``TranslationStarted`` → ``AudioOut`` / ``TextOut``
        … → ``TranslationCompleted``, paired with the input utterance it translates.
        """
        if isinstance(event, AudioOut | TextOut):
            if sp.bracket is None and not sp.dropping:
                await self._open(sp, None, replayed=False)  # output the core did not announce
            if sp.dropping:
                return
            async with self._out_lock:
                if sp.bracket is not None:
                    await (
                        self._push_audio(sp, event)
                        if isinstance(event, AudioOut)
                        else self._push_text(sp, event)
                    )
        elif isinstance(event, TranslationStarted):
            await self._close(sp)  # a cut translation (its connection failed) is replayed anew
            if event.language is not None:
                sp.language = event.language
            await self._open(sp, event.utterance, replayed=event.replayed)
        elif isinstance(event, TranslationCompleted):
            if sp.measuring is not None and sp.measuring == event.utterance:
                await self.stop_processing_metrics(end_time=_wall(event.at))
                sp.measuring = None
            if event.utterance is not None:
                sp.speech_ends.pop(event.utterance, None)
            await self._close(sp)
        elif isinstance(event, EndOfStream | Reconnected | SessionRenewed):
            await self._close(sp)
            await self._handle_session_event(sp, event)
        else:
            await self._handle_session_event(sp, event)

    async def _open(self, sp: Speaker, utterance: int | None, *, replayed: bool) -> None:
        if self.audio_out:
            await self._floor.acquire()
            sp.holds_floor = True
        async with self._out_lock:
            sp.bracket, sp.bracket_has_audio, sp.texts, sp.dropping = sp.next_bracket, False, [], False
            sp.next_bracket += 1
            speech_end = sp.speech_ends.get(utterance) if utterance is not None else None
            if speech_end is not None and not replayed:
                # TTFB runs from the end of the input speech to the first translated audio.
                await self.start_ttfb_metrics(start_time=speech_end)
                await self.start_processing_metrics(start_time=speech_end)
                sp.measuring = utterance
            if self.audio_out:
                started = TTSStartedFrame(context_id=sp.context_id(sp.bracket), append_to_context=False)
                await self._push_out(started)

    async def _push_audio(self, sp: Speaker, event: AudioOut) -> None:
        assert sp.bracket is not None
        if not self.audio_out:
            return
        audio = TTSAudioRawFrame(
            audio=event.pcm,
            sample_rate=event.sample_rate,
            num_channels=1,
            context_id=sp.context_id(sp.bracket),
        )
        if not sp.bracket_has_audio:
            sp.bracket_has_audio = True
            await self.stop_ttfb_metrics()  # only the first stop of a measurement counts
        await self._push_out(audio)
        await self.process_ttfa_metrics(audio)

    async def _push_text(self, sp: Speaker, event: TextOut) -> None:
        assert sp.bracket is not None
        sp.texts.append(event.text)
        if self.role == "inbound":
            return  # one TranscriptionFrame when the translation is complete
        language = pipecat_language(sp.language)
        translation = TranslationFrame(
            text=event.text, user_id=sp.user_id, timestamp=time_now_iso8601(), language=language
        )
        translation.append_to_context = False
        spoken = TTSTextFrame(
            text=event.text, text_type=TextType.SENTENCE, context_id=sp.context_id(sp.bracket)
        )
        spoken.append_to_context = False  # the agent's context keeps its own words
        spoken.will_be_spoken = True  # as Pipecat's TTS services mark it (RTVI bot output)
        await self._push_out(translation)
        await self._push_out(spoken)

    async def _close(self, sp: Speaker) -> None:
        """End the translation in progress (complete, or cut by a session boundary)."""
        async with self._out_lock:
            sp.dropping = False
            if sp.bracket is None:
                return
            text = " ".join(t.strip() for t in sp.texts if t.strip())
            language = pipecat_language(sp.language)
            if text:
                await self._trace_translation(text, True, language)
            if self.role == "inbound" and text:
                # What Pipecat's context aggregators read from an STT service.
                transcript = TranscriptionFrame(
                    text=text,
                    user_id=sp.user_id,
                    timestamp=time_now_iso8601(),
                    language=language,
                    finalized=True,
                )
                await self._push_out(transcript)
            if self.audio_out:
                await self._push_out(TTSStoppedFrame(context_id=sp.context_id(sp.bracket)))
            sp.bracket = None
            self._release_floor(sp)
            await self._report_usage(sp)

    def _release_floor(self, sp: Speaker) -> None:
        if sp.holds_floor:
            sp.holds_floor = False
            self._floor.release()

    async def _release_output(self, sp: Speaker) -> None:
        """Close ``sp``'s open bracket (its session ended or failed) and give up the floor."""
        await self._close(sp)
        self._release_floor(sp)

    async def _interrupt_output(self) -> None:
        """An ``InterruptionFrame`` passed: drop the translation in progress and what precedes it.

        Interpreter: the rest of the utterance being played is dropped. Outbound: the agent was
        cut off, so nothing it said before may still be played; when speech of it may still be
        in flight (queued, playing, or said moments ago), its session is replaced by a new one.
        """
        for sp in list(getattr(self, "_speakers", {}).values()):
            if self.role == "outbound" and sp.in_flight():
                await self._restart_speaker(sp)
                continue
            async with self._out_lock:
                if sp.bracket is not None:
                    logger.debug(f"{self}: interrupted, dropping the rest of translation {sp.bracket}")
                    sp.dropping = True
                    if self.audio_out:
                        await self._push_out(TTSStoppedFrame(context_id=sp.context_id(sp.bracket)))
                    sp.bracket = None
                self._release_floor(sp)

    async def _restart_speaker(self, sp: Speaker) -> None:  # pragma: no cover - overridden
        """Replace ``sp``'s session by a new one (the service implements it)."""
        raise NotImplementedError

    # --- session events ----------------------------------------------------------------

    async def _handle_session_event(self, sp: Speaker, event: Event) -> None:
        if isinstance(event, InputSpeechStopped):
            sp.speech_ends[event.utterance] = _wall(event.at)
        elif isinstance(event, TranslationSkipped):
            sp.speech_ends.pop(event.utterance, None)
            if sp.measuring == event.utterance:
                await self.cancel_ttfb_metrics()  # type: ignore[no-untyped-call]
                sp.measuring = None
        elif isinstance(event, UpdateRejected):
            await self._update_rejected(sp, event.error)
        elif isinstance(event, InputDropped):
            logger.warning(f"{self}: {event.seconds:.1f} s of input dropped ({event.reason})")
        elif isinstance(event, Ready):
            logger.debug(f"{self}: session ready (request_id={event.request_id})")
        elif isinstance(event, Reconnected):
            logger.info(f"{self}: reconnected after {event.downtime_s:.2f} s ({event.reason})")
            await self._call_event_handler("on_reconnected", event)
        elif isinstance(event, SessionRenewed):
            if event.target_language is not None:
                sp.language = event.target_language
            logger.debug(f"{self}: session renewed ({event.reason}, request_id={event.request_id})")
            await self._call_event_handler("on_session_renewed", event)
        elif isinstance(event, UnknownEvent):
            logger.trace(f"{self}: ignoring server message of type {event.type!r}")
