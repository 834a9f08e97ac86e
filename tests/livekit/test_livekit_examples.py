"""The LiveKit WAV example runs with no API key and no LiveKit server (embedded echo engine)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("livekit.agents")

from gradium_plugins.audio import read_wav, write_wav
from tests.conftest import make_speech, parse_echo

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_translate_wav_example_without_key(tmp_path: Path) -> None:
    freqs = [330, 550, 770]
    speech = make_speech(freqs, durations=[0.7, 0.5, 0.6], rate=16000)
    wav = tmp_path / "talk.wav"
    write_wav(wav, speech.samples, 16000)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRADIUM_")}
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "livekit_translate_wav.py"), str(wav), "--to", "fr,es",
         "--engine", "echo", "--speed", "0", "--output-dir", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=120, env=env, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "engine 'echo'" in proc.stdout
    for lang in ("fr", "es"):
        audio, rate = read_wav(tmp_path / "out" / f"talk.{lang}.wav")
        assert rate == 48000
        assert audio.size / rate == pytest.approx(sum(speech.durations), abs=0.15)
        srt = (tmp_path / "out" / f"talk.{lang}.srt").read_text()
        texts = [line for line in srt.splitlines() if line.startswith(f"[{lang}] utterance")]
        assert [parse_echo(t)[3] for t in texts] == freqs


@pytest.mark.parametrize(
    "name", ["livekit_translation_worker", "livekit_agent_session_worker", "livekit_room_interpreter"]
)
def test_worker_examples_load_as_livekit_apps(name: str) -> None:
    """The room workers are LiveKit CLI apps (they need a LiveKit server to do more than this)."""
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / f"{name}.py"), "--help"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "start" in proc.stdout and "dev" in proc.stdout
