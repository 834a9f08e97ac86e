"""The interpreter bot in a real browser: headless Chromium talks to it over WebRTC, as a person would.

The bot is started exactly as the docs say (``python examples/pipecat_interpreter_bot.py``, Pipecat's
runner and all, which runs on uvloop); Chromium opens its ``/interpreter`` page with a fake
microphone playing a WAV file, connects, and records what it receives (WebAudio, handed back over
the DevTools protocol). A test that cannot start Chromium fails with the install command.

Test traffic stays on loopback: the bot runs with ``GRADIUM_WEBRTC_LOOPBACK=1`` (its ICE offers,
sends to and answers 127.0.0.1 only) and Chromium gathers loopback candidates; every conversation
checks from the browser's side (WebRTC stats, the bot's SDP answer) that the media went over 127.0.0.1.

``GRADIUM_UPDATE_SCREENSHOT=1`` makes the offline test refresh the docs' screenshot
(``docs/images/interpreter-page.png``) from the page it drove.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import importlib.util
import ipaddress
import os
import signal
import socket
import subprocess
import sys
import unicodedata
import wave
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from gradium_plugins.audio import Int16Array, resample
from gradium_plugins.local import dominant_frequency
from tests.conftest import make_speech, parse_echo

from .cdp import INSTALL_HINT, Browser, find_chromium

RUNNER = ("pipecat", "aiortc", "fastapi", "uvicorn")
RUNNER_MISSING = [m for m in RUNNER if importlib.util.find_spec(m) is None]
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        bool(RUNNER_MISSING),
        reason="Pipecat's runner is not installed: pip install 'gradium-plugins[pipecat-runner]'",
    ),
]

ROOT = Path(__file__).resolve().parents[2]
BOT = ROOT / "examples" / "pipecat_interpreter_bot.py"
SCREENSHOT = ROOT / "docs" / "images" / "interpreter-page.png"
RATE = 48000
ENV_LOOPBACK = "GRADIUM_WEBRTC_LOOPBACK"  # the bot's opt-in: ICE on 127.0.0.1 only

# Injected into the page: record the translated speech the browser plays (WebAudio, 48 kHz mono).
RECORDER_JS = """
window.recording = { chunks: [], started: false };
window.addEventListener("interpreter-audio", (event) => {
  const ctx = new AudioContext({ sampleRate: 48000 });
  const node = ctx.createScriptProcessor(4096, 1, 1);
  node.onaudioprocess = (e) => {
    window.recording.chunks.push(new Float32Array(e.inputBuffer.getChannelData(0)));
  };
  ctx.createMediaStreamSource(event.detail).connect(node);
  node.connect(ctx.destination);
  ctx.resume();
  window.recording.started = true;
}, { once: true });
true
"""
# The connection as the browser sees it: every candidate pair, the selected one, the bot's answer.
ICE_JS = """
(async () => {
  const pc = window.interpreter.pc;
  const reports = new Map();
  (await pc.getStats()).forEach((r) => reports.set(r.id, r));
  const candidate = (id) => {
    const c = reports.get(id);
    return c ? { address: c.address, port: c.port, type: c.candidateType, protocol: c.protocol } : null;
  };
  const pairs = {};
  for (const r of reports.values()) {
    if (r.type !== "candidate-pair") continue;
    pairs[r.id] = {
      state: r.state, nominated: !!r.nominated, local: candidate(r.localCandidateId),
      remote: candidate(r.remoteCandidateId), requestsSent: r.requestsSent || 0,
      responsesReceived: r.responsesReceived || 0, bytesSent: r.bytesSent || 0,
      bytesReceived: r.bytesReceived || 0,
    };
  }
  const remotes = [...reports.values()].filter((r) => r.type === "remote-candidate").map((r) => r.address);
  const transport = [...reports.values()].find((r) => r.type === "transport" && r.selectedCandidatePairId);
  return {
    pairs, remotes, selected: transport ? pairs[transport.selectedCandidatePairId] : null,
    answer: pc.remoteDescription.sdp,
  };
})()
"""
TAKE_RECORDING_JS = """
(() => {
  const chunks = window.recording.chunks;
  const n = chunks.reduce((s, c) => s + c.length, 0);
  const pcm = new Int16Array(n);
  let i = 0;
  for (const c of chunks) {
    for (const x of c) pcm[i++] = Math.max(-32768, Math.min(32767, Math.round(x * 32767)));
  }
  const bytes = new Uint8Array(pcm.buffer);
  let s = "";
  for (let k = 0; k < bytes.length; k += 32768) {
    s += String.fromCharCode.apply(null, bytes.subarray(k, k + 32768));
  }
  return btoa(s);
})()
"""


@pytest.fixture(scope="module")
def chromium() -> str:
    exe = find_chromium()
    if exe is None:
        pytest.fail(INSTALL_HINT, pytrace=False)
    return exe


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _write_wav(path: Path, samples: Int16Array, rate: int = RATE) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.astype("<i2").tobytes())


def _read_wav(path: Path) -> tuple[Int16Array, int]:
    with wave.open(str(path), "rb") as w:
        return np.frombuffer(w.readframes(w.getnframes()), "<i2").copy(), w.getframerate()


@contextlib.asynccontextmanager
async def running_bot(tmp_path: Path, **env: str) -> AsyncIterator[str]:
    """``python examples/pipecat_interpreter_bot.py --port N`` with no Gradium key; yields its base URL."""
    port = _free_port()
    child_env = {k: v for k, v in os.environ.items() if not k.startswith(("GRADIUM_", "INTERPRETER_"))}
    child_env[ENV_LOOPBACK] = "1"  # test traffic: 127.0.0.1 only
    child_env.update(env)
    child_env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), child_env.get("PYTHONPATH", "")])
    log_path = tmp_path / "bot.log"
    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(BOT), "--host", "127.0.0.1", "--port", str(port),
            cwd=ROOT, env=child_env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            async with asyncio.timeout(90):
                while True:
                    assert proc.returncode is None, log_path.read_text(errors="replace")[-3000:]
                    with contextlib.suppress(aiohttp.ClientError):
                        async with http.get(f"{base}/interpreter/config") as resp:
                            if resp.status == 200:
                                break
                    await asyncio.sleep(0.3)
        yield base
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        print(log_path.read_text(errors="replace")[-4000:])


async def talk(
    base: str, speech: Int16Array, tmp_path: Path, target: str, source: str, expect_lines: int
) -> tuple[Int16Array, list[dict[str, str]]]:
    """Open the page, pick the languages, connect, let the fake microphone speak; return what came back."""
    wav = tmp_path / "speech.wav"
    # Lead silence: the microphone starts with getUserMedia, before the WebRTC connection is up.
    lead, tail = np.zeros(3 * RATE, np.int16), np.zeros(2 * RATE, np.int16)
    _write_wav(wav, np.concatenate([lead, speech, tail]))
    async with Browser.launch(f"{base}/interpreter?processing=off", wav, tmp_path / "profile") as browser:
        await browser.wait_for("document.body?.dataset.ready === '1'", 30)
        await browser.evaluate(RECORDER_JS)
        await browser.evaluate(
            f"document.getElementById('target').value = '{target}';"
            f"document.getElementById('source').value = '{source}';"
            "document.getElementById('settings').requestSubmit(); true"
        )
        await browser.wait_for("window.recording.started", 30)
        # Every expected line shown, then a little more so the last audio is recorded too.
        lines = await browser.wait_for(
            f"window.interpreter.lines.length >= {expect_lines} && window.interpreter.lines", 120
        )
        await asyncio.sleep(3.0)
        status = await browser.evaluate("document.getElementById('status').textContent")
        assert status.startswith("Connected"), status
        assert_loopback(await browser.evaluate(ICE_JS))
        await browser.screenshot(tmp_path / "page.png")
        heard = np.frombuffer(base64.b64decode(await browser.evaluate(TAKE_RECORDING_JS)), "<i2")
        lines = await browser.evaluate("window.interpreter.lines")
    return heard.copy(), lines


def _is_loopback(address: str | None) -> bool:
    return address is not None and ipaddress.ip_address(address).is_loopback


def assert_loopback(ice: dict[str, Any]) -> None:
    """Every WebRTC packet of the conversation went to 127.0.0.1 (from the browser's stats and SDP)."""
    answered = [line.split() for line in ice["answer"].splitlines() if line.startswith("a=candidate")]
    # The bot offered 127.0.0.1 only (field 5 of a candidate line is its address).
    assert answered and all(fields[4] == "127.0.0.1" for fields in answered), ice["answer"]
    # The media, DTLS and data channel ran on a loopback pair, chosen by both sides.
    selected = ice["selected"]
    assert selected is not None and selected["state"] == "succeeded" and selected["nominated"], ice
    assert selected["local"]["address"] == selected["remote"]["address"] == "127.0.0.1", selected
    assert selected["bytesSent"] > 0 and selected["bytesReceived"] > 0, selected
    # No other destination ever: every remote candidate (peer-reflexive ones included) is loopback,
    # and Chromium's checks from its other interfaces were never answered.
    assert all(map(_is_loopback, ice["remotes"])), ice["remotes"]
    for pair in ice["pairs"].values():
        if not _is_loopback(pair["local"]["address"]):
            assert pair["responsesReceived"] == 0 and pair["bytesReceived"] == 0, pair
    print(f"ICE: {len(ice['pairs'])} candidate pairs, selected {selected}")


def _bursts(samples: Int16Array, rate: int, min_gap_s: float = 0.3) -> list[Int16Array]:
    """Split audio into sounding stretches (10 ms frames above -40 dBFS, gaps of ``min_gap_s``)."""
    hop = rate // 100
    frames = samples[: samples.size // hop * hop].astype(np.float64).reshape(-1, hop)
    loud = np.sqrt((frames**2).mean(axis=1)) > 330
    out, start, quiet = [], None, 0
    for i, on in enumerate(loud):
        if on:
            start = i if start is None else start
            quiet = 0
        elif start is not None:
            quiet += 1
            if quiet >= min_gap_s * 100:
                out.append(samples[start * hop : (i - quiet + 1) * hop])
                start, quiet = None, 0
    if start is not None:
        out.append(samples[start * hop :])
    return [b for b in out if b.size > 0.2 * rate]


def _fold(text: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFD", text.lower()) if unicodedata.category(c) != "Mn")


async def test_echo_engine_in_the_browser(chromium: str, tmp_path: Path) -> None:
    # Tones of distinct frequencies: the echo engine sends each utterance back with a text naming it.
    freqs = [440, 700]
    speech = make_speech(freqs, durations=[0.8, 0.8], gap_s=1.0, rate=RATE, amplitude=0.4)
    async with running_bot(tmp_path, INTERPRETER_ENGINE="echo", INTERPRETER_TO="fr") as base:
        heard, lines = await talk(base, speech.samples, tmp_path, "es", "en", len(freqs))
    # The page shows one line per utterance, in order, in the language picked in the page.
    echoed = [parse_echo(line["text"]) for line in lines]
    assert [(e[0], e[3]) for e in echoed] == [("es", f) for f in freqs], lines
    # What the browser played: the same utterances, in order (through Opus and back).
    bursts = _bursts(heard, RATE)
    assert [round(dominant_frequency(b, RATE), -1) for b in bursts] == freqs, [b.size / RATE for b in bursts]


@pytest.mark.offline
async def test_offline_engine_in_the_browser(chromium: str, tmp_path: Path) -> None:
    pytest.importorskip("faster_whisper", reason="the 'local' extra is not installed")
    from gradium_plugins.local.offline import OfflineEngine

    # The bundled sample's first two sentences: "Good morning, and welcome to the meeting.
    # I would like to book a table for two people tonight."
    sample, rate = _read_wav(ROOT / "examples" / "audio" / "meeting_en.wav")
    speech = resample(sample[: 6 * rate], rate, RATE)
    async with running_bot(tmp_path, INTERPRETER_TO="fr") as base:
        heard, lines = await talk(base, speech, tmp_path, "es", "en", 2)
        # A pair the offline engine cannot translate: the page says so, with the pairs it has.
        silence = tmp_path / "silence.wav"
        _write_wav(silence, np.zeros(2 * RATE, np.int16))
        async with Browser.launch(f"{base}/interpreter", silence, tmp_path / "profile2") as browser:
            await browser.wait_for("document.body?.dataset.ready === '1'", 30)
            await browser.evaluate(
                "document.getElementById('target').value = 'de';"
                "document.getElementById('settings').requestSubmit(); true"
            )
            refusal = await browser.wait_for(
                "document.getElementById('status').className === 'error' && "
                "document.getElementById('status').textContent",
                30,
            )
        assert "English -> German" in refusal and "en->es" in refusal, refusal
    texts = [line["text"] for line in lines]
    assert [line["language"] for line in lines] == ["es", "es"], lines
    shown = _fold(" ".join(texts))
    assert sum(w in shown for w in ("reunion", "mesa", "personas", "noche", "bienvenido")) >= 4, texts
    # Whisper (the engine's own model) hears Spanish words of the shown text in what the browser played.
    engine = OfflineEngine()
    await engine.start(wait=True)
    recognised = _fold((await engine.transcribe(heard, RATE, "es")).text)
    expected = {w for w in _fold(" ".join(texts)).replace(".", " ").replace(",", " ").split() if len(w) >= 4}
    found = {w for w in expected if w in recognised}
    # eSpeak's Spanish through Opus and back into Whisper base is rough (5 of 11 words on a busy
    # machine): a third of the words, and at least three, still proves the translation was heard.
    assert len(found) >= max(3, len(expected) / 3), (recognised, texts)
    print(f"shown: {texts}; heard: {recognised!r}")
    # The docs' screenshot ("talk to it in your browser") is this page; refreshed on request so a
    # test run does not leave the work tree modified.
    print(f"screenshot: {tmp_path / 'page.png'}")
    if os.environ.get("GRADIUM_UPDATE_SCREENSHOT"):
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        SCREENSHOT.write_bytes((tmp_path / "page.png").read_bytes())
