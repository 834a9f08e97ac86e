"""Run the local server from the shell: ``python -m gradium_plugins.local [--port 8765]``.

Prints ``ws://HOST:PORT/api/speech/s2s`` on one line once it listens, then serves until
interrupted (Ctrl-C / SIGTERM). The API key, if any, is read from ``--api-key-env``'s variable
so it never appears on a command line. Limits and security options: see ``--help``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from ..errors import ConfigurationError
from .options import add_server_arguments, server_options
from .server import ENGINES, serve


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m gradium_plugins.local", description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765, help="0 picks a free port (default 8765)")
    p.add_argument("--engine", choices=ENGINES, default="echo")
    p.add_argument("--output-realtime", action="store_true", help="pace output audio at real time")
    p.add_argument("--stamp", action="store_true", help="send perf_counter_ns() as audio stream_id")
    p.add_argument("--log-level", default="WARNING")
    add_server_arguments(p)
    return p


async def _run(args: argparse.Namespace) -> None:
    options = server_options(args)
    server = await serve(
        args.host, args.port, args.engine, output_realtime=args.output_realtime, stamp=args.stamp, **options
    )
    print(server.url, flush=True)
    await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    """Entry point."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr)
    try:
        asyncio.run(_run(args))
    except ConfigurationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
