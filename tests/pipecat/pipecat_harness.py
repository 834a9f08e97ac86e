"""A real Pipecat pipeline around the service under test, driven frame by frame.

``running(service)`` starts ``Pipeline([up_capture, service, down_capture])`` in a
``PipelineWorker`` run by a ``WorkerRunner`` and yields a :class:`Harness` that queues
frames, feeds audio, waits for conditions and ends or cancels the pipeline.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pipecat.frames.frames import (
    CancelFrame,
    EndFrame,
    ErrorFrame,
    Frame,
    InputAudioRawFrame,
    TranslationFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    UserAudioRawFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.workers.runner import WorkerRunner

# --- input frames ------------------------------------------------------------------------


def audio_frames(
    samples: np.ndarray, rate: int, channels: int = 1, frame_ms: int = 20, user_id: str | None = None
) -> list[InputAudioRawFrame]:
    """Cut mono samples into ``InputAudioRawFrame``s (``UserAudioRawFrame`` with ``user_id``).

    With ``channels`` > 1 the left channel carries the signal and the others silence, so
    a service that ignored channels would hear a different (half-level, wrong-length) signal.
    """
    if channels > 1:
        data = np.zeros(samples.size * channels, np.int16)
        data[::channels] = samples
    else:
        data = samples
    step = rate * frame_ms // 1000 * channels
    frames: list[InputAudioRawFrame] = []
    for i in range(0, data.size, step):
        payload = data[i : i + step].astype("<i2").tobytes()
        if user_id is None:
            frames.append(InputAudioRawFrame(audio=payload, sample_rate=rate, num_channels=channels))
        else:
            frames.append(
                UserAudioRawFrame(audio=payload, sample_rate=rate, num_channels=channels, user_id=user_id)
            )
    return frames


# --- frame analysis ----------------------------------------------------------------------


@dataclass
class Bracket:
    """One TTSStartedFrame … TTSStoppedFrame span of the output."""

    context_id: str | None
    audio: list[TTSAudioRawFrame] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    closed: bool = False

    @property
    def audio_s(self) -> float:
        return sum(f.num_frames / f.sample_rate for f in self.audio)


def brackets(frames: Iterable[Frame]) -> list[Bracket]:
    """Group output frames into brackets, asserting they are well formed (no nesting, no stray audio)."""
    out: list[Bracket] = []
    current: Bracket | None = None
    for f in frames:
        if isinstance(f, TTSStartedFrame):
            assert current is None, "TTSStartedFrame inside an open bracket"
            current = Bracket(f.context_id)
            out.append(current)
        elif isinstance(f, TTSStoppedFrame):
            assert current is not None, "TTSStoppedFrame without TTSStartedFrame"
            assert f.context_id == current.context_id
            current.closed = True
            current = None
        elif isinstance(f, TTSAudioRawFrame):
            assert current is not None, "TTSAudioRawFrame outside a bracket"
            assert f.context_id == current.context_id
            current.audio.append(f)
        elif isinstance(f, TranslationFrame):
            assert current is not None, "TranslationFrame outside a bracket"
            current.texts.append(f.text)
    assert current is None, "bracket left open"
    return out


def of_type(frames: Iterable[Frame], kind: type[Any]) -> list[Any]:
    return [f for f in frames if isinstance(f, kind)]


# --- running pipeline --------------------------------------------------------------------


class Capture(FrameProcessor):
    """Records the frames travelling in one direction and passes everything on."""

    def __init__(self, direction: FrameDirection, frames: list[Frame], changed: asyncio.Event) -> None:
        super().__init__(enable_direct_mode=True)
        self._direction = direction
        self._frames = frames
        self._changed = changed

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if direction == self._direction:
            self._frames.append(frame)
            self._changed.set()
        await self.push_frame(frame, direction)


@dataclass
class Harness:
    worker: PipelineWorker
    runner_task: asyncio.Task[Any]
    down: list[Frame]
    up: list[Frame]
    changed: asyncio.Event

    async def send(self, *frames: Frame) -> None:
        for f in frames:
            await self.worker.queue_frame(f)

    async def feed(self, frames: Iterable[InputAudioRawFrame], realtime: float | None = None) -> None:
        """Queue audio frames, paced at ``realtime`` times real time (None: as fast as possible)."""
        t0 = time.monotonic()
        pos = 0.0
        for f in frames:
            await self.worker.queue_frame(f)
            pos += f.num_frames / f.sample_rate
            if realtime:
                delay = t0 + pos / realtime - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            else:
                await asyncio.sleep(0)

    async def wait_for(self, predicate: Callable[[], bool], timeout_s: float = 15.0) -> None:
        # Re-checked on every captured frame, and every 50 ms for state outside the frames.
        async with asyncio.timeout(timeout_s):
            while not predicate():
                self.changed.clear()
                try:
                    await asyncio.wait_for(self.changed.wait(), 0.05)
                except TimeoutError:
                    pass

    def count(self, kind: type[Any]) -> int:
        return sum(1 for f in self.down if isinstance(f, kind))

    @property
    def errors(self) -> list[ErrorFrame]:
        return of_type(self.up, ErrorFrame)

    async def end(self, timeout_s: float = 30.0) -> None:
        await self.worker.queue_frame(EndFrame())
        await asyncio.wait_for(asyncio.shield(self.runner_task), timeout_s)

    async def cancel(self, timeout_s: float = 10.0) -> None:
        await self.worker.queue_frame(CancelFrame())
        await asyncio.wait_for(asyncio.shield(self.runner_task), timeout_s)


@asynccontextmanager
async def running(
    *processors: FrameProcessor, params: PipelineParams | None = None, **worker_kwargs: Any
) -> AsyncIterator[Harness]:
    """Run ``Pipeline([capture_up, *processors, capture_down])`` until the block ends."""
    down: list[Frame] = []
    up: list[Frame] = []
    changed = asyncio.Event()
    pipeline = Pipeline(
        [
            Capture(FrameDirection.UPSTREAM, up, changed),
            *processors,
            Capture(FrameDirection.DOWNSTREAM, down, changed),
        ]
    )
    worker = PipelineWorker(
        pipeline,
        params=params or PipelineParams(audio_in_sample_rate=16000, audio_out_sample_rate=48000),
        **{"enable_rtvi": False, "idle_timeout_secs": None, "cancel_on_idle_timeout": False, **worker_kwargs},
    )
    started = asyncio.Event()

    @worker.event_handler("on_pipeline_started")
    async def _started(_worker: PipelineWorker, _frame: Frame) -> None:
        started.set()

    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    task = asyncio.ensure_future(runner.run())
    harness = Harness(worker, task, down, up, changed)
    try:
        waiter = asyncio.ensure_future(started.wait())
        try:
            await asyncio.wait({task, waiter}, timeout=20, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if not started.is_set():
            if task.done():
                task.result()
            raise AssertionError("pipeline did not start")
        yield harness
    finally:
        if not task.done():
            await worker.queue_frame(CancelFrame())
            try:
                await asyncio.wait_for(task, 10)
            except TimeoutError:
                task.cancel()


#: Session options that keep the tests quick: short trailing silence, fast reconnects.
FAST_SESSION: dict[str, Any] = {"trailing_silence_s": 0.6, "reconnect_backoff_s": 0.05}
