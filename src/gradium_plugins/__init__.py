"""Gradium real-time speech-to-speech translation for Pipecat and LiveKit Agents.

The core (:class:`S2SSession`) speaks Gradium's S2S WebSocket protocol; the framework adapters
live in :mod:`gradium_plugins.pipecat` and :mod:`gradium_plugins.livekit`, and an offline
engine that speaks the same protocol lives in :mod:`gradium_plugins.local`.
"""

from ._version import __version__
from .config import S2SConfig
from .errors import (
    AudioFormatError,
    AuthenticationError,
    ConfigurationError,
    ConnectionLostError,
    GradiumError,
    InputFileError,
    ProtocolError,
    RedirectError,
    ServerError,
)
from .events import (
    Event,
    InputDropped,
    InputSpeechStarted,
    InputSpeechStopped,
    Reconnected,
    SessionRenewed,
    TranslationCompleted,
    TranslationSkipped,
    TranslationStarted,
    UpdateRejected,
)
from .protocol import AudioOut, EndOfStream, Ready, TextOut, UnknownEvent

__all__ = [
    "AudioFormatError",
    "AudioOut",
    "AuthenticationError",
    "ConfigurationError",
    "ConnectionLostError",
    "EndOfStream",
    "Event",
    "GradiumError",
    "InputDropped",
    "InputFileError",
    "InputSpeechStarted",
    "InputSpeechStopped",
    "ProtocolError",
    "Ready",
    "Reconnected",
    "RedirectError",
    "S2SConfig",
    "ServerError",
    "SessionRenewed",
    "TextOut",
    "TranslationCompleted",
    "TranslationSkipped",
    "TranslationStarted",
    "UnknownEvent",
    "UpdateRejected",
    "__version__",
]

from .session import S2SSession
from .translate import TranslationResult, translate_file, translate_stream

__all__ += ["S2SSession", "TranslationResult", "translate_file", "translate_stream"]
