"""Gradium S2S as an ``llm.RealtimeModel``, for ``AgentSession(llm=...)`` users.

Each translated utterance becomes one generation (``generation_created``, not user
initiated) carrying its 48 kHz audio and its translated text, so the conversation history
holds the translations and ``metrics_collected`` reports one ``RealtimeModelMetrics`` per
utterance (``ttft`` = time to first translated audio).

An interpreter is not a turn-taking bot: the model declares ``supports_overlapping_speech``,
so the speaker talking over a translation neither cuts it nor delays it. It takes no
instructions, chat context or tools: instructions and chat context updates are ignored
(documented no-ops), tools and ``generate_reply`` raise :class:`~livekit.agents.llm.RealtimeError`.

Example::

    session = AgentSession(llm=gradium_plugins.livekit.RealtimeModel(target_language="es"))
    await session.start(agent=Agent(instructions=""), room=ctx.room,
                        room_options=room_io.RoomOptions(
                            audio_output=room_io.AudioOutputOptions(sample_rate=48000)))
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp
from livekit.agents import APIConnectOptions, APIError, llm
from livekit.agents.types import NOT_GIVEN, NotGivenOr
from livekit.agents.utils import aio, is_given, shortuuid

from livekit import rtc

from ..config import S2SConfig
from ..events import (
    InputSpeechStarted,
    InputSpeechStopped,
    Reconnected,
    TranslationCompleted,
    TranslationStarted,
)
from ._bridge import normalize_language
from ._common import DEFAULT_DRAIN_TIMEOUT, GradiumModel, GradiumSession
from .log import logger


class RealtimeModel(GradiumModel, llm.RealtimeModel):
    """Gradium real-time speech-to-speech translation as a LiveKit realtime model.

    Args:
        target_language: Language to translate into (``en``, ``fr``, ``de``, ``es``, ``pt``).
        source_language: Language spoken, when known.
        voice_id: Voice uid; defaults to a flagship voice of ``target_language``.
        api_key: Gradium API key; defaults to ``$GRADIUM_API_KEY``.
        url: S2S endpoint; defaults to ``$GRADIUM_S2S_URL`` or the Gradium cloud.
        model_name: S2S model sent in ``setup``.
        config: A full :class:`~gradium_plugins.S2SConfig`; the other arguments override it.
        conn_options: LiveKit connection options: connect timeout, retries and their interval.
        http_session: aiohttp session to reuse; by default LiveKit's shared one inside a job.
        drain_timeout: Default bound, in seconds, of :meth:`RealtimeSession.drain`.

    Raises:
        ConfigurationError: An option is invalid (before any connection).
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
        super().__init__(
            capabilities=llm.RealtimeCapabilities(
                message_truncation=False,
                turn_detection=True,  # the model decides when it speaks, not the framework
                user_transcription=False,  # the service returns only the translation's text
                auto_tool_reply_generation=False,
                audio_output=True,
                manual_function_calls=False,
                supports_overlapping_speech=True,  # a speaker talking over it does not cut it
            )
        )
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

    @property
    def sessions(self) -> list[RealtimeSession]:
        """Sessions of this model that are still open."""
        return [s for s in self._sessions if isinstance(s, RealtimeSession) and not s.closed]

    @property
    def target_language(self) -> str | None:
        """Language new sessions translate into."""
        return self._config.target_language

    def update_options(
        self, *, target_language: NotGivenOr[str] = NOT_GIVEN, voice_id: NotGivenOr[str] = NOT_GIVEN
    ) -> None:
        """Change the language (and voice) of this model and of its running sessions.

        Running sessions switch at the next pause without losing speech.

        Raises:
            ConfigurationError: Invalid language or voice (nothing changes).
        """
        changes: dict[str, Any] = {}
        if is_given(target_language):
            changes["target_language"] = target_language
        if is_given(voice_id):
            changes["voice_id"] = voice_id
        if not changes:
            return
        if "target_language" in changes:
            changes["target_language"] = normalize_language(changes["target_language"])
        self._config = self._config.replace(**changes)
        for sess in self.sessions:
            sess.update_options(**changes)

    def session(self, *, turn_detection_disabled: bool = False) -> RealtimeSession:
        """Open a session (must be called from a running event loop).

        ``turn_detection_disabled`` is not supported (``can_disable_turn_detection`` is
        False): a translator never waits for the speaker's turn to end.
        """
        return RealtimeSession(self)


@dataclass
class _Generation:
    index: int
    response_id: str
    started_at: float
    text_ch: aio.Chan[str] = field(default_factory=aio.Chan)
    audio_ch: aio.Chan[rtc.AudioFrame] = field(default_factory=aio.Chan)
    # Open while the generation runs: AgentSession reads their end as "generation done".
    message_ch: aio.Chan[llm.MessageGeneration] = field(default_factory=aio.Chan)
    function_ch: aio.Chan[llm.FunctionCall] = field(default_factory=aio.Chan)
    has_text: bool = False
    cancelled: bool = False

    def close(self) -> None:
        for ch in (self.text_ch, self.audio_ch, self.message_ch, self.function_ch):
            ch.close()


class RealtimeSession(GradiumSession, llm.RealtimeSession[Literal["generation_created"]]):
    """One running translation inside an ``AgentSession`` (see :class:`RealtimeModel`)."""

    def __init__(self, model: RealtimeModel) -> None:
        super().__init__(model)
        self._chat_ctx = llm.ChatContext.empty()
        self._tools = llm.ToolContext.empty()
        self._gen: _Generation | None = None
        self._init_gradium(model)

    # --- conversation API: a translator has none ---------------------------------------

    @property
    def chat_ctx(self) -> llm.ChatContext:
        """The last chat context given (unused: the translator keeps no conversation)."""
        return self._chat_ctx.copy()

    @property
    def tools(self) -> llm.ToolContext:
        """Always empty: the translator calls no tools."""
        return self._tools.copy()

    async def update_instructions(self, instructions: str) -> None:
        """No-op: the translator takes no instructions (the agent's are ignored)."""
        if instructions.strip():
            logger.debug("instructions ignored: a translation model takes none")

    async def update_chat_ctx(self, chat_ctx: llm.ChatContext) -> None:
        """No-op: the chat context is kept for :attr:`chat_ctx` but never sent."""
        self._chat_ctx = chat_ctx.copy()

    async def update_tools(self, tools: list[llm.Tool]) -> None:
        """Accept an empty list only.

        Raises:
            RealtimeError: ``tools`` is not empty (the translator calls no tools).
        """
        if tools:
            raise llm.RealtimeError("Gradium speech-to-speech translation cannot call tools")

    def update_options(
        self,
        *,
        tool_choice: NotGivenOr[llm.ToolChoice | None] = NOT_GIVEN,
        target_language: NotGivenOr[str] = NOT_GIVEN,
        voice_id: NotGivenOr[str] = NOT_GIVEN,
    ) -> None:
        """Switch language / voice at the next pause (``tool_choice`` is ignored).

        Raises:
            ConfigurationError: Invalid language or voice (nothing changes).
        """
        changes: dict[str, Any] = {}
        if is_given(target_language):
            changes["target_language"] = target_language
        if is_given(voice_id):
            changes["voice_id"] = voice_id
        if changes:
            self._bridge.update(**changes)

    def generate_reply(
        self,
        *,
        instructions: NotGivenOr[str] = NOT_GIVEN,
        tool_choice: NotGivenOr[llm.ToolChoice] = NOT_GIVEN,
        tools: NotGivenOr[list[llm.Tool]] = NOT_GIVEN,
    ) -> asyncio.Future[llm.GenerationCreatedEvent]:
        """Not supported: the translator speaks only to translate what it hears.

        Returns:
            A future failed with :class:`~livekit.agents.llm.RealtimeError`.
        """
        fut: asyncio.Future[llm.GenerationCreatedEvent] = asyncio.get_running_loop().create_future()
        fut.set_exception(
            llm.RealtimeError("Gradium speech-to-speech translation cannot generate a reply on request")
        )
        return fut

    def commit_audio(self) -> None:
        """No-op: the service finds utterances itself."""

    def clear_audio(self) -> None:
        """No-op: audio already sent cannot be taken back (the service has no cancel)."""

    def truncate(
        self,
        *,
        message_id: str,
        modalities: list[Literal["text", "audio"]],
        audio_end_ms: int,
        audio_transcript: NotGivenOr[str] = NOT_GIVEN,
    ) -> None:
        """No-op: ``message_truncation`` is not supported (no server-side history)."""

    def push_video(self, frame: rtc.VideoFrame) -> None:
        """Ignored: the translator takes audio only."""

    # --- audio -------------------------------------------------------------------------

    def interrupt(self) -> None:
        """End the current generation now and drop the rest of its audio.

        Later utterances are still translated and delivered.
        """
        gen = self._gen
        if gen is None:
            return
        gen.cancelled = True
        gen.close()

    # --- bridge callbacks --------------------------------------------------------------

    def _on_input_speech(self, ev: InputSpeechStarted | InputSpeechStopped) -> None:
        if isinstance(ev, InputSpeechStarted):
            self.emit("input_speech_started", llm.InputSpeechStartedEvent())
        else:
            self.emit("input_speech_stopped", llm.InputSpeechStoppedEvent(user_transcription_enabled=False))

    def _on_started(self, index: int, ev: TranslationStarted) -> None:
        if self._gen is not None:
            self._gen.close()
        gen = _Generation(index=index, response_id=shortuuid("GR_"), started_at=ev.at)
        self._gen = gen
        modalities: asyncio.Future[list[Literal["text", "audio"]]] = (
            asyncio.get_running_loop().create_future()
        )
        modalities.set_result(["audio", "text"])
        gen.message_ch.send_nowait(
            llm.MessageGeneration(
                message_id=gen.response_id,
                text_stream=gen.text_ch,
                audio_stream=gen.audio_ch,
                modalities=modalities,
            )
        )
        self.emit(
            "generation_created",
            llm.GenerationCreatedEvent(
                message_stream=gen.message_ch,
                function_stream=gen.function_ch,
                user_initiated=False,
                response_id=gen.response_id,
            ),
        )

    def _on_audio(self, index: int, frame: rtc.AudioFrame, language: str | None) -> None:
        if (gen := self._gen) is not None and gen.index == index:
            _send(gen.audio_ch, frame)

    def _on_text(self, index: int, text: str) -> None:
        if (gen := self._gen) is None or gen.index != index or not text.strip():
            return
        _send(gen.text_ch, (" " if gen.has_text else "") + text.strip())
        gen.has_text = True

    def _on_completed(self, index: int, ev: TranslationCompleted) -> None:
        if (gen := self._gen) is None or gen.index != index:
            return
        self._gen = None
        gen.close()
        metrics = self._metrics(gen.response_id, ev, gen.started_at, cancelled=gen.cancelled)
        self.emit("metrics_collected", metrics)

    def _on_reconnected(self, ev: Reconnected) -> None:
        self.emit("session_reconnected", llm.RealtimeSessionReconnectedEvent())

    def _on_error(self, error: APIError, recoverable: bool) -> None:
        if not recoverable:
            logger.error(
                "realtime translation failed", extra={"error_type": type(error.__cause__ or error).__name__}
            )
        self.emit(
            "error",
            llm.RealtimeModelError(
                timestamp=time.time(), label=self._model.label, error=error, recoverable=recoverable
            ),
        )

    def _on_finished(self, end_of_stream: bool) -> None:
        if self._gen is not None:
            self._gen.close()
            self._gen = None


def _send(ch: aio.Chan[Any], item: Any) -> None:
    try:
        ch.send_nowait(item)
    except aio.ChanClosed:
        pass  # the generation was interrupted: the rest of it is dropped
