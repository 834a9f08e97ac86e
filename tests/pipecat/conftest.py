"""Pipecat adapter tests: collected only when the ``pipecat`` extra is installed.

The servers come from the shared fixtures of ``tests/conftest.py`` (``echo_server``,
``make_server``); the pipeline harness lives in ``pipecat_harness.py``.
"""

from __future__ import annotations

import importlib.util

if importlib.util.find_spec("pipecat") is None:  # the core suite runs without the extra
    collect_ignore_glob = ["test_*.py"]
