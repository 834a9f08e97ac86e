"""RoomInterpreter without a LiveKit server.

The room is a real, unconnected ``rtc.Room``; participants, publications and tracks are real rtc
objects built from their protocol messages (what the SDK does when the server announces them),
and room events are emitted as the SDK would. Translation runs for real against the local echo
server, and translated audio is played into real ``rtc.AudioSource``s. Only the four calls that
need a server connection (publish, unpublish, send a caption, read a remote track) are replaced,
and they record what they were asked to do.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

pytest.importorskip("livekit.agents")

from livekit.rtc._proto import handle_pb2, participant_pb2, track_pb2

from gradium_plugins import ConfigurationError
from gradium_plugins.livekit import RoomInterpreter, is_translation_track_name, translation_track_name
from gradium_plugins.livekit.interpreter import Caption, is_speaker_candidate, is_speaker_track
from livekit import rtc
from tests.livekit.lk_helpers import frames_of, parse_echo, speech

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


def audio_track(
    owner: rtc.RemoteParticipant, sid: str, name: str, source: int = rtc.TrackSource.SOURCE_MICROPHONE
) -> tuple[rtc.RemoteTrackPublication, rtc.RemoteAudioTrack]:
    pub = rtc.RemoteTrackPublication(
        track_pb2.OwnedTrackPublication(
            handle=_HANDLE,
            info=track_pb2.TrackPublicationInfo(
                sid=sid, name=name, kind=rtc.TrackKind.KIND_AUDIO, source=source
            ),
        )
    )
    track = rtc.RemoteAudioTrack(
        track_pb2.OwnedTrack(
            handle=_HANDLE, info=track_pb2.TrackInfo(sid=sid, name=name, kind=rtc.TrackKind.KIND_AUDIO)
        )
    )
    owner._track_publications[sid] = pub  # what the SDK does on track_published
    return pub, track


class OfflineInterpreter(RoomInterpreter):
    """Records what would be sent to the LiveKit server; reads remote tracks from memory."""

    def __init__(self, room: rtc.Room, **kwargs: Any) -> None:
        super().__init__(room, **kwargs)
        self.track_audio: dict[str, list[rtc.AudioFrame]] = {}
        self.published: dict[str, str] = {}
        self.unpublished: list[str] = []
        self.subscribed: list[str] = []
        self.opened: list[str] = []

    async def _publish_track(self, track: rtc.LocalAudioTrack, options: rtc.TrackPublishOptions) -> str:
        sid = f"TR_local_{len(self.published)}"
        self.published[sid] = track.name
        return sid

    async def _unpublish_track(self, sid: str) -> None:
        self.unpublished.append(self.published[sid])

    async def _send_caption(self, text: str, attributes: dict[str, str]) -> None:
        pass  # the "caption" event records it

    def _subscribe(self, publication: rtc.RemoteTrackPublication) -> None:
        self.subscribed.append(publication.name)

    async def _open_audio_stream(self, track: rtc.Track) -> AsyncIterator[rtc.AudioFrame]:
        self.opened.append(track.name)
        for frame in self.track_audio.get(track.sid, []):
            yield frame
        await asyncio.Event().wait()  # a live track stays open until unsubscribed


async def _until(cond: Callable[[], bool], event: asyncio.Event) -> None:
    async with asyncio.timeout(15):
        while not cond():
            event.clear()
            await event.wait()


async def test_room_interpreter_languages_speaker_and_feedback(echo_server: Any) -> None:
    room = rtc.Room()  # never connected
    interp = OfflineInterpreter(room, languages=["fr", "es"], url=echo_server.url)
    captions: list[Caption] = []
    changed = asyncio.Event()
    links: list[str] = []

    def on_caption(c: Caption) -> None:
        captions.append(c)
        changed.set()

    interp.on("caption", on_caption)
    interp.on("speaker_linked", lambda ev: (links.append("+" + ev.participant_identity), changed.set()))
    interp.on("speaker_unlinked", lambda ev: (links.append("-" + ev.participant_identity), changed.set()))
    await interp.start()
    assert sorted(interp.published.values()) == ["translation-es", "translation-fr"]
    sid_of = {name.removeprefix("translation-"): sid for sid, name in interp.published.items()}

    # Other interpreters' translated tracks are never translated (no feedback loop).
    bot = participant("interp-2", agent=True)
    carol = participant("carol")
    for who, sid, name in ((bot, "TR_bot", "translation-de"), (carol, "TR_carol", "translation-fr")):
        pub, track = audio_track(who, sid, name)
        room.emit("track_published", pub, who)
        room.emit("track_subscribed", track, pub, who)
    # The speaker: two utterances, the second ending with the track (only a drain keeps it).
    alice = participant("alice")
    pub, track = audio_track(alice, "TR_alice_1", "microphone")
    interp.track_audio["TR_alice_1"] = frames_of(speech([300, 450], rate=24000, tail_s=0.05), 24000)
    room.emit("track_published", pub, alice)
    room.emit("track_subscribed", track, pub, alice)
    await _until(lambda: len(captions) >= 2, changed)

    assert interp.subscribed == ["microphone"]
    assert interp.opened == ["microphone"]
    assert links == ["+alice"] and interp.speaker_identity == "alice"
    first = {c.language: c for c in captions}
    assert set(first) == {"fr", "es"}
    for lang, c in first.items():
        assert parse_echo(c.text)[0] == lang and parse_echo(c.text)[3] == 300
        assert c.attributes["language"] == lang
        assert c.attributes["lk.transcribed_track_id"] == sid_of[lang]
        assert c.attributes["lk.transcription_final"] == "true"

    # The speaker leaves: each language is drained, so the last sentence is still captioned.
    room.emit("participant_disconnected", alice)
    await _until(lambda: links == ["+alice", "-alice"] and len(captions) >= 4, changed)
    assert sorted((c.language, parse_echo(c.text)[3]) for c in captions) == [
        ("es", 300), ("es", 450), ("fr", 300), ("fr", 450)
    ]
    assert interp.speaker_identity is None

    # Languages change while nobody speaks.
    await interp.add_language("de")
    await interp.remove_language("es")
    assert interp.languages == ["fr", "de"]
    assert interp.unpublished == ["translation-es"]
    assert "translation-de" in interp.published.values()

    # The speaker comes back with a new track: translation resumes, into the new set of languages.
    alice2 = participant("alice")
    pub2, track2 = audio_track(alice2, "TR_alice_2", "microphone")
    interp.track_audio["TR_alice_2"] = frames_of(speech([700], rate=48000), 48000)
    room.emit("track_subscribed", track2, pub2, alice2)
    await _until(lambda: len(captions) >= 6, changed)
    assert links == ["+alice", "-alice", "+alice"]
    assert sorted((c.language, parse_echo(c.text)[3]) for c in captions[4:]) == [("de", 700), ("fr", 700)]

    await interp.aclose()
    assert sorted(interp.unpublished) == ["translation-de", "translation-es", "translation-fr"]
    assert links[-1] == "-alice"


async def test_explicit_speaker_and_track_selection() -> None:
    alice, bot = participant("alice"), participant("bot", agent=True)
    avatar = participant("avatar", attributes={"lk.publish_on_behalf": "bot"})
    mic, _ = audio_track(alice, "TR_1", "mic")
    screen, _ = audio_track(alice, "TR_2", "screen", source=rtc.TrackSource.SOURCE_SCREENSHARE_AUDIO)
    translated, _ = audio_track(alice, "TR_3", translation_track_name("fr"))

    assert is_speaker_candidate(alice, None) and not is_speaker_candidate(bot, None)
    assert not is_speaker_candidate(avatar, None)
    assert is_speaker_candidate(bot, "bot") and not is_speaker_candidate(alice, "bot")
    assert is_speaker_track(mic, None) and not is_speaker_track(screen, None)
    assert is_speaker_track(screen, "TR_2") and not is_speaker_track(mic, "TR_2")
    assert not is_speaker_track(translated, None) and not is_speaker_track(translated, "TR_3")
    assert translation_track_name("pt") == "translation-pt" and is_translation_track_name("translation-pt")


async def test_invalid_language_is_refused_before_publishing(echo_server: Any) -> None:
    room = rtc.Room()
    with pytest.raises(ConfigurationError):
        OfflineInterpreter(room, languages=["fr", "xx"], url=echo_server.url)
    interp = OfflineInterpreter(room, languages=["fr"], url=echo_server.url)
    await interp.start()
    with pytest.raises(ConfigurationError):
        await interp.add_language("klingon")
    with pytest.raises(ConfigurationError):
        await interp.add_language("de", voice_id="YTpq7expH9539ERJ")  # an English voice
    assert interp.languages == ["fr"]
    await interp.aclose()
