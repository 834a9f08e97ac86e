"""RoomInterpreter: one speaker of a LiveKit room translated into several languages.

For each target language the interpreter runs one ``TranslationSession`` on a Gradium
:class:`~gradium_plugins.livekit.TranslationModel` and publishes:

* an audio track named ``translation-<lang>`` (48 kHz mono), and
* captions on the ``lk.transcription`` text-stream topic, one final message per translated
  utterance, with the attribute ``language=<lang>`` and ``lk.transcribed_track_id`` set to
  the translated track.

The speaker's audio is subscribed once and fanned out to every language. Tracks named
``translation-*`` are never translated (no feedback loop between interpreters), nor, unless
named as the speaker, are agents' tracks. When the speaker leaves, each translation is
drained (the last sentence is still spoken) and stopped; when they come back it restarts.
Languages can be added and removed while it runs.

The room-facing operations (publish, unpublish, send a caption, subscribe, read a track)
are small protected methods, so the interpreter can be exercised without a LiveKit server.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp
from livekit.agents.beta.translation import TranslationSession
from livekit.agents.types import ATTRIBUTE_PUBLISH_ON_BEHALF, NOT_GIVEN, NotGivenOr
from livekit.agents.utils import aio, is_given, shortuuid
from livekit.agents.voice import io
from livekit.agents.voice.events import CloseEvent, CloseReason, ErrorEvent

from livekit import rtc

from ..config import S2SConfig
from ..errors import ConfigurationError
from ..voices import LANGUAGES
from .log import logger
from .models import LANGUAGE_ATTRIBUTE, OUTPUT_SAMPLE_RATE, is_translation_track_name, translation_track_name
from .translation import DEFAULT_DRAIN_TIMEOUT, TranslationMetrics, TranslationModel, drain_and_close

#: Text-stream topic LiveKit clients read transcriptions from.
TOPIC_TRANSCRIPTION = "lk.transcription"
#: Rate the speaker's track is read at (the S2S wire input rate: no resampling in the core).
SPEAKER_READ_RATE = 24000

InterpreterEvent = Literal[
    "speaker_linked",
    "speaker_unlinked",
    "language_added",
    "language_removed",
    "caption",
    "metrics_collected",
    "error",
]


@dataclass(frozen=True)
class SpeakerLinked:
    """The interpreter started translating a speaker's track."""

    participant_identity: str
    track_sid: str


@dataclass(frozen=True)
class SpeakerUnlinked:
    """The linked track went away (speaker left, unpublished or unsubscribed)."""

    participant_identity: str
    track_sid: str


@dataclass(frozen=True)
class Caption:
    """A caption published for one translated utterance (event ``caption``)."""

    language: str
    text: str
    attributes: dict[str, str]


@dataclass(frozen=True)
class InterpreterError:
    """A translation into ``language`` failed (``recoverable=False``: it stopped)."""

    language: str
    error: Exception
    recoverable: bool


def is_speaker_candidate(participant: rtc.RemoteParticipant, speaker_identity: str | None) -> bool:
    """Whether a participant may be interpreted.

    With ``speaker_identity`` only that participant; otherwise any participant that is not
    an agent and does not publish on an agent's behalf (avatars).
    """
    if speaker_identity is not None:
        return participant.identity == speaker_identity
    if participant.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT:
        return False
    return not participant.attributes.get(ATTRIBUTE_PUBLISH_ON_BEHALF)


def is_speaker_track(publication: rtc.TrackPublication, track_sid: str | None) -> bool:
    """Whether a publication is a speech track to interpret (never a ``translation-*`` track)."""
    if publication.kind != rtc.TrackKind.KIND_AUDIO or is_translation_track_name(publication.name):
        return False
    if track_sid is not None:
        return publication.sid == track_sid
    return publication.source in (rtc.TrackSource.SOURCE_MICROPHONE, rtc.TrackSource.SOURCE_UNKNOWN)


class _QueueAudioInput(io.AudioInput):
    """Audio input of one language's TranslationSession, fed by the interpreter."""

    def __init__(self) -> None:
        super().__init__(label="gradium-interpreter-input")
        self._ch: aio.Chan[rtc.AudioFrame] = aio.Chan()

    def push(self, frame: rtc.AudioFrame) -> None:
        with contextlib.suppress(aio.ChanClosed):
            self._ch.send_nowait(frame)

    def close(self) -> None:
        self._ch.close()

    async def __anext__(self) -> rtc.AudioFrame:
        try:
            return await self._ch.recv()
        except aio.ChanClosed:
            raise StopAsyncIteration from None


class _TrackAudioOutput(io.AudioOutput):
    """Plays translated audio into the ``rtc.AudioSource`` of a ``translation-<lang>`` track."""

    def __init__(self, source: rtc.AudioSource) -> None:
        super().__init__(
            label="gradium-interpreter-track",
            capabilities=io.AudioOutputCapabilities(pause=False),
            sample_rate=source.sample_rate,
        )
        self._source = source
        self._segment_s: float | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._inflight: asyncio.Future[None] | None = None

    async def capture_frame(self, frame: rtc.AudioFrame) -> None:
        await super().capture_frame(frame)
        if self._segment_s is None:
            self._segment_s = 0.0
            self.on_playback_started(created_at=time.time())
        # AudioSource paces this call: it returns once the frame fits its short queue. The
        # native capture is shielded from cancellation so that closing the source never races
        # a capture still running in the SDK.
        self._inflight = asyncio.ensure_future(self._source.capture_frame(frame))
        await asyncio.shield(self._inflight)
        self._segment_s += frame.duration

    def flush(self) -> None:
        super().flush()
        if self._segment_s is None:
            return
        played, self._segment_s = self._segment_s, None
        task = asyncio.create_task(self._finish(played))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _finish(self, played: float) -> None:
        await self._source.wait_for_playout()
        self.on_playback_finished(playback_position=played, interrupted=False)

    def clear_buffer(self) -> None:
        self._source.clear_queue()
        if self._segment_s is not None:
            played, self._segment_s = self._segment_s, None
            self.on_playback_finished(playback_position=played, interrupted=True)

    async def aclose(self) -> None:
        await aio.cancel_and_wait(*self._tasks)
        if self._inflight is not None and not self._inflight.done():
            await asyncio.wait([self._inflight], timeout=2.0)


class _CaptionOutput(io.TextOutput):
    """Collects a translated utterance's text and publishes it as one caption on flush."""

    def __init__(self, interpreter: RoomInterpreter, channel: _Channel) -> None:
        super().__init__(label="gradium-interpreter-captions", next_in_chain=None)
        self._interpreter = interpreter
        self._channel = channel
        self._parts: list[str] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def capture_text(self, text: str) -> None:
        self._parts.append(text)

    def flush(self) -> None:
        text = "".join(self._parts).strip()
        self._parts = []
        if not text:
            return
        attributes = {
            LANGUAGE_ATTRIBUTE: self._channel.language,
            "lk.transcription_final": "true",
            "lk.segment_id": shortuuid("SG_"),
        }
        if self._channel.track_sid:
            attributes["lk.transcribed_track_id"] = self._channel.track_sid
        task = asyncio.create_task(self._publish(text, attributes))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _publish(self, text: str, attributes: dict[str, str]) -> None:
        try:
            await self._interpreter._send_caption(text, attributes)
        except Exception:  # noqa: BLE001 - a lost caption must not stop the translation
            logger.warning("publishing a caption failed", exc_info=True)
            return
        self._interpreter.emit("caption", Caption(self._channel.language, text, attributes))

    async def aclose(self) -> None:
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5.0)


@dataclass(eq=False)
class _Channel:
    """Everything published for one target language."""

    language: str
    model: TranslationModel
    source: rtc.AudioSource
    track: rtc.LocalAudioTrack
    output: _TrackAudioOutput
    track_sid: str | None = None
    captions: _CaptionOutput | None = None
    session: TranslationSession[Any] | None = None
    input: _QueueAudioInput | None = None
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)


@dataclass(frozen=True)
class _Link:
    participant_identity: str
    track_sid: str
    reader: asyncio.Task[None]


class RoomInterpreter(rtc.EventEmitter[InterpreterEvent]):
    """Interprets one speaker of a room into several languages.

    Args:
        room: A connected room (``await ctx.connect()`` in a worker).
        languages: Target languages to start with (``en``, ``fr``, ``de``, ``es``, ``pt``).
        speaker: Identity of the participant to interpret; by default the first participant
            that is not an agent.
        track_sid: Interpret this audio track only (of ``speaker`` if given).
        source_language: Language the speaker speaks, when known.
        voices: Voice uid per language (default: a flagship voice of each language).
        api_key: Gradium API key; defaults to ``$GRADIUM_API_KEY``.
        url: S2S endpoint; defaults to ``$GRADIUM_S2S_URL`` or the Gradium cloud.
        config: A full :class:`~gradium_plugins.S2SConfig` the per-language configs derive from.
        http_session: aiohttp session to reuse.
        captions: Publish captions (text streams) next to the audio tracks.
        track_publish_options: Options of the published translation tracks.
        drain_timeout: Bound of the wait for the last translation when a language stops.

    Events:
        ``speaker_linked`` (:class:`SpeakerLinked`), ``speaker_unlinked``
        (:class:`SpeakerUnlinked`), ``language_added`` / ``language_removed`` (the code),
        ``caption`` (:class:`Caption`), ``metrics_collected``
        (:class:`~gradium_plugins.livekit.TranslationMetrics`), ``error``
        (:class:`InterpreterError`).

    Raises:
        ConfigurationError: An option is invalid (checked before anything is published).
    """

    def __init__(
        self,
        room: rtc.Room,
        *,
        languages: Iterable[str],
        speaker: NotGivenOr[str] = NOT_GIVEN,
        track_sid: NotGivenOr[str] = NOT_GIVEN,
        source_language: NotGivenOr[str] = NOT_GIVEN,
        voices: Mapping[str, str] | None = None,
        api_key: NotGivenOr[str] = NOT_GIVEN,
        url: NotGivenOr[str] = NOT_GIVEN,
        config: NotGivenOr[S2SConfig] = NOT_GIVEN,
        http_session: aiohttp.ClientSession | None = None,
        captions: bool = True,
        track_publish_options: rtc.TrackPublishOptions | None = None,
        drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
    ) -> None:
        super().__init__()
        self._room = room
        self._speaker = speaker if is_given(speaker) else None
        self._track_sid = track_sid if is_given(track_sid) else None
        self._voices = dict(voices or {})
        self._model_kwargs: dict[str, Any] = {
            "source_language": source_language,
            "api_key": api_key,
            "url": url,
            "config": config,
            "http_session": http_session,
            "drain_timeout": drain_timeout,
        }
        self._captions = captions
        self._publish_options = track_publish_options or rtc.TrackPublishOptions(
            source=rtc.TrackSource.SOURCE_MICROPHONE
        )
        self._initial = list(dict.fromkeys(languages))
        for lang in self._initial:
            self._make_model(lang, self._voices.get(lang))  # validate everything before starting
        self._channels: dict[str, _Channel] = {}
        self._link: _Link | None = None
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._started = False
        self._closed = False

    # --- public API --------------------------------------------------------------------

    @property
    def languages(self) -> list[str]:
        """Languages currently being published."""
        return list(self._channels)

    @property
    def speaker_identity(self) -> str | None:
        """Identity of the participant being interpreted now, if any."""
        return self._link.participant_identity if self._link else None

    def track_sid_of(self, language: str) -> str | None:
        """Sid of the published ``translation-<language>`` track, if published."""
        ch = self._channels.get(language)
        return ch.track_sid if ch else None

    async def start(self) -> None:
        """Publish one track per language and link the speaker if present (idempotent)."""
        if self._started:
            return
        self._started = True
        self._room.on("track_published", self._on_track_published)
        self._room.on("track_subscribed", self._on_track_subscribed)
        self._room.on("track_unsubscribed", self._on_track_gone)
        self._room.on("track_unpublished", self._on_track_unpublished)
        self._room.on("participant_disconnected", self._on_participant_disconnected)
        async with self._lock:
            for lang in self._initial:
                await self._add_channel(lang, self._voices.get(lang))
            self._find_speaker()

    async def add_language(self, language: str, *, voice_id: NotGivenOr[str] = NOT_GIVEN) -> None:
        """Start publishing a translation into ``language`` (no-op if already published).

        Raises:
            ConfigurationError: Unsupported language or voice.
        """
        voice = voice_id if is_given(voice_id) else self._voices.get(language)
        self._make_model(language, voice)  # validate before taking the lock
        if is_given(voice_id):
            self._voices[language] = voice_id
        async with self._lock:
            if language in self._channels or self._closed:
                return
            await self._add_channel(language, voice)

    async def remove_language(self, language: str) -> None:
        """Stop translating into ``language`` (its last sentence is still spoken) and unpublish it."""
        async with self._lock:
            ch = self._channels.pop(language, None)
            if ch is None:
                return
            await self._close_channel(ch)
        self.emit("language_removed", language)

    async def aclose(self) -> None:
        """Drain every translation, unpublish every track and stop following the room."""
        if self._closed:
            return
        self._closed = True
        if self._started:
            self._room.off("track_published", self._on_track_published)
            self._room.off("track_subscribed", self._on_track_subscribed)
            self._room.off("track_unsubscribed", self._on_track_gone)
            self._room.off("track_unpublished", self._on_track_unpublished)
            self._room.off("participant_disconnected", self._on_participant_disconnected)
        async with self._lock:
            await self._unlink()
            channels = list(self._channels.values())
            self._channels.clear()
            await asyncio.gather(*(self._close_channel(ch) for ch in channels))
        await aio.cancel_and_wait(*self._tasks)

    # --- room-facing operations (overridable) -------------------------------------------

    async def _publish_track(self, track: rtc.LocalAudioTrack, options: rtc.TrackPublishOptions) -> str:
        """Publish a translation track; return its sid."""
        publication = await self._room.local_participant.publish_track(track, options)
        return publication.sid

    async def _unpublish_track(self, sid: str) -> None:
        """Unpublish a translation track."""
        await self._room.local_participant.unpublish_track(sid)

    async def _send_caption(self, text: str, attributes: dict[str, str]) -> None:
        """Publish one caption as a text stream on ``lk.transcription``."""
        await self._room.local_participant.send_text(text, topic=TOPIC_TRANSCRIPTION, attributes=attributes)

    def _subscribe(self, publication: rtc.RemoteTrackPublication) -> None:
        """Subscribe to a speaker track published in a room joined without auto-subscribe."""
        publication.set_subscribed(True)

    async def _open_audio_stream(self, track: rtc.Track) -> AsyncIterator[rtc.AudioFrame]:
        """Read the speaker's track as 24 kHz mono frames."""
        stream = rtc.AudioStream.from_track(track=track, sample_rate=SPEAKER_READ_RATE, num_channels=1)
        try:
            async for ev in stream:
                yield ev.frame
        finally:
            await stream.aclose()

    # --- languages ---------------------------------------------------------------------

    def _make_model(self, language: str, voice: str | None) -> TranslationModel:
        if language not in LANGUAGES:
            raise ConfigurationError(
                f"language {language!r} is not supported; allowed: {', '.join(LANGUAGES)}"
            )
        return TranslationModel(
            target_language=language,
            voice_id=voice if voice is not None else NOT_GIVEN,
            **self._model_kwargs,
        )

    async def _add_channel(self, language: str, voice_id: str | None) -> None:
        model = self._make_model(language, voice_id)
        model.on("metrics_collected", self._forward_metrics)
        source = rtc.AudioSource(OUTPUT_SAMPLE_RATE, 1, queue_size_ms=200)
        track = rtc.LocalAudioTrack.create_audio_track(translation_track_name(language), source)
        ch = _Channel(language, model, source, track, _TrackAudioOutput(source))
        ch.captions = _CaptionOutput(self, ch) if self._captions else None
        ch.track_sid = await self._publish_track(track, self._publish_options)
        self._channels[language] = ch
        logger.info("translation track published", extra={"language": language})
        self.emit("language_added", language)
        if self._link is not None:
            await self._start_session(ch)

    async def _close_channel(self, ch: _Channel) -> None:
        await self._stop_session(ch)
        if ch.track_sid is not None:
            try:
                await self._unpublish_track(ch.track_sid)
            except Exception:  # noqa: BLE001 - the room may already be gone
                logger.warning("unpublishing a translation track failed", exc_info=True)
        await ch.output.aclose()
        if ch.captions is not None:
            await ch.captions.aclose()
        await ch.source.aclose()
        await aio.cancel_and_wait(*ch.tasks)
        logger.info("translation track unpublished", extra={"language": ch.language})

    # --- sessions ------------------------------------------------------------------------

    async def _start_session(self, ch: _Channel) -> None:
        if ch.session is not None:
            return
        session: TranslationSession[Any] = TranslationSession(model=ch.model)
        ch.input = _QueueAudioInput()
        session.input.audio = ch.input
        session.output.audio = ch.output
        session.output.transcription = ch.captions
        session.on("error", lambda ev: self._on_session_error(ch, ev))
        session.on("close", lambda ev: self._on_session_close(ch, session, ev))
        ch.session = session
        await session.start()

    async def _stop_session(self, ch: _Channel) -> None:
        session, ch.session = ch.session, None
        if ch.input is not None:
            ch.input.close()
            ch.input = None
        if session is not None:
            await drain_and_close(session)

    def _on_session_error(self, ch: _Channel, ev: ErrorEvent) -> None:
        error = getattr(ev.error, "error", None)
        recoverable = bool(getattr(ev.error, "recoverable", False))
        exc = error if isinstance(error, Exception) else RuntimeError(str(ev.error))
        self.emit("error", InterpreterError(ch.language, exc, recoverable))

    def _on_session_close(self, ch: _Channel, session: TranslationSession[Any], ev: CloseEvent) -> None:
        if ev.reason == CloseReason.ERROR and ch.session is session:
            # A final failure (the core already retried): this language stays silent until
            # the speaker is linked again or the language is re-added.
            logger.error("translation stopped after an error", extra={"language": ch.language})
            ch.session = None
            if ch.input is not None:
                ch.input.close()
                ch.input = None

    def _forward_metrics(self, metrics: TranslationMetrics) -> None:
        self.emit("metrics_collected", metrics)

    # --- speaker -----------------------------------------------------------------------

    def _find_speaker(self) -> None:
        """Link the first eligible track already in the room (subscribing if needed)."""
        if self._link is not None:
            return
        for participant in self._room.remote_participants.values():
            if not is_speaker_candidate(participant, self._speaker):
                continue
            for pub in participant.track_publications.values():
                if not is_speaker_track(pub, self._track_sid):
                    continue
                if pub.track is not None and pub.subscribed:
                    self._spawn(self._link_track(pub.track, pub, participant))
                    return
                if not pub.subscribed:
                    self._subscribe(pub)

    def _on_track_published(
        self, pub: rtc.RemoteTrackPublication, participant: rtc.RemoteParticipant
    ) -> None:
        if (
            self._link is None
            and not pub.subscribed
            and is_speaker_candidate(participant, self._speaker)
            and is_speaker_track(pub, self._track_sid)
        ):
            self._subscribe(pub)

    def _on_track_subscribed(
        self, track: rtc.Track, pub: rtc.RemoteTrackPublication, participant: rtc.RemoteParticipant
    ) -> None:
        if is_speaker_candidate(participant, self._speaker) and is_speaker_track(pub, self._track_sid):
            self._spawn(self._link_track(track, pub, participant))

    def _on_track_gone(
        self, track: rtc.Track, pub: rtc.RemoteTrackPublication, participant: rtc.RemoteParticipant
    ) -> None:
        self._on_track_unpublished(pub, participant)

    def _on_track_unpublished(
        self, pub: rtc.RemoteTrackPublication, participant: rtc.RemoteParticipant
    ) -> None:
        if self._link is not None and self._link.track_sid == pub.sid:
            self._spawn(self._unlink_and_search())

    def _on_participant_disconnected(self, participant: rtc.RemoteParticipant) -> None:
        if self._link is not None and self._link.participant_identity == participant.identity:
            self._spawn(self._unlink_and_search())

    async def _link_track(
        self, track: rtc.Track, pub: rtc.TrackPublication, participant: rtc.RemoteParticipant
    ) -> None:
        async with self._lock:
            if self._link is not None or self._closed:
                return
            reader = asyncio.create_task(self._read_speaker(track), name="gradium-interpreter-reader")
            self._link = _Link(participant.identity, pub.sid, reader)
            logger.info("speaker linked", extra={"lk.pii.participant_identity": participant.identity})
            for ch in list(self._channels.values()):
                await self._start_session(ch)
        self.emit("speaker_linked", SpeakerLinked(participant.identity, pub.sid))

    async def _unlink(self) -> None:
        link, self._link = self._link, None
        if link is None:
            return
        await aio.cancel_and_wait(link.reader)
        await asyncio.gather(*(self._stop_session(ch) for ch in list(self._channels.values())))
        logger.info("speaker unlinked", extra={"lk.pii.participant_identity": link.participant_identity})
        self.emit("speaker_unlinked", SpeakerUnlinked(link.participant_identity, link.track_sid))

    async def _unlink_and_search(self) -> None:
        async with self._lock:
            await self._unlink()
            if not self._closed:
                self._find_speaker()

    async def _read_speaker(self, track: rtc.Track) -> None:
        try:
            async for frame in self._open_audio_stream(track):
                for ch in list(self._channels.values()):
                    if ch.input is not None:
                        ch.input.push(frame)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - a broken track ends the link, not the interpreter
            logger.warning("reading the speaker's track failed", exc_info=True)

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
