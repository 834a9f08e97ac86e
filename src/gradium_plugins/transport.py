"""Opening a connection: token, WebSocket upgrade and ``setup``, never following a redirect.

A redirect would carry the API key (``x-api-key`` is not one of the headers aiohttp strips on a
cross-origin redirect) to another origin, or from ``wss`` to ``ws``. Every request here is made
through a session whose trace hook refuses a redirect before it is followed; the refusal is a
typed error that names the location.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import aiohttp

from . import protocol
from ._version import __version__
from .config import S2SConfig
from .errors import (
    AuthenticationError,
    ConnectionLostError,
    GradiumError,
    ProtocolError,
    ServerError,
    redirect_error,
)

CLIENT_NAME = f"gradium-plugins/{__version__}"
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


async def _refuse_redirect(
    session: aiohttp.ClientSession, ctx: SimpleNamespace, params: aiohttp.TraceRequestRedirectParams
) -> None:
    what = "WebSocket upgrade" if params.url.path.endswith("/s2s") else "token request"
    raise redirect_error(what, params.response.status, params.response.headers.get("Location"))


def no_redirect_session(base: aiohttp.ClientSession | None = None) -> aiohttp.ClientSession:
    """A client session that refuses redirects, sharing ``base``'s connection pool when given."""
    trace = aiohttp.TraceConfig()
    trace.on_request_redirect.append(_refuse_redirect)
    if base is not None and not base.closed:
        return aiohttp.ClientSession(connector=base.connector, connector_owner=False, trace_configs=[trace])
    return aiohttp.ClientSession(trace_configs=[trace])


def _safe(text: str, config: S2SConfig) -> str:
    if config.api_key:
        text = text.replace(config.api_key, "***")
    return text[:200]


async def mint_token(http: aiohttp.ClientSession, config: S2SConfig) -> str:
    """Mint a single-use session token with the API key."""
    url = f"{config.http_base}{protocol.TOKEN_PATH}"
    try:
        async with http.get(
            url,
            headers={protocol.API_KEY_HEADER: config.api_key or ""},
            timeout=aiohttp.ClientTimeout(total=config.connect_timeout),
        ) as resp:
            if resp.status in (401, 403):
                raise AuthenticationError(
                    "the API key was refused when minting a session token", code=resp.status
                )
            if resp.status != 200:
                raise ServerError(
                    f"token endpoint answered HTTP {resp.status}",
                    code=resp.status,
                    retryable=resp.status >= 500 or resp.status == 429,
                )
            body = await resp.json(content_type=None)
    except GradiumError:
        raise
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise ConnectionLostError(f"could not mint a session token: {type(exc).__name__}") from None
    token = body.get("token") if isinstance(body, dict) else None
    if not isinstance(token, str) or not token:
        raise ProtocolError("token endpoint returned no token")
    return token


async def open_websocket(http: aiohttp.ClientSession, config: S2SConfig) -> aiohttp.ClientWebSocketResponse:
    """Open the WebSocket and send ``setup``.

    Raises:
        AuthenticationError: Credentials refused.
        RedirectError: The server redirected (redirects are never followed).
        ServerError: Other HTTP answers to the upgrade.
        ConnectionLostError: Unreachable, timed out, or dropped while sending ``setup``.
    """
    headers = {protocol.CLIENT_SOURCE_HEADER: CLIENT_NAME}
    params: dict[str, str] = {}
    if config.auth_mode == "token" and config.api_key:
        params[protocol.TOKEN_PARAM] = await mint_token(http, config)
    elif config.api_key:
        if config.auth_mode == "api-key-header":
            headers[protocol.AUTHORIZATION_HEADER] = f"{protocol.API_KEY_SCHEME} {config.api_key}"
        else:
            headers[protocol.API_KEY_HEADER] = config.api_key
    try:
        async with asyncio.timeout(config.connect_timeout):
            ws = await http.ws_connect(
                config.url,
                headers=headers,
                params=params or None,
                autoping=False,
                heartbeat=None,
                compress=0,
                max_msg_size=MAX_MESSAGE_BYTES,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=2.0),
            )
    except GradiumError:
        raise
    except aiohttp.WSServerHandshakeError as exc:
        if exc.status in (401, 403):
            raise AuthenticationError(
                f"the server refused the credentials (HTTP {exc.status})", code=exc.status
            ) from None
        retry = exc.status >= 500 or exc.status == 429
        raise ServerError(
            f"WebSocket handshake failed with HTTP {exc.status}", code=exc.status, retryable=retry
        ) from None
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise ConnectionLostError(
            f"could not connect to {config._safe_url()}: {type(exc).__name__}: {_safe(str(exc), config)}"
        ) from None
    try:
        await ws.send_str(setup_text(config))
    except (aiohttp.ClientError, OSError, RuntimeError) as exc:
        await abort(ws)
        raise ConnectionLostError(f"connection failed while sending setup: {type(exc).__name__}") from None
    return ws


def setup_text(config: S2SConfig) -> str:
    """The ``setup`` message of ``config``."""
    return protocol.setup_message(
        model_name=config.model_name,
        input_format=config.input_format,
        output_format=config.output_format,
        voice_id=config.voice_id,
        json_config=config.setup_json_config(),
        stt_model_name=config.stt_model_name,
        tts_model_name=config.tts_model_name,
        client_req_id=config.client_req_id,
        close_ws_on_eos=config.close_ws_on_eos,
    )


async def abort(ws: aiohttp.ClientWebSocketResponse, code: int = 1001) -> None:
    """Close ``ws`` without waiting long for the peer."""
    try:
        async with asyncio.timeout(0.5):
            await ws.close(code=code)
    except (TimeoutError, aiohttp.ClientError, OSError, RuntimeError):
        pass


def close_reason(ws: aiohttp.ClientWebSocketResponse, msg: Any) -> str:
    """The close reason text of a CLOSE message, if any."""
    extra = getattr(msg, "extra", None)
    return extra if isinstance(extra, str) else ""
