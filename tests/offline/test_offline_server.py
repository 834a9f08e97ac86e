"""The offline engine behind the real local server, with the project's client over a WebSocket."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from .helpers import MISSING, SKIP_REASON, recall, rms

pytestmark = [
    pytest.mark.offline,
    pytest.mark.any_loop,
    pytest.mark.skipif(bool(MISSING), reason=SKIP_REASON),
]


async def test_translates_through_the_server_and_answers_pings(offline_engine, en_speech):
    from websockets.asyncio.client import connect

    from gradium_plugins import AudioOut, EndOfStream, S2SConfig, S2SSession, TextOut
    from gradium_plugins.local import ServerLimits, serve

    # The pinger never sends setup: no setup timeout, however long the models take.
    server = await serve(engine=offline_engine, limits=ServerLimits(setup_timeout_s=None))
    try:
        config = S2SConfig(target_language="es", url=server.url, api_key=None, realtime_factor=None)
        pongs: list[float] = []
        done = asyncio.Event()

        async def pinger() -> None:
            # A second, idle connection: the server must keep answering while models run.
            async with connect(server.url) as ws:
                while not done.is_set():
                    t0 = time.perf_counter()
                    await asyncio.wait_for(await ws.ping(), timeout=5.0)
                    pongs.append(time.perf_counter() - t0)
                    await asyncio.sleep(0.05)

        ping_task = asyncio.create_task(pinger())
        texts: list[str] = []
        audio: list[np.ndarray] = []
        async with S2SSession(config) as session:
            samples = en_speech.first(3).samples
            for i in range(0, samples.size, 1920):
                await session.send_audio(samples[i : i + 1920], sample_rate=24000)
            await session.end_input()
            async for ev in session:
                if isinstance(ev, TextOut):
                    texts.append(ev.text)
                elif isinstance(ev, AudioOut):
                    assert ev.sample_rate == 48000
                    audio.append(np.frombuffer(ev.pcm, dtype="<i2"))
                elif isinstance(ev, EndOfStream):
                    break
        done.set()
        await ping_task
    finally:
        await server.close()

    assert len(texts) == 3, texts
    assert recall([("hermano", "hospital"), ("pan", "leche"), ("doctor", "paciente")], texts) >= 0.8, texts
    speech = np.concatenate(audio)
    assert speech.size / 48000 > 3.0 and rms(speech) > 300
    assert len(pongs) >= 3, "pings were not answered while translating"


async def test_unsupported_pair_refused_by_the_server(offline_engine):
    from gradium_plugins import GradiumError, S2SConfig, S2SSession
    from gradium_plugins.local import serve

    server = await serve(engine=offline_engine)
    try:
        config = S2SConfig(
            target_language="de", source_language="en", url=server.url, api_key=None, realtime_factor=None
        )
        with pytest.raises(GradiumError) as info:
            async with S2SSession(config) as session:
                await session.end_input()
                async for _ev in session:
                    pass
    finally:
        await server.close()
    assert info.value.code == 1008
    assert "English -> German" in info.value.message and "en->es" in info.value.message
    assert not info.value.retryable
