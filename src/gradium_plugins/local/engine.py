"""The contract between the local server and its translation engines.

The server decodes the client's audio to mono int16 at :data:`ENGINE_INPUT_RATE`, feeds it to
an :class:`EngineSession`, and turns each :class:`Utterance` the engine yields into ``text`` and
80 ms ``audio`` messages in the client's output format. Engines never see the wire format.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..audio import Int16Array

#: Sample rate of the audio the server hands to engines.
ENGINE_INPUT_RATE = 24000
#: Sample rate of the audio engines return.
ENGINE_OUTPUT_RATE = 48000


class EngineSetupError(Exception):
    """The engine refuses a setup (unsupported language pair, unknown voice...).

    The server answers with an ``error`` frame carrying ``message`` and ``code`` (1008).
    """

    def __init__(self, message: str, code: int = 1008) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


@dataclass(frozen=True, slots=True)
class EngineSetup:
    """What an engine needs from the client's ``setup``.

    Attributes:
        target_language: ``json_config.target_language``, or None to keep the source language.
        source_language: ``json_config.source_language`` when the client gave it.
        voice_id: Requested voice uid, if any.
        model_name: Requested model.
        json_config: The whole ``json_config`` object.
    """

    target_language: str | None
    source_language: str | None
    voice_id: str | None
    model_name: str = "default"
    json_config: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Utterance:
    """One translated utterance produced by an engine.

    Attributes:
        text: Translated text (sent as one ``text`` message).
        audio: Translated speech, mono int16 at :data:`ENGINE_OUTPUT_RATE`.
        source_text: Recognised source text, when the engine has it (not sent on the wire).
        input_start_s: Start of the utterance on the input timeline.
        input_end_s: End of the utterance on the input timeline.
    """

    text: str
    audio: Int16Array
    source_text: str | None = None
    input_start_s: float = 0.0
    input_end_s: float = 0.0


class EngineSession(ABC):
    """One stream being translated."""

    @abstractmethod
    def run(self, audio: AsyncIterator[Int16Array]) -> AsyncIterator[Utterance]:
        """Consume input chunks until the iterator ends (client ``end_of_stream``); yield utterances.

        The input iterator ends when the client finishes; the engine must then flush its
        last utterance and return. Heavy compute must run off the event loop.
        """

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release per-session resources (called when the connection ends, even on error)."""


class Engine(ABC):
    """A translation engine shared by all connections of a server."""

    name: str = "engine"

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Load models (called once when the server starts; may run in the background)."""

    @abstractmethod
    def open(self, setup: EngineSetup) -> EngineSession:
        """Validate ``setup`` and open a session.

        Raises:
            EngineSetupError: The setup cannot be served (message says what is available).
        """

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release shared resources."""


def silence_like(seconds: float, rate: int = ENGINE_OUTPUT_RATE) -> Int16Array:
    """Return silence at an engine rate."""
    return np.zeros(round(seconds * rate), dtype=np.int16)
