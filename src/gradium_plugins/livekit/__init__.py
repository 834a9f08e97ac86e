"""LiveKit Agents adapters for Gradium real-time speech-to-speech translation.

Three ways in, all on the same :class:`~gradium_plugins.S2SSession` core:

* :class:`TranslationModel` for ``livekit.agents.beta.translation.TranslationSession``
  (recommended): continuous translation, one ``OutputSpeechStopped`` and one final
  transcript per translated utterance, retargetable at run time. Call
  :func:`drain_and_close` when the speaker is done to keep the last sentence.
* :class:`RealtimeModel` for ``AgentSession(llm=...)``: one generation per translated
  utterance; the speaker talking over a translation never cuts it.
* :class:`RoomInterpreter`: every speaker of a room into several languages, one LiveKit
  ``TranslationSession`` per (speaker, language), each publishing a
  ``translation-<lang>-<speaker>`` track and its synchronised transcript.

Import this module at the top level of your worker: it registers a LiveKit ``Plugin``, which
LiveKit only allows on the main thread.
"""

from __future__ import annotations

import threading

from livekit.agents import Plugin

from .._version import __version__
from .interpreter import RoomInterpreter
from .log import logger
from .models import (
    LANGUAGE_ATTRIBUTE,
    OUTPUT_SAMPLE_RATE,
    TRANSLATION_TRACK_PREFIX,
    TRANSLATIONS_ATTRIBUTE,
    TargetLanguage,
    is_translation_track_name,
    translation_track_name,
)
from .realtime import RealtimeModel, RealtimeSession
from .translation import (
    TranslationMetrics,
    TranslationModel,
    TranslationModelSession,
    drain_and_close,
)

__all__ = [
    "LANGUAGE_ATTRIBUTE",
    "OUTPUT_SAMPLE_RATE",
    "TRANSLATIONS_ATTRIBUTE",
    "TRANSLATION_TRACK_PREFIX",
    "GradiumPlugin",
    "RealtimeModel",
    "RealtimeSession",
    "RoomInterpreter",
    "TargetLanguage",
    "TranslationMetrics",
    "TranslationModel",
    "TranslationModelSession",
    "__version__",
    "drain_and_close",
    "is_translation_track_name",
    "logger",
    "translation_track_name",
]


class GradiumPlugin(Plugin):
    """The LiveKit plugin record of gradium-plugins (name, version, logger)."""

    def __init__(self) -> None:
        super().__init__(__name__, __version__, __package__ or __name__, logger)


def _register() -> None:
    # LiveKit refuses registration off the main thread; importing there (e.g. inside a job
    # executor thread) must not break the import, so it is skipped with a debug note.
    if threading.current_thread() is not threading.main_thread():
        logger.debug("gradium_plugins.livekit imported off the main thread; plugin not registered")
        return
    if not any(isinstance(p, GradiumPlugin) for p in Plugin.registered_plugins):
        Plugin.register_plugin(GradiumPlugin())


_register()
