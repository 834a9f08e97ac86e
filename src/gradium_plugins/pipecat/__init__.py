"""Pipecat integration: :class:`GradiumS2SService`, a speech-to-speech translation service.

Requires the ``pipecat`` extra (``pip install 'gradium-plugins[pipecat]'``, Pipecat >= 1.14)::

    from gradium_plugins.pipecat import GradiumS2SService

    translator = GradiumS2SService(settings=GradiumS2SService.Settings(target_language="fr"))
    pipeline = Pipeline([transport.input(), translator, transport.output()])

Roles: ``"interpreter"`` (default), ``"inbound"`` (caller speech -> ``TranscriptionFrame`` for an
agent) and ``"outbound"`` (the agent's TTS speech -> translated speech).
"""

from ._settings import GradiumS2SSettings, GradiumS2SUpdateSettingsFrame, language_code, pcm_format
from .service import (
    DEFAULT_END_TIMEOUT_S,
    DEFAULT_MAX_SPEAKERS,
    DEFAULT_SPEAKER_IDLE_S,
    GradiumS2SService,
    Role,
)

__all__ = [
    "DEFAULT_END_TIMEOUT_S",
    "DEFAULT_MAX_SPEAKERS",
    "DEFAULT_SPEAKER_IDLE_S",
    "GradiumS2SService",
    "GradiumS2SSettings",
    "GradiumS2SUpdateSettingsFrame",
    "Role",
    "language_code",
    "pcm_format",
]
