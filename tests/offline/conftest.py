"""Fixtures of the offline engine tests: one engine (models loaded once) and generated speech."""

from __future__ import annotations

import asyncio

import pytest

from gradium_plugins.audio import resample

from .helpers import EN_SENTENCES, ES_SENTENCES, MISSING, RATE, SKIP_REASON, Speech, join_speech

if not MISSING:
    from gradium_plugins.local.offline import OfflineEngine


@pytest.fixture(scope="session")
def offline_engine() -> OfflineEngine:
    """The engine, models loaded once for the whole test session (they are per process anyway)."""
    if MISSING:
        pytest.skip(SKIP_REASON)
    engine = OfflineEngine()
    asyncio.run(engine.start(wait=True))
    return engine


async def _speak(engine: OfflineEngine, sentences: tuple[str, ...], language: str) -> Speech:
    clips = [resample(await engine.synthesize(s, language), 48000, RATE) for s in sentences]
    return join_speech(clips)


@pytest.fixture(scope="session")
def en_speech(offline_engine: OfflineEngine) -> Speech:
    """English sentences spoken by the Piper joe voice."""
    return asyncio.run(_speak(offline_engine, EN_SENTENCES, "en"))


@pytest.fixture(scope="session")
def es_speech(offline_engine: OfflineEngine) -> Speech:
    """Spanish sentences spoken by espeak-ng (default Spanish voice)."""
    return asyncio.run(_speak(offline_engine, ES_SENTENCES, "es"))
