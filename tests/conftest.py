"""Shared fixtures: a running local server (echo engine) and synthetic test speech.

Test "speech" is a sequence of utterances, each a tone of its own frequency, separated by
silences. The echo engine answers every utterance with a text naming its index, duration and
dominant frequency (rounded to 10 Hz), so a test can tell which utterance came back, even
across reconnects. Keep frequencies below 3.5 kHz (8 kHz formats) and >= 30 Hz apart.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from gradium_plugins.audio import Int16Array, alaw_encode, resample, ulaw_encode, wav_header
from gradium_plugins.formats import get_format
from gradium_plugins.local import ECHO_TEXT_RE, LocalServer, serve

# --- event loops -------------------------------------------------------------------------

try:
    import uvloop
except ImportError:  # not on Windows; the dev extra installs it elsewhere
    uvloop = None


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Any]:
    """Tests marked ``any_loop`` run under the default loop and uvloop (where the frameworks run us).

    Pipecat's runner (uvicorn) and LiveKit Agents workers run on uvloop, whose subprocess pipes
    and sockets differ from the default loop's; other tests keep the default loop only.
    """
    if uvloop is not None and item.get_closest_marker("any_loop") is not None:
        return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
    return {"asyncio": asyncio.new_event_loop}


#: End-to-end modules that take seconds per test (real models, a browser, whole agent calls).
_SLOW_MODULES = ("test_multilingual_agents.py", "test_bench.py", "test_docs.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the slow end-to-end tests ``slow``: ``-m "not slow"`` gives a quick run while developing."""
    for item in items:
        slow = item.get_closest_marker("offline") or item.get_closest_marker("browser")
        if slow or item.path.name in _SLOW_MODULES:
            item.add_marker(pytest.mark.slow)


# --- synthetic speech --------------------------------------------------------------------


def tone(freq: float, seconds: float, rate: int = 24000, amplitude: float = 0.3) -> Int16Array:
    """A sine tone with 5 ms fades (no clicks), as int16."""
    n = round(seconds * rate)
    t = np.arange(n, dtype=np.float64) / rate
    wave = np.sin(2 * np.pi * freq * t) * amplitude
    fade = min(n // 2, round(0.005 * rate))
    if fade:
        ramp = np.linspace(0.0, 1.0, fade)
        wave[:fade] *= ramp
        wave[n - fade :] *= ramp[::-1]
    return np.round(wave * 32767).astype(np.int16)


def utterance_freqs(n: int, base: int = 300, step: int = 50) -> list[int]:
    """``n`` distinct utterance frequencies (multiples of 10 Hz, 8 kHz-safe for n <= 60)."""
    return [base + step * i for i in range(n)]


@dataclass
class Speech:
    """Synthetic speech: tones separated by silences.

    Attributes:
        samples: Mono int16 audio.
        rate: Its sample rate.
        freqs: Frequency of each utterance, in order.
        durations: Duration of each utterance in seconds.
        starts: Start time of each utterance in seconds.
    """

    samples: Int16Array
    rate: int
    freqs: list[int]
    durations: list[float]
    starts: list[float] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return self.samples.size / self.rate

    def at(self, rate: int) -> Int16Array:
        """The audio resampled to ``rate``."""
        return resample(self.samples, self.rate, rate)


def make_speech(
    freqs: Iterable[int],
    durations: float | Iterable[float] = 0.6,
    gap_s: float = 0.5,
    rate: int = 24000,
    lead_s: float = 0.2,
    tail_s: float = 0.5,
    amplitude: float = 0.3,
) -> Speech:
    """Build test speech: one tone per frequency, ``gap_s`` of silence between them."""
    freqs = list(freqs)
    if isinstance(durations, int | float):
        durs = [float(durations)] * len(freqs)
    else:
        durs = [float(d) for d in durations]
    assert len(durs) == len(freqs)
    parts = [np.zeros(round(lead_s * rate), dtype=np.int16)]
    starts = []
    pos = parts[0].size
    for i, (f, d) in enumerate(zip(freqs, durs, strict=True)):
        if i:
            parts.append(np.zeros(round(gap_s * rate), dtype=np.int16))
            pos += parts[-1].size
        starts.append(pos / rate)
        parts.append(tone(f, d, rate, amplitude))
        pos += parts[-1].size
    parts.append(np.zeros(round(tail_s * rate), dtype=np.int16))
    return Speech(np.concatenate(parts), rate, freqs, durs, starts)


def parse_echo(text: str) -> tuple[str, int, float, int]:
    """Parse an echo text into ``(lang, index, duration_s, freq_hz)``."""
    m = ECHO_TEXT_RE.match(text)
    assert m is not None, f"not an echo text: {text!r}"
    return m["lang"], int(m["n"]), float(m["dur"]), int(m["freq"])


def encode_input(speech: Speech, fmt_name: str, wav_rate: int = 24000) -> bytes:
    """Encode speech in a wire input format (WAV: streaming RIFF header + PCM at ``wav_rate``)."""
    fmt = get_format(fmt_name)
    rate = wav_rate if fmt.codec == "wav" else fmt.input_rate
    pcm = speech.at(rate)
    if fmt.codec == "ulaw":
        return ulaw_encode(pcm)
    if fmt.codec == "alaw":
        return alaw_encode(pcm)
    data = pcm.astype("<i2").tobytes()
    return wav_header(rate) + data if fmt.codec == "wav" else data


def split_payload(data: bytes, fmt_name: str, chunk_s: float = 0.08, wav_rate: int = 24000) -> list[bytes]:
    """Cut encoded input into ~80 ms payloads (a WAV header rides on the first one)."""
    fmt = get_format(fmt_name)
    rate = wav_rate if fmt.codec == "wav" else fmt.input_rate
    step = round(rate * chunk_s) * fmt.bytes_per_sample()
    head = 44 if fmt.codec == "wav" else 0
    body = data[head:]
    out = [body[i : i + step] for i in range(0, len(body), step)]
    if head:
        out[0] = data[:head] + out[0]
    return out


# --- raw protocol client -----------------------------------------------------------------


def setup_msg(
    input_format: str = "pcm", output_format: str = "pcm", target_language: str | None = "fr", **extra: Any
) -> dict[str, Any]:
    """A ``setup`` message as a dict."""
    msg: dict[str, Any] = {"type": "setup", "model_name": "default", "input_format": input_format,
                           "output_format": output_format, "voice_id": "b35yykvVppLXyw_l"}
    if target_language is not None:
        msg["json_config"] = {"target_language": target_language}
    msg.update(extra)
    return msg


def audio_msg(payload: bytes, **extra: Any) -> str:
    return json.dumps({"type": "audio", "audio": base64.b64encode(payload).decode(), **extra})


@dataclass
class Exchange:
    """Everything a raw client saw on one connection.

    Attributes:
        messages: Server messages, parsed (``{"_raw": text}`` for non-JSON frames).
        close_code: Close code received from the server (None: no close frame, e.g. TCP abort).
        close_reason: Its reason.
        error: The ConnectionClosed exception that ended reading, if any.
    """

    messages: list[dict[str, Any]] = field(default_factory=list)
    close_code: int | None = None
    close_reason: str | None = None
    error: BaseException | None = None

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m.get("type") == kind]

    @property
    def texts(self) -> list[str]:
        return [m["text"] for m in self.of("text")]


async def exchange(
    url: str,
    setup: dict[str, Any] | str | None,
    payloads: Iterable[bytes] = (),
    *,
    end: bool = True,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
    timeout_s: float = 20.0,
) -> Exchange:
    """Run one stream with a raw websockets client; read until the server closes.

    ``setup`` may be a dict, a raw string (sent as is) or None (nothing sent first).
    """
    result = Exchange()
    extra = extra or {}
    async with asyncio.timeout(timeout_s):
        async with connect(url, additional_headers=headers, compression=None, max_size=2**24,
                           ping_interval=None) as ws:

            async def reader() -> None:
                try:
                    async for raw in ws:
                        try:
                            result.messages.append(json.loads(raw))
                        except ValueError:
                            result.messages.append({"_raw": raw})
                except ConnectionClosed as exc:
                    result.error = exc

            task = asyncio.create_task(reader())
            try:
                if setup is not None:
                    await ws.send(setup if isinstance(setup, str) else json.dumps(setup))
                for p in payloads:
                    await ws.send(audio_msg(p, **extra))
                if end:
                    await ws.send(json.dumps({"type": "end_of_stream", **extra}))
            except ConnectionClosed:
                pass
            await task
            rcvd = ws.protocol.close_rcvd
            result.close_code = rcvd.code if rcvd is not None else None
            result.close_reason = rcvd.reason if rcvd is not None else None
    return result


def decode_output(ex: Exchange, output_format: str) -> Int16Array:
    """Concatenate and decode every audio payload of an exchange."""
    from gradium_plugins.audio import WireDecoder

    dec = WireDecoder(get_format(output_format), "output")
    parts = [dec.decode(base64.b64decode(m["audio"])) for m in ex.of("audio")]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int16)


# --- fixtures ----------------------------------------------------------------------------


@pytest.fixture
async def echo_server() -> AsyncIterator[LocalServer]:
    """A started local server with the echo engine, closed after the test."""
    server = await serve(engine="echo")
    try:
        yield server
    finally:
        await server.close()


@pytest.fixture
async def make_server() -> AsyncIterator[Callable[..., Awaitable[LocalServer]]]:
    """Factory ``await make_server(**serve_kwargs)``; every server it made is closed after the test."""
    servers: list[LocalServer] = []

    async def factory(**kwargs: Any) -> LocalServer:
        server = await serve(**kwargs)
        servers.append(server)
        return server

    try:
        yield factory
    finally:
        for server in servers:
            await server.close()
