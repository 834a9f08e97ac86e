"""Failures seen from a Pipecat pipeline: a late server, refused settings, error categories."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

pytest.importorskip("pipecat")

from pipecat.frames.frames import TranslationFrame
from pipecat.utils.errors import ErrorCategory

from gradium_plugins.errors import (
    AuthenticationError,
    ConfigurationError,
    ConnectionLostError,
    ServerError,
)
from gradium_plugins.local import FaultPlan
from gradium_plugins.pipecat import GradiumS2SService, GradiumS2SSettings, GradiumS2SUpdateSettingsFrame
from tests.conftest import make_speech, parse_echo
from tests.pipecat.pipecat_harness import FAST_SESSION, audio_frames, brackets, of_type, running


def freqs_of(frames: list[Any]) -> list[int]:
    return [parse_echo(f.text)[3] for f in of_type(frames, TranslationFrame)]


async def test_input_before_the_server_is_up_is_translated(make_server: Any, unused_tcp_port: int) -> None:
    # The server comes up 0.5 s after the pipeline started: the session connects in the
    # background and every utterance spoken meanwhile is buffered, then translated.
    url = f"ws://127.0.0.1:{unused_tcp_port}/api/speech/s2s"
    svc = GradiumS2SService(
        url=url,
        settings=GradiumS2SSettings(target_language="de"),
        session_options={**FAST_SESSION, "connect_timeout": 2.0},
    )
    speech = make_speech([300, 450, 600], durations=1.5, gap_s=0.5, rate=16000)

    async def server_later() -> None:
        await asyncio.sleep(0.5)
        await make_server(port=unused_tcp_port)

    async with running(svc) as h:
        late = asyncio.ensure_future(server_later())
        await h.feed(audio_frames(speech.samples, 16000), realtime=3.0)
        await late
        await h.end()
    assert freqs_of(h.down) == speech.freqs
    assert [parse_echo(f.text)[0] for f in of_type(h.down, TranslationFrame)] == ["de"] * 3
    assert svc.is_usable
    assert all(not e.category.is_permanent for e in h.errors)
    assert len(h.errors) <= 1  # reported once at most, not once per attempt


async def test_rate_limited_service_stays_usable(make_server: Any) -> None:
    # The first setup is refused for a rate limit: not permanent, so the service keeps going.
    server = await make_server(
        faults=lambda i: FaultPlan(reject_setup="rate limit exceeded, slow down") if i == 0 else None
    )
    svc = GradiumS2SService(
        url=server.url,
        settings=GradiumS2SSettings(target_language="fr"),
        session_options={**FAST_SESSION, "reconnect": False},
    )
    speech = make_speech([420, 560], rate=16000)
    async with running(svc) as h:
        await h.wait_for(lambda: bool(h.errors))
        await h.feed(audio_frames(speech.samples, 16000))
        await h.end()
    assert [e.category for e in h.errors] == [ErrorCategory.RATE_LIMIT]
    assert svc.is_usable
    assert freqs_of(h.down) == speech.freqs  # a new session took over


def test_error_classification_follows_pipecat() -> None:
    svc = GradiumS2SService(url="ws://127.0.0.1:9/s2s", settings=GradiumS2SSettings(target_language="fr"))
    cases = [
        (ServerError("Too many requests", code=429), ErrorCategory.RATE_LIMIT),
        (ServerError("payment required", code=402), ErrorCategory.QUOTA),
        (ServerError("monthly quota exhausted", code=1008), ErrorCategory.QUOTA),
        (ServerError("rate limit exceeded", code=1008), ErrorCategory.RATE_LIMIT),
        (ServerError("voice 'x' not found", code=1008), ErrorCategory.INVALID_REQUEST),
        (ServerError("internal error", code=1011, retryable=True), ErrorCategory.SERVER),
        (ServerError("bad gateway", code=502), ErrorCategory.SERVER),
        (AuthenticationError("invalid API key", code=1008), ErrorCategory.AUTHENTICATION),
        (AuthenticationError("forbidden", code=403), ErrorCategory.AUTHORIZATION),
        (ConfigurationError("target_language='xx' is not supported"), ErrorCategory.INVALID_REQUEST),
        (ConnectionLostError("connection dropped"), ErrorCategory.CONNECTIVITY),
    ]
    assert [svc._classify_error(exc) for exc, _ in cases] == [category for _, category in cases]
    assert svc._classify_error(ValueError("not ours")) is None  # Pipecat's own classification


async def test_refused_settings_change_keeps_the_previous_settings(make_server: Any) -> None:
    # The server refuses the new voice (the update's new session): the old session carries on.
    server = await make_server(
        faults=lambda i: FaultPlan(reject_setup="voice 'bad-voice' not found") if i == 1 else None
    )
    svc = GradiumS2SService(
        url=server.url, settings=GradiumS2SSettings(target_language="fr"), session_options=FAST_SESSION
    )
    voice = svc.settings.voice_id
    speech = make_speech([300, 450, 600], durations=0.6, gap_s=0.6, rate=16000)
    frames = audio_frames(speech.samples, 16000)
    silence = audio_frames(np.zeros(1600, np.int16), 16000)
    async with running(svc) as h:
        await h.feed(frames[: len(frames) // 3], realtime=4.0)
        await h.send(GradiumS2SUpdateSettingsFrame(delta=GradiumS2SSettings(voice_id="bad-voice")))
        async with asyncio.timeout(10):
            while not h.errors:
                await h.feed(silence, realtime=2.0)
        await h.feed(frames[len(frames) // 3 :], realtime=4.0)
        await h.end()
    assert len(h.errors) == 1
    assert not h.errors[0].category.is_permanent and "bad-voice" in h.errors[0].error
    assert svc.is_usable
    assert svc.settings.voice_id == voice and svc.config.voice_id == voice
    assert freqs_of(h.down) == speech.freqs  # no utterance lost
    assert len(brackets(h.down)) == 3
