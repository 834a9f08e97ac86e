"""Plain HTTP routes of the local server, on the WebSocket port.

``GET /api/api-keys/token`` (JSON ``{"token", "expires_at"}``), ``GET /api/voices/`` and
``GET /api/voices/{uid}`` (the flagship catalogue). Requests that are not a WebSocket upgrade
to the S2S path are answered here.
"""

from __future__ import annotations

import http
import json
from typing import Any
from urllib.parse import parse_qs

from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from ..protocol import TOKEN_PATH
from ..voices import FLAGSHIP_VOICES
from .tokens import TokenStore, key_from_headers


def json_response(status: int, body: Any) -> Response:
    """A JSON response that closes the connection."""
    data = json.dumps(body, separators=(",", ":")).encode()
    st = http.HTTPStatus(status)
    headers = Headers(
        [("Content-Type", "application/json"), ("Content-Length", str(len(data))), ("Connection", "close")]
    )
    return Response(st.value, st.phrase, headers, data)


def rest_response(tokens: TokenStore, request: Request) -> Response:
    """Answer a plain HTTP request (token minting, voice catalogue, 404/405)."""
    path, _, query = request.path.partition("?")
    route = path.rstrip("/")
    if getattr(request, "method", "GET") != "GET":
        return json_response(405, {"detail": "only GET is supported here"})
    if route == "/api" + TOKEN_PATH:
        if not tokens.key_ok(key_from_headers(request.headers)):
            return json_response(401, {"detail": "API key is invalid"})
        token, expires_at = tokens.mint()
        return json_response(200, {"token": token, "expires_at": expires_at})
    if route == "/api/voices" or route.startswith("/api/voices/"):
        if not tokens.key_ok(key_from_headers(request.headers)):
            return json_response(401, {"detail": "API key is invalid"})
        voices = _catalogue()
        if route == "/api/voices":
            params = parse_qs(query)
            skip = _int_param(params, "skip", 0)
            limit = _int_param(params, "limit", 100)
            return json_response(200, voices[skip : skip + limit])
        uid = route.rsplit("/", 1)[1]
        for voice in voices:
            if voice["uid"] == uid:
                return json_response(200, voice)
        return json_response(404, {"detail": f"voice {uid!r} not found"})
    return json_response(404, {"detail": "Not Found"})


def _int_param(params: dict[str, list[str]], name: str, default: int) -> int:
    try:
        return max(0, int(params[name][0]))
    except (KeyError, ValueError, IndexError):
        return default


def _catalogue() -> list[dict[str, Any]]:
    return [
        {
            "uid": uid,
            "name": name,
            "description": f"{name}, flagship {lang} voice (local catalogue)",
            "language": lang,
            "is_catalog": True,
            "is_pro_clone": False,
            "tags": [{"category": "language", "value": lang}],
        }
        for lang, voices in FLAGSHIP_VOICES.items()
        for uid, name in voices.items()
    ]
