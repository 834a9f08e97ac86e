"""RoomInterpreter without a LiveKit server.

The room is a real, unconnected ``rtc.Room``; participants and publications are real rtc objects
built from their protocol messages, added to the room and announced with the events the SDK
emits. Each (speaker, language) runs a real LiveKit ``TranslationSession`` against the local
echo server, inside LiveKit's fake job context. Only the two room-facing seams are replaced:
starting a session on the room (its room IO needs a server, so memory IO carries the speaker's
audio instead) and setting the local participant's attributes.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest

pytest.importorskip("livekit.agents")

from livekit.agents.beta.translation import TranslationRoomOptions, TranslationSession
from livekit.agents.testing import fake_job_context
from livekit.rtc._proto import handle_pb2, participant_pb2, track_pb2

from gradium_plugins import ConfigurationError
from gradium_plugins.livekit import TRANSLATIONS_ATTRIBUTE, RoomInterpreter, translation_track_name
from gradium_plugins.livekit.interpreter import is_speaker_candidate, is_speaker_track
from livekit import rtc
from tests.livekit.lk_helpers import (
    MemoryAudioInput,
    MemoryAudioOutput,
    MemoryTextOutput,
    frames_of,
    parse_echo,
    speech,
)

_HANDLE = handle_pb2.FfiOwnedHandle(id=0)  # no native object behind it


def participant(
    identity: str, *, agent: bool = False, attributes: dict[str, str] | None = None
) -> rtc.RemoteParticipant:
    kinds = rtc.ParticipantKind
    kind = kinds.PARTICIPANT_KIND_AGENT if agent else kinds.PARTICIPANT_KIND_STANDARD
    info = participant_pb2.ParticipantInfo(
        identity=identity, sid=f"PA_{identity}", name=identity, kind=kind, attributes=attributes or {}
    )
    return rtc.RemoteParticipant(participant_pb2.OwnedParticipant(handle=_HANDLE, info=info))


def publish(
    owner: rtc.RemoteParticipant, sid: str, name: str, source: int = rtc.TrackSource.SOURCE_MICROPHONE
) -> rtc.RemoteTrackPublication:
    pub = rtc.RemoteTrackPublication(
        track_pb2.OwnedTrackPublication(
            handle=_HANDLE,
            info=track_pb2.TrackPublicationInfo(
                sid=sid, name=name, kind=rtc.TrackKind.KIND_AUDIO, source=source
            ),
        )
    )
    owner._track_publications[sid] = pub  # what the SDK does on track_published
    return pub


def join(room: rtc.Room, p: rtc.RemoteParticipant) -> None:
    room._remote_participants[p.identity] = p
    room.emit("participant_connected", p)


def leave(room: rtc.Room, p: rtc.RemoteParticipant) -> None:
    del room._remote_participants[p.identity]
    room.emit("participant_disconnected", p)


class OfflineInterpreter(RoomInterpreter):
    """Starts each session on memory IO fed with its speaker's audio; records attributes."""

    def __init__(self, room: rtc.Room, **kwargs: Any) -> None:
        super().__init__(room, **kwargs)
        self.audio: dict[str, list[rtc.AudioFrame]] = {}
        self.options: dict[tuple[str, str], TranslationRoomOptions] = {}
        self.captions: dict[tuple[str, str], MemoryTextOutput] = {}
        self.outputs: dict[tuple[str, str], MemoryAudioOutput] = {}
        self.attributes: list[dict[str, str]] = []
        self.changed = asyncio.Event()

    async def _start_session(self, session: TranslationSession[Any], options: TranslationRoomOptions) -> None:
        speaker = options.participant_identity
        assert isinstance(speaker, str)
        lang = session.model.target_language
        key = (speaker, lang)
        self.options[key] = options
        txt = self.captions.setdefault(key, MemoryTextOutput())
        out = self.outputs.setdefault(key, MemoryAudioOutput(sample_rate=48000))
        session.input.audio = MemoryAudioInput(self.audio.get(speaker, []), speed=4.0)
        session.output.audio, session.output.transcription = out, txt
        flush = txt.flush

        def flushed() -> None:
            flush()
            self.changed.set()

        txt.flush = flushed  # type: ignore[method-assign]
        await session.start()

    def _set_attributes(self, attributes: dict[str, str]) -> None:
        self.attributes.append(attributes)

    def heard(self, speaker: str, lang: str) -> list[int]:
        return [parse_echo(t)[3] for t in self.captions.get((speaker, lang), MemoryTextOutput()).segments]

    def track_map(self) -> dict[str, dict[str, str]]:
        return json.loads(self.attributes[-1][TRANSLATIONS_ATTRIBUTE])  # type: ignore[no-any-return]


async def _until(interp: OfflineInterpreter, cond: Callable[[], bool]) -> None:
    async with asyncio.timeout(20):
        while not cond():
            interp.changed.clear()
            await interp.changed.wait()


async def test_every_speaker_into_every_language_bounded(echo_server: Any) -> None:
    """One TranslationSession per (speaker, language) on LiveKit's room options; agents and
    translated tracks are never translated; the bound holds; a leaving speaker is drained (15.4)."""
    room = rtc.Room()  # never connected
    with fake_job_context(room=room) as job:
        interp = OfflineInterpreter(room, languages=["fr", "es-ES"], url=echo_server.url, max_speakers=2)
        added: list[str] = []
        removed: list[str] = []
        interp.on("speaker_added", added.append)
        interp.on("speaker_removed", removed.append)
        alice, bob, dave = participant("alice"), participant("bob"), participant("dave")
        bot = participant("interp-2", agent=True)
        echo = participant("relay")  # publishes only a translated track, under a microphone source
        interp.audio = {
            "alice": frames_of(speech([300, 450], rate=24000), 24000),
            "bob": frames_of(speech([600], rate=24000), 24000),
            "dave": frames_of(speech([900], rate=24000), 24000),
        }
        for p in (alice, bob, dave):
            publish(p, f"TR_{p.identity}", "microphone")
        publish(bot, "TR_bot", "microphone")
        publish(echo, "TR_relay", translation_track_name("fr"))
        await interp.start()
        assert interp.languages == ["fr", "es"]
        for p in (bot, echo, alice, bob, dave):
            join(room, p)
        await _until(
            interp, lambda: len(interp.heard("bob", "es")) == 1 and len(interp.heard("alice", "es")) == 2
        )

        assert interp.speakers == ["alice", "bob"] == added  # dave waits: max_speakers=2
        assert set(interp.options) == {(s, lang) for s in ("alice", "bob") for lang in ("fr", "es")}
        for (speaker, lang), opts in interp.options.items():
            assert opts.participant_identity == speaker and opts.close_on_disconnect is False
            out = opts.get_audio_output_options()
            assert out is not None and out.sample_rate == 48000
            assert out.track_name == f"translation-{lang}-{speaker}"
        for lang in ("fr", "es"):
            assert interp.heard("bob", lang) == [600]
        assert interp.track_map() == {
            lang: {s: f"translation-{lang}-{s}" for s in ("alice", "bob")} for lang in ("es", "fr")
        }
        callbacks = len(job._shutdown_callbacks)

        # alice leaves: her sessions are drained and stopped, and dave takes the free slot.
        leave(room, alice)
        await _until(interp, lambda: "dave" in interp.speakers and len(interp.heard("dave", "fr")) == 1)
        assert removed == ["alice"] and interp.speakers == ["bob", "dave"]
        assert interp.session("alice", "fr") is None and interp.session("dave", "fr") is not None
        assert "alice" not in interp.track_map()["fr"]

        # alice comes back (when a slot frees): the same sessions restart, no new job callbacks.
        first = interp._sessions[("alice", "fr")]
        join(room, alice)
        leave(room, bob)
        await _until(interp, lambda: "alice" in interp.speakers and len(interp.heard("alice", "fr")) == 4)
        assert interp._sessions[("alice", "fr")] is first
        assert len(job._shutdown_callbacks) == callbacks + 2  # dave's two sessions, nothing else

        await interp.remove_language("es")
        assert interp.languages == ["fr"] and set(interp.track_map()) == {"fr"}
        await interp.aclose()
    assert all(not s._started for s in interp._sessions.values())


def test_speaker_selection_rules() -> None:
    alice, bot = participant("alice"), participant("bot", agent=True)
    avatar = participant("avatar", attributes={"lk.publish_on_behalf": "bot"})
    for p in (alice, bot, avatar):
        publish(p, f"TR_{p.identity}", "mic")
    screen = publish(participant("x"), "TR_2", "screen", source=rtc.TrackSource.SOURCE_SCREENSHARE_AUDIO)
    translated = publish(participant("y"), "TR_3", translation_track_name("fr", "alice"))
    assert is_speaker_candidate(alice) and not is_speaker_candidate(bot) and not is_speaker_candidate(avatar)
    assert is_speaker_candidate(bot, frozenset({"bot"})) and not is_speaker_candidate(
        alice, frozenset({"bot"})
    )
    assert not is_speaker_track(screen) and not is_speaker_track(translated)
    assert translation_track_name("pt") == "translation-pt"


async def test_invalid_language_is_refused_before_starting(echo_server: Any) -> None:
    room = rtc.Room()
    with pytest.raises(ConfigurationError):
        OfflineInterpreter(room, languages=["fr", "xx"], url=echo_server.url)
    with pytest.raises(ConfigurationError):
        OfflineInterpreter(room, languages=["fr"], url=echo_server.url, max_speakers=0)
    interp = OfflineInterpreter(room, languages=["fr"], url=echo_server.url)
    await interp.start()
    with pytest.raises(ConfigurationError):
        await interp.add_language("klingon")
    with pytest.raises(ConfigurationError):
        await interp.add_language("de", voice_id="YTpq7expH9539ERJ")  # an English voice
    assert interp.languages == ["fr"]
    await interp.aclose()


async def test_room_reconnect_picks_up_speakers_missed_meanwhile(echo_server: Any) -> None:
    """After a room reconnect, speakers who joined while it was down are translated (15.4)."""
    room = rtc.Room()
    interp = OfflineInterpreter(room, languages=["fr"], url=echo_server.url)
    interp.audio["erin"] = frames_of(speech([500], rate=24000), 24000)
    await interp.start()
    erin = participant("erin")
    publish(erin, "TR_erin", "microphone")
    room._remote_participants["erin"] = erin  # joined while the signal connection was down
    assert interp.speakers == []
    room.emit("reconnected")
    await _until(interp, lambda: interp.heard("erin", "fr") == [500])
    assert interp.speakers == ["erin"]
    await interp.aclose()
