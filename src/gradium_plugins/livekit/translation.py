"""Gradium S2S as a ``livekit.agents.beta.translation.TranslationModel``.

Run it with LiveKit's own runner::

    from livekit.agents.beta.translation import TranslationSession
    from gradium_plugins.livekit import TranslationModel, drain_and_close

    session = TranslationSession(model=TranslationModel(target_language="fr"))
    await session.start(room=ctx.room, room_options=TranslationRoomOptions(
        audio_output=AudioOutputOptions(sample_rate=48000, track_name="translation-fr")))
    ...
    await drain_and_close(session)   # instead of session.aclose(): the last sentence is kept

``TranslationSession.aclose()`` cancels its output reader before it closes the model session,
so whatever is still being translated at that moment is dropped; :func:`drain_and_close`
ends the input first and waits (bounded) until the last translation has been played out.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any, Literal

import aiohttp
from livekit.agents import APIConnectOptions, APIError
from livekit.agents.beta import translation
from livekit.agents.types import NOT_GIVEN, NotGivenOr
from livekit.agents.utils import aio, is_given

from livekit import rtc

from ..config import S2SConfig
from ..events import (
    InputSpeechStarted,
    InputSpeechStopped,
    Reconnected,
    TranslationCompleted,
    TranslationStarted,
)
from ._bridge import build_config
from ._common import (
    DEFAULT_DRAIN_TIMEOUT,
    GradiumModel,
    GradiumSession,
    TranslationMetrics,
    wait_unless_closing,
)
from .log import logger

__all__ = [
    "DEFAULT_DRAIN_TIMEOUT",
    "TranslationMetrics",
    "TranslationModel",
    "TranslationModelSession",
    "drain_and_close",
]


class TranslationModel(GradiumModel, translation.TranslationModel):
    """Gradium real-time speech-to-speech translation for LiveKit ``TranslationSession``.

    Audio pushed at any rate and channel count is translated into ``target_language`` and
    delivered as 48 kHz mono :class:`~livekit.agents.beta.translation.TranslatedAudioFrame`
    with one :class:`~livekit.agents.beta.translation.OutputSpeechStopped` and one final
    ``output_transcript`` per translated utterance.

    Args:
        target_language: Language to translate into (``en``, ``fr``, ``de``, ``es``, ``pt``;
            ``fr-FR``-style codes and names are normalised).
        source_language: Language spoken, when known.
        voice_id: Voice uid; defaults to a flagship voice of ``target_language``.
        api_key: Gradium API key; defaults to ``$GRADIUM_API_KEY``.
        url: S2S endpoint; defaults to ``$GRADIUM_S2S_URL`` or the Gradium cloud.
        model_name: S2S model sent in ``setup``.
        config: A full :class:`~gradium_plugins.S2SConfig` (timeouts, reconnect policy...);
            the other arguments override its fields.
        conn_options: LiveKit connection options: connect timeout, retries and their interval.
        http_session: aiohttp session to reuse; by default LiveKit's shared one inside a job.
        drain_timeout: Default bound, in seconds, of :meth:`TranslationModelSession.drain`
            and :func:`drain_and_close`.

    Raises:
        ConfigurationError: An option is invalid (before any connection), e.g. no API key
            for the cloud endpoint. It is a ``ValueError``.
    """

    def __init__(
        self,
        *,
        target_language: str,
        source_language: NotGivenOr[str] = NOT_GIVEN,
        voice_id: NotGivenOr[str] = NOT_GIVEN,
        api_key: NotGivenOr[str] = NOT_GIVEN,
        url: NotGivenOr[str] = NOT_GIVEN,
        model_name: NotGivenOr[str] = NOT_GIVEN,
        config: NotGivenOr[S2SConfig] = NOT_GIVEN,
        conn_options: NotGivenOr[APIConnectOptions] = NOT_GIVEN,
        http_session: aiohttp.ClientSession | None = None,
        drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
    ) -> None:
        self._init_gradium(
            config,
            target_language=target_language,
            conn_options=conn_options,
            http_session=http_session,
            drain_timeout=drain_timeout,
            source_language=source_language,
            voice_id=voice_id,
            api_key=api_key,
            url=url,
            model_name=model_name,
        )
        super().__init__(
            capabilities=translation.TranslationCapabilities(
                input_transcription=False,  # the service returns only the translation's text
                output_transcription=True,
                turn_reporting=True,  # from the core's client-side pause detector
                output_segmentation=True,  # one OutputSpeechStopped per translated utterance
                retargetable=True,  # the core renews the server session at a pause
            ),
            target_language=self._config.target_language or target_language,
            source_language=self._config.source_language,
        )
        self._emitter: rtc.EventEmitter[Literal["metrics_collected"]] = rtc.EventEmitter()

    @property
    def sessions(self) -> list[TranslationModelSession]:
        """Sessions of this model that are still open."""
        return [s for s in self._sessions if isinstance(s, TranslationModelSession) and not s.closed]

    def on(self, event: Literal["metrics_collected"], callback: Any = None) -> Any:
        """Subscribe to ``metrics_collected`` (:class:`TranslationMetrics`) of all sessions."""
        return self._emitter.on(event, callback)

    def off(self, event: Literal["metrics_collected"], callback: Any) -> None:
        """Unsubscribe a callback registered with :meth:`on`."""
        self._emitter.off(event, callback)

    def update_options(self, *, target_language: str) -> None:
        """Translate into another language in sessions opened from now on.

        Running sessions keep theirs; call :meth:`TranslationModelSession.update_options`
        (or ``TranslationSession.set_target_language``) to switch one.

        Raises:
            ConfigurationError: The language is not supported.
        """
        self._config = build_config(self._config, target_language=target_language, conn_options=NOT_GIVEN)
        super().update_options(target_language=self._config.target_language or target_language)

    def session(self) -> TranslationModelSession:
        """Open a session (must be called from a running event loop)."""
        return TranslationModelSession(self)

    async def drain(self, timeout: NotGivenOr[float] = NOT_GIVEN) -> None:  # noqa: ASYNC109
        """End the input of every open session and wait until their output was consumed."""
        await asyncio.gather(*(s.drain(timeout) for s in self.sessions))


class _AudioStream:
    """The session's ``audio_stream``: one consumer, in order, dropping cleared audio."""

    def __init__(self, owner: TranslationModelSession) -> None:
        self._owner = owner

    def __aiter__(self) -> AsyncIterator[translation.TranslatedAudioFrame | translation.OutputSpeechStopped]:
        return self

    async def __anext__(self) -> translation.TranslatedAudioFrame | translation.OutputSpeechStopped:
        owner = self._owner
        while True:
            try:
                index, item = await owner._out_ch.recv()
            except aio.ChanClosed:
                owner._consumed.set()
                raise StopAsyncIteration from None
            if isinstance(item, translation.TranslatedAudioFrame) and index <= owner._cleared_through:
                continue
            return item


class TranslationModelSession(
    GradiumSession, translation.TranslationModelSession[Literal["metrics_collected"]]
):
    """One running translation (created by :meth:`TranslationModel.session`).

    Events: ``input_speech_started`` / ``input_speech_stopped``, ``output_transcript`` (one
    final :class:`OutputTranscript` per utterance), ``error`` (:class:`TranslationModelError`
    carrying a LiveKit ``APIError``; ``recoverable=False`` ends the session) and
    ``metrics_collected`` (:class:`TranslationMetrics`, one per utterance).
    """

    def __init__(self, model: TranslationModel) -> None:
        super().__init__(model)
        self._out_ch: aio.Chan[
            tuple[int, translation.TranslatedAudioFrame | translation.OutputSpeechStopped]
        ] = aio.Chan()
        self._audio_stream = _AudioStream(self)
        self._consumed = asyncio.Event()  # audio_stream was read to its end
        self._cleared_through = -1
        self._last_index = -1
        self._started_at: dict[int, float] = {}
        self._failed = False  # the stream ended on a final error
        self._init_gradium(model)

    # --- LiveKit API -------------------------------------------------------------------

    @property
    def audio_stream(
        self,
    ) -> AsyncIterable[translation.TranslatedAudioFrame | translation.OutputSpeechStopped]:
        """Translated 48 kHz audio, with an ``OutputSpeechStopped`` after each utterance."""
        return self._audio_stream

    @property
    def closed(self) -> bool:
        """True once :meth:`aclose` was called or the stream failed for good."""
        return self._closed or self._failed

    @property
    def language(self) -> str | None:
        """Language of the translation currently being delivered."""
        return self._bridge.language

    def clear_audio(self) -> None:
        """Drop the translated audio not yet read from :attr:`audio_stream`.

        This includes the rest of the utterance being produced. Segment markers and
        transcripts are kept, so every utterance still gets its ``OutputSpeechStopped`` and
        final transcript. The service cannot cancel work in flight, so later utterances
        (speech pushed after this call) are translated and delivered normally.
        """
        self._cleared_through = self._last_index

    def update_options(self, *, target_language: str) -> None:
        """Switch this running session to another language at the next pause, losing nothing.

        Translations already under way finish in the old language; audio frames carry the
        language they are spoken in (``TranslatedAudioFrame.language``). A change the
        service refuses is reported as a recoverable ``error``; the old language carries on.

        Raises:
            ConfigurationError: The language is not supported (nothing changes).
            RuntimeError: The session's input has already ended.
        """
        self._bridge.update(target_language=target_language)

    async def _drained(self) -> None:
        await self._consumed.wait()  # everything was read from audio_stream

    async def aclose(self) -> None:
        """Close now: the translation in flight is dropped (call :meth:`drain` first to keep it)."""
        self._closing = True
        await super().aclose()

    # --- bridge callbacks --------------------------------------------------------------

    def _on_input_speech(self, ev: InputSpeechStarted | InputSpeechStopped) -> None:
        if isinstance(ev, InputSpeechStarted):
            self.emit("input_speech_started", translation.InputSpeechStarted())
        else:
            self.emit("input_speech_stopped", translation.InputSpeechStopped())

    def _on_started(self, index: int, ev: TranslationStarted) -> None:
        self._last_index = index
        self._started_at[index] = ev.at

    def _on_audio(self, index: int, frame: rtc.AudioFrame, language: str | None) -> None:
        if index > self._cleared_through:
            self._send((index, translation.TranslatedAudioFrame(frame=frame, language=language)))

    def _on_text(self, index: int, text: str) -> None:
        pass  # the whole text is emitted once, final, when the utterance ends

    def _on_completed(self, index: int, ev: TranslationCompleted) -> None:
        # The transcript is emitted before the marker is queued: a text sink then has the
        # text of a segment before the audio sink closes that segment.
        self.emit(
            "output_transcript",
            translation.OutputTranscript(text=ev.text.strip(), is_final=True, language=ev.language),
        )
        self._send((index, translation.OutputSpeechStopped()))
        metrics = self._metrics(f"{self.request_id or 'GR'}-{index}", ev, self._started_at.pop(index, ev.at))
        self.emit("metrics_collected", metrics)
        self._model._emitter.emit("metrics_collected", metrics)

    def _on_reconnected(self, ev: Reconnected) -> None:
        pass  # recovered by the core with nothing lost: not an error for LiveKit

    def _on_error(self, error: APIError, recoverable: bool) -> None:
        if not recoverable:
            logger.error("translation failed", extra={"error_type": type(error.__cause__ or error).__name__})
        self.emit(
            "error",
            translation.TranslationModelError(
                timestamp=time.time(), label=self._model.label, error=error, recoverable=recoverable
            ),
        )

    def _on_finished(self, end_of_stream: bool) -> None:
        # Closing the channel ends audio_stream once the consumer has read what is queued.
        self._out_ch.close()
        self._failed = not end_of_stream

    def _send(
        self, item: tuple[int, translation.TranslatedAudioFrame | translation.OutputSpeechStopped]
    ) -> None:
        with contextlib.suppress(aio.ChanClosed):  # after close: dropped
            self._out_ch.send_nowait(item)


async def drain_and_close(
    session: translation.TranslationSession[Any],
    *,
    timeout: NotGivenOr[float] = NOT_GIVEN,  # noqa: ASYNC109
) -> None:
    """Close a ``TranslationSession`` without losing the translation in flight.

    ``TranslationSession.aclose()`` stops reading the model's output before it closes the
    model, so the last sentence would be dropped. This ends the input of this session's
    Gradium model session (no other session of the model), waits until its output was played
    out, then closes. The wait is bounded by ``timeout`` (default: the model's
    ``drain_timeout``) and ends at once if the session is being closed meanwhile (a job
    shutdown): call it when the speaker is done, before ``ctx.shutdown()``.

    Args:
        session: A session running a :class:`TranslationModel`.
        timeout: Bound of the wait.
    """
    # LiveKit exposes no handle on the model session a TranslationSession runs.
    model_session = getattr(session, "_model_session", None)
    if isinstance(model_session, TranslationModelSession) and not model_session.closed:
        limit = timeout if is_given(timeout) else model_session._model._drain_timeout
        deadline = time.monotonic() + limit
        drained = await model_session.drain(limit)
        # The sink may still hold audio (a room track plays in real time): let it play out.
        sink = session.output.audio
        if drained and sink is not None:
            remaining = max(0.0, deadline - time.monotonic())
            if not await wait_unless_closing(sink.wait_for_playout(), model_session._closing_ev, remaining):
                logger.debug("translated audio did not play out before the session closed")
    await session.aclose()
