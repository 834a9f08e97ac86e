"""A monolingual English voice agent serving a Spanish-speaking caller, with LiveKit Agents.

The agent only understands and speaks English. Two LiveKit ``TranslationSession``s run the
Gradium ``TranslationModel``, one per direction, exactly as they would in a room::

    caller (es) -> TranslationSession es->en -> English agent -> TranslationSession en->es -> caller (es)

The inbound session's final ``translation_transcribed`` events are the English text the agent
answers; the agent's English voice is the outbound session's audio input, and the outbound
session's Spanish speech is what the caller hears. In a room the caller's microphone track is
the inbound input and the outbound output is a published track (see the LiveKit guide); here
both ends are in-memory audio IO so the call runs anywhere, with no LiveKit server.

The call is simulated: a scripted caller speaks a few Spanish lines, each after it heard the
agent's previous answer, over a live line that carries silence in between. The agent is a
small scripted responder (``--llm`` asks an OpenAI model instead; off by default). Speech for
the caller and for the agent comes from the offline engine's voices (eSpeak Spanish, Piper
English) when ``gradium-plugins[local]`` is installed, else from placeholder tones that only
the echo engine makes sense of.

Usage::

    pip install 'gradium-plugins[livekit,local]'
    python examples/livekit_multilingual_agent.py                 # simulated call, no key needed
    python examples/livekit_multilingual_agent.py --engine echo   # plumbing only: tones, no models
    python examples/livekit_multilingual_agent.py --llm           # OpenAI replies (OPENAI_API_KEY)

Where it translates (the same rules as every example):

- ``GRADIUM_API_KEY`` set: the Gradium cloud (``GRADIUM_S2S_URL`` overrides the endpoint).
- ``GRADIUM_S2S_URL`` set without a key: that endpoint (e.g. ``gradium-plugins serve``).
- Neither: an embedded local server in this process, with the ``offline`` engine when installed
  (real translation, no network), else the ``echo`` engine. The engine used is printed.

It prints the conversation and writes what each side heard to ``out/`` (48 kHz WAVs).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
from livekit.agents.beta.translation import TranslationSession
from livekit.agents.voice import io

from gradium_plugins.livekit import TranslationModel, drain_and_close
from livekit import rtc

# The call's script, voices and embedded server are shared with the other framework's example.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from call_script import (
    CALLER_LINES,
    FRAME_MS,
    GREETING,
    LINE_RATE,
    OUTPUT_RATE,
    CallResult,
    OpenAIResponder,
    ScriptedResponder,
    call_arg_parser,
    choose_endpoint,
    make_voices,
    write_call,
)

# --- in-memory audio IO: a live line in, a recording loudspeaker out ---------------------------


class LiveLine(io.AudioInput):
    """A live microphone: queued speech, else silence, in 20 ms frames at ``speed`` x real time.

    Translators finalise an utterance when they hear the pause after it, so speech has to be
    followed by silence, as on a real phone line or audio track. ``close()`` ends the stream.
    """

    def __init__(self, label: str, speed: float) -> None:
        super().__init__(label=label)
        if speed <= 0:
            raise ValueError("speed must be > 0")
        self._speed = speed
        self._queue: deque[tuple[np.ndarray, asyncio.Future[None]]] = deque()
        self._current: tuple[np.ndarray, asyncio.Future[None]] | None = None
        self._pos = 0
        self._sent = 0
        self._t0: float | None = None
        self._closed = False

    async def wait_idle(self, timeout_s: float) -> None:
        """Wait (bounded) until everything queued has been said."""
        pending = [done for _, done in self._queue]
        if self._current is not None:
            pending.append(self._current[1])
        if pending:
            await asyncio.wait(pending, timeout=timeout_s)

    def say(self, samples: np.ndarray) -> asyncio.Future[None]:
        """Queue speech; the future completes when it has been sent."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((samples, done))
        return done

    def close(self) -> None:
        self._closed = True

    async def __anext__(self) -> rtc.AudioFrame:
        if self._closed:
            raise StopAsyncIteration
        step = LINE_RATE * FRAME_MS // 1000
        if self._t0 is None:
            self._t0 = time.monotonic()
        delay = self._t0 + self._sent * FRAME_MS / 1000 / self._speed - time.monotonic()
        await asyncio.sleep(max(0.0, delay))
        self._sent += 1
        chunk = np.zeros(step, np.int16)
        if self._current is None and self._queue:
            self._current, self._pos = self._queue.popleft(), 0
        if self._current is not None:
            samples, done = self._current
            part = samples[self._pos : self._pos + step]
            chunk[: part.size] = part
            self._pos += step
            if self._pos >= samples.size:
                self._current = None
                if not done.done():
                    done.set_result(None)
        return rtc.AudioFrame(chunk.astype("<i2").tobytes(), LINE_RATE, 1, step)


class Loudspeaker(io.AudioOutput):
    """Records what a listener hears; plays out instantly (a room track in production)."""

    def __init__(self, label: str) -> None:
        super().__init__(
            label=label, capabilities=io.AudioOutputCapabilities(pause=False), sample_rate=OUTPUT_RATE
        )
        self.frames: list[bytes] = []
        self._playing = 0.0

    async def capture_frame(self, frame: rtc.AudioFrame) -> None:
        await super().capture_frame(frame)
        if not self._playing:
            self.on_playback_started(created_at=time.time())
        self._playing += frame.duration
        self.frames.append(bytes(frame.data))

    def flush(self) -> None:
        super().flush()
        if self._playing:
            self.on_playback_finished(playback_position=self._playing, interrupted=False)
            self._playing = 0.0

    def clear_buffer(self) -> None:
        pass


# --- the agent between the two sessions ---------------------------------------------------------


# --8<-- [start:agent]
class EnglishAgent:
    """The monolingual agent: answers each translated utterance in English on its own voice line."""

    def __init__(self, responder: Any, voices: Any, voice: LiveLine) -> None:
        self.responder, self.voices, self.voice = responder, voices, voice
        self.heard: list[str] = []  # English translations of the caller
        self.said: list[str] = []  # the agent's answers
        self._tasks: set[asyncio.Task[None]] = set()

    def on_translation(self, ev: Any) -> None:
        """``translation_transcribed`` of the inbound session: one final event per utterance."""
        if ev.is_final and ev.transcript.strip():
            self.heard.append(ev.transcript.strip())
            print(f"agent heard (en): {ev.transcript.strip()}", flush=True)
            self._spawn(self.answer(ev.transcript.strip()))

    async def answer(self, heard: str) -> None:
        await self.say(await self.responder.reply(heard))

    async def say(self, text: str) -> None:
        self.said.append(text)
        print(f"agent (en): {text}", flush=True)
        self.voice.say(await self.voices.speak(text, "en"))

    def greet(self) -> None:
        self._spawn(self.say(GREETING))

    async def finish(self, timeout_s: float = 30.0) -> None:
        """Wait (bounded) until every answer was spoken, then end the voice line."""
        deadline = time.monotonic() + timeout_s
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout_s)
        await self.voice.wait_idle(max(0.0, deadline - time.monotonic()))
        self.voice.close()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


# --8<-- [end:agent]


class CallerEar:
    """The caller's side of the outbound session: the Spanish answers, in order."""

    def __init__(self) -> None:
        self.heard: list[str] = []
        self._changed = asyncio.Event()

    def on_translation(self, ev: Any) -> None:
        if ev.is_final and ev.transcript.strip():
            self.heard.append(ev.transcript.strip())
            print(f"caller hears (es): {ev.transcript.strip()}", flush=True)
            self._changed.set()

    async def wait_heard(self, count: int, timeout_s: float) -> bool:
        """Wait until ``count`` translated answers were heard; False on timeout."""
        deadline = time.monotonic() + timeout_s
        while len(self.heard) < count:
            self._changed.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except TimeoutError:
                return False
        return True


# --- the call -----------------------------------------------------------------------------------


async def run_call(
    *,
    engine: str | None = None,
    turns: int = len(CALLER_LINES),
    speed: float = 1.0,
    llm: str | None = None,
    reply_timeout_s: float = 30.0,
) -> CallResult:
    """Simulate one call; return what each side said and heard."""
    server, url, key, name = await choose_endpoint(engine)
    options: dict[str, Any] = {"url": url} if url else {}
    if key:
        options["api_key"] = key
    result = CallResult(engine=name)
    try:
        voices = await make_voices(server, name)
        result.voices = voices
        responder = OpenAIResponder(llm) if llm else ScriptedResponder()
        # --8<-- [start:sessions]
        caller_mic, agent_voice = LiveLine("caller-mic", speed), LiveLine("agent-voice", speed)
        agent_speaker, caller_speaker = Loudspeaker("agent-ear"), Loudspeaker("caller-ear")
        agent, ear = EnglishAgent(responder, voices, agent_voice), CallerEar()

        inbound: TranslationSession[None] = TranslationSession(  # the caller's Spanish -> English
            model=TranslationModel(target_language="en", source_language="es", **options)
        )
        inbound.input.audio, inbound.output.audio = caller_mic, agent_speaker
        inbound.on("translation_transcribed", agent.on_translation)

        outbound: TranslationSession[None] = TranslationSession(  # the agent's English -> Spanish
            model=TranslationModel(target_language="es", source_language="en", **options)
        )
        outbound.input.audio, outbound.output.audio = agent_voice, caller_speaker
        outbound.on("translation_transcribed", ear.on_translation)

        errors: list[str] = []
        for leg, session in (("inbound", inbound), ("outbound", outbound)):
            session.on("error", lambda ev, leg=leg: errors.append(f"{leg}: {ev.error.error}"))
        await inbound.start()
        await outbound.start()
        # --8<-- [end:sessions]
        try:
            agent.greet()
            # The caller speaks once it heard the greeting, then after each answer.
            if await ear.wait_heard(1, reply_timeout_s):
                for i, line in enumerate(CALLER_LINES[:turns]):
                    print(f"caller (es): {line}", flush=True)
                    result.caller_said.append(line)
                    await caller_mic.say(await voices.speak(line, "es"))
                    if not await ear.wait_heard(i + 2, reply_timeout_s):
                        result.errors.append(f"no answer heard after line {i + 1}")
                        break
            else:
                result.errors.append("the greeting was not heard")
        finally:
            # Hang up without losing the last sentence of either side.
            caller_mic.close()
            await drain_and_close(inbound)
            await agent.finish()
            await drain_and_close(outbound)
        result.errors += errors
    finally:
        if server is not None:
            await server.close()
    result.agent_heard, result.agent_said, result.caller_heard = agent.heard, agent.said, ear.heard
    result.agent_heard_audio = b"".join(agent_speaker.frames)
    result.caller_heard_audio = b"".join(caller_speaker.frames)
    return result


def main() -> int:
    parser = call_arg_parser(__doc__.split("\n\n")[0], "show debug logs")
    args = parser.parse_args()
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING)

    result = asyncio.run(run_call(engine=args.engine, turns=args.turns, speed=args.speed, llm=args.llm))

    return write_call(result, args.output_dir, "livekit_agent")


if __name__ == "__main__":
    sys.exit(main())
