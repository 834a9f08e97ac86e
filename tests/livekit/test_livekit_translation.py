"""TranslationModel / TranslationModelSession against the local echo server, driven by LiveKit's
own TranslationSession with memory IO."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

pytest.importorskip("livekit.agents")

from livekit.agents import APIConnectOptions, APIStatusError
from livekit.agents.beta.translation import (
    OutputSpeechStopped,
    TranslatedAudioFrame,
    TranslationSession,
)
from livekit.agents.metrics import RealtimeModelMetrics
from livekit.agents.metrics.usage import ModelUsageCollector
from livekit.agents.voice.events import CloseReason

from gradium_plugins import AuthenticationError, ConfigurationError
from gradium_plugins.livekit import (
    TranslationMetrics,
    TranslationModel,
    TranslationModelSession,
    drain_and_close,
)
from gradium_plugins.local import FaultPlan
from tests.livekit.lk_helpers import (
    MemoryAudioInput,
    MemoryAudioOutput,
    MemoryTextOutput,
    frames_of,
    parse_echo,
    speech,
)

FREQS = [300, 450, 600]


def _wire(
    session: TranslationSession[Any], inp: MemoryAudioInput, out: MemoryAudioOutput, txt: MemoryTextOutput
) -> dict[str, list[Any]]:
    session.input.audio = inp
    session.output.audio = out
    session.output.transcription = txt
    seen: dict[str, list[Any]] = {"translated": [], "error": [], "close": [], "user_state": []}
    session.on("translation_transcribed", seen["translated"].append)
    session.on("error", seen["error"].append)
    session.on("close", seen["close"].append)
    session.on("user_state_changed", seen["user_state"].append)
    return seen


def _collect_model_session(session: TranslationModelSession) -> tuple[list[Any], asyncio.Task[None]]:
    items: list[Any] = []

    async def read() -> None:
        async for item in session.audio_stream:
            items.append(item)

    return items, asyncio.create_task(read())


@pytest.mark.parametrize("sink_rate", [None, 24000])
async def test_translation_session_memory_io(echo_server: Any, sink_rate: int | None) -> None:
    """N utterances in (16 kHz stereo) -> N segments, N final transcripts, 48 kHz (or resampled)."""
    model = TranslationModel(target_language="fr", url=echo_server.url)
    assert model.capabilities.output_segmentation and model.capabilities.retargetable
    assert model.provider == "gradium"
    session: TranslationSession[Any] = TranslationSession(model=model)
    # The last tone is followed by almost no silence: only the drain's trailing silence ends it.
    samples = speech(FREQS, rate=16000, channels=2, tail_s=0.05)
    inp = MemoryAudioInput(frames_of(samples, 16000, channels=2))
    out = MemoryAudioOutput(sample_rate=sink_rate)
    txt = MemoryTextOutput()
    seen = _wire(session, inp, out, txt)
    metrics: list[TranslationMetrics] = []
    model.on("metrics_collected", metrics.append)

    await session.start()
    await asyncio.wait_for(inp.done.wait(), 10)
    await asyncio.wait_for(drain_and_close(session), 20)

    assert len(out.segments) == len(FREQS)
    assert out.rates == {sink_rate or 48000}
    for seg in out.segments:
        assert seg.duration == pytest.approx(0.6, abs=0.03)
    assert [parse_echo(t)[3] for t in txt.segments] == FREQS
    finals = [e for e in seen["translated"] if e.is_final]
    assert len(finals) == len(seen["translated"]) == len(FREQS)
    assert {e.language for e in finals} == {"fr"}
    assert [parse_echo(e.transcript)[0] for e in finals] == ["fr"] * len(FREQS)
    assert not seen["error"]
    assert [c.reason for c in seen["close"]] == [CloseReason.USER_INITIATED]
    # Input speech boundaries come from the core's pause detector (turn_reporting).
    assert [s.new_state for s in seen["user_state"]][:2] == ["speaking", "listening"]
    assert [m.utterance_index for m in metrics] == [0, 1, 2]
    assert all(m.audio_duration == pytest.approx(0.6, abs=0.03) for m in metrics)
    assert all(m.ttfa > 0 for m in metrics[:-1])  # from the core's utterance events
    # LiveKit's own metrics type: counted by LiveKit's usage collection (issue 15.6).
    collector = ModelUsageCollector()
    for m in metrics:
        assert isinstance(m, RealtimeModelMetrics) and m.metadata is not None
        collector.collect(m)
    (usage,) = collector.flatten()
    assert usage.provider == "gradium" and usage.session_duration == pytest.approx(
        sum(m.session_duration for m in metrics)
    )
    assert usage.session_duration > 0


async def test_model_session_drain_keeps_last_utterance(echo_server: Any) -> None:
    """drain() without end of input: the core flushes and ends the stream, nothing is lost."""
    model = TranslationModel(target_language="es", url=echo_server.url)
    session = model.session()
    items, reader = _collect_model_session(session)
    for frame in frames_of(speech(FREQS, rate=48000, tail_s=0.0), 48000, frame_ms=10):
        session.push_audio(frame)
    assert await asyncio.wait_for(session.drain(), 20)
    await session.aclose()
    await asyncio.wait_for(reader, 5)

    frames = [i for i in items if isinstance(i, TranslatedAudioFrame)]
    markers = [i for i in items if isinstance(i, OutputSpeechStopped)]
    assert len(markers) == len(FREQS)
    assert isinstance(items[-1], OutputSpeechStopped)
    assert {f.frame.sample_rate for f in frames} == {48000}
    assert {f.language for f in frames} == {"es"}
    assert sum(f.frame.duration for f in frames) == pytest.approx(0.6 * len(FREQS), abs=0.05)
    assert session.closed and model.sessions == []


async def test_update_options_mid_stream_switches_language_without_loss(echo_server: Any) -> None:
    """set_target_language on a running TranslationSession: later utterances in the new language."""
    freqs = [300, 400, 500, 600]
    model = TranslationModel(target_language="fr", url=echo_server.url)
    session: TranslationSession[Any] = TranslationSession(model=model)
    frames = frames_of(speech(freqs, rate=24000, tone_s=0.4, pause_s=0.6), 24000)
    # Hold the input in the pause after the second tone (0.2 + 2*0.4 + 0.6 + 0.2 s).
    inp = MemoryAudioInput(frames, speed=3.0, hold_at=int(1.8 / 0.02))
    out, txt = MemoryAudioOutput(), MemoryTextOutput()
    seen = _wire(session, inp, out, txt)
    await session.start()
    await asyncio.wait_for(inp.held.wait(), 10)
    session.set_target_language("de")
    assert model.target_language == "de"
    inp.release.set()
    await asyncio.wait_for(inp.done.wait(), 10)
    await asyncio.wait_for(drain_and_close(session), 20)

    parsed = [parse_echo(t) for t in txt.segments]
    assert [p[3] for p in parsed] == freqs  # every utterance exactly once, in order
    assert [p[0] for p in parsed] == ["fr", "fr", "de", "de"]
    assert [e.language for e in seen["translated"]] == ["fr", "fr", "de", "de"]
    assert len(out.segments) == len(freqs)
    assert not seen["error"]


async def test_update_options_rejects_unknown_language(echo_server: Any) -> None:
    model = TranslationModel(target_language="fr", url=echo_server.url)
    session = model.session()
    with pytest.raises(ConfigurationError):
        session.update_options(target_language="xx")
    with pytest.raises(ConfigurationError):
        model.update_options(target_language="xx")
    assert model.target_language == "fr"
    await session.aclose()


async def test_reconnect_mid_stream_loses_no_utterance(make_server: Any) -> None:
    """The first connection dies with 1011 in the middle of utterance 2: recovered, nothing lost."""
    # ready, text, 8 audio (utterance 1), text, 3 audio: then the close.
    server = await make_server(
        engine="echo", faults=lambda i: FaultPlan(close_after_messages=13) if i == 0 else None
    )
    model = TranslationModel(target_language="fr", url=server.url)
    session: TranslationSession[Any] = TranslationSession(model=model)
    inp = MemoryAudioInput(frames_of(speech(FREQS, rate=24000), 24000), speed=4.0)
    out, txt = MemoryAudioOutput(), MemoryTextOutput()
    seen = _wire(session, inp, out, txt)
    await session.start()
    await asyncio.wait_for(inp.done.wait(), 10)
    await asyncio.wait_for(drain_and_close(session), 20)

    assert len(server.connections) >= 2
    got = [parse_echo(t)[3] for t in txt.segments]
    assert set(got) == set(FREQS)  # every utterance was translated
    assert got[-1] == FREQS[-1]
    assert len(out.segments) == len(txt.segments)  # still one marker per final transcript
    assert not seen["error"]  # recovered with nothing lost: no error event (issue 15.8)
    assert [c.reason for c in seen["close"]] == [CloseReason.USER_INITIATED]


async def test_bad_key_is_not_recoverable_and_closes_cleanly(
    make_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server = await make_server(engine="echo", api_key="the-right-key-0123456789")
    secret = "wrong-key-SECRET-9876543210"
    model = TranslationModel(target_language="fr", url=server.url, api_key=secret)
    session: TranslationSession[Any] = TranslationSession(model=model)
    inp = MemoryAudioInput(frames_of(speech(FREQS, rate=24000), 24000), speed=4.0)
    out, txt = MemoryAudioOutput(), MemoryTextOutput()
    seen = _wire(session, inp, out, txt)
    closed = asyncio.Event()
    session.on("close", lambda _: closed.set())
    await session.start()
    await asyncio.wait_for(closed.wait(), 10)

    assert [c.reason for c in seen["close"]] == [CloseReason.ERROR]
    assert len(seen["error"]) == 1
    err = seen["error"][0].error
    assert err.recoverable is False
    # A LiveKit APIStatusError (not retryable), caused by the typed Gradium error (issue 15.8).
    assert isinstance(err.error, APIStatusError) and not err.error.retryable
    assert isinstance(err.error.__cause__, AuthenticationError)
    assert out.segments == [] and txt.segments == []
    ours = [r for r in caplog.records if r.name.startswith(("gradium_plugins", "livekit"))]
    assert ours and not any(secret in r.getMessage() or secret in str(r.__dict__) for r in ours)
    assert secret not in repr(model.config) and secret not in str(err.error)


async def test_clear_audio_drops_unread_audio_but_keeps_markers(echo_server: Any) -> None:
    model = TranslationModel(target_language="fr", url=echo_server.url)
    session = model.session()
    done = asyncio.Event()
    metrics: list[TranslationMetrics] = []
    transcripts: list[Any] = []

    def on_metrics(m: TranslationMetrics) -> None:
        metrics.append(m)
        if len(metrics) == 2:
            done.set()

    session.on("metrics_collected", on_metrics)
    session.on("output_transcript", transcripts.append)
    for frame in frames_of(speech(FREQS[:2], rate=24000), 24000):
        session.push_audio(frame)
    await asyncio.wait_for(done.wait(), 10)  # both produced, nothing read yet
    session.clear_audio()
    for frame in frames_of(speech(FREQS[2:], rate=24000), 24000):
        session.push_audio(frame)
    items, reader = _collect_model_session(session)
    assert await asyncio.wait_for(session.drain(), 20)
    await session.aclose()
    await asyncio.wait_for(reader, 5)

    kinds = ["M" if isinstance(i, OutputSpeechStopped) else "A" for i in items]
    # Two cleared utterances keep their markers; the third is delivered whole.
    assert kinds[:2] == ["M", "M"] and kinds[-1] == "M" and kinds.count("M") == 3
    audio = [i for i in items if isinstance(i, TranslatedAudioFrame)]
    assert sum(f.frame.duration for f in audio) == pytest.approx(0.6, abs=0.03)
    assert len(transcripts) == 3 and all(t.is_final for t in transcripts)


def test_invalid_options_fail_before_connecting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GRADIUM_API_KEY", raising=False)
    monkeypatch.delenv("GRADIUM_S2S_URL", raising=False)
    with pytest.raises(ConfigurationError, match="api_key"):
        TranslationModel(target_language="fr")
    with pytest.raises(ConfigurationError, match="target_language"):
        TranslationModel(target_language="klingon", url="ws://127.0.0.1:1/api/speech/s2s")
    with pytest.raises(ValueError):
        TranslationModel(target_language="fr", voice_id="YTpq7expH9539ERJ", url="ws://127.0.0.1:1/x")


def test_plugin_is_registered() -> None:
    from livekit.agents import Plugin

    from gradium_plugins.livekit import GradiumPlugin

    plugins = [p for p in Plugin.registered_plugins if isinstance(p, GradiumPlugin)]
    assert len(plugins) == 1
    assert plugins[0].package == "gradium_plugins.livekit"
    assert plugins[0].logger is not None and plugins[0].logger.name == "gradium_plugins.livekit"


def test_plugin_registration_off_the_main_thread_does_not_raise(monkeypatch: pytest.MonkeyPatch) -> None:
    """LiveKit refuses registration off the main thread: importing there must still work."""
    import threading

    from livekit.agents import Plugin

    import gradium_plugins.livekit as lk

    monkeypatch.setattr(Plugin, "registered_plugins", [])  # as in a fresh process
    errors: list[BaseException] = []

    def register() -> None:
        try:
            lk._register()
        except BaseException as exc:  # noqa: BLE001 - recorded for the assertion
            errors.append(exc)

    t = threading.Thread(target=register)
    t.start()
    t.join()
    assert errors == []
    assert Plugin.registered_plugins == []  # skipped off the main thread...
    lk._register()
    lk._register()
    assert [type(p) for p in Plugin.registered_plugins] == [lk.GradiumPlugin]  # ...once on it


def test_livekit_language_codes_and_conn_options() -> None:
    """``fr-FR``-style codes go through LiveKit's normalisation; conn_options reach the core (15.8)."""
    url = "ws://127.0.0.1:1/api/speech/s2s"
    opts = APIConnectOptions(max_retry=1, retry_interval=0.5, timeout=3.0)
    model = TranslationModel(target_language="fr-FR", source_language="English", url=url, conn_options=opts)
    assert model.target_language == "fr" and model.config.source_language == "en"
    assert model.config.connect_timeout == 3.0 and model.config.max_reconnect_attempts == 1
    assert model.config.reconnect_backoff_s == 0.5
    model.update_options(target_language="es_MX")
    assert model.target_language == "es" and model.config.target_language == "es"


async def test_uses_livekits_shared_http_session_inside_a_job(echo_server: Any) -> None:
    """Inside a job (LiveKit's http context bound), sessions reuse LiveKit's aiohttp session (15.8)."""
    from livekit.agents.utils import http_context

    async with http_context.open() as shared:
        model = TranslationModel(target_language="fr", url=echo_server.url)
        session = model.session()
        assert session._bridge.session._user_http is shared
        items, reader = _collect_model_session(session)
        for frame in frames_of(speech(FREQS[:1], rate=24000), 24000):
            session.push_audio(frame)
        assert await asyncio.wait_for(session.drain(), 20)
        await session.aclose()
        await asyncio.wait_for(reader, 5)
        assert sum(isinstance(i, OutputSpeechStopped) for i in items) == 1
        assert not shared.closed  # ours to use, LiveKit's to close


async def test_refused_update_is_recoverable_and_keeps_the_old_language(make_server: Any) -> None:
    """A language switch the service refuses: a recoverable error, the old language carries on,
    and the session's own settings are restored (core v2 UpdateRejected)."""
    server = await make_server(
        engine="echo", faults=lambda i: FaultPlan(reject_setup="language not enabled") if i == 1 else None
    )
    model = TranslationModel(target_language="fr", url=server.url)
    session = model.session()
    errors: list[Any] = []
    session.on("error", errors.append)
    _items, reader = _collect_model_session(session)
    transcripts: list[Any] = []
    session.on("output_transcript", transcripts.append)
    frames = frames_of(speech(FREQS, rate=24000), 24000)
    for i, frame in enumerate(frames):
        if i == len(frames) // 3:
            session.update_options(target_language="de")
            assert session._bridge.config.target_language == "de"
        session.push_audio(frame)
        await asyncio.sleep(frame.duration / 4)
    assert await asyncio.wait_for(session.drain(), 20)
    await session.aclose()
    await asyncio.wait_for(reader, 5)

    assert [parse_echo(t.text)[3] for t in transcripts] == FREQS
    assert {parse_echo(t.text)[0] for t in transcripts} == {"fr"}
    assert len(errors) == 1 and errors[0].recoverable
    assert isinstance(errors[0].error, APIStatusError) and "language not enabled" in str(errors[0].error)
    assert session._bridge.config.target_language == "fr"  # restored
