"""The offline engine with networking disabled, in a fresh process with a fresh cache and home.

The child process installs a socket guard (any non-loopback connect or name lookup is recorded
and fails) and, when this test runs as root with ``unshare`` available, also runs in a network
namespace with no interface but ``lo`` (so even Apertium's subprocesses have no network).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from gradium_plugins.audio import write_wav

from .helpers import MISSING, RATE, SKIP_REASON, recall

pytestmark = [pytest.mark.offline, pytest.mark.skipif(bool(MISSING), reason=SKIP_REASON)]

CHILD = textwrap.dedent(
    """
    import asyncio, errno, ipaddress, json, socket, sys

    attempts = []

    def _local(host):
        if host in ("localhost", "", None):
            return True
        try:
            return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
        except ValueError:
            return False

    _connect, _connect_ex, _getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo

    def _guard(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _local(address[0]):
            attempts.append(repr(address))
            raise OSError(errno.ENETUNREACH, "network disabled by the test")

    def connect(self, address):
        _guard(self, address)
        return _connect(self, address)

    def connect_ex(self, address):
        _guard(self, address)
        return _connect_ex(self, address)

    def getaddrinfo(host, *args, **kwargs):
        if not _local(host):
            attempts.append(f"getaddrinfo {host!r}")
            raise socket.gaierror(socket.EAI_NONAME, "network disabled by the test")
        return _getaddrinfo(host, *args, **kwargs)

    socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = connect, connect_ex, getaddrinfo

    from gradium_plugins.audio import iter_chunks, read_wav
    from gradium_plugins.local.engine import EngineSetup
    from gradium_plugins.local.offline import OfflineEngine

    async def main():
        engine = OfflineEngine()
        await engine.start(wait=True)
        samples, _rate = read_wav(sys.argv[1])

        async def chunks():
            for chunk in iter_chunks(samples, 1920):
                yield chunk

        session = engine.open(EngineSetup(target_language="es", source_language="en", voice_id=None))
        utts = [u async for u in session.run(chunks())]
        return {
            "texts": [u.text for u in utts],
            "audio_s": [u.audio.size / 48000 for u in utts],
            "attempts": attempts,
            "interfaces": [name for _i, name in socket.if_nameindex()],
        }

    print(json.dumps(asyncio.run(main())))
    """
)


def _unshare_available() -> bool:
    if shutil.which("unshare") is None or os.geteuid() != 0:
        return False
    return subprocess.run(["unshare", "-n", "true"], capture_output=True, check=False).returncode == 0


def test_runs_with_network_disabled(en_speech, tmp_path):
    wav = tmp_path / "in.wav"
    write_wav(wav, en_speech.first(2).samples, RATE)
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "GRADIUM_", "XDG_"))}
    # Fresh cache (the Whisper model is assembled and verified again) and a fresh home.
    env.update(HOME=str(home), GRADIUM_PLUGINS_CACHE=str(tmp_path / "cache"), PYTHONUNBUFFERED="1")
    netns = _unshare_available()
    cmd = (["unshare", "-n"] if netns else []) + [sys.executable, str(script), str(wav)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=180, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["attempts"] == [], result["attempts"]
    if netns:
        assert result["interfaces"] == ["lo"], result["interfaces"]
    assert len(result["texts"]) == 2 and all(s > 0.5 for s in result["audio_s"]), result
    assert recall([("hermano", "hospital"), ("pan", "leche")], result["texts"]) >= 0.75, result["texts"]
    assert (tmp_path / "cache").is_dir() and any((tmp_path / "cache").iterdir())
