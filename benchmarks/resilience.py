"""Downtime per reconnect and per session renewal, measured against the local echo server.

Run: python benchmarks/resilience.py

Reconnect: connections are aborted (TCP, no close frame) at seeded random points of a stream
paced at 4x real time; the figure is `Reconnected.downtime_s` (failure detected -> new session
ready), plus how much input was replayed.

Renewal: the server caps sessions at 6 s of input and the client renews from 2 s; the figure is
the wall-clock gap between consecutive translated utterances across a switch, compared with the
same gap inside one session (the peer run, same process, same time).
"""

from __future__ import annotations

import asyncio
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.conftest import make_speech

from gradium_plugins import Reconnected, S2SConfig, S2SSession, SessionRenewed, TextOut
from gradium_plugins.local import FaultPlan, serve


async def run(config: S2SConfig, speech, pace: float) -> list[tuple[float, object]]:
    out: list[tuple[float, object]] = []
    async with S2SSession(config) as session:

        async def feed() -> None:
            n = round(speech.rate * 0.02)
            t0 = time.monotonic()
            for i in range(0, speech.samples.size, n):
                await session.send_audio(speech.samples[i : i + n], sample_rate=speech.rate)
                ahead = (i + n) / speech.rate / pace - (time.monotonic() - t0)
                if ahead > 0:
                    await asyncio.sleep(ahead)
            await session.end_input()

        task = asyncio.create_task(feed())
        async for ev in session:
            out.append((time.monotonic(), ev))
        await task
    return out


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


async def main() -> None:
    rng = random.Random(7)
    points = {i: rng.randint(6, 30) for i in range(10)}
    server = await serve(faults=lambda i: FaultPlan(abort_after_messages=points[i]) if i in points else None)
    speech = make_speech([300 + 20 * i for i in range(60)], durations=0.6, gap_s=0.5)
    cfg = S2SConfig(target_language="fr", url=server.url, reconnect_backoff_s=0.05, heartbeat_interval=1.0)
    events = await run(cfg, speech, pace=4.0)
    rec = [e for _, e in events if isinstance(e, Reconnected)]
    down = [r.downtime_s * 1000 for r in rec]
    print(
        f"reconnects: {len(rec)}  downtime ms: median {statistics.median(down):.1f}  "
        f"p90 {pct(down, 0.9):.1f}  "
        f"max {max(down):.1f}  replayed s: median {statistics.median(r.replayed_s for r in rec):.2f}"
    )
    await server.close()

    server = await serve(max_session_s=6.0)
    cfg = S2SConfig(
        target_language="fr", url=server.url, max_session_s=6.0, renew_margin_s=4.0, trailing_silence_s=0.5
    )
    events = await run(
        cfg, make_speech([300 + 20 * i for i in range(40)], durations=0.6, gap_s=0.5), pace=2.0
    )
    across, inside = [], []
    last_text_t = None
    renewed = False
    for t, ev in events:
        if isinstance(ev, SessionRenewed):
            renewed = True
        elif isinstance(ev, TextOut):
            if last_text_t is not None:
                (across if renewed else inside).append((t - last_text_t) * 1000)
            last_text_t, renewed = t, False
    n_ren = sum(isinstance(e, SessionRenewed) for _, e in events)
    print(
        f"renewals: {n_ren}  utterance-to-utterance gap ms (input gap 1100 ms at 2x = 550 ms): "
        f"across a switch median {statistics.median(across):.1f} max {max(across):.1f}; "
        f"inside a session median {statistics.median(inside):.1f} max {max(inside):.1f}; "
        f"ratio {statistics.median(across) / statistics.median(inside):.2f}"
    )
    await server.close()


if __name__ == "__main__":
    asyncio.run(main())
