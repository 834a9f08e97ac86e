"""A monolingual English voice agent serving a Spanish-speaking caller, built with Pipecat.

A standard Pipecat agent pipeline (user context aggregator -> LLM -> TTS -> assistant context
aggregator) that only understands and speaks English, with one Gradium speech-to-speech
translation on each side of it::

    caller (es) -> GradiumS2SService(role="inbound")  -> TranscriptionFrame (en) -> LLM (en)
                -> TTS (en) -> GradiumS2SService(role="outbound") -> caller (es)

The inbound service plays the part of the agent's STT: each translated utterance of the caller
arrives as a finalized English ``TranscriptionFrame``, which Pipecat's user aggregator adds to the
LLM context. The outbound service takes the agent's TTS output and replaces it with Spanish
speech; an interruption drops what was not translated yet.

The call is simulated so that it runs anywhere: a scripted caller speaks a few Spanish lines,
each after it heard the agent's previous answer, over a live line that carries silence in
between (as a phone line does). The LLM and the TTS are small stand-ins behind the same frame
types (a scripted responder; offline voices), so it needs no key; ``--llm`` uses Pipecat's
``OpenAILLMService`` instead. Speech comes from the offline engine's voices (eSpeak Spanish,
Piper English) when ``gradium-plugins[local]`` is installed, else from placeholder tones that
only the echo engine makes sense of.

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

It prints the conversation and writes what the caller heard to ``out/`` (a 48 kHz WAV).
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
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
    LLMContextFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    StartFrame,
    TranscriptionFrame,
    TranslationFrame,
    TTSAudioRawFrame,
    TTSSpeakFrame,
    TTSStoppedFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import (
    LLMContextAggregatorPair,
    LLMUserAggregatorParams,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.services.settings import TTSSettings
from pipecat.services.tts_service import TextAggregationMode, TTSService
from pipecat.turns.user_start import TranscriptionUserTurnStartStrategy
from pipecat.turns.user_stop import SpeechTimeoutUserTurnStopStrategy
from pipecat.turns.user_turn_strategies import UserTurnStrategies
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

# --- a live audio line (the caller's phone) -------------------------------------------------------


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


# --- stand-ins for the agent's LLM and TTS (same frame types as Pipecat's services) ---------------


class ScriptedLLM(FrameProcessor):
    """Answers the context's last user message with a responder, as an LLM service streams text."""

    def __init__(self, responder: Any) -> None:
        super().__init__()
        self._responder = responder

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if not isinstance(frame, LLMContextFrame):
            await self.push_frame(frame, direction)
            return
        said = [m for m in frame.context.get_messages() if m.get("role") == "user"]
        content = said[-1].get("content", "") if said else ""
        answer = await self._responder.reply(content if isinstance(content, str) else str(content))
        await self.push_frame(LLMFullResponseStartFrame())
        await self.push_frame(LLMTextFrame(answer))
        await self.push_frame(LLMFullResponseEndFrame())


SENTENCE, TOKEN = TextAggregationMode.SENTENCE, TextAggregationMode.TOKEN


class VoiceTTS(TTSService):
    """Speaks English with the call's voices (offline Piper voice, or tones for the echo engine)."""

    def __init__(self, voices: Any, *, streamed_text: bool) -> None:
        super().__init__(
            push_start_frame=True,
            push_stop_frames=True,
            # A streaming LLM's tokens are spoken by sentence; the scripted one sends whole answers.
            text_aggregation_mode=SENTENCE if streamed_text else TOKEN,
            settings=TTSSettings(model=None, voice=None, language=None),
        )
        self._voices = voices

    def can_generate_metrics(self) -> bool:
        return True

    async def run_tts(self, text: str, context_id: str) -> AsyncGenerator[Frame, None]:
        samples = await self._voices.speak(text, "en")

        async def pcm() -> AsyncIterator[bytes]:
            yield samples.astype("<i2").tobytes()

        async for frame in self._stream_audio_frames_from_iterator(
            pcm(), in_sample_rate=LINE_RATE, context_id=context_id
        ):
            yield frame


class Notes(FrameProcessor):
    """Writes down what passes: the caller's translated words, or what the agent says."""

    def __init__(self, label: str, *, transcripts: bool) -> None:
        super().__init__()
        self.label = label
        self._transcripts = transcripts
        self.lines: list[str] = []
        self._parts: list[str] = []

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        text = None
        if isinstance(frame, TranscriptionFrame) and self._transcripts:
            text = frame.text
        elif self._transcripts:
            pass
        elif isinstance(frame, TTSSpeakFrame):
            text = frame.text
        elif isinstance(frame, LLMFullResponseStartFrame):
            self._parts = []
        elif isinstance(frame, LLMTextFrame):
            self._parts.append(frame.text)
        elif isinstance(frame, LLMFullResponseEndFrame):
            text = "".join(self._parts).strip()
        if text:
            self.lines.append(text)
            print(f"{self.label}: {text}", flush=True)
        await self.push_frame(frame, direction)


def make_llm(llm: str | None) -> tuple[FrameProcessor, LLMContext]:
    """Pipecat's OpenAI service with ``--llm``, else the scripted stand-in."""
    context = LLMContext(messages=[{"role": "assistant", "content": GREETING}])
    if not llm:
        return ScriptedLLM(ScriptedResponder()), context
    OpenAIResponder(llm)  # fails clearly without OPENAI_API_KEY
    from pipecat.services.openai.llm import OpenAILLMService

    context = LLMContext(messages=[{"role": "system", "content": OpenAIResponder.SYSTEM}])
    return OpenAILLMService(settings=OpenAILLMService.Settings(model=llm)), context


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
        phone, ear = CallerPhone(speed), CallerEar()
        heard = Notes("agent heard (en)", transcripts=True)
        said = Notes("agent (en)", transcripts=False)
        agent_llm, context = make_llm(llm)
        # --8<-- [start:pipeline]
        inbound = GradiumS2SService(  # the caller's Spanish -> English text for the agent
            api_key=key,
            url=url,
            settings=GradiumS2SService.Settings(target_language="en", source_language="es"),
            role="inbound",
            audio_passthrough=False,  # the agent takes its turns from the transcripts, not audio
        )
        outbound = GradiumS2SService(  # the agent's English speech -> Spanish for the caller
            api_key=key,
            url=url,
            settings=GradiumS2SService.Settings(target_language="es", source_language="en"),
            role="outbound",
            session_options={"realtime_factor": speed},  # fed at the line's pace
        )
        # No VAD on the line: the translated transcript starts the user's turn, a short quiet
        # after it ends the turn.
        turn = UserTurnStrategies(
            start=[TranscriptionUserTurnStartStrategy()],
            stop=[SpeechTimeoutUserTurnStopStrategy(user_speech_timeout=0.6)],
        )
        aggregators = LLMContextAggregatorPair(
            context, user_params=LLMUserAggregatorParams(user_turn_strategies=turn)
        )
        pipeline = Pipeline(
            [
                phone,  # transport.input()
                inbound,
                heard,
                aggregators.user(),
                agent_llm,
                said,
                VoiceTTS(voices, streamed_text=bool(llm)),
                outbound,
                ear,  # transport.output()
                aggregators.assistant(),
            ]
        )
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
                    await worker.queue_frame(TTSSpeakFrame(GREETING))
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
    result.agent_heard, result.agent_said, result.caller_heard = heard.lines, said.lines, ear.heard
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
