"""The local server against a raw websockets client: protocol, formats, auth, faults, limits."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from typing import Any

import aiohttp
import numpy as np
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from gradium_plugins.audio import Int16Array, wav_header
from gradium_plugins.errors import ConfigurationError
from gradium_plugins.formats import SUPPORTED_FORMATS, get_format
from gradium_plugins.local import (
    Engine,
    EngineSession,
    EngineSetup,
    FaultPlan,
    LocalServer,
    Utterance,
    dominant_frequency,
    serve,
)
from tests.conftest import (
    Exchange,
    Speech,
    audio_msg,
    decode_output,
    encode_input,
    exchange,
    make_speech,
    parse_echo,
    setup_msg,
    split_payload,
    utterance_freqs,
)

# The server runs under uvloop in Pipecat's runner and LiveKit workers: every test runs under both loops.
pytestmark = pytest.mark.any_loop

MakeServer = Callable[..., Awaitable[LocalServer]]
KEY = "gd_local_test_key_0123456789"

SPEECH = make_speech(utterance_freqs(3, base=400, step=150), [0.4, 0.7, 0.5], gap_s=0.45)
PAYLOADS = split_payload(encode_input(SPEECH, "pcm"), "pcm")  # SPEECH as 80 ms pcm (24 kHz) payloads


def _check_stream(ex: Exchange, speech: Speech, output_format: str, lang: str = "fr") -> None:
    """Everything a well-formed echo stream must satisfy."""
    fmt = get_format(output_format)
    rate = fmt.output_rate
    assert ex.close_code == 1000, ex.messages[-3:]
    kinds = [m.get("type") for m in ex.messages]
    assert kinds[0] == "ready" and kinds[-1] == "end_of_stream"
    ready = ex.messages[0]
    assert ready["sample_rate"] == rate
    assert ready["frame_size"] == round(rate * 0.08)
    assert isinstance(ready["request_id"], str) and ready["request_id"]
    # One text per utterance, in order, recognisable by frequency.
    parsed = [parse_echo(t) for t in ex.texts]
    assert [p[1] for p in parsed] == list(range(1, len(speech.freqs) + 1))
    assert [p[3] for p in parsed] == speech.freqs
    assert all(p[0] == lang for p in parsed)
    for p, d in zip(parsed, speech.durations, strict=True):
        assert abs(p[2] - d) <= 0.03
    # Audio frames: at most one frame_size each, gapless timeline, stream 0.
    clock = 0.0
    per_utt: list[float] = []
    for m in ex.messages[1:-1]:
        if m["type"] == "text":
            assert m["start_s"] == pytest.approx(clock, abs=1e-3)
            per_utt.append(0.0)
            continue
        assert m["type"] == "audio" and m["stream_id"] == 0
        assert m["start_s"] == pytest.approx(clock, abs=1e-3)
        clock = m["stop_s"]
        per_utt[-1] += m["stop_s"] - m["start_s"]
    for got, d in zip(per_utt, speech.durations, strict=True):
        assert abs(got - d) <= 0.08  # within one chunk
    pcm = decode_output(ex, output_format)
    assert abs(pcm.size / rate - sum(speech.durations)) <= 0.08
    assert abs(pcm.size / rate - clock) <= 1.5 / rate
    n = ready["frame_size"]
    sizes = [_payload_samples(m, fmt.codec, i == 0) for i, m in enumerate(ex.of("audio"))]
    assert max(sizes) == n


def _payload_samples(m: dict[str, Any], codec: str, first: bool) -> int:
    raw = base64.b64decode(m["audio"])
    if codec == "wav" and first:
        assert raw[:4] == b"RIFF"
        raw = raw[44:]
    else:
        assert raw[:4] != b"RIFF"
    return len(raw) if codec in ("ulaw", "alaw") else len(raw) // 2


# --- formats -----------------------------------------------------------------------------


@pytest.mark.parametrize("input_format", SUPPORTED_FORMATS)
async def test_every_input_format_round_trips(echo_server: LocalServer, input_format: str) -> None:
    payloads = split_payload(encode_input(SPEECH, input_format), input_format)
    ex = await exchange(echo_server.url, setup_msg(input_format, "pcm"), payloads)
    _check_stream(ex, SPEECH, "pcm")
    rec = echo_server.connections[-1]
    assert await rec.wait_ended() == "eos"
    assert rec.close_code == 1000
    assert abs(rec.input_s - SPEECH.seconds) <= 0.01


@pytest.mark.parametrize("output_format", SUPPORTED_FORMATS)
async def test_every_output_format_round_trips(echo_server: LocalServer, output_format: str) -> None:
    ex = await exchange(echo_server.url, setup_msg("pcm", output_format), PAYLOADS)
    _check_stream(ex, SPEECH, output_format)
    pcm = decode_output(ex, output_format)
    rate = get_format(output_format).output_rate
    # The audio is the input's: each utterance keeps its frequency.
    first = pcm[: round(SPEECH.durations[0] * rate)]
    assert dominant_frequency(first, rate) == SPEECH.freqs[0]


@pytest.mark.parametrize(("rate", "channels"), [(16000, 1), (44100, 2), (8000, 1)])
async def test_wav_input_rate_and_channels_come_from_its_header(
    echo_server: LocalServer, rate: int, channels: int
) -> None:
    mono = SPEECH.at(rate)
    pcm = np.repeat(mono, channels) if channels > 1 else mono  # interleaved, identical channels
    data = wav_header(rate, channels=channels) + pcm.astype("<i2").tobytes()
    step = round(rate * 0.08) * 2 * channels + 1  # odd payload sizes: frames split across messages
    payloads = [data[i : i + step] for i in range(0, len(data), step)]
    ex = await exchange(echo_server.url, setup_msg("wav", "pcm"), payloads)
    _check_stream(ex, SPEECH, "pcm")


async def test_odd_sized_pcm_payloads_are_reassembled(echo_server: LocalServer) -> None:
    data = encode_input(SPEECH, "pcm_16000")
    payloads = [data[i : i + 1001] for i in range(0, len(data), 1001)]
    ex = await exchange(echo_server.url, setup_msg("pcm_16000", "pcm"), payloads)
    _check_stream(ex, SPEECH, "pcm")


async def test_wav_output_header_only_in_first_payload(echo_server: LocalServer) -> None:
    ex = await exchange(echo_server.url, setup_msg("pcm", "wav"), PAYLOADS)
    raws = [base64.b64decode(m["audio"]) for m in ex.of("audio")]
    assert raws[0][:4] == b"RIFF" and raws[0][8:12] == b"WAVE"
    assert int.from_bytes(raws[0][24:28], "little") == 48000
    assert all(r[:4] != b"RIFF" for r in raws[1:])


async def test_no_target_language_re_voices_as_src(echo_server: LocalServer) -> None:
    ex = await exchange(echo_server.url, setup_msg(target_language=None),
                        PAYLOADS)
    _check_stream(ex, SPEECH, "pcm", lang="src")


async def test_json_config_as_string_and_unknown_fields_are_tolerated(echo_server: LocalServer) -> None:
    setup = setup_msg(target_language=None, json_config=json.dumps({"target_language": "es", "foo": 1}),
                      future_field={"x": [1, 2]})
    ex = await exchange(echo_server.url, setup, PAYLOADS,
                        extra={"unknown_field": "ignored"})
    _check_stream(ex, SPEECH, "pcm", lang="es")


# --- protocol rules ----------------------------------------------------------------------


async def _expect_error(ex: Exchange, code: int = 1008, *words: str) -> str:
    errors = ex.of("error")
    assert len(errors) == 1, ex.messages
    assert errors[0]["code"] == code
    assert ex.close_code == code
    assert ex.messages[-1]["type"] == "error"
    message = errors[0]["message"]
    assert isinstance(message, str)
    for w in words:
        assert w in message, message
    return message


@pytest.mark.parametrize(
    ("first", "words"),
    [
        (audio_msg(b"\0\0" * 100), ("setup",)),
        ('{"type":"end_of_stream"}', ("setup",)),
        ("this is not json", ("setup", "JSON")),
        ('{"type":"hello"}', ("setup",)),
        ('["setup"]', ("setup",)),
    ],
)
async def test_setup_must_come_first(echo_server: LocalServer, first: str, words: tuple[str, ...]) -> None:
    ex = await exchange(echo_server.url, first, [], end=False)
    await _expect_error(ex, 1008, *words)
    assert not ex.of("ready")
    rec = echo_server.connections[-1]
    assert await rec.wait_ended() == "error"
    assert rec.close_code == 1008


async def test_binary_frames_are_refused(echo_server: LocalServer) -> None:
    async with connect(echo_server.url, compression=None) as ws:
        await ws.send(json.dumps(setup_msg()))
        assert json.loads(await ws.recv())["type"] == "ready"
        await ws.send(b"\x00\x01" * 100)
        err = json.loads(await ws.recv())
        assert err["type"] == "error" and err["code"] == 1008 and "binary" in err["message"]
        with pytest.raises(ConnectionClosed) as info:
            await ws.recv()
        assert info.value.rcvd is not None and info.value.rcvd.code == 1008


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("input_format", "mp3", ("input_format", "mp3", "pcm_16000", "ulaw_8000")),
        ("output_format", "pcm_12345", ("output_format", "allowed values")),
        ("input_format", "opus", ("opus", "not supported by the local server")),
        ("output_format", "opus", ("opus", "not supported by the local server")),
    ],
)
async def test_bad_formats_are_refused(
    echo_server: LocalServer, field: str, value: str, words: tuple[str, ...]
) -> None:
    ex = await exchange(echo_server.url, setup_msg(**{field: value}), [], end=False)
    await _expect_error(ex, 1008, *words)


async def test_unknown_target_language_is_refused(echo_server: LocalServer) -> None:
    ex = await exchange(echo_server.url, setup_msg(target_language="tlh"), [], end=False)
    await _expect_error(ex, 1008, "tlh", "allowed values")


async def test_bad_audio_payload_is_refused(echo_server: LocalServer) -> None:
    async with connect(echo_server.url) as ws:
        await ws.send(json.dumps(setup_msg()))
        await ws.recv()
        await ws.send('{"type":"audio","audio":"not base64!!"}')
        err = json.loads(await ws.recv())
        assert err["type"] == "error" and err["code"] == 1008 and "base64" in err["message"]


async def test_second_setup_before_end_of_stream_is_refused(echo_server: LocalServer) -> None:
    async with connect(echo_server.url) as ws:
        await ws.send(json.dumps(setup_msg()))
        await ws.recv()
        await ws.send(json.dumps(setup_msg()))
        err = json.loads(await ws.recv())
        assert err["type"] == "error" and err["code"] == 1008 and "setup" in err["message"]


async def test_client_req_id_is_echoed_on_every_reply(echo_server: LocalServer) -> None:
    extra = {"client_req_id": "req-7"}
    ex = await exchange(echo_server.url, setup_msg(client_req_id="req-7"),
                        PAYLOADS, extra=extra)
    assert len(ex.messages) > 5
    assert all(m.get("client_req_id") == "req-7" for m in ex.messages)
    plain = await exchange(echo_server.url, setup_msg(), PAYLOADS)
    assert all("client_req_id" not in m for m in plain.messages)


async def test_client_req_id_is_echoed_on_errors(echo_server: LocalServer) -> None:
    ex = await exchange(echo_server.url, setup_msg(output_format="opus", client_req_id="r1"), [], end=False)
    assert ex.of("error")[0]["client_req_id"] == "r1"


async def test_close_ws_on_eos_false_keeps_the_socket_for_another_setup(echo_server: LocalServer) -> None:
    payloads = PAYLOADS
    async with connect(echo_server.url, compression=None) as ws:
        request_ids = []
        for lang in ("de", "pt"):
            await ws.send(json.dumps(setup_msg(target_language=lang, close_ws_on_eos=False)))
            for p in payloads:
                await ws.send(audio_msg(p))
            await ws.send('{"type":"end_of_stream"}')
            msgs = []
            while True:
                m = json.loads(await asyncio.wait_for(ws.recv(), 10))
                msgs.append(m)
                if m["type"] == "end_of_stream":
                    break
            request_ids.append(msgs[0]["request_id"])
            texts = [parse_echo(m["text"]) for m in msgs if m["type"] == "text"]
            assert [(t[0], t[1]) for t in texts] == [(lang, 1), (lang, 2), (lang, 3)]
        # Still open after two requests.
        await asyncio.wait_for(await ws.ping(), 5)
        assert request_ids[0] != request_ids[1]
    rec = echo_server.connections[-1]
    await rec.wait_ended()
    assert rec.request_ids == request_ids
    assert len(rec.setups) == 2 and len(rec.utterances) == 6


async def test_audio_before_ready_is_accepted(echo_server: LocalServer) -> None:
    # The client may stream before ready arrives: send everything in one go before reading.
    payloads = PAYLOADS
    async with connect(echo_server.url, compression=None) as ws:
        await ws.send(json.dumps(setup_msg()))
        for p in payloads:
            await ws.send(audio_msg(p))
        await ws.send('{"type":"end_of_stream"}')
        msgs = [json.loads(m) async for m in ws]
    assert msgs[0]["type"] == "ready" and msgs[-1]["type"] == "end_of_stream"
    assert sum(m["type"] == "text" for m in msgs) == 3


async def test_many_concurrent_streams(echo_server: LocalServer) -> None:
    speeches = [make_speech([300 + 10 * i, 2000 + 10 * i], 0.3, gap_s=0.4) for i in range(40)]

    async def one(sp: Speech) -> list[int]:
        ex = await exchange(echo_server.url, setup_msg(), split_payload(encode_input(sp, "pcm"), "pcm"))
        assert ex.close_code == 1000
        return [parse_echo(t)[3] for t in ex.texts]

    results = await asyncio.gather(*(one(sp) for sp in speeches))
    assert results == [sp.freqs for sp in speeches]


async def test_server_close_ends_open_connections_with_1001(echo_server: LocalServer) -> None:
    async with connect(echo_server.url) as ws:
        await ws.send(json.dumps(setup_msg()))
        await ws.recv()
        await echo_server.close()
        with pytest.raises(ConnectionClosed) as info:
            await ws.recv()
        assert info.value.rcvd is not None and info.value.rcvd.code == 1001
    assert await echo_server.connections[-1].wait_ended() == "server_closed"


async def test_unknown_route_and_unknown_engine() -> None:
    with pytest.raises(ConfigurationError, match="allowed values"):
        await serve(engine="nope")
    async with await serve() as server:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{server.http_base}/nothing/here") as resp:
                assert resp.status == 404
        with pytest.raises(Exception, match="404"):
            async with connect(server.url.replace("/s2s", "/tts")):
                pass


# --- engine contract ---------------------------------------------------------------------


class _CountingEngine(Engine):
    name = "counting"

    def __init__(self, fail: bool = False) -> None:
        self.started = 0
        self.closed = 0
        self.fail = fail
        self.session_closes = 0

    async def start(self) -> None:
        self.started += 1

    def open(self, setup: EngineSetup) -> EngineSession:
        return _CountingSession(self)

    async def aclose(self) -> None:
        self.closed += 1


class _CountingSession(EngineSession):
    def __init__(self, engine: _CountingEngine) -> None:
        self.engine = engine

    async def run(self, audio: AsyncIterator[Int16Array]) -> AsyncIterator[Utterance]:
        total = 0
        async for chunk in audio:
            total += chunk.size
            if self.engine.fail and total > 24000:
                raise RuntimeError("engine blew up")
        yield Utterance(text=f"{total} samples", audio=np.zeros(4800, np.int16))

    async def aclose(self) -> None:
        self.engine.session_closes += 1


async def test_engine_instance_is_started_once_and_left_to_its_owner() -> None:
    engine = _CountingEngine()
    async with await serve(engine=engine) as server:
        data = encode_input(SPEECH, "pcm_16000")
        ex = await exchange(server.url, setup_msg("pcm_16000", "pcm"), split_payload(data, "pcm_16000"))
        await server.connections[-1].wait_ended()
    # The resampler tail is flushed: every input sample reaches the engine.
    assert ex.texts == [f"{round(SPEECH.seconds * 24000)} samples"]
    assert engine.started == 1 and engine.closed == 0 and engine.session_closes == 1


async def test_engine_failure_is_an_internal_error_1011() -> None:
    async with await serve(engine=_CountingEngine(fail=True)) as server:
        ex = await exchange(server.url, setup_msg(), PAYLOADS)
        await _expect_error(ex, 1011, "internal")
        assert await server.connections[-1].wait_ended() == "internal_error"


# --- authentication and tokens -----------------------------------------------------------


async def test_api_key_is_required_when_configured(make_server: MakeServer) -> None:
    server = await make_server(api_key=KEY)
    payloads = PAYLOADS
    missing = await exchange(server.url, setup_msg(), payloads)
    await _expect_error(missing, 1008, "API key")
    wrong = await exchange(server.url, setup_msg(), payloads, headers={"x-api-key": KEY + "x"})
    assert await _expect_error(wrong, 1008, "API key") == "API key is invalid"
    good = await exchange(server.url, setup_msg(), payloads, headers={"x-api-key": KEY})
    _check_stream(good, SPEECH, "pcm")
    selfhosted = await exchange(server.url, setup_msg(), payloads,
                                headers={"Authorization": f"Api-Key {KEY}"})
    _check_stream(selfhosted, SPEECH, "pcm")
    for rec in server.connections:
        await rec.wait_ended()
    assert [r.auth for r in server.connections] == ["rejected", "rejected", "key", "key"]
    assert [r.ended for r in server.connections[:2]] == ["auth_failed", "auth_failed"]
    # The key never shows up in anything the server reports.
    everything = repr(server) + repr(server.connections) + json.dumps(missing.messages + wrong.messages)
    assert KEY not in everything


async def _mint(server: LocalServer, key: str | None) -> tuple[int, dict[str, Any]]:
    headers = {"x-api-key": key} if key is not None else {}
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server.http_base}/api-keys/token", headers=headers) as resp:
            return resp.status, await resp.json()


async def test_tokens_are_single_use(make_server: MakeServer) -> None:
    server = await make_server(api_key=KEY)
    assert (await _mint(server, None))[0] == 401
    assert (await _mint(server, "wrong"))[0] == 401
    status, body = await _mint(server, KEY)
    assert status == 200 and set(body) == {"token", "expires_at"}
    expires = datetime.fromisoformat(body["expires_at"].replace("Z", "+00:00"))
    assert expires.tzinfo is not None and expires.timestamp() > time.time()
    url = f"{server.url}?token={body['token']}"
    payloads = PAYLOADS
    _check_stream(await exchange(url, setup_msg(), payloads), SPEECH, "pcm")
    reused = await exchange(url, setup_msg(), payloads)
    await _expect_error(reused, 1008, "token")
    bogus = await exchange(f"{server.url}?token=abc", setup_msg(), payloads)
    await _expect_error(bogus, 1008, "token")
    assert server.tokens.minted == 1 and server.tokens.consumed == 1
    assert server.connections[0].auth == "token"


async def test_tokens_expire(make_server: MakeServer) -> None:
    server = await make_server(api_key=KEY, token_ttl_s=0.2)
    _, body = await _mint(server, KEY)
    await asyncio.sleep(0.3)
    ex = await exchange(f"{server.url}?token={body['token']}", setup_msg(), [], end=False)
    await _expect_error(ex, 1008, "expired")


async def test_keys_and_tokens_never_reach_the_logs(
    make_server: MakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # websockets logs request headers at DEBUG
    server = await make_server(api_key=KEY)
    _, body = await _mint(server, KEY)
    token = body["token"]
    for headers, url in (({"x-api-key": KEY}, server.url), ({"Authorization": f"Api-Key {KEY}"}, server.url),
                         (None, f"{server.url}?token={token}"), ({"x-api-key": "wrong-" + KEY}, server.url)):
        await exchange(url, setup_msg(), PAYLOADS[:3], headers=headers)
    for rec in server.connections:
        await rec.wait_ended()
    assert [r.auth for r in server.connections] == ["key", "key", "token", "rejected"]
    # Server-side records only (the raw test client's own websockets.client logs are not ours).
    records = [r for r in caplog.records if r.name.startswith(("websockets.server", "gradium_plugins"))]
    assert any("<redacted>" in r.getMessage() for r in records)  # header lines were logged, redacted
    texts = [t for r in records for t in (r.getMessage(), *map(str, r.args or ()))]
    assert not [t for t in texts if KEY in t or token in t]


async def test_voice_catalogue(make_server: MakeServer) -> None:
    server = await make_server(api_key=KEY)
    async with aiohttp.ClientSession(headers={"x-api-key": KEY}) as http:
        async with http.get(f"{server.http_base}/voices/?skip=0&limit=100&include_catalog=true") as resp:
            voices = await resp.json()
        async with http.get(f"{server.http_base}/voices/b35yykvVppLXyw_l") as resp:
            elise = await resp.json()
        async with http.get(f"{server.http_base}/voices/nope") as resp:
            assert resp.status == 404
    assert {v["language"] for v in voices} == {"en", "fr", "de", "es", "pt"}
    assert elise["name"] == "Elise" and elise["language"] == "fr"


# --- faults ------------------------------------------------------------------------------


def _no_close_frame(ex: Exchange) -> bool:
    return ex.close_code is None and isinstance(ex.error, ConnectionClosed) and ex.error.rcvd is None


async def test_abort_after_messages_drops_tcp_without_close_frame(make_server: MakeServer) -> None:
    server = await make_server(faults=FaultPlan(abort_after_messages=4))
    ex = await exchange(server.url, setup_msg(), PAYLOADS)
    assert len(ex.messages) == 4
    assert _no_close_frame(ex)
    rec = server.connections[0]
    assert await rec.wait_ended() == "aborted"
    assert rec.close_code is None and rec.messages_sent == 4


async def test_abort_after_input_seconds(make_server: MakeServer) -> None:
    server = await make_server(faults=FaultPlan(abort_after_input_s=1.0))
    ex = await exchange(server.url, setup_msg(), PAYLOADS)
    assert _no_close_frame(ex)
    rec = server.connections[0]
    assert await rec.wait_ended() == "aborted"
    assert 1.0 <= rec.input_s < 1.1
    assert not ex.of("end_of_stream")


async def test_abort_after_seconds(make_server: MakeServer) -> None:
    server = await make_server(faults=FaultPlan(abort_after_s=0.3))
    ex = await exchange(server.url, setup_msg(), [], end=False)  # idle client: only ready
    assert [m["type"] for m in ex.messages] == ["ready"]
    assert _no_close_frame(ex)


@pytest.mark.parametrize("with_error", [False, True])
async def test_close_with_code_with_or_without_error(make_server: MakeServer, with_error: bool) -> None:
    plan = FaultPlan(close_after_messages=3, close_code=1011, close_with_error=with_error)
    server = await make_server(faults=plan)
    ex = await exchange(server.url, setup_msg(), PAYLOADS)
    assert ex.close_code == 1011
    if with_error:
        assert len(ex.messages) == 4 and ex.messages[-1] == {
            "type": "error", "message": plan.close_message, "code": 1011}
    else:
        assert len(ex.messages) == 3 and not ex.of("error")
    assert await server.connections[0].wait_ended() == "fault_close"


async def test_close_after_input_seconds_with_other_code(make_server: MakeServer) -> None:
    plan = FaultPlan(close_after_input_s=0.5, close_code=1008, close_with_error=True,
                     close_message="quota exceeded")
    server = await make_server(faults=plan)
    ex = await exchange(server.url, setup_msg(), PAYLOADS)
    assert await _expect_error(ex, 1008) == "quota exceeded"


async def test_malformed_json_is_injected_once(make_server: MakeServer) -> None:
    server = await make_server(faults=FaultPlan(malformed_after_messages=2))
    ex = await exchange(server.url, setup_msg(), PAYLOADS)
    raws = [i for i, m in enumerate(ex.messages) if "_raw" in m]
    assert raws == [2]
    with pytest.raises(ValueError):
        json.loads(ex.messages[2]["_raw"])
    good = Exchange([m for m in ex.messages if "_raw" not in m], ex.close_code)
    _check_stream(good, SPEECH, "pcm")


async def test_unknown_message_types_are_interleaved(make_server: MakeServer) -> None:
    server = await make_server(faults=FaultPlan(unknown_every=3))
    ex = await exchange(server.url, setup_msg(client_req_id="c"), PAYLOADS,
                        extra={"client_req_id": "c"})
    steps = ex.of("step")
    real = [m for m in ex.messages if m["type"] != "step"]
    assert len(steps) == len(real) // 3 and steps
    assert all(m["client_req_id"] == "c" for m in steps)
    _check_stream(Exchange(real, ex.close_code), SPEECH, "pcm")


async def test_stall_stops_sending_and_answering_pings(make_server: MakeServer) -> None:
    server = await make_server(faults=FaultPlan(stall_after_messages=1))
    async with connect(server.url, ping_interval=None, close_timeout=0.5) as ws:
        await ws.send(json.dumps(setup_msg()))
        assert json.loads(await ws.recv())["type"] == "ready"
        rec = server.connections[0]
        async with asyncio.timeout(5):
            while rec.ended != "stalled":  # noqa: ASYNC110 - polling a plain attribute
                await asyncio.sleep(0.01)
        for p in PAYLOADS[:10]:
            await ws.send(audio_msg(p))
        pong = await ws.ping()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.shield(pong), 1.0)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(ws.recv(), 0.3)
        assert rec.input_s == 0.0  # nothing was read
    # The server's close does not wait for the stalled peer.
    await asyncio.wait_for(server.close(), 5)


async def test_control_ping_is_answered(echo_server: LocalServer) -> None:
    async with connect(echo_server.url, ping_interval=None) as ws:
        await ws.send(json.dumps(setup_msg()))
        await ws.recv()
        await asyncio.wait_for(await ws.ping(), 5)


async def test_stall_for_ends_with_an_abort(make_server: MakeServer) -> None:
    server = await make_server(faults=FaultPlan(stall_after_s=0.1, stall_for_s=0.3))
    ex = await exchange(server.url, setup_msg(), [], end=False, timeout_s=10)
    assert _no_close_frame(ex)
    assert await server.connections[0].wait_ended() == "stalled"


async def test_delay_output(make_server: MakeServer) -> None:
    server = await make_server(faults=FaultPlan(delay_output_s=0.5))
    t_ready: float | None = None
    t_first: float | None = None
    async with connect(server.url) as ws:
        await ws.send(json.dumps(setup_msg()))
        json.loads(await ws.recv())
        t_ready = time.monotonic()
        for p in PAYLOADS:
            await ws.send(audio_msg(p))
        await ws.send('{"type":"end_of_stream"}')
        msgs = []
        async for raw in ws:
            if t_first is None:
                t_first = time.monotonic()
            msgs.append(json.loads(raw))
    assert t_first is not None and t_first - t_ready >= 0.45
    ready = {"type": "ready", "request_id": "x", "sample_rate": 48000, "frame_size": 3840}
    _check_stream(Exchange([ready, *msgs], 1000), SPEECH, "pcm")


async def test_ready_delay_and_missing_ready(make_server: MakeServer) -> None:
    server = await make_server(
        faults=lambda i: FaultPlan(ready_delay_s=0.4) if i == 0 else FaultPlan(send_ready=False))
    async with connect(server.url) as ws:
        t0 = time.monotonic()
        await ws.send(json.dumps(setup_msg()))
        assert json.loads(await ws.recv())["type"] == "ready"
        assert time.monotonic() - t0 >= 0.35
    async with connect(server.url) as ws:
        await ws.send(json.dumps(setup_msg()))
        for p in PAYLOADS:
            await ws.send(audio_msg(p))
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(ws.recv(), 0.5)


async def test_reject_setup(make_server: MakeServer) -> None:
    server = await make_server(faults=FaultPlan(reject_setup="voice is not available for this language"))
    ex = await exchange(server.url, setup_msg(), [], end=False)
    await _expect_error(ex, 1008, "voice is not available")


async def test_faults_per_connection_and_changed_at_runtime(make_server: MakeServer) -> None:
    server = await make_server(faults=lambda i: FaultPlan(abort_after_messages=2) if i in (0, 2) else None)
    payloads = PAYLOADS
    results = [await exchange(server.url, setup_msg(), payloads) for _ in range(3)]
    assert [_no_close_frame(r) for r in results] == [True, False, True]
    _check_stream(results[1], SPEECH, "pcm")
    server.faults = FaultPlan(close_after_messages=1)
    assert (await exchange(server.url, setup_msg(), payloads)).close_code == 1011
    server.faults = None
    _check_stream(await exchange(server.url, setup_msg(), payloads), SPEECH, "pcm")
    assert [c.index for c in server.connections] == [0, 1, 2, 3, 4]


async def test_abort_connections_mid_stream(echo_server: LocalServer) -> None:
    async with connect(echo_server.url) as ws:
        await ws.send(json.dumps(setup_msg()))
        await ws.recv()
        assert echo_server.abort_connections() == 1
        with pytest.raises(ConnectionClosed) as info:
            await ws.recv()
        assert info.value.rcvd is None


# --- session cap, stamps, pacing -----------------------------------------------------------


async def test_session_cap(make_server: MakeServer) -> None:
    server = await make_server(max_session_s=1.5)
    ex = await exchange(server.url, setup_msg(), PAYLOADS)
    message = await _expect_error(ex, 1008)
    assert message == "session length limit of 1.5 s reached"
    # What was translated before the cap was delivered (the cap falls inside the second tone).
    assert [parse_echo(t)[3] for t in ex.texts] == SPEECH.freqs[:1]
    rec = server.connections[0]
    assert await rec.wait_ended() == "session_cap"
    assert 1.5 < rec.input_s <= 1.5 + 0.081


async def test_session_cap_from_fault_plan_overrides_server(make_server: MakeServer) -> None:
    server = await make_server(max_session_s=100, faults=FaultPlan(max_session_s=0.5))
    ex = await exchange(server.url, setup_msg(), PAYLOADS)
    await _expect_error(ex, 1008, "session length limit of 0.5 s")


async def test_stamp_sends_perf_counter_ns_as_stream_id(make_server: MakeServer) -> None:
    server = await make_server(stamp=True)
    ex = await exchange(server.url, setup_msg(client_req_id="s"), PAYLOADS,
                        extra={"client_req_id": "s"})
    before = time.perf_counter_ns()
    stamps = [m["stream_id"] for m in ex.of("audio")]
    assert stamps and all(isinstance(s, int) for s in stamps)
    assert stamps == sorted(stamps) and stamps[-1] <= before  # perf_counter_ns when sent
    assert all(m["client_req_id"] == "s" for m in ex.of("audio"))
    assert all(m.get("stream_id") == 0 for m in ex.messages if m["type"] == "text")


async def test_output_realtime_paces_audio(make_server: MakeServer) -> None:
    speech = make_speech([500], 1.0)
    server = await make_server(output_realtime=True)
    arrivals: list[float] = []
    async with connect(server.url) as ws:
        await ws.send(json.dumps(setup_msg()))
        for p in split_payload(encode_input(speech, "pcm"), "pcm"):
            await ws.send(audio_msg(p))
        await ws.send('{"type":"end_of_stream"}')
        async for raw in ws:
            if json.loads(raw)["type"] == "audio":
                arrivals.append(time.monotonic())
    assert len(arrivals) == 13
    # 1 s of audio cannot arrive faster than real time (first frame leaves at t=0).
    assert arrivals[-1] - arrivals[0] >= 0.9


async def test_stream_fed_in_real_time_like_a_client(echo_server: LocalServer) -> None:
    """Utterances come back while the client is still talking (not only at end_of_stream)."""
    speech = make_speech([440, 660], 0.3, gap_s=0.5, tail_s=0.6)
    payloads = split_payload(encode_input(speech, "pcm"), "pcm")
    ws: ClientConnection
    async with connect(echo_server.url) as ws:
        await ws.send(json.dumps(setup_msg()))
        await ws.recv()
        for p in payloads[:10]:  # first tone (ends at 0.5 s) + 0.3 s of its pause
            await ws.send(audio_msg(p))
        text = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert text["type"] == "text" and parse_echo(text["text"])[3] == 440


async def test_module_entry_point_serves_until_sigterm() -> None:
    import signal
    import sys

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gradium_plugins.local", "--port", "0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        url = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().strip()
        assert url.startswith("ws://127.0.0.1:") and url.endswith("/api/speech/s2s")
        _check_stream(await exchange(url, setup_msg(), PAYLOADS), SPEECH, "pcm")
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
