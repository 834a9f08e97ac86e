"""GradiumS2SService in real Pipecat pipelines against the local echo server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
import pytest

pytest.importorskip("pipecat")

from pipecat.frames.frames import (
    CancelFrame,
    InputAudioRawFrame,
    InterruptionFrame,
    MetricsFrame,
    ServiceUpdateSettingsFrame,
    TranslationFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
)
from pipecat.metrics.metrics import STTUsageMetricsData, TTFAMetricsData
from pipecat.pipeline.parallel_pipeline import ParallelPipeline
from pipecat.pipeline.worker import PipelineParams, ProcessorUnusablePolicy
from pipecat.services.settings import ServiceSettings
from pipecat.tests.utils import run_test
from pipecat.transcriptions.language import Language
from pipecat.utils.errors import ErrorCategory

from gradium_plugins.local import FaultPlan, LocalServer
from gradium_plugins.pipecat import (
    GradiumS2SService,
    GradiumS2SSettings,
    GradiumS2SUpdateSettingsFrame,
)
from tests.conftest import make_speech, parse_echo
from tests.pipecat.pipecat_harness import (
    FAST_SESSION,
    audio_frames,
    brackets,
    of_type,
    running,
)

METRICS = PipelineParams(
    audio_in_sample_rate=16000, audio_out_sample_rate=48000, enable_metrics=True, enable_usage_metrics=True
)


def service(server: LocalServer, language: str = "fr", **kwargs: Any) -> GradiumS2SService:
    options = {**FAST_SESSION, **kwargs.pop("session_options", {})}
    return GradiumS2SService(
        url=server.url,
        settings=GradiumS2SService.Settings(target_language=language),
        session_options=options,
        **kwargs,
    )


def echo_results(frames: list[Any]) -> list[tuple[str, int, float, int]]:
    return [parse_echo(f.text) for f in of_type(frames, TranslationFrame)]


# --- frame sequence ----------------------------------------------------------------------


async def test_frame_sequence_with_run_test(echo_server: LocalServer) -> None:
    freqs = [300, 420, 540]
    speech = make_speech(freqs, durations=[0.6, 0.9, 0.5], rate=16000)
    svc = service(echo_server)
    down, up = await run_test(
        svc,
        frames_to_send=audio_frames(speech.samples, 16000, user_id="alice"),
        pipeline_params=METRICS,
        start_timeout=10.0,
    )

    assert up == []  # no ErrorFrame
    # Input audio is forwarded (pass-through is on by default, as Pipecat's STT services do).
    assert len(of_type(down, InputAudioRawFrame)) == len(audio_frames(speech.samples, 16000))
    spans = brackets(down)
    assert len(spans) == len(freqs)
    assert len(of_type(down, TTSStartedFrame)) == len(of_type(down, TTSStoppedFrame)) == len(freqs)
    assert len({b.context_id for b in spans}) == len(spans)
    audio = of_type(down, TTSAudioRawFrame)
    assert audio and all(f.sample_rate == 48000 and f.num_channels == 1 for f in audio)
    translations = of_type(down, TranslationFrame)
    assert [f.language for f in translations] == [Language.FR] * len(freqs)
    assert all(f.user_id == "alice" for f in translations)
    assert [f.text for f in of_type(down, TTSTextFrame)] == [f.text for f in translations]
    results = echo_results(down)
    assert [r[0] for r in results] == ["fr"] * 3
    assert [r[1] for r in results] == [1, 2, 3]
    assert [r[3] for r in results] == freqs
    for span, (_, _, dur, _), tone_s in zip(spans, results, speech.durations, strict=True):
        assert span.texts and span.audio_s == pytest.approx(dur, abs=0.011)
        assert dur == pytest.approx(tone_s, abs=0.1)

    metrics = [d for f in of_type(down, MetricsFrame) for d in f.data if d.processor == svc.name]
    assert any(isinstance(d, TTFAMetricsData) for d in metrics)
    usage = sum(d.value.audio_seconds for d in metrics if isinstance(d, STTUsageMetricsData))
    assert usage == pytest.approx(speech.seconds, abs=0.05)  # the input, not the trailing silence


async def test_end_frame_waits_for_all_translated_audio(echo_server: LocalServer) -> None:
    # The last utterance runs to the very end of the input: only end_input()'s trailing
    # silence finalises it, and its audio arrives after the EndFrame was queued.
    freqs = [350, 470, 590, 710]
    speech = make_speech(freqs, durations=[0.5, 0.7, 0.6, 1.1], rate=24000, tail_s=0.0)
    svc = service(echo_server)
    events: list[str] = []
    for name in ("on_connected", "on_disconnected"):

        @svc.event_handler(name)
        async def _record(_svc: GradiumS2SService, _name: str = name) -> None:
            events.append(_name)

    async with running(svc) as h:
        await h.feed(audio_frames(speech.samples, 24000))
        await h.end()
    assert events == ["on_connected", "on_disconnected"]
    down = h.down
    end_at = next(i for i, f in enumerate(down) if type(f).__name__ == "EndFrame")
    last_stop = max(i for i, f in enumerate(down) if isinstance(f, TTSStoppedFrame))
    assert last_stop < end_at  # nothing overtaken by the EndFrame
    spans = brackets(down)
    results = echo_results(down)
    assert [r[3] for r in results] == freqs
    total_out = sum(s.audio_s for s in spans)
    assert total_out == pytest.approx(sum(r[2] for r in results), abs=0.02)
    assert total_out == pytest.approx(sum(speech.durations), abs=0.3)
    assert h.errors == []
    assert svc.session is None


async def test_cancel_frame_closes_at_once(make_server: Any) -> None:
    server = await make_server(output_realtime=True)  # output still streaming when we cancel
    speech = make_speech([300, 500], durations=[2.0, 2.0], rate=16000)
    svc = service(server)
    async with running(svc) as h:
        await h.feed(audio_frames(speech.samples, 16000))
        await h.wait_for(lambda: h.count(TTSAudioRawFrame) >= 3)
        record = server.connections[0]
        t0 = time.monotonic()
        await h.worker.queue_frame(CancelFrame())
        # The bound: the service's connection is closed within 1 s of the CancelFrame.
        await record.wait_ended(timeout_s=1.0)
        elapsed = time.monotonic() - t0
        await asyncio.wait_for(asyncio.shield(h.runner_task), 10)
        assert svc.session is None
        n_audio = h.count(TTSAudioRawFrame)
        await asyncio.sleep(0.3)
        assert h.count(TTSAudioRawFrame) == n_audio  # nothing after the cancel
    assert elapsed < 1.0
    assert record.ended == "client_closed"


# --- input formats -----------------------------------------------------------------------


@pytest.mark.parametrize(("rate", "channels"), [(8000, 1), (16000, 1), (48000, 1), (48000, 2), (16000, 2)])
async def test_any_input_rate_and_channel_count(echo_server: LocalServer, rate: int, channels: int) -> None:
    freqs = [310, 460, 610]
    speech = make_speech(freqs, durations=0.6, rate=rate)
    svc = service(echo_server)
    async with running(svc) as h:
        await h.feed(audio_frames(speech.samples, rate, channels=channels, frame_ms=10))
        await h.end()
    assert h.errors == []
    spans = brackets(h.down)
    results = echo_results(h.down)
    assert len(spans) == 3
    assert [r[3] for r in results] == freqs
    for span, r in zip(spans, results, strict=True):
        assert r[2] == pytest.approx(0.6, abs=0.1)
        assert span.audio_s == pytest.approx(r[2], abs=0.011)


async def test_audio_passthrough_forwards_input(echo_server: LocalServer) -> None:
    speech = make_speech([400], rate=16000)
    frames = audio_frames(speech.samples, 16000)
    svc = service(echo_server, audio_passthrough=True)
    async with running(svc) as h:
        await h.feed(frames)
        await h.end()
    assert [f.id for f in of_type(h.down, InputAudioRawFrame)] == [f.id for f in frames]
    assert len(brackets(h.down)) == 1


# --- failures ----------------------------------------------------------------------------


async def test_connection_aborted_mid_stream_loses_no_utterance(make_server: Any) -> None:
    # The first connection's TCP link is cut after 2.5 s of input; the core reconnects and
    # replays, the adapter only reports it.
    server = await make_server(faults=lambda i: FaultPlan(abort_after_input_s=2.5) if i == 0 else None)
    freqs = [300, 380, 460, 540, 620]
    speech = make_speech(freqs, durations=0.6, rate=16000)
    svc = service(server)
    reconnects: list[Any] = []

    @svc.event_handler("on_reconnected")
    async def _on_reconnected(_svc: GradiumS2SService, event: Any) -> None:
        reconnects.append(event)

    async with running(svc) as h:
        await h.feed(audio_frames(speech.samples, 16000), realtime=4.0)
        await h.end()
    assert server.connections[0].ended == "aborted"
    assert len(server.connections) >= 2
    assert reconnects
    assert h.errors == []
    spans = brackets(h.down)
    results = echo_results(h.down)
    got = [r[3] for r in results]
    assert set(got) == set(freqs)  # every utterance came back (a replay may repeat one)
    assert got == sorted(got)
    for span, r in zip(spans, results, strict=True):
        assert span.audio_s == pytest.approx(r[2], abs=0.011) and r[2] == pytest.approx(0.6, abs=0.1)


async def test_bad_api_key_gives_error_frame_and_unusable_service(make_server: Any) -> None:
    server = await make_server(api_key="the-right-key")
    svc = GradiumS2SService(
        api_key="wrong-key-12345",
        url=server.url,
        settings=GradiumS2SSettings(target_language="fr"),
        session_options=FAST_SESSION,
    )
    usable: list[bool] = []

    @svc.event_handler("on_usable_changed")
    async def _on_usable(_svc: GradiumS2SService, is_usable: bool) -> None:
        usable.append(is_usable)

    speech = make_speech([400], rate=16000)
    # With the END policy the worker ends the pipeline by itself: no hang.
    async with running(svc, processor_unusable_policy=ProcessorUnusablePolicy.END) as h:
        await h.feed(audio_frames(speech.samples, 16000))
        await asyncio.wait_for(asyncio.shield(h.runner_task), 10)
    errors = h.errors
    assert len(errors) == 1
    assert errors[0].category is ErrorCategory.AUTHENTICATION
    assert "wrong-key-12345" not in errors[0].error and "wrong-key-12345" not in repr(errors[0].exception)
    assert not svc.is_usable and usable == [False]
    assert of_type(h.down, TTSStartedFrame) == []
    assert [c.auth for c in server.connections] == ["rejected"]  # no retry loop on a bad key


async def test_session_length_cap_renews_without_loss(make_server: Any) -> None:
    # The service caps sessions (300 s; 5 s here): the core moves to a new server session at
    # a pause before the cap, and the adapter's output just goes on.
    server = await make_server(max_session_s=5.0)
    freqs = [300, 360, 420, 480, 540, 600, 660]
    speech = make_speech(freqs, durations=0.5, gap_s=0.5, rate=16000)
    svc = service(server, session_options={"max_session_s": 5.0, "renew_margin_s": 2.0})
    renewals: list[Any] = []

    @svc.event_handler("on_session_renewed")
    async def _on_renewed(_svc: GradiumS2SService, event: Any) -> None:
        renewals.append(event)

    async with running(svc) as h:
        await h.feed(audio_frames(speech.samples, 16000), realtime=4.0)
        await h.end()
    assert h.errors == []
    assert renewals and all(r.reason == "max_session" for r in renewals)
    assert not any(c.ended == "session_cap" for c in server.connections)
    results = echo_results(h.down)
    assert [r[3] for r in results] == freqs
    assert len(brackets(h.down)) == len(freqs)


# --- runtime settings --------------------------------------------------------------------


async def test_settings_update_switches_language_mid_stream(echo_server: LocalServer) -> None:
    freqs = [300, 400, 500, 600]
    first = make_speech(freqs[:2], rate=16000, tail_s=0.4)
    second = make_speech(freqs[2:], rate=16000, lead_s=0.0)
    svc = service(echo_server)
    other = GradiumS2SService(url=echo_server.url, settings=GradiumS2SSettings(target_language="de"))
    renewals: list[Any] = []

    @svc.event_handler("on_session_renewed")
    async def _on_renewed(_svc: GradiumS2SService, event: Any) -> None:
        renewals.append(event)

    async with running(svc) as h:
        await h.feed(audio_frames(first.samples, 16000), realtime=4.0)
        await h.wait_for(lambda: h.count(TranslationFrame) >= 2)
        # Addressed to another service: forwarded untouched.
        foreign = ServiceUpdateSettingsFrame(delta=ServiceSettings(model="x"), service=other)
        update = GradiumS2SUpdateSettingsFrame(delta=GradiumS2SSettings(target_language=Language.ES))
        await h.send(foreign, update)
        # Live input keeps flowing (silence here): the core switches at this pause once the
        # new server session is ready, and reports it after the old one drained.
        silence = audio_frames(np.zeros(1600, np.int16), 16000)
        async with asyncio.timeout(10):
            while not renewals:
                await h.feed(silence, realtime=1.0)
        await h.feed(audio_frames(second.samples, 16000), realtime=4.0)
        await h.end()
    assert h.errors == []
    assert foreign in h.down
    assert not any(isinstance(f, GradiumS2SUpdateSettingsFrame) for f in h.down)  # consumed
    results = echo_results(h.down)
    assert [r[3] for r in results] == freqs  # nothing lost across the switch
    assert [r[0] for r in results] == ["fr", "fr", "es", "es"]
    assert [f.language for f in of_type(h.down, TranslationFrame)] == [Language.FR] * 2 + [Language.ES] * 2
    assert len(brackets(h.down)) == 4
    assert svc.settings.target_language == "es"
    assert svc.config.voice_id is not None and svc.config.voice_id != "b35yykvVppLXyw_l"
    assert renewals and renewals[-1].target_language == "es"
    # The new server session was set up with Spanish and a Spanish voice.
    setups = [s for c in echo_server.connections for s in c.setups]
    assert setups[-1]["json_config"]["target_language"] == "es"
    assert setups[-1]["voice_id"] == svc.config.voice_id


async def test_generic_update_frame_addressed_to_service(echo_server: LocalServer) -> None:
    svc = service(echo_server, language="en")
    speech = make_speech([420], rate=16000)
    async with running(svc) as h:
        await h.send(ServiceUpdateSettingsFrame(settings={"voice": "LFZvm12tW_z0xfGo"}, service=svc))
        await h.feed(audio_frames(speech.samples, 16000))
        await h.end()
    assert h.errors == []
    assert svc.settings.voice_id == "LFZvm12tW_z0xfGo"
    assert echo_server.connections[-1].setups[-1]["voice_id"] == "LFZvm12tW_z0xfGo"


async def test_invalid_settings_update_is_rejected_and_stream_goes_on(echo_server: LocalServer) -> None:
    svc = service(echo_server)
    speech = make_speech([330, 440], rate=16000)
    async with running(svc) as h:
        await h.send(GradiumS2SUpdateSettingsFrame(delta=GradiumS2SSettings(target_language="xx")))
        await h.feed(audio_frames(speech.samples, 16000))
        await h.end()
    assert len(h.errors) == 1 and h.errors[0].category is ErrorCategory.APPLICATION
    assert svc.is_usable and svc.settings.target_language == "fr"
    assert [r[0] for r in echo_results(h.down)] == ["fr", "fr"]


# --- interruptions -----------------------------------------------------------------------


async def test_interruption_closes_bracket_and_drops_late_audio(make_server: Any) -> None:
    server = await make_server(output_realtime=True)
    long_utt = make_speech([300], durations=2.0, rate=16000, tail_s=0.6)
    short_utt = make_speech([500], durations=0.6, rate=16000, lead_s=0.0)
    svc = service(server)
    async with running(svc) as h:
        await h.feed(audio_frames(long_utt.samples, 16000))
        await h.wait_for(lambda: h.count(TTSAudioRawFrame) >= 3)
        await h.send(InterruptionFrame())
        await h.wait_for(lambda: h.count(TTSStoppedFrame) == 1)
        interrupted_at = len(h.down)
        await asyncio.sleep(0.5)  # the rest of utterance 1 is still streaming in: dropped
        await h.feed(audio_frames(short_utt.samples, 16000))
        await h.end()
    down = h.down
    i_int = next(i for i, f in enumerate(down) if isinstance(f, InterruptionFrame))
    i_stop = next(i for i, f in enumerate(down) if isinstance(f, TTSStoppedFrame))
    assert i_int < i_stop < interrupted_at
    spans = brackets(down)
    assert len(spans) == 2
    first, second = spans
    assert 0 < first.audio_s < 1.5  # cut short, late audio not delivered
    late = [f for f in down[i_stop:] if isinstance(f, TTSAudioRawFrame) and f.context_id == first.context_id]
    assert late == []
    assert [parse_echo(t)[3] for t in second.texts] == [500]
    assert second.audio_s == pytest.approx(parse_echo(second.texts[0])[2], abs=0.011)
    assert h.errors == []


async def test_speaker_talking_over_does_not_cut_translation(make_server: Any) -> None:
    # Interpreter semantics: input keeps flowing while output plays; nothing is cut and the
    # service never emits an InterruptionFrame itself.
    server = await make_server(output_realtime=True)
    freqs = [320, 480, 640]
    speech = make_speech(freqs, durations=1.0, gap_s=0.4, rate=16000)
    svc = service(server)
    async with running(svc) as h:
        await h.feed(audio_frames(speech.samples, 16000), realtime=1.5)
        await h.end()
    assert not any(isinstance(f, InterruptionFrame) for f in h.down + h.up)
    spans = brackets(h.down)
    assert [parse_echo(s.texts[0])[3] for s in spans] == freqs
    assert all(s.audio_s == pytest.approx(1.0, abs=0.1) for s in spans)


# --- several languages -------------------------------------------------------------------


async def test_parallel_pipeline_one_service_per_language(echo_server: LocalServer) -> None:
    freqs = [360, 520]
    speech = make_speech(freqs, rate=16000)
    services = {
        lang: service(echo_server, lang, transport_destination=f"translation-{lang}") for lang in ("fr", "es")
    }
    parallel = ParallelPipeline([services["fr"]], [services["es"]])
    async with running(parallel) as h:
        await h.feed(audio_frames(speech.samples, 16000))
        await h.end()
    assert h.errors == []
    for lang in ("fr", "es"):
        dest = f"translation-{lang}"
        mine = [f for f in h.down if getattr(f, "transport_destination", None) == dest]
        spans = brackets(mine)
        assert len(spans) == 2
        results = echo_results(mine)
        assert [r[0] for r in results] == [lang, lang] and [r[3] for r in results] == freqs
        assert all(f.language == Language(lang) for f in of_type(mine, TranslationFrame))
    # Every output frame is tagged with its branch's destination.
    tts = [f for f in h.down if isinstance(f, TTSAudioRawFrame | TTSStartedFrame | TTSStoppedFrame)]
    assert all(f.transport_destination in ("translation-fr", "translation-es") for f in tts)


# --- construction ------------------------------------------------------------------------


def test_settings_and_construction() -> None:
    url = "ws://127.0.0.1:9/api/speech/s2s"
    svc = GradiumS2SService(url=url, settings=GradiumS2SService.Settings(target_language=Language.PT_BR))
    assert svc.settings.target_language == "pt" and svc.config.target_language == "pt"
    assert svc.settings.voice_id == svc.config.voice_id is not None
    assert svc.settings.model == "default"
    delta = GradiumS2SSettings.from_mapping({"language": "es", "voice": "B36pbz5_UoWn4BDl"})
    assert delta.target_language == "es" and delta.voice_id == "B36pbz5_UoWn4BDl"
    with pytest.raises(ValueError, match="target_language"):
        GradiumS2SService(url=url, settings=GradiumS2SSettings(target_language="xx"))
    with pytest.raises(ValueError, match="session_options"):
        GradiumS2SService(
            url=url,
            settings=GradiumS2SSettings(target_language="fr"),
            session_options={"target_language": "es"},
        )
    with pytest.raises(ValueError, match="api_key"):
        GradiumS2SService(
            url="wss://api.example.com/s2s", api_key="", settings=GradiumS2SSettings(target_language="fr")
        )


def test_core_logs_reach_loguru():
    import logging

    from loguru import logger

    from gradium_plugins.pipecat._logbridge import route_core_logs_to_loguru

    root_handlers = logging.getLogger().handlers[:]
    logging.getLogger().handlers.clear()  # a Pipecat app that never configured stdlib logging
    seen: list[str] = []
    sink = logger.add(lambda m: seen.append(str(m)), level="INFO")
    try:
        route_core_logs_to_loguru()
        route_core_logs_to_loguru()  # idempotent
        logging.getLogger("gradium_plugins.session").warning("replay buffer too small: %.1f s", 1.5)
    finally:
        logger.remove(sink)
        logging.getLogger().handlers[:] = root_handlers
    assert sum("replay buffer too small: 1.5 s" in m for m in seen) == 1
