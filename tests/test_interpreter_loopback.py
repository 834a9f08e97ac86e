"""The interpreter bot's ``GRADIUM_WEBRTC_LOOPBACK`` mode: aiortc's ICE on 127.0.0.1 only.

Real aioice / aiortc objects on loopback (the browser tests check the same from Chromium's side).
Nothing here may send to another address even when the mode is broken: a non-loopback candidate
is checked to be dropped before any connectivity check could start, and the STUN server the
gatherer is given is a socket of ours on 127.0.0.1 that must stay silent.
"""

from __future__ import annotations

import asyncio
import importlib.util
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

pytest.importorskip(
    "aiortc", reason="Pipecat's runner is not installed: pip install 'gradium-plugins[pipecat-runner]'"
)
pytest.importorskip("pipecat.runner")

import aioice
from aiortc import RTCIceGatherer, RTCIceServer, rtcicetransport

BOT = Path(__file__).resolve().parents[1] / "examples" / "pipecat_interpreter_bot.py"


def _load_bot() -> ModuleType:
    spec = importlib.util.spec_from_file_location("example_pipecat_interpreter_bot", BOT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def loopback_connection(monkeypatch: pytest.MonkeyPatch) -> type[Any]:
    """The bot's loopback mode, installed for this test only."""
    monkeypatch.setattr(rtcicetransport, "Connection", rtcicetransport.Connection)  # restored after
    cls: type[Any] = _load_bot().use_loopback_ice()
    assert rtcicetransport.Connection is cls
    return cls


@pytest.fixture
def silent_stun() -> Iterator[socket.socket]:
    """A UDP socket on 127.0.0.1 posing as a STUN server; nothing may reach it."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        yield sock


def _received(sock: socket.socket) -> bool:
    try:
        sock.recv(2048)
    except BlockingIOError:
        return False
    return True


def test_loopback_addresses() -> None:
    bot = _load_bot()
    assert bot.is_loopback("127.0.0.1") and bot.is_loopback("127.8.9.10") and bot.is_loopback("::1")
    for other in ("192.0.2.2", "fd00::2", "0.0.0.0", "4b1f2d3e-0000.local", "localhost", ""):
        assert not bot.is_loopback(other), other


async def test_aiortc_gathers_127_only_and_asks_no_server(
    loopback_connection: type[Any], silent_stun: socket.socket
) -> None:
    host, port = silent_stun.getsockname()
    gatherer = RTCIceGatherer(iceServers=[RTCIceServer(f"stun:{host}:{port}")])
    await gatherer.gather()
    candidates = gatherer.getLocalCandidates()
    assert [(c.ip, c.type, c.protocol) for c in candidates] == [("127.0.0.1", "host", "udp")]
    await asyncio.sleep(0.2)
    assert not _received(silent_stun)
    await gatherer._connection.close()


def _candidate(host: str, port: int) -> aioice.Candidate:
    return aioice.Candidate(
        foundation="1", component=1, transport="udp", priority=2130706431, host=host, port=port, type="host"
    )


async def test_connects_over_loopback_ignoring_other_candidates(loopback_connection: type[Any]) -> None:
    bot = loopback_connection(ice_controlling=False)
    peer = loopback_connection(ice_controlling=True)
    await asyncio.gather(bot.gather_candidates(), peer.gather_candidates())
    try:
        bot.remote_username, bot.remote_password = peer.local_username, peer.local_password
        peer.remote_username, peer.remote_password = bot.local_username, bot.local_password
        # A browser also offers its other interfaces: the bot keeps none of them (TEST-NET addresses;
        # dropped before connect(), so nothing is ever sent there).
        for other in (_candidate("192.0.2.77", 9), _candidate("2001:db8::7", 9)):
            await bot.add_remote_candidate(other)
        for candidate in peer.local_candidates:
            await bot.add_remote_candidate(candidate)
        for candidate in bot.local_candidates:
            await peer.add_remote_candidate(candidate)
        await bot.add_remote_candidate(None)
        await peer.add_remote_candidate(None)
        assert [c.host for c in bot.remote_candidates] == ["127.0.0.1"]

        async with asyncio.timeout(10):
            await asyncio.gather(bot.connect(), peer.connect())
            await peer.send(b"over loopback")
            assert await bot.recv() == b"over loopback"
            await bot.send(b"and back")
            assert await peer.recv() == b"and back"
        nominated = list(bot._nominated.values())  # aioice has no public accessor
        assert [(p.local_addr[0], p.remote_addr[0]) for p in nominated] == [("127.0.0.1", "127.0.0.1")]
    finally:
        await asyncio.gather(bot.close(), peer.close())
