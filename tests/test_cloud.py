"""Against the real Gradium service: runs only when GRADIUM_API_KEY is set (never in CI here)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gradium_plugins import S2SConfig, translate_file
from gradium_plugins.audio import read_wav

pytestmark = [
    pytest.mark.cloud,
    pytest.mark.skipif(
        not os.environ.get("GRADIUM_API_KEY"), reason="needs GRADIUM_API_KEY (real Gradium service)"
    ),
]

SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "audio" / "meeting_en.wav"


async def test_translate_sample_with_the_cloud(tmp_path):
    config = S2SConfig(target_language="fr", source_language="en")
    result = await translate_file(SAMPLE, tmp_path / "fr.wav", config)
    assert result.text.strip()
    audio, rate = read_wav(tmp_path / "fr.wav")
    assert rate == 48000 and audio.size / rate > 2.0
