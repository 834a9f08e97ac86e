"""Run the local server from the shell: ``python -m gradium_plugins.local [--port 8765]``.

Prints ``ws://HOST:PORT/api/speech/s2s`` on one line once it listens, then serves until
interrupted (Ctrl-C / SIGTERM). The API key, if any, is read from ``--api-key-env``'s variable
so it never appears on a command line.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from .server import ENGINES, serve


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m gradium_plugins.local", description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765, help="0 picks a free port (default 8765)")
    p.add_argument("--engine", choices=ENGINES, default="echo")
    p.add_argument("--api-key-env", metavar="VAR",
                   help="require the API key held in this environment variable")
    p.add_argument("--max-session-s", type=float, default=None, help="session length cap (service: 300)")
    p.add_argument("--output-realtime", action="store_true", help="pace output audio at real time")
    p.add_argument("--stamp", action="store_true", help="send perf_counter_ns() as audio stream_id")
    p.add_argument("--log-level", default="WARNING")
    return p


async def _run(args: argparse.Namespace) -> None:
    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            raise SystemExit(f"environment variable {args.api_key_env} is empty or unset")
    server = await serve(args.host, args.port, args.engine, api_key=api_key, max_session_s=args.max_session_s,
                         output_realtime=args.output_realtime, stamp=args.stamp)
    print(server.url, flush=True)
    await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    """Entry point."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr)
    asyncio.run(_run(args))


if __name__ == "__main__":
    main()
