"""Client overhead, full run: our S2SSession vs the official SDK vs the floor (see benchmarks/README.md).

Run (from the repository, with `pip install -e '.[dev,bench]'`):

    python benchmarks/client_overhead.py                     # N = 1,10,50,100,200, 8 s streams
    python benchmarks/client_overhead.py --n 1,10,50,100,200,400 --repeat 2
    python benchmarks/client_overhead.py --profile           # profile our client at N=50 (py-spy or cProfile)

The harness itself lives in `gradium_plugins.bench` (so `gradium-plugins bench` works from an
installed package); this script only sets the full-run defaults and adds the profiling mode.
Results (JSON + PNG) go to benchmarks/results/ (git-ignored).
"""

from __future__ import annotations

import argparse
import collections
import json
import pstats
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

from gradium_plugins import bench

RESULTS = Path(__file__).resolve().parent / "results"
FULL_DEFAULTS = ["--n", "1,10,50,100,200", "--duration", "8", "--out", str(RESULTS)]


def _aggregate_py_spy(raw: Path, top: int) -> str:
    """Self and inclusive shares per function from py-spy's collapsed stacks."""
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        total += n
        frames = [f.split(":")[0] + ")" if " (" in f else f for f in stack.split(";")]
        own[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    out = [f"{total} samples (idle excluded)", "--- self"]
    out += [f"{v / total:6.1%}  {k}" for k, v in own.most_common(top)]
    out.append("--- inclusive (gradium_plugins / aiohttp / json / base64)")
    keep = ("gradium_plugins", "aiohttp", "json", "base64", "numpy", "soxr")
    out += [f"{v / total:6.1%}  {k}" for k, v in incl.most_common() if any(s in k for s in keep)][:top]
    return "\n".join(out)


def profile(client: str, n: int, duration: float, tool: str, top: int) -> int:
    RESULTS.mkdir(parents=True, exist_ok=True)
    server = bench._Server()
    stem = RESULTS / f"profile-{client}-{n}-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
        use_spy = tool != "cprofile" and spy is not None
        if use_spy:
            spec = bench.WorkerSpec(client, n, duration, server.url)
            raw = stem.with_suffix(".txt")
            cmd = [
                str(spy), "record", "--rate", "250", "--format", "raw", "--output", str(raw), "--",
                sys.executable, "-m", "gradium_plugins.bench", "--worker", json.dumps(asdict(spec)),
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode != 0 or not raw.exists():
                why = proc.stderr.strip()[-300:]
                print(f"py-spy failed ({why}); falling back to cProfile", file=sys.stderr)
                use_spy = False
            else:
                print(_aggregate_py_spy(raw, top))
                print(f"raw stacks: {raw}")
        if not use_spy:
            path = stem.with_suffix(".pstats")
            res = bench.run_worker(bench.WorkerSpec(client, n, duration, server.url, profile=str(path)))
            print(json.dumps(res))
            stats = pstats.Stats(str(path))
            stats.sort_stats("tottime").print_stats(top)
            stats.sort_stats("cumulative").print_stats("gradium_plugins", top)
            print(f"profile: {path}")
    finally:
        server.close()
    return 0


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--profile", nargs="?", const="auto", choices=["auto", "py-spy", "cprofile"])
    p.add_argument("--client", default="ours", choices=(*bench.CLIENTS, *bench.EXTRA_CLIENTS))
    p.add_argument("--top", type=int, default=30)
    known, rest = p.parse_known_args(argv)
    if known.profile:
        q = argparse.ArgumentParser()
        q.add_argument("--n", type=int, default=50)
        q.add_argument("--duration", type=float, default=8.0)
        args = q.parse_args(rest)
        return profile(known.client, args.n, args.duration, known.profile, known.top)
    return bench.main([*FULL_DEFAULTS, *rest])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
