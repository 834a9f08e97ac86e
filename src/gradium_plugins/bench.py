"""Client-overhead benchmark: our :class:`S2SSession`, the official SDK and a minimal floor, side by side.

``gradium-plugins bench`` (small defaults) and ``benchmarks/client_overhead.py`` (the full run) both
call :func:`main`. One run goes like this:

* The local server (echo engine, output paced at real time, every audio message stamped with the
  server's ``time.perf_counter()``) runs in its own process on 127.0.0.1.
* For every N and every client, a worker subprocess opens N streams against it, feeds each one
  24 kHz s16le audio in 20 ms frames at real time for a fixed duration, consumes the 48 kHz output,
  and reports its own CPU time, memory and the latency of every output audio message.
* Clients: ``ours`` (:class:`S2SSession`, fed the 20 ms frames directly: it chunks them to 80 ms
  itself), ``sdk`` (the official ``gradium`` package's ``s2s_realtime`` client, fed 80 ms chunks the
  way its documentation shows) and ``floor`` (the unavoidable work only: one aiohttp WebSocket per
  stream, base64 + ``json.dumps`` + one send per 80 ms chunk, ``json.loads`` + base64 per message).

Figures (per client and N):

* ``cpu_ms_per_stream_s``: worker CPU (user + system, ``getrusage``) over the steady window (all
  streams open and fed; the first second, or quarter of a short run, is skipped) divided by
  stream-seconds of audio fed. The harness's own feeding / consuming loop is inside every figure
  (the same code for all clients), so the floor is "harness + minimal client".
  ``cpu_total_ms_per_stream_s`` covers the whole run: connects, drain and close included.
* ``lat_p50_ms`` / ``lat_p99_ms``: added latency, the server's send stamp to the moment the audio
  event reaches the caller's loop, for events arriving in the steady window. The server is another
  process: both ends read ``time.perf_counter()``, which on Linux is ``CLOCK_MONOTONIC``, one clock
  for the whole system (checked at start-up; elsewhere latency is not reported).
* ``rss_mb_per_session``: (peak sampled RSS during the run - RSS before connecting) / N.
* ``streams_lost`` (failed, no end of stream, or < 80 % of the expected output audio) and
  ``streams_late`` (more than 1 % of input frames handed to the client more than 20 ms behind
  schedule in the steady window: the process could not keep real time). ``tick_lag_*``: how late
  the feeding loop woke up (event-loop stalls).

Results are printed as a table with the ratios ours / SDK and ours / floor, and written as JSON
(and a PNG plot when matplotlib is installed) to the output directory.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import gc
import importlib
import importlib.util
import json
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import time
from array import array
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

CLIENTS = ("ours", "sdk", "floor")
# Optional: the SDK handed each 20 ms frame as it comes (4x the messages; what an integration that
# does not re-chunk would do). Not in the default set: the SDK's documentation shows 80 ms chunks.
EXTRA_CLIENTS = ("sdk20",)
FRAME_S = 0.02  # input frames handed to the clients, as a framework would (Pipecat / LiveKit: 20 ms)
CHUNK_FRAMES = 4  # 80 ms chunks on the wire
IN_RATE = 24000
OUT_RATE = 48000
LATE_S = 0.02  # a frame handed over a whole frame period behind schedule is late
LATE_STREAM_FRACTION = 0.01
LOST_OUTPUT_FRACTION = 0.8
WARMUP_S = 1.0
_STAMP_KEY = ',"server_ts":'
_RESULT_PREFIX = "RESULT "


# --- measurement helpers -------------------------------------------------------------------


def _cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _sys_s() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_stime


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _rss_bytes() -> int:
    """Current resident set size (Linux /proc; elsewhere the peak from getrusage)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _proc_cpu_s(pid: int) -> float | None:
    """CPU seconds used so far by another process (Linux /proc), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK
    except (OSError, IndexError, ValueError):
        return None


def shared_clock() -> bool:
    """True when ``time.perf_counter()`` is one clock for every process (Linux CLOCK_MONOTONIC)."""
    info = time.get_clock_info("perf_counter")
    return sys.platform.startswith("linux") and "CLOCK_MONOTONIC" in info.implementation


def _pct(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    idx = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[idx]


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


class _Stream:
    """One benchmark stream: feed frames, consume output, record what happened."""

    def __init__(self, index: int, lat: array[float]) -> None:
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


def _unlimited_session() -> aiohttp.ClientSession:
    """A ClientSession for many streams: the default connector stops at 100 connections."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))


_Factory = tuple[Callable[[int, "array[float]"], _Stream], Callable[[], Awaitable[None]]]


def _stamp_of(text: str) -> float | None:
    i = text.rfind(_STAMP_KEY)
    if i < 0:
        return None
    j = i + len(_STAMP_KEY)
    k = j
    while k < len(text) and text[k] not in ",}":
        k += 1
    return float(text[j:k])


def _ours_factory(url: str, shared_http: bool) -> _Factory:
    from .config import S2SConfig
    from .protocol import AudioOut, EndOfStream
    from .session import S2SSession, _Connection

    class TimedSession(S2SSession):
        """S2SSession that remembers the server stamp of each audio message, in arrival order."""

        def __init__(self, config: S2SConfig, **kw: Any) -> None:
            super().__init__(config, **kw)
            self.stamps: deque[float] = deque()

        def _handle_message(self, conn: _Connection, data: str) -> bool:
            ts = _stamp_of(data) if data.startswith('{"type":"audio"') else None
            if ts is not None:
                self.stamps.append(ts)
            return super()._handle_message(conn, data)

    config = S2SConfig(target_language="fr", url=url, api_key=None)
    http: list[aiohttp.ClientSession] = []

    class Ours(_Stream):
        async def open(self) -> None:
            kw: dict[str, Any] = {}
            if shared_http:
                if not http:
                    http.append(_unlimited_session())
                kw["http_session"] = http[0]
            self.session = TimedSession(config, **kw)
            await self.session.connect()

        async def feed(self, frame: bytes) -> None:
            await self.session.send_audio(frame, IN_RATE)

        async def finish(self) -> None:
            await self.session.end_input()

        async def consume(self) -> None:
            stamps, lat, clock = self.session.stamps, self.lat, time.perf_counter
            async for ev in self.session:
                if type(ev) is AudioOut:
                    now = clock()
                    self.out_bytes += len(ev.pcm)
                    if stamps:
                        lat.append(now)
                        lat.append(stamps.popleft())
                elif type(ev) is EndOfStream:
                    self.eos = True

        async def close(self) -> None:
            await self.session.aclose()

    async def cleanup() -> None:
        if http:
            await http.pop().close()

    return Ours, cleanup


def _sdk_factory(url: str, chunk_frames: int = CHUNK_FRAMES) -> _Factory:
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

    class Sdk(_Stream):
        async def open(self) -> None:
            self.buf: list[bytes] = []
            self.s2s = client.s2s_realtime(**setup)
            await self.s2s.__aenter__()  # opens its own aiohttp session + WebSocket, sends setup

        async def feed(self, frame: bytes) -> None:
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
            lat, clock = self.lat, time.perf_counter
            async for msg in self.s2s:
                kind = msg["type"]
                if kind == "audio":
                    now = clock()
                    self.out_bytes += len(msg["audio"])
                    ts = msg.get("server_ts")
                    if ts is not None:
                        lat.append(now)
                        lat.append(ts)
                elif kind == "end_of_stream":
                    self.eos = True
                    break

        async def close(self) -> None:
            await self.s2s.__aexit__(None, None, None)

    async def cleanup() -> None:
        pass

    return Sdk, cleanup


def _floor_factory(url: str) -> _Factory:
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

    class Floor(_Stream):
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
            lat, clock = self.lat, time.perf_counter
            async for msg in self.ws:
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    continue
                data = json.loads(msg.data)
                kind = data["type"]
                if kind == "audio":
                    pcm = base64.b64decode(data["audio"])
                    now = clock()
                    self.out_bytes += len(pcm)
                    ts = data.get("server_ts")
                    if ts is not None:
                        lat.append(now)
                        lat.append(ts)
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


# --- worker (one client, N streams, in its own process) -------------------------------------


@dataclass
class WorkerSpec:
    """What one worker process runs."""

    client: str
    n: int
    duration_s: float
    url: str
    shared_http: bool = False
    profile: str | None = None


async def _run_streams(spec: WorkerSpec) -> dict[str, Any]:
    frames, speech_s = make_frames(spec.duration_s)
    if spec.client == "ours":
        factory, cleanup = _ours_factory(spec.url, spec.shared_http)
    elif spec.client == "sdk":
        factory, cleanup = _sdk_factory(spec.url)
    elif spec.client == "sdk20":
        factory, cleanup = _sdk_factory(spec.url, 1)
    elif spec.client == "floor":
        factory, cleanup = _floor_factory(spec.url)
    else:
        raise SystemExit(f"unknown client {spec.client!r}")
    lat: array[float] = array("d")  # pairs: (arrival at the caller, server stamp)
    streams = [factory(i, lat) for i in range(spec.n)]
    gc.collect()
    rss0 = _rss_bytes()
    rss_peak = rss0
    cpu0 = _cpu_s()
    wall0 = time.perf_counter()

    # Connect (a bounded number at a time, as a worker starting up would).
    gate = asyncio.Semaphore(32)

    async def open_one(s: _Stream) -> None:
        async with gate:
            try:
                async with asyncio.timeout(30.0):
                    await s.open()
            except Exception as exc:  # noqa: BLE001 - a failed stream is counted, not fatal
                s.error = f"open: {type(exc).__name__}: {exc}"

    await asyncio.gather(*(open_one(s) for s in streams))
    connect_s = time.perf_counter() - wall0

    async def consume_one(s: _Stream) -> None:
        if s.error is not None:
            return
        try:
            await s.consume()
        except Exception as exc:  # noqa: BLE001 - a failed stream is counted, not fatal
            s.error = f"consume: {type(exc).__name__}: {exc}"

    consumers = [asyncio.ensure_future(consume_one(s)) for s in streams]
    n_frames = len(frames)
    groups = 4
    # Spread the streams over 16 instants per 80 ms (4 frame phases x 4 chunk phases): live
    # streams do not all start on the same 5 ms, and synchronised bursts would hide the real cost.
    t0 = time.perf_counter() + 0.05
    window: dict[str, float] = {}
    # Skip the start-up (all streams begin at once); short smoke runs keep most of their frames.
    warm_frames = round(min(WARMUP_S, spec.duration_s / 4) / FRAME_S)
    lags: array[float] = array("d")  # how late each tick woke up: event-loop stalls

    async def ticker(g: int, members: list[_Stream]) -> None:
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
                window["cpu0"], window["sys0"], window["t0"] = _cpu_s(), _sys_s(), clock()
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
            rss_peak = max(rss_peak, _rss_bytes())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.25)

    stop = asyncio.Event()
    sampling = asyncio.ensure_future(sampler(stop))
    await asyncio.gather(*(ticker(g, streams[g::groups]) for g in range(groups)))
    window["cpu1"], window["sys1"], window["t1"] = _cpu_s(), _sys_s(), time.perf_counter()

    async def finish_one(s: _Stream) -> None:
        if s.error is not None:
            return
        try:
            await s.finish()
        except Exception as exc:  # noqa: BLE001 - a failed stream is counted, not fatal
            s.error = f"finish: {type(exc).__name__}: {exc}"

    await asyncio.gather(*(finish_one(s) for s in streams))
    _, pending = await asyncio.wait(consumers, timeout=15.0 + spec.duration_s)
    for task in pending:
        task.cancel()
    for s in streams:
        if not s.eos and s.error is None:
            s.error = "no end_of_stream within the drain timeout"
    rss_peak = max(rss_peak, _rss_bytes())
    stop.set()
    await sampling
    cpu_done = _cpu_s()
    wall_done = time.perf_counter()

    async def close_one(s: _Stream) -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5.0):
                await s.close()

    await asyncio.gather(*(close_one(s) for s in streams))
    await cleanup()
    await asyncio.sleep(0.05)

    # Latency over the steady window only: the start-up and the end (end_input's trailing
    # silence is sent at once by ours) are not what a long-running worker sees.
    lat_ms = [
        (lat[i] - lat[i + 1]) * 1000.0
        for i in range(0, len(lat), 2)
        if window["t0"] <= lat[i] <= window["t1"]
    ]
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
        "lat_p50_ms": _round(_pct(lat_ms, 50)),
        "lat_p99_ms": _round(_pct(lat_ms, 99)),
        "lat_max_ms": _round(max(lat_ms) if lat_ms else None),
        "tick_lag_p99_ms": _round(_pct([v * 1000.0 for v in lags], 99)),
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


def _round(v: float | None, nd: int = 3) -> float | None:
    return None if v is None else round(v, nd)


def _worker_main(spec: WorkerSpec) -> int:
    if spec.profile:
        import cProfile

        prof = cProfile.Profile(time.process_time)  # CPU time: wall time would count preemption
        prof.enable()
        result = asyncio.run(_run_streams(spec))
        prof.disable()
        prof.dump_stats(spec.profile)
    else:
        result = asyncio.run(_run_streams(spec))
    print(_RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


# --- server process --------------------------------------------------------------------------


def _server_main() -> int:
    from .local import serve

    async def run() -> None:
        server = await serve("127.0.0.1", 0, "echo", stamp=True, output_realtime=True)
        print(f"URL {server.url} {time.perf_counter()!r}", flush=True)
        await server.serve_forever()

    asyncio.run(run())
    return 0


class _Server:
    """The local echo server in a child process."""

    def __init__(self) -> None:
        before = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gradium_plugins.bench", "--serve"],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().split()
        after = time.perf_counter()
        if len(line) != 3 or line[0] != "URL":
            self.close()
            raise RuntimeError("the local server did not start")
        self.url = line[1]
        # Both processes read perf_counter: on a shared clock the child's reading lies in between.
        self.clock_ok = shared_clock() and before <= float(line[2]) <= after

    def cpu_s(self) -> float | None:
        return _proc_cpu_s(self.proc.pid)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5.0)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# --- orchestration -------------------------------------------------------------------------


def run_worker(spec: WorkerSpec, timeout_s: float | None = None) -> dict[str, Any]:
    """Run one worker subprocess and return its result (or an ``error`` entry)."""
    cmd = [sys.executable, "-m", "gradium_plugins.bench", "--worker", json.dumps(asdict(spec))]
    timeout = timeout_s if timeout_s is not None else spec.duration_s * 3 + 60
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"client": spec.client, "n": spec.n, "error": f"worker timed out after {timeout:.0f} s"}
    for line in proc.stdout.splitlines():
        if line.startswith(_RESULT_PREFIX):
            result: dict[str, Any] = json.loads(line[len(_RESULT_PREFIX) :])
            return result
    tail = " | ".join((proc.stderr or "").strip().splitlines()[-5:])
    return {"client": spec.client, "n": spec.n, "error": f"worker exited {proc.returncode}: {tail}"}


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in ("gradium_plugins", "gradium", "aiohttp", "websockets", "numpy", "soxr"):
        try:
            from importlib.metadata import version

            out[name] = version(name.replace("_", "-"))
        except Exception:  # noqa: BLE001 - a missing package is reported as None
            out[name] = None
    return out


def run_benchmark(
    ns: Sequence[int],
    clients: Sequence[str],
    duration_s: float,
    *,
    repeat: int = 1,
    shared_http: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run every (N, client) pair against one local server; return the results document."""
    server = _Server()
    runs: list[dict[str, Any]] = []
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    started = time.time()
    try:
        for i, n in enumerate(ns):
            for r in range(repeat):
                shift = (i + r) % len(clients)
                # Rotate the order so slow drift of the shared machine does not favour one client.
                for client in [*clients[shift:], *clients[:shift]]:
                    spec = WorkerSpec(client, n, duration_s, server.url, shared_http)
                    s0 = server.cpu_s()
                    t0 = time.perf_counter()
                    res = run_worker(spec)
                    wall = time.perf_counter() - t0
                    s1 = server.cpu_s()
                    if s0 is not None and s1 is not None:
                        res["server_cpu_util"] = round((s1 - s0) / wall, 3)
                    res["repeat"] = r
                    if not server.clock_ok:
                        res["lat_p50_ms"] = res["lat_p99_ms"] = res["lat_max_ms"] = None
                    runs.append(res)
                    log(_progress_line(res))
                    time.sleep(0.3)  # let the server finish closing the worker's connections
    finally:
        server.close()
    return {
        "benchmark": "client_overhead",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "params": {
            "ns": list(ns),
            "clients": list(clients),
            "duration_s": duration_s,
            "repeat": repeat,
            "frame_s": FRAME_S,
            "chunk_s": FRAME_S * CHUNK_FRAMES,
            "shared_http": shared_http,
            "server": "local echo engine, output paced at real time, stamped",
        },
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg() if hasattr(os, "getloadavg") else None,
            "python": platform.python_version(),
            "platform": platform.platform(),
            "shared_clock": server.clock_ok,
            "perf_counter": time.get_clock_info("perf_counter").implementation,
        },
        "versions": _versions(),
        "runs": runs,
        "summary": summarize(runs, clients),
    }


def _progress_line(res: dict[str, Any]) -> str:
    if "error" in res:
        return f"  {res['client']:>5} N={res['n']:<4} FAILED: {res['error']}"
    return (
        f"  {res['client']:>5} N={res['n']:<4} cpu {res['cpu_ms_per_stream_s']:.3f} ms/stream-s  "
        f"p99 {res['lat_p99_ms']} ms  {res['rss_mb_per_session']:.3f} MB/session  "
        f"lost {res['streams_lost']} late {res['streams_late']}  server {res.get('server_cpu_util')}"
    )


_SUMMARY_KEYS = (
    "cpu_ms_per_stream_s",
    "cpu_total_ms_per_stream_s",
    "lat_p50_ms",
    "lat_p99_ms",
    "rss_mb_per_session",
    "streams_lost",
    "streams_late",
    "server_cpu_util",
    "cpu_util_steady",
)


def summarize(runs: Sequence[dict[str, Any]], clients: Sequence[str]) -> list[dict[str, Any]]:
    """One row per N: the median over repeats of each figure per client, and the ratios."""
    rows: list[dict[str, Any]] = []
    for n in sorted({r["n"] for r in runs}):
        row: dict[str, Any] = {"n": n}
        for client in clients:
            ok = [r for r in runs if r["n"] == n and r["client"] == client and "error" not in r]
            fig: dict[str, Any] = {}
            for key in _SUMMARY_KEYS:
                vals = [r[key] for r in ok if r.get(key) is not None]
                fig[key] = statistics.median(vals) if vals else None
            row[client] = fig if ok else None
        ours = row.get("ours")
        for other in ("sdk", "floor"):
            theirs = row.get(other)
            if ours and theirs:
                row[f"ours_over_{other}"] = {
                    key: _ratio(ours.get(key), theirs.get(key))
                    for key in ("cpu_ms_per_stream_s", "lat_p99_ms", "rss_mb_per_session")
                }
        rows.append(row)
    return rows


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b <= 0:
        return None
    return round(a / b, 3)


def _fmt(v: Any, spec: str = ".2f") -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return format(v, spec)
    return str(v)


def format_table(doc: dict[str, Any]) -> str:
    """The results as a plain-text table with the ratios."""
    clients = doc["params"]["clients"]
    lines = [
        f"client overhead: {doc['params']['duration_s']:g} s streams, 24 kHz in (20 ms frames), 48 kHz out, "
        f"local echo server; {doc['machine']['cpus']} CPUs, load {doc['machine']['loadavg_before']}",
        "CPU = client-process CPU ms per stream-second (steady window); lat = server send -> caller (ms)",
        "",
        f"{'N':>4} {'client':<6} {'CPU':>7} {'CPUtot':>7} {'lat p50':>8} {'lat p99':>8} {'MB/sess':>8} "
        f"{'lost':>5} {'late':>5} {'srvCPU':>7}",
    ]
    for row in doc["summary"]:
        for client in clients:
            fig = row.get(client)
            if not fig:
                lines.append(f"{row['n']:>4} {client:<6} {'(failed)':>7}")
                continue
            lines.append(
                f"{row['n']:>4} {client:<6} {_fmt(fig['cpu_ms_per_stream_s'], '.3f'):>7} "
                f"{_fmt(fig['cpu_total_ms_per_stream_s'], '.3f'):>7} "
                f"{_fmt(fig['lat_p50_ms']):>8} {_fmt(fig['lat_p99_ms']):>8} "
                f"{_fmt(fig['rss_mb_per_session'], '.3f'):>8} {_fmt(fig['streams_lost'], '.0f'):>5} "
                f"{_fmt(fig['streams_late'], '.0f'):>5} {_fmt(fig['server_cpu_util'], '.0%'):>7}"
            )
        for other in ("sdk", "floor"):
            ratio = row.get(f"ours_over_{other}")
            if ratio:
                lines.append(
                    f"{'':>4} {'ours/' + other:<11} CPU x{_fmt(ratio['cpu_ms_per_stream_s'])}  "
                    f"p99 x{_fmt(ratio['lat_p99_ms'])}  MB x{_fmt(ratio['rss_mb_per_session'])}"
                )
        lines.append("")
    return "\n".join(lines)


def plot(doc: dict[str, Any], path: Path) -> bool:
    """Write CPU per stream and p99 latency vs N as a PNG; False when matplotlib is missing."""
    try:
        mpl = importlib.import_module("matplotlib")
    except ImportError:
        return False
    mpl.use("Agg")
    plt = importlib.import_module("matplotlib.pyplot")
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for client in doc["params"]["clients"]:
        pts = [(row["n"], row[client]) for row in doc["summary"] if row.get(client)]
        ns = [n for n, _ in pts]
        ax1.plot(ns, [f["cpu_ms_per_stream_s"] for _, f in pts], marker="o", label=client)
        ax2.plot(ns, [f["lat_p99_ms"] for _, f in pts], marker="o", label=client)
    # Log scales: one stream costs ~10x more per stream (fixed per-process cost) and latency explodes
    # once the worker or the machine saturates; linear axes would hide everything else.
    ax1.set(xscale="log", yscale="log", xlabel="concurrent streams (N)",
            ylabel="client CPU ms per stream-second", title="Client CPU per stream")
    ax2.set(xscale="log", yscale="log", xlabel="concurrent streams (N)", ylabel="p99 added latency (ms)",
            title="Server send -> caller, p99")
    for ax in (ax1, ax2):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(f"gradium-plugins client overhead ({doc['started']}, {doc['machine']['cpus']} CPUs, shared)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# --- command line --------------------------------------------------------------------------


def _int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("stream counts must be >= 1")
    return values


def _client_list(text: str) -> list[str]:
    values = [x.strip() for x in text.split(",") if x.strip()]
    bad = [v for v in values if v not in (*CLIENTS, *EXTRA_CLIENTS)]
    if bad or not values:
        raise argparse.ArgumentTypeError(f"clients must be among {', '.join((*CLIENTS, *EXTRA_CLIENTS))}")
    return values


def build_parser() -> argparse.ArgumentParser:
    """Arguments of ``gradium-plugins bench`` (the full-run script passes larger defaults first)."""
    p = argparse.ArgumentParser(
        prog="gradium-plugins bench",
        description="Client CPU, added latency and memory per stream: ours vs the official SDK vs a floor.",
    )
    p.add_argument("--n", type=_int_list, default=[1, 10, 50], help="stream counts, e.g. 1,10,50,100")
    p.add_argument("--duration", type=float, default=5.0, help="seconds of audio per stream")
    p.add_argument("--clients", type=_client_list, default=list(CLIENTS),
                   help="ours,sdk,floor (default) and optionally sdk20 (the SDK fed 20 ms frames)")
    p.add_argument("--repeat", type=int, default=1, help="runs per (N, client); the table shows medians")
    p.add_argument("--shared-http", action="store_true",
                   help="ours: one aiohttp ClientSession for all streams (as a framework passes one)")
    p.add_argument("--out", type=Path, default=None,
                   help="directory for the JSON and PNG (default: benchmarks/results if it exists, else .)")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--json", action="store_true", help="print the JSON document instead of the table")
    return p


def _default_out() -> Path:
    here = Path.cwd() / "benchmarks"
    return here / "results" if here.is_dir() else Path.cwd()


def main(argv: list[str]) -> int:
    """Entry point of ``gradium-plugins bench``: run, print the table, write JSON (+ PNG)."""
    if argv[:1] == ["--worker"]:
        return _worker_main(WorkerSpec(**json.loads(argv[1])))
    if argv[:1] == ["--serve"]:
        return _server_main()
    args = build_parser().parse_args(argv)
    clients = list(args.clients)
    if importlib.util.find_spec("gradium") is None and {"sdk", "sdk20"} & set(clients):
        print("note: the official SDK is not installed (pip install 'gradium-plugins[bench]'): skipping it",
              file=sys.stderr)
        clients = [c for c in clients if c not in ("sdk", "sdk20")]
    if not shared_clock():
        print("note: perf_counter is not a system-wide clock here: latency is not reported", file=sys.stderr)
    log = (lambda _s: None) if args.json else (lambda s: print(s, file=sys.stderr, flush=True))
    doc = run_benchmark(args.n, clients, args.duration, repeat=max(1, args.repeat),
                        shared_http=args.shared_http, log=log)
    out: Path = args.out or _default_out()
    out.mkdir(parents=True, exist_ok=True)
    stem = f"client_overhead-{time.strftime('%Y%m%d-%H%M%S')}"
    json_path = out / f"{stem}.json"
    json_path.write_text(json.dumps(doc, indent=2))
    png_path = out / f"{stem}.png"
    plotted = not args.no_plot and plot(doc, png_path)
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(format_table(doc))
        print(f"results: {json_path}" + (f", plot: {png_path}" if plotted else ""))
    failed = any("error" in r for r in doc["runs"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
