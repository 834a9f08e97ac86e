"""The inbound and outbound roles of GradiumS2SService, in real pipelines against the local server."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
import pytest

pytest.importorskip("pipecat")

from pipecat.frames.frames import (
    InputAudioRawFrame,
    InterruptionFrame,
    TranscriptionFrame,
    TranslationFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
)
from pipecat.pipeline.worker import PipelineParams
from pipecat.tests.utils import run_test
from pipecat.transcriptions.language import Language

from gradium_plugins.local import LocalServer
from gradium_plugins.local.echo import EchoEngine
from gradium_plugins.pipecat import GradiumS2SService
from tests.conftest import make_speech, parse_echo, tone
from tests.pipecat.pipecat_harness import FAST_SESSION, audio_frames, brackets, of_type, running

PARAMS = PipelineParams(audio_in_sample_rate=16000, audio_out_sample_rate=24000)


def service(server: LocalServer, language: str, **kwargs: Any) -> GradiumS2SService:
    options = {**FAST_SESSION, **kwargs.pop("session_options", {})}
    return GradiumS2SService(
        url=server.url,
        settings=GradiumS2SService.Settings(target_language=language),
        session_options=options,
        **kwargs,
    )


def agent_speech(freq: int, seconds: float, context_id: str, rate: int = 24000) -> list[Any]:
    """What a Pipecat TTS service pushes for one sentence: started, 40 ms audio chunks, stopped."""
    samples = tone(freq, seconds, rate)
    step = rate // 25
    chunks = [
        TTSAudioRawFrame(samples[i : i + step].tobytes(), rate, 1, context_id=context_id)
        for i in range(0, samples.size, step)
    ]
    return [TTSStartedFrame(context_id=context_id), *chunks, TTSStoppedFrame(context_id=context_id)]


# --- inbound: caller speech -> TranscriptionFrame for the agent -----------------------------------


async def test_inbound_role_emits_finalized_transcriptions(echo_server: LocalServer) -> None:
    freqs = [320, 470, 620]
    speech = make_speech(freqs, durations=[0.6, 0.8, 0.5], rate=16000)
    frames = audio_frames(speech.samples, 16000, user_id="caller")
    svc = service(echo_server, "en", role="inbound")
    down, up = await run_test(svc, frames_to_send=frames, pipeline_params=PARAMS, start_timeout=10.0)

    assert up == []
    transcripts = of_type(down, TranscriptionFrame)
    assert [parse_echo(t.text)[3] for t in transcripts] == freqs
    assert all(t.finalized and t.language == Language.EN and t.user_id == "caller" for t in transcripts)
    # No audio by default (audio_out=False), no interpreter frames; the caller's audio goes on
    # downstream for the VAD / turn detection / recording that follow.
    for kind in (TTSStartedFrame, TTSAudioRawFrame, TTSStoppedFrame, TranslationFrame, TTSTextFrame):
        assert of_type(down, kind) == []
    assert [f.id for f in of_type(down, InputAudioRawFrame)] == [f.id for f in frames]


async def test_inbound_role_with_audio_and_interruptions(echo_server: LocalServer) -> None:
    # An interruption (the user aggregator broadcasts one when the caller speaks over the agent)
    # must not cut the caller's own translation.
    freqs = [350, 500]
    speech = make_speech(freqs, durations=0.8, rate=16000)
    svc = service(echo_server, "en", role="inbound", audio_out=True)
    async with running(svc, params=PARAMS) as h:
        frames = audio_frames(speech.samples, 16000)
        await h.feed(frames[:30])
        await h.send(InterruptionFrame())
        await h.feed(frames[30:])
        await h.end()
    assert h.errors == []
    transcripts = of_type(h.down, TranscriptionFrame)
    assert [parse_echo(t.text)[3] for t in transcripts] == freqs
    spans = [s for s in brackets(h.down) if s.audio]
    assert len(spans) == 2 and all(s.audio_s == pytest.approx(0.8, abs=0.1) for s in spans)
    assert all(f.sample_rate == 24000 for s in spans for f in s.audio)


# --- outbound: the agent's TTS speech -> translated speech -----------------------------------


async def test_outbound_role_replaces_agent_speech_paced_at_real_time(echo_server: LocalServer) -> None:
    sentences = [(360, 1.0, "tts-1"), (540, 0.8, "tts-2")]
    frames = [f for freq, secs, ctx in sentences for f in agent_speech(freq, secs, ctx)]
    svc = service(echo_server, "es", role="outbound")
    async with running(svc, params=PARAMS) as h:
        t0 = time.monotonic()
        await h.send(*frames)  # a TTS service produces speech much faster than real time
        await h.wait_for(lambda: h.count(TTSStoppedFrame) >= 2)
        elapsed = time.monotonic() - t0
        await h.end()
    assert h.errors == []
    sent_ids = {f.id for f in frames}
    assert not [f for f in h.down if f.id in sent_ids]  # the agent's speech never reaches the caller
    spans = brackets(h.down)
    assert [parse_echo(s.texts[0])[3] for s in spans] == [360, 540]
    assert [parse_echo(s.texts[0])[0] for s in spans] == ["es", "es"]
    for span, (_, secs, _) in zip(spans, sentences, strict=True):
        assert span.audio_s == pytest.approx(secs, abs=0.1)
        assert all(f.sample_rate == 24000 for f in span.audio)  # the pipeline's output rate
        assert span.context_id.startswith("gradium-s2s-")
    assert all(f.language == Language.ES for f in of_type(h.down, TranslationFrame))
    # Fed at real time: the second translation cannot be back before its speech was "spoken".
    assert elapsed > 0.8 * sum(secs for _, secs, _ in sentences)
    # The wire formats follow the pipeline: 24 kHz TTS in, 24 kHz translated speech out.
    setup = echo_server.connections[0].setups[0]
    assert (setup["input_format"], setup["output_format"]) == ("pcm_24000", "pcm_24000")


async def test_outbound_interruption_drops_the_untranslated_rest(make_server: Any) -> None:
    server = await make_server(output_realtime=True)
    svc = service(server, "es", role="outbound")
    long_sentence = agent_speech(330, 4.0, "tts-long")
    async with running(svc, params=PARAMS) as h:
        await h.send(*long_sentence)
        await asyncio.sleep(1.0)  # about 1 s of the 4 s was fed to the session
        await h.send(InterruptionFrame())
        await asyncio.sleep(0.5)
        await h.send(*agent_speech(610, 0.6, "tts-next"))
        await h.wait_for(lambda: any(parse_echo(t.text)[3] == 610 for t in of_type(h.down, TranslationFrame)))
        await h.wait_for(lambda: h.count(TTSStoppedFrame) == h.count(TTSStartedFrame))
        await h.end()
    assert h.errors == []
    # About 1 s of the 4 s sentence reached the service, whose session was then replaced: its
    # remainder and its translation are gone; the next sentence went to the new session.
    first, second = server.connections
    assert first.input_s < 2.5 and first.ended == "client_closed"
    assert [parse_echo(t)[3] for t in second.utterances] == [610]
    spans = brackets(h.down)
    heard = [parse_echo(t)[3] for s in spans for t in s.texts]
    assert heard[-1] == 610
    assert 330 not in heard  # what was said before the interruption is not played afterwards
    assert not any(isinstance(f, InterruptionFrame) for f in h.up)


async def test_outbound_passes_other_frames_and_other_translations(echo_server: LocalServer) -> None:
    # Caller audio and the frames of another Gradium service pass through the outbound service.
    svc = service(echo_server, "es", role="outbound")
    caller = audio_frames(np.zeros(3200, np.int16), 16000)
    foreign = [
        TTSStartedFrame(context_id="gradium-s2s-abc-0"),
        TTSStoppedFrame(context_id="gradium-s2s-abc-0"),
    ]
    async with running(svc, params=PARAMS) as h:
        await h.feed(caller)
        await h.send(*foreign)
        await h.wait_for(lambda: all(f in h.down for f in foreign))
        await h.end()
    assert [f.id for f in of_type(h.down, InputAudioRawFrame)] == [f.id for f in caller]
    assert of_type(h.down, TranslationFrame) == []
    # Only end_input()'s trailing silence reached the service, not the caller's audio.
    assert echo_server.connections[0].input_s <= FAST_SESSION["trailing_silence_s"] + 0.1


async def test_translation_is_delivered_when_the_server_beats_the_pause_detector(make_server: Any) -> None:
    # A server that hears pauses sooner (0.1 s) than the client's detector (0.3 s) answers
    # before the client knows the speech ended; the core then holds back completing that
    # translation. The agent must hear the caller anyway, without waiting for the next output.
    server = await make_server(engine=EchoEngine(min_pause_s=0.1))
    speech = make_speech([450], durations=0.8, rate=16000, tail_s=1.5)
    svc = service(server, "en", role="inbound")
    async with running(svc, params=PARAMS) as h:
        await h.feed(audio_frames(speech.samples, 16000), realtime=1.0)
        await h.wait_for(lambda: h.count(TranscriptionFrame) == 1, timeout_s=10.0)
        await h.end()
    assert [parse_echo(t.text)[3] for t in of_type(h.down, TranscriptionFrame)] == [450]
