"""Command line: ``gradium-plugins translate | serve | voices``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, TextIO

from .config import ENV_API_KEY, ENV_URL, S2SConfig, is_loopback_url
from .errors import GradiumError
from .voices import FLAGSHIP_VOICES, LANGUAGES

#: What ``gradium-plugins bench`` prints: the benchmark compares against the official SDK, so it
#: lives in the repository's ``benchmarks/``, not in the installed package.
BENCH_HELP = """\
The client-overhead benchmark is not part of the installed package; run it from a checkout:

    git clone <the gradium-plugins repository> && cd gradium-plugins
    pip install -e '.[dev,bench]'            # bench: the official SDK and matplotlib
    python benchmarks/client_overhead.py     # N = 1,10,50,100, 8 s streams; --help for options

See benchmarks/README.md for the method and the latest figures."""


class ProgressBar:
    """A one-line progress bar on a terminal (plain periodic lines when not a terminal)."""

    def __init__(self, stream: TextIO, label: str, width: int = 30) -> None:
        self.stream = stream
        self.label = label
        self.width = width
        self.tty = stream.isatty()
        self._last = -1.0

    def __call__(self, done: float, total: float) -> None:
        """Show ``done`` of ``total`` seconds."""
        frac = 1.0 if total <= 0 else min(1.0, done / total)
        if self.tty:
            filled = round(frac * self.width)
            bar = "#" * filled + "-" * (self.width - filled)
            self.stream.write(f"\r{self.label} [{bar}] {done:5.1f}/{total:.1f} s")
            self.stream.flush()
        elif frac - self._last >= 0.25 or (frac == 1.0 and self._last < 1.0):
            self._last = frac
            self.stream.write(f"{self.label}: {done:.1f}/{total:.1f} s\n")

    def close(self) -> None:
        """End the bar's line."""
        if self.tty:
            self.stream.write("\n")


@contextlib.asynccontextmanager
async def _endpoint(args: argparse.Namespace) -> AsyncIterator[tuple[str | None, str | None]]:
    """Yield ``(url, api_key)``: the user's endpoint, or an embedded local server."""
    url = args.url or os.environ.get(ENV_URL)
    key = os.environ.get(ENV_API_KEY)
    if url or (key and args.engine is None):
        yield url, key
        return
    from .local import serve

    engine = args.engine or "offline"
    print(
        f"No {ENV_API_KEY} set: translating on this machine with the embedded '{engine}' engine "
        "(no network). Set GRADIUM_API_KEY to use the Gradium cloud.",
        file=sys.stderr,
    )
    server = await serve(engine=engine)
    try:
        yield server.url, None
    finally:
        await server.close()


async def _translate(args: argparse.Namespace) -> int:
    from .audio import read_wav
    from .translate import translate_file

    in_path = Path(args.input)
    out_path = Path(args.output) if args.output else in_path.with_name(f"{in_path.stem}.{args.to}.wav")
    samples, rate = read_wav(in_path)
    total = samples.size / rate
    async with _endpoint(args) as (url, key):
        extra: dict[str, Any] = {"url": url} if url else {}
        pace = None if args.no_pace else args.speed
        if url and is_loopback_url(url) and not args.no_pace and args.speed == 1.0:
            pace = None  # a local server needs no real-time pacing
        config = S2SConfig(
            target_language=args.to,
            source_language=args.source,
            voice_id=args.voice,
            api_key=key,
            realtime_factor=pace,
            **extra,
        )
        bar = ProgressBar(sys.stderr, "translating") if total > 3.0 and not args.quiet else None
        t0 = time.monotonic()
        try:
            result = await translate_file(in_path, out_path, config, progress=bar)
        finally:
            if bar is not None:
                bar.close()
    took = time.monotonic() - t0
    print(result.text)
    print(
        f"wrote {out_path} ({result.audio_seconds:.1f} s at {result.sample_rate} Hz) "
        f"from {total:.1f} s of input in {took:.1f} s",
        file=sys.stderr,
    )
    return 0


async def _serve(args: argparse.Namespace) -> int:
    from .local import serve
    from .local.options import server_options

    if args.api_key:
        print(
            "warning: --api-key shows the key to every user of this machine (process list, shell "
            "history); put it in an environment variable and pass --api-key-env VAR instead",
            file=sys.stderr,
        )
    options = server_options(args, api_key=args.api_key)
    server = await serve(host=args.host, port=args.port, engine=args.engine or "echo", **options)
    print(f"serving the Gradium S2S protocol ({args.engine or 'echo'} engine) at {server.url}", flush=True)
    print(f"use it with: export {ENV_URL}={server.url}", flush=True)
    await server.serve_forever()
    return 0


async def _remote_voices(args: argparse.Namespace) -> int:
    from .voices import fetch_voices

    url = args.url or os.environ.get(ENV_URL)
    extra: dict[str, Any] = {"url": url} if url else {}
    config = S2SConfig(target_language=args.language or "en", **extra)
    for v in await fetch_voices(config, language=args.language):
        print(f"{v.language or '?'}  {v.uid}  {v.name}{'' if v.is_catalog else '  (custom)'}")
    return 0


def _voices(args: argparse.Namespace) -> int:
    if args.remote:
        return asyncio.run(_remote_voices(args))
    for lang in [args.language] if args.language else LANGUAGES:
        for i, (uid, name) in enumerate(FLAGSHIP_VOICES[lang].items()):
            print(f"{lang}  {uid}  {name}{'  (default)' if i == 0 else ''}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser."""
    p = argparse.ArgumentParser(prog="gradium-plugins", description="Gradium real-time speech translation")
    p.add_argument("-v", "--verbose", action="store_true", help="log connection events")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("translate", help="translate a WAV file")
    t.add_argument("input", help="input WAV (any rate, any channel count)")
    t.add_argument("-o", "--output", help="output WAV (default: INPUT.<lang>.wav)")
    t.add_argument("--to", required=True, choices=LANGUAGES, help="target language")
    t.add_argument("--from", dest="source", choices=LANGUAGES, help="source language (default: detected)")
    t.add_argument("--voice", help="voice uid (default: a flagship voice of the target language)")
    t.add_argument(
        "--url",
        help=f"S2S WebSocket URL (default: ${ENV_URL}, the cloud with ${ENV_API_KEY}, "
        "else the embedded offline engine)",
    )
    t.add_argument(
        "--engine", choices=["offline", "echo"], help="embedded engine to use when no URL is given"
    )
    t.add_argument("--speed", type=float, default=1.0, help="input pacing as a multiple of real time")
    t.add_argument("--no-pace", action="store_true", help="send input as fast as possible")
    t.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    s = sub.add_parser("serve", help="run a local server speaking the Gradium S2S protocol")
    s.add_argument("--engine", choices=["echo", "offline"], default="echo")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8765)
    s.add_argument("--api-key", help=argparse.SUPPRESS)  # visible in the process list: --api-key-env
    from .local.options import add_server_arguments

    add_server_arguments(s)

    v = sub.add_parser("voices", help="list the flagship voices")
    v.add_argument("--language", choices=LANGUAGES)
    v.add_argument("--remote", action="store_true", help="ask the service (needs GRADIUM_API_KEY or --url)")
    v.add_argument("--url", help="S2S WebSocket URL whose API serves the catalogue")

    sub.add_parser("bench", help="how to run the client-overhead benchmark (from a checkout)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``gradium-plugins`` command."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:
        print(BENCH_HELP, file=sys.stderr)
        return 2
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.command == "translate":
            return asyncio.run(_translate(args))
        if args.command == "serve":
            with contextlib.suppress(KeyboardInterrupt):
                return asyncio.run(_serve(args))
            return 0
        if args.command == "voices":
            return _voices(args)
    except GradiumError as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
