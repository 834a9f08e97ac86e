"""GradiumS2SService in ordinary Pipecat pipelines: rates, pass-through, input hand-off, RTVI, usage."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
import pytest

pytest.importorskip("pipecat")

from pipecat.frames.frames import (
    Frame,
    InputAudioRawFrame,
    InterruptionFrame,
    MetricsFrame,
    OutputAudioRawFrame,
    StartFrame,
    TranscriptionFrame,
    TranslationFrame,
    TTSAudioRawFrame,
)
from pipecat.metrics.metrics import STTUsageMetricsData
from pipecat.pipeline.parallel_pipeline import ParallelPipeline
from pipecat.pipeline.worker import PipelineParams
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.tests.utils import run_test
from pipecat.transcriptions.language import Language
from pipecat.transports.base_output import BaseOutputTransport
from pipecat.transports.base_transport import TransportParams
from pipecat.utils.time import time_now_iso8601

from gradium_plugins.audio import PauseDetector
from gradium_plugins.local import FaultPlan, LocalServer
from gradium_plugins.local.echo import dominant_frequency
from gradium_plugins.pipecat import GradiumS2SService
from tests.conftest import make_speech, parse_echo
from tests.pipecat.pipecat_harness import FAST_SESSION, audio_frames, brackets, of_type, running


def service(server: LocalServer, language: str = "fr", **kwargs: Any) -> GradiumS2SService:
    options = {**FAST_SESSION, **kwargs.pop("session_options", {})}
    return GradiumS2SService(
        url=server.url,
        settings=GradiumS2SService.Settings(target_language=language),
        session_options=options,
        **kwargs,
    )


# --- sample rates and pass-through --------------------------------------------------------


@pytest.mark.parametrize(("rate_in", "rate_out"), [(16000, 24000), (8000, 8000), (48000, 44100)])
async def test_wire_formats_follow_the_pipeline_rates(
    echo_server: LocalServer, rate_in: int, rate_out: int
) -> None:
    speech = make_speech([400, 520], rate=rate_in)
    svc = service(echo_server)
    params = PipelineParams(audio_in_sample_rate=rate_in, audio_out_sample_rate=rate_out)
    async with running(svc, params=params) as h:
        await h.feed(audio_frames(speech.samples, rate_in))
        await h.end()
    setup = echo_server.connections[0].setups[0]
    assert (setup["input_format"], setup["output_format"]) == (f"pcm_{rate_in}", f"pcm_{rate_out}")
    audio = of_type(h.down, TTSAudioRawFrame)
    assert audio and all(f.sample_rate == rate_out for f in audio)  # nothing downstream resamples
    assert [parse_echo(f.text)[3] for f in of_type(h.down, TranslationFrame)] == speech.freqs


async def test_unsupported_rate_and_explicit_format_keep_the_default(echo_server: LocalServer) -> None:
    svc = service(echo_server, session_options={"output_format": "pcm"})  # asked for explicitly
    params = PipelineParams(audio_in_sample_rate=32000, audio_out_sample_rate=24000)  # no pcm_32000
    async with running(svc, params=params) as h:
        await h.feed(audio_frames(make_speech([450], rate=32000).samples, 32000))
        await h.end()
    setup = echo_server.connections[0].setups[0]
    assert (setup["input_format"], setup["output_format"]) == ("pcm", "pcm")
    assert {f.sample_rate for f in of_type(h.down, TTSAudioRawFrame)} == {48000}


async def test_audio_passthrough_is_on_by_default(echo_server: LocalServer) -> None:
    # An AudioBufferProcessor after the service records the speaker (Pipecat's STT default).
    frames = audio_frames(make_speech([400], rate=16000).samples, 16000)
    down, _ = await run_test(service(echo_server), frames_to_send=frames, start_timeout=10.0)
    assert [f.id for f in of_type(down, InputAudioRawFrame)] == [f.id for f in frames]
    down, _ = await run_test(
        service(echo_server, audio_passthrough=False), frames_to_send=frames, start_timeout=10.0
    )
    assert of_type(down, InputAudioRawFrame) == []


# --- input never blocks the pipeline ------------------------------------------------------


async def test_input_audio_does_not_delay_system_frames(make_server: Any) -> None:
    # The server stops reading: the socket's buffers fill and sending waits. Done on Pipecat's
    # input task, that wait would hold back the InterruptionFrame queued behind the audio.
    stall_s = 3.0
    server = await make_server(faults=FaultPlan(stall_after_messages=1, stall_for_s=stall_s))
    svc = service(server, session_options={"max_pending_input_s": 1.0})
    noise = np.random.default_rng(1).integers(-8000, 8000, 16000 * 300).astype(np.int16)  # 300 s
    async with running(svc) as h:
        await h.wait_for(lambda: server.connections and server.connections[0].messages_sent >= 1)
        await h.feed(audio_frames(noise, 16000, frame_ms=100))
        t0 = time.monotonic()
        interruption = InterruptionFrame()
        await h.send(interruption)
        await h.wait_for(lambda: interruption in h.down)
        latency = time.monotonic() - t0
        await h.cancel()
    assert latency < 0.25 * stall_s


# --- RTVI and usage -----------------------------------------------------------------------


class RecordingOutput(BaseOutputTransport):
    """An output transport that plays at 8 x real time and records what it sends to the client."""

    def __init__(self) -> None:
        super().__init__(TransportParams(audio_out_enabled=True, audio_out_sample_rate=48000))
        self.messages: list[Any] = []

    async def start(self, frame: StartFrame) -> None:
        await super().start(frame)
        await self.set_transport_ready(frame)

    async def send_message(self, frame: Any) -> None:
        self.messages.append(frame.message)

    async def write_audio_frame(self, frame: OutputAudioRawFrame) -> bool:
        await asyncio.sleep(frame.num_frames / frame.sample_rate / 8)
        return True


async def test_rtvi_clients_get_the_spoken_translation(echo_server: LocalServer) -> None:
    speech = make_speech([330, 560], rate=16000)
    svc = service(echo_server)
    output = RecordingOutput()
    async with running(svc, output, enable_rtvi=True) as h:
        await h.feed(audio_frames(speech.samples, 16000))
        await h.end()
    assert h.errors == []
    outputs = [m["data"] for m in output.messages if m.get("type") == "bot-output"]
    assert [parse_echo(d["text"])[3] for d in outputs] == speech.freqs
    assert all(d["spoken"] and d["will_be_spoken"] for d in outputs)  # as for Pipecat's TTS services
    assert sum(m.get("type") == "bot-started-speaking" for m in output.messages) == 2


async def test_usage_counts_the_input_not_the_trailing_silence(echo_server: LocalServer) -> None:
    speech = make_speech([300, 420, 540], rate=16000)
    svc = service(echo_server, session_options={"trailing_silence_s": 2.0})
    params = PipelineParams(
        audio_in_sample_rate=16000,
        audio_out_sample_rate=48000,
        enable_metrics=True,
        enable_usage_metrics=True,
    )
    down, _ = await run_test(
        svc, frames_to_send=audio_frames(speech.samples, 16000), pipeline_params=params, start_timeout=10.0
    )
    usage = [d for f in of_type(down, MetricsFrame) for d in f.data if isinstance(d, STTUsageMetricsData)]
    assert sum(d.value.audio_seconds for d in usage) == pytest.approx(speech.seconds, abs=0.05)


# --- the caller's own words beside the translation ----------------------------------------


class ToneSTT(FrameProcessor):
    """Stands in for any STT service (Pipecat's GradiumSTTService in production): a finalized
    ``TranscriptionFrame`` in the source language per utterance, naming the tone heard."""

    def __init__(self, rate: int) -> None:
        super().__init__()
        self._rate = rate
        self._pauses = PauseDetector(rate)
        self._utterance: list[np.ndarray] = []
        self._speaking = False

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, InputAudioRawFrame):
            samples = np.frombuffer(frame.audio, np.int16)
            if self._speaking:
                self._utterance.append(samples)
            for kind, _ in self._pauses.push(samples):
                self._speaking = kind == "start"
                if kind == "start":
                    self._utterance = [samples]
                else:
                    freq = dominant_frequency(np.concatenate(self._utterance), self._rate)
                    await self.push_frame(
                        TranscriptionFrame(
                            text=f"tono de {freq} Hz",
                            user_id="",
                            timestamp=time_now_iso8601(),
                            language=Language.ES,
                            finalized=True,
                        )
                    )
        await self.push_frame(frame, direction)


async def test_source_transcript_beside_the_translation(echo_server: LocalServer) -> None:
    speech = make_speech([310, 470], durations=0.8, rate=16000)
    frames = audio_frames(speech.samples, 16000)
    translator = service(echo_server)
    parallel = ParallelPipeline([translator], [ToneSTT(16000)])
    async with running(parallel) as h:
        await h.feed(frames, realtime=4.0)
        await h.end()
    assert h.errors == []
    originals = of_type(h.down, TranscriptionFrame)
    assert [(t.language, t.text) for t in originals] == [
        (Language.ES, f"tono de {f} Hz") for f in speech.freqs
    ]
    assert [parse_echo(f.text)[3] for f in of_type(h.down, TranslationFrame)] == speech.freqs
    assert len(brackets(h.down)) == 2
    # The caller's audio comes out once, not once per branch.
    assert [f.id for f in of_type(h.down, InputAudioRawFrame)] == [f.id for f in frames]
    await asyncio.sleep(0)
