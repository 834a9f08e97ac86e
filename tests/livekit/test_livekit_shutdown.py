"""Closing and draining the LiveKit adapters, including under LiveKit's own job shutdown.

The job tests run LiveKit's real job runner (``ipc.job_proc_lazy_main._JobProc``, the code a
worker process runs) in-process on a fake job: the entrypoint, ``ctx.shutdown()``, the room
disconnect and the concurrent shutdown callbacks happen in LiveKit's order, not a hand-made one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

pytest.importorskip("livekit.agents")

from livekit.agents.beta.translation import TranslationSession
from livekit.agents.ipc.job_proc_lazy_main import _JobProc
from livekit.agents.ipc.proto import StartJobRequest
from livekit.agents.job import JobAcceptArguments, JobContext, JobExecutorType, JobProcess, RunningJobInfo
from livekit.protocol import agent as agent_proto
from livekit.protocol import models

from gradium_plugins.livekit import RealtimeModel, TranslationModel, drain_and_close
from gradium_plugins.local import FaultPlan
from tests.livekit.lk_helpers import (
    MemoryAudioInput,
    MemoryAudioOutput,
    MemoryTextOutput,
    frames_of,
    parse_echo,
    speech,
)

FREQS = [300, 450, 600]


class _ProcClient:
    """Stands in for the worker's IPC channel: records what the job process reports."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    async def send(self, msg: Any) -> None:
        self.sent.append(type(msg).__name__)


async def run_job(entrypoint: Callable[[JobContext], Awaitable[None]]) -> list[str]:
    """Run ``entrypoint`` as a fake job through LiveKit's job runner; return the IPC messages."""
    proc = _JobProc(
        lambda _: None, entrypoint, None, session_end_timeout=10, executor_type=JobExecutorType.THREAD
    )
    client = _ProcClient()
    proc._client = client  # type: ignore[assignment]
    proc._inf_client = None  # type: ignore[assignment]
    proc._job_proc = JobProcess(executor_type=JobExecutorType.THREAD, user_arguments=None, http_proxy=None)
    proc._exit_proc_flag = asyncio.Event()
    proc._shutdown_fut = asyncio.Future()
    proc._entrypoint_span_context = None
    req = StartJobRequest()
    req.running_job = RunningJobInfo(
        accept_arguments=JobAcceptArguments(identity="translator", name="", metadata=""),
        job=agent_proto.Job(
            id="job-1", room=models.Room(name="room", sid="RM_1"), type=agent_proto.JobType.JT_ROOM
        ),
        url="",
        token="",
        worker_id="worker",
        fake_job=True,
    )
    proc._start_job(req)
    assert proc._job_task is not None
    await proc._job_task
    return client.sent


def _memory_session(
    model: TranslationModel, inp: MemoryAudioInput, *, realtime: bool = False
) -> tuple[TranslationSession[Any], MemoryAudioOutput, MemoryTextOutput]:
    session: TranslationSession[Any] = TranslationSession(model=model)
    out, txt = MemoryAudioOutput(realtime=realtime), MemoryTextOutput()
    session.input.audio, session.output.audio, session.output.transcription = inp, out, txt
    return session, out, txt


async def test_drain_and_close_drains_only_that_session(echo_server: Any) -> None:
    """Two sessions of one model: closing one must not end the other's input (issue 15.1)."""
    model = TranslationModel(target_language="fr", url=echo_server.url)
    freqs = [300, 350, 400, 450, 500, 550]
    short = MemoryAudioInput(frames_of(speech([700], rate=24000), 24000))
    long = MemoryAudioInput(frames_of(speech(freqs, rate=24000, tone_s=0.4, pause_s=0.5), 24000), speed=4.0)
    first, _, first_txt = _memory_session(model, short)
    second, second_out, second_txt = _memory_session(model, long)
    await first.start()
    await second.start()
    await asyncio.wait_for(short.done.wait(), 10)
    await asyncio.wait_for(drain_and_close(first), 20)
    assert not long.done.is_set(), "the second session must still be speaking"
    await asyncio.wait_for(long.done.wait(), 20)
    await asyncio.wait_for(drain_and_close(second), 20)

    assert [parse_echo(t)[3] for t in first_txt.segments] == [700]
    assert [parse_echo(t)[3] for t in second_txt.segments] == freqs
    assert len(second_out.segments) == len(freqs)


async def test_model_session_aclose_closes_at_once(make_server: Any) -> None:
    """aclose() drops the translation in flight instead of waiting for it (issue 15.3)."""
    delay = 4.0
    server = await make_server(engine="echo", faults=lambda _: FaultPlan(delay_output_s=delay))
    model = TranslationModel(target_language="fr", url=server.url)
    session = model.session()
    for frame in frames_of(speech(FREQS, rate=24000, tail_s=0.6), 24000):
        session.push_audio(frame)
    await asyncio.sleep(0.3)  # the input reached the server; its output is still delayed there
    t0 = time.monotonic()
    await asyncio.wait_for(session.aclose(), 20)
    elapsed = time.monotonic() - t0
    assert elapsed < delay / 4, f"aclose waited {elapsed:.2f} s for output nobody reads"
    assert session.closed and model.sessions == []


async def test_realtime_session_aclose_closes_at_once(make_server: Any) -> None:
    delay = 4.0
    server = await make_server(engine="echo", faults=lambda _: FaultPlan(delay_output_s=delay))
    model = RealtimeModel(target_language="fr", url=server.url)
    rt = model.session()
    for frame in frames_of(speech(FREQS, rate=24000, tail_s=0.6), 24000):
        rt.push_audio(frame)
    await asyncio.sleep(0.3)
    t0 = time.monotonic()
    await asyncio.wait_for(rt.aclose(), 20)
    assert time.monotonic() - t0 < delay / 4
    assert rt.closed


async def test_job_shutdown_with_drain_callback_does_not_stall(make_server: Any) -> None:
    """The old recipe (drain_and_close as a shutdown callback) under LiveKit's real job shutdown.

    LiveKit disconnects the room, then runs the shutdown callbacks concurrently, including the
    TranslationSession's own close: draining must stop waiting once the session is closing
    instead of holding the job for the whole drain timeout (issue 15.2).
    """
    drain_timeout = 8.0
    server = await make_server(engine="echo", faults=lambda _: FaultPlan(delay_output_s=1.0))
    closed_at: list[float] = []

    async def entrypoint(ctx: JobContext) -> None:
        model = TranslationModel(target_language="fr", url=server.url, drain_timeout=drain_timeout)
        inp = MemoryAudioInput(frames_of(speech(FREQS, rate=24000), 24000), speed=2.0)
        session, _, _ = _memory_session(model, inp, realtime=True)
        session.on("close", lambda _: closed_at.append(time.monotonic()))
        await session.start()

        async def on_shutdown() -> None:
            await drain_and_close(session)

        ctx.add_shutdown_callback(on_shutdown)
        await asyncio.sleep(0.8)  # mid-speech: translations are in flight
        ctx.shutdown("done")

    t0 = time.monotonic()
    sent = await asyncio.wait_for(run_job(entrypoint), 3 * drain_timeout)
    elapsed = time.monotonic() - t0
    assert sent[-2:] == ["ShuttingDown", "Exiting"]
    assert len(closed_at) == 1
    assert elapsed < drain_timeout / 2, f"job shutdown took {elapsed:.2f} s"


async def test_job_recipe_drain_when_speaker_leaves_then_shutdown(echo_server: Any) -> None:
    """The documented recipe: drain when the speaker is done, then ``ctx.shutdown()``."""
    got: dict[str, Any] = {}

    async def entrypoint(ctx: JobContext) -> None:
        model = TranslationModel(target_language="de", url=echo_server.url)
        inp = MemoryAudioInput(frames_of(speech(FREQS, rate=24000, tail_s=0.05), 24000), speed=4.0)
        session, out, txt = _memory_session(model, inp, realtime=True)
        got.update(out=out, txt=txt)
        await session.start()
        await inp.done.wait()  # in a room: the speaker's participant_disconnected
        await drain_and_close(session)
        ctx.shutdown("speaker left")

    await asyncio.wait_for(run_job(entrypoint), 30)
    assert [parse_echo(t)[3] for t in got["txt"].segments] == FREQS
    assert len(got["out"].segments) == len(FREQS)
