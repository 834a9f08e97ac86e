"""The offline engine's real-time latency when the machine is busy: Whisper thread policies compared.

The real-time pipeline (VAD -> Whisper -> Apertium -> Piper, English -> Spanish, input fed at real
time in 80 ms chunks) runs once per policy, in a fresh process (OpenMP reads its environment when
CTranslate2 loads), quiet and then with a background process that keeps one core busy (a
pure-Python spin loop, like another worker or a busy event loop on the same machine).

Policies: Whisper's CTranslate2 threads (``stt_threads``) x OpenMP waiting (libgomp's default spins
``GOMP_SPINCOUNT=300000`` times before sleeping; ``OMP_WAIT_POLICY=PASSIVE`` sleeps at once).
``default`` is what the engine does when nothing is set.

Measured per utterance: end of the utterance (its last sample fed) -> its translated audio
(the engine yields an utterance's audio whole, so this is the first translated audio; it
includes the VAD's 0.5 s end-of-utterance silence). Target (issue 12): under load, median
<= 1.5 s and p90 <= 2.5 s.

    python benchmarks/offline_contention.py                  # every policy, quiet and loaded
    python benchmarks/offline_contention.py --repeat 2 --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

import numpy as np

# Short sentences, and pairs spoken without a pause (one 5-7 s utterance for the VAD).
SENTENCES = [
    "My brother works as a doctor in a small hospital.",
    "We need to buy bread, milk and coffee at the market. The doctor says that the patient is better today.",
    "Paris is the capital of France.",
    "The cat sleeps on the sofa in the living room. The police arrested the thief near the bank.",
    "The museum is closed on Monday because of the holiday.",
    "I would like to book a table for two people tonight. The hotel has a swimming pool and a restaurant.",
    "Our teacher gave us a difficult exam this morning.",
]
RATE = 24000
CHUNK = 1920  # 80 ms
GAP_S = 1.0
# name -> (stt_threads or None for the engine default, OpenMP waiting or None for the engine default)
POLICIES: dict[str, tuple[int | None, str | None]] = {
    "default": (None, None),
    "2-threads-spin": (2, "spin"),
    "2-threads-passive": (2, "PASSIVE"),
    "1-thread-spin": (1, "spin"),
    "1-thread-passive": (1, "PASSIVE"),
}


async def _worker(threads: int | None) -> dict[str, Any]:
    from gradium_plugins.audio import iter_chunks, resample
    from gradium_plugins.local.engine import EngineSetup
    from gradium_plugins.local.offline import OfflineEngine

    engine = OfflineEngine(stt_threads=threads)
    await engine.start(wait=True)
    assert engine._runtime.stt is not None
    parts = []
    for text in SENTENCES:
        clips = [resample(await engine.synthesize(s + ".", "en"), 48000, RATE) for s in text.split(". ")]
        pause = np.zeros(round(0.15 * RATE), np.int16)  # too short for the VAD: one utterance
        parts.append(np.zeros(round(GAP_S * RATE), np.int16))
        for i, clip in enumerate(clips):
            parts += [pause, clip] if i else [clip]
    parts.append(np.zeros(RATE, np.int16))
    samples = np.concatenate(parts)
    setup = EngineSetup(target_language="es", source_language="en", voice_id=None)

    async def feed(audio: Any, fed_at: list[float] | None = None) -> Any:
        start = time.perf_counter()
        for i, chunk in enumerate(iter_chunks(audio, CHUNK)):
            await asyncio.sleep(max(0.0, start + i * CHUNK / RATE - time.perf_counter()))
            if fed_at is not None:
                fed_at.append(time.perf_counter())
            yield chunk

    # Warm-up: first calls allocate buffers.
    _ = [u async for u in engine.open(setup).run(feed(samples[: round(4 * RATE)]))]
    session = engine.open(setup)
    fed_at: list[float] = []
    latencies, lengths = [], []
    async for utt in session.run(feed(samples, fed_at)):
        last = min(len(fed_at) - 1, int(utt.input_end_s * RATE) // CHUNK)
        latencies.append(time.perf_counter() - fed_at[last])
        lengths.append(utt.input_end_s - utt.input_start_s)
    stt = [t["stt"] for t in session.timings]
    return {
        "stt_threads": engine._runtime.stt.threads,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY") or f"spin {os.environ.get('GOMP_SPINCOUNT')}",
        "latencies_s": [round(x, 3) for x in latencies],
        "utterance_s": [round(x, 2) for x in lengths],
        "stt_s": [round(x, 3) for x in stt],
    }


def _run_policy(threads: int | None, wait: str | None, busy: bool) -> dict[str, Any]:
    env = dict(os.environ)
    env.pop("OMP_WAIT_POLICY", None)
    env.pop("GOMP_SPINCOUNT", None)
    if wait == "spin":
        # libgomp's own default, spelled out: the engine leaves OpenMP alone when either is set.
        env["GOMP_SPINCOUNT"] = "300000"
    elif wait is not None:
        env["OMP_WAIT_POLICY"] = wait
    spinner = None
    if busy:
        spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        cmd = [sys.executable, __file__, "--worker", str(threads or 0)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False, timeout=600)
    finally:
        if spinner is not None:
            spinner.kill()
            spinner.wait()
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _summary(latencies: list[float]) -> tuple[float, float, float]:
    arr = np.asarray(latencies)
    return float(np.median(arr)), float(np.percentile(arr, 90)), float(arr.max())


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--policies", default=",".join(POLICIES), help="comma-separated policy names")
    parser.add_argument("--load", default="quiet,busy", help="quiet, busy or both")
    parser.add_argument("--repeat", type=int, default=1, help="runs per (policy, load), pooled")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        print(json.dumps(asyncio.run(_worker(args.worker or None))))
        return 0
    rows = []
    for load in args.load.split(","):
        for name in args.policies.split(","):
            threads, wait = POLICIES[name]
            load_before = os.getloadavg()[0]
            runs = [_run_policy(threads, wait, load == "busy") for _ in range(max(1, args.repeat))]
            lat = [x for r in runs for x in r["latencies_s"]]
            stt = [x for r in runs for x in r["stt_s"]]
            p50, p90, worst = _summary(lat)
            rows.append(
                {
                    "policy": name,
                    "load": load,
                    "stt_threads": runs[0]["stt_threads"],
                    "omp_wait_policy": runs[0]["omp_wait_policy"],
                    "utterances": len(lat),
                    "latency_median_s": round(p50, 3),
                    "latency_p90_s": round(p90, 3),
                    "latency_max_s": round(worst, 3),
                    "stt_median_s": round(statistics.median(stt), 3),
                    "stt_max_s": round(max(stt), 3),
                    # Other work on the machine (the spinner included while busy): 1-minute load.
                    "loadavg_before": round(load_before, 2),
                    "loadavg_after": round(os.getloadavg()[0], 2),
                    "runs": runs,
                }
            )
            print(
                f"{load:<6} {name:<20} EoU->audio p50 {p50:5.2f} s  p90 {p90:5.2f} s  max {worst:5.2f} s  "
                f"STT p50 {statistics.median(stt):5.2f} s  max {max(stt):5.2f} s  "
                f"load {load_before:.1f}->{os.getloadavg()[0]:.1f}",
                file=sys.stderr,
                flush=True,
            )
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        head = (
            f"{'load':<6} {'policy':<20} {'utts':>4} {'p50 s':>6} {'p90 s':>6} {'max s':>6} "
            f"{'STT p50':>7} {'STT max':>7} {'loadavg':>9}"
        )
        print(head)
        print("-" * len(head))
        for r in rows:
            print(
                f"{r['load']:<6} {r['policy']:<20} {r['utterances']:>4} {r['latency_median_s']:>6.2f} "
                f"{r['latency_p90_s']:>6.2f} {r['latency_max_s']:>6.2f} {r['stt_median_s']:>7.2f} "
                f"{r['stt_max_s']:>7.2f} {r['loadavg_before']:>4.1f}-{r['loadavg_after']:<4.1f}"
            )
        print(f"\n{os.cpu_count()} CPUs; busy = one extra process spinning on a core. EoU->audio: end of")
        print("utterance -> its translated audio (includes the VAD's 0.5 s end-of-utterance silence).")
        print("loadavg: the machine's 1-minute load average before and after (other work included).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
