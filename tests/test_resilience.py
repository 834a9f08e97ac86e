"""Reconnect without loss, renewal past the session cap, update(), heartbeat, backpressure."""

from __future__ import annotations

import asyncio
import itertools
import random
import time
import tracemalloc
from collections import Counter

import numpy as np
import pytest

from gradium_plugins import (
    AudioOut,
    AuthenticationError,
    ConnectionLostError,
    EndOfStream,
    Reconnected,
    S2SConfig,
    S2SSession,
    SessionRenewed,
    TextOut,
)
from gradium_plugins.local import FaultPlan
from tests.conftest import make_speech, parse_echo


def cfg(server, **kw) -> S2SConfig:
    kw.setdefault("target_language", "fr")
    kw.setdefault("heartbeat_interval", 0.5)
    kw.setdefault("reconnect_backoff_s", 0.05)
    return S2SConfig(url=server.url, **kw)


async def stream(config: S2SConfig, speech, *, step_s=0.04, pace=None, consume_delay=None):
    """Send speech in small steps (paced at ``pace`` x real time when given) while reading events."""
    events: list = []
    async with S2SSession(config) as session:

        async def feed():
            n = round(speech.rate * step_s)
            t0 = time.monotonic()
            for i in range(0, speech.samples.size, n):
                await session.send_audio(speech.samples[i : i + n], sample_rate=speech.rate)
                if pace:
                    ahead = (i + n) / speech.rate / pace - (time.monotonic() - t0)
                    if ahead > 0:
                        await asyncio.sleep(ahead)
                else:
                    await asyncio.sleep(0)
            await session.end_input()

        feeder = asyncio.create_task(feed())
        try:
            async for ev in session:
                events.append(ev)
                if consume_delay is not None:
                    await consume_delay(ev)
        finally:
            feeder.cancel()
        await feeder
    return events, session


def texts(events):
    return [e.text for e in events if isinstance(e, TextOut)]


def freqs(events):
    return [parse_echo(t)[3] for t in texts(events)]


async def test_random_aborts_lose_no_utterance(make_server):
    rng = random.Random(1234)
    n_utts = 24
    speech = make_speech([300 + 40 * i for i in range(n_utts)], durations=0.5, gap_s=0.45)
    # Abort connections 0, 1 and 2 after a random number of server messages (seeded).
    points = {i: rng.randint(8, 40) for i in range(3)}
    server = await make_server(
        faults=lambda i: FaultPlan(abort_after_messages=points[i]) if i in points else None
    )
    events, _ = await stream(cfg(server), speech, pace=8.0)
    assert isinstance(events[-1], EndOfStream)
    got = freqs(events)
    reconnects = [e for e in events if isinstance(e, Reconnected)]
    assert len(reconnects) == 3, reconnects
    # Every utterance is translated at least once, in order of first appearance.
    assert set(got) == set(speech.freqs)
    firsts = list(dict.fromkeys(got))
    assert firsts == speech.freqs
    # Duplicates only for the utterance in flight at each fault: at most one per reconnect.
    dupes = sum(c - 1 for c in Counter(got).values())
    assert dupes <= len(reconnects), Counter(got)
    assert all(r.downtime_s < 5 for r in reconnects)


async def test_close_1011_and_error_frames_are_retried(make_server):
    plans = {
        0: FaultPlan(close_after_messages=5, close_code=1011),
        1: FaultPlan(close_after_messages=5, close_code=1011, close_with_error=True),
    }
    server = await make_server(faults=lambda i: plans.get(i))
    speech = make_speech([300 + 50 * i for i in range(8)])
    events, _ = await stream(cfg(server), speech, pace=8.0)
    assert set(freqs(events)) == set(speech.freqs)
    assert len([e for e in events if isinstance(e, Reconnected)]) == 2


async def test_stalled_server_is_detected_and_recovered(make_server):
    server = await make_server(faults=lambda i: FaultPlan(stall_after_messages=6) if i == 0 else None)
    speech = make_speech([300 + 50 * i for i in range(6)])
    t0 = time.monotonic()
    events, _ = await stream(cfg(server, heartbeat_interval=0.3), speech, pace=4.0)
    rec = [e for e in events if isinstance(e, Reconnected)]
    assert len(rec) == 1 and "responding" in rec[0].reason
    assert set(freqs(events)) == set(speech.freqs)
    assert time.monotonic() - t0 < 20


async def test_missing_ready_is_retried(make_server):
    server = await make_server(
        faults=lambda i: (
            FaultPlan(send_ready=False) if i == 1 else (FaultPlan(abort_after_messages=4) if i == 0 else None)
        )
    )
    speech = make_speech([300 + 50 * i for i in range(5)])
    events, _ = await stream(cfg(server, ready_timeout=0.5), speech, pace=4.0)
    assert set(freqs(events)) == set(speech.freqs)
    assert [e.attempts for e in events if isinstance(e, Reconnected)] == [2]


async def test_auth_failure_on_reconnect_is_not_retried(make_server):
    plans = {0: FaultPlan(abort_after_messages=3), 1: FaultPlan(reject_setup="API key is revoked or expired")}
    server = await make_server(faults=lambda i: plans.get(i))
    speech = make_speech([300 + 50 * i for i in range(5)])
    with pytest.raises(AuthenticationError, match="revoked"):
        await stream(cfg(server), speech, pace=4.0)
    assert len(server.connections) == 2  # one reconnect attempt, refused, never retried


async def test_tokens_are_minted_per_connection(make_server):
    server = await make_server(
        api_key="k-123", faults=lambda i: FaultPlan(abort_after_messages=4) if i == 0 else None
    )
    speech = make_speech([300 + 50 * i for i in range(4)])
    events, _ = await stream(cfg(server, api_key="k-123", auth_mode="token"), speech, pace=4.0)
    assert set(freqs(events)) == set(speech.freqs)
    assert server.tokens.minted == 2 and [c.auth for c in server.connections] == ["token", "token"]


async def test_renewal_past_the_cap_is_complete_and_ordered(make_server):
    # The server caps sessions at 6 s of input; the client renews from 2 s and switches at a pause.
    server = await make_server(max_session_s=6.0)
    n_utts = 50  # about 60 s of input
    speech = make_speech([300 + 30 * i for i in range(n_utts)], durations=0.7, gap_s=0.5)
    assert speech.seconds > 59
    config = cfg(server, max_session_s=6.0, renew_margin_s=4.0, trailing_silence_s=0.5)
    events, _ = await stream(config, speech, pace=8.0)
    renewals = [e for e in events if isinstance(e, SessionRenewed)]
    assert len(renewals) >= 10
    assert freqs(events) == speech.freqs  # complete, in order, no duplicates
    assert all(r.at_pause for r in renewals)
    assert all(c.error is None for c in server.connections)
    # Output timeline is continuous across sessions: no gap longer than one utterance.
    stamps = [(e.start_s, e.stop_s) for e in events if isinstance(e, AudioOut)]
    assert all(b[0] >= a[0] for a, b in itertools.pairwise(stamps))
    gaps = [b[0] - a[1] for a, b in itertools.pairwise(stamps)]
    assert max(gaps) <= 0.7 + 0.08


async def test_forced_switch_at_cap_without_pause(make_server):
    server = await make_server(max_session_s=4.0)
    speech = make_speech([300, 600, 900], durations=[1.0, 6.0, 1.0], gap_s=0.5)
    config = cfg(server, max_session_s=4.0, renew_margin_s=2.5, trailing_silence_s=0.5)
    events, _ = await stream(config, speech)
    renewals = [e for e in events if isinstance(e, SessionRenewed)]
    assert renewals and not all(r.at_pause for r in renewals)
    got = freqs(events)
    assert set(got) == {300, 600, 900}
    assert all(c.error is None for c in server.connections)


async def test_update_switches_language_at_a_pause(echo_server):
    speech = make_speech([300 + 50 * i for i in range(10)], durations=0.5, gap_s=0.5)
    events: list = []
    async with S2SSession(cfg(echo_server)) as session:

        async def feed():
            n = 960
            for i in range(0, speech.samples.size, n):
                await session.send_audio(speech.samples[i : i + n])
                await asyncio.sleep(0.01)
                if i == n * 60:  # ~2.4 s in, inside an utterance or a pause
                    await session.update(target_language="es")
            await session.end_input()

        feeder = asyncio.create_task(feed())
        async for ev in session:
            events.append(ev)
        await feeder
    langs = [parse_echo(t)[0] for t in texts(events)]
    assert freqs(events) == speech.freqs
    assert langs[0] == "fr" and langs[-1] == "es"
    assert langs == sorted(langs, key=lambda lang: lang == "es")  # fr ... fr es ... es
    renewed = [e for e in events if isinstance(e, SessionRenewed)]
    assert len(renewed) == 1 and renewed[0].reason == "update" and renewed[0].target_language == "es"
    assert echo_server.connections[1].setup["json_config"]["target_language"] == "es"
    assert session.config.target_language == "es"


async def test_slow_consumer_bounds_memory(echo_server):
    speech = make_speech([300 + 20 * i for i in range(30)], durations=0.9, gap_s=0.3)
    config = cfg(echo_server, output_queue_size=64)
    tracemalloc.start()
    client_bytes = 0

    async def consume_delay(ev):
        nonlocal client_bytes
        if not client_bytes and isinstance(ev, AudioOut):
            await asyncio.sleep(10)
            # Memory held by the client side only (the server runs in this process too).
            snap = tracemalloc.take_snapshot().filter_traces(
                [
                    tracemalloc.Filter(True, "*gradium_plugins/session.py"),
                    tracemalloc.Filter(True, "*aiohttp*"),
                ]
            )
            client_bytes = sum(stat.size for stat in snap.statistics("filename"))

    try:
        events, _session = await stream(config, speech, consume_delay=consume_delay)
    finally:
        tracemalloc.stop()
    assert freqs(events) == speech.freqs
    produced = sum(e.duration_s for e in events if isinstance(e, AudioOut)) * 48000 * 2
    # ~2.6 MB of audio was produced while the consumer slept; the session holds at most
    # output_queue_size events (64 x 7.7 KB = 0.5 MB) plus aiohttp's read buffers (~0.6 MB).
    assert produced > 2.4e6
    assert 0 < client_bytes < 1.5e6, client_bytes


async def test_input_buffered_while_reconnecting_is_not_dropped(make_server):
    # Reconnect takes a while (first attempts refused by a rejecting fault = retryable 1011).
    plans = {
        0: FaultPlan(abort_after_messages=3),
        1: FaultPlan(close_after_messages=0, close_code=1011),
        2: FaultPlan(close_after_messages=0, close_code=1011),
    }
    server = await make_server(faults=lambda i: plans.get(i))
    speech = make_speech([300 + 50 * i for i in range(6)])
    events, session = await stream(cfg(server, reconnect_backoff_s=0.3), speech, pace=4.0)
    assert set(freqs(events)) == set(speech.freqs)
    rec = [e for e in events if isinstance(e, Reconnected)]
    assert rec and rec[0].attempts == 3
    assert session.input_seconds == pytest.approx(speech.seconds + 2.0, abs=0.2)


async def test_start_connects_in_background_and_buffers_input(make_server):
    # The first connection attempt fails (close 1011 right after the handshake): start() retries
    # while send_audio() buffers, and nothing is lost.
    server = await make_server(
        faults=lambda i: FaultPlan(close_after_messages=0, close_code=1011) if i == 0 else None
    )
    speech = make_speech([300 + 50 * i for i in range(4)])
    session = S2SSession(cfg(server, reconnect_backoff_s=0.2))
    await session.start()
    await session.send_audio(speech.samples)  # returns at once, before any connection is ready
    await session.end_input()
    events = [ev async for ev in session]
    assert freqs(events) == speech.freqs
    assert len(server.connections) == 2
    await session.aclose()


async def test_start_reports_an_unreachable_server_from_iteration():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = S2SConfig(
        target_language="fr",
        url=f"ws://127.0.0.1:{port}/api/speech/s2s",
        max_reconnect_attempts=2,
        reconnect_backoff_s=0.05,
    )
    session = S2SSession(config)
    await session.start()
    await session.send_audio(np.zeros(2400, np.int16))
    with pytest.raises(ConnectionLostError, match="could not connect"):
        async for _ in session:
            pass
    with pytest.raises(ConnectionLostError):
        await session.send_audio(np.zeros(2400, np.int16))
    await session.aclose()


class _SplittingSession:
    """A service that sends a partial text as soon as an utterance starts and the final text with its
    audio 0.6 s after the utterance ends: more texts than utterances, and output that lags the input."""

    def __init__(self) -> None:
        from gradium_plugins.audio import PauseDetector

        self.det = PauseDetector(24000, threshold_dbfs=-40, min_pause_s=0.25)

    async def run(self, audio):
        from gradium_plugins.local import Utterance, dominant_frequency

        pending: list = []
        buf = []
        n = 0
        async for chunk in audio:
            buf.append(chunk)
            for kind, _ in self.det.push(chunk):
                if kind == "start":
                    n += 1
                    yield Utterance(text=f"partial {n}", audio=np.zeros(0, np.int16))
                else:
                    pending.append((time.monotonic() + 0.6, n, np.concatenate(buf)))
                    buf = []
            while pending and pending[0][0] <= time.monotonic():
                _, k, samples = pending.pop(0)
                freq = dominant_frequency(samples[-9600:], 24000)
                yield Utterance(
                    text=f"[fr] utterance {k} (0.50 s, {freq} Hz)", audio=np.zeros(3840, np.int16)
                )
        for _, k, samples in pending:
            freq = dominant_frequency(samples[-9600:], 24000)
            yield Utterance(text=f"[fr] utterance {k} (0.50 s, {freq} Hz)", audio=np.zeros(3840, np.int16))

    async def aclose(self) -> None:
        pass


async def test_split_texts_and_late_output_do_not_lose_the_utterance_in_flight(make_server):
    from gradium_plugins.local import Engine

    class SplittingEngine(Engine):
        name = "splitting"

        def open(self, setup):
            return _SplittingSession()

    speech = make_speech([300, 500, 700, 900], durations=0.5, gap_s=1.0)
    # Abort the first connection 0.45 s after the third utterance ended: the client has already seen
    # that utterance end, the service has sent only its partial text (5 texts for 3 utterances).
    end3 = speech.starts[2] + 0.5
    server = await make_server(
        engine=SplittingEngine(),
        faults=lambda i: FaultPlan(abort_after_input_s=end3 + 0.45) if i == 0 else None,
    )
    events, _ = await stream(cfg(server), speech, pace=1.0)
    finals = [t for t in texts(events) if t.startswith("[fr]")]
    got = {parse_echo(t)[3] for t in finals}
    assert [e for e in events if isinstance(e, Reconnected)]
    assert got == {300, 500, 700, 900}, finals
