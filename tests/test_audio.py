import io

import numpy as np
import pytest

from gradium_plugins import AudioFormatError
from gradium_plugins import audio as a
from gradium_plugins.formats import get_format


def test_float_clips_never_wraps():
    x = np.array([1.0, 1.5, -1.0, -2.0, 0.0, 0.5], dtype=np.float32)
    y = a.to_int16_mono(x)
    assert y.tolist() == [32767, 32767, -32768, -32768, 0, 16384]


def test_bytes_and_interleaved_stereo_downmix():
    stereo = np.array([[1000, 3000], [-2000, -4000]], dtype=np.int16)
    assert a.to_int16_mono(stereo).tolist() == [2000, -3000]
    assert a.to_int16_mono(stereo.tobytes(), channels=2).tolist() == [2000, -3000]
    assert a.to_int16_mono(stereo.reshape(-1), channels=2).tolist() == [2000, -3000]


@pytest.mark.parametrize(
    ("data", "channels"),
    [
        (b"\x00\x01\x02", 1),
        (b"\x00" * 6, 2),
        (np.array([np.nan], np.float32), 1),
        (np.zeros(3, np.int32), 1),
        (np.zeros((2, 2, 2), np.int16), 1),
        ("text", 1),
    ],
)
def test_bad_audio_raises(data, channels):
    with pytest.raises(AudioFormatError):
        a.to_int16_mono(data, channels)


def test_empty_input_is_a_noop():
    assert a.to_int16_mono(b"").size == 0


@pytest.mark.parametrize("rate", [8000, 16000, 22050, 44100, 48000])
def test_streaming_resampler_keeps_tail(rate):
    t = np.arange(rate * 2) / rate
    x = (np.sin(2 * np.pi * 440 * t) * 10000).astype(np.int16)
    rs = a.StreamResampler(rate, 24000)
    out = [rs.process(c) for c in a.iter_chunks(x, 317)]
    out.append(rs.flush())
    y = np.concatenate(out)
    assert abs(y.size - 48000) <= 1
    # Same as one-shot resampling (state carried across chunks).
    ref = a.resample(x, rate, 24000)
    assert np.max(np.abs(y[1000:-1000].astype(int) - ref[1000:-1000].astype(int))) < 50


def test_chunker_exact_80ms():
    ch = a.Chunker(1920)
    chunks = ch.push(np.ones(5000, np.int16))
    assert [c.size for c in chunks] == [1920, 1920] and ch.pending == 1160
    assert ch.flush().size == 1160 and ch.pending == 0


def test_g711_roundtrip_is_close_and_stable():
    x = (np.sin(np.linspace(0, 100, 8000)) * 20000).astype(np.int16)
    for enc, dec in ((a.ulaw_encode, a.ulaw_decode), (a.alaw_encode, a.alaw_decode)):
        y = dec(enc(x))
        assert np.max(np.abs(y.astype(int) - x)) <= 1024
        assert np.array_equal(dec(enc(y)), y)  # decode(encode(decoded)) is exact


def test_wire_decoder_wav_stream_header():
    fmt = get_format("wav")
    dec = a.WireDecoder(fmt)
    pcm = np.arange(100, dtype=np.int16)
    first = a.wav_header(16000) + pcm[:51].tobytes()[:-1]  # split mid-sample
    out = np.concatenate([dec.decode(first), dec.decode(pcm.tobytes()[101:])])
    assert dec.sample_rate == 16000 and out.tolist() == pcm.tolist()


def test_wav_file_roundtrip_any_width_and_channels(tmp_path):
    import wave

    path = tmp_path / "s.wav"
    stereo24 = np.array([[0x123456, -0x123456], [0x7FFFFF, 0x7FFFFF]], dtype=np.int32)
    raw = b"".join(int(v).to_bytes(3, "little", signed=True) for v in stereo24.reshape(-1))
    with wave.open(str(path), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(3)
        w.setframerate(44100)
        w.writeframes(raw)
    x, rate = a.read_wav(path)
    assert rate == 44100 and x.tolist() == [0, 0x7FFF]
    buf = io.BytesIO()
    a.write_wav(buf, x, rate)
    buf.seek(0)
    assert a.read_wav(buf)[0].tolist() == x.tolist()


def test_read_wav_rejects_non_wav(tmp_path):
    p = tmp_path / "x.wav"
    p.write_bytes(b"nope")
    with pytest.raises(AudioFormatError, match="integer PCM"):
        a.read_wav(p)


def test_pause_detector_finds_utterances():
    rate = 24000
    tone = (np.sin(np.arange(rate) * 2 * np.pi * 300 / rate) * 8000).astype(np.int16)
    sig = np.concatenate(
        [np.zeros(rate // 2, np.int16), tone, np.zeros(rate // 2, np.int16), tone[: rate // 2]]
    )
    det = a.PauseDetector(rate)
    events = []
    for c in a.iter_chunks(sig, 1920):
        events += det.push(c)
    events += det.flush()
    assert [k for k, _ in events] == ["start", "end", "start", "end"]
    assert abs(events[0][1] - rate // 2) <= 240 and abs(events[1][1] - 3 * rate // 2) <= 240
