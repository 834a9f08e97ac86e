"""Translate a WAV file through a Pipecat pipeline with ``GradiumS2SService``.

No transport: the WAV (any sample rate) is fed into the pipeline as ``InputAudioRawFrame``s
at real time, the translated speech is written to a WAV (48 kHz) per target language and
the transcript is printed as it arrives. Several target languages run side by side in a
``ParallelPipeline``, one service per language, each branch's audio tagged with its own
``transport_destination``.

Usage::

    pip install 'gradium-plugins[pipecat]'
    python examples/pipecat_translate_wav.py speech.wav --to fr            # -> speech.fr.wav
    python examples/pipecat_translate_wav.py speech.wav --from en --to fr,es
    python examples/pipecat_translate_wav.py --demo                         # synthetic input, echo engine

Where it translates:

- ``GRADIUM_API_KEY`` set: the Gradium cloud (``GRADIUM_S2S_URL`` overrides the endpoint).
- ``GRADIUM_S2S_URL`` set without a key: that endpoint (e.g. ``gradium-plugins serve``).
- Neither: an embedded local server is started in this process, with the ``offline`` engine
  (real speech translation, ``pip install 'gradium-plugins[local]'``) when it is installed,
  else the ``echo`` engine (returns each utterance unchanged, for trying the plumbing).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from loguru import logger
from pipecat.frames.frames import (
    EndFrame,
    Frame,
    InputAudioRawFrame,
    TranslationFrame,
    TTSAudioRawFrame,
)
from pipecat.pipeline.parallel_pipeline import ParallelPipeline
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.workers.runner import WorkerRunner

from gradium_plugins.audio import read_wav, write_wav
from gradium_plugins.config import ENV_API_KEY, ENV_URL
from gradium_plugins.local import LocalServer, serve
from gradium_plugins.pipecat import GradiumS2SService

FRAME_MS = 20


class TranslationSink(FrameProcessor):
    """Collects translated audio per output destination and prints the translated text."""

    def __init__(self, started_at: list[float]) -> None:
        super().__init__()
        self.audio: dict[str, list[bytes]] = {}
        self.texts: dict[str, list[str]] = {}
        self._started_at = started_at

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, TTSAudioRawFrame):
            self.audio.setdefault(frame.transport_destination or "", []).append(frame.audio)
        elif isinstance(frame, TranslationFrame):
            dest = frame.transport_destination or ""
            self.texts.setdefault(dest, []).append(frame.text)
            at = time.monotonic() - self._started_at[0] if self._started_at else 0.0
            print(f"[{at:6.2f} s] {frame.language}: {frame.text}", flush=True)
        await self.push_frame(frame, direction)


def demo_speech(rate: int = 16000) -> np.ndarray:
    """Three tone "utterances" separated by pauses (meaningful for the echo engine only)."""
    parts = [np.zeros(rate // 5, np.int16)]
    for freq, secs in ((330, 0.8), (440, 1.2), (550, 0.6)):
        t = np.arange(round(secs * rate)) / rate
        parts.append((np.sin(2 * np.pi * freq * t) * 0.3 * 32767).astype(np.int16))
        parts.append(np.zeros(rate // 2, np.int16))
    return np.concatenate(parts)


async def start_local_server(engine: str | None) -> tuple[LocalServer, str]:
    """Start the embedded server: the requested engine, else offline if installed, else echo."""
    if engine is not None:
        return await serve(engine=engine), engine
    try:
        return await serve(engine="offline"), "offline"
    except Exception as exc:  # noqa: BLE001 - extra or Apertium missing: fall back to echo
        print(f"offline engine unavailable ({str(exc).splitlines()[0]}); using the echo engine", flush=True)
        return await serve(engine="echo"), "echo"


async def translate(
    args: argparse.Namespace, samples: np.ndarray, rate: int, languages: list[str]
) -> tuple[TranslationSink, list[str]]:
    """Run the pipeline over ``samples``; return the sink (audio + texts) and pipeline errors."""
    api_key = os.environ.get(ENV_API_KEY)
    url = os.environ.get(ENV_URL)
    server: LocalServer | None = None
    if args.demo or (not api_key and not url):
        server, engine = await start_local_server("echo" if args.demo else args.engine)
        url, api_key = server.url, None
        print(f"No {ENV_API_KEY} / {ENV_URL}: using the embedded local server, engine '{engine}' ({url})")
    else:
        print(f"Using {'the Gradium cloud' if api_key and not url else url}")

    services = [
        GradiumS2SService(
            api_key=api_key,
            url=url,
            settings=GradiumS2SService.Settings(target_language=lang, source_language=args.source),
            transport_destination=lang,  # tags this language's frames for its own output
        )
        for lang in languages
    ]
    translators: FrameProcessor = (
        services[0] if len(services) == 1 else ParallelPipeline(*[[svc] for svc in services])
    )
    started_at: list[float] = []
    sink = TranslationSink(started_at)
    worker = PipelineWorker(
        Pipeline([translators, sink]),
        params=PipelineParams(audio_in_sample_rate=rate, audio_out_sample_rate=48000, enable_metrics=True),
        enable_rtvi=False,
        idle_timeout_secs=None,
    )
    errors: list[str] = []

    @worker.event_handler("on_pipeline_error")
    async def _on_error(_worker: PipelineWorker, frame: Any) -> None:
        errors.append(frame.error)

    @worker.event_handler("on_pipeline_started")
    async def _on_started(_worker: PipelineWorker, _frame: Frame) -> None:
        async def feed() -> None:
            step = rate * FRAME_MS // 1000
            started_at.append(time.monotonic())
            for i in range(0, samples.size, step):
                chunk = samples[i : i + step].astype("<i2").tobytes()
                await worker.queue_frame(InputAudioRawFrame(audio=chunk, sample_rate=rate, num_channels=1))
                if args.speed > 0:  # real time (the cloud drops sentences fed much faster)
                    delay = started_at[0] + (i + step) / rate / args.speed - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
            # EndFrame: the services flush, wait for every translation, then let it through.
            await worker.queue_frame(EndFrame())

        worker.create_task(feed(), "feed")

    runner = WorkerRunner(handle_sigint=True)
    await runner.add_workers(worker)
    try:
        await runner.run()
    finally:
        if server is not None:
            await server.close()
    return sink, errors


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", nargs="?", help="WAV file to translate (any rate, PCM)")
    parser.add_argument("--to", default="fr", help="target language(s), comma separated (en, fr, de, es, pt)")
    parser.add_argument("--from", dest="source", default=None, help="language spoken in the input, if known")
    parser.add_argument("--output-dir", help="where to write <input>.<lang>.wav (default: next to the input)")
    parser.add_argument("--speed", type=float, default=1.0, help="feed speed, 1.0 = real time, 0 = no pacing")
    parser.add_argument("--engine", choices=["offline", "echo"], help="embedded engine when no key / URL")
    parser.add_argument("--demo", action="store_true", help="synthetic input on the embedded echo engine")
    parser.add_argument("-v", "--verbose", action="store_true", help="show Pipecat's debug log")
    args = parser.parse_args()
    logger.remove()
    logger.add(sys.stderr, level="DEBUG" if args.verbose else "WARNING")

    if args.demo:
        samples, rate = demo_speech(), 16000
        in_path = Path("demo.wav")
    elif args.input is None:
        parser.error("give a WAV file (or --demo)")
    else:
        in_path = Path(args.input)
        samples, rate = read_wav(in_path)
    languages = [lang.strip() for lang in args.to.split(",") if lang.strip()]
    seconds = samples.size / rate
    print(f"Translating {in_path.name} ({seconds:.1f} s at {rate} Hz) into {', '.join(languages)}")

    sink, errors = asyncio.run(translate(args, samples, rate, languages))

    out_dir = Path(args.output_dir or ("out" if args.demo else in_path.parent))
    out_dir.mkdir(parents=True, exist_ok=True)
    for lang in languages:
        pcm = b"".join(sink.audio.get(lang, []))
        out = out_dir / f"{in_path.stem}.{lang}.wav"
        write_wav(out, np.frombuffer(pcm, dtype="<i2"), 48000)
        n = len(sink.texts.get(lang, []))
        print(f"wrote {out} ({len(pcm) / 2 / 48000:.2f} s of {lang} speech, {n} utterances)")
    for err in errors:
        print(f"error: {err}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
