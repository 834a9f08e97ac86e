"""The command line, run as a user would (subprocess), against the embedded echo engine."""

from __future__ import annotations

import os
import subprocess
import sys

from gradium_plugins.audio import read_wav, write_wav
from tests.conftest import make_speech


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("GRADIUM_API_KEY", "GRADIUM_S2S_URL")}
    base.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "gradium_plugins.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=base,
    )


def test_translate_with_embedded_echo_engine(tmp_path):
    speech = make_speech([300, 500, 700], rate=16000)
    src, out = tmp_path / "in.wav", tmp_path / "out.wav"
    write_wav(src, speech.samples, 16000)
    proc = run_cli("translate", str(src), "--to", "es", "-o", str(out), "--engine", "echo")
    assert proc.returncode == 0, proc.stderr
    assert "embedded 'echo' engine" in proc.stderr  # says it is not the cloud
    lines = proc.stdout.strip()
    assert lines.count("[es] utterance") == 3
    samples, rate = read_wav(out)
    assert rate == 48000 and abs(samples.size / rate - 1.8) < 0.25


def test_translate_reports_errors_clearly(tmp_path):
    proc = run_cli("translate", str(tmp_path / "missing.wav"), "--to", "fr", "--engine", "echo")
    assert proc.returncode == 2 and "missing.wav" in proc.stderr
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF????")
    proc = run_cli("translate", str(bad), "--to", "fr", "--engine", "echo")
    assert proc.returncode == 2 and "AudioFormatError" in proc.stderr
    proc = run_cli("translate", str(bad), "--to", "xx")
    assert proc.returncode == 2 and "invalid choice" in proc.stderr


def test_cloud_without_key_is_refused_before_connecting(tmp_path):
    src = tmp_path / "in.wav"
    write_wav(src, make_speech([300]).samples, 24000)
    proc = run_cli("translate", str(src), "--to", "fr", "--url", "wss://api.gradium.ai/api/speech/s2s")
    assert proc.returncode == 2 and "api_key is required" in proc.stderr


def test_voices_lists_flagship_voices():
    proc = run_cli("voices", "--language", "fr")
    assert proc.returncode == 0 and "b35yykvVppLXyw_l  Elise  (default)" in proc.stdout


async def test_fetch_voices_from_the_local_server(make_server):
    from gradium_plugins import AuthenticationError, S2SConfig
    from gradium_plugins.voices import fetch_voices

    server = await make_server(api_key="k-1")
    voices = await fetch_voices(S2SConfig(target_language="fr", url=server.url, api_key="k-1"), page_size=5)
    assert len(voices) == 12 and {v.language for v in voices} == {"en", "fr", "de", "es", "pt"}
    fr = await fetch_voices(S2SConfig(target_language="fr", url=server.url, api_key="k-1"), language="fr")
    assert [v.name for v in fr] == ["Elise", "Leo"]
    import pytest

    with pytest.raises(AuthenticationError):
        await fetch_voices(S2SConfig(target_language="fr", url=server.url, api_key="wrong"))


def test_voices_remote_cli(tmp_path):
    import asyncio
    import threading

    from gradium_plugins.local import serve

    ready = threading.Event()
    box: dict = {}

    def run_server() -> None:
        async def main() -> None:
            server = await serve()
            box["url"], box["stop"], box["loop"] = server.url, asyncio.Event(), asyncio.get_running_loop()
            ready.set()
            await box["stop"].wait()
            await server.close()

        asyncio.run(main())

    t = threading.Thread(target=run_server)
    t.start()
    ready.wait(10)
    try:
        proc = run_cli("voices", "--remote", "--language", "es", "--url", box["url"])
    finally:
        box["loop"].call_soon_threadsafe(box["stop"].set)
        t.join(10)
    assert proc.returncode == 0, proc.stderr
    assert "es  B36pbz5_UoWn4BDl  Valentina" in proc.stdout
