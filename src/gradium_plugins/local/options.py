"""Command-line options of the local server.

Shared by ``gradium-plugins serve`` and ``python -m gradium_plugins.local``.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from ..errors import ConfigurationError
from .limits import ServerLimits

_DEFAULTS = ServerLimits()


def _off(value: float) -> float | None:
    return None if value <= 0 else value


def add_server_arguments(p: argparse.ArgumentParser) -> None:
    """Add the security and limit options (not host, port nor engine) to ``p``."""
    sec = p.add_argument_group("security")
    sec.add_argument(
        "--api-key-env",
        metavar="VAR",
        help="require the API key held in this environment variable (never on the command line)",
    )
    sec.add_argument("--insecure", action="store_true", help="allow a non-loopback --host without an API key")
    sec.add_argument(
        "--allow-origin",
        action="append",
        metavar="ORIGIN",
        default=None,
        help="browser origin allowed to connect (repeatable; '*' allows every origin); "
        "by default browsers are refused when there is no API key",
    )
    lim = p.add_argument_group("limits (0 switches a timeout or the connection cap off)")
    lim.add_argument(
        "--max-connections",
        type=int,
        default=_DEFAULTS.max_connections,
        metavar="N",
        help="WebSocket connections open at once; more get HTTP 503 (default %(default)s)",
    )
    lim.add_argument(
        "--handshake-timeout",
        type=float,
        default=_DEFAULTS.handshake_timeout_s,
        metavar="S",
        help="seconds to complete the handshake (default %(default)s)",
    )
    lim.add_argument(
        "--setup-timeout",
        type=float,
        default=_DEFAULTS.setup_timeout_s,
        metavar="S",
        help="seconds from the handshake to the first setup (default %(default)s)",
    )
    lim.add_argument(
        "--idle-timeout",
        type=float,
        default=_DEFAULTS.idle_timeout_s,
        metavar="S",
        help="longest client silence within a stream or between requests (default %(default)s)",
    )
    lim.add_argument(
        "--send-timeout",
        type=float,
        default=_DEFAULTS.send_timeout_s,
        metavar="S",
        help="longest wait for a client to read output (default %(default)s)",
    )
    lim.add_argument(
        "--max-message-bytes",
        type=int,
        default=_DEFAULTS.max_message_bytes,
        metavar="N",
        help="largest client message; larger: close 1009 (default %(default)s)",
    )
    lim.add_argument(
        "--max-input-buffer-bytes",
        type=int,
        default=_DEFAULTS.max_input_buffer_bytes,
        metavar="N",
        help="decoded input waiting for the engine before reading pauses (default %(default)s)",
    )
    lim.add_argument(
        "--history",
        type=int,
        default=_DEFAULTS.history,
        metavar="N",
        help="connection records kept (default %(default)s)",
    )
    lim.add_argument(
        "--max-session-s",
        type=float,
        default=None,
        metavar="S",
        help="cap on the input seconds of one stream (the service: 300; default: none)",
    )


def server_options(args: argparse.Namespace, api_key: str | None = None) -> dict[str, Any]:
    """``serve()`` keyword arguments from parsed options.

    Args:
        args: Parsed arguments of a parser given :func:`add_server_arguments`.
        api_key: A key obtained otherwise (``--api-key``); ``--api-key-env`` wins.

    Raises:
        ConfigurationError: ``--api-key-env`` names an empty or unset variable, or a limit is invalid.
    """
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            raise ConfigurationError(f"environment variable {args.api_key_env} is empty or unset")
    try:
        limits = ServerLimits(
            max_connections=args.max_connections if args.max_connections > 0 else None,
            handshake_timeout_s=_off(args.handshake_timeout),
            setup_timeout_s=_off(args.setup_timeout),
            idle_timeout_s=_off(args.idle_timeout),
            send_timeout_s=_off(args.send_timeout),
            max_message_bytes=args.max_message_bytes,
            max_input_buffer_bytes=args.max_input_buffer_bytes,
            history=args.history,
        )
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None
    return {
        "api_key": api_key,
        "insecure": args.insecure,
        "allowed_origins": args.allow_origin,
        "limits": limits,
        "max_session_s": args.max_session_s,
    }
