"""Voice catalogue: languages, the published flagship voices, and voice/language checks."""

from __future__ import annotations

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
