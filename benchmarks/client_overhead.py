"""Client overhead: our S2SSession vs the official SDK (80 ms and 20 ms) vs a floor (see README.md).

Run from a checkout (`pip install -e '.[dev,bench]'`):

    python benchmarks/client_overhead.py                          # N = 1,10,50,100, 8 s streams
    python benchmarks/client_overhead.py --n 50 --duration 8 --repeat 3
    python benchmarks/client_overhead.py --n 1,10,50,100,200 --clients ours,sdk,floor
    python benchmarks/client_overhead.py --profile [--n 50] [--client ours]   # py-spy, else cProfile

The local echo server (output paced at real time, a send stamp on every audio message) runs in its
own process; every (client, N) runs in a fresh worker process (`overhead_worker.py`) so its CPU and
memory are its own. Every client uses only its public API. Figures per client and N:

* `cpu_ms_per_stream_s`: worker CPU (user + system) over the steady window (all streams open and
  fed; the first second, or quarter of a short run, skipped) per stream-second of audio fed. The
  harness's own feeding / consuming loop (the same for every client) is inside every figure.
* `lat_p50_ms` / `lat_p99_ms`: added latency, the server's send stamp to the audio event reaching
  the caller's loop (steady window).
* `rss_mb_per_session`: (peak RSS sampled during the run - RSS before connecting) / N.
* `streams_lost` (failed, no end of stream, < 80 % of the expected output) and `streams_late`
  (> 1 % of frames handed over > 20 ms behind schedule: the process could not keep real time).

Prints a table with the ratios ours / each other client, and writes JSON and a PNG plot (with
matplotlib) to benchmarks/results/ (git-ignored).
"""

from __future__ import annotations

import argparse
import collections
import importlib
import importlib.util
import json
import os
import platform
import pstats
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from overhead_worker import CLIENTS, FRAME_S, RESULT_PREFIX, WorkerSpec, shared_clock  # noqa: E402

RESULTS = HERE / "results"
WORKER = HERE / "overhead_worker.py"
SDK_CLIENTS = ("sdk", "sdk20")
DEFAULT_NS = [1, 10, 50, 100]
#: Figures compared between clients, as ratios ours / other.
RATIO_KEYS = ("cpu_ms_per_stream_s", "lat_p99_ms", "rss_mb_per_session")


# --- processes -------------------------------------------------------------------------------


def _proc_cpu_s(pid: int) -> float | None:
    """CPU seconds used so far by another process (Linux /proc), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


class Server:
    """The local echo server (`python -m gradium_plugins.local --stamp`) in a child process."""

    def __init__(self) -> None:
        cmd = [
            sys.executable,
            "-m",
            "gradium_plugins.local",
            "--port",
            "0",
            "--engine",
            "echo",
            "--output-realtime",
            "--stamp",
        ]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().strip()
        if not self.url.startswith("ws://127.0.0.1:"):
            self.close()
            raise RuntimeError(f"the local server did not start (printed {self.url!r})")

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


def run_worker(spec: WorkerSpec, timeout_s: float | None = None) -> dict[str, Any]:
    """Run one worker subprocess and return its result (or an `error` entry)."""
    cmd = [sys.executable, str(WORKER), json.dumps(asdict(spec))]
    timeout = timeout_s if timeout_s is not None else spec.duration_s * 3 + 60
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"client": spec.client, "n": spec.n, "error": f"worker timed out after {timeout:.0f} s"}
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            result: dict[str, Any] = json.loads(line[len(RESULT_PREFIX) :])
            return result
    tail = " | ".join((proc.stderr or "").strip().splitlines()[-5:])
    return {"client": spec.client, "n": spec.n, "error": f"worker exited {proc.returncode}: {tail}"}


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in ("gradium-plugins", "gradium", "aiohttp", "websockets", "orjson", "pybase64", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


# --- the run ---------------------------------------------------------------------------------


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
    server = Server()
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
                    s0, t0 = server.cpu_s(), time.perf_counter()
                    res = run_worker(spec)
                    wall, s1 = time.perf_counter() - t0, server.cpu_s()
                    if s0 is not None and s1 is not None:
                        res["server_cpu_util"] = round((s1 - s0) / wall, 3)
                    res["repeat"] = r
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
            "shared_http": shared_http,
            "server": "local echo engine, output paced at real time, stamped",
        },
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg() if hasattr(os, "getloadavg") else None,
            "python": platform.python_version(),
            "platform": platform.platform(),
            "shared_clock": shared_clock(),
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
    """One row per N: the median over repeats of each figure per client, and the ratios ours / other."""
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
        for other in clients:
            theirs = row.get(other)
            if other != "ours" and ours and theirs:
                row[f"ours_over_{other}"] = {
                    key: _ratio(ours.get(key), theirs.get(key)) for key in RATIO_KEYS
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
        for other in clients:
            ratio = row.get(f"ours_over_{other}")
            if ratio:
                lines.append(
                    f"{'':>4} {'ours/' + other:<11} CPU x{_fmt(ratio['cpu_ms_per_stream_s'])}  "
                    f"p99 x{_fmt(ratio['lat_p99_ms'])}  MB x{_fmt(ratio['rss_mb_per_session'])}"
                )
        lines.append("")
    return "\n".join(lines)


def plot(doc: dict[str, Any], path: Path) -> bool:
    """Write CPU per stream, p99 latency and memory per session vs N as a PNG; False without matplotlib."""
    try:
        mpl = importlib.import_module("matplotlib")
    except ImportError:
        return False
    mpl.use("Agg")
    plt = importlib.import_module("matplotlib.pyplot")
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    panels = (
        ("cpu_ms_per_stream_s", "client CPU ms per stream-second", "Client CPU per stream"),
        ("lat_p99_ms", "p99 added latency (ms)", "Server send -> caller, p99"),
        ("rss_mb_per_session", "MB per session", "Memory per session"),
    )
    for ax, (key, ylabel, title) in zip(axes, panels, strict=True):
        for client in doc["params"]["clients"]:
            pts = [(row["n"], row[client][key]) for row in doc["summary"] if row.get(client)]
            pts = [(n, v) for n, v in pts if v is not None and v > 0]
            ax.plot([n for n, _ in pts], [v for _, v in pts], marker="o", label=client)
        # Log scales: one stream costs ~10x more per stream (fixed per-process cost) and latency
        # explodes once the machine saturates; linear axes would hide everything else.
        ax.set(xscale="log", yscale="log", xlabel="concurrent streams (N)", ylabel=ylabel, title=title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(f"gradium-plugins client overhead ({doc['started']}, {doc['machine']['cpus']} CPUs)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# --- profiling -------------------------------------------------------------------------------


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
    """Run one worker under py-spy (when installed) or cProfile and print where the time goes."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    server = Server()
    stem = RESULTS / f"profile-{client}-{n}-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
        use_spy = tool != "cprofile" and spy is not None
        if use_spy:
            spec = WorkerSpec(client, n, duration, server.url)
            raw = stem.with_suffix(".txt")
            cmd = [
                str(spy),
                "record",
                "--rate",
                "250",
                "--format",
                "raw",
                "--output",
                str(raw),
                "--",
                sys.executable,
                str(WORKER),
                json.dumps(asdict(spec)),
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode != 0 or not raw.exists():
                print(
                    f"py-spy failed ({proc.stderr.strip()[-300:]}); falling back to cProfile", file=sys.stderr
                )
                use_spy = False
            else:
                print(_aggregate_py_spy(raw, top))
                print(f"raw stacks: {raw}")
        if not use_spy:
            path = stem.with_suffix(".pstats")
            print(json.dumps(run_worker(WorkerSpec(client, n, duration, server.url, profile=str(path)))))
            stats = pstats.Stats(str(path))
            stats.sort_stats("tottime").print_stats(top)
            stats.sort_stats("cumulative").print_stats("gradium_plugins", top)
            print(f"profile: {path}")
    finally:
        server.close()
    return 0


# --- command line ----------------------------------------------------------------------------


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
    if not values or any(v not in CLIENTS for v in values):
        raise argparse.ArgumentTypeError(f"clients must be among {', '.join(CLIENTS)}")
    return values


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python benchmarks/client_overhead.py",
        description="Client CPU, added latency and memory per stream: ours vs the official SDK vs a floor.",
    )
    p.add_argument(
        "--n", type=_int_list, default=None, help="stream counts (default 1,10,50,100; profile: 50)"
    )
    p.add_argument("--duration", type=float, default=8.0, help="seconds of audio per stream")
    p.add_argument(
        "--clients",
        type=_client_list,
        default=list(CLIENTS),
        help="among ours, sdk (80 ms chunks), sdk20 (20 ms frames), floor; default: all",
    )
    p.add_argument("--repeat", type=int, default=1, help="runs per (N, client); the table shows medians")
    p.add_argument(
        "--shared-http",
        action="store_true",
        help="ours: one aiohttp ClientSession for all streams (as a framework passes one)",
    )
    p.add_argument("--out", type=Path, default=RESULTS, help="directory for the JSON and PNG")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--json", action="store_true", help="print the JSON document instead of the table")
    p.add_argument(
        "--profile",
        nargs="?",
        const="auto",
        choices=["auto", "py-spy", "cprofile"],
        help="profile one worker (--client, first --n, --duration) instead",
    )
    p.add_argument("--client", default="ours", choices=CLIENTS, help="the client --profile runs")
    p.add_argument("--top", type=int, default=30, help="functions --profile lists")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.profile:
        return profile(args.client, args.n[0] if args.n else 50, args.duration, args.profile, args.top)
    clients = list(args.clients)
    if importlib.util.find_spec("gradium") is None and set(SDK_CLIENTS) & set(clients):
        print(
            "note: the official SDK is not installed (pip install -e '.[bench]'): skipping it",
            file=sys.stderr,
        )
        clients = [c for c in clients if c not in SDK_CLIENTS]
    if not shared_clock():
        print("note: perf_counter is not a system-wide clock here: latency is not reported", file=sys.stderr)
    log = (lambda _s: None) if args.json else (lambda s: print(s, file=sys.stderr, flush=True))
    doc = run_benchmark(
        args.n or DEFAULT_NS,
        clients,
        args.duration,
        repeat=max(1, args.repeat),
        shared_http=args.shared_http,
        log=log,
    )
    out: Path = args.out
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
    return 1 if any("error" in r for r in doc["runs"]) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
