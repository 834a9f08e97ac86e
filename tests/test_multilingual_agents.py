"""Both multilingual-agent examples run end to end offline (no key, embedded local server).

With the echo engine every utterance comes back as the same audio plus a text naming its
dominant frequency, and the examples' placeholder voices give each utterance a tone of its own,
so the tests follow every utterance through both legs: the caller's lines through the inbound
translation to the agent, the agent's greeting and answers through the outbound translation to
the caller. One call also runs through the offline engine (real es->en and en->es translation)
when it is installed.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import wave
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.conftest import parse_echo

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
OUTPUT_RATE = 48000


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _example(framework: str) -> ModuleType:
    pytest.importorskip("pipecat" if framework == "pipecat" else "livekit.agents")
    return _load(f"{framework}_multilingual_agent")


@pytest.fixture(autouse=True)
def _no_gradium_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # The examples must not reach the cloud from a test: no key, no URL -> embedded server.
    for var in [k for k in os.environ if k.startswith("GRADIUM_")]:
        monkeypatch.delenv(var)


def _seconds(pcm: bytes) -> float:
    return len(pcm) / 2 / OUTPUT_RATE


def _check_echo_call(module: ModuleType, result: Any, turns: int, *, text_only_inbound: bool = False) -> None:
    assert result.errors == []
    assert result.engine == "echo"
    spoken = result.voices.spoken
    caller_tones = [f for lang, _, f in spoken if lang == "es"]
    agent_tones = [f for lang, _, f in spoken if lang == "en"]
    assert result.caller_said == module.CALLER_LINES[:turns]
    assert len(caller_tones) == turns

    # Inbound leg: each caller line reached the agent, translated "into English", in order.
    heard = [parse_echo(t) for t in result.agent_heard]
    assert [(lang, freq) for lang, _, _, freq in heard] == [("en", f) for f in caller_tones]
    # The agent answered each of them from its script, after its greeting.
    expected = [module.GREETING] + [answer for _, answer in module.ScriptedResponder.STEPS[:turns]]
    assert result.agent_said == expected
    # Outbound leg: the greeting and every answer reached the caller, "in Spanish", in order.
    answered = [parse_echo(t) for t in result.caller_heard]
    assert [(lang, freq) for lang, _, _, freq in answered] == [("es", f) for f in agent_tones]
    assert len(agent_tones) == turns + 1

    # Translated audio on both legs: as long as what was said (the echo returns it whole).
    said_in = sum(d for _, _, d, _ in heard)
    said_out = sum(d for _, _, d, _ in answered)
    assert said_in > 0.5 * turns and said_out > 0.5 * (turns + 1)
    if text_only_inbound:  # Pipecat: the agent reads the caller's translation as transcripts
        assert result.agent_heard_audio == b""
    else:
        assert _seconds(result.agent_heard_audio) == pytest.approx(said_in, abs=0.15)
    assert _seconds(result.caller_heard_audio) == pytest.approx(said_out, abs=0.15)


@pytest.mark.parametrize("framework", ["pipecat", "livekit"])
async def test_agent_call_through_echo(framework: str) -> None:
    module = _example(framework)
    result = await module.run_call(engine="echo", turns=2, speed=8.0, reply_timeout_s=20.0)
    _check_echo_call(module, result, turns=2, text_only_inbound=framework == "pipecat")


@pytest.mark.parametrize("framework", ["pipecat", "livekit"])
def test_agent_command_line_writes_what_was_heard(
    framework: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    module = _example(framework)
    out = tmp_path / "out"
    monkeypatch.setattr(
        sys, "argv", ["x", "--engine", "echo", "--turns", "1", "--speed", "8", "--output-dir", str(out)]
    )
    assert module.main() == 0
    printed = capsys.readouterr().out
    assert "engine 'echo'" in printed
    assert f"agent (en): {module.GREETING}" in printed
    # Pipecat's agent hears the caller as text (inbound role): only the caller's leg is audio.
    legs = ("caller_heard",) if framework == "pipecat" else ("agent_heard", "caller_heard")
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{framework}_agent.{leg}.wav" for leg in legs)
    for leg in legs:
        with wave.open(str(out / f"{framework}_agent.{leg}.wav"), "rb") as w:
            assert (w.getframerate(), w.getnchannels()) == (OUTPUT_RATE, 1)
            assert w.getnframes() > OUTPUT_RATE // 2


@pytest.mark.parametrize("framework", ["pipecat", "livekit"])
def test_llm_flag_without_key_fails_clearly(framework: str, monkeypatch: pytest.MonkeyPatch) -> None:
    module = _example(framework)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(SystemExit, match="OPENAI_API_KEY"):
        if framework == "pipecat":
            module.make_llm("gpt-4o-mini")  # before Pipecat's OpenAI service is built
        else:
            module.OpenAIResponder("gpt-4o-mini")


def _offline_unavailable() -> str | None:
    try:
        from gradium_plugins.local.offline import OfflineEngine

        OfflineEngine()
    except Exception as exc:  # noqa: BLE001 - any missing piece means: skip
        return str(exc).splitlines()[0]
    return None


@pytest.mark.offline
@pytest.mark.parametrize("framework", ["pipecat", "livekit"])
async def test_agent_call_through_offline_engine(framework: str) -> None:
    reason = _offline_unavailable()
    if reason is not None:
        pytest.skip(f"offline engine unavailable: {reason}")
    module = _example(framework)
    result = await module.run_call(engine="offline", turns=1, speed=4.0, reply_timeout_s=60.0)

    assert result.errors == []
    assert result.engine == "offline"
    assert type(result.voices).__name__ == "OfflineVoices"
    # Inbound (es -> en): the caller's line arrived as English text and speech. eSpeak's Spanish
    # is hard for Whisper base, so only its presence is checked, not its words.
    assert len(result.agent_heard) >= 1 and all(result.agent_heard)
    if framework == "livekit":  # Pipecat's inbound role gives the agent text only
        assert _seconds(result.agent_heard_audio) > 0.3
    assert result.agent_said == [module.GREETING, module.ScriptedResponder.STEPS[0][1]]
    # Outbound (en -> es): Piper English is recognised well, so the Spanish is a real translation.
    assert len(result.caller_heard) == 2
    greeting, answer = (t.lower() for t in result.caller_heard)
    assert "gracias" in greeting
    assert "personas" in answer
    assert _seconds(result.caller_heard_audio) > 2.0


async def test_livekit_voice_agent_on_livekits_stt_llm_tts() -> None:
    """An English AgentSession(stt, llm, tts) serves a Spanish caller: S2S in the STT (es->en
    text) and in the TTS (English voice -> es speech); every turn goes through both legs."""
    pytest.importorskip("livekit.agents")
    module = _load("livekit_voice_agent")
    turns = 3
    result = await module.run_call(engine="echo", turns=turns, speed=4.0, reply_timeout_s=30.0)

    assert result.errors == []
    caller_tones = [f for lang, _, f in result.voices.spoken if lang == "es"]
    agent_tones = [(text, f) for lang, text, f in result.voices.spoken if lang == "en"]
    # Inbound: each caller line reached the English LLM as the English translation's text.
    assert [parse_echo(t)[0] for t in result.agent_heard] == ["en"] * turns
    assert [parse_echo(t)[3] for t in result.agent_heard] == caller_tones
    # Outbound: the greeting and each answer were voiced in English, then translated for the caller.
    assert result.agent_said == [module.GREETING] + [s[1] for s in module.ScriptedResponder.STEPS[:turns]]
    # (LiveKit's TTS node voices sentence by sentence.)
    assert " ".join(text for text, _ in agent_tones) == " ".join(result.agent_said)
    spoken_s = sum(min(2.0, 0.6 + 0.01 * len(text)) for text, _ in agent_tones)
    assert _seconds(result.caller_heard_audio) == pytest.approx(spoken_s, rel=0.1)
