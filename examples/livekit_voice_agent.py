"""An English voice agent on LiveKit's own STT / LLM / TTS interfaces, serving a Spanish caller.

The agent is a plain ``AgentSession(stt=..., llm=..., tts=...)``; Gradium speech-to-speech sits
inside the speech interfaces, one leg each way::

    caller (es) -> TranslatingSTT: S2S es->en, its English text is the transcript -> LLM (en)
    LLM (en)    -> TranslatingTTS: English voice, then S2S en->es -> caller (es)

so the agent, its instructions and its LLM work in English only, and LiveKit handles the turns,
the conversation history and the metrics as for any voice agent. ``TranslatingSTT`` reports
``source_languages`` (the caller's) next to the English transcript, as translating STTs do.

Offline by default: the LLM is a small scripted receptionist (``--llm MODEL`` asks OpenAI), the
English voice and the caller's Spanish lines come from the offline engine's voices (eSpeak,
Piper) when ``gradium-plugins[local]`` is installed, else placeholder tones the echo engine
understands, and the translation runs on an embedded local server unless ``GRADIUM_API_KEY`` /
``GRADIUM_S2S_URL`` are set. The line is simulated with in-memory audio IO; in a room, pass
``room=ctx.room`` to ``session.start`` instead. Usage::

    python examples/livekit_voice_agent.py [--engine echo] [--turns N] [--speed X]
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from pathlib import Path
from typing import Any

from livekit.agents import DEFAULT_API_CONNECT_OPTIONS, Agent, AgentSession, APIConnectOptions, llm, stt, tts
from livekit.agents.language import LanguageCode
from livekit.agents.types import NOT_GIVEN, NotGivenOr
from livekit.agents.utils import shortuuid

from gradium_plugins import S2SConfig, S2SSession
from gradium_plugins.events import TranslationCompleted, TranslationStarted
from gradium_plugins.protocol import AudioOut
from livekit import rtc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from call_script import (
    CALLER_LINES,
    GREETING,
    LINE_RATE,
    CallResult,
    OpenAIResponder,
    ScriptedResponder,
    call_arg_parser,
    choose_endpoint,
    make_voices,
    write_call,
)
from livekit_multilingual_agent import LiveLine, Loudspeaker


class TranslatingSTT(stt.STT):
    """Speech in the caller's language in, the English translation's text out (one S2S leg)."""

    def __init__(self, config: S2SConfig) -> None:
        super().__init__(
            capabilities=stt.STTCapabilities(streaming=True, interim_results=False, offline_recognize=False)
        )
        self._config = config

    async def _recognize_impl(
        self, buffer: Any, *, language: Any = NOT_GIVEN, conn_options: APIConnectOptions
    ) -> stt.SpeechEvent:
        raise NotImplementedError("streaming only")

    def stream(
        self,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
    ) -> stt.RecognizeStream:
        return _TranslatingStream(stt=self, conn_options=conn_options)


class _TranslatingStream(stt.RecognizeStream):
    async def _run(self) -> None:
        config: S2SConfig = self._stt._config  # type: ignore[attr-defined]
        self._source = [LanguageCode(config.source_language)] if config.source_language else None
        self._language = LanguageCode(config.target_language or "en")
        async with S2SSession(config) as session:

            async def feed() -> None:
                async for frame in self._input_ch:
                    if isinstance(frame, rtc.AudioFrame):
                        await session.send_audio(
                            bytes(frame.data), sample_rate=frame.sample_rate, channels=frame.num_channels
                        )

            feeder = asyncio.create_task(feed())
            try:
                async for ev in session:  # one caller turn per translated utterance
                    if isinstance(ev, TranslationStarted):
                        self._event_ch.send_nowait(stt.SpeechEvent(type=stt.SpeechEventType.START_OF_SPEECH))
                    elif isinstance(ev, TranslationCompleted):
                        self._end_turn(ev.text)
            finally:
                feeder.cancel()

    def _end_turn(self, text: str) -> None:
        if not text:
            return
        data = stt.SpeechData(language=self._language, text=text, source_languages=self._source)
        for kind in (stt.SpeechEventType.FINAL_TRANSCRIPT, stt.SpeechEventType.END_OF_SPEECH):
            self._event_ch.send_nowait(stt.SpeechEvent(type=kind, alternatives=[data]))


class TranslatingTTS(tts.TTS):
    """English text in, the caller's language out: an English voice, then one S2S leg."""

    def __init__(self, voices: Any, config: S2SConfig) -> None:
        super().__init__(capabilities=tts.TTSCapabilities(streaming=False), sample_rate=48000, num_channels=1)
        self._voices, self._config = voices, config

    def synthesize(
        self, text: str, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> tts.ChunkedStream:
        return _TranslatedSpeech(tts=self, input_text=text, conn_options=conn_options)


class _TranslatedSpeech(tts.ChunkedStream):
    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        owner: TranslatingTTS = self._tts  # type: ignore[assignment]
        output_emitter.initialize(
            request_id=shortuuid("GR_"), sample_rate=48000, num_channels=1, mime_type="audio/pcm"
        )
        english = await owner._voices.speak(self._input_text, "en")
        async with S2SSession(owner._config) as session:
            await session.send_audio(english, sample_rate=LINE_RATE)
            await session.end_input()
            async for ev in session:
                if isinstance(ev, AudioOut):
                    output_emitter.push(ev.pcm)
        output_emitter.flush()


class ScriptedLLM(llm.LLM):
    """A LiveKit LLM answering with the call script's responder (or OpenAI with ``--llm``)."""

    def __init__(self, responder: Any) -> None:
        super().__init__()
        self.responder = responder

    def chat(
        self,
        *,
        chat_ctx: llm.ChatContext,
        tools: list[Any] | None = None,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
        **_: Any,
    ) -> llm.LLMStream:
        return _Answer(self, chat_ctx=chat_ctx, tools=tools or [], conn_options=conn_options)


class _Answer(llm.LLMStream):
    async def _run(self) -> None:
        heard = next(
            (m.text_content or "" for m in reversed(self._chat_ctx.messages()) if m.role == "user"), ""
        )
        answer = await self._llm.responder.reply(heard)  # type: ignore[attr-defined]
        self._event_ch.send_nowait(
            llm.ChatChunk(id=shortuuid(), delta=llm.ChoiceDelta(role="assistant", content=answer))
        )


async def run_call(
    *,
    engine: str | None = None,
    turns: int = len(CALLER_LINES),
    speed: float = 1.0,
    llm_model: str | None = None,
    reply_timeout_s: float = 30.0,
) -> CallResult:
    """Simulate one call through the AgentSession; return what each side said and heard."""
    server, url, key, name = await choose_endpoint(engine)
    options: dict[str, Any] = {"url": url} if url else {}
    inbound = S2SConfig(target_language="en", source_language="es", api_key=key, **options)
    outbound = S2SConfig(target_language="es", source_language="en", api_key=key, **options)
    result = CallResult(engine=name)
    try:
        voices = await make_voices(server, name)
        result.voices = voices
        session: AgentSession[None] = AgentSession(
            stt=TranslatingSTT(inbound),
            llm=ScriptedLLM(OpenAIResponder(llm_model) if llm_model else ScriptedResponder()),
            tts=TranslatingTTS(voices, outbound),
            turn_handling={"turn_detection": "stt"},
            aec_warmup_duration=None,
        )
        caller_mic, caller_ear = LiveLine("caller-mic", speed), Loudspeaker("caller-ear")
        session.input.audio, session.output.audio = caller_mic, caller_ear
        answers = asyncio.Event()

        def on_item(ev: Any) -> None:
            item = ev.item
            if item.type == "message" and item.text_content:
                side = result.agent_heard if item.role == "user" else result.agent_said
                side.append(item.text_content)
                print(
                    f"{'agent heard (en)' if item.role == 'user' else 'agent (en)'}: {item.text_content}",
                    flush=True,
                )
                answers.set()

        session.on("conversation_item_added", on_item)
        session.on("error", lambda ev: result.errors.append(str(ev.error)))
        await session.start(agent=Agent(instructions="You are the receptionist of Luigi's."))
        await session.say(GREETING).wait_for_playout()
        for i, line in enumerate(CALLER_LINES[:turns]):
            print(f"caller (es): {line}", flush=True)
            result.caller_said.append(line)
            await caller_mic.say(await voices.speak(line, "es"))
            deadline = time.monotonic() + reply_timeout_s
            while len(result.agent_said) < i + 2 and time.monotonic() < deadline:
                answers.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(answers.wait(), max(0.01, deadline - time.monotonic()))
            if len(result.agent_said) < i + 2:
                result.errors.append(f"no answer after line {i + 1}")
                break
            if (speech := session.current_speech) is not None:
                await speech.wait_for_playout()
        caller_mic.close()
        await session.aclose()
        result.caller_heard_audio = b"".join(caller_ear.frames)
    finally:
        if server is not None:
            await server.close()
    return result


def main() -> int:
    parser = call_arg_parser(__doc__.split("\n\n")[0], "show debug logs")
    args = parser.parse_args()
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING)
    result = asyncio.run(run_call(engine=args.engine, turns=args.turns, speed=args.speed, llm_model=args.llm))
    return write_call(result, args.output_dir, "livekit_voice_agent")


if __name__ == "__main__":
    sys.exit(main())
