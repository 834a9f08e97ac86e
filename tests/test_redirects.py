"""The API key never follows a redirect (issue 11, item 4): a 3xx is a typed error naming where it pointed."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from gradium_plugins import GradiumError, RedirectError, S2SConfig, ServerError
from gradium_plugins.errors import redact_url, redirect_error
from gradium_plugins.voices import fetch_voices

KEY = "gd_fake-redirect-test-key-0123456789"
TOKEN = "leaky-token-abcdef"


@dataclass
class Target:
    """An HTTP server on 127.0.0.1 that records the headers of every request it gets."""

    base: str = ""
    seen: list[dict[str, str]] = field(default_factory=list)


async def _start(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


@pytest.fixture
async def target() -> AsyncIterator[Target]:
    rec = Target()

    async def voices(request: web.Request) -> web.Response:
        rec.seen.append(dict(request.headers))
        return web.json_response([{"uid": "stolen", "name": "Stolen", "language": "fr"}])

    app = web.Application()
    app.router.add_get("/{tail:.*}", voices)
    runner, rec.base = await _start(app)
    yield rec
    await runner.cleanup()


RedirectServer = Callable[[int, str | None], Awaitable[str]]


@pytest.fixture
async def redirecting() -> AsyncIterator[RedirectServer]:
    runners: list[web.AppRunner] = []

    async def make(status: int, location: str | None) -> str:
        async def handler(request: web.Request) -> web.Response:
            headers = {"Location": location} if location is not None else {}
            return web.Response(status=status, headers=headers)

        app = web.Application()
        app.router.add_get("/{tail:.*}", handler)
        runner, base = await _start(app)
        runners.append(runner)
        return base.replace("http://", "ws://") + "/api/speech/s2s"

    yield make
    for r in runners:
        await r.cleanup()


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
@pytest.mark.parametrize("auth_mode", ["header", "api-key-header"])
async def test_voices_never_follow_a_redirect_with_the_key(
    redirecting: RedirectServer, target: Target, status: int, auth_mode: str
) -> None:
    location = f"{target.base}/api/voices/?token={TOKEN}&skip=0"
    url = await redirecting(status, location)
    config = S2SConfig(target_language="fr", url=url, api_key=KEY, auth_mode=auth_mode)  # type: ignore[arg-type]
    with pytest.raises(RedirectError) as info:
        await fetch_voices(config)
    err = info.value
    assert target.seen == []  # the key (or anything else) never reached the other server
    assert isinstance(err, ServerError) and not err.retryable and err.code == status
    text = f"{err} {err!r}"
    assert f"HTTP {status}" in text
    assert f"{target.base}/api/voices/?<redacted>" in text
    assert err.location == f"{target.base}/api/voices/?<redacted>"
    assert TOKEN not in text and KEY not in text


async def test_redirect_without_location_is_still_an_error(redirecting: RedirectServer) -> None:
    url = await redirecting(302, None)
    with pytest.raises(RedirectError, match="no Location header"):
        await fetch_voices(S2SConfig(target_language="fr", url=url, api_key=KEY))


async def test_voices_reach_the_configured_server_with_the_key(target: Target) -> None:
    # The same target, addressed directly, gets the key: the redirect is what is refused.
    url = target.base.replace("http://", "ws://") + "/api/speech/s2s"
    voices = await fetch_voices(S2SConfig(target_language="fr", url=url, api_key=KEY))
    assert [v.uid for v in voices] == ["stolen"]
    assert target.seen[0].get("x-api-key") == KEY


@pytest.mark.parametrize(
    ("location", "shown"),
    [
        ("https://evil.example/cb?token=abc#frag", "https://evil.example/cb?<redacted>#<redacted>"),
        ("https://user:pw@evil.example:8443/x", "https://<redacted>@evil.example:8443/x"),
        ("/relative/path?sig=1", "/relative/path?<redacted>"),
        ("http://[::1]:9/p", "http://[::1]:9/p"),
        ("http://bad:port/x?t=1", "<redacted>"),
    ],
)
def test_redirect_error_redacts_the_location(location: str, shown: str) -> None:
    assert redact_url(location) == shown
    err = redirect_error("token request", 307, location)
    assert isinstance(err, RedirectError) and isinstance(err, GradiumError)
    assert shown in str(err) and "token request answered HTTP 307" in str(err)
    assert "abc" not in str(err) and "pw" not in str(err) and "sig=1" not in str(err)
