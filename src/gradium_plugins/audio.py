"""PCM conversion, streaming resampling, 80 ms chunking, G.711 codecs, WAV files and pause detection.

Everything here is pure computation on numpy arrays: no I/O except the WAV file helpers.
Mono int16 (``np.int16``, 1-D) is the common currency between the helpers.
"""

from __future__ import annotations

import io
import os
import struct
import sys
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import soxr

from .errors import AudioFormatError, InputFileError
from .formats import AudioFormat

Int16Array = npt.NDArray[np.int16]
AudioInput = bytes | bytearray | memoryview | npt.NDArray[Any]
_LITTLE_ENDIAN = sys.byteorder == "little"


def to_int16_mono(data: AudioInput, channels: int = 1) -> Int16Array:
    """Convert audio to mono int16.

    Args:
        data: ``bytes`` of s16le samples (interleaved when ``channels`` > 1), or a numpy
            array of int16 or float (-1.0..1.0; clipped, never wrapped). A 2-D array is
            ``(frames, channels)``.
        channels: Channel count of interleaved ``bytes`` or a 1-D interleaved array.

    Returns:
        A 1-D int16 array; channels are averaged.

    Raises:
        AudioFormatError: Odd byte count, NaN/inf samples, unsupported dtype or shape.
    """
    if type(data) is bytes and channels == 1 and _LITTLE_ENDIAN and not len(data) % 2:
        # Hot path (framework frames are mono s16le bytes): what the general path returns, directly.
        return np.frombuffer(data, dtype=np.int16)
    if channels < 1:
        raise AudioFormatError(f"channels={channels} must be >= 1")
    if isinstance(data, bytes | bytearray | memoryview):
        if len(data) % (2 * channels):
            raise AudioFormatError(
                f"{len(data)} bytes is not a whole number of s16le frames of {channels} channel(s)"
            )
        arr: npt.NDArray[Any] = np.frombuffer(data, dtype="<i2")
    elif isinstance(data, np.ndarray):
        arr = data
    else:
        raise AudioFormatError(f"audio must be bytes or a numpy array, not {type(data).__name__}")
    if arr.ndim == 2:
        channels = arr.shape[1]
        arr = arr.reshape(-1)
    elif arr.ndim != 1:
        raise AudioFormatError(f"audio array must be 1-D or (frames, channels), got shape {arr.shape}")
    if arr.dtype.kind == "f":
        if arr.size and not np.isfinite(arr).all():
            raise AudioFormatError("float audio contains NaN or infinity")
        scaled = np.clip(arr.astype(np.float32, copy=False) * 32768.0, -32768.0, 32767.0)
        arr = np.round(scaled).astype(np.int16)
    elif arr.dtype == np.int16:
        pass
    elif arr.dtype.kind in "iu":
        raise AudioFormatError(f"integer audio must be int16, got {arr.dtype}; convert it first")
    else:
        raise AudioFormatError(f"unsupported audio dtype {arr.dtype}; use int16 or float32")
    if channels > 1:
        if arr.size % channels:
            raise AudioFormatError(f"{arr.size} samples is not a whole number of {channels}-channel frames")
        arr = arr.reshape(-1, channels).mean(axis=1, dtype=np.float32).round().astype(np.int16)
    return np.ascontiguousarray(arr, dtype=np.int16)


def silence(seconds: float, sample_rate: int) -> Int16Array:
    """Return ``seconds`` of int16 silence at ``sample_rate``."""
    return np.zeros(round(seconds * sample_rate), dtype=np.int16)


#: Highest sample rate accepted from callers (the highest common studio rate).
MAX_SAMPLE_RATE = 384_000


def check_sample_rate(value: object, field: str = "sample_rate") -> int:
    """Validate a sample rate given by a caller and return it as an ``int``.

    Integral floats (``16000.0``) and numpy integers are accepted; strings, bools,
    fractional floats, values <= 0 and values above :data:`MAX_SAMPLE_RATE` are not.

    Args:
        value: The rate to check.
        field: Name of the argument or field, used in the error message.

    Raises:
        AudioFormatError: The value is not a usable sample rate (the message names ``field``).
    """
    wrong = f"{field}={value!r} must be an integer number of Hz in 1..{MAX_SAMPLE_RATE}"
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | float | np.integer | np.floating):
        raise AudioFormatError(f"{wrong}, not {type(value).__name__}")
    if isinstance(value, float | np.floating) and not float(value).is_integer():
        raise AudioFormatError(wrong)
    rate = int(value)
    if not 0 < rate <= MAX_SAMPLE_RATE:
        raise AudioFormatError(wrong)
    return rate


def duration_s(samples: int, sample_rate: int) -> float:
    """Seconds spanned by ``samples`` at ``sample_rate``."""
    return samples / sample_rate


class StreamResampler:
    """Streaming int16 resampler that keeps its filter state across chunks.

    Call :meth:`flush` once at the end of input to get the filter's tail; without it the
    last few milliseconds are lost.
    """

    def __init__(self, in_rate: int, out_rate: int, quality: str = "HQ") -> None:
        if in_rate <= 0 or out_rate <= 0:
            raise AudioFormatError(f"sample rates must be > 0, got {in_rate} -> {out_rate}")
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._stream: Any = (
            None
            if in_rate == out_rate
            else soxr.ResampleStream(in_rate, out_rate, 1, dtype="int16", quality=quality)
        )

    def process(self, samples: Int16Array) -> Int16Array:
        """Resample one chunk; may return fewer samples than expected while the filter fills."""
        if self._stream is None:
            return samples
        out: Int16Array = self._stream.resample_chunk(samples, last=False)
        return out

    def flush(self) -> Int16Array:
        """Return the remaining tail and reset for a new stream."""
        if self._stream is None:
            return np.zeros(0, dtype=np.int16)
        out: Int16Array = self._stream.resample_chunk(np.zeros(0, dtype=np.int16), last=True)
        self._stream.clear()
        return out


def resample(samples: Int16Array, in_rate: int, out_rate: int) -> Int16Array:
    """Resample a whole int16 signal at once."""
    if in_rate == out_rate:
        return samples
    out: Int16Array = soxr.resample(samples, in_rate, out_rate, quality="HQ")
    return out


class Chunker:
    """Cuts a stream of samples into chunks of exactly ``chunk_samples``.

    Samples are copied into chunk buffers of its own (never views of the caller's arrays), and
    small pushes (e.g. 20 ms frames into 80 ms chunks) only fill the current buffer.
    """

    def __init__(self, chunk_samples: int) -> None:
        if chunk_samples <= 0:
            raise AudioFormatError("chunk_samples must be > 0")
        self.chunk_samples = chunk_samples
        self._buf: Int16Array = np.empty(chunk_samples, dtype=np.int16)
        self._fill = 0

    @property
    def pending(self) -> int:
        """Samples held back until a chunk is complete."""
        return self._fill

    def push(self, samples: Int16Array) -> list[Int16Array]:
        """Add samples; return every complete chunk."""
        size, fill, cs = samples.size, self._fill, self.chunk_samples
        if fill + size < cs:
            self._buf[fill : fill + size] = samples
            self._fill = fill + size
            return []
        out: list[Int16Array] = []
        pos = 0
        if fill:
            pos = cs - fill
            self._buf[fill:] = samples[:pos]
            out.append(self._buf)
            self._buf = np.empty(cs, dtype=np.int16)
        whole = (size - pos) // cs * cs
        if whole:
            out.extend(samples[pos : pos + whole].astype(np.int16).reshape(-1, cs))  # one copy
            pos += whole
        self._fill = size - pos
        self._buf[: self._fill] = samples[pos:]
        return out

    def flush(self) -> Int16Array:
        """Return the incomplete remainder (possibly empty) and reset."""
        rest = self._buf[: self._fill].copy()
        self._fill = 0
        return rest


# --- G.711 -------------------------------------------------------------------------------


def _ulaw_decode_table() -> Int16Array:
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    sign = u & 0x80
    exponent = (u >> 4) & 0x07
    mantissa = u & 0x0F
    magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
    return np.where(sign != 0, -magnitude, magnitude).astype(np.int16)


def _alaw_decode_table() -> Int16Array:
    a = np.arange(256, dtype=np.int32) ^ 0x55
    sign = a & 0x80
    exponent = (a >> 4) & 0x07
    mantissa = a & 0x0F
    magnitude = np.where(
        exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0)
    )
    return np.where(sign != 0, magnitude, -magnitude).astype(np.int16)


def _encode_table(decode: Int16Array) -> npt.NDArray[np.uint8]:
    # For every int16 value pick the code whose decoded value is nearest: exact inverse of the decoder.
    order = np.argsort(decode, kind="stable")
    values = decode[order].astype(np.int32)
    x = np.arange(-32768, 32768, dtype=np.int32)
    idx = np.clip(np.searchsorted(values, x), 1, len(values) - 1)
    left, right = values[idx - 1], values[idx]
    pick = np.where(np.abs(x - left) <= np.abs(right - x), idx - 1, idx)
    return order[pick].astype(np.uint8)


_ULAW_DEC = _ulaw_decode_table()
_ALAW_DEC = _alaw_decode_table()
_ULAW_ENC = _encode_table(_ULAW_DEC)
_ALAW_ENC = _encode_table(_ALAW_DEC)


def ulaw_encode(samples: Int16Array) -> bytes:
    """Encode int16 samples as G.711 µ-law bytes."""
    return _ULAW_ENC[samples.astype(np.int32) + 32768].tobytes()


def ulaw_decode(data: bytes) -> Int16Array:
    """Decode G.711 µ-law bytes to int16 samples."""
    return _ULAW_DEC[np.frombuffer(data, dtype=np.uint8)]


def alaw_encode(samples: Int16Array) -> bytes:
    """Encode int16 samples as G.711 A-law bytes."""
    return _ALAW_ENC[samples.astype(np.int32) + 32768].tobytes()


def alaw_decode(data: bytes) -> Int16Array:
    """Decode G.711 A-law bytes to int16 samples."""
    return _ALAW_DEC[np.frombuffer(data, dtype=np.uint8)]


# --- wire encoding -----------------------------------------------------------------------


def wav_header(
    sample_rate: int, channels: int = 1, sample_width: int = 2, data_bytes: int = 0xFFFFFFFF
) -> bytes:
    """Return a 44-byte PCM WAV header; the default sizes mark an open-ended stream."""
    riff = 0xFFFFFFFF if data_bytes == 0xFFFFFFFF else 36 + data_bytes
    block = channels * sample_width
    return (
        b"RIFF"
        + struct.pack("<I", riff)
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, channels, sample_rate, sample_rate * block, block, sample_width * 8)
        + b"data"
        + struct.pack("<I", data_bytes)
    )


def encode_samples(samples: Int16Array, fmt: AudioFormat) -> bytes:
    """Encode mono int16 samples at the format's rate into wire bytes (WAV: raw PCM after the header)."""
    if fmt.codec == "ulaw":
        return ulaw_encode(samples)
    if fmt.codec == "alaw":
        return alaw_encode(samples)
    return samples.astype("<i2", copy=False).tobytes()


class WireDecoder:
    """Decodes audio payloads of one stream in a wire format into mono int16 samples.

    WAV streams are parsed from their RIFF header (any PCM width, any channel count); the
    sample rate found in the header replaces the format's nominal rate.
    """

    def __init__(self, fmt: AudioFormat, direction: str = "output") -> None:
        self.fmt = fmt
        self.sample_rate = fmt.rate(direction)
        self._wav_width = 2
        self._wav_channels = 1
        self._partial = b""

    def decode(self, data: bytes) -> Int16Array:
        """Decode one payload."""
        codec = self.fmt.codec
        if codec == "ulaw":
            return ulaw_decode(data)
        if codec == "alaw":
            return alaw_decode(data)
        if codec == "wav" and data[:4] == b"RIFF":
            data = self._parse_wav_header(data)
        width = self._wav_width if codec == "wav" else 2
        frame = width * (self._wav_channels if codec == "wav" else 1)
        if self._partial:
            data = self._partial + data
        cut = len(data) - len(data) % frame
        data, self._partial = data[:cut], data[cut:]
        if codec != "wav" or (width == 2 and self._wav_channels == 1):
            return np.frombuffer(data, dtype="<i2").copy()
        return _pcm_width_to_int16(data, width, self._wav_channels)

    def _parse_wav_header(self, data: bytes) -> bytes:
        pos = 12
        while pos + 8 <= len(data):
            cid, size = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
            if cid == b"fmt ":
                tag, ch, rate, _, _, bits = struct.unpack("<HHIIHH", data[pos + 8 : pos + 24])
                if tag not in (1, 0xFFFE):
                    raise AudioFormatError(f"WAV stream uses format tag {tag}; only integer PCM is supported")
                self._wav_channels, self.sample_rate, self._wav_width = ch, rate, bits // 8
            elif cid == b"data":
                return data[pos + 8 :]
            pos += 8 + size + (size & 1)
        raise AudioFormatError("WAV stream header has no data chunk in its first message")


def _pcm_width_to_int16(data: bytes, width: int, channels: int) -> Int16Array:
    if width == 1:
        arr = (np.frombuffer(data, dtype=np.uint8).astype(np.int16) - 128) << 8
    elif width == 2:
        arr = np.frombuffer(data, dtype="<i2")
    elif width == 3:
        b = np.frombuffer(data, dtype=np.uint8).reshape(-1, 3)
        arr = (b[:, 1].astype(np.int32) | (b[:, 2].astype(np.int8).astype(np.int32) << 8)).astype(np.int16)
    elif width == 4:
        arr = (np.frombuffer(data, dtype="<i4") >> 16).astype(np.int16)
    else:
        raise AudioFormatError(f"unsupported PCM sample width {width} bytes")
    return to_int16_mono(np.ascontiguousarray(arr, dtype=np.int16), channels=channels)


# --- WAV files ---------------------------------------------------------------------------


def read_wav(path: str | Path | io.BytesIO) -> tuple[Int16Array, int]:
    """Read a PCM WAV file (8/16/24/32-bit integer, any channel count) as mono int16.

    Returns:
        ``(samples, sample_rate)``.

    Raises:
        InputFileError: The file is missing, unreadable (a directory, no permission) or empty.
        AudioFormatError: Not a WAV file, or a non-PCM encoding (e.g. float WAV).
    """
    try:
        if not isinstance(path, io.BytesIO) and os.path.getsize(path) == 0:
            raise InputFileError(f"input file {str(path)!r} is empty (0 bytes); expected a PCM WAV file")
        with wave.open(str(path) if isinstance(path, Path) else path, "rb") as w:
            channels, width, rate = w.getnchannels(), w.getsampwidth(), w.getframerate()
            raw = w.readframes(w.getnframes())
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise InputFileError(f"cannot read input file {str(path)!r}: {why}") from None
    except (wave.Error, EOFError) as exc:
        why = str(exc) or "truncated header"
        raise AudioFormatError(f"cannot read WAV {path}: {why} (integer PCM WAV is supported)") from None
    return _pcm_width_to_int16(raw, width, channels), rate


def write_wav(path: str | Path | io.BytesIO, samples: Int16Array, sample_rate: int) -> None:
    """Write mono int16 samples as a 16-bit PCM WAV file."""
    with wave.open(str(path) if isinstance(path, Path) else path, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(samples.astype("<i2", copy=False).tobytes())


# --- pause detection ---------------------------------------------------------------------


class PauseDetector:
    """Energy-based speech/pause segmentation over a stream, in 10 ms frames.

    A pause is ``min_pause_s`` of frames whose RMS is below ``threshold_dbfs``. The
    detector reports positions as absolute sample indices of the stream it was fed.
    """

    def __init__(
        self,
        sample_rate: int,
        threshold_dbfs: float = -45.0,
        min_pause_s: float = 0.3,
        min_speech_s: float = 0.06,
    ) -> None:
        self.sample_rate = sample_rate
        self.frame = max(1, sample_rate // 100)
        self.threshold = 32768.0 * 10 ** (threshold_dbfs / 20)
        self.pause_frames = max(1, round(min_pause_s * 100))
        self.speech_frames = max(1, round(min_speech_s * 100))
        self._pending = np.zeros(0, dtype=np.int16)
        self._pos = 0  # samples consumed into whole frames
        self._in_speech = False
        self._silent_run = 0
        self._voiced_run = 0
        self._speech_start = 0
        self._last_voiced_end = 0

    @property
    def in_speech(self) -> bool:
        """True while an utterance is open (speech seen and no pause since)."""
        return self._in_speech

    @property
    def position(self) -> int:
        """Samples analysed so far."""
        return self._pos

    def push(self, samples: Int16Array) -> list[tuple[str, int]]:
        """Analyse samples; return events ``("start", index)`` and ``("end", index)``.

        ``end`` is reported once the pause is long enough, at the sample where speech stopped.
        """
        if self._pending.size:
            samples = np.concatenate((self._pending, samples))
        n = samples.size // self.frame
        self._pending = samples[n * self.frame :]
        if n == 0:
            return []
        frames = samples[: n * self.frame].astype(np.float32).reshape(n, self.frame)
        frames *= frames
        # What np.mean computes (the same float32 pairwise sum, then / count), without its
        # Python-level overhead: this runs on every block of input.
        rms = np.sqrt(np.add.reduce(frames, axis=1) / self.frame)
        voiced = rms >= self.threshold
        # Fast paths (most blocks): silence outside speech, or speech inside speech, changes no state.
        if not self._in_speech and not voiced.any():
            self._voiced_run = 0
            self._silent_run += n
            self._pos += n * self.frame
            return []
        if self._in_speech and voiced.all():
            self._silent_run = 0
            self._voiced_run += n
            self._pos += n * self.frame
            self._last_voiced_end = self._pos
            return []
        events: list[tuple[str, int]] = []
        for i, v in enumerate(voiced.tolist()):
            start = self._pos + i * self.frame
            if v:
                self._silent_run = 0
                self._voiced_run += 1
                self._last_voiced_end = start + self.frame
                if not self._in_speech and self._voiced_run >= self.speech_frames:
                    self._in_speech = True
                    self._speech_start = start + self.frame - self._voiced_run * self.frame
                    events.append(("start", self._speech_start))
            else:
                self._voiced_run = 0
                self._silent_run += 1
                if self._in_speech and self._silent_run >= self.pause_frames:
                    self._in_speech = False
                    events.append(("end", self._last_voiced_end))
        self._pos += n * self.frame
        return events

    def flush(self) -> list[tuple[str, int]]:
        """Close an open utterance at the end of the stream."""
        if self._in_speech:
            self._in_speech = False
            return [("end", self._last_voiced_end)]
        return []


def iter_chunks(samples: Int16Array, chunk_samples: int) -> Iterator[Int16Array]:
    """Yield consecutive slices of ``chunk_samples`` (the last may be shorter)."""
    for i in range(0, samples.size, chunk_samples):
        yield samples[i : i + chunk_samples]

