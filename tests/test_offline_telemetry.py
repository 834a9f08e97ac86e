"""The offline engine keeps onnxruntime from reaching the network.

onnxruntime (>= 1.29 on Linux) has 1DS telemetry: a long-lived process looks up
``mobile.events.data.microsoft.com`` even after ``disable_telemetry_events()``. Only
``ORT_DISABLE_TELEMETRY=1`` in the environment when onnxruntime is imported turns it off (the choice
is latched at import), so the engine must set it before its first import.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# In a fresh interpreter: record ORT_DISABLE_TELEMETRY at the moment onnxruntime is first imported.
PROBE = """
import builtins, os
seen = []
real_import = builtins.__import__
def spy(name, *args, **kwargs):
    if name.split(".")[0] == "onnxruntime" and not seen:
        seen.append(os.environ.get("ORT_DISABLE_TELEMETRY"))
    return real_import(name, *args, **kwargs)
builtins.__import__ = spy
from gradium_plugins.local.offline.assets import isolate_runtime_writes
isolate_runtime_writes()
print(seen)
"""


def test_onnxruntime_telemetry_is_off_before_its_import() -> None:
    pytest.importorskip("onnxruntime", reason="the 'local' extra is not installed")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120, check=True
    )
    assert proc.stdout.split() == ["['1']"], proc.stdout + proc.stderr
