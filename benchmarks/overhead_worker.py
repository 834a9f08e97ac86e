"""One worker of the client-overhead benchmark: N streams of one client, in its own process.

Run by `client_overhead.py` as `python benchmarks/overhead_worker.py '<spec as JSON>'`; prints one
`RESULT {...}` line. Every stream is fed 24 kHz s16le audio in 20 ms frames at real time (what
Pipecat and LiveKit hand over), consumes the 48 kHz output and records the latency of every output
audio message. The clients:

* `ours`: `S2SSession` through its public API only (`async with`, `send_audio` per 20 ms frame,
  `end_input`, iteration): it re-chunks to 80 ms itself.
* `sdk`: the official `gradium` SDK's `s2s_realtime`, fed 80 ms chunks as its documentation shows.
* `sdk20`: the same SDK fed each 20 ms frame as it comes (four times the messages).
* `floor`: the unavoidable work only: one aiohttp WebSocket per stream, base64 + JSON + one send per
  80 ms chunk, JSON + base64 per received message.

Latency: the server (`python -m gradium_plugins.local --stamp`) sends `time.perf_counter_ns()` as
the `stream_id` of each audio message, a field every client hands to its caller, so no client is
instrumented. On Linux `perf_counter` is `CLOCK_MONOTONIC`, one clock for every process.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import importlib
import json
import os
import resource
import sys
import time
from array import array
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import numpy as np

CLIENTS = ("ours", "sdk", "sdk20", "floor")
FRAME_S = 0.02  # input frames handed to the clients, as a framework would (Pipecat / LiveKit: 20 ms)
CHUNK_FRAMES = 4  # 80 ms chunks on the wire
IN_RATE = 24000
OUT_RATE = 48000
LATE_S = 0.02  # a frame handed over a whole frame period behind schedule is late
LATE_STREAM_FRACTION = 0.01
LOST_OUTPUT_FRACTION = 0.8
WARMUP_S = 1.0
RESULT_PREFIX = "RESULT "
_NS = 1e-9


# --- measurement helpers -------------------------------------------------------------------


def cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _sys_s() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_stime


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int:
    """Current resident set size (Linux /proc; elsewhere the peak from getrusage)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def shared_clock() -> bool:
    """True when `time.perf_counter()` is one clock for every process (Linux CLOCK_MONOTONIC)."""
    info = time.get_clock_info("perf_counter")
    return sys.platform.startswith("linux") and "CLOCK_MONOTONIC" in info.implementation


def pct(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    idx = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[idx]


def _round(v: float | None, nd: int = 3) -> float | None:
    return None if v is None else round(v, nd)


# --- input signal ------------------------------------------------------------------------


def make_frames(duration_s: float) -> tuple[list[bytes], float]:
    """Synthetic speech cut into 20 ms s16le frames at 24 kHz, and the seconds of speech in it.

    Speech is a 1.0 s tone followed by 0.6 s of silence, repeated; the last 0.7 s are silent so
    the echo engine answers the last utterance before the input ends.
    """
    n = round(duration_s / FRAME_S) * round(IN_RATE * FRAME_S)
    t = np.arange(n) / IN_RATE
    period, speech = 1.6, 1.0
    phase = np.mod(t, period)
    on = (phase < speech) & (t < duration_s - 0.7)
    fade = np.clip(np.minimum(phase, speech - phase) / 0.005, 0.0, 1.0)
    wave = 0.3 * np.sin(2 * np.pi * 330.0 * t) * fade * on
    pcm = np.round(wave * 32767).astype("<i2").tobytes()
    step = round(IN_RATE * FRAME_S) * 2
    frames = [pcm[i : i + step] for i in range(0, len(pcm), step)]
    return frames, float(on.sum()) / IN_RATE


# --- clients -----------------------------------------------------------------------------


class Stream:
    """One benchmark stream: feed frames, consume output, record what happened.

    `lat` receives pairs (arrival at the caller in ns, server stamp in ns).
    """

    def __init__(self, index: int, lat: array[int]) -> None:
        self.index = index
        self.lat = lat
        self.out_bytes = 0
        self.eos = False
        self.error: str | None = None
        self.late = 0
        self.fed = 0

    async def open(self) -> None:
        raise NotImplementedError

    async def feed(self, frame: bytes) -> None:
        raise NotImplementedError

    async def finish(self) -> None:
        raise NotImplementedError

    async def consume(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


Factory = tuple[Callable[[int, "array[int]"], Stream], Callable[[], Awaitable[None]]]


def _unlimited_session() -> aiohttp.ClientSession:
    """A ClientSession for many streams: the default connector stops at 100 connections."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))


def ours_factory(url: str, shared_http: bool) -> Factory:
    from gradium_plugins import AudioOut, EndOfStream, S2SConfig, S2SSession

    config = S2SConfig(target_language="fr", url=url, api_key=None)
    http: list[aiohttp.ClientSession] = []

    class Ours(Stream):
        async def open(self) -> None:
            kw: dict[str, Any] = {}
            if shared_http:
                if not http:
                    http.append(_unlimited_session())
                kw["http_session"] = http[0]
            self.stack = contextlib.AsyncExitStack()
            self.session = await self.stack.enter_async_context(S2SSession(config, **kw))

        async def feed(self, frame: bytes) -> None:
            await self.session.send_audio(frame, IN_RATE)

        async def finish(self) -> None:
            await self.session.end_input()

        async def consume(self) -> None:
            lat, clock = self.lat, time.perf_counter_ns
            async for ev in self.session:
                if type(ev) is AudioOut:
                    lat.append(clock())
                    lat.append(ev.stream_id or 0)
                    self.out_bytes += len(ev.pcm)
                elif type(ev) is EndOfStream:
                    self.eos = True

        async def close(self) -> None:
            await self.stack.aclose()

    async def cleanup() -> None:
        if http:
            await http.pop().close()

    return Ours, cleanup


def sdk_factory(url: str, chunk_frames: int) -> Factory:
    client_mod = importlib.import_module("gradium.client")
    host = url.split("://", 1)[1].split("/", 1)[0]
    if not host.startswith("127.0.0.1:"):
        raise SystemExit(f"the SDK client must talk to 127.0.0.1 only, not {host}")
    # The SDK joins its route onto the base URL and swaps http for ws: ws://127.0.0.1:P/api/speech/s2s.
    client = client_mod.GradiumClient(base_url=f"http://{host}/api/", api_key="local-bench")
    setup = {
        "model_name": "default",
        "input_format": "pcm",
        "output_format": "pcm",
        "json_config": {"target_language": "fr"},
    }

    class Sdk(Stream):
        async def open(self) -> None:
            self.buf: list[bytes] = []
            self.s2s = client.s2s_realtime(**setup)
            await self.s2s.__aenter__()  # opens its own aiohttp session + WebSocket, sends setup

        async def feed(self, frame: bytes) -> None:
            if chunk_frames == 1:
                await self.s2s.send_audio(frame)
                return
            buf = self.buf
            buf.append(frame)
            if len(buf) == chunk_frames:
                self.buf = []
                await self.s2s.send_audio(b"".join(buf))

        async def finish(self) -> None:
            if self.buf:
                await self.s2s.send_audio(b"".join(self.buf))
                self.buf = []
            await self.s2s.send_eos()

        async def consume(self) -> None:
            lat, clock = self.lat, time.perf_counter_ns
            async for msg in self.s2s:
                kind = msg["type"]
                if kind == "audio":
                    lat.append(clock())
                    lat.append(msg.get("stream_id") or 0)
                    self.out_bytes += len(msg["audio"])
                elif kind == "end_of_stream":
                    self.eos = True
                    break

        async def close(self) -> None:
            await self.s2s.__aexit__(None, None, None)

    async def cleanup() -> None:
        pass

    return Sdk, cleanup


def floor_factory(url: str) -> Factory:
    setup = json.dumps(
        {
            "type": "setup",
            "model_name": "default",
            "input_format": "pcm",
            "output_format": "pcm",
            "json_config": {"target_language": "fr"},
        }
    )
    http: list[aiohttp.ClientSession] = []

    class Floor(Stream):
        async def open(self) -> None:
            if not http:
                http.append(_unlimited_session())
            self.buf: list[bytes] = []
            self.ws = await http[0].ws_connect(url, compress=0)
            await self.ws.send_str(setup)

        async def feed(self, frame: bytes) -> None:
            buf = self.buf
            buf.append(frame)
            if len(buf) == CHUNK_FRAMES:
                self.buf = []
                b64 = base64.b64encode(b"".join(buf)).decode()
                await self.ws.send_str(json.dumps({"type": "audio", "audio": b64}))

        async def finish(self) -> None:
            if self.buf:
                b64 = base64.b64encode(b"".join(self.buf)).decode()
                await self.ws.send_str(json.dumps({"type": "audio", "audio": b64}))
            await self.ws.send_str('{"type":"end_of_stream"}')

        async def consume(self) -> None:
            lat, clock = self.lat, time.perf_counter_ns
            async for msg in self.ws:
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    continue
                data = json.loads(msg.data)
                kind = data["type"]
                if kind == "audio":
                    pcm = base64.b64decode(data["audio"])
                    lat.append(clock())
                    lat.append(data.get("stream_id") or 0)
                    self.out_bytes += len(pcm)
                elif kind == "end_of_stream":
                    self.eos = True
                    break
                elif kind == "error":
                    raise RuntimeError(f"server error: {data.get('message')}")

        async def close(self) -> None:
            await self.ws.close()

    async def cleanup() -> None:
        if http:
            await http.pop().close()

    return Floor, cleanup


def make_factory(client: str, url: str, shared_http: bool) -> Factory:
    if client == "ours":
        return ours_factory(url, shared_http)
    if client == "sdk":
        return sdk_factory(url, CHUNK_FRAMES)
    if client == "sdk20":
        return sdk_factory(url, 1)
    if client == "floor":
        return floor_factory(url)
    raise SystemExit(f"unknown client {client!r}")


# --- the run ---------------------------------------------------------------------------------


@dataclass
class WorkerSpec:
    """What one worker process runs."""

    client: str
    n: int
    duration_s: float
    url: str
    shared_http: bool = False
    profile: str | None = None


async def _guard(s: Stream, what: str, step: Awaitable[None]) -> None:
    """Run one step of a stream; a failure is recorded on the stream, not fatal to the run."""
    if s.error is not None:
        step.close()  # type: ignore[attr-defined]
        return
    try:
        await step
    except Exception as exc:  # noqa: BLE001 - any client failure is a lost stream, counted below
        s.error = f"{what}: {type(exc).__name__}: {exc}"


async def run_streams(spec: WorkerSpec) -> dict[str, Any]:
    frames, speech_s = make_frames(spec.duration_s)
    factory, cleanup = make_factory(spec.client, spec.url, spec.shared_http)
    lat: array[int] = array("q")  # pairs: (arrival at the caller, server stamp), ns
    streams = [factory(i, lat) for i in range(spec.n)]
    gc.collect()
    rss0 = rss_bytes()
    rss_peak = rss0
    cpu0 = cpu_s()
    wall0 = time.perf_counter()

    # Connect a bounded number at a time, as a worker starting up would.
    gate = asyncio.Semaphore(32)

    async def open_one(s: Stream) -> None:
        async with gate:
            await _guard(s, "open", asyncio.wait_for(s.open(), 30.0))

    await asyncio.gather(*(open_one(s) for s in streams))
    connect_s = time.perf_counter() - wall0
    consumers = [asyncio.ensure_future(_guard(s, "consume", s.consume())) for s in streams]
    n_frames = len(frames)
    groups = 4
    # Spread the streams over 16 instants per 80 ms (4 frame phases x 4 chunk phases): live
    # streams do not all start on the same 5 ms, and synchronised bursts would hide the real cost.
    t0 = time.perf_counter() + 0.05
    window: dict[str, float] = {}
    # Skip the start-up (all streams begin at once); short smoke runs keep most of their frames.
    warm_frames = round(min(WARMUP_S, spec.duration_s / 4) / FRAME_S)
    lags: array[float] = array("d")  # how late each tick woke up: event-loop stalls

    async def ticker(g: int, members: list[Stream]) -> None:
        clock = time.perf_counter
        for k in range(n_frames + CHUNK_FRAMES):
            due = t0 + g * FRAME_S / groups + k * FRAME_S
            delay = due - clock()
            if delay > 0:
                await asyncio.sleep(delay)
            steady = k >= warm_frames
            if steady:
                lags.append(clock() - due)
            if g == 0 and k == warm_frames:
                window["cpu0"], window["sys0"], window["t0"] = cpu_s(), _sys_s(), clock()
            for s in members:
                j = k - s.index // groups % CHUNK_FRAMES
                if j < 0 or j >= n_frames or s.error is not None:
                    continue
                try:
                    await s.feed(frames[j])
                except Exception as exc:  # noqa: BLE001 - a failed stream is counted, not fatal
                    s.error = f"feed: {type(exc).__name__}: {exc}"
                    continue
                s.fed += 1
                if steady and clock() - due > LATE_S:
                    s.late += 1

    async def sampler(stop: asyncio.Event) -> None:
        nonlocal rss_peak
        while not stop.is_set():
            rss_peak = max(rss_peak, rss_bytes())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.25)

    stop = asyncio.Event()
    sampling = asyncio.ensure_future(sampler(stop))
    await asyncio.gather(*(ticker(g, streams[g::groups]) for g in range(groups)))
    window["cpu1"], window["sys1"], window["t1"] = cpu_s(), _sys_s(), time.perf_counter()

    await asyncio.gather(*(_guard(s, "finish", s.finish()) for s in streams))
    _, pending = await asyncio.wait(consumers, timeout=15.0 + spec.duration_s)
    for task in pending:
        task.cancel()
    for s in streams:
        if not s.eos and s.error is None:
            s.error = "no end_of_stream within the drain timeout"
    rss_peak = max(rss_peak, rss_bytes())
    stop.set()
    await sampling
    cpu_done = cpu_s()
    wall_done = time.perf_counter()

    async def close_one(s: Stream) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(s.close(), 5.0)

    await asyncio.gather(*(close_one(s) for s in streams))
    await cleanup()
    await asyncio.sleep(0.05)

    # Latency over the steady window only: the start-up and the end (end_input's trailing
    # silence is sent at once by ours) are not what a long-running worker sees.
    lo, hi = window["t0"] / _NS, window["t1"] / _NS
    lat_ms = [(lat[i] - lat[i + 1]) / 1e6 for i in range(0, len(lat), 2) if lo <= lat[i] <= hi and lat[i + 1]]
    # A stamp later than its arrival means the two processes do not share a clock: report nothing.
    clock_ok = shared_clock() and bool(lat_ms) and min(lat_ms) >= 0.0
    if not clock_ok:
        lat_ms = []
    expected_out = speech_s * OUT_RATE * 2
    lost = [s for s in streams if s.error is not None or s.out_bytes < LOST_OUTPUT_FRACTION * expected_out]
    late = [s for s in streams if s.late > LATE_STREAM_FRACTION * max(1, s.fed)]
    steady_s = window["t1"] - window["t0"]
    n = spec.n
    return {
        "client": spec.client,
        "n": n,
        "duration_s": spec.duration_s,
        "connect_s": round(connect_s, 3),
        "cpu_steady_s": round(window["cpu1"] - window["cpu0"], 4),
        "steady_wall_s": round(steady_s, 3),
        "cpu_ms_per_stream_s": round((window["cpu1"] - window["cpu0"]) / (n * steady_s) * 1000.0, 4),
        "cpu_sys_ms_per_stream_s": round((window["sys1"] - window["sys0"]) / (n * steady_s) * 1000.0, 4),
        "cpu_total_s": round(cpu_done - cpu0, 4),
        "cpu_total_ms_per_stream_s": round((cpu_done - cpu0) / (n * spec.duration_s) * 1000.0, 4),
        "cpu_util_steady": round((window["cpu1"] - window["cpu0"]) / steady_s, 4),
        "wall_total_s": round(wall_done - wall0, 3),
        "lat_count": len(lat_ms),
        "lat_p50_ms": _round(pct(lat_ms, 50)),
        "lat_p99_ms": _round(pct(lat_ms, 99)),
        "lat_max_ms": _round(max(lat_ms) if lat_ms else None),
        "tick_lag_p99_ms": _round(pct([v * 1000.0 for v in lags], 99)),
        "tick_lag_max_ms": _round(max(lags) * 1000.0 if lags else None),
        "rss_base_mb": round(rss0 / 2**20, 2),
        "rss_peak_mb": round(rss_peak / 2**20, 2),
        "rss_mb_per_session": round((rss_peak - rss0) / 2**20 / n, 4),
        "frames_fed": sum(s.fed for s in streams),
        "frames_late": sum(s.late for s in streams),
        "streams_late": len(late),
        "streams_lost": len(lost),
        "output_ratio": round(sum(s.out_bytes for s in streams) / max(1.0, expected_out * n), 4),
        "errors": sorted({s.error for s in streams if s.error})[:5],
    }


def main(argv: list[str]) -> int:
    spec = WorkerSpec(**json.loads(argv[0]))
    if spec.profile:
        import cProfile

        prof = cProfile.Profile(time.process_time)  # CPU time: wall time would count preemption
        prof.enable()
        result = asyncio.run(run_streams(spec))
        prof.disable()
        prof.dump_stats(spec.profile)
    else:
        result = asyncio.run(run_streams(spec))
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
