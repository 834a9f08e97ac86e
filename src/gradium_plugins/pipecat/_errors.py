"""Pipecat error categories for the core's typed errors."""

from __future__ import annotations

from pipecat.utils.errors import ErrorCategory, classify_http_status_code

from ..errors import (
    AuthenticationError,
    ConfigurationError,
    ConnectionLostError,
    GradiumError,
    ProtocolError,
    ServerError,
)

_RATE_LIMIT_WORDS = ("rate limit", "too many requests")
_QUOTA_WORDS = ("quota", "credit", "insufficient funds")


def classify_error(exception: BaseException) -> ErrorCategory | None:
    """The Pipecat category of a gradium-plugins error; None for other exceptions.

    HTTP statuses (a token request, or a server that reports them) are classified the way
    Pipecat classifies them (401, 402 -> QUOTA, 403, 429 -> RATE_LIMIT, 5xx). WebSocket-level
    errors carry no status: a rate limit or an exhausted quota is recognised by its message,
    so only refused credentials and invalid requests are permanent.
    """
    if not isinstance(exception, GradiumError):
        return None
    code = exception.code
    if isinstance(code, int) and 400 <= code < 600:
        return classify_http_status_code(code)
    text = exception.message.lower()
    if any(w in text for w in _RATE_LIMIT_WORDS):
        return ErrorCategory.RATE_LIMIT
    if any(w in text for w in _QUOTA_WORDS):
        return ErrorCategory.QUOTA
    if isinstance(exception, AuthenticationError):
        return ErrorCategory.AUTHENTICATION
    if isinstance(exception, ConfigurationError):
        return ErrorCategory.INVALID_REQUEST
    if isinstance(exception, ConnectionLostError | ProtocolError):
        return ErrorCategory.CONNECTIVITY
    if isinstance(exception, ServerError):
        # 1008 (policy violation) is how the service refuses a setup it cannot serve.
        return ErrorCategory.INVALID_REQUEST if code == 1008 else ErrorCategory.SERVER
    return ErrorCategory.UNKNOWN
