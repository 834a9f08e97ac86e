"""Voice catalogue: languages, the published flagship voices, and voice/language checks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import aiohttp

    from .config import S2SConfig

#: Languages the S2S service translates between (any to any).
LANGUAGES: tuple[str, ...] = ("en", "fr", "de", "es", "pt")

#: Published flagship voices per language, first one is the default.
FLAGSHIP_VOICES: dict[str, dict[str, str]] = {
    "en": {"YTpq7expH9539ERJ": "Emma", "LFZvm12tW_z0xfGo": "Kent", "m86j6D7UZpGzHsNu": "Jack"},
    "fr": {"b35yykvVppLXyw_l": "Elise", "axlOaUiFyOZhy4nv": "Leo"},
    "de": {"-uP9MuGtBqAvEyxI": "Mia", "0y1VZjPabOBU3rWy": "Maximilian"},
    "es": {"B36pbz5_UoWn4BDl": "Valentina", "xu7iJ_fn2ElcWp2s": "Sergio", "sVLgzKMqaptUdaY8": "Mateo"},
    "pt": {"pYcGZz9VOo4n2ynh": "Alice", "M-FvVo9c-jGR4PgP": "Davi"},
}

DEFAULT_VOICES: dict[str, tuple[str, ...]] = {lang: tuple(v) for lang, v in FLAGSHIP_VOICES.items()}

_VOICE_LANG = {uid: lang for lang, voices in FLAGSHIP_VOICES.items() for uid in voices}


def voice_language(voice_id: str) -> str | None:
    """Return the native language of a known flagship voice, or None if the voice is not known here."""
    return _VOICE_LANG.get(voice_id)


def default_voice(language: str) -> str:
    """Return the default flagship voice uid of a language.

    Raises:
        KeyError: The language is not one of :data:`LANGUAGES`.
    """
    return DEFAULT_VOICES[language][0]


@dataclass(frozen=True, slots=True)
class Voice:
    """A voice of the catalogue.

    Attributes:
        uid: Voice id to pass as ``voice_id``.
        name: Display name.
        language: Native language code, if given.
        description: Free text, if given.
        is_catalog: True for Gradium's catalogue voices, False for your own clones.
    """

    uid: str
    name: str
    language: str | None = None
    description: str | None = None
    is_catalog: bool = True


async def fetch_voices(
    config: S2SConfig,
    *,
    language: str | None = None,
    http_session: aiohttp.ClientSession | None = None,
    page_size: int = 100,
) -> list[Voice]:
    """List the voices available to the API key (``GET {base}/voices/``, all pages).

    Args:
        config: Provides the endpoint (``http_base``), the key and the timeout.
        language: Keep only voices of this language.
        http_session: An aiohttp session to reuse.
        page_size: Voices per request.

    Raises:
        AuthenticationError: The key was refused.
        RedirectError: The endpoint answered a redirect (never followed, so the key stays put).
        ServerError: Any other HTTP error.
        ConnectionLostError: The endpoint could not be reached.
    """
    import aiohttp

    from .errors import AuthenticationError, ConnectionLostError, ServerError, redirect_error
    from .protocol import API_KEY_HEADER, API_KEY_SCHEME, AUTHORIZATION_HEADER

    own = http_session is None
    http = http_session or aiohttp.ClientSession()
    headers: dict[str, str] = {}
    if config.api_key and config.auth_mode == "api-key-header":
        headers[AUTHORIZATION_HEADER] = f"{API_KEY_SCHEME} {config.api_key}"
    elif config.api_key:
        headers[API_KEY_HEADER] = config.api_key
    voices: list[Voice] = []
    try:
        skip = 0
        while True:
            url = f"{config.http_base}/voices/"
            params = {"skip": str(skip), "limit": str(page_size), "include_catalog": "true"}
            timeout = aiohttp.ClientTimeout(total=config.connect_timeout)
            try:
                # Never follow a redirect: it would resend the key to wherever it points.
                async with http.get(
                    url, params=params, headers=headers, timeout=timeout, allow_redirects=False
                ) as resp:
                    if 300 <= resp.status < 400:
                        raise redirect_error("voices endpoint", resp.status, resp.headers.get("Location"))
                    if resp.status in (401, 403):
                        raise AuthenticationError(
                            "the API key was refused by the voices endpoint", code=resp.status
                        )
                    if resp.status != 200:
                        raise ServerError(f"voices endpoint answered HTTP {resp.status}", code=resp.status)
                    page = await resp.json(content_type=None)
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise ConnectionLostError(f"could not list voices: {type(exc).__name__}") from None
            if not isinstance(page, list):
                raise ServerError("voices endpoint returned an unexpected body (not a list)")
            for item in page:
                if isinstance(item, dict) and isinstance(item.get("uid"), str):
                    voices.append(
                        Voice(
                            uid=item["uid"],
                            name=str(item.get("name") or item["uid"]),
                            language=item.get("language") if isinstance(item.get("language"), str) else None,
                            description=item.get("description")
                            if isinstance(item.get("description"), str)
                            else None,
                            is_catalog=bool(item.get("is_catalog", True)),
                        )
                    )
            if len(page) < page_size:
                break
            skip += page_size
    finally:
        if own:
            await http.close()
    return [v for v in voices if language is None or v.language == language]
