"""Headless Chromium driven over the DevTools protocol (a WebSocket), with nothing but `websockets`.

Only what the browser tests need: start Chromium on a page with a fake microphone playing a WAV
file, evaluate JavaScript in it, take a screenshot, and stop it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
from websockets.asyncio.client import ClientConnection, connect

INSTALL_HINT = (
    "headless Chromium is needed for the browser tests; install it with: "
    "sudo bash scripts/install-offline.sh  (or: sudo apt-get install -y --no-install-recommends chromium)"
)
_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    """The Chromium executable (``$CHROMIUM`` first), or None."""
    env = os.environ.get("CHROMIUM")
    if env:
        return shutil.which(env) or (env if Path(env).exists() else None)
    return next((p for p in map(shutil.which, _CANDIDATES) if p), None)


class JavaScriptError(RuntimeError):
    """An exception thrown by evaluated JavaScript."""


class Browser:
    """One headless Chromium with one page, driven over the DevTools protocol.

    Use ``async with Browser.launch(...) as browser``.
    """

    def __init__(self, proc: asyncio.subprocess.Process, ws: ClientConnection, profile: Path) -> None:
        self.proc = proc
        self._ws = ws
        self._profile = profile
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.console: list[str] = []
        self._reader = asyncio.create_task(self._read())

    @classmethod
    @contextlib.asynccontextmanager
    async def launch(cls, url: str, fake_audio: Path, profile: Path, timeout_s: float = 30.0) -> Any:
        """Start Chromium on ``url`` with ``fake_audio`` (a WAV file) as its microphone."""
        exe = find_chromium()
        if exe is None:
            raise RuntimeError(INSTALL_HINT)
        profile.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once, tiny
        args = [
            exe,
            "--headless=new",
            "--no-sandbox",  # root in a container: Chromium's sandbox needs user namespaces
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--mute-audio",
            "--autoplay-policy=no-user-gesture-required",
            "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={fake_audio}%noloop",
            # Plain host candidates (no mDNS names, which aiortc cannot resolve).
            "--disable-features=WebRtcHideLocalIpsWithMdns",
            # WebRTC over loopback: Chromium leaves 127.0.0.1 out of its candidates without this, and
            # the bot under test (GRADIUM_WEBRTC_LOOPBACK=1) answers loopback only.
            "--allow-loopback-in-peer-connection",
            # No name lookups: with --disable-background-networking Chromium still asks DNS for
            # accounts.google.com, update.googleapis.com... (test traffic stays on 127.0.0.1).
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            "--window-size=900,640",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            f"--user-data-dir={profile}",
            url,
        ]
        log_path = profile / "chromium.log"
        with log_path.open("wb") as log:
            proc = await asyncio.create_subprocess_exec(
                *args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        browser: Browser | None = None
        try:
            port_file = profile / "DevToolsActivePort"
            async with asyncio.timeout(timeout_s):
                while not port_file.exists() or not port_file.read_text().strip():
                    if proc.returncode is not None:
                        tail = log_path.read_text(errors="replace")[-1500:]
                        raise RuntimeError(f"Chromium exited ({proc.returncode}): {tail}\n{INSTALL_HINT}")
                    await asyncio.sleep(0.1)
                port = int(port_file.read_text().split()[0])
                async with aiohttp.ClientSession() as http:
                    while True:
                        async with http.get(f"http://127.0.0.1:{port}/json/list") as resp:
                            pages = [t for t in await resp.json() if t.get("type") == "page"]
                        if pages:
                            break
                        await asyncio.sleep(0.1)
                ws = await connect(pages[0]["webSocketDebuggerUrl"], max_size=2**26, ping_interval=None)
            browser = cls(proc, ws, profile)
            await browser.send("Runtime.enable")
            yield browser
        finally:
            if browser is not None:
                await browser.close()
            if proc.returncode is None:
                proc.terminate()
                try:
                    await asyncio.wait_for(proc.wait(), 10)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()

    async def _read(self) -> None:
        async for raw in self._ws:
            msg = json.loads(raw)
            fut = self._pending.pop(msg.get("id", -1), None)
            if fut is not None and not fut.done():
                fut.set_result(msg)
            elif msg.get("method") == "Runtime.consoleAPICalled":
                args = msg["params"].get("args", [])
                self.console.append(" ".join(str(a.get("value", a.get("description", ""))) for a in args))
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(ConnectionError("DevTools connection closed"))

    async def send(self, method: str, timeout_s: float = 30.0, **params: Any) -> dict[str, Any]:
        """Call a DevTools method and return its result."""
        msg_id = next(self._ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[msg_id] = fut
        await self._ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        reply = await asyncio.wait_for(fut, timeout_s)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        result: dict[str, Any] = reply.get("result", {})
        return result

    async def evaluate(self, expression: str, timeout_s: float = 30.0) -> Any:
        """Evaluate JavaScript in the page (promises awaited) and return its JSON value."""
        result = await self.send(
            "Runtime.evaluate",
            timeout_s=timeout_s,
            expression=expression,
            awaitPromise=True,
            returnByValue=True,
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise JavaScriptError(f"{text}\nconsole: {self.console[-10:]}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout_s: float, interval_s: float = 0.2) -> Any:
        """Poll ``expression`` until it is truthy; return its value."""
        async with asyncio.timeout(timeout_s):
            while True:
                value = await self.evaluate(expression)
                if value:
                    return value
                await asyncio.sleep(interval_s)

    async def screenshot(self, path: Path) -> None:
        """Save a PNG screenshot of the page."""
        result = await self.send("Page.captureScreenshot", format="png")
        path.write_bytes(base64.b64decode(result["data"]))  # noqa: ASYNC240 - small file

    async def close(self) -> None:
        """Close the DevTools connection (the browser process is stopped by ``launch``)."""
        with contextlib.suppress(Exception):
            await self.send("Browser.close", timeout_s=5.0)
        await self._ws.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._reader
