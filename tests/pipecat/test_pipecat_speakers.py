"""One session per participant: transports that deliver one audio stream per ``user_id``."""

from __future__ import annotations

import asyncio
from itertools import zip_longest
from typing import Any

import numpy as np
import pytest

pytest.importorskip("pipecat")

from pipecat.frames.frames import InputAudioRawFrame, TranslationFrame, UserAudioRawFrame

from gradium_plugins.local import LocalServer
from gradium_plugins.pipecat import GradiumS2SService
from tests.conftest import make_speech, parse_echo
from tests.pipecat.pipecat_harness import FAST_SESSION, audio_frames, brackets, of_type, running


def service(server: LocalServer, **kwargs: Any) -> GradiumS2SService:
    return GradiumS2SService(
        url=server.url,
        settings=GradiumS2SService.Settings(target_language="fr"),
        session_options=FAST_SESSION,
        **kwargs,
    )


def conversation(rate: int = 16000) -> tuple[list[UserAudioRawFrame], dict[str, Any]]:
    """Two participants talking at once, their 20 ms frames interleaved as a transport delivers them."""
    speech = {
        "alice": make_speech([300, 420], durations=0.7, gap_s=0.6, rate=rate),
        "bob": make_speech([700, 820, 940], durations=0.5, gap_s=0.4, rate=rate),
    }
    streams = [audio_frames(s.samples, rate, user_id=uid) for uid, s in speech.items()]
    frames = [f for pair in zip_longest(*streams) for f in pair if f is not None]
    return frames, speech


def by_user(frames: list[Any]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for f in of_type(frames, TranslationFrame):
        out.setdefault(f.user_id, []).append(parse_echo(f.text)[3])
    return out


async def test_one_session_per_participant(echo_server: LocalServer) -> None:
    frames, speech = conversation()
    svc = service(echo_server)
    async with running(svc) as h:
        # Two streams of 20 ms frames in 20 ms: each participant at real time (x2 here).
        await h.feed(frames, realtime=4.0)
        assert set(svc.sessions) == {"alice", "bob"}
        await h.end()
    assert h.errors == []
    assert by_user(h.down) == {"alice": speech["alice"].freqs, "bob": speech["bob"].freqs}
    brackets(h.down)  # the participants' translations take turns: no nested brackets
    assert len(echo_server.connections) == 2
    # Each session gets its participant's audio at its own pace, not N x real time mixed.
    fed = sorted(r.input_s for r in echo_server.connections)
    expected = sorted(s.seconds + FAST_SESSION["trailing_silence_s"] for s in speech.values())
    assert fed == pytest.approx(expected, abs=0.15)


async def test_only_the_configured_participant_is_translated(echo_server: LocalServer) -> None:
    frames, speech = conversation()
    svc = service(echo_server, user_id="bob")
    async with running(svc) as h:
        await h.feed(frames, realtime=4.0)
        await h.end()
    assert by_user(h.down) == {"bob": speech["bob"].freqs}
    assert len(echo_server.connections) == 1
    # Everyone's audio still flows on (pass-through).
    assert len(of_type(h.down, InputAudioRawFrame)) == len(frames)


async def test_speaker_sessions_are_bounded_and_closed_when_idle(echo_server: LocalServer) -> None:
    frames, speech = conversation()
    svc = service(echo_server, max_speakers=1, speaker_idle_s=0.4)
    async with running(svc) as h:
        await h.feed(frames, realtime=4.0)
        # Both left: the session of the one translated participant ends by itself.
        await h.wait_for(lambda: not svc.sessions)
        assert echo_server.connections[0].ended == "eos"
        # A participant who comes back gets a new session.
        again = make_speech([560], rate=16000)
        await h.feed(audio_frames(again.samples, 16000, user_id="bob"))
        await h.wait_for(lambda: "bob" in svc.sessions)
        await h.end()
    got = by_user(h.down)
    assert got == {"alice": speech["alice"].freqs, "bob": [560]}  # bob was refused while alice spoke
    assert h.errors == []


async def test_plain_input_frames_share_one_session(echo_server: LocalServer) -> None:
    speech = make_speech([380, 510], rate=16000)
    svc = service(echo_server)
    async with running(svc) as h:
        await h.feed(audio_frames(speech.samples, 16000))
        await asyncio.sleep(0)
        await h.end()
    assert len(echo_server.connections) == 1
    assert [parse_echo(f.text)[3] for f in of_type(h.down, TranslationFrame)] == speech.freqs
    assert np.all([f.user_id == "" for f in of_type(h.down, TranslationFrame)])
