import base64
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gradium_plugins import ProtocolError, Ready, TextOut, UnknownEvent
from gradium_plugins import protocol as p


def test_setup_always_sends_formats_and_model():
    msg = json.loads(
        p.setup_message(
            model_name="default",
            input_format="pcm",
            output_format="pcm",
            voice_id="v",
            json_config={"target_language": "fr"},
        )
    )
    assert msg == {
        "type": "setup",
        "model_name": "default",
        "input_format": "pcm",
        "output_format": "pcm",
        "voice_id": "v",
        "json_config": {"target_language": "fr"},
    }
    assert isinstance(msg["json_config"], dict)


def test_setup_optional_fields():
    msg = json.loads(
        p.setup_message(
            model_name="m",
            input_format="wav",
            output_format="ulaw_8000",
            voice_id=None,
            client_req_id="r1",
            close_ws_on_eos=False,
            stt_model_name="s",
        )
    )
    assert msg["client_req_id"] == "r1" and msg["close_ws_on_eos"] is False and msg["stt_model_name"] == "s"
    assert "voice_id" not in msg


def test_audio_message_roundtrip():
    payload = bytes(range(256)) * 3
    msg = json.loads(p.audio_message(payload))
    assert msg["type"] == "audio" and base64.b64decode(msg["audio"]) == payload
    assert json.loads(p.audio_message(b"\x00\x01", "id"))["client_req_id"] == "id"
    assert isinstance(p.parse_client_message(p.audio_message(payload)), p.AudioIn)


def test_parse_server_messages():
    r = p.parse_server_message(
        '{"type":"ready","request_id":"abc","sample_rate":48000,"frame_size":3840,"x":1}'
    )
    assert r == Ready("abc", 48000, 3840)
    t = p.parse_server_message('{"type":"text","text":"Bonjour","start_s":0.5,"stop_s":1,"stream_id":null}')
    assert t == TextOut("Bonjour", 0.5, 1.0, None)
    a = p.parse_server_message(p.server_audio_message(b"\x01\x00\x02\x00", 0.0, 0.08))
    assert isinstance(a, p.RawAudio) and a.payload == b"\x01\x00\x02\x00" and a.stop_s == 0.08
    assert isinstance(p.parse_server_message('{"type":"end_of_stream"}'), p.EndOfStream)
    e = p.parse_server_message('{"type":"error","message":"bad key","code":1008}')
    assert e == p.ErrorEvent("bad key", 1008)
    assert p.parse_server_message('{"type":"error"}').code is None
    u = p.parse_server_message('{"type":"step","vad":[1,2]}')
    assert isinstance(u, UnknownEvent) and u.type == "step" and u.data["vad"] == [1, 2]


@pytest.mark.parametrize(
    "raw",
    [
        "not json",
        "[1,2]",
        '{"no":"type"}',
        '{"type":3}',
        '{"type":"text"}',
        '{"type":"text","text":5}',
        '{"type":"audio","audio":"%%%"}',
        '{"type":"audio"}',
        '{"type":"ready","sample_rate":"48000"}',
        '{"type":"audio","audio":"AAAA","start_s":"0"}',
        '{"type":"ready","sample_rate":true}',
        b'{"type":"ready"}',
    ],
)
def test_malformed_raises_protocol_error(raw):
    with pytest.raises(ProtocolError):
        p.parse_server_message(raw)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
types = st.sampled_from(["ready", "text", "audio", "end_of_stream", "error", "step", "flushed"]) | st.text(
    max_size=6
)


@settings(max_examples=400, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(
            [
                "type",
                "text",
                "audio",
                "start_s",
                "stop_s",
                "stream_id",
                "request_id",
                "sample_rate",
                "frame_size",
                "message",
                "code",
                "model_name",
            ]
        ),
        json_values,
    ),
    types,
)
def test_arbitrary_messages_only_raise_protocol_error(fields, kind):
    fields = dict(fields)
    fields.setdefault("type", kind)
    try:
        p.parse_server_message(json.dumps(fields))
    except ProtocolError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200) | st.binary(max_size=50))
def test_arbitrary_text_only_raises_protocol_error(raw):
    for parse in (p.parse_server_message, p.parse_client_message):
        try:
            parse(raw)
        except ProtocolError:
            pass


def test_client_setup_parsing_accepts_json_string_config():
    s = p.parse_client_message('{"type":"setup","json_config":"{\\"target_language\\":\\"es\\"}"}')
    assert isinstance(s, p.SetupRequest) and s.json_config == {"target_language": "es"}
    assert s.input_format == "wav"  # the service default when omitted
    with pytest.raises(ProtocolError):
        p.parse_client_message('{"type":"bogus"}')
