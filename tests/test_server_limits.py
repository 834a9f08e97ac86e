"""The local server against bad and hostile raw clients: limits, timeouts, validation, safe defaults.

One section per point of issue 13: timeouts and the connection cap, WAV header validation,
byte budgets, bounded history, security defaults, and the odd-byte PCM policy.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import struct
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Origin

from gradium_plugins.audio import Int16Array, wav_header
from gradium_plugins.errors import ConfigurationError
from gradium_plugins.local import (
    Engine,
    EngineSession,
    EngineSetup,
    LocalServer,
    ServerLimits,
    Utterance,
    serve,
)
from tests.conftest import (
    Exchange,
    audio_msg,
    encode_input,
    exchange,
    make_speech,
    setup_msg,
    split_payload,
    utterance_freqs,
)

SRC = str(Path(__file__).resolve().parents[1] / "src")
MakeServer = Callable[..., Awaitable[LocalServer]]
KEY = "gd_local_limits_key_0123456789"
SPEECH = make_speech(utterance_freqs(2, base=400, step=200), [0.4, 0.5], gap_s=0.45)
PAYLOADS = split_payload(encode_input(SPEECH, "pcm"), "pcm")


def _error_of(ex: Exchange, code: int = 1008) -> str:
    errors = ex.of("error")
    assert len(errors) == 1, ex.messages
    assert errors[0]["code"] == code
    assert ex.close_code == code
    message = errors[0]["message"]
    assert isinstance(message, str)
    return message


async def _wait_for(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not predicate():  # noqa: ASYNC110 - polling server state
            await asyncio.sleep(0.01)


# --- 1. setup and idle timeouts, connection cap ----------------------------------------------


async def test_connections_that_never_send_setup_are_closed(make_server: MakeServer) -> None:
    server = await make_server(limits=ServerLimits(setup_timeout_s=0.3))
    results = await asyncio.gather(*(exchange(server.url, None, end=False, timeout_s=10) for _ in range(20)))
    for ex in results:
        message = _error_of(ex)
        assert "setup" in message and "0.3 s" in message
    for rec in server.connections:
        assert await rec.wait_ended() == "setup_timeout"
        assert rec.close_code == 1008
    assert server.active == 0


async def test_silent_stream_is_closed_after_the_idle_timeout(make_server: MakeServer) -> None:
    server = await make_server(limits=ServerLimits(idle_timeout_s=0.4))
    ex = await exchange(server.url, setup_msg(), [], end=False, timeout_s=10)
    assert ex.messages[0]["type"] == "ready"
    message = _error_of(ex)
    assert "no message" in message and "0.4 s" in message
    assert await server.connections[0].wait_ended() == "idle_timeout"


async def test_a_client_pausing_less_than_the_idle_timeout_is_served(make_server: MakeServer) -> None:
    server = await make_server(limits=ServerLimits(idle_timeout_s=0.5))
    async with connect(server.url, compression=None) as ws:
        await ws.send(json.dumps(setup_msg()))
        for p in PAYLOADS[:8]:
            await ws.send(audio_msg(p))
            await asyncio.sleep(0.1)  # 0.8 s in all: longer than the timeout, but never silent that long
        for p in PAYLOADS[8:]:
            await ws.send(audio_msg(p))
        await ws.send('{"type":"end_of_stream"}')
        kinds = [json.loads(m)["type"] async for m in ws]
    assert kinds[0] == "ready" and kinds[-1] == "end_of_stream" and "error" not in kinds
    assert await server.connections[0].wait_ended() == "eos"


async def test_kept_socket_waits_for_the_next_setup_for_the_idle_timeout(make_server: MakeServer) -> None:
    # close_ws_on_eos=false: between requests the idle timeout applies, not the (shorter) setup one.
    server = await make_server(limits=ServerLimits(setup_timeout_s=0.2, idle_timeout_s=0.8))
    async with connect(server.url, compression=None) as ws:
        await ws.send(json.dumps(setup_msg(close_ws_on_eos=False)))
        await ws.send('{"type":"end_of_stream"}')
        while json.loads(await ws.recv())["type"] != "end_of_stream":
            pass
        await asyncio.sleep(0.4)
        await ws.send(json.dumps(setup_msg()))
        assert json.loads(await ws.recv())["type"] == "ready"
        err = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert err["type"] == "error" and "0.8 s" in err["message"]


async def test_connection_cap_refuses_with_503(make_server: MakeServer) -> None:
    server = await make_server(limits=ServerLimits(max_connections=3))
    async with connect(server.url) as a, connect(server.url), connect(server.url):
        with pytest.raises(InvalidStatus) as info:
            async with connect(server.url):
                pass
        assert info.value.response.status_code == 503
        assert b"3 connections" in info.value.response.body
        await a.close()
        await _wait_for(lambda: server.active < 3)
        async with connect(server.url) as d:  # a slot is free again
            await d.send(json.dumps(setup_msg()))
            assert json.loads(await d.recv())["type"] == "ready"


async def test_slow_handshake_is_dropped(make_server: MakeServer) -> None:
    server = await make_server(limits=ServerLimits(handshake_timeout_s=0.3))
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /api/speech/s2s HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never finished
    await writer.drain()
    async with asyncio.timeout(5):
        assert await reader.read() == b""  # the server hung up
    writer.close()


# --- 2. WAV input header validation ----------------------------------------------------------


def _wav(rate: int = 16000, channels: int = 1, bits: int = 16, tag: int = 1, fmt_size: int = 16) -> bytes:
    block = channels * bits // 8
    fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * block, block, bits)
    fmt = (fmt + b"\0" * 8)[:fmt_size]
    return (
        b"RIFF"
        + struct.pack("<I", 0xFFFFFFFF)
        + b"WAVE"
        + b"fmt "
        + struct.pack("<I", fmt_size)
        + fmt
        + b"data"
        + struct.pack("<I", 0xFFFFFFFF)
    )


_PCM = b"\0\1" * 1000


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        (_wav(rate=1) + _PCM, ("sample rate", "1 Hz", "8000")),
        (_wav(rate=0) + _PCM, ("sample rate", "0 Hz")),
        (_wav(rate=96000) + _PCM, ("sample rate", "96000")),
        (_wav(channels=0) + _PCM, ("channels", "0")),
        (_wav(bits=0) + _PCM, ("bits", "0")),
        (_wav(bits=12) + _PCM, ("bits", "12")),
        (_wav(tag=3) + _PCM, ("format tag", "3")),
        (_wav(fmt_size=8) + _PCM, ("fmt chunk", "8 bytes")),
        (_wav()[:30], ("fmt chunk",)),  # the header cut inside its fmt chunk
        (_wav()[:36], ("data chunk",)),
    ],
)
async def test_bad_wav_headers_are_refused_naming_the_field(
    echo_server: LocalServer, caplog: pytest.LogCaptureFixture, payload: bytes, words: tuple[str, ...]
) -> None:
    ex = await exchange(echo_server.url, setup_msg("wav", "pcm"), [payload], end=False)
    message = _error_of(ex)
    for w in words:
        assert w in message, message
    rec = echo_server.connections[-1]
    assert await rec.wait_ended() == "error"
    assert rec.input_s == 0.0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # no traceback: a client error


@pytest.mark.parametrize(("rate", "channels", "bits"), [(8000, 1, 8), (48000, 2, 24), (22050, 3, 32)])
async def test_wav_headers_in_range_are_accepted(
    echo_server: LocalServer, rate: int, channels: int, bits: int
) -> None:
    ex = await exchange(
        echo_server.url,
        setup_msg("wav", "pcm"),
        [wav_header(rate, channels=channels, sample_width=bits // 8) + bytes(rate * channels * bits // 40)],
    )
    assert ex.close_code == 1000 and not ex.of("error")
    assert echo_server.connections[-1].input_s == pytest.approx(0.2, abs=1e-3)


async def test_a_second_wav_header_must_not_change_the_format(echo_server: LocalServer) -> None:
    pcm = bytes(3200)
    ex = await exchange(
        echo_server.url,
        setup_msg("wav", "pcm"),
        [wav_header(16000) + pcm, wav_header(16000) + pcm, wav_header(8000) + pcm],
        end=False,
    )
    assert "changed" in _error_of(ex)


# --- 3. byte budgets -----------------------------------------------------------------------


class _StuckEngine(Engine):
    """Reads no input at all (an engine far behind its input)."""

    name = "stuck"

    def open(self, setup: EngineSetup) -> EngineSession:
        return _StuckSession()


class _StuckSession(EngineSession):
    async def run(self, audio: AsyncIterator[Int16Array]) -> AsyncIterator[Utterance]:
        await asyncio.Event().wait()
        yield Utterance(text="never", audio=np.zeros(1, np.int16))


class _LoudEngine(Engine):
    """Answers every input chunk with 5 s of output audio at once."""

    name = "loud"

    def open(self, setup: EngineSetup) -> EngineSession:
        return _LoudSession()


class _LoudSession(EngineSession):
    async def run(self, audio: AsyncIterator[Int16Array]) -> AsyncIterator[Utterance]:
        async for _ in audio:
            yield Utterance(text="loud", audio=np.full(5 * 48000, 1000, np.int16))


async def test_input_waiting_for_the_engine_is_bounded_in_bytes(make_server: MakeServer) -> None:
    budget = 256 * 1024
    server = await make_server(engine=_StuckEngine(), limits=ServerLimits(max_input_buffer_bytes=budget))
    message = bytes(48000 * 2)  # 2 s at 24 kHz: 96 KB decoded
    async with connect(server.url, compression=None, close_timeout=0.5) as ws:
        await ws.send(json.dumps(setup_msg()))
        with pytest.raises(TimeoutError):  # the server stops reading: TCP pushes back on the client
            async with asyncio.timeout(3):
                for _ in range(400):  # 38 MB if nothing pushed back
                    await ws.send(audio_msg(message))
        rec = server.connections[0]
        assert 0 < rec.input_buffer_peak <= budget + len(message)
        assert rec.input_s < 400 * 2
        ws.transport.abort()  # its own unsent megabytes would hold up a closing handshake


async def test_a_client_that_never_reads_is_closed(make_server: MakeServer) -> None:
    server = await make_server(engine=_LoudEngine(), limits=ServerLimits(send_timeout_s=0.5))
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    async with connect(
        server.url, sock=sock, compression=None, max_queue=1, ping_interval=None, close_timeout=0.5
    ) as ws:
        await ws.send(json.dumps(setup_msg()))
        with contextlib.suppress(ConnectionClosed):
            for p in PAYLOADS:  # never reads: 5 s of output per 80 ms of input piles up
                await ws.send(audio_msg(p))
        rec = server.connections[0]
        assert await rec.wait_ended(15) == "slow_client"
        assert rec.error is not None and "did not read" in rec.error and "0.5 s" in rec.error


async def test_default_message_size_limit_refuses_huge_messages(echo_server: LocalServer) -> None:
    ex = await exchange(echo_server.url, setup_msg(), [bytes(900_000)])  # 1.2 MB of base64: over 1 MiB
    assert ex.close_code == 1009
    assert not ex.of("end_of_stream")


# --- 4. bounded history ----------------------------------------------------------------------


async def test_connection_history_is_bounded(make_server: MakeServer) -> None:
    server = await make_server(limits=ServerLimits(history=5))
    for _ in range(8):
        ex = await exchange(server.url, setup_msg(), [])
        assert ex.close_code == 1000
    await _wait_for(lambda: server.active == 0)
    assert [r.index for r in server.connections] == [3, 4, 5, 6, 7]
    assert server.connections_total == 8


async def test_large_setups_are_not_kept(echo_server: LocalServer) -> None:
    setup = setup_msg(padding="x" * 512 * 1024)
    ex = await exchange(echo_server.url, setup, PAYLOADS)
    assert ex.close_code == 1000
    rec = echo_server.connections[-1]
    assert rec.setup is not None and rec.setup["voice_id"] == "b35yykvVppLXyw_l"
    assert rec.setup["input_format"] == "pcm"
    assert len(json.dumps(rec.setups)) < 16 * 1024


# --- 5. security defaults --------------------------------------------------------------------


async def test_non_loopback_host_without_key_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="insecure"):
        await serve(host="0.0.0.0")
    with pytest.raises(ConfigurationError, match="api_key"):
        await serve(host="::")


async def test_browser_origins_are_refused_by_an_unauthenticated_server(make_server: MakeServer) -> None:
    server = await make_server()
    with pytest.raises(InvalidStatus) as info:
        async with connect(server.url, origin=Origin("https://evil.example")):
            pass
    assert info.value.response.status_code == 403
    async with connect(server.url):  # no Origin header: not a browser
        pass
    allowed = await make_server(allowed_origins=["http://localhost:3000"])
    async with connect(allowed.url, origin=Origin("http://localhost:3000")):
        pass
    with pytest.raises(InvalidStatus):
        async with connect(allowed.url, origin=Origin("http://localhost:3001")):
            pass


async def test_api_key_in_the_query_string_never_reaches_the_logs(
    make_server: MakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server = await make_server(api_key=KEY)
    for query in (f"?api_key={KEY}", f"?x=1&api_key={KEY}", f"?apikey={KEY}", f"?key={KEY}"):
        await exchange(server.url + query, setup_msg(), [], end=False)
    records = [r for r in caplog.records if r.name.startswith(("websockets.server", "gradium_plugins"))]
    assert any("api_key=<redacted>" in r.getMessage() for r in records)
    assert not [r for r in records if KEY in r.getMessage()]


async def _start_cli(*args: str, env: dict[str, str]) -> tuple[asyncio.subprocess.Process, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **env},
    )
    assert proc.stdout is not None
    async with asyncio.timeout(30):
        while True:
            line = (await proc.stdout.readline()).decode()
            assert line, "the server exited"
            if "ws://" in line:
                return proc, "ws://" + line.split("ws://", 1)[1].split()[0]


@pytest.mark.parametrize("module", ["gradium_plugins.cli serve", "gradium_plugins.local"])
async def test_cli_reads_the_api_key_from_an_environment_variable(module: str) -> None:
    env = {"MY_SERVER_KEY": KEY, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])}
    proc, url = await _start_cli(
        *module.split(),
        "--port",
        "0",
        "--api-key-env",
        "MY_SERVER_KEY",
        "--setup-timeout",
        "5",
        "--max-connections",
        "10",
        env=env,
    )
    try:
        assert KEY not in await asyncio.to_thread(Path(f"/proc/{proc.pid}/cmdline").read_text)
        _error_of(await exchange(url, setup_msg(), [], end=False))
        ok = await exchange(url, setup_msg(), PAYLOADS, headers={"x-api-key": KEY})
        assert ok.close_code == 1000 and ok.texts
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0


@pytest.mark.parametrize("module", ["gradium_plugins.cli serve", "gradium_plugins.local"])
def test_cli_refuses_a_public_host_without_key_or_insecure(module: str) -> None:
    import subprocess

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-m", *module.split(), "--host", "0.0.0.0", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert done.returncode == 2
    assert "--insecure" in done.stderr and "--api-key-env" in done.stderr


# --- 6. odd-length PCM payloads: the odd byte is kept for the next message --------------------


class _RecordingEngine(Engine):
    """Keeps every input sample it receives."""

    name = "recording"

    def __init__(self) -> None:
        self.received: list[Int16Array] = []

    def open(self, setup: EngineSetup) -> EngineSession:
        return _RecordingSession(self)


class _RecordingSession(EngineSession):
    def __init__(self, engine: _RecordingEngine) -> None:
        self.engine = engine

    async def run(self, audio: AsyncIterator[Int16Array]) -> AsyncIterator[Utterance]:
        async for chunk in audio:
            self.engine.received.append(chunk)
        yield Utterance(text="done", audio=np.zeros(480, np.int16))


@pytest.mark.parametrize("fmt", ["pcm", "wav"])
async def test_odd_length_payloads_keep_their_odd_byte_for_the_next_message(
    make_server: MakeServer, fmt: str
) -> None:
    engine = _RecordingEngine()
    server = await make_server(engine=engine)
    samples = np.arange(-12000, 12000, dtype=np.int16) * 7  # 1 s at 24 kHz, every sample different
    data = samples.astype("<i2").tobytes()
    if fmt == "wav":
        data = wav_header(24000) + data
    sizes = [1, 3, 2, 999, 4001, 1]
    payloads, pos = [], 0
    while pos < len(data):
        size = sizes[len(payloads) % len(sizes)]
        if fmt == "wav" and not payloads:
            size = 45  # the header plus one odd byte
        payloads.append(data[pos : pos + size])
        pos += size
    ex = await exchange(server.url, setup_msg(fmt, "pcm"), [*payloads, b"\x7f"])  # a dangling last byte
    assert ex.close_code == 1000
    got = np.concatenate(engine.received)
    assert np.array_equal(got, samples)  # every sample intact and in place; the dangling byte dropped


async def test_minted_tokens_are_bounded(make_server: MakeServer) -> None:
    server = await make_server(api_key=KEY)
    server.tokens.max_tokens = 3
    async with aiohttp.ClientSession(headers={"x-api-key": KEY}) as http:
        tokens = []
        for _ in range(5):
            async with http.get(f"{server.http_base}/api-keys/token") as resp:
                tokens.append((await resp.json())["token"])
    assert len(server.tokens._tokens) == 3
    # The two oldest were forgotten, the newest still work.
    old = await exchange(f"{server.url}?token={tokens[0]}", setup_msg(), [], end=False)
    assert "token" in _error_of(old)
    new = await exchange(f"{server.url}?token={tokens[-1]}", setup_msg(), PAYLOADS)
    assert new.close_code == 1000
    open_server = await make_server()
    async with aiohttp.ClientSession() as http:
        for _ in range(5):
            async with http.get(f"{open_server.http_base}/api-keys/token") as resp:
                assert resp.status == 200
    assert len(open_server.tokens._tokens) == 0  # no key: tokens are never checked, none kept
