"""The C-accelerated codecs (orjson, pybase64) keep the stdlib's strictness on the wire path."""

from __future__ import annotations

import base64
import json
import os

import pytest

from gradium_plugins import ProtocolError
from gradium_plugins.protocol import (
    RawAudio,
    audio_message,
    load_message,
    parse_client_message,
    parse_server_message,
    server_audio_message,
)


@pytest.mark.parametrize("size", [0, 1, 2, 3, 3840, 7681])
def test_audio_messages_round_trip_and_match_the_stdlib(size: int) -> None:
    payload = os.urandom(size)
    msg = audio_message(payload)
    assert json.loads(msg) == {"type": "audio", "audio": base64.b64encode(payload).decode()}
    with_id = json.loads(audio_message(payload, 'req "1"'))
    assert with_id["client_req_id"] == 'req "1"' and base64.b64decode(with_id["audio"]) == payload
    assert parse_client_message(msg).payload == payload  # type: ignore[union-attr]
    raw = parse_server_message(server_audio_message(payload, 0.5, 0.6, 3))
    assert raw == RawAudio(payload, 0.5, 0.6, 3)


@pytest.mark.parametrize(
    "text",
    [
        "{",
        "[NaN]",
        '{"type":"audio","x":NaN}',
        '{"type":"text","text":"\\ud800"}',  # a lone surrogate
        "[" * 5000 + "]" * 5000,  # too deep
        '{"type":"ready","n":1e999}',
        "",
    ],
    ids=["truncated", "nan", "nan-field", "lone-surrogate", "deep", "infinite", "empty"],
)
def test_malformed_json_is_a_protocol_error(text: str) -> None:
    with pytest.raises(ProtocolError, match="malformed JSON"):
        load_message(text)


@pytest.mark.parametrize("b64", ["AA", "A===", "AAAA\n", "AA AA", "é", "AA==AA==", "AAA*"])
def test_invalid_base64_is_a_protocol_error(b64: str) -> None:
    with pytest.raises(ProtocolError, match="not valid base64"):
        parse_server_message(json.dumps({"type": "audio", "audio": b64}))


def test_binary_frames_and_non_objects_are_refused() -> None:
    with pytest.raises(ProtocolError, match="binary"):
        load_message(b'{"type":"audio"}')
    with pytest.raises(ProtocolError, match="JSON object"):
        load_message("[1]")
