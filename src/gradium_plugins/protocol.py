"""Sans-I/O Gradium S2S protocol: build client messages, parse server messages into typed events.

No sockets and no asyncio here, so every rule of the wire format is unit-testable on its own.
The same module parses client messages for the local server.
"""

from __future__ import annotations

import binascii
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

# C-accelerated JSON and base64 on the per-message path (benchmarks/hot_path.py: 6.5x faster
# parsing of a server audio message, 7.6x faster building of a client one).
import orjson
import pybase64

from .errors import ProtocolError

if TYPE_CHECKING:
    from .audio import Int16Array

# --- wire constants shared by the client and the local server ---------------------------

#: Header carrying the API key on the upgrade and REST requests.
API_KEY_HEADER = "x-api-key"
#: Self-hosted deployments authenticate with ``Authorization: Api-Key <key>`` instead.
AUTHORIZATION_HEADER = "Authorization"
API_KEY_SCHEME = "Api-Key"
#: Header naming the client (``name/version``).
CLIENT_SOURCE_HEADER = "x-api-source"
#: REST path (under the API base) that mints a single-use session token.
TOKEN_PATH = "/api-keys/token"
#: Query parameter carrying a minted token on the WebSocket URL.
TOKEN_PARAM = "token"

# --- events (what the session yields) ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ready:
    """The server accepted ``setup``.

    Attributes:
        request_id: Server request id (give it to support when reporting a problem).
        sample_rate: Output sample rate announced by the server, if given.
        frame_size: Output samples per audio frame, if given.
        model_name: Model the server runs, if given.
        raw: The whole message.
    """

    request_id: str | None
    sample_rate: int | None = None
    frame_size: int | None = None
    model_name: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class TextOut:
    """A segment of translated text.

    Attributes:
        text: Translated text (not the source transcript).
        start_s: Start time on the session's output timeline, if given.
        stop_s: Stop time, if given.
        stream_id: Server stream id, if given.
    """

    text: str
    start_s: float | None = None
    stop_s: float | None = None
    stream_id: int | None = None


@dataclass(frozen=True, slots=True)
class AudioOut:
    """A frame of translated speech, decoded to mono s16le PCM.

    Attributes:
        pcm: Little-endian int16 mono samples.
        sample_rate: Sample rate of ``pcm``.
        start_s: Start time on the session's output timeline, if given.
        stop_s: Stop time, if given.
        stream_id: Server stream id, if given.
    """

    pcm: bytes
    sample_rate: int
    start_s: float | None = None
    stop_s: float | None = None
    stream_id: int | None = None

    @property
    def samples(self) -> Int16Array:
        """The samples as a read-only int16 array (no copy)."""
        import numpy as np  # not at module level: the protocol layer itself needs no numpy

        return np.frombuffer(self.pcm, dtype="<i2")

    @property
    def duration_s(self) -> float:
        """Duration of this frame in seconds."""
        return len(self.pcm) / 2 / self.sample_rate


@dataclass(frozen=True, slots=True)
class EndOfStream:
    """The server finished: every output of the stream has been delivered."""


@dataclass(frozen=True, slots=True)
class ErrorEvent:
    """An ``error`` frame (the session turns it into a raised :class:`GradiumError`)."""

    message: str
    code: int | None = None


@dataclass(frozen=True, slots=True)
class UnknownEvent:
    """A message of a type this client does not know, passed through untouched."""

    type: str
    data: dict[str, Any]


ServerEvent = Ready | TextOut | AudioOut | EndOfStream | ErrorEvent | UnknownEvent


# --- client messages ---------------------------------------------------------------------


def setup_message(
    *,
    model_name: str,
    input_format: str,
    output_format: str,
    voice_id: str | None,
    json_config: dict[str, Any] | None = None,
    stt_model_name: str | None = None,
    tts_model_name: str | None = None,
    client_req_id: str | None = None,
    close_ws_on_eos: bool = True,
) -> str:
    """Build the ``setup`` message; both formats are always sent (the server default is WAV)."""
    msg: dict[str, Any] = {
        "type": "setup",
        "model_name": model_name,
        "input_format": input_format,
        "output_format": output_format,
    }
    if voice_id is not None:
        msg["voice_id"] = voice_id
    if stt_model_name is not None:
        msg["stt_model_name"] = stt_model_name
    if tts_model_name is not None:
        msg["tts_model_name"] = tts_model_name
    if json_config:
        msg["json_config"] = json_config
    if client_req_id is not None:
        msg["client_req_id"] = client_req_id
    if not close_ws_on_eos:
        msg["close_ws_on_eos"] = False
    return json.dumps(msg, separators=(",", ":"))


def audio_message(payload: bytes, client_req_id: str | None = None) -> str:
    """Build an ``audio`` message around already-encoded audio bytes."""
    b64 = pybase64.b64encode_as_string(payload)
    if client_req_id is None:
        # Hot path: no dict, no JSON encoder (base64 never needs escaping).
        return '{"type":"audio","audio":"' + b64 + '"}'
    return orjson.dumps({"type": "audio", "audio": b64, "client_req_id": client_req_id}).decode()


def end_of_stream_message(client_req_id: str | None = None) -> str:
    """Build the ``end_of_stream`` message."""
    if client_req_id is None:
        return '{"type":"end_of_stream"}'
    return json.dumps({"type": "end_of_stream", "client_req_id": client_req_id}, separators=(",", ":"))


# --- parsing helpers ---------------------------------------------------------------------


def load_message(text: str | bytes) -> dict[str, Any]:
    """Decode one JSON text frame into a dict with a string ``type``.

    Raises:
        ProtocolError: Binary frame, invalid JSON, not an object, or no string ``type``.
    """
    if isinstance(text, bytes | bytearray):
        raise ProtocolError("received a binary WebSocket frame; the protocol uses JSON text frames only")
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError as exc:  # also too deep nesting, NaN literals, lone surrogates
        raise ProtocolError(f"malformed JSON from peer: {exc}") from None
    if not isinstance(data, dict):
        raise ProtocolError(f"message must be a JSON object, got {type(data).__name__}")
    kind = data.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("message has no string 'type' field")
    return data


def _opt(data: dict[str, Any], key: str, kind: type | tuple[type, ...], what: str) -> Any:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ProtocolError(f"'{data['type']}' field '{key}' must be {what}, got {type(value).__name__}")
    return value


def _num(data: dict[str, Any], key: str) -> float | None:
    v = _opt(data, key, (int, float), "a number")
    return None if v is None else float(v)


def _b64(data: dict[str, Any], key: str) -> bytes:
    value = data.get(key)
    if not isinstance(value, str):
        raise ProtocolError(f"'{data['type']}' field '{key}' must be a base64 string")
    try:
        return pybase64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError(f"'{data['type']}' field '{key}' is not valid base64") from None


# --- server -> client --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RawAudio:
    """An ``audio`` message before decoding of its payload (done by the session's decoder)."""

    payload: bytes
    start_s: float | None
    stop_s: float | None
    stream_id: int | None


def parse_server_message(
    text: str | bytes,
) -> Ready | TextOut | RawAudio | EndOfStream | ErrorEvent | UnknownEvent:
    """Parse one server message.

    Unknown types become :class:`UnknownEvent`; unknown fields are ignored.

    Raises:
        ProtocolError: The message is malformed or a known field has the wrong type.
    """
    data = load_message(text)
    kind = data["type"]
    if kind == "audio":
        return RawAudio(
            _b64(data, "audio"),
            _num(data, "start_s"),
            _num(data, "stop_s"),
            _opt(data, "stream_id", int, "an integer"),
        )
    if kind == "text":
        txt = data.get("text")
        if not isinstance(txt, str):
            raise ProtocolError("'text' field 'text' must be a string")
        return TextOut(
            txt, _num(data, "start_s"), _num(data, "stop_s"), _opt(data, "stream_id", int, "an integer")
        )
    if kind == "ready":
        return Ready(
            request_id=_opt(data, "request_id", str, "a string"),
            sample_rate=_opt(data, "sample_rate", int, "an integer"),
            frame_size=_opt(data, "frame_size", int, "an integer"),
            model_name=_opt(data, "model_name", str, "a string"),
            raw=data,
        )
    if kind == "end_of_stream":
        return EndOfStream()
    if kind == "error":
        message = data.get("message")
        if not isinstance(message, str):
            message = "server reported an error without a message" if message is None else str(message)
        code = data.get("code")
        if isinstance(code, str) and code.strip().lstrip("-").isdigit():
            code = int(code)
        return ErrorEvent(message, code if isinstance(code, int) and not isinstance(code, bool) else None)
    return UnknownEvent(kind, data)


# --- client -> server (used by the local server) -----------------------------------------


@dataclass(frozen=True, slots=True)
class SetupRequest:
    """A parsed ``setup`` message."""

    model_name: str
    input_format: str
    output_format: str
    voice_id: str | None
    json_config: dict[str, Any]
    stt_model_name: str | None = None
    tts_model_name: str | None = None
    client_req_id: str | None = None
    close_ws_on_eos: bool = True


@dataclass(frozen=True, slots=True)
class AudioIn:
    """A parsed client ``audio`` message."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class EndOfStreamIn:
    """A parsed client ``end_of_stream`` message."""


def parse_client_message(text: str | bytes) -> SetupRequest | AudioIn | EndOfStreamIn:
    """Parse one client message (server side).

    Raises:
        ProtocolError: Malformed message or unknown type.
    """
    data = load_message(text)
    kind = data["type"]
    if kind == "audio":
        return AudioIn(_b64(data, "audio"))
    if kind == "end_of_stream":
        return EndOfStreamIn()
    if kind == "setup":
        cfg = data.get("json_config")
        if isinstance(cfg, str):
            try:
                cfg = json.loads(cfg) if cfg.strip() else {}
            except ValueError:
                raise ProtocolError("setup field 'json_config' is a string but not valid JSON") from None
        if cfg is None:
            cfg = {}
        if not isinstance(cfg, dict):
            raise ProtocolError("setup field 'json_config' must be an object")
        close = data.get("close_ws_on_eos", True)
        if not isinstance(close, bool):
            raise ProtocolError("setup field 'close_ws_on_eos' must be a boolean")
        return SetupRequest(
            model_name=_opt(data, "model_name", str, "a string") or "default",
            input_format=_opt(data, "input_format", str, "a string") or "wav",
            output_format=_opt(data, "output_format", str, "a string") or "wav",
            voice_id=_opt(data, "voice_id", str, "a string"),
            json_config=cfg,
            stt_model_name=_opt(data, "stt_model_name", str, "a string"),
            tts_model_name=_opt(data, "tts_model_name", str, "a string"),
            client_req_id=_opt(data, "client_req_id", str, "a string"),
            close_ws_on_eos=close,
        )
    raise ProtocolError(f"unknown client message type {kind!r}")


# --- server messages (used by the local server) ------------------------------------------


def ready_message(request_id: str, sample_rate: int, frame_size: int, model_name: str | None = None) -> str:
    """Build a server ``ready`` message."""
    msg: dict[str, Any] = {
        "type": "ready",
        "request_id": request_id,
        "sample_rate": sample_rate,
        "frame_size": frame_size,
    }
    if model_name is not None:
        msg["model_name"] = model_name
    return json.dumps(msg, separators=(",", ":"))


def server_text_message(text: str, start_s: float, stop_s: float, stream_id: int | None = 0) -> str:
    """Build a server ``text`` message."""
    return json.dumps(
        {
            "type": "text",
            "text": text,
            "start_s": round(start_s, 4),
            "stop_s": round(stop_s, 4),
            "stream_id": stream_id,
        },
        separators=(",", ":"),
        ensure_ascii=False,
    )


def server_audio_message(payload: bytes, start_s: float, stop_s: float, stream_id: int | None = 0) -> str:
    """Build a server ``audio`` message."""
    b64 = pybase64.b64encode_as_string(payload)
    return (
        f'{{"type":"audio","audio":"{b64}","start_s":{round(start_s, 4)},'
        f'"stop_s":{round(stop_s, 4)},"stream_id":{"null" if stream_id is None else stream_id}}}'
    )


def error_message(message: str, code: int | None) -> str:
    """Build a server ``error`` message."""
    return json.dumps({"type": "error", "message": message, "code": code}, separators=(",", ":"))
