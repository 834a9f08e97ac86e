"""The session state machine without sockets: a simulated clock and a simulated service.

The simulated service hears the audio the machine sends (base64 in JSON, as on the wire), finds
utterances with a pause detector and answers each, after a latency, with a text naming it and
voiced audio. An utterance is a constant level (1000 + 100 k), so the answer says which one it
was across reconnects. Hypothesis draws fault sequences (connections that fail at random moments,
refuse to open, or never send ready) and checks the invariants the driver relies on.
"""

from __future__ import annotations

import base64
import json
import random
from dataclasses import dataclass, field

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gradium_plugins import ConnectionLostError, S2SConfig
from gradium_plugins.actions import Close, Open, Ping, Send
from gradium_plugins.audio import PauseDetector
from gradium_plugins.backoff import Backoff
from gradium_plugins.connstate import ConnState
from gradium_plugins.errors import ServerError
from gradium_plugins.events import TranslationCompleted, TranslationSkipped, UpdateRejected
from gradium_plugins.machine import SessionMachine
from gradium_plugins.protocol import AudioOut, EndOfStream, Ready, TextOut

CHUNK = 1920  # 80 ms at 24 kHz


def speech_chunks(n_utts: int, utt_chunks: int = 6, gap_chunks: int = 8) -> list[np.ndarray]:
    chunks = [np.zeros(CHUNK, np.int16) for _ in range(gap_chunks)]
    for k in range(n_utts):
        chunks += [np.full(CHUNK, 1000 + 100 * k, np.int16) for _ in range(utt_chunks)]
        chunks += [np.zeros(CHUNK, np.int16) for _ in range(gap_chunks)]
    return chunks


@dataclass
class SimConn:
    det: PauseDetector = field(default_factory=lambda: PauseDetector(24000))
    levels: list[int] = field(default_factory=list)
    answers: list[tuple[float, int]] = field(default_factory=list)  # (due, utterance)
    eos: bool = False


class Sim:
    """Runs a machine against a simulated service; ``fate(n)`` decides what connection n does."""

    def __init__(self, machine: SessionMachine, fate, latency: float = 0.6) -> None:
        self.m = machine
        self.fate = fate
        self.latency = latency
        self.now = 0.0
        self.conns: dict[int, SimConn] = {}
        self.pending_open: list[tuple[float, int, str]] = []  # (due, conn, outcome)
        self.events: list = []
        self.opened = 0

    def act(self) -> None:
        for a in self.m.take_actions():
            if isinstance(a, Open):
                self.opened += 1
                outcome = self.fate(self.opened)
                self.pending_open.append((self.now + 0.05, a.conn, outcome))
            elif isinstance(a, Send):
                sim = self.conns.get(a.conn)
                if sim is None:
                    continue
                msg = json.loads(a.text)
                if msg["type"] == "end_of_stream":
                    assert a.eos
                    sim.eos = True
                    self.m.eos_sent(a.conn, self.now)
                    continue
                pcm = np.frombuffer(base64.b64decode(msg["audio"]), np.int16)
                for kind, _ in sim.det.push(pcm):
                    if kind == "start":
                        sim.levels.append(int(pcm.max()))
                    else:
                        k = (sim.levels[-1] - 1000) // 100
                        sim.answers.append((self.now + self.latency, k))
            elif isinstance(a, Close):
                self.conns.pop(a.conn, None)
            elif isinstance(a, Ping):
                self.m.alive(a.conn, self.now)

    def step(self, dt: float) -> None:
        self.now += dt
        for item in [p for p in self.pending_open if p[0] <= self.now]:
            self.pending_open.remove(item)
            _, cid, outcome = item
            if outcome == "refuse":
                self.m.failed(cid, ConnectionLostError("refused"), self.now)
                continue
            self.conns[cid] = SimConn()
            self.m.opened(cid, self.now)
            if outcome != "no_ready":
                self.m.receive(cid, Ready("r", 48000), self.now)
        for cid, sim in list(self.conns.items()):
            while sim.answers and sim.answers[0][0] <= self.now:
                _, k = sim.answers.pop(0)
                self.m.receive(cid, TextOut(f"utt {k}"), self.now)
                self.m.receive(cid, AudioOut(np.full(3840, 500, np.int16).tobytes(), 48000), self.now)
            if sim.eos and not sim.answers and cid in self.conns:
                self.m.receive(cid, EndOfStream(), self.now)
        self.act()
        deadline = self.m.next_deadline()
        if deadline is not None and deadline <= self.now:
            self.m.tick(self.now)
            self.act()
        self.drain()

    def drain(self) -> None:
        while (ev := self.m.next_event()) is not None:
            self.events.append(ev)
        # The driver wakes the consumer on this count: it must match what is queued.
        queued = sum(len(c.out) for c in self.m.outputs.order)
        assert self.m.outputs.count >= queued

    def fail(self, cid: int, how: str = "lost") -> None:
        lost = ConnectionLostError("drop")
        err = ServerError("crash", code=1011, retryable=True) if how == "error" else lost
        self.m.failed(cid, err, self.now)
        self.act()

    def texts(self) -> list[int]:
        return [int(e.text.split()[1]) for e in self.events if isinstance(e, TextOut)]

    def has_work_without_deadline(self) -> bool:
        """The freeze: something must still happen, yet nothing is scheduled or in flight."""
        m = self.m
        if m.fatal is not None or m.done:
            return False
        in_flight = bool(self.pending_open) or any(s.answers or s.eos for s in self.conns.values())
        work = m.pending_input_chunks > 0 or m.active is None or (m.input_ended and not m.done)
        return work and not in_flight and m.next_deadline() is None


def config(**kw) -> S2SConfig:
    kw.setdefault("target_language", "fr")
    kw.setdefault("url", "ws://127.0.0.1:9/api/speech/s2s")
    kw.setdefault("reconnect_backoff_s", 0.05)
    kw.setdefault("reconnect_backoff_max_s", 0.4)
    kw.setdefault("trailing_silence_s", 0.4)
    kw.setdefault("heartbeat_interval", None)
    return S2SConfig(**kw)


def run_stream(sim: Sim, chunks: list[np.ndarray], faults: dict[int, str] | None = None, max_s: float = 120):
    """Feed chunks at real time (one per 80 ms step), injecting ``faults[step]`` on the active connection."""
    sim.m.start(sim.now)
    sim.act()
    faults = faults or {}
    for i, chunk in enumerate(chunks):
        sim.m.push_input([chunk], sim.now)
        sim.act()
        if i in faults and sim.m.active is not None:
            sim.fail(sim.m.active.id, faults[i])
        sim.step(0.08)
        assert not sim.has_work_without_deadline()
    sim.m.end_input([], sim.now)
    sim.act()
    while not sim.m.finished and sim.now < max_s:
        sim.step(0.05)
        assert not sim.has_work_without_deadline()
    sim.drain()


def test_happy_path_pairs_every_utterance_with_its_translation():
    sim = Sim(SessionMachine(config()), lambda n: "ok")
    run_stream(sim, speech_chunks(5))
    assert sim.texts() == [0, 1, 2, 3, 4]
    done = [e for e in sim.events if isinstance(e, TranslationCompleted)]
    assert [e.utterance for e in done] == [0, 1, 2, 3, 4]
    # Output 0.6 s after the end of speech is sent (the end is known one pause later).
    assert all(e.time_to_first_audio is not None and 0.2 < e.time_to_first_audio < 1.2 for e in done)
    assert isinstance(sim.events[-1], EndOfStream) and isinstance(sim.events[0], Ready)


def test_untranslated_noise_burst_shifts_no_later_pairing():
    """The service ignores utterance 1: its skip costs one pairing, later TTFAs stay true."""
    sim = Sim(SessionMachine(config()), lambda n: "ok")
    chunks = speech_chunks(6, gap_chunks=60)  # long pauses: the skip window passes before utterance 2

    orig_act = sim.act

    def act_dropping_utt1() -> None:
        orig_act()
        for s in sim.conns.values():
            s.answers = [a for a in s.answers if a[1] != 1]

    sim.act = act_dropping_utt1  # type: ignore[method-assign]
    run_stream(sim, chunks)
    done = {e.utterance: e for e in sim.events if isinstance(e, TranslationCompleted)}
    skipped = [e.utterance for e in sim.events if isinstance(e, TranslationSkipped)]
    assert skipped == [1]
    assert sorted(done) == [0, 2, 3, 4, 5]
    assert all(e.time_to_first_audio is not None and e.time_to_first_audio < 1.2 for e in done.values())


def test_reconnect_replays_only_untranslated_utterances():
    sim = Sim(SessionMachine(config()), lambda n: "ok")
    chunks = speech_chunks(6)
    # Fail while utterance 3 is being spoken (step 8 + 3*14 + 3).
    run_stream(sim, chunks, faults={8 + 3 * 14 + 3: "lost"})
    got = sim.texts()
    assert sorted(set(got)) == [0, 1, 2, 3, 4, 5]
    assert len(got) - len(set(got)) <= 1  # at most the utterance in flight


def test_failure_budget_spans_reconnects_that_fail_right_after_ready():
    """Connections that become ready and then fail at once do not reset the budget (no storm)."""
    m = SessionMachine(config(max_reconnect_attempts=4), rng=random.Random(1))
    sim = Sim(m, lambda n: "ok")
    m.start(0.0)
    sim.act()
    for _ in range(200):
        sim.step(0.05)
        if m.active is not None and m.active.state is ConnState.READY:
            sim.fail(m.active.id)
        if m.fatal is not None:
            break
    assert m.fatal is not None and "in a row failed" in m.fatal.message
    assert sim.opened == 5  # the first + 4 reconnects


def test_healthy_connection_forgives_earlier_failures():
    b = Backoff(0.1, 5.0, 3, None, rng=random.Random(0))
    assert b.failure(0.0) is not None and b.failure(1.0) is not None
    b.connected(2.0)
    assert b.failure(2.5) is not None  # up only 0.5 s: still the same streak (3rd failure)
    b.connected(3.0)
    assert b.failure(20.0) is not None and b.failures == 1  # healthy for 17 s: a new streak


def test_persistent_machine_never_gives_up_on_network_failures_and_bounds_input():
    m = SessionMachine(config(max_pending_input_s=2.0), persistent=True, rng=random.Random(2))
    sim = Sim(m, lambda n: "refuse")
    m.start(0.0)
    sim.act()
    for _ in range(200):
        m.push_input([np.zeros(CHUNK, np.int16)], sim.now)
        sim.act()
        sim.step(0.08)
        assert not sim.has_work_without_deadline()
    assert m.fatal is None
    assert m.retained_chunks <= round(2.0 / 0.08) + 1
    sim.drain()
    assert any(type(e).__name__ == "InputDropped" for e in sim.events)


def test_refused_update_is_reported_and_the_old_connection_carries_on():
    m = SessionMachine(config(), rng=random.Random(3))
    sim = Sim(m, lambda n: "ok")  # the update's standby is refused by hand below
    chunks = speech_chunks(4)
    m.start(0.0)
    sim.act()
    for i, chunk in enumerate(chunks):
        m.push_input([chunk], sim.now)
        sim.act()
        if i == 10:
            m.update(config(voice_id="zzzzzzzzzzzzzzzz"), {"voice_id": "zzzzzzzzzzzzzzzz"}, sim.now)
            standby = m.standby
            assert standby is not None
            sim.act()
            m.failed(standby.id, ServerError("voice not found", code=1008), sim.now)
            sim.act()
        sim.step(0.08)
    m.end_input([], sim.now)
    sim.act()
    while not m.finished and sim.now < 60:
        sim.step(0.05)
    rejected = [e for e in sim.events if isinstance(e, UpdateRejected)]
    assert len(rejected) == 1 and rejected[0].changes == {"voice_id": "zzzzzzzzzzzzzzzz"}
    assert m.config.voice_id != "zzzzzzzzzzzzzzzz"
    assert sim.texts() == [0, 1, 2, 3]


def test_renewal_switches_at_a_pause_without_losing_anything():
    sim = Sim(SessionMachine(config(max_session_s=6.0, renew_margin_s=3.0)), lambda n: "ok")
    run_stream(sim, speech_chunks(12))  # ~13 s of input: two renewals
    assert sim.texts() == list(range(12))
    assert sim.opened >= 3


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    faults=st.dictionaries(st.integers(0, 150), st.sampled_from(["lost", "error"]), max_size=5),
    fates=st.lists(st.sampled_from(["ok", "ok", "ok", "refuse", "no_ready"]), min_size=12, max_size=12),
    latency=st.floats(0.1, 2.0),
    seed=st.integers(0, 1000),
)
def test_random_faults_lose_no_utterance_and_never_stall(faults, fates, latency, seed):
    m = SessionMachine(config(ready_timeout=1.0), persistent=True, rng=random.Random(seed))
    sim = Sim(m, lambda n: fates[n - 1] if n <= len(fates) else "ok", latency=latency)
    n_utts = 8
    run_stream(sim, speech_chunks(n_utts), faults=faults, max_s=300)
    assert m.fatal is None
    assert isinstance(sim.events[-1], EndOfStream)
    got = sim.texts()
    # Nothing lost; each fault may repeat at most the utterance whose translation was in flight,
    # plus the one being spoken when the input was moved back to its start.
    assert set(got) == set(range(n_utts))
    assert len(got) - len(set(got)) <= 2 * (len(faults) + fates.count("no_ready") + fates.count("refuse"))
    assert [k for i, k in enumerate(got) if k not in got[:i]] == list(range(n_utts))


@pytest.mark.parametrize("code", [1000, 1001, 1011, None])
def test_close_codes_are_retryable_connection_losses(code):
    from gradium_plugins.connstate import close_error

    assert close_error(code, "bye", None).retryable


def test_application_and_client_fault_close_codes_are_final():
    from gradium_plugins.connstate import close_error

    for code in (1002, 1003, 1007, 1009, 4000, 4999):
        err = close_error(code, "why", "req")
        assert not err.retryable and "why" in err.message


def test_server_end_of_stream_before_ours_went_out_is_a_failure():
    """Even after end_input(): until our end_of_stream is on the wire, the server's is premature."""
    m = SessionMachine(config(reconnect=False))
    sim = Sim(m, lambda n: "ok")
    m.start(0.0)
    sim.act()
    sim.step(0.1)
    m.push_input(speech_chunks(1), sim.now)
    m.end_input([], sim.now)
    sends = [a for a in m.take_actions() if isinstance(a, Send)]
    assert sends[-1].eos  # queued, not yet confirmed sent
    cid = sends[-1].conn
    m.receive(cid, EndOfStream(), sim.now)
    assert m.fatal is not None and "before the input ended" in m.fatal.message


def _ready_machine(**kw) -> tuple[SessionMachine, Sim, int]:
    m = SessionMachine(config(**kw))
    sim = Sim(m, lambda n: "ok")
    m.start(0.0)
    sim.act()
    sim.step(0.1)
    assert m.active is not None and m.active.state is ConnState.READY
    return m, sim, m.active.id


def test_pongs_keep_a_connection_alive_but_are_not_progress():
    m, sim, cid = _ready_machine(heartbeat_interval=1.0, drain_timeout=3.0, reconnect=False)
    m.end_input([], sim.now)
    for a in m.take_actions():
        if isinstance(a, Send) and a.eos:
            m.eos_sent(cid, sim.now)
    t_eos = sim.now
    failed_at = None
    while sim.now < t_eos + 10 and failed_at is None:
        sim.now += 0.25
        m.alive(cid, sim.now)  # the server answers every ping...
        m.tick(sim.now)
        m.take_actions()
        if m.fatal is not None:
            failed_at = sim.now
    # ... but never finishes: drain_timeout fires on time.
    assert m.fatal is not None and "drain_timeout" in m.fatal.message
    assert failed_at is not None and 3.0 <= failed_at - t_eos <= 3.5


def test_a_missing_pong_ends_the_connection():
    m, sim, _cid = _ready_machine(heartbeat_interval=1.0, reconnect=False)
    pings = 0
    while m.fatal is None and sim.now < 10:
        sim.now += 0.1
        m.tick(sim.now)
        pings += sum(isinstance(a, Ping) for a in m.take_actions())
    assert pings == 1 and m.fatal is not None and "no pong" in m.fatal.message
    assert 2.0 <= sim.now <= 2.4


def test_input_held_at_the_renewal_deadline_always_has_a_deadline():
    """The freeze of issue 11 (1b): the standby is not ready, input must wait on a deadline."""
    m, sim, cid = _ready_machine(max_session_s=6.0, renew_margin_s=3.0, trailing_silence_s=0.4)
    for _ in range(120):  # 9.6 s of input: past the switch deadline
        m.push_input([np.zeros(CHUNK, np.int16)], sim.now)
        sim.now += 0.08
        opens = [a for a in m.take_actions() if isinstance(a, Open)]  # the standby's open never completes
        assert not opens or opens[0].conn != cid
        m.tick(sim.now)
        if m.pending_input_chunks:  # held input: something must be scheduled to release it
            deadline = m.next_deadline()
            assert deadline is not None and deadline > sim.now - 1e-9
    assert m.pending_input_chunks > 0  # held, not sent into the cap
    assert m.standby is not None and m.standby.state is ConnState.OPENING


def test_output_budget_pauses_only_the_connections_behind():
    m, sim, cid = _ready_machine(max_output_buffer_bytes=8192)
    frame = AudioOut(np.full(3840, 500, np.int16).tobytes(), 48000)  # 7680 bytes
    m.receive(cid, frame, sim.now)
    assert m.may_read(cid)  # the connection being delivered may fill the budget on its own
    m.receive(cid, frame, sim.now)
    assert not m.may_read(cid)
    while m.next_event() is not None:
        pass
    assert m.may_read(cid)
