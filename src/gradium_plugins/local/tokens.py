"""API-key and temporary-token checks of the local server.

Mirrors the service: ``GET /api/api-keys/token`` with ``x-api-key`` mints a token that a client
passes as ``?token=`` on the WebSocket URL. A token is single-use (consumed when the handshake
verifies it) and expires after a TTL.
"""

from __future__ import annotations

import hmac
import secrets
import time
from datetime import UTC, datetime
from urllib.parse import parse_qs

from websockets.datastructures import Headers

from ..protocol import API_KEY_HEADER, API_KEY_SCHEME, AUTHORIZATION_HEADER

KEY_INVALID = "API key is invalid"
KEY_MISSING = "API key is missing: send it in the x-api-key header"
TOKEN_INVALID = "API key token is invalid, expired or already used"


def key_from_headers(headers: Headers) -> str | None:
    """Return the key of ``x-api-key`` or ``Authorization: Api-Key <key>``, if any."""
    key = headers.get(API_KEY_HEADER)
    if key is not None:
        return key.strip()
    auth = headers.get(AUTHORIZATION_HEADER)
    if auth is not None:
        scheme, _, value = auth.strip().partition(" ")
        if scheme.lower() == API_KEY_SCHEME.lower() and value.strip():
            return value.strip()
    return None


class TokenStore:
    """Valid API key plus the tokens minted from it.

    Args:
        api_key: The key clients must present; None disables every check.
        token_ttl_s: Lifetime of a minted token.
        max_tokens: Unused tokens kept at most; minting more forgets the oldest, so a client
            minting in a loop cannot grow the server's memory.
    """

    def __init__(self, api_key: str | None, token_ttl_s: float = 300.0, max_tokens: int = 10_000) -> None:
        self._key = api_key.encode() if api_key is not None else None
        self.token_ttl_s = token_ttl_s
        self.max_tokens = max_tokens
        self._tokens: dict[str, float] = {}  # token -> monotonic expiry
        self.minted = 0
        self.consumed = 0

    @property
    def enabled(self) -> bool:
        """Whether clients must authenticate."""
        return self._key is not None

    def key_ok(self, key: str | None) -> bool:
        """Constant-time check of a presented key (always true when auth is disabled)."""
        if self._key is None:
            return True
        return key is not None and hmac.compare_digest(key.encode(), self._key)

    def mint(self) -> tuple[str, str]:
        """Create a token; return ``(token, expires_at ISO-8601 UTC)``."""
        now = time.monotonic()
        # Drop expired tokens so a long-running server does not accumulate them.
        for tok in [t for t, exp in self._tokens.items() if exp <= now]:
            del self._tokens[tok]
        token = secrets.token_urlsafe(24)
        if self._key is not None:  # without a key no token is ever checked: keep none
            self._tokens[token] = now + self.token_ttl_s
            while len(self._tokens) > self.max_tokens:
                del self._tokens[next(iter(self._tokens))]  # the oldest (insertion order)
        self.minted += 1
        expires = datetime.fromtimestamp(time.time() + self.token_ttl_s, UTC)
        return token, expires.isoformat(timespec="seconds").replace("+00:00", "Z")

    def consume(self, token: str) -> bool:
        """Verify and consume a token (single use)."""
        expiry = self._tokens.pop(token, None)
        if expiry is None or expiry <= time.monotonic():
            return False
        self.consumed += 1
        return True

    def check_handshake(self, headers: Headers, query: str) -> str | None:
        """Authenticate a WebSocket handshake.

        Returns:
            None when accepted, else the message of the ``error`` frame to send.
        """
        if self._key is None:
            return None
        key = key_from_headers(headers)
        if key is not None:
            return None if self.key_ok(key) else KEY_INVALID
        tokens = parse_qs(query).get("token")
        if tokens:
            return None if self.consume(tokens[0]) else TOKEN_INVALID
        return KEY_MISSING
