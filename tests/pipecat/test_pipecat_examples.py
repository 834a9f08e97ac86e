"""The Pipecat examples run with no API key (embedded local server, echo engine)."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import subprocess
import sys
import wave
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

pytest.importorskip("pipecat")

from pipecat.frames.frames import Frame, InputAudioRawFrame, StartFrame, TTSStoppedFrame
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.runner.types import RunnerArguments
from pipecat.transports.base_transport import BaseTransport

from tests.conftest import make_speech, parse_echo
from tests.pipecat.pipecat_harness import Capture, audio_frames, brackets

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _env_without_gradium() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRADIUM_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(EXAMPLES.parent / "src"), env.get("PYTHONPATH")) if p)
    return env


def _write_stereo_wav(path: Path, mono: np.ndarray, rate: int) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.repeat(mono, 2).astype("<i2").tobytes())


def test_translate_wav_example_without_key(tmp_path: Path) -> None:
    freqs = [330, 550]
    speech = make_speech(freqs, durations=[0.7, 0.5], rate=44100)
    wav = tmp_path / "talk.wav"
    _write_stereo_wav(wav, speech.samples, 44100)  # 44.1 kHz stereo in
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "pipecat_translate_wav.py"), str(wav), "--to", "de,pt",
         "--engine", "echo", "--speed", "0"],
        capture_output=True, text=True, timeout=90, env=_env_without_gradium(), check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "engine 'echo'" in proc.stdout
    for lang in ("de", "pt"):
        texts = [line.split(": ", 1)[1] for line in proc.stdout.splitlines() if f"] {lang}: " in line]
        assert [parse_echo(t)[3] for t in texts] == freqs
        with wave.open(str(tmp_path / f"talk.{lang}.wav"), "rb") as w:
            assert (w.getframerate(), w.getnchannels()) == (48000, 1)
            assert w.getnframes() / 48000 == pytest.approx(sum(speech.durations), abs=0.1)


def _load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class ScriptedInput(FrameProcessor):
    """Stands in for a transport's input: plays prepared audio frames once the pipeline started."""

    def __init__(self, frames: list[InputAudioRawFrame]) -> None:
        super().__init__()
        self._frames = frames

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        await self.push_frame(frame, direction)
        if isinstance(frame, StartFrame):
            self.create_task(self._play(), "play")

    async def _play(self) -> None:
        for f in self._frames:
            await self.push_frame(f)
            await asyncio.sleep(0)


class ScriptedTransport(BaseTransport):
    """A transport whose input plays a script and whose output records what it is given."""

    def __init__(self, frames: list[InputAudioRawFrame]) -> None:
        super().__init__()
        self.out: list[Frame] = []
        self.changed = asyncio.Event()
        self._input = ScriptedInput(frames)
        self._output = Capture(FrameDirection.DOWNSTREAM, self.out, self.changed)
        self._register_event_handler("on_client_connected")
        self._register_event_handler("on_client_disconnected")

    def input(self) -> FrameProcessor:
        return self._input

    def output(self) -> FrameProcessor:
        return self._output


async def test_interpreter_bot_runs_headless(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in [k for k in os.environ if k.startswith("GRADIUM_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("INTERPRETER_ENGINE", "echo")
    monkeypatch.setenv("INTERPRETER_TO", "es")
    bot = _load_example("pipecat_interpreter_bot")
    freqs = [420, 610]
    speech = make_speech(freqs, rate=16000)
    transport = ScriptedTransport(audio_frames(speech.samples, 16000))
    task = asyncio.ensure_future(bot.run_bot(transport, RunnerArguments()))
    try:
        async with asyncio.timeout(20):
            while sum(isinstance(f, TTSStoppedFrame) for f in transport.out) < len(freqs):
                assert not task.done(), task.exception()
                transport.changed.clear()
                waiter = asyncio.ensure_future(transport.changed.wait())
                try:
                    await asyncio.wait({task, waiter}, timeout=0.2)
                finally:
                    waiter.cancel()
        # The browser leaves: the bot cancels its pipeline and returns.
        await transport._call_event_handler("on_client_disconnected", object())
        await asyncio.wait_for(task, 10)
    finally:
        task.cancel()
        server: Any = bot._local_server
        if server is not None:
            await server.close()
    spans = brackets(transport.out)
    results = [parse_echo(s.texts[0]) for s in spans]
    assert [(r[0], r[3]) for r in results] == [("es", f) for f in freqs]
