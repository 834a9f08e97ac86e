"""S2SSession against the real local server (echo engine): formats, rates, failures, secrets."""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from dataclasses import dataclass, field

import numpy as np
import pytest

from gradium_plugins import (
    AudioFormatError,
    AudioOut,
    AuthenticationError,
    ConfigurationError,
    ConnectionLostError,
    EndOfStream,
    GradiumError,
    ProtocolError,
    Ready,
    S2SConfig,
    S2SSession,
    ServerError,
    TextOut,
    UnknownEvent,
    translate_file,
    translate_stream,
)
from gradium_plugins.audio import read_wav, write_wav
from gradium_plugins.local import FaultPlan
from tests.conftest import make_speech, parse_echo

# The frameworks run the session on uvloop: every test here runs on both loops.
pytestmark = pytest.mark.any_loop

SECRET = "gd_SuperSecretKey_0123456789abcdef"


def cfg(server, **kw) -> S2SConfig:
    kw.setdefault("target_language", "fr")
    kw.setdefault("heartbeat_interval", 1.0)
    return S2SConfig(url=server.url, **kw)


@dataclass
class Run:
    events: list = field(default_factory=list)

    @property
    def texts(self) -> list[str]:
        return [e.text for e in self.events if isinstance(e, TextOut)]

    @property
    def freqs(self) -> list[int]:
        return [parse_echo(t)[3] for t in self.texts]

    @property
    def audio(self) -> np.ndarray:
        parts = [e.samples for e in self.events if isinstance(e, AudioOut)]
        return np.concatenate(parts) if parts else np.zeros(0, np.int16)

    @property
    def rates(self) -> set[int]:
        return {e.sample_rate for e in self.events if isinstance(e, AudioOut)}


async def run_stream(config: S2SConfig, samples, rate: int, channels: int = 1, step_s: float = 0.02) -> Run:
    run = Run()
    async with S2SSession(config) as session:
        n = max(1, round(rate * step_s))
        total = samples.shape[0] // channels if samples.ndim == 1 else samples.shape[0]
        for i in range(0, total, n):
            if samples.ndim == 1:
                await session.send_audio(
                    samples[i * channels : (i + n) * channels], sample_rate=rate, channels=channels
                )
            else:
                await session.send_audio(samples[i : i + n], sample_rate=rate)
        await session.end_input()
        async for ev in session:
            run.events.append(ev)
    assert isinstance(run.events[-1], EndOfStream)
    return run


@pytest.mark.parametrize("rate", [8000, 16000, 22050, 24000, 44100, 48000])
async def test_round_trip_any_input_rate(echo_server, rate):
    speech = make_speech([300, 450, 600, 750], durations=[0.5, 0.7, 0.9, 0.6], rate=rate, tail_s=0.0)
    run = await run_stream(cfg(echo_server), speech.samples, rate)
    assert isinstance(run.events[0], Ready) and run.events[0].sample_rate == 48000
    assert run.freqs == speech.freqs
    assert run.rates == {48000}
    expected = sum(speech.durations)
    # Output is the echo of each utterance: the same duration within one 80 ms chunk per utterance.
    assert abs(run.audio.size / 48000 - expected) <= 0.08 * len(speech.freqs)
    # The last utterance ends at the very end of the input: the resampler tail must not be lost.
    last = parse_echo(run.texts[-1])[2]
    assert abs(last - speech.durations[-1]) <= 0.03


async def test_round_trip_stereo_and_float(echo_server):
    speech = make_speech([350, 700], rate=44100)
    stereo = np.stack([speech.samples, speech.samples], axis=1)
    run = await run_stream(cfg(echo_server), stereo.reshape(-1), 44100, channels=2)
    assert run.freqs == speech.freqs
    floats = (speech.samples.astype(np.float32) / 32768.0).reshape(-1, 1).repeat(2, axis=1)
    run = await run_stream(cfg(echo_server), floats, 44100)
    assert run.freqs == speech.freqs


FORMATS = [
    "pcm",
    "pcm_8000",
    "pcm_16000",
    "pcm_22050",
    "pcm_24000",
    "pcm_44100",
    "pcm_48000",
    "wav",
    "ulaw_8000",
    "mulaw_8000",
    "alaw_8000",
]


@pytest.mark.parametrize("fmt", FORMATS)
async def test_every_input_format(echo_server, fmt):
    speech = make_speech([400, 800], rate=16000)
    run = await run_stream(cfg(echo_server, input_format=fmt), speech.samples, 16000)
    assert run.freqs == speech.freqs
    assert echo_server.connections[-1].setup["input_format"] == fmt


@pytest.mark.parametrize(
    ("fmt", "rate"),
    [
        ("pcm", 48000),
        ("pcm_16000", 16000),
        ("pcm_44100", 44100),
        ("wav", 48000),
        ("ulaw_8000", 8000),
        ("alaw_8000", 8000),
    ],
)
async def test_every_output_format(echo_server, fmt, rate):
    speech = make_speech([500, 900], durations=0.8, rate=24000)
    run = await run_stream(cfg(echo_server, output_format=fmt), speech.samples, 24000)
    assert run.freqs == speech.freqs
    assert run.rates == {rate}
    assert abs(run.audio.size / rate - 1.6) <= 0.16
    # The decoded audio is the tone, not noise: dominant frequency of the first utterance.
    first = run.audio[: int(0.6 * rate)].astype(np.float64)
    spectrum = np.abs(np.fft.rfft(first))
    assert abs(np.argmax(spectrum) * rate / first.size - 500) < 15


async def test_unknown_messages_pass_through(make_server):
    server = await make_server(faults=FaultPlan(unknown_every=3))
    run = await run_stream(cfg(server), make_speech([300, 600]).samples, 24000)
    assert any(isinstance(e, UnknownEvent) and e.type == "step" for e in run.events)
    assert run.freqs == [300, 600]


async def test_delayed_output_still_complete(make_server):
    server = await make_server(faults=FaultPlan(delay_output_s=0.5))
    run = await run_stream(cfg(server), make_speech([300, 600]).samples, 24000)
    assert run.freqs == [300, 600]


# --- failures, reconnect disabled: what the user sees -----------------------------------


def no_retry(server, **kw) -> S2SConfig:
    return cfg(server, reconnect=False, **kw)


async def consume(config: S2SConfig, seconds: float = 3.0, rate: int = 24000) -> Run:
    speech = make_speech([300 + 50 * i for i in range(int(seconds))], rate=rate)
    return await run_stream(config, speech.samples, rate)


async def test_tcp_abort_raises_promptly_without_cpu_spin(make_server):
    server = await make_server(faults=FaultPlan(abort_after_messages=3))
    t0 = time.monotonic()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF).ru_utime
    with pytest.raises(ConnectionLostError):
        await consume(no_retry(server))
    assert time.monotonic() - t0 < 5.0
    assert resource.getrusage(resource.RUSAGE_SELF).ru_utime - cpu0 < 2.0


@pytest.mark.parametrize("code", [1011, 1001, 4000])
async def test_abnormal_close_without_error_frame_is_not_success(make_server, code):
    server = await make_server(faults=FaultPlan(close_after_messages=2, close_code=code))
    # 4xxx is the application's own verdict: not a connection loss, and never retried.
    expected = ServerError if code >= 4000 else ConnectionLostError
    with pytest.raises(expected) as info:
        await consume(no_retry(server))
    assert info.value.code == code
    assert info.value.retryable is (code < 4000)


async def test_error_frame_1011_raises_server_error(make_server):
    server = await make_server(
        faults=FaultPlan(
            close_after_messages=2, close_code=1011, close_with_error=True, close_message="model crashed"
        )
    )
    with pytest.raises(ServerError) as info:
        await consume(no_retry(server))
    assert info.value.code == 1011 and "model crashed" in str(info.value) and info.value.retryable
    assert info.value.request_id  # support needs it


async def test_malformed_json_raises_protocol_error(make_server):
    server = await make_server(faults=FaultPlan(malformed_after_messages=2))
    with pytest.raises(ProtocolError):
        await consume(no_retry(server))


async def test_stalled_server_detected_by_heartbeat(make_server):
    server = await make_server(faults=FaultPlan(stall_after_messages=1))
    t0 = time.monotonic()
    with pytest.raises(ConnectionLostError, match="stopped responding"):
        await consume(no_retry(server, heartbeat_interval=0.5))
    assert time.monotonic() - t0 < 6.0


async def test_missing_ready_times_out(make_server):
    server = await make_server(faults=FaultPlan(send_ready=False))
    with pytest.raises(ConnectionLostError, match="ready"):
        await consume(no_retry(server, ready_timeout=1.0))


async def test_session_cap_error_without_renewal(make_server):
    server = await make_server(max_session_s=1.0)
    with pytest.raises(ServerError, match="session length limit"):
        await consume(no_retry(server, max_session_s=None), seconds=4)


async def test_rejected_setup_is_not_retried(make_server):
    server = await make_server(faults=FaultPlan(reject_setup="voice not found"))
    with pytest.raises(GradiumError, match="voice not found") as info:
        await consume(cfg(server))
    assert not info.value.retryable
    assert len(server.connections) == 1


async def test_send_side_failure_surfaces(make_server):
    server = await make_server(faults=FaultPlan(abort_after_input_s=0.5))
    speech = make_speech([300] * 1, durations=3.0)
    session = S2SSession(no_retry(server))
    await session.connect()
    with pytest.raises(ConnectionLostError):
        async with asyncio.timeout(10):
            for i in range(0, speech.samples.size, 480):
                await session.send_audio(speech.samples[i : i + 480])
                await asyncio.sleep(0.005)
            await session.end_input()
            async for _ in session:
                pass
    with pytest.raises(ConnectionLostError):
        await session.send_audio(speech.samples[:480])
    await session.aclose()


async def test_cancel_mid_stream_closes_socket_quickly(echo_server):
    speech = make_speech([300, 400, 500, 600])
    session = S2SSession(cfg(echo_server))
    await session.connect()
    await session.send_audio(speech.samples[:24000])

    async def reader():
        async for _ in session:
            pass

    task = asyncio.create_task(reader())
    await asyncio.sleep(0.3)
    t0 = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await echo_server.connections[0].wait_ended(timeout_s=1.0)
    assert time.monotonic() - t0 < 1.0
    assert session.closed


async def test_bad_config_and_audio_fail_before_sending(echo_server):
    with pytest.raises(ConfigurationError, match="target_language"):
        S2SSession(S2SConfig(target_language="xx", url=echo_server.url))
    session = S2SSession(cfg(echo_server))
    with pytest.raises(AudioFormatError, match="sample_rate"):
        await session.send_audio(b"\x00\x01", sample_rate="16000")  # type: ignore[arg-type]
    with pytest.raises(AudioFormatError, match="NaN"):
        await session.send_audio(np.array([np.nan], np.float32))
    assert echo_server.connections == []
    await session.aclose()


async def test_auth_failure_not_retried_and_key_never_leaks(make_server, caplog):
    caplog.set_level(logging.DEBUG)
    server = await make_server(api_key="right-key-000")
    config = cfg(server, api_key=SECRET)
    session = S2SSession(config)
    with pytest.raises(AuthenticationError) as info:
        await consume(config)
    assert len(server.connections) == 1
    texts = [repr(config), str(config), repr(session), str(info.value), repr(info.value)]
    texts += [r.getMessage() for r in caplog.records]
    texts += [str(a) for r in caplog.records for a in (r.args or ())]
    assert not [t for t in texts if SECRET in t]
    await session.aclose()


async def test_api_key_header_and_token_auth(make_server):
    server = await make_server(api_key=SECRET)
    run = await consume(cfg(server, api_key=SECRET), seconds=1)
    assert run.freqs == [300]
    run = await consume(cfg(server, api_key=SECRET, auth_mode="token"), seconds=1)
    assert run.freqs == [300]
    assert server.connections[-1].auth == "token"


async def test_close_ws_on_eos_false_still_ends(echo_server):
    run = await consume(cfg(echo_server, close_ws_on_eos=False), seconds=2)
    assert run.freqs == [300, 350]
    assert echo_server.connections[0].setup["close_ws_on_eos"] is False


async def test_translate_stream_and_file(echo_server, tmp_path):
    speech = make_speech([300, 500, 700], rate=22050)
    chunks = [speech.samples[i : i + 1000] for i in range(0, speech.samples.size, 1000)]
    events = [
        e async for e in translate_stream(chunks, cfg(echo_server, realtime_factor=None), sample_rate=22050)
    ]
    assert [parse_echo(e.text)[3] for e in events if isinstance(e, TextOut)] == [300, 500, 700]
    stereo = np.stack([speech.samples, speech.samples], axis=1)
    src = tmp_path / "in.wav"
    import wave

    with wave.open(str(src), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(22050)
        w.writeframes(stereo.tobytes())
    progress = []
    result = await translate_file(
        src,
        tmp_path / "out.wav",
        cfg(echo_server, realtime_factor=4.0),
        progress=lambda d, t: progress.append(d),
    )
    out, rate = read_wav(tmp_path / "out.wav")
    assert rate == 48000 and abs(out.size / rate - 3 * 0.6) < 0.25
    assert [parse_echo(t)[3] for t in result.transcript] == [300, 500, 700]
    assert progress and abs(progress[-1] - speech.seconds) < 0.01
    write_wav(tmp_path / "x.wav", out, rate)


async def test_fast_live_input_warns_once(echo_server, caplog, monkeypatch):
    # The warning is for remote services (they drop sentences); pretend this server is remote.
    monkeypatch.setattr(S2SConfig, "is_local", property(lambda self: False))
    caplog.set_level(logging.WARNING, logger="gradium_plugins.session")
    speech = make_speech([300 + 50 * i for i in range(12)], durations=0.6)
    await run_stream(cfg(echo_server), speech.samples, 24000)
    warnings = [r for r in caplog.records if "faster than real time" in r.getMessage()]
    assert len(warnings) == 1
