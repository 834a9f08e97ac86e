"""RealtimeModel inside a real AgentSession with memory IO, against the local echo server."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

pytest.importorskip("livekit.agents")

from livekit.agents import Agent, AgentSession, APIStatusError, function_tool, llm
from livekit.agents.metrics import RealtimeModelMetrics
from livekit.agents.voice.events import CloseReason

from gradium_plugins import AuthenticationError
from gradium_plugins.livekit import RealtimeModel
from tests.livekit.lk_helpers import (
    MemoryAudioInput,
    MemoryAudioOutput,
    MemoryTextOutput,
    frames_of,
    parse_echo,
    speech,
)

FREQS = [300, 450, 600]


def _session(model: RealtimeModel) -> AgentSession[Any]:
    # No AEC warm-up: memory IO has no echo to cancel.
    return AgentSession(llm=model, aec_warmup_duration=None)


async def test_speaker_talking_over_translation_does_not_interrupt_it(echo_server: Any) -> None:
    model = RealtimeModel(target_language="es", url=echo_server.url)
    caps = model.capabilities
    assert caps.turn_detection and caps.supports_overlapping_speech and caps.audio_output
    assert not caps.message_truncation and not caps.mutable_instructions and not caps.mutable_tools

    session = _session(model)
    # Each translation (0.8 s, played in real time) starts ~0.25 s after its tone ends, while the
    # next tone starts 0.4 s after it: the speaker talks over every translation but the last.
    samples = speech(FREQS, rate=24000, tone_s=0.8, pause_s=0.4)
    inp = MemoryAudioInput(frames_of(samples, 24000), speed=1.0)
    out = MemoryAudioOutput(sample_rate=48000, realtime=True)
    session.input.audio = inp
    session.output.audio = out
    session.output.transcription = MemoryTextOutput()
    items: list[Any] = []
    errors: list[Any] = []
    overlaps = 0

    def on_user_state(ev: Any) -> None:
        nonlocal overlaps
        if ev.new_state == "speaking" and session.agent_state == "speaking":
            overlaps += 1

    all_items = asyncio.Event()

    def on_item(ev: Any) -> None:
        items.append(ev.item)
        if sum(1 for i in items if i.type == "message" and i.role == "assistant") == len(FREQS):
            all_items.set()

    session.on("conversation_item_added", on_item)
    model_metrics: list[RealtimeModelMetrics] = []
    session.on("user_state_changed", on_user_state)
    session.on("error", errors.append)
    await session.start(agent=Agent(instructions="ignored by a translator"))
    assert len(model.sessions) == 1
    model.sessions[0].on("metrics_collected", model_metrics.append)

    await asyncio.wait_for(inp.done.wait(), 15)
    await asyncio.wait_for(out.wait_segments(len(FREQS)), 10)
    await asyncio.wait_for(all_items.wait(), 10)
    cleared = out.cleared  # closing the AgentSession clears the sink; only count before that
    await session.aclose()

    assert overlaps >= 1, "the test must make the speaker talk over a translation"
    assert cleared == 0
    assert [round(s.duration, 2) for s in out.segments] == [0.8] * len(FREQS)  # all of it played
    assistant = [i for i in items if i.type == "message" and i.role == "assistant"]
    assert [parse_echo(i.text_content)[3] for i in assistant] == FREQS
    assert [parse_echo(i.text_content)[0] for i in assistant] == ["es"] * len(FREQS)
    assert not any(i.interrupted for i in assistant)
    per_utterance = [m for m in model_metrics if m.request_id]
    assert len(per_utterance) == len(FREQS)
    assert not any(m.cancelled for m in per_utterance)
    # Latency from the core; the last translation (answered by the echo server before the
    # client's pause detector ended its input) is closed on quiet output, with no figure.
    assert all(m.ttft > 0 for m in per_utterance[:-1])
    assert all(isinstance(m, RealtimeModelMetrics) and m.session_duration > 0 for m in per_utterance)
    assert {m.request_id for m in per_utterance} == {i.id for i in assistant}
    assert not errors


async def test_bad_key_closes_agent_session(make_server: Any) -> None:
    server = await make_server(engine="echo", api_key="the-right-key-0123456789")
    model = RealtimeModel(target_language="fr", url=server.url, api_key="a-wrong-key-0123456789")
    session = _session(model)
    inp = MemoryAudioInput(frames_of(speech(FREQS, rate=24000), 24000), speed=4.0)
    session.input.audio = inp
    session.output.audio = MemoryAudioOutput()
    errors: list[Any] = []
    closed: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    session.on("error", errors.append)
    session.on("close", lambda ev: closed.done() or closed.set_result(ev))
    await session.start(agent=Agent(instructions=""))
    ev = await asyncio.wait_for(closed, 10)

    assert ev.reason == CloseReason.ERROR
    assert len(errors) == 1 and errors[0].error.recoverable is False
    assert isinstance(errors[0].error.error, APIStatusError)
    assert isinstance(errors[0].error.error.__cause__, AuthenticationError)


async def test_conversational_calls_are_refused_or_ignored(echo_server: Any) -> None:
    model = RealtimeModel(target_language="fr", url=echo_server.url)
    rt = model.session()
    try:
        with pytest.raises(llm.RealtimeError):
            await rt.generate_reply(instructions="say hi")

        @function_tool
        async def lookup() -> str:
            """Look something up."""
            return "x"

        with pytest.raises(llm.RealtimeError, match="tools"):
            await rt.update_tools([lookup])
        await rt.update_tools([])
        await rt.update_instructions("be nice")
        ctx = llm.ChatContext.empty()
        ctx.add_message(role="user", content="hello")
        await rt.update_chat_ctx(ctx)
        assert len(rt.chat_ctx.items) == 1 and len(rt.tools.flatten()) == 0
        rt.commit_audio()
        rt.clear_audio()
        rt.interrupt()
        rt.truncate(message_id="x", modalities=["audio"], audio_end_ms=0)
    finally:
        await rt.aclose()
    assert rt.closed


async def test_second_update_is_checked_against_the_first(echo_server: Any) -> None:
    """target_language="de" then a German voice: checked against "de", not the old "fr" (15.7)."""
    german_voice = "-uP9MuGtBqAvEyxI"
    model = RealtimeModel(target_language="fr", url=echo_server.url)
    rt = model.session()
    texts: list[str] = []

    async def read(ev: llm.GenerationCreatedEvent) -> None:
        async for msg in ev.message_stream:
            texts.append("".join([t async for t in msg.text_stream]))

    readers: list[asyncio.Task[None]] = []
    errors: list[Any] = []
    rt.on("error", errors.append)
    rt.on("generation_created", lambda ev: readers.append(asyncio.create_task(read(ev))))
    try:
        rt.update_options(target_language="de")
        rt.update_options(voice_id=german_voice)
        model.update_options(target_language="es")
        model.update_options(voice_id="B36pbz5_UoWn4BDl")  # a Spanish voice, on the model and its session
        for frame in frames_of(speech(FREQS, rate=24000), 24000):
            rt.push_audio(frame)
            await asyncio.sleep(frame.duration / 4)  # paced: the switch waits for a pause
        assert await asyncio.wait_for(rt.drain(), 20)
        await asyncio.gather(*readers)
    finally:
        await rt.aclose()
    # The switch happens at a pause: the last utterance is in the last language asked for.
    assert [parse_echo(t)[3] for t in texts] == FREQS
    assert parse_echo(texts[-1])[0] == "es" and not errors
    assert model.config.voice_id == "B36pbz5_UoWn4BDl"


async def test_generation_streams_stay_open_until_the_generation_ends(echo_server: Any) -> None:
    """AgentSession reads the end of message_stream and function_stream as "generation done"
    (then it skips interrupt() and reports cancelled=False): they close with the audio (15.5)."""
    model = RealtimeModel(target_language="es", url=echo_server.url)
    rt = model.session()
    order: list[str] = []

    async def watch(ev: llm.GenerationCreatedEvent) -> None:
        async def messages() -> None:
            async for msg in ev.message_stream:
                async for _ in msg.audio_stream:
                    pass
                order.append("audio_end")
            order.append("message_stream_end")

        async def functions() -> None:
            async for _ in ev.function_stream:
                pass
            order.append("function_stream_end")

        await asyncio.gather(messages(), functions())

    watchers: list[asyncio.Task[None]] = []
    rt.on("generation_created", lambda ev: watchers.append(asyncio.create_task(watch(ev))))
    try:
        for frame in frames_of(speech([300], rate=24000), 24000):
            rt.push_audio(frame)
        assert await asyncio.wait_for(rt.drain(), 20)
        await asyncio.wait_for(asyncio.gather(*watchers), 5)
    finally:
        await rt.aclose()
    assert len(watchers) == 1
    assert order[0] == "audio_end", order
