"""The deterministic ``echo`` engine: splits the input at pauses and returns each utterance as is.

It stands in for a translation model in tests and benchmarks. For every utterance (speech
between pauses, found by :class:`~gradium_plugins.audio.PauseDetector`) it yields the same audio
at 48 kHz and a text that identifies it::

    "[fr] utterance 3 (1.52 s, 440 Hz)"

``fr`` is the target language (``src`` when the setup has none), ``3`` counts utterances from 1
per engine session (one ``setup``), ``1.52 s`` is the utterance's duration and ``440 Hz`` its
dominant frequency rounded to the nearest 10 Hz, so a test that speaks tones of distinct
frequencies can recognise each utterance after a reconnect or a session renewal.
"""

from __future__ import annotations

import functools
import re
from collections.abc import AsyncIterator

import numpy as np
import numpy.typing as npt

from ..audio import Int16Array, PauseDetector, resample
from ..voices import LANGUAGES
from .engine import (
    ENGINE_INPUT_RATE,
    ENGINE_OUTPUT_RATE,
    Engine,
    EngineSession,
    EngineSetup,
    EngineSetupError,
    Utterance,
)

#: Parses the text the echo engine produces: (language, index, duration_s, frequency_hz).
ECHO_TEXT_RE = re.compile(
    r"^\[(?P<lang>[^\]]+)\] utterance (?P<n>\d+) \((?P<dur>[\d.]+) s, (?P<freq>\d+) Hz\)$"
)


_FFT_SIZE = 8192


@functools.lru_cache(maxsize=64)
def _window(n: int) -> npt.NDArray[np.float32]:
    return np.hanning(n).astype(np.float32)


def dominant_frequency(samples: Int16Array, sample_rate: int) -> int:
    """Return the strongest frequency of a signal, rounded to the nearest 10 Hz.

    Analyses at most 8192 samples from the middle of the signal (a Hann-windowed FFT with
    parabolic interpolation of the peak: sub-Hz accuracy on a tone, at a fixed small cost).
    """
    if samples.size == 0:
        return 0
    span = min(samples.size, _FFT_SIZE)
    mid = (samples.size - span) // 2
    seg = samples[mid : mid + span].astype(np.float32)
    seg -= seg.mean()
    seg *= _window(span)
    mag = np.abs(np.fft.rfft(seg, n=_FFT_SIZE))
    k = int(np.argmax(mag))
    offset = 0.0
    if 0 < k < mag.size - 1:
        # Parabola through the log magnitudes of the peak bin and its neighbours.
        a, b, c = np.log(mag[k - 1 : k + 2] + 1e-9)
        denom = a - 2 * b + c
        offset = float(0.5 * (a - c) / denom) if denom else 0.0
    freq = (k + offset) * sample_rate / _FFT_SIZE
    return round(freq / 10.0) * 10


class EchoEngine(Engine):
    """Deterministic engine that echoes each utterance of the input.

    Args:
        threshold_dbfs: Frames quieter than this are silence.
        min_pause_s: Silence that ends an utterance (the utterance is emitted then).
        min_speech_s: Voiced time needed to open an utterance (shorter clicks are ignored).
        max_utterance_s: Continuous speech longer than this is cut, so memory stays bounded.
    """

    name = "echo"

    def __init__(
        self,
        *,
        threshold_dbfs: float = -40.0,
        min_pause_s: float = 0.25,
        min_speech_s: float = 0.06,
        max_utterance_s: float = 20.0,
    ) -> None:
        self.threshold_dbfs = threshold_dbfs
        self.min_pause_s = min_pause_s
        self.min_speech_s = min_speech_s
        self.max_utterance_s = max_utterance_s

    def open(self, setup: EngineSetup) -> EngineSession:
        """Open a session; only the target language is checked.

        Raises:
            EngineSetupError: The target language is not one the service supports.
        """
        lang = setup.target_language
        if lang is not None and lang not in LANGUAGES:
            raise EngineSetupError(
                f"unsupported target_language {lang!r}; allowed values: {', '.join(LANGUAGES)}"
            )
        return EchoSession(self, lang or "src")


class _Buffer:
    """Input samples kept since the start of the current (or next) utterance.

    Holds a list of chunks plus the absolute index of the first sample, so taking an
    utterance costs one concatenation and dropping old audio costs nothing per sample.
    """

    def __init__(self) -> None:
        self.chunks: list[Int16Array] = []
        self.base = 0  # absolute index of chunks[0][0]
        self.end = 0  # absolute index one past the last sample

    def append(self, chunk: Int16Array) -> None:
        self.chunks.append(chunk)
        self.end += chunk.size

    def drop_before(self, index: int) -> None:
        while self.chunks and self.base + self.chunks[0].size <= index:
            self.base += self.chunks.pop(0).size

    def take(self, start: int, stop: int) -> Int16Array:
        start = max(start, self.base)
        if stop <= start:
            return np.zeros(0, dtype=np.int16)
        joined = self.chunks[0] if len(self.chunks) == 1 else np.concatenate(self.chunks)
        return np.ascontiguousarray(joined[start - self.base : stop - self.base])


class EchoSession(EngineSession):
    """One echo stream (see :class:`EchoEngine`)."""

    def __init__(self, engine: EchoEngine, lang: str) -> None:
        self._engine = engine
        self._lang = lang
        self._count = 0

    def _utterance(self, samples: Int16Array, start: int) -> Utterance:
        self._count += 1
        rate = ENGINE_INPUT_RATE
        dur = samples.size / rate
        freq = dominant_frequency(samples, rate)
        return Utterance(
            text=f"[{self._lang}] utterance {self._count} ({dur:.2f} s, {freq} Hz)",
            audio=resample(samples, rate, ENGINE_OUTPUT_RATE),
            input_start_s=start / rate,
            input_end_s=(start + samples.size) / rate,
        )

    async def run(self, audio: AsyncIterator[Int16Array]) -> AsyncIterator[Utterance]:
        """Yield one utterance per stretch of speech, when its pause ends or the input ends."""
        eng = self._engine
        det = PauseDetector(
            ENGINE_INPUT_RATE,
            threshold_dbfs=eng.threshold_dbfs,
            min_pause_s=eng.min_pause_s,
            min_speech_s=eng.min_speech_s,
        )
        # A "start" can be reported up to min_speech_s (+ one frame) before the analysed position.
        margin = (det.speech_frames + 1) * det.frame
        max_len = round(eng.max_utterance_s * ENGINE_INPUT_RATE)
        buf = _Buffer()
        start: int | None = None
        async for chunk in audio:
            if chunk.size == 0:
                continue
            buf.append(chunk)
            for kind, index in det.push(chunk):
                if kind == "start":
                    start = index
                elif start is not None:
                    if index > start:  # not the case only right after a forced cut
                        yield self._utterance(buf.take(start, index), start)
                    buf.drop_before(index)
                    start = None
            if start is None:
                buf.drop_before(det.position - margin)
            elif buf.end - start >= max_len:
                # Speech with no pause: cut it so the buffer (and the latency) stays bounded.
                yield self._utterance(buf.take(start, buf.end), start)
                start = buf.end
                buf.drop_before(start)
        # End of input closes the utterance in progress (its end is the last voiced frame).
        for kind, index in det.flush():
            if kind == "end" and start is not None and index > start:
                yield self._utterance(buf.take(start, index), start)
