"""Option types and constants shared by the LiveKit adapters."""

from __future__ import annotations

from typing import Literal

#: Languages the Gradium S2S service translates into (any to any).
TargetLanguage = Literal["en", "fr", "de", "es", "pt"]

#: Sample rate of the translated audio the adapters hand to LiveKit.
OUTPUT_SAMPLE_RATE = 48000

#: Prefix of every track the :class:`~gradium_plugins.livekit.RoomInterpreter` publishes.
TRANSLATION_TRACK_PREFIX = "translation-"

#: Participant attribute carrying a listener's language (read by the room interpreter example).
LANGUAGE_ATTRIBUTE = "language"

#: Local participant attribute of the room interpreter: JSON ``{language: {speaker: track name}}``.
TRANSLATIONS_ATTRIBUTE = "gradium.translations"

#: Provider name reported in LiveKit metrics metadata.
PROVIDER = "gradium"


def translation_track_name(language: str, speaker: str | None = None) -> str:
    """Name of the track carrying a translation: ``translation-<lang>[-<speaker identity>]``."""
    return f"{TRANSLATION_TRACK_PREFIX}{language}" + (f"-{speaker}" if speaker else "")


def is_translation_track_name(name: str) -> bool:
    """Whether a track name is one a translator publishes (so it must never be translated)."""
    return name.startswith(TRANSLATION_TRACK_PREFIX)
