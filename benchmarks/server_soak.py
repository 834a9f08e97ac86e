"""Soak test of the local server: many short sessions, many concurrent ones, hostile idlers.

Run: python benchmarks/server_soak.py [--sessions 2000] [--concurrent 200] [--json]

The server (``python -m gradium_plugins.local``, echo engine, default limits except a 2 s setup
timeout) runs in its own process on 127.0.0.1 so its RSS is its own (``/proc/PID/status``).
Phases, each followed by an RSS reading once every connection is over:

1. warm-up: 100 short sessions (imports, caches, allocator arenas settle);
2. ``--sessions`` short sessions, ``--parallel`` at a time;
3. ``--concurrent`` sessions open at once (all set up before any streams);
4. ``--idlers`` connections that never send ``setup`` (closed by the setup timeout);
5. ``--sessions`` short sessions again (RSS after a second round: a leak shows as a slope);
6. ``--flooders`` clients that send speech as fast as TCP lets them (~0.9 MB messages) and never
   read: the server must stop reading them, then close them (send timeout 2 s); the server's
   peak RSS (VmHWM) before and after this phase shows what they cost.

``--baseline`` runs phases 1, 2, 3 and 5 only, without the new flags, so an older checkout
(``--src``) can be compared.

A short session: connect, ``setup``, wait for ``ready`` (setup latency = connect start ->
``ready``), 0.5 s of audio (a 0.25 s tone) in 80 ms messages sent at once, ``end_of_stream``,
read until the server closes. Bounded: every phase has a deadline (``--deadline`` seconds).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

ROOT = Path(__file__).resolve().parents[1]
SETUP = json.dumps(
    {
        "type": "setup",
        "model_name": "default",
        "input_format": "pcm",
        "output_format": "pcm",
        "voice_id": "b35yykvVppLXyw_l",
        "json_config": {"target_language": "fr"},
    }
)


def _audio_messages() -> list[str]:
    rate = 24000
    t = np.arange(round(0.25 * rate)) / rate
    tone = (np.sin(2 * np.pi * 440 * t) * 0.3 * 32767).astype("<i2")
    pcm = np.concatenate([np.zeros(rate // 20, "<i2"), tone, np.zeros(rate // 5, "<i2")]).tobytes()
    step = round(rate * 0.08) * 2
    return [
        json.dumps({"type": "audio", "audio": base64.b64encode(pcm[i : i + step]).decode()})
        for i in range(0, len(pcm), step)
    ]


AUDIO = _audio_messages()


@dataclass
class Phase:
    name: str
    setup_ms: list[float] = field(default_factory=list)
    failed: int = 0
    seconds: float = 0.0
    rss_mb: float = 0.0

    def summary(self) -> dict[str, object]:
        lat = sorted(self.setup_ms)
        pct = (lambda q: round(lat[min(len(lat) - 1, int(q * len(lat)))], 2)) if lat else (lambda q: None)
        return {
            "phase": self.name,
            "sessions": len(lat) + self.failed,
            "failed": self.failed,
            "setup_p50_ms": pct(0.50),
            "setup_p99_ms": pct(0.99),
            "setup_max_ms": lat[-1] if lat else None,
            "seconds": round(self.seconds, 1),
            "server_rss_mb_after": round(self.rss_mb, 1),
        }


def rss_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process in MB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return fields["VmRSS"], fields["VmHWM"]


async def session(
    url: str, phase: Phase, hold: asyncio.Event | None = None, ready: list[int] | None = None
) -> None:
    t0 = time.perf_counter()
    try:
        async with connect(url, compression=None, ping_interval=None, open_timeout=30) as ws:
            await ws.send(SETUP)
            msg = json.loads(await ws.recv())
            if msg["type"] != "ready":
                raise RuntimeError(msg)
            phase.setup_ms.append((time.perf_counter() - t0) * 1000)
            if hold is not None and ready is not None:
                ready[0] += 1
                await hold.wait()
            for m in AUDIO:
                await ws.send(m)
            await ws.send('{"type":"end_of_stream"}')
            kinds = [json.loads(m)["type"] async for m in ws]
            if not kinds or kinds[-1] != "end_of_stream" or "text" not in kinds:
                raise RuntimeError(kinds[-3:])
    except Exception:  # noqa: BLE001 - counted, the soak goes on
        phase.failed += 1


async def many(url: str, phase: Phase, n: int, parallel: int) -> None:
    sem = asyncio.Semaphore(parallel)

    async def one() -> None:
        async with sem:
            await session(url, phase)

    await asyncio.gather(*(one() for _ in range(n)))


async def concurrent(url: str, phase: Phase, n: int) -> None:
    hold, ready = asyncio.Event(), [0]
    tasks = [asyncio.create_task(session(url, phase, hold, ready)) for _ in range(n)]
    while ready[0] + phase.failed < n:  # noqa: ASYNC110 - every session set up (or failed) before any streams
        await asyncio.sleep(0.01)
    hold.set()
    await asyncio.gather(*tasks)


async def idlers(url: str, phase: Phase, n: int) -> None:
    async def idle() -> None:
        t0 = time.perf_counter()
        try:
            async with connect(url, ping_interval=None, open_timeout=30) as ws:
                with contextlib.suppress(ConnectionClosed):
                    async for _ in ws:  # the server's error frame, then its close 1008
                        pass
            phase.setup_ms.append((time.perf_counter() - t0) * 1000)  # here: time until closed
        except Exception:  # noqa: BLE001
            phase.failed += 1

    await asyncio.gather(*(idle() for _ in range(n)))


async def flooders(url: str, phase: Phase, n: int) -> None:
    rate = 24000
    t = np.arange(round(14.0 * rate)) / rate
    speech = (np.sin(2 * np.pi * 300 * t) * 0.3 * 32767).astype("<i2").tobytes()  # 672 KB
    big = json.dumps({"type": "audio", "audio": base64.b64encode(speech).decode()})

    async def flood() -> None:
        t0 = time.perf_counter()
        with contextlib.suppress(Exception):
            async with connect(url, compression=None, ping_interval=None, max_queue=1, open_timeout=30) as ws:
                await ws.send(SETUP)
                for _ in range(40):  # 37 MB if the server took everything
                    await ws.send(big)
                await ws.wait_closed()
        phase.setup_ms.append((time.perf_counter() - t0) * 1000)  # here: time until closed

    await asyncio.gather(*(flood() for _ in range(n)))


async def settle(pid: int) -> float:
    await asyncio.sleep(1.0)  # connection handlers return, buffers are released
    return rss_mb(pid)[0]


async def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sessions", type=int, default=2000)
    p.add_argument("--parallel", type=int, default=20, help="short sessions at a time (default 20)")
    p.add_argument("--concurrent", type=int, default=200)
    p.add_argument("--idlers", type=int, default=100)
    p.add_argument("--flooders", type=int, default=20)
    p.add_argument("--baseline", action="store_true", help="old server: no new flags, no idlers/flooders")
    p.add_argument("--deadline", type=float, default=600.0, help="seconds per phase before giving up")
    p.add_argument(
        "--src",
        default=str(ROOT / "src"),
        help="source tree of the server (compare another checkout; with --idlers 0 for old ones)",
    )
    p.add_argument("--json", action="store_true")
    args = p.parse_args()

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([args.src, os.environ.get("PYTHONPATH", "")])}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gradium_plugins.local",
        "--port",
        "0",
        *([] if args.baseline else ["--setup-timeout", "2", "--send-timeout", "2"]),
        stdout=asyncio.subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None
    results: list[dict[str, object]] = []
    try:
        url = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode().strip()
        start_rss = rss_mb(proc.pid)[0]
        plan = [
            ("warm-up", lambda ph: many(url, ph, 100, args.parallel)),
            (
                f"{args.sessions} short, {args.parallel} at a time",
                lambda ph: many(url, ph, args.sessions, args.parallel),
            ),
            (f"{args.concurrent} concurrent", lambda ph: concurrent(url, ph, args.concurrent)),
            *(
                [(f"{args.idlers} idlers (no setup)", lambda ph: idlers(url, ph, args.idlers))]
                if args.idlers and not args.baseline
                else []
            ),
            (f"{args.sessions} short again", lambda ph: many(url, ph, args.sessions, args.parallel)),
        ]
        peak_before_flood = None
        if args.flooders and not args.baseline:
            plan.append(
                (f"{args.flooders} flooders (never read)", lambda ph: flooders(url, ph, args.flooders))
            )
        for name, run in plan:
            if "flooders" in name:
                peak_before_flood = rss_mb(proc.pid)[1]
            phase = Phase(name)
            t0 = time.perf_counter()
            await asyncio.wait_for(run(phase), args.deadline)
            phase.seconds = time.perf_counter() - t0
            phase.rss_mb = await settle(proc.pid)
            results.append(phase.summary())
        peak = rss_mb(proc.pid)[1]
    finally:
        proc.terminate()
        await proc.wait()
    warm = float(results[0]["server_rss_mb_after"])  # type: ignore[arg-type]
    sessions_end = next(r for r in results if "again" in str(r["phase"]))
    last = float(sessions_end["server_rss_mb_after"])  # type: ignore[arg-type]
    report = {
        "server_rss_mb_start": round(start_rss, 1),
        "server_rss_mb_peak": round(peak, 1),
        "server_rss_mb_peak_before_flooders": peak_before_flood and round(peak_before_flood, 1),
        "rss_growth_after_warmup_mb": round(last - warm, 1),
        "phases": results,
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(
            f"server RSS: {start_rss:.1f} MB at start, {warm:.1f} MB after warm-up, "
            f"{last:.1f} MB after the short sessions "
            f"(+{last - warm:.1f} MB); peak {peak:.1f} MB (before the flooders: "
            f"{peak_before_flood and round(peak_before_flood, 1)} MB)"
        )
        print("| phase | sessions | failed | setup p50 ms | setup p99 ms | max ms | s | RSS after MB |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for r in results:
            print(
                f"| {r['phase']} | {r['sessions']} | {r['failed']} | {r['setup_p50_ms']} "
                f"| {r['setup_p99_ms']} "
                f"| {r['setup_max_ms'] and round(float(r['setup_max_ms']), 1)} | {r['seconds']} "  # type: ignore[arg-type]
                f"| {r['server_rss_mb_after']} |"
            )
        print("(idlers and flooders: the 'setup' columns are the time until the server closed them)")
    failed = sum(int(r["failed"]) for r in results)  # type: ignore[call-overload]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
