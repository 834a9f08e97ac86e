"""RoomInterpreter: every speaker of a LiveKit room translated into several languages.

It runs one LiveKit ``TranslationSession`` per (speaking participant, language), each started
on the room with ``TranslationRoomOptions`` (the participant's identity, a 48 kHz output track
``translation-<lang>-<identity>``, ``close_on_disconnect=False``). LiveKit's own room IO then
links the participant's microphone (and relinks it when it is republished or briefly
interrupted), publishes the translated track, and publishes the translated transcript in step
with the audio (``TranscriptSynchronizer``). The interpreter only decides who is translated:

* every participant that publishes a microphone, up to ``max_speakers`` (or the identities
  given in ``participants``); never agents, avatars publishing on an agent's behalf, or
  ``translation-*`` tracks, so interpreters in one room never translate each other;
* when a speaker leaves, each of their translations is drained (the last sentence is still
  spoken) and stopped; when they come back the same sessions restart (no new job callbacks);
* the local participant's attribute ``gradium.translations`` maps each language to the
  translated track of each speaker, as JSON ``{"fr": {"alice": "translation-fr-alice"}}``,
  so a listener's app finds the tracks of its language.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp
from livekit.agents import APIConnectOptions
from livekit.agents.beta.translation import TranslationRoomOptions, TranslationSession
from livekit.agents.types import ATTRIBUTE_PUBLISH_ON_BEHALF, NOT_GIVEN, NotGivenOr
from livekit.agents.utils import aio, is_given
from livekit.agents.voice.events import CloseEvent, CloseReason, ErrorEvent
from livekit.agents.voice.room_io import AudioOutputOptions

from livekit import rtc

from ..config import S2SConfig
from ..errors import ConfigurationError
from ..voices import LANGUAGES
from ._bridge import normalize_language
from .log import logger
from .models import (
    OUTPUT_SAMPLE_RATE,
    TRANSLATIONS_ATTRIBUTE,
    is_translation_track_name,
    translation_track_name,
)
from .translation import DEFAULT_DRAIN_TIMEOUT, TranslationMetrics, TranslationModel, drain_and_close

#: Room events after which the set of speakers is reconciled.
_ROOM_EVENTS: tuple[rtc.room.EventTypes, ...] = (
    "participant_connected",
    "track_published",
    "participant_disconnected",
    "reconnected",
)

InterpreterEvent = Literal[
    "speaker_added", "speaker_removed", "language_added", "language_removed", "metrics_collected", "error"
]


@dataclass(frozen=True)
class InterpreterError:
    """The translation of ``speaker`` into ``language`` failed (``recoverable=False``: it stopped)."""

    speaker: str
    language: str
    error: Exception
    recoverable: bool


def is_speaker_candidate(participant: rtc.RemoteParticipant, allowed: frozenset[str] | None = None) -> bool:
    """Whether a participant may be interpreted.

    It must publish a microphone track that is not a translation, and not be an agent nor
    publish on an agent's behalf (unless ``allowed`` names it).
    """
    if allowed is not None and participant.identity not in allowed:
        return False
    if allowed is None and (
        participant.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT
        or participant.attributes.get(ATTRIBUTE_PUBLISH_ON_BEHALF)
    ):
        return False
    return any(is_speaker_track(pub) for pub in participant.track_publications.values())


def is_speaker_track(publication: rtc.TrackPublication) -> bool:
    """Whether a publication is a microphone to interpret (never a ``translation-*`` track)."""
    return (
        publication.kind == rtc.TrackKind.KIND_AUDIO
        and publication.source == rtc.TrackSource.SOURCE_MICROPHONE
        and not is_translation_track_name(publication.name)
    )


class RoomInterpreter(rtc.EventEmitter[InterpreterEvent]):
    """Interprets the speakers of a room into several languages.

    Args:
        room: A connected room (``await ctx.connect()`` in a worker).
        languages: Target languages (``en``, ``fr``, ``de``, ``es``, ``pt``; ``fr-FR`` accepted).
        participants: Identities to interpret; by default every participant with a microphone
            that is not an agent.
        max_speakers: How many speakers are translated at once; later ones wait for a slot.
        source_language: Language the speakers speak, when known.
        voices: Voice uid per language (default: a flagship voice of each language).
        api_key: Gradium API key; defaults to ``$GRADIUM_API_KEY``.
        url: S2S endpoint; defaults to ``$GRADIUM_S2S_URL`` or the Gradium cloud.
        config: A full :class:`~gradium_plugins.S2SConfig` the per-language configs derive from.
        conn_options: LiveKit connection options of every translation.
        http_session: aiohttp session to reuse.
        drain_timeout: Bound of the wait for the last translation when a speaker leaves.

    Events:
        ``speaker_added`` / ``speaker_removed`` (the identity), ``language_added`` /
        ``language_removed`` (the code), ``metrics_collected``
        (:class:`~gradium_plugins.livekit.TranslationMetrics`), ``error``
        (:class:`InterpreterError`).

    Raises:
        ConfigurationError: An option is invalid (checked before anything starts).
    """

    def __init__(
        self,
        room: rtc.Room,
        *,
        languages: Iterable[str],
        participants: NotGivenOr[Iterable[str]] = NOT_GIVEN,
        max_speakers: int = 4,
        source_language: NotGivenOr[str] = NOT_GIVEN,
        voices: Mapping[str, str] | None = None,
        api_key: NotGivenOr[str] = NOT_GIVEN,
        url: NotGivenOr[str] = NOT_GIVEN,
        config: NotGivenOr[S2SConfig] = NOT_GIVEN,
        conn_options: NotGivenOr[APIConnectOptions] = NOT_GIVEN,
        http_session: aiohttp.ClientSession | None = None,
        drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
    ) -> None:
        super().__init__()
        if max_speakers < 1:
            raise ConfigurationError("max_speakers must be >= 1")
        self._room = room
        self._allowed = frozenset(participants) if is_given(participants) else None
        self._max_speakers = max_speakers
        self._model_kwargs: dict[str, Any] = {
            "source_language": source_language,
            "api_key": api_key,
            "url": url,
            "config": config,
            "conn_options": conn_options,
            "http_session": http_session,
            "drain_timeout": drain_timeout,
        }
        voices = {normalize_language(k) or k: v for k, v in (voices or {}).items()}
        self._models: dict[str, TranslationModel] = {}
        for lang in languages:
            model = self._make_model(lang, voices.get(normalize_language(lang) or lang))
            self._models.setdefault(model.target_language, model)
        self._voices = voices
        # (speaker, language) -> its session, kept across leave/rejoin so a job registers one
        # shutdown callback per session, not one per rejoin.
        self._sessions: dict[tuple[str, str], TranslationSession[Any]] = {}
        self._running: set[tuple[str, str]] = set()
        self._speakers: list[str] = []
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._started = self._closed = False

    @property
    def languages(self) -> list[str]:
        """Languages being published."""
        return list(self._models)

    @property
    def speakers(self) -> list[str]:
        """Identities being translated, in the order they were taken."""
        return list(self._speakers)

    def session(self, speaker: str, language: str) -> TranslationSession[Any] | None:
        """The ``TranslationSession`` translating ``speaker`` into ``language``, if running."""
        key = (speaker, language)
        return self._sessions.get(key) if key in self._running else None

    async def start(self) -> None:
        """Translate the speakers already in the room and follow the room (idempotent)."""
        if self._started:
            return
        self._started = True
        for event in _ROOM_EVENTS:
            self._room.on(event, self._schedule_reconcile)
        await self._reconcile()

    async def add_language(self, language: str, *, voice_id: NotGivenOr[str] = NOT_GIVEN) -> None:
        """Start translating every speaker into ``language`` too (no-op if already there).

        Raises:
            ConfigurationError: Unsupported language or voice.
        """
        lang = normalize_language(language) or language
        voice = voice_id if is_given(voice_id) else self._voices.get(lang)
        model = self._make_model(lang, voice)  # validate before taking the lock
        async with self._lock:
            if lang in self._models or self._closed:
                return
            self._models[lang] = model
            for speaker in self._speakers:
                await self._start(speaker, lang)
            self._publish_attribute()
        self.emit("language_added", lang)

    async def remove_language(self, language: str) -> None:
        """Stop translating into ``language`` (each last sentence is still spoken)."""
        lang = normalize_language(language) or language
        async with self._lock:
            if self._models.pop(lang, None) is None:
                return
            await asyncio.gather(*(self._stop(s, lang, forget=True) for s in self._speakers))
            self._publish_attribute()
        self.emit("language_removed", lang)

    async def aclose(self) -> None:
        """Drain every translation and stop following the room."""
        if self._closed:
            return
        self._closed = True
        if self._started:
            for event in _ROOM_EVENTS:
                self._room.off(event, self._schedule_reconcile)
        await aio.cancel_and_wait(*self._tasks)
        async with self._lock:
            await asyncio.gather(*(self._stop(s, lang, forget=True) for s, lang in list(self._sessions)))
            self._speakers.clear()

    # --- room-facing operations (overridable) -------------------------------------------

    async def _start_session(self, session: TranslationSession[Any], options: TranslationRoomOptions) -> None:
        """Start one translation on the room (LiveKit's room IO links, publishes, captions)."""
        await session.start(room=self._room, room_options=options)

    def _set_attributes(self, attributes: dict[str, str]) -> None:
        """Set attributes of the local participant (the track map of listeners' apps)."""
        self._spawn(self._room.local_participant.set_attributes(attributes))

    # --- speakers ------------------------------------------------------------------------

    def _schedule_reconcile(self, *_: Any) -> None:
        if not self._closed:
            self._spawn(self._reconcile())

    async def _reconcile(self) -> None:
        """Translate the speakers present (bounded), drain and stop those who left."""
        async with self._lock:
            if self._closed:
                return
            present = {p.identity: p for p in self._room.remote_participants.values()}
            for speaker in [s for s in self._speakers if s not in present]:
                self._speakers.remove(speaker)
                await asyncio.gather(*(self._stop(speaker, lang) for lang in self._models))
                logger.info("speaker left", extra={"lk.pii.participant_identity": speaker})
                self.emit("speaker_removed", speaker)
            for identity, participant in present.items():
                if len(self._speakers) >= self._max_speakers:
                    break
                if identity in self._speakers or not is_speaker_candidate(participant, self._allowed):
                    continue
                self._speakers.append(identity)
                for lang in self._models:
                    await self._start(identity, lang)
                logger.info("speaker added", extra={"lk.pii.participant_identity": identity})
                self.emit("speaker_added", identity)
            self._publish_attribute()

    async def _start(self, speaker: str, language: str) -> None:
        key = (speaker, language)
        if key in self._running:
            return
        session = self._sessions.get(key)
        if session is None:
            session = TranslationSession(model=self._models[language])
            session.on("error", lambda ev: self._on_session_error(key, ev))
            session.on("close", lambda ev: self._on_session_close(key, ev))
            self._sessions[key] = session
        options = TranslationRoomOptions(
            participant_identity=speaker,
            audio_output=AudioOutputOptions(
                sample_rate=OUTPUT_SAMPLE_RATE, track_name=translation_track_name(language, speaker)
            ),
            # A leaving speaker is drained here (the last sentence kept), not closed by LiveKit.
            close_on_disconnect=False,
        )
        self._running.add(key)
        await self._start_session(session, options)

    async def _stop(self, speaker: str, language: str, *, forget: bool = False) -> None:
        key = (speaker, language)
        session = self._sessions.pop(key, None) if forget else self._sessions.get(key)
        if key in self._running and session is not None:
            self._running.discard(key)
            await drain_and_close(session)

    def _on_session_error(self, key: tuple[str, str], ev: ErrorEvent) -> None:
        error = getattr(ev.error, "error", None)
        exc = error if isinstance(error, Exception) else RuntimeError(str(ev.error))
        self.emit(
            "error", InterpreterError(key[0], key[1], exc, bool(getattr(ev.error, "recoverable", False)))
        )

    def _on_session_close(self, key: tuple[str, str], ev: CloseEvent) -> None:
        if ev.reason == CloseReason.ERROR and key in self._running:
            # A final failure (the core already retried): silent until the speaker rejoins.
            logger.error("translation stopped after an error", extra={"language": key[1]})
            self._running.discard(key)

    def _publish_attribute(self) -> None:
        tracks = {
            lang: {s: translation_track_name(lang, s) for s in self._speakers if (s, lang) in self._running}
            for lang in self._models
        }
        self._set_attributes({TRANSLATIONS_ATTRIBUTE: json.dumps(tracks, sort_keys=True)})

    # --- helpers -----------------------------------------------------------------------

    def _make_model(self, language: str, voice: str | None) -> TranslationModel:
        lang = normalize_language(language) or language
        if lang not in LANGUAGES:
            raise ConfigurationError(
                f"language {language!r} is not supported; allowed: {', '.join(LANGUAGES)}"
            )
        model = TranslationModel(
            target_language=lang, voice_id=voice if voice is not None else NOT_GIVEN, **self._model_kwargs
        )
        model.on("metrics_collected", self._forward_metrics)
        return model

    def _forward_metrics(self, metrics: TranslationMetrics) -> None:
        self.emit("metrics_collected", metrics)

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
