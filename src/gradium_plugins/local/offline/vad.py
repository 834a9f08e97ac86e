"""Streaming utterance segmentation with the Silero VAD model bundled in faster-whisper.

faster-whisper's ``get_speech_timestamps`` works on a whole recording. Here the same model and
the same decision rules run incrementally: each input chunk is resampled to 16 kHz, only the new
512-sample windows go through the network (its LSTM state and 64-sample context are carried from
call to call), and a small state machine turns window probabilities into utterances. Work per
chunk is proportional to the chunk, and the audio kept is bounded by the open utterance.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ...audio import Int16Array, StreamResampler

VAD_RATE = 16000
WINDOW = 512  # samples at 16 kHz (32 ms), fixed by the model
CONTEXT = 64  # samples of the previous window the model sees

Float32Array = npt.NDArray[np.float32]


class SileroModel:
    """The Silero VAD v6 ONNX network; stateless, shared by every stream (``run`` is thread-safe)."""

    def __init__(self, path: Path) -> None:
        import onnxruntime

        opts = onnxruntime.SessionOptions()
        # One thread: calls are tiny and frequent; more threads only add wake-up cost.
        opts.inter_op_num_threads = 1
        opts.intra_op_num_threads = 1
        opts.enable_cpu_mem_arena = False
        opts.log_severity_level = 4
        self._session: Any = onnxruntime.InferenceSession(
            str(path), providers=["CPUExecutionProvider"], sess_options=opts
        )

    def probabilities(
        self, windows: Float32Array, context: Float32Array, state: tuple[Float32Array, Float32Array]
    ) -> tuple[Float32Array, Float32Array, tuple[Float32Array, Float32Array]]:
        """Return speech probabilities of ``windows`` (n, 512) and the carried context and state."""
        prev = np.concatenate((context[None, :], windows[:-1, -CONTEXT:]), axis=0)
        batch = np.concatenate((prev, windows), axis=1)
        probs, h, c = self._session.run(None, {"input": batch, "h": state[0], "c": state[1]})
        return (
            np.asarray(probs, dtype=np.float32).reshape(-1),
            windows[-1, -CONTEXT:].copy(),
            (h, c),
        )


@dataclass(frozen=True, slots=True)
class VadConfig:
    """Decision rules (same meaning as faster-whisper's ``VadOptions``).

    Attributes:
        threshold: Probability at or above which a window is speech.
        neg_threshold: Probability below which a window is silence (between: keeps the state).
        min_silence_s: Silence that ends an utterance (sets the end-of-utterance delay).
        min_speech_s: Shorter utterances are dropped (clicks, breaths).
        speech_pad_s: Audio kept on each side of the speech for the recogniser.
        max_utterance_s: Longer speech is cut at its last short pause (or hard) so STT stays bounded.
    """

    threshold: float = 0.5
    neg_threshold: float = 0.35
    min_silence_s: float = 0.5
    min_speech_s: float = 0.25
    speech_pad_s: float = 0.2
    max_utterance_s: float = 15.0


@dataclass(frozen=True, slots=True)
class SpeechSegment:
    """One utterance found in the stream.

    Attributes:
        audio: 16 kHz float32 mono audio, padded by ``speech_pad_s`` where available.
        start_s: Speech start on the input timeline (without padding).
        end_s: Speech end on the input timeline (without padding).
    """

    audio: Float32Array
    start_s: float
    end_s: float


class StreamingVad:
    """Incremental segmentation of one stream into utterances.

    Feed int16 chunks at the input rate with :meth:`push` (returns finished utterances) and call
    :meth:`flush` at the end of input. Not thread-safe: one instance per stream, one caller at a time.
    """

    def __init__(self, model: SileroModel, input_rate: int, config: VadConfig | None = None) -> None:
        self.model = model
        self.config = cfg = config or VadConfig()
        self._resampler = StreamResampler(input_rate, VAD_RATE)
        self._state = (np.zeros((1, 1, 128), np.float32), np.zeros((1, 1, 128), np.float32))
        self._context = np.zeros(CONTEXT, np.float32)
        # Audio kept from absolute 16 kHz sample ``_buf_start``; windows analysed up to ``_analysed``.
        self._buf = np.zeros(0, np.float32)
        self._buf_start = 0
        self._analysed = 0
        self._min_silence = int(cfg.min_silence_s * VAD_RATE)
        self._min_speech = int(cfg.min_speech_s * VAD_RATE)
        self._pad = int(cfg.speech_pad_s * VAD_RATE)
        self._max_speech = int(cfg.max_utterance_s * VAD_RATE) - WINDOW - 2 * self._pad
        self._short_pause = int(0.098 * VAD_RATE)
        self._triggered = False
        self._start = 0
        self._temp_end = 0
        self._prev_end = 0
        self._next_start = 0

    @property
    def in_speech(self) -> bool:
        """True while an utterance is open."""
        return self._triggered

    @property
    def buffered_s(self) -> float:
        """Seconds of audio currently held (bounded by the open utterance plus padding)."""
        return self._buf.size / VAD_RATE

    def push(self, samples: Int16Array) -> list[SpeechSegment]:
        """Analyse a chunk of int16 input; return the utterances that ended in it."""
        return self._feed(self._resampler.process(samples))

    def flush(self) -> list[SpeechSegment]:
        """End of input: analyse the tail and close the open utterance."""
        out = self._feed(self._resampler.flush())
        end = self._buf_start + self._buf.size
        rest = (self._buf_start + self._buf.size) - self._analysed
        if rest > 0:  # the last partial window: classify it padded with zeros
            out += self._feed(np.zeros(WINDOW - rest, np.float32), count_as_audio=False)
        if self._triggered and end - self._start > self._min_speech:
            out.append(self._cut(self._start, end))
        self._triggered = False
        return out

    # --- internals ---------------------------------------------------------------------

    def _feed(self, samples16: npt.NDArray[Any], count_as_audio: bool = True) -> list[SpeechSegment]:
        if samples16.size:
            chunk = samples16.astype(np.float32) / 32768.0 if samples16.dtype == np.int16 else samples16
            self._buf = np.concatenate((self._buf, chunk.astype(np.float32, copy=False)))
        total = self._buf_start + self._buf.size
        n = (total - self._analysed) // WINDOW
        if n <= 0:
            return []
        lo = self._analysed - self._buf_start
        windows = self._buf[lo : lo + n * WINDOW].reshape(n, WINDOW)
        probs, self._context, self._state = self.model.probabilities(windows, self._context, self._state)
        base = self._analysed
        self._analysed += n * WINDOW
        out: list[SpeechSegment] = []
        for i, p in enumerate(probs.tolist()):
            self._step(base + i * WINDOW, p, out)
        if not count_as_audio:  # drop the zero padding again
            self._buf = self._buf[: self._buf.size - samples16.size]
            self._analysed = self._buf_start + self._buf.size
        self._trim()
        return out

    def _step(self, pos: int, prob: float, out: list[SpeechSegment]) -> None:
        # Same rules as faster_whisper.vad.get_speech_timestamps, one window at a time.
        cfg = self.config
        if prob >= cfg.threshold and self._temp_end:
            self._temp_end = 0
            if self._next_start < self._prev_end:
                self._next_start = pos
        if prob >= cfg.threshold and not self._triggered:
            self._triggered = True
            self._start = pos
            return
        if self._triggered and pos - self._start > self._max_speech:
            if self._prev_end:
                out.append(self._cut(self._start, self._prev_end))
                if self._next_start < self._prev_end:
                    self._triggered = False
                else:
                    self._start = self._next_start
            else:
                out.append(self._cut(self._start, pos))
                self._triggered = False
            self._prev_end = self._next_start = self._temp_end = 0
            return
        if prob < cfg.neg_threshold and self._triggered:
            if not self._temp_end:
                self._temp_end = pos
            if pos - self._temp_end > self._short_pause:
                self._prev_end = self._temp_end
            if pos - self._temp_end >= self._min_silence:
                if self._temp_end - self._start > self._min_speech:
                    out.append(self._cut(self._start, self._temp_end))
                self._prev_end = self._next_start = self._temp_end = 0
                self._triggered = False

    def _cut(self, start: int, end: int) -> SpeechSegment:
        lo = max(self._buf_start, start - self._pad)
        hi = min(self._buf_start + self._buf.size, end + self._pad)
        audio = self._buf[lo - self._buf_start : hi - self._buf_start].copy()
        return SpeechSegment(audio=audio, start_s=start / VAD_RATE, end_s=end / VAD_RATE)

    def _trim(self) -> None:
        # Keep only what a future cut can need: the open utterance (or the last pad) plus padding.
        keep_from = (self._start if self._triggered else self._analysed) - self._pad - WINDOW
        drop = min(keep_from, self._analysed) - self._buf_start
        if drop > 0:
            self._buf = self._buf[drop:]
            self._buf_start += drop
