"""Caller input is validated with typed errors naming what is wrong (issue 11, item 6)."""

from __future__ import annotations

import os
import wave
from pathlib import Path

import numpy as np
import pytest

from gradium_plugins import AudioFormatError, GradiumError, InputFileError, S2SConfig, translate_file
from gradium_plugins.audio import MAX_SAMPLE_RATE, check_sample_rate, read_wav

# Nothing listens here: every case must fail before any connection is attempted.
CONFIG = S2SConfig(target_language="fr", url="ws://127.0.0.1:9/api/speech/s2s", realtime_factor=None)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (16000, 16000),
        (48000.0, 48000),
        (np.int32(8000), 8000),
        (np.float64(22050.0), 22050),
        (1, 1),
        (MAX_SAMPLE_RATE, MAX_SAMPLE_RATE),
    ],
)
def test_check_sample_rate_accepts_integral_rates(value: object, expected: int) -> None:
    rate = check_sample_rate(value)
    assert rate == expected and type(rate) is int


@pytest.mark.parametrize(
    "value",
    [
        "16000",
        b"16000",
        True,
        False,
        np.bool_(True),
        16000.5,
        float("nan"),
        float("inf"),
        0,
        -16000,
        0.0,
        MAX_SAMPLE_RATE + 1,
        None,
        [16000],
    ],
    ids=repr,
)
def test_check_sample_rate_rejects_with_the_field_name(value: object) -> None:
    with pytest.raises(AudioFormatError) as info:
        check_sample_rate(value, "in_rate")
    assert "in_rate=" in str(info.value)
    assert f"1..{MAX_SAMPLE_RATE}" in str(info.value)
    # A GradiumError (and a ValueError, like every configuration error), never a bare TypeError.
    assert isinstance(info.value, GradiumError | ValueError)


def test_check_sample_rate_default_field_name() -> None:
    with pytest.raises(AudioFormatError, match=r"sample_rate='16000'.*not str"):
        check_sample_rate("16000")


async def test_translate_file_missing_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.wav"
    with pytest.raises(InputFileError) as info:
        await translate_file(missing, tmp_path / "out.wav", CONFIG)
    assert str(missing) in str(info.value) and "No such file" in str(info.value)
    assert not isinstance(info.value, FileNotFoundError)


async def test_translate_file_directory_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(InputFileError) as info:
        await translate_file(tmp_path, tmp_path / "out.wav", CONFIG)
    assert str(tmp_path) in str(info.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
async def test_translate_file_unreadable_names_the_path(tmp_path: Path) -> None:
    src = tmp_path / "locked.wav"
    src.write_bytes(b"RIFF")
    src.chmod(0)
    with pytest.raises(InputFileError, match=r"locked\.wav"):
        await translate_file(src, tmp_path / "out.wav", CONFIG)


async def test_translate_file_empty_file_says_empty(tmp_path: Path) -> None:
    src = tmp_path / "empty.wav"
    src.write_bytes(b"")
    with pytest.raises(InputFileError) as info:
        await translate_file(src, tmp_path / "out.wav", CONFIG)
    assert "empty.wav" in str(info.value) and "is empty (0 bytes)" in str(info.value)


async def test_translate_file_wav_without_samples_says_so(tmp_path: Path) -> None:
    src = tmp_path / "header-only.wav"
    with wave.open(str(src), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
    with pytest.raises(InputFileError, match=r"header-only\.wav.*no audio"):
        await translate_file(src, tmp_path / "out.wav", CONFIG)
    assert not (tmp_path / "out.wav").exists()


def test_truncated_wav_message_is_never_blank(tmp_path: Path) -> None:
    src = tmp_path / "cut.wav"
    src.write_bytes(b"RIFF\x24\x00")
    with pytest.raises(AudioFormatError) as info:
        read_wav(src)
    assert "cut.wav" in str(info.value) and not str(info.value).rstrip().endswith(":")
    assert "truncated" in str(info.value) or "RIFF" in str(info.value)
