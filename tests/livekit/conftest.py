"""LiveKit adapter tests: skipped entirely when the ``livekit`` extra is not installed."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

if importlib.util.find_spec("livekit") is None or importlib.util.find_spec("livekit.agents") is None:
    collect_ignore_glob = ["test_*.py"]
else:
    # Test modules import their helpers (memory IO, synthetic speech) from lk_helpers.py,
    # whatever pytest's import mode.
    sys.path.insert(0, str(Path(__file__).parent))
