"""Settings of :class:`~gradium_plugins.pipecat.GradiumS2SService` and language helpers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipecat.frames.frames import ServiceUpdateSettingsFrame
from pipecat.services.settings import ServiceSettings
from pipecat.transcriptions.language import Language
from pipecat.utils.types import NOT_GIVEN, NotGiven, is_given

from ..formats import SUPPORTED_FORMATS

# Settings field -> S2SConfig / S2SSession.update() keyword.
_CORE_FIELDS = {
    "model": "model_name",
    "target_language": "target_language",
    "voice_id": "voice_id",
    "source_language": "source_language",
    "stt_model_name": "stt_model_name",
    "tts_model_name": "tts_model_name",
    "json_config": "json_config",
}


def pcm_format(rate: int) -> str | None:
    """The wire format carrying PCM at ``rate`` (``"pcm_16000"``), or None if the service has none."""
    name = f"pcm_{rate}"
    return name if name in SUPPORTED_FORMATS else None


def language_code(language: Language | str | None) -> str | None:
    """Return Gradium's language code for a Pipecat ``Language`` or a code string.

    Regional variants resolve to their base language (``Language.FR_CA`` and ``"fr-CA"``
    give ``"fr"``). The core validates the result, so unsupported languages fail with a
    :class:`~gradium_plugins.errors.ConfigurationError` naming the allowed ones.

    Args:
        language: A ``Language``, a code such as ``"es"`` or ``"pt-BR"``, or None.

    Returns:
        The lower-case base code, or None.
    """
    if language is None:
        return None
    code = str(language.value if isinstance(language, Language) else language).strip()
    return code.replace("_", "-").split("-")[0].lower() or None


@dataclass
class GradiumS2SSettings(ServiceSettings):  # type: ignore[misc]
    """Runtime-updatable settings of :class:`GradiumS2SService`.

    Used as the service's store (every field set) and as a sparse delta in
    :class:`GradiumS2SUpdateSettingsFrame` / ``ServiceUpdateSettingsFrame`` (unset fields
    are ``NOT_GIVEN``). Changes apply mid-stream without losing audio: the core opens a
    new server session and switches to it at the next pause in the speech.

    Attributes:
        model: S2S model name (``setup.model_name``), ``"default"`` unless set.
        target_language: Language to translate into (``"en"``, ``"fr"``, ``"de"``,
            ``"es"``, ``"pt"`` or a Pipecat ``Language``). ``None`` re-voices the source
            language and then needs ``voice_id``.
        voice_id: Voice uid; ``None`` picks the flagship voice of ``target_language``.
        source_language: Language spoken, when known.
        stt_model_name: Inner STT model, optional.
        tts_model_name: Inner TTS model, optional.
        json_config: Extra ``json_config`` keys passed to the server unchanged.
    """

    target_language: Language | str | NotGiven | None = field(default_factory=lambda: NOT_GIVEN)
    voice_id: str | NotGiven | None = field(default_factory=lambda: NOT_GIVEN)
    source_language: Language | str | NotGiven | None = field(default_factory=lambda: NOT_GIVEN)
    stt_model_name: str | NotGiven | None = field(default_factory=lambda: NOT_GIVEN)
    tts_model_name: str | NotGiven | None = field(default_factory=lambda: NOT_GIVEN)
    json_config: dict[str, Any] | NotGiven = field(default_factory=lambda: NOT_GIVEN)

    _aliases = {"voice": "voice_id", "language": "target_language", "model_name": "model"}


@dataclass
class GradiumS2SUpdateSettingsFrame(ServiceUpdateSettingsFrame[GradiumS2SSettings]):  # type: ignore[misc]
    """Change the settings of Gradium S2S services mid-stream.

    With ``service=None`` every :class:`GradiumS2SService` that sees the frame applies it;
    set ``service`` to address one (e.g. one language branch of a ``ParallelPipeline``).
    """


def normalized(delta: GradiumS2SSettings) -> GradiumS2SSettings:
    """Copy of a settings delta with its languages as Gradium codes."""
    out: GradiumS2SSettings = delta.copy()
    for name in ("target_language", "source_language"):
        value = getattr(out, name)
        if is_given(value):
            setattr(out, name, language_code(value))
    return out


def core_values(store: GradiumS2SSettings) -> dict[str, Any]:
    """The :class:`~gradium_plugins.config.S2SConfig` fields of a complete settings store."""
    values: dict[str, Any] = {}
    for name, core_name in _CORE_FIELDS.items():
        value = getattr(store, name)
        if name in ("target_language", "source_language"):
            value = language_code(value)
        if name == "json_config":
            value = dict(value or {})
        values[core_name] = value
    return values
