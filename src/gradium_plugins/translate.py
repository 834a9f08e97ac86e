"""High-level helpers: translate an audio stream or a WAV file with one call."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from .audio import AudioInput, iter_chunks, read_wav, write_wav
from .config import S2SConfig
from .errors import InputFileError
from .events import Event, Reconnected, SessionRenewed
from .formats import CHUNK_SECONDS
from .protocol import AudioOut, TextOut
from .session import S2SSession

AudioChunks = Iterable[AudioInput] | AsyncIterable[AudioInput]


async def translate_stream(
    audio_chunks: AudioChunks,
    config: S2SConfig,
    *,
    sample_rate: int | None = None,
    channels: int = 1,
    http_session: aiohttp.ClientSession | None = None,
) -> AsyncIterator[Event]:
    """Translate an (async) iterable of audio chunks; yield events until ``EndOfStream``.

    Input is paced at ``config.realtime_factor`` times real time (``None``: as fast as
    possible, only sensible against the local server).

    Args:
        audio_chunks: Chunks accepted by :meth:`S2SSession.send_audio`, any size.
        config: Session settings.
        sample_rate: Rate of the chunks (default: the input format's rate).
        channels: Channel count of interleaved chunks.
        http_session: Optional aiohttp session to reuse.

    Raises:
        GradiumError: The translation failed (typed subclasses).
    """
    async with S2SSession(config, http_session=http_session) as session:
        rate = sample_rate or session.input_sample_rate
        feeder = asyncio.ensure_future(_feed(session, audio_chunks, rate, channels, config.realtime_factor))
        try:
            async for event in session:
                yield event
            if feeder.done() and not feeder.cancelled() and feeder.exception() is not None:
                raise feeder.exception()  # type: ignore[misc]
        finally:
            if not feeder.done():
                feeder.cancel()
            with contextlib.suppress(BaseException):
                await feeder


def _frames(chunk: AudioInput, channels: int) -> int:
    if isinstance(chunk, bytes | bytearray | memoryview):
        return len(chunk) // (2 * channels)
    arr = np.asarray(chunk)
    return int(arr.shape[0]) if arr.ndim == 2 else int(arr.shape[0]) // channels


async def _feed(
    session: S2SSession, chunks: AudioChunks, rate: int, channels: int, factor: float | None
) -> None:
    t0 = time.monotonic()
    sent_s = 0.0

    async def one(chunk: AudioInput) -> None:
        nonlocal sent_s
        await session.send_audio(chunk, sample_rate=rate, channels=channels)
        sent_s += _frames(chunk, channels) / rate
        if factor is not None:
            ahead = sent_s / factor - (time.monotonic() - t0)
            if ahead > 0:
                await asyncio.sleep(ahead)

    if isinstance(chunks, AsyncIterable):
        async for c in chunks:
            await one(c)
    else:
        for c in chunks:
            await one(c)
    await session.end_input()


@dataclass
class TranslationResult:
    """What :func:`translate_file` produced.

    Attributes:
        transcript: The translated text segments, in order.
        audio_seconds: Duration of the translated audio written.
        sample_rate: Sample rate of the output file.
        reconnects: Number of reconnections during the run.
        renewals: Number of session renewals during the run.
    """

    transcript: list[str] = field(default_factory=list)
    audio_seconds: float = 0.0
    sample_rate: int = 0
    reconnects: int = 0
    renewals: int = 0

    @property
    def text(self) -> str:
        """The translated transcript as one string."""
        return " ".join(t.strip() for t in self.transcript if t.strip())


async def translate_file(
    in_path: str | Path,
    out_path: str | Path,
    config: S2SConfig,
    *,
    progress: Callable[[float, float], None] | None = None,
    on_text: Callable[[str], None] | None = None,
) -> TranslationResult:
    """Translate a WAV file (any rate, any channel count, integer PCM) into a WAV file.

    The output is mono 16-bit at the output format's rate; translated utterances are
    concatenated in order.

    Args:
        in_path: Input WAV path.
        out_path: Output WAV path (written when the translation completes).
        config: Session settings (``realtime_factor`` paces the input).
        progress: Called with ``(seconds_sent, total_seconds)`` as input is sent.
        on_text: Called with each translated text segment as it arrives.

    Returns:
        The transcript and statistics.

    Raises:
        InputFileError: ``in_path`` is missing, unreadable, empty or holds no samples.
        AudioFormatError: ``in_path`` is not an integer PCM WAV file.
        GradiumError: The translation failed (typed subclasses).
    """
    samples, rate = read_wav(Path(in_path))
    if samples.size == 0:
        raise InputFileError(f"input file {str(in_path)!r} holds no audio (a WAV header with 0 samples)")
    total = samples.size / rate
    step = max(1, round(rate * CHUNK_SECONDS))

    def chunks() -> Iterable[Any]:
        sent = 0
        for chunk in iter_chunks(samples, step):
            yield chunk
            sent += chunk.size
            if progress is not None:
                progress(sent / rate, total)

    result = TranslationResult()
    out: list[bytes] = []
    async for event in translate_stream(chunks(), config, sample_rate=rate):
        if isinstance(event, AudioOut):
            out.append(event.pcm)
            result.sample_rate = event.sample_rate
        elif isinstance(event, TextOut):
            result.transcript.append(event.text)
            if on_text is not None:
                on_text(event.text)
        elif isinstance(event, Reconnected):
            result.reconnects += 1
        elif isinstance(event, SessionRenewed):
            result.renewals += 1
    pcm = np.frombuffer(b"".join(out), dtype="<i2")
    if not result.sample_rate:
        from .formats import get_format

        result.sample_rate = get_format(config.output_format).output_rate
    result.audio_seconds = pcm.size / result.sample_rate
    write_wav(Path(out_path), pcm, result.sample_rate)
    return result
