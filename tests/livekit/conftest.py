"""LiveKit adapter tests: skipped entirely when the ``livekit`` extra is not installed."""

from __future__ import annotations

import importlib.util

if importlib.util.find_spec("livekit") is None or importlib.util.find_spec("livekit.agents") is None:
    collect_ignore_glob = ["test_*.py"]
