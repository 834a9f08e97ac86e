"""Pipecat frame processor for Gradium real-time speech-to-speech translation.

:class:`GradiumS2SService` is framework glue around :class:`~gradium_plugins.session.S2SSession`:
one session per speaker (:class:`~._speaker.Speaker`), input handed over without blocking
Pipecat's input task, and each translated utterance turned into Pipecat frames according to the
service's role (interpreter, inbound or outbound leg of an agent). Reconnecting, buffering,
replaying, renewing and the utterance-level events live in the core.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, Literal

from loguru import logger  # type: ignore[import-not-found,unused-ignore]
from pipecat.frames.frames import (
    CancelFrame,
    EndFrame,
    Frame,
    InputAudioRawFrame,
    InterruptionFrame,
    ServiceUpdateSettingsFrame,
    StartFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    UserAudioRawFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessorSetup
from pipecat.services.settings import ServiceSettings
from pipecat.utils.errors import ErrorCategory
from pipecat.utils.types import NOT_GIVEN, is_given

from ..config import S2SConfig
from ..errors import ConfigurationError, GradiumError
from ._errors import classify_error
from ._logbridge import route_core_logs_to_loguru
from ._settings import (
    _CORE_FIELDS,
    GradiumS2SSettings,
    GradiumS2SUpdateSettingsFrame,
    core_values,
    normalized,
    pcm_format,
)
from ._speaker import Speaker
from ._speakers import SpeakersMixin

#: Seconds ``EndFrame`` waits for the last translated audio before it is forwarded anyway.
DEFAULT_END_TIMEOUT_S = 30.0
#: Most concurrent speaker sessions (one per ``user_id``) by default.
DEFAULT_MAX_SPEAKERS = 4
#: A participant's session closes after this long without audio from them.
DEFAULT_SPEAKER_IDLE_S = 30.0

Role = Literal["interpreter", "inbound", "outbound"]
_ROLES = ("interpreter", "inbound", "outbound")


class GradiumS2SService(SpeakersMixin):
    """Real-time speech-to-speech translation with Gradium, as a Pipecat service.

    Three roles, each a few lines in a pipeline:

    - ``"interpreter"`` (default): input audio (``InputAudioRawFrame`` / ``UserAudioRawFrame``,
      any rate) in; each translated utterance out as ``TTSStartedFrame`` → ``TTSAudioRawFrame``
      … → ``TTSStoppedFrame`` with its text as ``TranslationFrame`` and ``TTSTextFrame``::

          translator = GradiumS2SService(settings=GradiumS2SService.Settings(target_language="fr"))
          pipeline = Pipeline([transport.input(), translator, transport.output()])

    - ``"inbound"`` (caller → agent language, before an STT-less agent's user aggregator):
      each translated utterance becomes a finalized ``TranscriptionFrame`` (``language`` = the
      target, ``user_id`` = the speaker) that Pipecat's context aggregators feed to the LLM;
      translated audio only with ``audio_out=True``.
    - ``"outbound"`` (agent → caller language, after the agent's TTS): consumes the TTS output
      (``TTSAudioRawFrame`` between ``TTSStartedFrame`` / ``TTSStoppedFrame``), feeds it to the
      session at real time and replaces it with the translated speech and text. An
      ``InterruptionFrame`` drops the untranslated remainder and the translation in progress.

    Behaviour common to the roles:

    - Sample rates come from the pipeline: the service is asked for ``pcm_{rate}`` matching
      ``audio_out_sample_rate`` (and the input rate likewise), so nothing resamples downstream.
    - One session per speaker: ``UserAudioRawFrame``s of several participants (Daily, LiveKit)
      get a session each (at most ``max_speakers``; closed after ``speaker_idle_s`` without
      audio), or only ``user_id`` is translated when given. Their translations take turns.
    - The session connects in the background and buffers input meanwhile; the core reconnects
      and replays by itself. Input is handed to a feeder task, never blocking the pipeline.
    - Errors become ``ErrorFrame``s classified by :meth:`_classify_error` (HTTP statuses the
      Pipecat way: 429 → ``RATE_LIMIT``, 402 → ``QUOTA``); only credentials and invalid
      requests are permanent. Recoverable errors are reported at most once per
      ``reconnect_backoff_max_s``.
    - ``ServiceUpdateSettingsFrame`` (addressed to this service) or
      :class:`GradiumS2SUpdateSettingsFrame` change language / voice without losing audio; a
      change the server refuses leaves the previous settings in force (non-fatal ``ErrorFrame``).
    - ``EndFrame`` ends the input and waits (at most ``end_timeout_s``) for every translation,
      then forwards the ``EndFrame``. ``CancelFrame`` closes at once.

    Event handlers: ``on_connected(service)``, ``on_disconnected(service)``,
    ``on_reconnected(service, Reconnected)``, ``on_session_renewed(service, SessionRenewed)``,
    ``on_connection_error(service, message)``.
    """

    Settings = GradiumS2SSettings
    _settings: GradiumS2SSettings

    def __init__(
        self,
        *,
        api_key: str | None = None,
        url: str | None = None,
        settings: GradiumS2SSettings | None = None,
        role: Role = "interpreter",
        audio_out: bool | None = None,
        audio_passthrough: bool = True,
        user_id: str | None = None,
        max_speakers: int = DEFAULT_MAX_SPEAKERS,
        speaker_idle_s: float = DEFAULT_SPEAKER_IDLE_S,
        transport_destination: str | None = None,
        end_timeout_s: float = DEFAULT_END_TIMEOUT_S,
        session_options: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Create the service (no I/O; it connects in ``setup()``).

        Args:
            api_key: Gradium API key; defaults to ``$GRADIUM_API_KEY``. Never logged.
            url: S2S WebSocket endpoint; defaults to ``$GRADIUM_S2S_URL`` or the Gradium cloud.
            settings: Runtime-updatable settings (at least ``target_language`` or ``voice_id``).
            role: ``"interpreter"``, ``"inbound"`` or ``"outbound"`` (see the class docstring).
            audio_out: Emit the translated speech; defaults to True, False for ``"inbound"``.
            audio_passthrough: Forward the input audio frames downstream (as Pipecat's STT
                services do). The outbound role always consumes the TTS audio it translates.
            user_id: Translate only this participant's ``UserAudioRawFrame``s.
            max_speakers: Most concurrent per-participant sessions.
            speaker_idle_s: Close a participant's session after this long without their audio.
            transport_destination: Output destination set on every frame this service emits.
            end_timeout_s: Longest wait on ``EndFrame`` for the remaining translations.
            session_options: Other :class:`~gradium_plugins.config.S2SConfig` fields passed
                to the core unchanged (``input_format``, ``output_format``, ``drain_timeout``,
                ``trailing_silence_s``, ``realtime_factor``, ``auth_mode``...).
            **kwargs: Passed to ``AIService`` (``name``, ``metrics``...).

        Raises:
            ConfigurationError: A setting or option is invalid (before any connection).
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
            store.apply_update(normalized(settings))
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
        # Network failures never end a pipeline's session: input is buffered and replayed.
        options.setdefault("persistent", True)
        self._config = S2SConfig(**options, **core_values(store))
        self._formats_given = {k for k in ("input_format", "output_format") if k in options}
        store.voice_id = self._config.voice_id  # the voice actually used
        if role not in _ROLES:
            raise ConfigurationError(f"role={role!r} is not supported; allowed: {', '.join(_ROLES)}")
        if end_timeout_s <= 0 or speaker_idle_s <= 0 or max_speakers < 1:
            raise ConfigurationError("end_timeout_s and speaker_idle_s must be > 0, max_speakers >= 1")

        self.role: Role = role
        self.audio_out = audio_out if audio_out is not None else role != "inbound"
        self._audio_passthrough = audio_passthrough
        self._user_filter = user_id
        self._max_speakers = max_speakers
        self._speaker_idle_s = speaker_idle_s
        self._transport_destination = transport_destination
        self._end_timeout_s = end_timeout_s
        self._speakers: dict[str, Speaker] = {}
        self._refused: set[str] = set()
        self._input_closed = False
        self._idle_task: asyncio.Task[None] | None = None
        self._last_report: dict[str, float] = {}
        self._init_output()

        for name in (
            "on_connected",
            "on_disconnected",
            "on_reconnected",
            "on_session_renewed",
            "on_connection_error",
        ):
            self._register_event_handler(name)

    # --- public properties -------------------------------------------------------------

    @property
    def config(self) -> S2SConfig:
        """The core configuration currently in force (validated)."""
        return self._config

    def can_generate_metrics(self) -> bool:
        """Return True: TTFB, processing, TTFA and usage metrics are reported when enabled.

        Returns:
            True.
        """
        return True

    # --- lifecycle ---------------------------------------------------------------------

    async def setup(self, setup: FrameProcessorSetup) -> None:  # type: ignore[override]
        """Take the pipeline's sample rates and start connecting (in the background).

        Args:
            setup: Pipeline setup parameters.
        """
        await super().setup(setup)
        rates = {
            # The outbound role's input is the agent's TTS, which speaks at the output rate.
            "input_format": setup.audio_out_sample_rate
            if self.role == "outbound"
            else setup.audio_in_sample_rate,
            "output_format": setup.audio_out_sample_rate,
        }
        formats = {k: pcm_format(r) for k, r in rates.items() if k not in self._formats_given}
        changes = {k: v for k, v in formats.items() if v is not None}
        if changes:
            self._config = self._config.replace(**changes)
        # One session from the start (a warm connection; adopted by the first participant).
        await self._speaker(self._user_filter or "")

    async def start(self, frame: StartFrame) -> None:
        """Start the service.

        Args:
            frame: The start frame.
        """
        await super().start(frame)
        self._input_closed = False

    async def stop(self, frame: EndFrame) -> None:
        """End the input of every speaker and wait (bounded) for the remaining translations.

        Args:
            frame: The end frame (forwarded by :meth:`process_frame` after this returns).
        """
        await super().stop(frame)
        self._input_closed = True
        speakers = list(self._speakers.values())
        if speakers:
            done = await asyncio.gather(*(sp.end(self._end_timeout_s) for sp in speakers))
            if not all(done):
                logger.warning(
                    f"{self}: translations still pending after {self._end_timeout_s:.1f} s; closing"
                )
        await self._close_all()

    async def cancel(self, frame: CancelFrame) -> None:
        """Close every session at once, dropping pending output.

        Args:
            frame: The cancel frame.
        """
        await super().cancel(frame)
        self._input_closed = True
        await self._close_all()

    async def cleanup(self) -> None:
        """Release the sessions and tasks (idempotent)."""
        await super().cleanup()  # type: ignore[no-untyped-call]
        self._input_closed = True
        await self._close_all()

    # --- frames ------------------------------------------------------------------------

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Route input audio, TTS output, interruptions and settings updates; forward the rest.

        Args:
            frame: The frame to process.
            direction: Its direction.
        """
        await super().process_frame(frame, direction)
        downstream = direction == FrameDirection.DOWNSTREAM
        if isinstance(frame, InputAudioRawFrame) and downstream and self.role != "outbound":
            await self._handle_input_audio(frame)
            if self._audio_passthrough:
                await self.push_frame(frame, direction)
        elif self.role == "outbound" and downstream and self._is_agent_speech(frame):
            await self._handle_agent_speech(frame)
        elif isinstance(frame, InterruptionFrame):
            await self.push_frame(frame, direction)
            if self.role != "inbound":  # the caller interrupting the agent must still be heard
                await self._interrupt_output()
        elif isinstance(frame, ServiceUpdateSettingsFrame) and self._is_addressed(frame):
            await self._handle_update_frame(frame)
        else:
            await self.push_frame(frame, direction)

    def _is_addressed(self, frame: ServiceUpdateSettingsFrame[Any]) -> bool:
        if frame.service is not None:
            return frame.service is self
        return isinstance(frame, GradiumS2SUpdateSettingsFrame) or isinstance(frame.delta, GradiumS2SSettings)

    @staticmethod
    def _is_agent_speech(frame: Frame) -> bool:
        # The agent's TTS output; another Gradium service's translation is left alone.
        if not isinstance(frame, TTSStartedFrame | TTSAudioRawFrame | TTSStoppedFrame):
            return False
        return not (frame.context_id or "").startswith("gradium-s2s-")

    async def _handle_input_audio(self, frame: InputAudioRawFrame) -> None:
        user_id = frame.user_id if isinstance(frame, UserAudioRawFrame) else ""
        if self._user_filter is not None and user_id != self._user_filter:
            return
        sp = await self._speaker(user_id)
        if sp is not None:
            sp.push(frame.audio, frame.sample_rate, frame.num_channels)

    async def _handle_agent_speech(self, frame: Frame) -> None:
        sp = await self._speaker("")
        if sp is None:
            return
        if isinstance(frame, TTSAudioRawFrame):
            sp.push(frame.audio, frame.sample_rate, frame.num_channels)
        elif isinstance(frame, TTSStoppedFrame):
            sp.pad()

    async def _handle_update_frame(self, frame: ServiceUpdateSettingsFrame[Any]) -> None:
        delta: Any = frame.delta
        if delta is None and frame.settings:
            delta = GradiumS2SSettings.from_mapping(frame.settings)
        if delta is None:
            return
        if not isinstance(delta, GradiumS2SSettings):
            delta = GradiumS2SSettings.from_mapping(delta.given_fields())  # keep the fields we know
        await self._update_settings(delta)

    async def _update_settings(self, delta: ServiceSettings) -> dict[str, Any]:
        """Apply a settings delta; language / voice / model changes go to the live sessions.

        Args:
            delta: A :class:`GradiumS2SSettings` delta.

        Returns:
            The changed fields with their previous values.
        """
        if isinstance(delta, GradiumS2SSettings):
            delta = normalized(delta)
        before = self._settings.copy()
        changed: dict[str, Any] = await super()._update_settings(delta)
        core = {_CORE_FIELDS[name] for name in changed if name in _CORE_FIELDS}
        self._warn_unhandled_updated_settings([n for n in changed if n not in _CORE_FIELDS])  # type: ignore[no-untyped-call]
        if not core:
            return changed
        values = core_values(self._settings)
        changes = {k: values[k] for k in core}
        if is_given(getattr(delta, "voice_id", NOT_GIVEN)):
            changes["voice_id"] = values["voice_id"]  # given explicitly, even if unchanged
        elif "target_language" in changes:
            changes["voice_id"] = None  # the new language's default voice
        try:
            new_config = self._config.replace(**changes)
        except ConfigurationError as exc:
            self._settings = before
            await self.push_error(
                f"Gradium S2S: settings update rejected: {exc}",
                exception=exc,
                category=ErrorCategory.APPLICATION,
            )
            return {}
        self._config = new_config
        self._settings.voice_id = new_config.voice_id
        if not self._input_closed:
            for sp in list(self._speakers.values()):
                try:
                    await sp.session.update(**changes)
                except GradiumError as exc:
                    await self._report_error("Gradium S2S: settings update failed", exc)
        return changed

    async def _update_rejected(self, sp: Speaker, error: GradiumError) -> None:
        """The server refused a settings change: the session goes on with its previous settings."""
        kept = sp.session.config
        self._config = self._config.replace(**{core: getattr(kept, core) for core in _CORE_FIELDS.values()})
        for name, core in _CORE_FIELDS.items():
            value = getattr(kept, core)
            setattr(self._settings, name, dict(value) if isinstance(value, dict) else value)
        await self.push_error(
            f"Gradium S2S: settings update refused, previous settings kept: {error}",
            exception=error,
            category=ErrorCategory.APPLICATION,
        )

    # --- errors, usage and tracing -----------------------------------------------------

    def _classify_error(self, exception: Exception) -> ErrorCategory | None:
        """Classify the core's typed errors; HTTP statuses the way Pipecat does (429, 402...).

        Args:
            exception: The exception to classify.

        Returns:
            The category, or None to let Pipecat classify it.
        """
        return classify_error(exception)
