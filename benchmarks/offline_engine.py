"""Benchmark of the embedded offline engine (VAD -> Whisper base -> Apertium -> Piper/espeak-ng).

For each direction (en->es, es->en), in a fresh process so peak memory is its own:

* RTF: input fed as fast as possible; wall time from the first chunk to the last translated
  utterance, divided by the input duration (includes VAD, STT, MT, TTS and the 48 kHz resampling).
* Latency: input fed at real time in 80 ms chunks; for each utterance, time from the moment its
  last spoken sample was fed to the moment its translated audio is available (the engine yields
  an utterance's audio whole, so this is end-of-utterance -> first translated audio). It
  includes the VAD's end-of-utterance silence (0.5 s by default). Median and p90.
* Peak RSS of the engine process (Python, models, worker threads; Apertium runs in short-lived
  child processes of a few tens of MB, not included).

Input speech is generated with the engine's own voices (Piper for English, espeak-ng for Spanish).

    python benchmarks/offline_engine.py                  # both directions, table on stdout
    python benchmarks/offline_engine.py --sentences 6    # shorter
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

import numpy as np

SENTENCES = {
    "en": [
        "My brother works as a doctor in a small hospital.",
        "We need to buy bread, milk and coffee at the market.",
        "The doctor says that the patient is better today.",
        "Paris is the capital of France.",
        "The cat sleeps on the sofa in the living room.",
        "The police arrested the thief near the bank.",
        "The museum is closed on Monday because of the holiday.",
        "I would like to book a table for two people tonight.",
        "The hotel has a swimming pool and a small restaurant.",
        "Our teacher gave us a difficult exam this morning.",
    ],
    "es": [
        "Mi hermano trabaja como médico en un hospital pequeño.",
        "Necesitamos comprar pan, leche y café en el mercado.",
        "El médico dice que el paciente está mejor hoy.",
        "París es la capital de Francia.",
        "El gato duerme en el sofá del salón.",
        "La policía detuvo al ladrón cerca del banco.",
        "El museo está cerrado el lunes por la fiesta.",
        "Me gustaría reservar una mesa para dos personas esta noche.",
        "El hotel tiene una piscina y un restaurante pequeño.",
        "Mi hermana vive en una casa grande cerca del río.",
    ],
}
RATE = 24000
CHUNK = 1920  # 80 ms
GAP_S = 0.8


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


async def _worker(source: str, target: str, n: int) -> dict[str, Any]:
    from gradium_plugins.audio import iter_chunks, resample
    from gradium_plugins.local.engine import EngineSetup
    from gradium_plugins.local.offline import OfflineEngine

    t0 = time.perf_counter()
    engine = OfflineEngine()
    await engine.start(wait=True)
    load_s = time.perf_counter() - t0

    gap = np.zeros(round(GAP_S * RATE), np.int16)
    parts = []
    for sentence in SENTENCES[source][:n]:
        parts += [gap, resample(await engine.synthesize(sentence, source), 48000, RATE)]
    parts.append(np.zeros(RATE, np.int16))
    samples = np.concatenate(parts)
    duration = samples.size / RATE

    setup = EngineSetup(target_language=target, source_language=source, voice_id=None)

    # Warm-up (first calls allocate buffers), not measured.
    warm = engine.open(setup)

    async def warm_feed() -> Any:
        for chunk in iter_chunks(samples[: round((GAP_S + 3.5) * RATE)], CHUNK):
            yield chunk

    _ = [u async for u in warm.run(warm_feed())]

    # 1. Throughput: as fast as possible.
    session = engine.open(setup)

    async def fast_feed() -> Any:
        for chunk in iter_chunks(samples, CHUNK):
            yield chunk

    t_start = time.perf_counter()
    fast = [u async for u in session.run(fast_feed())]
    wall = time.perf_counter() - t_start
    stages = {k: statistics.mean(t[k] for t in session.timings) for k in ("stt", "mt", "tts", "total")}

    # 2. Latency: real-time input.
    session = engine.open(setup)
    fed_at: list[float] = []  # wall time at which each chunk was handed over

    async def paced_feed() -> Any:
        start = time.perf_counter()
        for i, chunk in enumerate(iter_chunks(samples, CHUNK)):
            due = start + i * CHUNK / RATE
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            fed_at.append(time.perf_counter())
            yield chunk

    latencies: list[float] = []
    async for utt in session.run(paced_feed()):
        now = time.perf_counter()
        last_chunk = min(len(fed_at) - 1, int(utt.input_end_s * RATE) // CHUNK)
        latencies.append(now - fed_at[last_chunk])

    paced_processing = [{k: round(v, 2) for k, v in t.items() if k != "audio_s"} for t in session.timings]
    self_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "direction": f"{source}->{target}",
        "sentences": n,
        "utterances": len(fast),
        "input_s": duration,
        "load_s": load_s,
        "rtf": wall / duration,
        "latency_median_s": statistics.median(latencies) if latencies else float("nan"),
        "latency_p90_s": _percentile(latencies, 90),
        "latency_max_s": max(latencies) if latencies else float("nan"),
        "stage_mean_s": stages,
        "peak_rss_mb": self_rss,
        "latencies_s": [round(x, 3) for x in latencies],
        "paced_processing_s": paced_processing,
        "example": [fast[0].source_text, fast[0].text] if fast else None,
        "cpus": os.cpu_count(),
    }


def _table(rows: list[dict[str, Any]]) -> str:
    head = (
        f"{'direction':<10} {'utts':>4} {'input s':>7} {'load s':>6} {'RTF':>5} "
        f"{'EoU->audio p50':>14} {'p90':>6} {'max':>6} {'STT':>5} {'MT':>5} {'TTS':>5} "
        f"{'peak RSS MB':>11}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        s = r["stage_mean_s"]
        lines.append(
            f"{r['direction']:<10} {r['utterances']:>4} {r['input_s']:>7.1f} {r['load_s']:>6.1f} "
            f"{r['rtf']:>5.2f} {r['latency_median_s']:>13.2f}s {r['latency_p90_s']:>5.2f}s "
            f"{r['latency_max_s']:>5.2f}s {s['stt']:>5.2f} {s['mt']:>5.2f} {s['tts']:>5.2f} "
            f"{r['peak_rss_mb']:>11.0f}"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sentences", type=int, default=10, help="sentences per direction (max 10)")
    parser.add_argument("--directions", default="en-es,es-en", help="comma-separated src-tgt pairs")
    parser.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    n = max(1, min(args.sentences, 10))
    if args.worker:
        source, target = args.worker.split("-")
        print(json.dumps(asyncio.run(_worker(source, target, n))))
        return 0
    rows = []
    for direction in args.directions.split(","):
        proc = subprocess.run(
            [sys.executable, __file__, "--worker", direction, "--sentences", str(n)],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            print(proc.stderr[-2000:], file=sys.stderr)
            return proc.returncode
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(_table(rows))
        print(
            "\nRTF: wall time / input duration, input fed as fast as possible. EoU->audio: real-time "
            "input, from the last spoken sample of an utterance to its translated 48 kHz audio (includes "
            "the VAD's 0.5 s end-of-utterance silence). STT/MT/TTS: mean seconds per utterance. "
            f"{rows[0]['cpus']} CPUs."
        )
        for r in rows:
            print(f"{r['direction']} latencies (s): {r['latencies_s']}")
            print(f"{r['direction']} of which STT+MT+TTS (s): {r['paced_processing_s']}")
            if r["example"]:
                print(f"{r['direction']}: {r['example'][0]!r} -> {r['example'][1]!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
