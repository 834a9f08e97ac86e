"""Session events that are not wire messages: the session's own facts about the stream.

Wire messages (``ready``, ``text``, ``audio``, ``end_of_stream``) live in :mod:`.protocol`. The
events here are decided by the session core: connection recovery and renewal, and the
utterance-level pairing of input speech with its translation, so adapters map them to
framework frames and metrics instead of re-deriving them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import GradiumError
from .protocol import ServerEvent


@dataclass(frozen=True, slots=True)
class Reconnected:
    """The session recovered from a connection failure.

    Attributes:
        attempts: Connection attempts it took.
        downtime_s: Seconds from the failure to the new connection being usable.
        replayed_s: Seconds of buffered input re-sent to the new connection.
        reason: Short description of the failure.
    """

    attempts: int
    downtime_s: float
    replayed_s: float
    reason: str = ""


@dataclass(frozen=True, slots=True)
class SessionRenewed:
    """The session moved to a new server session (length cap or a settings change).

    Attributes:
        reason: ``"max_session"`` or ``"update"``.
        request_id: Request id of the new server session, if known.
        at_pause: Whether the switch happened at a pause in the input.
        gap_s: Input seconds that were sent to both sessions (0 at a pause).
        target_language: Target language of the new session.
        voice_id: Voice of the new session.
    """

    reason: str
    request_id: str | None = None
    at_pause: bool = True
    gap_s: float = 0.0
    target_language: str | None = None
    voice_id: str | None = None


@dataclass(frozen=True, slots=True)
class InputSpeechStarted:
    """The client-side pause detector heard an input utterance start.

    Attributes:
        input_s: Position on the input timeline (seconds since the first input).
        at: ``time.monotonic()`` when the audio at that position was handed to ``send_audio``.
        utterance: Index of the input utterance (0, 1, 2, ... in input order).
    """

    input_s: float
    at: float
    utterance: int = 0


@dataclass(frozen=True, slots=True)
class InputSpeechStopped:
    """The client-side pause detector found the end of an input utterance (after a pause).

    Attributes:
        input_s: Position on the input timeline where speech stopped.
        at: ``time.monotonic()`` when the audio at that position was handed to ``send_audio``.
        utterance: Index of the input utterance.
        start_s: Where that utterance started on the input timeline.
    """

    input_s: float
    at: float
    utterance: int = 0
    start_s: float = 0.0


@dataclass(frozen=True, slots=True)
class TranslationStarted:
    """The first translated output (audio or text) of an input utterance arrived.

    Attributes:
        utterance: Index of the input utterance it translates; ``None`` when the output could
            not be matched to one (output with no input speech detected before it).
        at: ``time.monotonic()`` when it arrived.
        language: Output language (the target language of the server session).
        replayed: Whether the utterance was re-sent after a reconnect or a forced switch.
    """

    utterance: int | None
    at: float
    language: str | None
    replayed: bool = False


@dataclass(frozen=True, slots=True)
class TranslationCompleted:
    """The translation of an input utterance is complete (its output went quiet or the stream ended).

    Attributes:
        utterance: Index of the input utterance; ``None`` for unmatched output.
        language: Output language.
        time_to_first_audio: Seconds from the end of the input speech (as sent) to the first
            translated audio; ``None`` when there was no audio or the input end is unknown.
        replayed: Whether the utterance was replayed.
        text: The translated text received for it (concatenated ``text`` segments).
        audio_s: Seconds of translated audio received for it.
        at: ``time.monotonic()`` when it was declared complete.
    """

    utterance: int | None
    language: str | None
    time_to_first_audio: float | None
    replayed: bool
    text: str
    audio_s: float
    at: float


@dataclass(frozen=True, slots=True)
class TranslationSkipped:
    """An input utterance got no translation (e.g. a noise burst the service ignored).

    Adapters cancel their latency metric for it.

    Attributes:
        utterance: Index of the input utterance.
        at: ``time.monotonic()`` when the session gave up waiting for it.
    """

    utterance: int
    at: float


@dataclass(frozen=True, slots=True)
class UpdateRejected:
    """A settings change (:meth:`S2SSession.update`) was refused; the old settings carry on.

    Attributes:
        error: Why the new server session could not be opened.
        changes: The settings that were requested.
    """

    error: GradiumError
    changes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class InputDropped:
    """Buffered input was dropped because the input budget (bytes) was exceeded while disconnected.

    Attributes:
        seconds: Seconds of input audio dropped (oldest first).
        reason: Why the input could not be sent.
    """

    seconds: float
    reason: str


SessionEvent = (
    Reconnected
    | SessionRenewed
    | InputSpeechStarted
    | InputSpeechStopped
    | TranslationStarted
    | TranslationCompleted
    | TranslationSkipped
    | UpdateRejected
    | InputDropped
)
Event = ServerEvent | SessionEvent
