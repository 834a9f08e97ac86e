"""Typed errors raised by the session core and the adapters.

Every error carries the server's ``code``, ``message`` and ``request_id`` when the
server supplied them, and says whether retrying could help (``retryable``).
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


class GradiumError(Exception):
    """Base class of every error raised by gradium-plugins.

    Attributes:
        message: Human-readable description (never contains the API key).
        code: Numeric code from the server's ``error`` frame or the WebSocket close code.
        request_id: The server's request id from ``ready``, when one was received.
        retryable: Whether a new connection could succeed where this one failed.
    """

    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        code: int | None = None,
        request_id: str | None = None,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.request_id = request_id
        if retryable is not None:
            self.retryable = retryable

    def __str__(self) -> str:
        parts = [self.message]
        if self.code is not None:
            parts.append(f"code={self.code}")
        if self.request_id:
            parts.append(f"request_id={self.request_id}")
        return parts[0] if len(parts) == 1 else f"{parts[0]} ({', '.join(parts[1:])})"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, code={self.code!r}, request_id={self.request_id!r})"


class ConfigurationError(GradiumError, ValueError):
    """A setting is invalid; raised before any connection is made."""

    retryable = False


class AuthenticationError(GradiumError):
    """The server refused the credentials (missing, invalid, revoked or expired key or token)."""

    retryable = False


class ProtocolError(GradiumError):
    """A message did not follow the wire protocol (malformed JSON, wrong field type, binary frame)."""

    retryable = True


class ServerError(GradiumError):
    """The server reported an error in an ``error`` frame."""

    retryable = False


class RedirectError(ServerError):
    """The server answered with an HTTP redirect, which is never followed.

    Following it would send the API key to whatever URL the redirect names (possibly another
    origin, possibly unencrypted). Point ``url`` at the final endpoint instead.

    Attributes:
        location: The redirect target with any query, fragment and credentials redacted,
            or None when the response had no ``Location`` header.
    """

    retryable = False

    def __init__(
        self,
        message: str,
        *,
        code: int | None = None,
        request_id: str | None = None,
        location: str | None = None,
    ) -> None:
        super().__init__(message, code=code, request_id=request_id)
        self.location = location


class ConnectionLostError(GradiumError):
    """The connection failed: TCP drop, abnormal close, or a timeout waiting for the server."""

    retryable = True


class AudioFormatError(ConfigurationError):
    """Audio handed to the core cannot be interpreted (odd byte count, NaN, wrong dtype or shape)."""


class InputFileError(ConfigurationError):
    """An input file is missing, unreadable or empty (the message names the path)."""


_AUTH_WORDS = (
    "api key",
    "api-key",
    "apikey",
    "token",
    "unauthori",
    "authenticat",
    "forbidden",
    "revoked",
    "expired",
)


def error_from_server(message: str, code: int | None, request_id: str | None) -> GradiumError:
    """Map an ``error`` frame to the matching typed error.

    Args:
        message: The ``message`` field of the frame.
        code: The ``code`` field, if any.
        request_id: The request id of the session, if known.

    Returns:
        An :class:`AuthenticationError` for credential problems, a retryable
        :class:`ServerError` for internal errors (1011, 5xx), otherwise a non-retryable
        :class:`ServerError`.
    """
    lowered = message.lower()
    if code in (401, 403) or (code in (1008, None) and any(w in lowered for w in _AUTH_WORDS)):
        return AuthenticationError(message, code=code, request_id=request_id)
    retryable = code is not None and (code == 1011 or code == 1013 or 500 <= code < 600)
    return ServerError(message, code=code, request_id=request_id, retryable=retryable)


def redact_url(url: str) -> str:
    """Return ``url`` with its query, fragment and credentials replaced by ``<redacted>``.

    A redirect's query string can carry a token; a URL that cannot be parsed is redacted whole.
    """
    try:
        p = urlsplit(url.strip())
        host = p.hostname or ""
        port = p.port
    except ValueError:
        return "<redacted>"
    if ":" in host:
        host = f"[{host}]"
    netloc = ("<redacted>@" if "@" in p.netloc else "") + host + (f":{port}" if port else "")
    query = "<redacted>" if p.query else ""
    fragment = "<redacted>" if p.fragment else ""
    return urlunsplit((p.scheme, netloc, p.path, query, fragment))


def redirect_error(what: str, status: int, location: str | None) -> GradiumError:
    """Build the error for an HTTP redirect answered to a request that carries credentials.

    Used for every request that sends the API key (voices, token, WebSocket upgrade):
    redirects are never followed, so the key only ever goes to the configured URL.

    Args:
        what: The request, e.g. ``"voices endpoint"`` or ``"WebSocket upgrade"``.
        status: The HTTP status (3xx).
        location: The ``Location`` header, if any (redacted in the message).

    Returns:
        A non-retryable :class:`RedirectError` naming the status and the redacted location.
    """
    shown = redact_url(location) if location else None
    target = f" to {shown}" if shown else " (no Location header)"
    return RedirectError(
        f"{what} answered HTTP {status}, a redirect{target}; redirects are not followed so that the "
        "API key is only sent to the configured URL: set url to the final endpoint",
        code=status,
        location=shown,
    )
