"""Smoke tests of the client-overhead benchmark in benchmarks/ (tiny scale; figures are never asserted)."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

from gradium_plugins import cli

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import client_overhead  # noqa: E402
import overhead_worker  # noqa: E402

RUN_FIELDS = {
    "client",
    "n",
    "cpu_ms_per_stream_s",
    "cpu_total_ms_per_stream_s",
    "lat_p50_ms",
    "lat_p99_ms",
    "rss_mb_per_session",
    "streams_lost",
    "streams_late",
    "frames_fed",
    "output_ratio",
    "server_cpu_util",
}


def test_harness_runs_every_client_for_a_second(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    clients = ["ours", "floor"]
    if importlib.util.find_spec("gradium") is not None:
        clients += ["sdk", "sdk20"]
    code = client_overhead.main(
        ["--n", "2", "--duration", "1", "--clients", ",".join(clients), "--out", str(tmp_path), "--no-plot"]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    files = list(tmp_path.glob("client_overhead-*.json"))
    assert len(files) == 1
    doc = json.loads(files[0].read_text())
    assert {r["client"] for r in doc["runs"]} == set(clients)
    for run in doc["runs"]:
        assert "error" not in run, run
        assert RUN_FIELDS <= run.keys()
        assert run["n"] == 2
        assert run["frames_fed"] == 2 * 50  # 1 s of 20 ms frames per stream
        assert run["streams_lost"] == 0, run  # every stream got its echo and end_of_stream
        if overhead_worker.shared_clock():
            # The server's stamp reached every client through its public API.
            assert run["lat_count"] > 0 and run["lat_p50_ms"] >= 0, run
    row = doc["summary"][0]
    assert row["n"] == 2
    assert row["ours_over_floor"]["cpu_ms_per_stream_s"] is not None
    assert "ours/floor" in out  # the table shows the ratios


def test_the_harness_uses_only_public_api() -> None:
    for module in (client_overhead, overhead_worker):
        source = Path(module.__file__ or "").read_text()
        imports = re.findall(r"^\s*(?:from|import) (gradium_plugins\S*)(?: import (.+))?$", source, re.M)
        for name, names in imports:
            assert name == "gradium_plugins", name  # the package's top level, no private modules
            assert not any(n.strip().startswith("_") for n in names.split(",")), names


def test_summary_ratios_and_table() -> None:
    def run(client: str, cpu: float, p99: float, mb: float) -> dict[str, object]:
        return {
            "client": client,
            "n": 10,
            "cpu_ms_per_stream_s": cpu,
            "cpu_total_ms_per_stream_s": cpu,
            "lat_p50_ms": 0.5,
            "lat_p99_ms": p99,
            "rss_mb_per_session": mb,
            "streams_lost": 0,
            "streams_late": 0,
            "server_cpu_util": 0.1,
            "cpu_util_steady": 0.1,
        }

    runs = [run("ours", 2.0, 3.0, 1.0), run("ours", 4.0, 5.0, 1.0), run("sdk", 4.0, 2.0, 0.5)]
    runs += [run("sdk20", 6.0, 4.0, 0.5), {"client": "floor", "n": 10, "error": "worker exited 1"}]
    clients = ["ours", "sdk", "sdk20", "floor"]
    rows = client_overhead.summarize(runs, clients)
    assert rows[0]["ours"]["cpu_ms_per_stream_s"] == 3.0  # median of the repeats
    assert rows[0]["ours_over_sdk"] == {
        "cpu_ms_per_stream_s": 0.75,
        "lat_p99_ms": 2.0,
        "rss_mb_per_session": 2.0,
    }
    assert rows[0]["ours_over_sdk20"]["cpu_ms_per_stream_s"] == 0.5
    assert rows[0]["floor"] is None and "ours_over_floor" not in rows[0]
    doc = {
        "params": {"clients": clients, "duration_s": 8.0},
        "machine": {"cpus": 2, "loadavg_before": None},
        "summary": rows,
    }
    table = client_overhead.format_table(doc)
    assert "ours/sdk    CPU x0.75" in table and "ours/sdk20  CPU x0.50" in table and "(failed)" in table


def test_input_signal() -> None:
    frames, speech_s = overhead_worker.make_frames(4.0)
    assert len(frames) == 200 and all(len(f) == 960 for f in frames)
    # 1 s tone every 1.6 s, silent for the last 0.7 s: tones at 0-1 s and 1.6-2.6 s, then 3.2-3.3 s.
    assert speech_s == pytest.approx(2.1, abs=0.01)


def test_cli_bench_explains_how_to_run_the_benchmark(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["bench", "--n", "50"]) == 2
    err = capsys.readouterr().err
    assert "python benchmarks/client_overhead.py" in err and "checkout" in err
