"""The echo engine on its own (no server): utterance splitting, texts, audio, determinism."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable

import numpy as np
import pytest

from gradium_plugins.audio import Int16Array
from gradium_plugins.local import EchoEngine, EngineSetup, EngineSetupError, Utterance, dominant_frequency
from tests.conftest import make_speech, parse_echo, tone, utterance_freqs


async def _feed(chunks: Iterable[Int16Array]) -> AsyncIterator[Int16Array]:
    for c in chunks:
        yield c


def _chunks(samples: Int16Array, size: int | list[int]) -> list[Int16Array]:
    if isinstance(size, int):
        return [samples[i : i + size] for i in range(0, samples.size, size)]
    out, pos, k = [], 0, 0
    while pos < samples.size:
        n = size[k % len(size)]
        out.append(samples[pos : pos + n])
        pos, k = pos + n, k + 1
    return out


async def _run(samples: Int16Array, chunk: int | list[int] = 1920, lang: str | None = "fr",
               engine: EchoEngine | None = None) -> list[Utterance]:
    setup = EngineSetup(target_language=lang, source_language=None, voice_id=None)
    session = (engine or EchoEngine()).open(setup)
    return [u async for u in session.run(_feed(_chunks(samples, chunk)))]


async def test_one_utterance_per_tone_with_index_duration_and_frequency() -> None:
    freqs = utterance_freqs(6)
    durs = [0.3, 0.6, 1.0, 0.45, 1.5, 0.8]
    speech = make_speech(freqs, durs, gap_s=0.4)
    utts = await _run(speech.samples)
    assert len(utts) == 6
    for i, (u, f, d) in enumerate(zip(utts, freqs, durs, strict=True), start=1):
        lang, n, dur, freq = parse_echo(u.text)
        assert (lang, n, freq) == ("fr", i, f)
        assert abs(dur - d) <= 0.02
        # Audio is the utterance itself at 48 kHz.
        assert abs(u.audio.size / 48000 - d) <= 0.02
        assert u.audio.dtype == np.int16
        assert dominant_frequency(u.audio, 48000) == f
        assert abs(u.input_start_s - speech.starts[i - 1]) <= 0.02
        assert u.input_end_s > u.input_start_s


@pytest.mark.parametrize("chunk", [1, 160, 1920, 7777, [3, 2000, 17, 480]])
async def test_chunking_does_not_change_the_result(chunk: int | list[int]) -> None:
    speech = make_speech(utterance_freqs(3, base=700), [0.3, 0.5, 0.4], gap_s=0.45)
    reference = [u.text for u in await _run(speech.samples, 1920)]
    got = await _run(speech.samples, chunk)
    assert [u.text for u in got] == reference
    assert len(reference) == 3


async def test_no_target_language_is_labelled_src_and_counting_is_per_session() -> None:
    speech = make_speech([440, 880], 0.3)
    engine = EchoEngine()
    first = await _run(speech.samples, lang=None, engine=engine)
    second = await _run(speech.samples, lang="de", engine=engine)
    assert [parse_echo(u.text)[:2] for u in first] == [("src", 1), ("src", 2)]
    assert [parse_echo(u.text)[:2] for u in second] == [("de", 1), ("de", 2)]


async def test_speech_running_into_end_of_input_is_flushed() -> None:
    samples = np.concatenate([np.zeros(4800, np.int16), tone(600, 0.7)])  # no trailing silence
    utts = await _run(samples)
    assert len(utts) == 1
    assert parse_echo(utts[0].text)[3] == 600
    assert abs(utts[0].audio.size / 48000 - 0.7) <= 0.02


async def test_silence_and_short_clicks_yield_nothing() -> None:
    samples = np.zeros(24000 * 2, np.int16)
    samples[24000 : 24000 + 48] = 20000  # 2 ms click, shorter than min_speech_s
    assert await _run(samples) == []
    assert await _run(np.zeros(0, np.int16)) == []


async def test_short_gaps_do_not_split_but_long_ones_do() -> None:
    short = make_speech([500, 800], 0.4, gap_s=0.1)
    assert len(await _run(short.samples)) == 1
    long = make_speech([500, 800], 0.4, gap_s=0.4)
    assert len(await _run(long.samples)) == 2


async def test_continuous_speech_is_cut_at_max_utterance() -> None:
    samples = tone(1000, 5.0)
    utts = await _run(samples, engine=EchoEngine(max_utterance_s=2.0))
    assert [round(u.audio.size / 48000, 2) for u in utts][:2] == [2.0, 2.0]
    assert abs(sum(u.audio.size for u in utts) / 48000 - 5.0) <= 0.02
    assert [parse_echo(u.text)[1] for u in utts] == list(range(1, len(utts) + 1))


async def test_quiet_but_audible_tones_are_detected() -> None:
    speech = make_speech([400, 900], 0.5, amplitude=0.03)  # about -30 dBFS
    assert len(await _run(speech.samples)) == 2


def test_unknown_target_language_is_refused_naming_allowed_values() -> None:
    with pytest.raises(EngineSetupError) as info:
        EchoEngine().open(EngineSetup(target_language="xx", source_language=None, voice_id=None))
    assert info.value.code == 1008
    assert "fr" in info.value.message and "xx" in info.value.message


@pytest.mark.parametrize("freq", [120, 300, 440, 1010, 2500, 3400])
def test_dominant_frequency(freq: int) -> None:
    assert dominant_frequency(tone(freq, 0.25), 24000) == freq
    assert dominant_frequency(tone(freq, 2.0, rate=8000), 8000) == freq
