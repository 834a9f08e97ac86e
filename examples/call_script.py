"""The simulated phone call shared by the two multilingual-agent examples.

The agent's brain (a scripted responder, or an OpenAI model with ``--llm``), the voices that
speak for the caller and the agent (offline engine voices, else placeholder tones for the echo
engine), and the embedded server the examples fall back to. Framework code stays in
``pipecat_multilingual_agent.py`` and ``livekit_multilingual_agent.py``.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gradium_plugins.audio import resample, write_wav
from gradium_plugins.config import ENV_API_KEY, ENV_URL
from gradium_plugins.local import LocalServer, serve

LINE_RATE = 16000  # the simulated phone line and the agent's voice
OUTPUT_RATE = 48000  # translated speech
FRAME_MS = 20

GREETING = "Hello, thank you for calling Luigi's. How can I help you?"

CALLER_LINES = [
    "Hola, quiero reservar una mesa.",
    "Para dos personas, esta noche a las ocho.",
    "A nombre de Ana.",
    "Muchas gracias, adiós.",
]


class ScriptedResponder:
    """The agent's brain, English in and English out: keyword rules, else the next line of its script."""

    STEPS: tuple[tuple[tuple[str, ...], str], ...] = (
        (("table", "book", "reserv"), "Of course. For how many people, and at what time?"),
        (("people", "two", "tonight", "eight"), "A table for two tonight at eight. What name is it under?"),
        (("name", "ana"), "Thank you, your table is booked. Is there anything else?"),
        (("thank", "bye"), "You are welcome. Goodbye!"),
    )

    def __init__(self) -> None:
        self._step = 0

    async def reply(self, heard: str) -> str:
        words = heard.lower()
        for i in range(self._step, len(self.STEPS)):
            if any(k in words for k in self.STEPS[i][0]):
                self._step = i
                break
        answer = self.STEPS[min(self._step, len(self.STEPS) - 1)][1]
        self._step += 1
        return answer


class OpenAIResponder:
    """A real LLM behind the same interface (``--llm``): needs ``OPENAI_API_KEY`` and the network."""

    SYSTEM = (
        "You are the phone receptionist of Luigi's, an Italian restaurant. You take table bookings. "
        "Answer in one or two short spoken sentences, in English."
    )

    def __init__(self, model: str) -> None:
        if not os.environ.get("OPENAI_API_KEY"):
            raise SystemExit("--llm needs OPENAI_API_KEY (the scripted responder needs nothing)")
        from openai import AsyncOpenAI

        self._client = AsyncOpenAI()
        self._model = model
        self._messages: list[dict[str, str]] = [
            {"role": "system", "content": self.SYSTEM},
            {"role": "assistant", "content": GREETING},
        ]

    async def reply(self, heard: str) -> str:
        self._messages.append({"role": "user", "content": heard})
        answer = await self._client.chat.completions.create(
            model=self._model,
            messages=self._messages,
            max_tokens=80,  # type: ignore[arg-type]
        )
        text = (answer.choices[0].message.content or "").strip() or "Sorry, could you repeat that?"
        self._messages.append({"role": "assistant", "content": text})
        return text


# --- voices: speech for the simulated caller and for the agent (a TTS stand-in) ---------------


class ToneVoices:
    """Placeholder speech: one tone per utterance, at a frequency of its own (for the echo engine).

    ``spoken`` records ``(language, text, frequency)`` so a test can follow each utterance through
    the echo engine, which names the dominant frequency of everything it returns.
    """

    BASE_HZ = {"es": 300, "en": 700}

    def __init__(self) -> None:
        self.spoken: list[tuple[str, str, int]] = []

    async def speak(self, text: str, language: str) -> np.ndarray:
        n = sum(1 for lang, _, _ in self.spoken if lang == language)
        freq = self.BASE_HZ.get(language, 500) + 40 * n
        self.spoken.append((language, text, freq))
        seconds = min(2.0, 0.6 + 0.01 * len(text))
        t = np.arange(round(seconds * LINE_RATE)) / LINE_RATE
        return (np.sin(2 * np.pi * freq * t) * 0.3 * 32767).astype(np.int16)


class OfflineVoices:
    """Real speech from the offline engine: eSpeak NG for Spanish, the Piper joe voice for English."""

    def __init__(self, engine: Any) -> None:
        self._engine = engine
        self.spoken: list[tuple[str, str, int]] = []

    async def speak(self, text: str, language: str) -> np.ndarray:
        self.spoken.append((language, text, 0))
        audio = await self._engine.synthesize(text, language)
        return resample(audio, OUTPUT_RATE, LINE_RATE)


async def make_voices(server: LocalServer | None, engine: str) -> ToneVoices | OfflineVoices:
    """Offline voices when the offline engine can run here, else tones (always tones for ``echo``)."""
    if engine == "echo":
        return ToneVoices()
    try:
        from gradium_plugins.local.offline import OfflineEngine

        offline = server.engine if server is not None and isinstance(server.engine, OfflineEngine) else None
        offline = offline or OfflineEngine()
        await offline.start(wait=True)
        return OfflineVoices(offline)
    except Exception as exc:  # noqa: BLE001 - extra or Apertium missing: placeholder tones
        print(f"no offline voices ({str(exc).splitlines()[0]}); the call uses placeholder tones", flush=True)
        return ToneVoices()


async def start_local_server(engine: str | None) -> LocalServer:
    """The embedded server: the requested engine, else offline if installed, else echo."""
    if engine is not None:
        return await serve(engine=engine)
    try:
        return await serve(engine="offline")
    except Exception as exc:  # noqa: BLE001 - extra or Apertium missing: fall back to echo
        print(f"offline engine unavailable ({str(exc).splitlines()[0]}); using the echo engine", flush=True)
        return await serve(engine="echo")


async def choose_endpoint(engine: str | None) -> tuple[LocalServer | None, str | None, str | None, str]:
    """Where the call translates: ``(server, url, key, name)`` (the same rules as every example).

    An embedded server (requested engine, else offline, else echo) when ``engine`` is given or
    neither ``GRADIUM_API_KEY`` nor ``GRADIUM_S2S_URL`` is set; otherwise the cloud or that URL.
    """
    key, url = os.environ.get(ENV_API_KEY), os.environ.get(ENV_URL)
    if engine is not None or (not key and not url):
        server = await start_local_server(engine)
        name = server.engine.name
        print(
            f"No {ENV_API_KEY} / {ENV_URL}: embedded local server, engine '{name}' ({server.url})", flush=True
        )
        return server, server.url, None, name
    name = "cloud" if key and not url else str(url)
    print(f"Using {'the Gradium cloud' if name == 'cloud' else url}", flush=True)
    return None, url, key, name


@dataclass
class CallResult:
    """What happened on each leg of the call."""

    engine: str
    caller_said: list[str] = field(default_factory=list)
    agent_heard: list[str] = field(default_factory=list)
    agent_said: list[str] = field(default_factory=list)
    caller_heard: list[str] = field(default_factory=list)
    agent_heard_audio: bytes = b""
    caller_heard_audio: bytes = b""
    voices: Any = None
    errors: list[str] = field(default_factory=list)


def call_arg_parser(description: str, verbose_help: str) -> argparse.ArgumentParser:
    """The command-line options both examples take."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--engine", choices=["offline", "echo"], help="embedded engine (default: offline)")
    parser.add_argument("--turns", type=int, default=len(CALLER_LINES), help="caller lines to say")
    parser.add_argument("--speed", type=float, default=1.0, help="1.0 = real time; >1 only locally")
    parser.add_argument("--llm", nargs="?", const="gpt-4o-mini", help="answer with this OpenAI model")
    parser.add_argument("--output-dir", default="out", help="where to write what each side heard")
    parser.add_argument("-v", "--verbose", action="store_true", help=verbose_help)
    return parser


def write_call(result: CallResult, out_dir: str, prefix: str) -> int:
    """Write what each side heard as 48 kHz WAVs (legs with audio), print the errors; return the exit code."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, pcm in (("agent_heard", result.agent_heard_audio), ("caller_heard", result.caller_heard_audio)):
        if not pcm and name == "agent_heard":
            continue  # an agent that hears the translation as text only (Pipecat's inbound role)
        path = out / f"{prefix}.{name}.wav"
        write_wav(path, np.frombuffer(pcm, dtype="<i2"), OUTPUT_RATE)
        print(f"wrote {path} ({len(pcm) / 2 / OUTPUT_RATE:.1f} s)")
    for err in result.errors:
        print(f"error: {err}", file=sys.stderr)
    return 1 if result.errors else 0
