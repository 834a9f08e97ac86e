"""Safe defaults of the local server: who may bind where, which browser origins, no secrets in logs."""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Iterable
from typing import Any

from ..errors import ConfigurationError
from ..protocol import API_KEY_HEADER, AUTHORIZATION_HEADER

logger = logging.getLogger(__name__)

_SECRET_HEADERS = frozenset(
    {API_KEY_HEADER.lower(), AUTHORIZATION_HEADER.lower(), "cookie", "proxy-authorization"}
)
# Query parameters that may carry a credential (the service only reads ?token=, but clients
# also try ?api_key= and friends: none of them may reach a log).
_SECRET_QUERY_RE = re.compile(
    r"((?:^|[?&;\s])(?:token|api_key|api-key|apikey|key|access_token|auth)=)[^&;\s]+", re.IGNORECASE
)


def redact_query(text: str) -> str:
    """Replace credential values of a request line or URL query by ``<redacted>``."""
    return _SECRET_QUERY_RE.sub(r"\1<redacted>", text)


class RedactingLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """The websockets server logger, minus secrets.

    At DEBUG level websockets logs every request header and the request line; API keys and
    credential query parameters (``?token=``, ``?api_key=``...) must never reach a log.
    """

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        """Log like the wrapped logger, with secret header values and query values redacted."""
        if args and isinstance(msg, str) and msg.startswith("<"):
            if len(args) == 2 and str(args[0]).lower() in _SECRET_HEADERS:
                args = (args[0], "<redacted>")
            else:
                args = tuple(redact_query(a) if isinstance(a, str) else a for a in args)
        super().log(level, msg, *args, **kwargs)


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` only listens on this machine (``localhost``, 127.0.0.0/8, ``::1``)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name or "": may resolve to (or mean) every interface


def check_binding(host: str, api_key: str | None, insecure: bool) -> None:
    """Refuse to serve a non-loopback address without an API key, unless ``insecure``.

    Raises:
        ConfigurationError: ``host`` is reachable from other machines, there is no key, and
            ``insecure`` is false.
    """
    if api_key is not None or is_loopback_host(host):
        return
    if not insecure:
        raise ConfigurationError(
            f"refusing to serve {host or 'every interface'!r} without an API key: anyone who can reach "
            "this machine could use it. Set an api_key (command line: --api-key-env VAR), bind "
            "127.0.0.1, or pass insecure=True (--insecure) to accept the risk"
        )
    logger.warning(
        "SERVING %s WITHOUT AN API KEY: anyone who can reach this machine can use the server "
        "(started with insecure=True / --insecure)",
        host or "every interface",
    )


def origin_allowed(origin: str | None, allowed: Iterable[str] | None, has_key: bool) -> bool:
    """Whether a WebSocket handshake with this ``Origin`` header may proceed.

    Clients that are not browsers send no ``Origin``: always allowed. A browser page is allowed
    when its origin is listed (``"*"`` allows every origin). With no list, browsers are refused
    by a server without an API key (a random web page must not reach an open local server) and
    left to the key check otherwise.
    """
    if origin is None:
        return True
    if allowed is None:
        return has_key
    allowed = list(allowed)
    return "*" in allowed or origin in allowed
