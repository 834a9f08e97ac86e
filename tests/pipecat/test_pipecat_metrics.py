"""Latency metrics from the core's utterance events: TTFB from the end of the input speech."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

pytest.importorskip("pipecat")

from pipecat.frames.frames import MetricsFrame, TranslationFrame
from pipecat.metrics.metrics import ProcessingMetricsData, TTFAMetricsData, TTFBMetricsData
from pipecat.pipeline.worker import PipelineParams

from gradium_plugins.local.echo import EchoEngine
from gradium_plugins.pipecat import GradiumS2SService
from tests.conftest import parse_echo, tone
from tests.pipecat.pipecat_harness import FAST_SESSION, audio_frames, of_type, running

RATE = 16000
METRICS = PipelineParams(audio_in_sample_rate=RATE, audio_out_sample_rate=48000, enable_metrics=True)


def speech_with_a_burst(utterance_s: float) -> tuple[np.ndarray, list[int]]:
    """Three utterances with a short noise burst after the first: heard as speech by the
    client's pause detector, ignored by a server that needs 0.3 s of voice. The next speech
    comes long after the burst, as in a conversation, so the core can tell it got nothing."""
    silence = np.zeros(round(0.7 * RATE), np.int16)
    long_silence = np.zeros(round(4.5 * RATE), np.int16)
    parts = [silence, tone(300, utterance_s, RATE), silence, tone(2000, 0.12, RATE), long_silence]
    for freq in (500, 700):
        parts += [tone(freq, utterance_s, RATE), silence]
    return np.concatenate(parts), [300, 500, 700]


async def test_ttfb_runs_from_the_end_of_speech_and_skips_untranslated_input(make_server: Any) -> None:
    utterance_s = 1.5
    engine = EchoEngine(min_speech_s=0.3)
    server = await make_server(engine=engine)
    samples, freqs = speech_with_a_burst(utterance_s)
    svc = GradiumS2SService(url=server.url, settings=GradiumS2SService.Settings(target_language="fr"),
                            session_options=FAST_SESSION)
    async with running(svc, params=METRICS) as h:
        await h.feed(audio_frames(samples, RATE), realtime=1.25)
        await h.end()
    assert [parse_echo(f.text)[3] for f in of_type(h.down, TranslationFrame)] == freqs  # burst ignored
    data = [d for f in of_type(h.down, MetricsFrame) for d in f.data if d.processor == svc.name]
    ttfb = [d.value for d in data if isinstance(d, TTFBMetricsData) and d.value > 0]
    # One per translated utterance; none for the burst, and the burst shifts nothing: each is
    # measured from the end of its own speech (from its start it would exceed utterance_s).
    assert len(ttfb) == len(freqs)
    assert all(0 < v < 0.6 * utterance_s for v in ttfb)
    ttfa = [d.ttfa for d in data if isinstance(d, TTFAMetricsData) and d.ttfa > 0]
    assert len(ttfa) == len(freqs) and all(a >= b for a, b in zip(ttfa, ttfb, strict=True))
    processing = [d.value for d in data if isinstance(d, ProcessingMetricsData) and d.value > 0]
    assert len(processing) == len(freqs)
    assert all(p >= b for p, b in zip(processing, ttfb, strict=True))
