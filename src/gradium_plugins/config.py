"""Configuration of an S2S session: every protocol setup field plus connection behaviour.

:class:`S2SConfig` validates everything when it is built, so a bad value fails before any
connection with a :class:`~gradium_plugins.errors.ConfigurationError` naming the field and
the allowed values.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from .errors import ConfigurationError
from .formats import SUPPORTED_FORMATS, UNSUPPORTED_FORMATS
from .voices import DEFAULT_VOICES, LANGUAGES, voice_language

DEFAULT_URL = "wss://api.gradium.ai/api/speech/s2s"
ENV_API_KEY = "GRADIUM_API_KEY"
ENV_URL = "GRADIUM_S2S_URL"

AuthMode = Literal["header", "token", "api-key-header"]

# Field kinds, checked by S2SConfig._validate_types. Numbers: (exclusive lower bound, inclusive
# upper bound or None, None allowed); a lower bound of ``0.0`` means "> 0".
_STR_FIELDS = ("model_name", "input_format", "output_format", "url", "auth_mode")
_OPT_STR_FIELDS = (
    "target_language",
    "voice_id",
    "source_language",
    "stt_model_name",
    "tts_model_name",
    "api_key",
    "client_req_id",
)
_BOOL_FIELDS = ("allow_insecure", "close_ws_on_eos", "reconnect", "persistent")
_NUMBER_FIELDS: dict[str, tuple[float | None, float | None, bool]] = {
    "connect_timeout": (0.0, None, False),
    "ready_timeout": (0.0, None, False),
    "drain_timeout": (0.0, None, False),
    "heartbeat_interval": (0.0, None, True),
    "idle_timeout": (0.0, None, True),
    "trailing_silence_s": (None, 30.0, False),
    "realtime_factor": (0.0, None, True),
    "reconnect_backoff_s": (0.0, None, False),
    "reconnect_backoff_max_s": (0.0, None, False),
    "reconnect_budget_s": (0.0, None, False),
    "replay_buffer_s": (0.0, None, False),
    "max_pending_input_s": (0.0, None, False),
    "max_session_s": (0.0, None, True),
    "renew_margin_s": (0.0, None, False),
}
_INT_FIELDS: dict[str, int] = {
    "max_reconnect_attempts": 0,
    "output_queue_size": 1,
    "max_output_buffer_bytes": 4096,
}


def _show(name: str, value: object) -> str:
    """The value for an error message; the API key is never shown."""
    return "<hidden>" if name == "api_key" else repr(value)


def _check_number(name: str, value: object, *, lo: float | None, hi: float | None, optional: bool) -> None:
    """Raise ConfigurationError unless ``value`` is a finite int/float in range (or None if allowed)."""
    if value is None and optional:
        return
    low = f"> {lo:g}" if lo is not None else ">= 0"
    high = f" and <= {hi:g}" if hi is not None else ""
    none = " or None" if optional else ""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or (value <= lo if lo is not None else value < 0)
        or (hi is not None and value > hi)
    ):
        raise ConfigurationError(f"{name}={value!r} must be a finite number {low}{high}{none}")


def is_loopback_url(url: str) -> bool:
    """Return True when the URL's host is a loopback address or ``localhost``."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _env_api_key() -> str | None:
    return os.environ.get(ENV_API_KEY) or None


def _env_url() -> str:
    return os.environ.get(ENV_URL) or DEFAULT_URL


@dataclass(frozen=True, slots=True)
class S2SConfig:
    """Settings of one speech-to-speech translation stream.

    Protocol fields are sent in the ``setup`` message; the others tune the connection.
    Build a changed copy with :meth:`replace` (validated again).

    Attributes:
        target_language: Language to translate into (``en``, ``fr``, ``de``, ``es``, ``pt``).
            ``None`` keeps the source language (re-voicing) and requires ``voice_id``.
        voice_id: Voice uid; defaults to a flagship voice of ``target_language``.
        source_language: Language spoken, when known (sent as ``json_config.source_language``).
        model_name: S2S model (``setup.model_name``).
        stt_model_name: Inner STT model, optional.
        tts_model_name: Inner TTS model, optional.
        input_format: Wire format of audio sent (default ``pcm``: 24 kHz s16le).
        output_format: Wire format of audio received (default ``pcm``: 48 kHz s16le).
        json_config: Extra ``json_config`` keys passed through unchanged.
        api_key: API key; defaults to ``$GRADIUM_API_KEY``. Never shown in repr or errors.
        url: WebSocket endpoint; defaults to ``$GRADIUM_S2S_URL`` or the Gradium cloud.
        auth_mode: ``header`` (``x-api-key``), ``token`` (mint a temporary token per
            connection) or ``api-key-header`` (``Authorization: Api-Key``, self-hosted).
        allow_insecure: Allow ``ws://`` to a non-loopback host.
        client_req_id: Multiplexing id sent with every message, optional.
        close_ws_on_eos: Ask the server to close the socket after ``end_of_stream``.
        connect_timeout: Seconds to open the WebSocket (and mint a token).
        ready_timeout: Seconds from ``setup`` to ``ready``.
        drain_timeout: Seconds to wait for the server's ``end_of_stream`` after ours.
        heartbeat_interval: Seconds between WebSocket pings; a pong missing for as long
            again marks the peer dead. ``None`` disables pings.
        idle_timeout: Seconds without any server message, while output is expected,
            before the connection is considered stalled. ``None`` disables the check.
        trailing_silence_s: Silence appended by ``end_input()`` so the last sentence is
            finalised.
        realtime_factor: Pace input at this multiple of real time in ``translate_file`` and
            ``translate_stream`` (1.0 = real time); ``None`` sends as fast as possible.
        reconnect: Reconnect after a retryable failure.
        max_reconnect_attempts: Consecutive attempts before giving up.
        reconnect_backoff_s: First backoff delay; doubles each attempt, with jitter.
        reconnect_backoff_max_s: Cap of one backoff delay.
        reconnect_budget_s: Total time allowed for one recovery.
        replay_buffer_s: Input seconds kept for replay after a reconnect.
        max_pending_input_s: Input seconds buffered while (re)connecting before
            ``send_audio`` waits.
        max_session_s: Session length cap of the service; ``None`` disables renewal.
        renew_margin_s: Start renewing this many seconds before ``max_session_s``.
        output_queue_size: Deprecated and ignored: the output buffer is bounded in bytes.
        max_output_buffer_bytes: Decoded output audio buffered for a slow consumer before
            reading from the server pauses (the connection whose output is being delivered
            may always hold this much on its own).
        persistent: Never end the session on network failures (framework adapters): input
            keeps being buffered (up to ``max_pending_input_s``, oldest dropped first with a
            warning) and is replayed when a connection succeeds; authentication and
            configuration errors still end it at once.
    """

    target_language: str | None = None
    voice_id: str | None = None
    source_language: str | None = None
    model_name: str = "default"
    stt_model_name: str | None = None
    tts_model_name: str | None = None
    input_format: str = "pcm"
    output_format: str = "pcm"
    json_config: dict[str, Any] = field(default_factory=dict)
    api_key: str | None = field(default_factory=_env_api_key, repr=False)
    url: str = field(default_factory=_env_url)
    auth_mode: AuthMode = "header"
    allow_insecure: bool = False
    client_req_id: str | None = None
    close_ws_on_eos: bool = True
    connect_timeout: float = 10.0
    ready_timeout: float = 10.0
    drain_timeout: float = 30.0
    heartbeat_interval: float | None = 5.0
    idle_timeout: float | None = None
    trailing_silence_s: float = 2.0
    realtime_factor: float | None = 1.0
    reconnect: bool = True
    max_reconnect_attempts: int = 6
    reconnect_backoff_s: float = 0.2
    reconnect_backoff_max_s: float = 5.0
    reconnect_budget_s: float = 60.0
    replay_buffer_s: float = 30.0
    max_pending_input_s: float = 120.0
    max_session_s: float | None = 300.0
    renew_margin_s: float = 30.0
    output_queue_size: int = 256
    max_output_buffer_bytes: int = 512 * 1024
    persistent: bool = False

    def __post_init__(self) -> None:
        self._validate()
        if self.voice_id is None and self.target_language is not None:
            object.__setattr__(self, "voice_id", DEFAULT_VOICES[self.target_language][0])

    def _validate(self) -> None:
        self._validate_types()
        langs = ", ".join(LANGUAGES)
        for name in ("target_language", "source_language"):
            value = getattr(self, name)
            if value is not None and value not in LANGUAGES:
                raise ConfigurationError(f"{name}={value!r} is not supported; allowed: {langs}")
        if self.target_language is None and self.voice_id is None:
            raise ConfigurationError(
                f"target_language is required unless voice_id is given (re-voicing); allowed: {langs}"
            )
        if self.voice_id is not None:
            if not isinstance(self.voice_id, str) or not self.voice_id.strip():
                raise ConfigurationError("voice_id must be a non-empty voice uid string")
            known = voice_language(self.voice_id)
            if known is not None and self.target_language is not None and known != self.target_language:
                choices = ", ".join(DEFAULT_VOICES[self.target_language])
                raise ConfigurationError(
                    f"voice_id={self.voice_id!r} speaks {known!r}, not target_language="
                    f"{self.target_language!r}; voices of {self.target_language!r}: {choices}"
                )
        for name in ("input_format", "output_format"):
            value = getattr(self, name)
            if value in UNSUPPORTED_FORMATS:
                raise ConfigurationError(
                    f"{name}={value!r}: {UNSUPPORTED_FORMATS[value]}; allowed: {', '.join(SUPPORTED_FORMATS)}"
                )
            if value not in SUPPORTED_FORMATS:
                raise ConfigurationError(
                    f"{name}={value!r} is not a known format; allowed: {', '.join(SUPPORTED_FORMATS)}"
                )
        if not self.model_name or not isinstance(self.model_name, str):
            raise ConfigurationError("model_name must be a non-empty string, e.g. 'default'")
        if not isinstance(self.json_config, dict):
            raise ConfigurationError("json_config must be a dict of extra setup keys")
        self._validate_url()
        if self.auth_mode not in ("header", "token", "api-key-header"):
            raise ConfigurationError(
                f"auth_mode={self.auth_mode!r} is not supported; allowed: header, token, api-key-header"
            )
        if not self.api_key and not is_loopback_url(self.url):
            raise ConfigurationError(
                f"api_key is required for {self._safe_url()}: pass api_key=... or set {ENV_API_KEY} "
                "(or point url at a local server, e.g. `gradium-plugins serve`)"
            )
        if self.max_session_s is not None and not (
            self.trailing_silence_s + 1.0 < self.renew_margin_s < self.max_session_s
        ):
            raise ConfigurationError(
                f"renew_margin_s={self.renew_margin_s!r} must be > trailing_silence_s + 1 "
                f"({self.trailing_silence_s + 1.0:g}) and < max_session_s={self.max_session_s!r}"
            )

    def _validate_types(self) -> None:
        """Check every scalar field's type and range (bools are not numbers, inf/nan are refused)."""
        langs, formats = ", ".join(LANGUAGES), ", ".join(SUPPORTED_FORMATS)
        allowed = {
            "input_format": formats,
            "output_format": formats,
            "auth_mode": "header, token, api-key-header",
            "target_language": langs,
            "source_language": langs,
        }
        for name in (*_STR_FIELDS, *_OPT_STR_FIELDS):
            value = getattr(self, name)
            if isinstance(value, str) or (value is None and name in _OPT_STR_FIELDS):
                continue
            what = "a string or None" if name in _OPT_STR_FIELDS else "a string"
            hint = f"; allowed: {allowed[name]}" if name in allowed else ""
            raise ConfigurationError(f"{name}={_show(name, value)} must be {what}{hint}")
        for name in _BOOL_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ConfigurationError(f"{name}={value!r} must be True or False")
        for name, (lo, hi, optional) in _NUMBER_FIELDS.items():
            _check_number(name, getattr(self, name), lo=lo, hi=hi, optional=optional)
        for name, lo in _INT_FIELDS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < lo:
                raise ConfigurationError(f"{name}={value!r} must be an integer >= {lo}")

    def _validate_url(self) -> None:
        try:
            parts = urlsplit(self.url)
        except ValueError as exc:
            raise ConfigurationError(f"url is not a valid URL: {exc}") from None
        if parts.scheme not in ("ws", "wss"):
            raise ConfigurationError(f"url must start with ws:// or wss://, got scheme {parts.scheme!r}")
        if not parts.hostname:
            raise ConfigurationError("url has no host")
        if parts.scheme == "ws" and not is_loopback_url(self.url) and not self.allow_insecure:
            raise ConfigurationError(
                f"url {self._safe_url()} is unencrypted ws:// to a non-loopback host; "
                "use wss:// or pass allow_insecure=True"
            )

    def _safe_url(self) -> str:
        """Return the URL without query or credentials, fit for messages."""
        p = urlsplit(self.url)
        netloc = (p.hostname or "") + (f":{p.port}" if p.port else "")
        return urlunsplit((p.scheme, netloc, p.path, "", ""))

    @property
    def is_local(self) -> bool:
        """True when the endpoint is on this machine (loopback)."""
        return is_loopback_url(self.url)

    @property
    def http_base(self) -> str:
        """HTTP(S) base of the API (``https://host/api``), used for tokens and voices."""
        p = urlsplit(self.url)
        scheme = "https" if p.scheme == "wss" else "http"
        netloc = (p.hostname or "") + (f":{p.port}" if p.port else "")
        path = p.path
        for suffix in ("/speech/s2s", "/speech/s2s/"):
            if path.endswith(suffix):
                path = path[: -len(suffix)]
                break
        return urlunsplit((scheme, netloc, path.rstrip("/"), "", ""))

    def replace(self, **changes: Any) -> S2SConfig:
        """Return a validated copy with ``changes`` applied.

        Changing ``target_language`` without ``voice_id`` picks that language's default voice.
        """
        if "target_language" in changes and "voice_id" not in changes:
            changes["voice_id"] = None
        return dataclasses.replace(self, **changes)

    def setup_json_config(self) -> dict[str, Any]:
        """The ``json_config`` object sent in ``setup``."""
        cfg = dict(self.json_config)
        if self.target_language is not None:
            cfg["target_language"] = self.target_language
        if self.source_language is not None:
            cfg.setdefault("source_language", self.source_language)
        return cfg
