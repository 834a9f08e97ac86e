"""The session against hostile servers on 127.0.0.1: no event-loop freeze, no reconnect storm,
progress is not liveness, no redirect with the key, byte-bounded memory, clear errors.

Each server here is a small ``websockets`` handler doing one bad thing; a ticker task measures
how late the event loop runs it, which is how a freeze shows (a spinning loop starves it).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import pytest
from aiohttp import web
from websockets.asyncio.server import ServerConnection, serve

from gradium_plugins import (
    AuthenticationError,
    ConnectionLostError,
    GradiumError,
    ProtocolError,
    S2SConfig,
    S2SSession,
    ServerError,
    TextOut,
    UpdateRejected,
)
from gradium_plugins.errors import RedirectError
from tests.conftest import make_speech, parse_echo

# The frameworks run the session on uvloop: every test here runs on both loops.
pytestmark = pytest.mark.any_loop

Handler = Callable[[ServerConnection, int], Awaitable[None]]


@asynccontextmanager
async def hostile(handler: Handler) -> AsyncIterator[dict[str, Any]]:
    """Serve ``handler(ws, n)`` (n: connection number from 0) on a free loopback port."""
    state: dict[str, Any] = {"connections": 0}
    live: set[asyncio.Task[Any]] = set()

    async def wrapped(ws: ServerConnection) -> None:
        n = state["connections"]
        state["connections"] += 1
        task = asyncio.current_task()
        assert task is not None
        live.add(task)
        try:
            await handler(ws, n)
        except Exception:  # noqa: BLE001 - a hostile peer's own errors do not matter
            pass

    async with serve(wrapped, "127.0.0.1", 0, max_size=None, close_timeout=0.2) as server:
        port = server.sockets[0].getsockname()[1]
        state["url"] = f"ws://127.0.0.1:{port}/api/speech/s2s"
        try:
            yield state
        finally:
            for task in live:  # handlers that linger must not hold the test up
                task.cancel()


class LoopWatch:
    """Measures the worst lateness of a 20 ms periodic task: a frozen loop shows as seconds."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            t = time.monotonic()
            await asyncio.sleep(0.02)
            self.worst = max(self.worst, time.monotonic() - t - 0.02)

    async def __aenter__(self) -> LoopWatch:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


async def ready(ws: ServerConnection) -> None:
    await ws.recv()  # setup
    await ws.send(json.dumps({"type": "ready", "request_id": "r", "sample_rate": 48000, "frame_size": 3840}))


def cfg(url: str, **kw: Any) -> S2SConfig:
    kw.setdefault("target_language", "fr")
    kw.setdefault("reconnect_backoff_s", 0.05)
    kw.setdefault("heartbeat_interval", 1.0)
    return S2SConfig(url=url, **kw)


async def feed(session: S2SSession, seconds: float, pace: float = 4.0) -> None:
    speech = make_speech([300, 450, 600], durations=0.5, gap_s=0.5)
    step = 960
    samples = np.resize(speech.samples, round(seconds * 24000))
    for i in range(0, samples.size, step):
        await session.send_audio(samples[i : i + step], sample_rate=24000)
        await asyncio.sleep(step / 24000 / pace)
    await session.end_input()


async def run(config: S2SConfig, seconds: float = 3.0, limit_s: float = 30.0) -> list[Any]:
    events: list[Any] = []
    async with asyncio.timeout(limit_s):
        async with S2SSession(config) as session:
            feeder = asyncio.create_task(feed(session, seconds))
            try:
                async for ev in session:
                    events.append(ev)
            finally:
                feeder.cancel()
    return events


# --- 1. no freeze -------------------------------------------------------------------------------

BAD_AFTER_READY = {
    "malformed_json": lambda ws: ws.send("{not json"),
    "binary_frame": lambda ws: ws.send(b"\x00\x01"),
    "bad_base64": lambda ws: ws.send(json.dumps({"type": "audio", "audio": "!!!"})),
    "error_1011": lambda ws: ws.send(json.dumps({"type": "error", "message": "boom", "code": 1011})),
    "close_1011": lambda ws: ws.close(1011, "internal"),
    "tcp_abort": lambda ws: _abort(ws),
}


async def _abort(ws: ServerConnection) -> None:
    ws.transport.abort()


@pytest.mark.parametrize("fault", sorted(BAD_AFTER_READY))
async def test_reconnect_that_fails_right_after_ready_never_freezes_the_loop(fault):
    async def handler(ws: ServerConnection, n: int) -> None:
        await ready(ws)
        if n == 0:
            await asyncio.sleep(0.3)  # the first connection fails mid-stream
        await BAD_AFTER_READY[fault](ws)
        await asyncio.sleep(5)

    async with hostile(handler) as srv, LoopWatch() as watch:
        with pytest.raises(GradiumError):
            config = cfg(srv["url"], max_reconnect_attempts=3, reconnect_backoff_max_s=0.2)
            await run(config, seconds=3.0)
    assert watch.worst < 0.5, f"event loop stalled for {watch.worst:.2f} s"
    assert srv["connections"] <= 5


async def test_standby_ready_late_holds_input_without_spinning():
    """Input reaches the renewal deadline before the standby is ready: held, not spun on."""

    async def handler(ws: ServerConnection, n: int) -> None:
        if n > 0:
            await asyncio.sleep(3.0)  # the standby's ready comes late
        await ready(ws)
        async for _ in ws:
            pass

    async with hostile(handler) as srv, LoopWatch() as watch:
        config = cfg(
            srv["url"], max_session_s=6.0, renew_margin_s=3.5, trailing_silence_s=0.5, drain_timeout=3
        )
        async with S2SSession(config) as session:
            t0 = time.monotonic()
            samples = np.zeros(960, np.int16)
            while time.monotonic() - t0 < 5.0:  # 10 s of input at 2x real time
                await session.send_audio(samples)
                await asyncio.sleep(0.02)
    assert watch.worst < 0.5, f"event loop stalled for {watch.worst:.2f} s"


# --- 2. no reconnect storm ------------------------------------------------------------------------


@pytest.mark.parametrize("code", [1000, 1001, 1011])
async def test_accept_then_close_server_gets_no_storm(code):
    async def handler(ws: ServerConnection, n: int) -> None:
        await ready(ws)
        await ws.close(code)

    async with hostile(handler) as srv:
        t0 = time.monotonic()
        with pytest.raises(ConnectionLostError, match="in a row failed"):
            await run(cfg(srv["url"], reconnect_backoff_s=0.05, max_reconnect_attempts=4), seconds=30)
        took = time.monotonic() - t0
    # A budget over the session: attempts stop after max_reconnect_attempts, with backoff between
    # (main reset it on every ready: thousands of connections).
    assert srv["connections"] == 5, srv["connections"]
    assert took > 0.05 * (1 + 2 + 4) * 0.5


async def test_persistent_session_keeps_retrying_at_the_capped_rate():
    async def handler(ws: ServerConnection, n: int) -> None:
        await ready(ws)
        await ws.close(1011)

    async with hostile(handler) as srv:
        config = cfg(srv["url"], persistent=True, reconnect_backoff_s=0.05, reconnect_backoff_max_s=0.4)
        session = S2SSession(config)
        await session.start()
        for _ in range(100):
            await session.send_audio(np.zeros(960, np.int16))
            await asyncio.sleep(0.02)
        assert not session.closed  # network failures never end a persistent session
        await session.aclose()
    # 2 s at a capped 0.4 s (±50 %) backoff: a handful of attempts, not hundreds.
    assert 3 <= srv["connections"] <= 16, srv["connections"]


# --- 3. pongs are not progress ------------------------------------------------------------------


async def test_pongs_do_not_defeat_drain_timeout():
    async def handler(ws: ServerConnection, n: int) -> None:
        await ready(ws)
        async for _ in ws:  # answers pings (websockets does), never finishes
            pass

    async with hostile(handler) as srv:
        t0 = time.monotonic()
        with pytest.raises(ConnectionLostError, match="drain_timeout"):
            await run(
                cfg(srv["url"], drain_timeout=1.5, heartbeat_interval=0.2, reconnect=False), seconds=0.5
            )
    assert time.monotonic() - t0 < 10


# --- 4. no redirects with the key -------------------------------------------------------------------


async def test_websocket_redirect_is_refused_and_the_key_stays_home():
    seen: list[str | None] = []

    async def target(request: web.Request) -> web.Response:
        seen.append(request.headers.get("x-api-key"))
        return web.Response(text="gotcha")

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound(f"http://127.0.0.1:{tport}/steal?token=secret")

    apps = []
    for handler in (target, redirect):
        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        apps.append(runner)
    tport = apps[0].addresses[0][1]
    rport = apps[1].addresses[0][1]
    try:
        config = S2SConfig(
            target_language="fr", url=f"ws://127.0.0.1:{rport}/api/speech/s2s", api_key="k-123456"
        )
        for mode in ("header", "token"):
            with pytest.raises(RedirectError) as info:
                async with S2SSession(config.replace(auth_mode=mode)):
                    pass
            assert info.value.code == 302 and f"127.0.0.1:{tport}/steal" in str(info.value)
            assert "secret" not in str(info.value) and "k-123456" not in str(info.value)
    finally:
        for runner in apps:
            await runner.cleanup()
    assert seen == []


# --- 5. memory is bounded in bytes ----------------------------------------------------------------


async def test_huge_messages_with_a_paused_consumer_stay_within_the_byte_budget():
    big = base64.b64encode(np.full(2 * 1024 * 1024, 1000, np.int16).tobytes()).decode()  # 4 MiB of PCM

    sent = 0

    async def handler(ws: ServerConnection, n: int) -> None:
        nonlocal sent
        await ready(ws)
        for _ in range(20):
            await ws.send(json.dumps({"type": "audio", "audio": big}))
            sent += 1
        async for _ in ws:
            pass

    async with hostile(handler) as srv:
        async with S2SSession(cfg(srv["url"], heartbeat_interval=None)) as session:
            it = aiter(session)
            await anext(it)  # ready
            await anext(it)  # one audio: then the consumer pauses
            await asyncio.sleep(1.5)
            # The reader stopped after the budget: at most a message past it is held.
            held = session._m.outputs.bytes
            assert held <= 512 * 1024 + 4 * 1024 * 1024 + 1, held
            assert sent < 20


# --- 6. clear errors ----------------------------------------------------------------------------------


async def test_early_end_of_stream_is_not_success():
    async def handler(ws: ServerConnection, n: int) -> None:
        await ready(ws)
        await ws.send(json.dumps({"type": "end_of_stream"}))
        await asyncio.sleep(2)

    async with hostile(handler) as srv:
        with pytest.raises(ConnectionLostError, match="before the input ended"):
            await run(cfg(srv["url"], reconnect=False), seconds=2.0)


async def test_application_close_code_is_final_and_keeps_its_reason():
    async def handler(ws: ServerConnection, n: int) -> None:
        await ready(ws)
        await ws.close(4003, "credits exhausted")

    async with hostile(handler) as srv:
        with pytest.raises(ServerError, match="credits exhausted") as info:
            await run(cfg(srv["url"]), seconds=2.0)
    assert info.value.code == 4003 and not info.value.retryable
    assert srv["connections"] == 1


async def test_1008_close_reason_is_in_the_message():
    async def handler(ws: ServerConnection, n: int) -> None:
        await ws.recv()
        await ws.close(1008, "API key is revoked")

    async with hostile(handler) as srv:
        with pytest.raises(AuthenticationError, match="API key is revoked"):
            await run(cfg(srv["url"]), seconds=1.0)


async def test_ready_sample_rate_mismatch_is_a_clear_error():
    async def handler(ws: ServerConnection, n: int) -> None:
        await ws.recv()
        await ws.send(json.dumps({"type": "ready", "request_id": "r", "sample_rate": 24000}))
        await asyncio.sleep(2)

    async with hostile(handler) as srv:
        with pytest.raises(ProtocolError, match=r"sample_rate=24000.*48000"):
            await run(cfg(srv["url"]), seconds=1.0)


async def test_odd_length_bytes_are_carried_not_shifted(echo_server):
    """s16le bytes split at odd offsets reach the server intact (a shift would turn tones to noise)."""
    speech = make_speech([400, 700], durations=0.6, gap_s=0.6)
    raw = speech.samples.tobytes()
    texts = []
    async with S2SSession(cfg(echo_server.url)) as session:
        for i in range(0, len(raw), 1001):
            await session.send_audio(raw[i : i + 1001], sample_rate=speech.rate)
        await session.end_input()
        async for ev in session:
            if isinstance(ev, TextOut):
                texts.append(ev.text)
    assert [parse_echo(t)[3] for t in texts] == [400, 700]


# --- 7. a refused settings change is not fatal ------------------------------------------------------


async def test_rejected_update_keeps_the_live_translation(make_server):
    from gradium_plugins.local import FaultPlan

    server = await make_server(faults=lambda i: FaultPlan(reject_setup="voice not found") if i == 1 else None)
    speech = make_speech([300, 450, 600, 750], durations=0.5, gap_s=0.6)
    events: list[Any] = []
    async with S2SSession(cfg(server.url)) as session:

        async def produce() -> None:
            step = 960
            for i in range(0, speech.samples.size, step):
                if i == step * 30:
                    await session.update(voice_id="bad-voice-1234")
                await session.send_audio(speech.samples[i : i + step])
                await asyncio.sleep(step / 24000 / 2)
            await session.end_input()

        task = asyncio.create_task(produce())
        async for ev in session:
            events.append(ev)
        await task
        assert session.config.voice_id != "bad-voice-1234"
    rejected = [e for e in events if isinstance(e, UpdateRejected)]
    assert len(rejected) == 1 and "voice not found" in str(rejected[0].error)
    assert rejected[0].changes == {"voice_id": "bad-voice-1234"}
    got = [parse_echo(e.text)[3] for e in events if isinstance(e, TextOut)]
    assert got == speech.freqs
