"""Pipecat frame processor for Gradium real-time speech-to-speech translation.

:class:`GradiumS2SService` is framework glue around :class:`~gradium_plugins.session.S2SSession`:
input audio frames become ``send_audio`` calls (the core resamples any rate and channel
count, paces, reconnects and renews sessions), and the session's output, grouped into
utterances by :func:`~gradium_plugins.segments.iter_utterances`, becomes Pipecat frames.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from loguru import logger  # type: ignore[import-not-found,unused-ignore]
from pipecat.frames.frames import (
    CancelFrame,
    EndFrame,
    Frame,
    InputAudioRawFrame,
    InterruptionFrame,
    ServiceUpdateSettingsFrame,
    StartFrame,
    TranslationFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
    UserAudioRawFrame,
)
from pipecat.metrics.metrics import STTUsage
from pipecat.processors.frame_processor import FrameDirection, FrameProcessorSetup
from pipecat.services.ai_service import AIService
from pipecat.services.settings import ServiceSettings
from pipecat.transcriptions.language import Language
from pipecat.utils.errors import ErrorCategory
from pipecat.utils.text.base_text_aggregator import TextType
from pipecat.utils.time import time_now_iso8601
from pipecat.utils.types import NOT_GIVEN, NotGiven, is_given

from ..config import S2SConfig
from ..errors import (
    AudioFormatError,
    AuthenticationError,
    ConfigurationError,
    ConnectionLostError,
    GradiumError,
    ServerError,
)
from ..events import InputSpeechStarted, InputSpeechStopped, Reconnected, SessionRenewed
from ..protocol import Ready, UnknownEvent
from ..segments import (
    Passthrough,
    SegmentEvent,
    UtteranceAudio,
    UtteranceEnded,
    UtteranceStarted,
    UtteranceText,
    iter_utterances,
)
from ..session import S2SSession
from ._logbridge import route_core_logs_to_loguru

#: Seconds ``EndFrame`` waits for the last translated audio before it is forwarded anyway.
DEFAULT_END_TIMEOUT_S = 30.0
#: Quiet output time that closes an utterance bracket (see ``UtteranceSegmenter``).
DEFAULT_UTTERANCE_GAP_S = 0.6

# Settings field -> S2SConfig / S2SSession.update() keyword.
_CORE_FIELDS = {
    "model": "model_name",
    "target_language": "target_language",
    "voice_id": "voice_id",
    "source_language": "source_language",
    "stt_model_name": "stt_model_name",
    "tts_model_name": "tts_model_name",
    "json_config": "json_config",
}


def language_code(language: Language | str | None) -> str | None:
    """Return Gradium's language code for a Pipecat ``Language`` or a code string.

    Regional variants resolve to their base language (``Language.FR_CA`` and ``"fr-CA"``
    give ``"fr"``). The core validates the result, so unsupported languages fail with a
    :class:`~gradium_plugins.errors.ConfigurationError` naming the allowed ones.

    Args:
        language: A ``Language``, a code such as ``"es"`` or ``"pt-BR"``, or None.

    Returns:
        The lower-case base code, or None.
    """
    if language is None:
        return None
    code = str(language.value if isinstance(language, Language) else language).strip()
    return code.replace("_", "-").split("-")[0].lower() or None


def _pipecat_language(code: str | None) -> Language | None:
    if code is None:
        return None
    try:
        return Language(code)
    except ValueError:
        return None


@dataclass
class GradiumS2SSettings(ServiceSettings):  # type: ignore[misc]
    """Runtime-updatable settings of :class:`GradiumS2SService`.

    Used as the service's store (every field set) and as a sparse delta in
    :class:`GradiumS2SUpdateSettingsFrame` / ``ServiceUpdateSettingsFrame`` (unset fields
    are ``NOT_GIVEN``). Changes apply mid-stream without losing audio: the core opens a
    new server session and switches to it at the next pause in the speech.

    Attributes:
        model: S2S model name (``setup.model_name``), ``"default"`` unless set.
        target_language: Language to translate into (``"en"``, ``"fr"``, ``"de"``,
            ``"es"``, ``"pt"`` or a Pipecat ``Language``). ``None`` re-voices the source
            language and then needs ``voice_id``.
        voice_id: Voice uid; ``None`` picks the flagship voice of ``target_language``.
        source_language: Language spoken, when known.
        stt_model_name: Inner STT model, optional.
        tts_model_name: Inner TTS model, optional.
        json_config: Extra ``json_config`` keys passed to the server unchanged.
    """

    target_language: Language | str | NotGiven | None = field(default_factory=lambda: NOT_GIVEN)
    voice_id: str | NotGiven | None = field(default_factory=lambda: NOT_GIVEN)
    source_language: Language | str | NotGiven | None = field(default_factory=lambda: NOT_GIVEN)
    stt_model_name: str | NotGiven | None = field(default_factory=lambda: NOT_GIVEN)
    tts_model_name: str | NotGiven | None = field(default_factory=lambda: NOT_GIVEN)
    json_config: dict[str, Any] | NotGiven = field(default_factory=lambda: NOT_GIVEN)

    _aliases = {"voice": "voice_id", "language": "target_language", "model_name": "model"}


@dataclass
class GradiumS2SUpdateSettingsFrame(ServiceUpdateSettingsFrame[GradiumS2SSettings]):  # type: ignore[misc]
    """Change the settings of Gradium S2S services mid-stream.

    With ``service=None`` every :class:`GradiumS2SService` that sees the frame applies it;
    set ``service`` to address one (e.g. one language branch of a ``ParallelPipeline``).
    """


class GradiumS2SService(AIService):  # type: ignore[misc]
    """Real-time speech-to-speech translation with Gradium, as a Pipecat service.

    Consumes ``InputAudioRawFrame`` / ``UserAudioRawFrame`` at any sample rate and channel
    count and emits each translated utterance as ``TTSStartedFrame`` →
    ``TTSAudioRawFrame`` (48 kHz mono) … → ``TTSStoppedFrame``, with its text as a
    ``TranslationFrame`` (``language`` = target language) and a ``TTSTextFrame``::

        translator = GradiumS2SService(settings=GradiumS2SService.Settings(target_language="fr"))
        pipeline = Pipeline([transport.input(), translator, transport.output()])

    Behaviour:

    - Connects in ``setup()``. Connection errors become ``ErrorFrame``s (``push_error``):
      rejected credentials or settings leave the service unusable (the worker's
      ``ProcessorUnusablePolicy`` decides what happens next); network failures are
      recoverable, and a new session is opened when audio arrives again. Inside a session
      the core reconnects and replays input by itself, so no utterance is lost.
    - Interpreter semantics: the speaker talking over the translation does not cut it, and
      the service never interrupts the pipeline. An ``InterruptionFrame`` broadcast by the
      application closes the current bracket, and the rest of that utterance is dropped.
    - ``ServiceUpdateSettingsFrame`` (targeted at this service) or
      :class:`GradiumS2SUpdateSettingsFrame` change language / voice without losing audio;
      other update frames are forwarded.
    - ``EndFrame`` ends the input and waits (bounded by ``end_timeout_s``) until every
      translated utterance was pushed, then forwards the ``EndFrame``. ``CancelFrame``
      closes at once.
    - Several languages: one service per language in a ``ParallelPipeline``, each with its
      own ``transport_destination`` so each branch's audio goes to its own output track.

    Example (one speaker, French and Spanish tracks)::

        fr = GradiumS2SService(settings=GradiumS2SService.Settings(target_language="fr"),
                               transport_destination="translation-fr")
        es = GradiumS2SService(settings=GradiumS2SService.Settings(target_language="es"),
                               transport_destination="translation-es")
        transport = ...(params=TransportParams(audio_in_enabled=True, audio_out_enabled=True,
                        audio_out_destinations=["translation-fr", "translation-es"]))
        pipeline = Pipeline([transport.input(), ParallelPipeline([fr], [es]), transport.output()])

    Set ``PipelineParams(audio_out_sample_rate=48000)`` so the output transport plays the
    48 kHz translation without a needless resampling round trip.

    Event handlers:

    - ``on_connected(service)``: a session is connected.
    - ``on_disconnected(service)``: the session closed (end, cancel or failure).
    - ``on_reconnected(service, event)``: the core recovered a dropped connection
      (:class:`~gradium_plugins.events.Reconnected`).
    - ``on_session_renewed(service, event)``: the core moved to a new server session
      (length cap or settings update; :class:`~gradium_plugins.events.SessionRenewed`).
    - ``on_connection_error(service, message)``: connecting or the session failed.
    """

    Settings = GradiumS2SSettings
    _settings: GradiumS2SSettings

    def __init__(
        self,
        *,
        api_key: str | None = None,
        url: str | None = None,
        settings: GradiumS2SSettings | None = None,
        audio_passthrough: bool = False,
        transport_destination: str | None = None,
        end_timeout_s: float = DEFAULT_END_TIMEOUT_S,
        utterance_gap_s: float = DEFAULT_UTTERANCE_GAP_S,
        session_options: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Create the service (no I/O; it connects in ``setup()``).

        Args:
            api_key: Gradium API key; defaults to ``$GRADIUM_API_KEY``. Never logged.
            url: S2S WebSocket endpoint; defaults to ``$GRADIUM_S2S_URL`` or the Gradium cloud.
            settings: Runtime-updatable settings (at least ``target_language`` or ``voice_id``).
            audio_passthrough: Also forward the input audio frames downstream.
            transport_destination: Output destination set on every frame this service
                emits (e.g. one audio track per language with ``ParallelPipeline``).
            end_timeout_s: Longest wait on ``EndFrame`` for the remaining translations.
            utterance_gap_s: Quiet output time that closes an utterance bracket.
            session_options: Other :class:`~gradium_plugins.config.S2SConfig` fields passed
                to the core unchanged (``drain_timeout``, ``reconnect``, ``trailing_silence_s``,
                ``max_session_s``, ``auth_mode``...).
            **kwargs: Passed to ``AIService`` (``name``, ``metrics``...).

        Raises:
            ConfigurationError: A setting or session option is invalid (before any connection).
        """
        route_core_logs_to_loguru()
        store = GradiumS2SSettings(
            model="default",
            target_language=None,
            voice_id=None,
            source_language=None,
            stt_model_name=None,
            tts_model_name=None,
            json_config={},
        )
        if settings is not None:
            store.apply_update(self._normalized(settings))
        super().__init__(settings=store, **kwargs)

        options = dict(session_options or {})
        clash = set(options) & (set(_CORE_FIELDS.values()) | {"api_key", "url"})
        if clash:
            raise ConfigurationError(
                f"session_options cannot set {', '.join(sorted(clash))}; use settings= / api_key= / url="
            )
        if api_key is not None:
            options["api_key"] = api_key
        if url is not None:
            options["url"] = url
        self._config = S2SConfig(**options, **self._core_values(store))
        # The store shows the voice actually used (the default of the language when unset).
        store.voice_id = self._config.voice_id
        if end_timeout_s <= 0:
            raise ConfigurationError("end_timeout_s must be > 0")

        self._audio_passthrough = audio_passthrough
        self._transport_destination = transport_destination
        self._end_timeout_s = end_timeout_s
        self._utterance_gap_s = utterance_gap_s

        self._session: S2SSession | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._reopen_task: asyncio.Task[None] | None = None
        self._reopen_not_before = 0.0
        self._dropped_input_s = 0.0
        self._input_closed = False
        self._user_id = ""
        # Output state, shared by the reader task and interruption handling.
        self._out_lock = asyncio.Lock()
        self._context_prefix = ""
        self._bracket: int | None = None
        self._bracket_has_audio = False
        self._dropped_utterance: int | None = None
        self._output_language: str | None = self._config.target_language
        self._speech_starts: deque[float] = deque(maxlen=32)
        self._reported_input_s = 0.0

        self._register_event_handler("on_connected")
        self._register_event_handler("on_disconnected")
        self._register_event_handler("on_reconnected")
        self._register_event_handler("on_session_renewed")
        self._register_event_handler("on_connection_error")

    # --- public properties -------------------------------------------------------------

    @property
    def config(self) -> S2SConfig:
        """The core configuration currently in force (validated)."""
        return self._config

    @property
    def session(self) -> S2SSession | None:
        """The live core session, or None while disconnected."""
        return self._session

    def can_generate_metrics(self) -> bool:
        """Return True: TTFB, TTFA and usage metrics are reported when enabled.

        Returns:
            True.
        """
        return True

    # --- settings helpers --------------------------------------------------------------

    @staticmethod
    def _normalized(delta: GradiumS2SSettings) -> GradiumS2SSettings:
        """Copy of ``delta`` with languages as Gradium codes."""
        out: GradiumS2SSettings = delta.copy()
        for name in ("target_language", "source_language"):
            value = getattr(out, name)
            if is_given(value):
                setattr(out, name, language_code(value))
        return out

    @staticmethod
    def _core_values(store: GradiumS2SSettings) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name, core_name in _CORE_FIELDS.items():
            value = getattr(store, name)
            if name in ("target_language", "source_language"):
                value = language_code(value)
            if name == "json_config":
                value = dict(value or {})
            values[core_name] = value
        return values

    # --- lifecycle ---------------------------------------------------------------------

    async def setup(self, setup: FrameProcessorSetup) -> None:  # type: ignore[override]
        """Connect to the service; failures are reported as ``ErrorFrame``s, never raised.

        Args:
            setup: Pipeline setup parameters.
        """
        await super().setup(setup)
        await self._open_session()

    async def start(self, frame: StartFrame) -> None:
        """Start the service.

        Args:
            frame: The start frame.
        """
        await super().start(frame)
        self._input_closed = False

    async def stop(self, frame: EndFrame) -> None:
        """End the input and wait (bounded) for every remaining translation.

        Args:
            frame: The end frame (forwarded by :meth:`process_frame` after this returns).
        """
        await super().stop(frame)
        self._input_closed = True
        await self._cancel_reopen()
        session, reader = self._session, self._reader_task
        if session is not None and reader is not None and not reader.done():
            try:
                await session.end_input()
            except GradiumError as exc:
                logger.debug(f"{self}: end_input failed: {exc}")
            _, pending = await asyncio.wait({reader}, timeout=self._end_timeout_s)
            if pending:
                logger.warning(
                    f"{self}: translated output still pending after {self._end_timeout_s:.1f} s; "
                    "closing the session anyway"
                )
        await self._close_session()
        await self._report_usage()

    async def cancel(self, frame: CancelFrame) -> None:
        """Close the session at once, dropping pending output.

        Args:
            frame: The cancel frame.
        """
        await super().cancel(frame)
        self._input_closed = True
        await self._cancel_reopen()
        await self._close_session()

    async def cleanup(self) -> None:
        """Release the session and tasks (idempotent)."""
        await super().cleanup()  # type: ignore[no-untyped-call]
        self._input_closed = True
        await self._cancel_reopen()
        await self._close_session()

    # --- frames ------------------------------------------------------------------------

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Route input audio, interruptions and settings updates; forward everything else.

        Args:
            frame: The frame to process.
            direction: Its direction.
        """
        await super().process_frame(frame, direction)

        if isinstance(frame, InputAudioRawFrame) and direction == FrameDirection.DOWNSTREAM:
            await self._handle_input_audio(frame)
            if self._audio_passthrough:
                await self.push_frame(frame, direction)
        elif isinstance(frame, InterruptionFrame):
            await self._handle_interruption(frame, direction)
        elif isinstance(frame, ServiceUpdateSettingsFrame) and self._is_addressed(frame):
            await self._handle_update_frame(frame)
        else:
            await self.push_frame(frame, direction)

    def _is_addressed(self, frame: ServiceUpdateSettingsFrame[Any]) -> bool:
        if frame.service is not None:
            return frame.service is self
        return isinstance(frame, GradiumS2SUpdateSettingsFrame) or isinstance(frame.delta, GradiumS2SSettings)

    async def _handle_input_audio(self, frame: InputAudioRawFrame) -> None:
        if isinstance(frame, UserAudioRawFrame) and frame.user_id:
            self._user_id = frame.user_id
        if self._input_closed or not self.is_usable:
            return
        session = self._session
        if session is None:
            # No session (a recoverable failure happened): open a new one in the background.
            self._dropped_input_s += frame.num_frames / frame.sample_rate if frame.sample_rate else 0.0
            self._maybe_reopen()
            return
        try:
            await session.send_audio(frame.audio, sample_rate=frame.sample_rate, channels=frame.num_channels)
        except AudioFormatError as exc:
            await self.push_error(f"Gradium S2S: unusable input audio: {exc}", exception=exc,
                                  category=ErrorCategory.APPLICATION)
        except GradiumError as exc:
            # The session failed; its reader task reports the error and closes it.
            logger.trace(f"{self}: audio not sent: {exc}")

    async def _handle_interruption(self, frame: InterruptionFrame, direction: FrameDirection) -> None:
        async with self._out_lock:
            # Forward first: downstream drops what it has queued, then sees our bracket close.
            await self.push_frame(frame, direction)
            if self._bracket is not None:
                logger.debug(f"{self}: interrupted, dropping the rest of utterance {self._bracket}")
                self._dropped_utterance = self._bracket
                await self._push_out(TTSStoppedFrame(context_id=self._context_id(self._bracket)))
                self._bracket = None

    async def _handle_update_frame(self, frame: ServiceUpdateSettingsFrame[Any]) -> None:
        delta: Any = frame.delta
        if delta is None and frame.settings:
            delta = GradiumS2SSettings.from_mapping(frame.settings)
        if delta is None:
            return
        if not isinstance(delta, GradiumS2SSettings):
            # A generic ServiceSettings delta: keep the fields we know.
            mapping = delta.given_fields()
            delta = GradiumS2SSettings.from_mapping(mapping)
        await self._update_settings(delta)

    async def _update_settings(self, delta: ServiceSettings) -> dict[str, Any]:
        """Apply a settings delta; language / voice / model changes go to the live session.

        Args:
            delta: A :class:`GradiumS2SSettings` delta.

        Returns:
            The changed fields with their previous values.
        """
        if isinstance(delta, GradiumS2SSettings):
            delta = self._normalized(delta)
        before = self._settings.copy()
        changed: dict[str, Any] = await super()._update_settings(delta)
        core = {_CORE_FIELDS[name] for name in changed if name in _CORE_FIELDS}
        unhandled = [name for name in changed if name not in _CORE_FIELDS]
        self._warn_unhandled_updated_settings(unhandled)  # type: ignore[no-untyped-call]
        if not core:
            return changed
        values = self._core_values(self._settings)
        changes = {k: values[k] for k in core}
        if is_given(getattr(delta, "voice_id", NOT_GIVEN)):
            changes["voice_id"] = values["voice_id"]  # given explicitly, even if unchanged
        elif "target_language" in changes:
            changes["voice_id"] = None  # the new language's default voice
        try:
            new_config = self._config.replace(**changes)
        except ConfigurationError as exc:
            self._settings = before
            await self.push_error(f"Gradium S2S: settings update rejected: {exc}", exception=exc,
                                  category=ErrorCategory.APPLICATION)
            return {}
        self._config = new_config
        self._settings.voice_id = new_config.voice_id
        session = self._session
        if session is not None and not self._input_closed:
            try:
                await session.update(**changes)
            except GradiumError as exc:
                await self._report_error("Gradium S2S: settings update failed", exc)
        elif session is None and not self._input_closed and self.is_usable:
            # New settings may be what the last connection attempt lacked.
            await self._open_session()
        return changed

    # --- session -----------------------------------------------------------------------

    async def _open_session(self, background: bool = False) -> None:
        """Connect a new session and start reading it; errors are reported, never raised.

        In ``background`` mode (re-opening after a recoverable failure) the core connects with
        its retry policy while input is buffered, so no audio is dropped meanwhile; a final
        failure arrives through the reader.
        """
        if self._session is not None:
            return
        session = S2SSession(self._config)
        session.add_input_listener(self._on_input_speech)
        try:
            await (session.start() if background else session.connect())
        except GradiumError as exc:
            await session.aclose()
            self._reopen_not_before = time.monotonic() + self._config.reconnect_backoff_max_s
            await self._report_error("Gradium S2S: could not connect", exc)
            return
        except Exception as exc:  # noqa: BLE001 - setup() must never raise; reported as an ErrorFrame
            await session.aclose()
            await self.push_error(f"Gradium S2S: could not connect: {exc}", exception=exc,
                                  category=ErrorCategory.UNKNOWN)
            return
        if self._input_closed:  # ended or cancelled while connecting
            await session.aclose()
            return
        self._session = session
        self._context_prefix = uuid.uuid4().hex[:8]
        self._output_language = self._config.target_language
        self._speech_starts.clear()
        self._reported_input_s = 0.0
        if self._dropped_input_s:
            logger.warning(f"{self}: {self._dropped_input_s:.1f} s of input arrived while disconnected")
            self._dropped_input_s = 0.0
        logger.debug(f"{self}: connected ({session!r})")
        self._reader_task = self.create_task(self._read_session(session), "reader")
        await self._call_event_handler("on_connected")

    def _maybe_reopen(self) -> None:
        if self._reopen_task is not None or time.monotonic() < self._reopen_not_before:
            return
        self._reopen_not_before = time.monotonic() + self._config.reconnect_backoff_max_s

        async def reopen() -> None:
            try:
                await self._open_session(background=True)
            finally:
                self._reopen_task = None

        self._reopen_task = self.create_task(reopen(), "reopen")

    async def _cancel_reopen(self) -> None:
        task, self._reopen_task = self._reopen_task, None
        if task is not None and task is not asyncio.current_task():
            await self.cancel_task(task, timeout=1.0)

    async def _close_session(self) -> None:
        session, self._session = self._session, None
        reader, self._reader_task = self._reader_task, None
        if session is not None:
            await session.aclose()
        if reader is not None and reader is not asyncio.current_task():
            await self.cancel_task(reader, timeout=1.0)
        if session is not None:
            await self._call_event_handler("on_disconnected")

    async def _read_session(self, session: S2SSession) -> None:
        failure: GradiumError | None = None
        try:
            async for item in iter_utterances(session, gap_s=self._utterance_gap_s):
                await self._handle_segment(item)
        except GradiumError as exc:
            failure = exc
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a bug here must not kill the pipeline silently
            await self.push_error(f"Gradium S2S: output handling failed: {exc}", exception=exc,
                                  category=ErrorCategory.UNKNOWN)
        async with self._out_lock:
            if self._bracket is not None:  # a failure cut the utterance short
                await self._push_out(TTSStoppedFrame(context_id=self._context_id(self._bracket)))
                self._bracket = None
        await self._report_usage()
        if self._session is session:
            self._session = None
            self._reader_task = None
            await session.aclose()
            await self._call_event_handler("on_disconnected")
        if failure is not None:
            self._reopen_not_before = time.monotonic() + self._config.reconnect_backoff_max_s
            await self._report_error("Gradium S2S: session failed", failure)

    def _on_input_speech(self, event: InputSpeechStarted | InputSpeechStopped) -> None:
        # Called synchronously from send_audio(); remembers when speech began (wall clock)
        # so the first translated audio of the matching utterance can report TTFB.
        if isinstance(event, InputSpeechStarted):
            self._speech_starts.append(time.time() - (time.monotonic() - event.at))

    # --- output ------------------------------------------------------------------------

    def _context_id(self, index: int) -> str:
        return f"gradium-s2s-{self._context_prefix}-{index}"

    async def _push_out(self, frame: Frame) -> None:
        if self._transport_destination is not None:
            frame.transport_destination = self._transport_destination
        await self.push_frame(frame)

    async def _handle_segment(self, item: SegmentEvent) -> None:
        if isinstance(item, Passthrough):
            await self._handle_session_event(item)
            return
        async with self._out_lock:
            if item.index == self._dropped_utterance:
                # Late output of an interrupted utterance.
                if isinstance(item, UtteranceEnded):
                    self._dropped_utterance = None
                    await self._report_usage()
                return
            if isinstance(item, UtteranceStarted):
                self._bracket = item.index
                self._bracket_has_audio = False
                started = TTSStartedFrame(context_id=self._context_id(item.index), append_to_context=False)
                await self._push_out(started)
            elif item.index != self._bracket:
                return
            elif isinstance(item, UtteranceAudio):
                audio = TTSAudioRawFrame(
                    audio=item.audio.pcm,
                    sample_rate=item.audio.sample_rate,
                    num_channels=1,
                    context_id=self._context_id(item.index),
                )
                if not self._bracket_has_audio:
                    self._bracket_has_audio = True
                    if self._speech_starts:
                        await self.start_ttfb_metrics(start_time=self._speech_starts.popleft())
                        await self.stop_ttfb_metrics()
                await self._push_out(audio)
                await self.process_ttfa_metrics(audio)
            elif isinstance(item, UtteranceText):
                text = item.text.text
                language = _pipecat_language(self._output_language)
                translation = TranslationFrame(text=text, user_id=self._user_id,
                                               timestamp=time_now_iso8601(), language=language)
                translation.append_to_context = False
                spoken = TTSTextFrame(text=text, text_type=TextType.SENTENCE,
                                      context_id=self._context_id(item.index))
                spoken.append_to_context = False
                await self._push_out(translation)
                await self._push_out(spoken)
            elif isinstance(item, UtteranceEnded):
                self._bracket = None
                await self._push_out(TTSStoppedFrame(context_id=self._context_id(item.index)))
                await self._report_usage()

    async def _handle_session_event(self, item: Passthrough) -> None:
        event = item.event
        if isinstance(event, Ready):
            logger.debug(f"{self}: session ready (request_id={event.request_id})")
        elif isinstance(event, Reconnected):
            logger.info(f"{self}: reconnected after {event.downtime_s:.2f} s ({event.reason})")
            await self._call_event_handler("on_reconnected", event)
        elif isinstance(event, SessionRenewed):
            if event.target_language is not None:
                self._output_language = event.target_language
            logger.debug(f"{self}: session renewed ({event.reason}, request_id={event.request_id})")
            await self._call_event_handler("on_session_renewed", event)
        elif isinstance(event, UnknownEvent):
            logger.trace(f"{self}: ignoring server message of type {event.type!r}")

    async def _report_usage(self) -> None:
        session = self._session
        if session is None:
            return
        total = session.input_seconds
        delta = total - self._reported_input_s
        if delta > 0:
            self._reported_input_s = total
            await self.start_stt_usage_metrics(STTUsage(audio_seconds=round(delta, 3)))

    # --- errors ------------------------------------------------------------------------

    async def _report_error(self, what: str, exc: GradiumError) -> None:
        """Push ``exc`` as an ``ErrorFrame``; credentials and settings errors are permanent."""
        message = f"{what}: {exc}"
        await self._call_event_handler("on_connection_error", message)
        if isinstance(exc, AuthenticationError):
            await self.push_error(message, exception=exc, category=ErrorCategory.AUTHENTICATION,
                                  force_treat_as_permanent=True)
        elif isinstance(exc, ConfigurationError) or (isinstance(exc, ServerError) and not exc.retryable):
            await self.push_error(message, exception=exc, category=ErrorCategory.INVALID_REQUEST,
                                  force_treat_as_permanent=True)
        elif isinstance(exc, ConnectionLostError):
            await self.push_error(message, exception=exc, category=ErrorCategory.CONNECTIVITY)
        elif isinstance(exc, ServerError):
            await self.push_error(message, exception=exc, category=ErrorCategory.SERVER)
        else:
            await self.push_error(message, exception=exc,
                                  category=ErrorCategory.SERVER if exc.retryable else ErrorCategory.UNKNOWN)
