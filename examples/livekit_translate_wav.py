"""Translate a WAV file with LiveKit's ``TranslationSession`` and the Gradium ``TranslationModel``.

No LiveKit server is needed: the session is driven by in-memory audio IO. The WAV (any sample
rate, mono or stereo) is played into the session at real time; the translation is written to
``out/<input>.<lang>.wav`` (48 kHz, each utterance placed at the moment it was spoken, like an
interpreter's track) and its captions to ``out/<input>.<lang>.srt``. Several target languages
run side by side, one session each.

Usage::

    pip install 'gradium-plugins[livekit]'
    python examples/livekit_translate_wav.py                       # examples/audio/meeting_en.wav -> fr
    python examples/livekit_translate_wav.py speech.wav --from en --to fr,es
    python examples/livekit_translate_wav.py speech.wav --to de --speed 0   # no pacing (local only)

Where it translates:

- ``GRADIUM_API_KEY`` set: the Gradium cloud (``GRADIUM_S2S_URL`` overrides the endpoint).
- ``GRADIUM_S2S_URL`` set without a key: that endpoint (e.g. ``gradium-plugins serve``).
- Neither: an embedded local server is started in this process, with the ``offline`` engine
  (real speech translation, ``pip install 'gradium-plugins[local]'``) when it is installed,
  else the ``echo`` engine (returns each utterance unchanged, for trying the plumbing). The
  engine used is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from livekit.agents.beta.translation import TranslationSession
from livekit.agents.voice import io

from gradium_plugins.audio import read_wav, write_wav
from gradium_plugins.config import ENV_API_KEY, ENV_URL
from gradium_plugins.livekit import TranslationMetrics, TranslationModel, drain_and_close
from gradium_plugins.local import LocalServer, serve
from livekit import rtc

FRAME_MS = 20
OUTPUT_RATE = 48000
DEFAULT_INPUT = Path(__file__).parent / "audio" / "meeting_en.wav"


class WavInput(io.AudioInput):
    """Plays samples into the session in 20 ms frames at ``speed`` x real time, then ends."""

    def __init__(self, samples: np.ndarray, rate: int, speed: float) -> None:
        super().__init__(label="wav-input")
        self._samples, self._rate, self._speed = samples, rate, speed
        self._pos = 0
        self.started_at: float | None = None
        self.done = asyncio.Event()

    async def __anext__(self) -> rtc.AudioFrame:
        if self.started_at is None:
            self.started_at = time.monotonic()
        step = self._rate * FRAME_MS // 1000
        if self._pos >= self._samples.size:
            self.done.set()
            raise StopAsyncIteration
        if self._speed > 0:
            delay = self.started_at + self._pos / self._rate / self._speed - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        chunk = self._samples[self._pos : self._pos + step]
        self._pos += step
        return rtc.AudioFrame(chunk.astype("<i2").tobytes(), self._rate, 1, chunk.size)


class WavOutput(io.AudioOutput):
    """Collects the translation; each utterance starts where it arrived on the session's clock."""

    def __init__(self, clock: WavInput, speed: float) -> None:
        super().__init__(
            label="wav-output", capabilities=io.AudioOutputCapabilities(pause=False), sample_rate=OUTPUT_RATE
        )
        self._clock, self._speed = clock, speed
        self._parts: list[np.ndarray] = []
        self._length = 0  # samples written so far
        self._segment_start: float | None = None
        self.segments: list[tuple[float, float]] = []  # (start_s, end_s) in the output file

    async def capture_frame(self, frame: rtc.AudioFrame) -> None:
        await super().capture_frame(frame)
        if self._segment_start is None:
            # Place the utterance at the time it arrived (scaled back to real time), never earlier
            # than the end of the previous one.
            now = time.monotonic() - (self._clock.started_at or time.monotonic())
            at = round(now * (self._speed or 1.0) * OUTPUT_RATE)
            if at > self._length:
                self._parts.append(np.zeros(at - self._length, np.int16))
                self._length = at
            self._segment_start = self._length / OUTPUT_RATE
            self.on_playback_started(created_at=time.time())
        samples = np.frombuffer(frame.data, dtype=np.int16)
        self._parts.append(samples.copy())
        self._length += samples.size

    def flush(self) -> None:
        super().flush()
        if self._segment_start is not None:
            end = self._length / OUTPUT_RATE
            self.segments.append((self._segment_start, end))
            self.on_playback_finished(playback_position=end - self._segment_start, interrupted=False)
            self._segment_start = None

    def clear_buffer(self) -> None:
        pass

    @property
    def samples(self) -> np.ndarray:
        return np.concatenate(self._parts) if self._parts else np.zeros(0, np.int16)


class CaptionOutput(io.TextOutput):
    """Prints each translated utterance and keeps it for the .srt file."""

    def __init__(self, language: str, clock: WavInput) -> None:
        super().__init__(label="captions", next_in_chain=None)
        self._language, self._clock = language, clock
        self._parts: list[str] = []
        self.texts: list[str] = []

    async def capture_text(self, text: str) -> None:
        self._parts.append(text)

    def flush(self) -> None:
        text = "".join(self._parts).strip()
        self._parts = []
        if text:
            self.texts.append(text)
            at = time.monotonic() - (self._clock.started_at or time.monotonic())
            print(f"[{at:6.2f} s] {self._language}: {text}", flush=True)


def srt(segments: list[tuple[float, float]], texts: list[str]) -> str:
    def stamp(s: float) -> str:
        ms = round(s * 1000)
        return f"{ms // 3600000:02}:{ms // 60000 % 60:02}:{ms // 1000 % 60:02},{ms % 1000:03}"

    blocks = [
        f"{i}\n{stamp(start)} --> {stamp(end)}\n{text}\n"
        for i, ((start, end), text) in enumerate(zip(segments, texts, strict=False), start=1)
    ]
    return "\n".join(blocks)


async def start_local_server(engine: str | None) -> tuple[LocalServer, str]:
    """Start the embedded server: the requested engine, else offline if installed, else echo."""
    if engine is not None:
        return await serve(engine=engine), engine
    try:
        return await serve(engine="offline"), "offline"
    except Exception as exc:  # noqa: BLE001 - extra or system packages missing: fall back to echo
        print(f"offline engine unavailable ({str(exc).splitlines()[0]}); using the echo engine", flush=True)
        return await serve(engine="echo"), "echo"


async def translate_one(
    language: str, samples: np.ndarray, rate: int, args: argparse.Namespace, url: str | None, key: str | None
) -> tuple[WavOutput, CaptionOutput, list[str]]:
    options: dict[str, Any] = {}
    if url:
        options["url"] = url
    if key:
        options["api_key"] = key
    if args.source:
        options["source_language"] = args.source
    model = TranslationModel(target_language=language, **options)
    session: TranslationSession[None] = TranslationSession(model=model)
    source = WavInput(samples, rate, args.speed)
    audio, captions = WavOutput(source, args.speed), CaptionOutput(language, source)
    session.input.audio, session.output.audio, session.output.transcription = source, audio, captions
    errors: list[str] = []
    session.on("error", lambda ev: errors.append(f"{language}: {ev.error.error}"))
    latencies: list[float] = []

    def on_metrics(m: TranslationMetrics) -> None:
        if m.ttfa >= 0:
            latencies.append(m.ttfa)

    model.on("metrics_collected", on_metrics)
    closed = asyncio.Event()
    session.on("close", lambda _ev: closed.set())
    await session.start()
    # Wait for the end of the input (or a fatal error), then drain: the last sentence is kept.
    done = asyncio.ensure_future(source.done.wait())
    await asyncio.wait([done, asyncio.ensure_future(closed.wait())], return_when=asyncio.FIRST_COMPLETED)
    done.cancel()
    await drain_and_close(session)
    if latencies:
        print(f"{language}: time to first translated audio, median {np.median(latencies):.2f} s", flush=True)
    return audio, captions, errors


async def run(args: argparse.Namespace, samples: np.ndarray, rate: int, languages: list[str]) -> int:
    key, url = os.environ.get(ENV_API_KEY), os.environ.get(ENV_URL)
    server: LocalServer | None = None
    if not key and not url:
        server, engine = await start_local_server(args.engine)
        url = server.url
        print(f"No {ENV_API_KEY} / {ENV_URL}: using the embedded local server, engine '{engine}' ({url})")
    else:
        print(f"Using {'the Gradium cloud' if key and not url else url}")
    try:
        results = await asyncio.gather(
            *(translate_one(lang, samples, rate, args, url, key) for lang in languages)
        )
    finally:
        if server is not None:
            await server.close()

    out_dir = Path(args.output_dir or "out")
    out_dir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once, at the end
    failed = False
    for lang, (audio, captions, errors) in zip(languages, results, strict=True):
        wav = out_dir / f"{args.input.stem}.{lang}.wav"
        write_wav(wav, audio.samples, OUTPUT_RATE)
        (out_dir / f"{args.input.stem}.{lang}.srt").write_text(srt(audio.segments, captions.texts))
        seconds = audio.samples.size / OUTPUT_RATE
        print(f"wrote {wav} and .srt ({len(audio.segments)} utterances, {seconds:.1f} s)")
        for err in errors:
            failed = True
            print(f"error: {err}", file=sys.stderr)
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", nargs="?", type=Path, default=DEFAULT_INPUT, help="WAV file (PCM, any rate)")
    parser.add_argument("--to", default="fr", help="target language(s), comma separated (en, fr, de, es, pt)")
    parser.add_argument("--from", dest="source", default=None, help="language spoken in the input, if known")
    parser.add_argument("--output-dir", help="where to write the results (default: ./out)")
    parser.add_argument("--speed", type=float, default=1.0, help="feed speed, 1.0 = real time, 0 = no pacing")
    parser.add_argument("--engine", choices=["offline", "echo"], help="embedded engine when no key / URL")
    parser.add_argument("-v", "--verbose", action="store_true", help="show debug logs")
    args = parser.parse_args()
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING)
    if args.input == DEFAULT_INPUT and args.source is None:
        args.source = "en"
    samples, rate = read_wav(args.input)
    languages = [lang.strip() for lang in args.to.split(",") if lang.strip()]
    seconds = samples.size / rate
    print(f"Translating {args.input.name} ({seconds:.1f} s at {rate} Hz) into {', '.join(languages)}")
    return asyncio.run(run(args, samples, rate, languages))


if __name__ == "__main__":
    sys.exit(main())
