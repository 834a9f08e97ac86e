"""Helpers of the LiveKit adapter tests: synthetic speech and memory IO (as LiveKit's own tests use)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import numpy as np
from livekit.agents.voice import io

from livekit import rtc
from tests.conftest import parse_echo  # noqa: F401 - re-exported for the LiveKit tests


def tone(freq: float, seconds: float, rate: int, amp: float = 0.4) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (np.sin(2 * np.pi * freq * t) * amp * 32767).astype(np.int16)


def speech(
    freqs: list[int],
    *,
    rate: int,
    tone_s: float = 0.6,
    pause_s: float = 0.5,
    tail_s: float | None = None,
    channels: int = 1,
) -> np.ndarray:
    """Tones of distinct frequencies separated by silence: one 'utterance' per tone.

    Returns interleaved int16 samples (``channels`` identical channels).
    """
    parts: list[np.ndarray] = [np.zeros(round(0.2 * rate), np.int16)]
    for i, f in enumerate(freqs):
        parts.append(tone(f, tone_s, rate))
        last = i == len(freqs) - 1
        gap = pause_s if not last or tail_s is None else tail_s
        parts.append(np.zeros(round(gap * rate), np.int16))
    mono = np.concatenate(parts)
    return np.repeat(mono, channels) if channels > 1 else mono


def frames_of(samples: np.ndarray, rate: int, channels: int = 1, frame_ms: int = 20) -> list[rtc.AudioFrame]:
    n = rate * frame_ms // 1000
    out = []
    total = samples.size // channels
    for i in range(0, total, n):
        chunk = samples[i * channels : (i + n) * channels]
        out.append(rtc.AudioFrame(chunk.tobytes(), rate, channels, chunk.size // channels))
    return out


class MemoryAudioInput(io.AudioInput):
    """Yields the given frames, optionally paced at ``speed`` x real time, then ends.

    With ``hold_at=i`` it stops before frame ``i`` (setting ``held``) until ``release`` is set.
    """

    def __init__(
        self, frames: list[rtc.AudioFrame], *, speed: float | None = None, hold_at: int | None = None
    ) -> None:
        super().__init__(label="memory-input")
        self._frames = list(frames)
        self._speed = speed
        self._hold_at = hold_at
        self._i = 0
        self._t0: float | None = None
        self._pushed_s = 0.0
        self.held = asyncio.Event()
        self.release = asyncio.Event()
        self.done = asyncio.Event()

    async def __anext__(self) -> rtc.AudioFrame:
        if self._i >= len(self._frames):
            self.done.set()
            raise StopAsyncIteration
        if self._i == self._hold_at and not self.release.is_set():
            self.held.set()
            await self.release.wait()
            self._t0 = None
        if self._speed is not None:
            if self._t0 is None:
                self._t0, self._pushed_s = time.monotonic(), 0.0
            ahead = self._t0 + self._pushed_s / self._speed - time.monotonic()
            if ahead > 0:
                await asyncio.sleep(ahead)
        frame = self._frames[self._i]
        self._i += 1
        self._pushed_s += frame.duration
        return frame


@dataclass
class Segment:
    frames: list[rtc.AudioFrame] = field(default_factory=list)

    @property
    def duration(self) -> float:
        return sum(f.duration for f in self.frames)


class MemoryAudioOutput(io.AudioOutput):
    """Records frames per segment (a segment ends at ``flush``); plays out instantly.

    With ``realtime=True`` it paces ``capture_frame`` like a real sink would.
    """

    def __init__(self, *, sample_rate: int | None = None, realtime: bool = False) -> None:
        super().__init__(
            label="memory-output",
            capabilities=io.AudioOutputCapabilities(pause=False),
            sample_rate=sample_rate,
        )
        self.segments: list[Segment] = []
        self._current: Segment | None = None
        self._realtime = realtime
        self._play_t0: float | None = None
        self._played_s = 0.0
        self.cleared = 0
        self._flushed = asyncio.Event()

    async def wait_segments(self, n: int) -> None:
        """Wait until ``n`` segments were flushed."""
        while len(self.segments) < n:
            self._flushed.clear()
            await self._flushed.wait()

    async def capture_frame(self, frame: rtc.AudioFrame) -> None:
        await super().capture_frame(frame)
        if self._current is None:
            self._current = Segment()
            self.on_playback_started(created_at=time.time())
        self._current.frames.append(frame)
        if self._realtime:
            now = time.monotonic()
            if self._play_t0 is None or now > self._play_t0 + self._played_s:
                self._play_t0, self._played_s = now, 0.0
            self._played_s += frame.duration
            ahead = self._play_t0 + self._played_s - now - 0.1
            if ahead > 0:
                await asyncio.sleep(ahead)

    def flush(self) -> None:
        super().flush()
        seg, self._current = self._current, None
        if seg is not None:
            self.segments.append(seg)
            self.on_playback_finished(playback_position=seg.duration, interrupted=False)
        self._flushed.set()

    def clear_buffer(self) -> None:
        self.cleared += 1
        seg, self._current = self._current, None
        if seg is not None:
            self.segments.append(seg)
            self.on_playback_finished(playback_position=seg.duration, interrupted=True)

    @property
    def duration(self) -> float:
        return sum(s.duration for s in self.segments) + (self._current.duration if self._current else 0.0)

    @property
    def rates(self) -> set[int]:
        rates = {f.sample_rate for s in self.segments for f in s.frames}
        if self._current:
            rates |= {f.sample_rate for f in self._current.frames}
        return rates


class MemoryTextOutput(io.TextOutput):
    """Records captured text per segment (a segment ends at ``flush``)."""

    def __init__(self) -> None:
        super().__init__(label="memory-text", next_in_chain=None)
        self.segments: list[str] = []
        self._current: list[str] = []

    async def capture_text(self, text: str) -> None:
        self._current.append(text)

    def flush(self) -> None:
        self.segments.append("".join(self._current))
        self._current = []
