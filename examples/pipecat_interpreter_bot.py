"""A live interpreter you can talk to: your microphone in, translated speech out.

Pipeline: ``transport.input() -> GradiumS2SService -> TranscriptRelay -> transport.output()``
on Pipecat's SmallWebRTC transport (peer-to-peer, no account); the relay sends the translated
texts to the page. Served by Pipecat's development runner.
The runner also serves the interpreter page (``examples/web/interpreter.html``, no build step)
at ``/interpreter``, and Pipecat's prebuilt client at ``/client``.

Run it::

    pip install 'gradium-plugins[pipecat-runner,local]'
    python examples/pipecat_interpreter_bot.py          # then open http://localhost:7860/interpreter

Pick the languages, click *Connect*, allow the microphone and speak: each sentence comes back
translated in the other voice a moment after you pause, and its text appears in the page. It
behaves like a human interpreter, not a turn-taking bot: talking over the translation does not
cut it. Use headphones: with loudspeakers your microphone hears the translation too.

Where it translates (same rules as the other examples):

- ``GRADIUM_API_KEY`` set: the Gradium cloud (``GRADIUM_S2S_URL`` overrides the endpoint).
- ``GRADIUM_S2S_URL`` set without a key: that endpoint (e.g. ``gradium-plugins serve``).
- Neither: an embedded local server starts in this process with the ``offline`` engine when
  ``gradium-plugins[local]`` is installed (real speech translation, no network), else the
  ``echo`` engine (you hear your own sentences back, to check the audio path).

Settings (environment variables):

- ``INTERPRETER_TO``: default target language, ``fr`` by default (``en``, ``fr``, ``de``, ``es``, ``pt``).
- ``INTERPRETER_FROM``: default language you speak, when known (the offline engine wants it; ``en``).
- ``INTERPRETER_VOICE``: voice uid (default: the flagship voice of the target language).
- ``INTERPRETER_ENGINE``: ``offline`` or ``echo``, to pick the embedded engine.
- ``GRADIUM_WEBRTC_LOOPBACK=1``: for local tests: ICE uses 127.0.0.1 only. The bot offers no
  other address, ignores the browser's other candidates and its checks from other addresses, and
  asks no STUN or TURN server; the browser must offer a loopback candidate (Chromium:
  ``--allow-loopback-in-peer-connection``). Off by default: a browser on another machine needs
  the real interfaces.

The page overrides both per session (they travel in the WebRTC offer's ``request_data``).

Other runner options: ``python examples/pipecat_interpreter_bot.py --help`` (host, port...).
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
from pathlib import Path
from typing import Any

from loguru import logger
from pipecat.frames.frames import Frame, OutputTransportMessageFrame, TranslationFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.runner.types import RunnerArguments
from pipecat.runner.utils import create_transport
from pipecat.transports.base_transport import BaseTransport, TransportParams
from pipecat.workers.runner import WorkerRunner

from gradium_plugins.config import ENV_API_KEY, ENV_URL
from gradium_plugins.local import LocalServer, serve
from gradium_plugins.pipecat import GradiumS2SService
from gradium_plugins.voices import LANGUAGES

PAGE = Path(__file__).resolve().parent / "web" / "interpreter.html"
ENV_LOOPBACK = "GRADIUM_WEBRTC_LOOPBACK"

# One embedded server for the whole process (the runner calls bot() once per browser session).
_local_server: LocalServer | None = None
_local_lock = asyncio.Lock()


async def endpoint() -> tuple[str | None, str | None]:
    """Return ``(url, api_key)``: the configured endpoint, or the embedded local server's."""
    global _local_server
    key, url = os.environ.get(ENV_API_KEY), os.environ.get(ENV_URL)
    if key or url:
        return url, key
    async with _local_lock:
        if _local_server is None:
            wanted = os.environ.get("INTERPRETER_ENGINE")
            try:
                _local_server = await serve(engine=wanted or "offline")
            except Exception as exc:  # offline extra or Apertium missing: fall back to echo
                if wanted:
                    raise
                logger.warning(f"offline engine unavailable ({str(exc).splitlines()[0]}); using echo")
                _local_server = await serve(engine="echo")
            print(
                f"No {ENV_API_KEY} / {ENV_URL}: using the embedded local server, "
                f"engine '{_local_server.engine.name}' ({_local_server.url})",
                flush=True,
            )
    return _local_server.url, None


def languages(body: Any, local: bool) -> tuple[str, str | None]:
    """``(target, source)`` for a session: the page's choice (``request_data``), else the environment.

    A source of ``None`` means "detect". Without a choice, the embedded server's offline engine is
    told English (its language detection is unreliable on short utterances).
    """
    body = body if isinstance(body, dict) else {}
    target = body.get("target_language") or os.environ.get("INTERPRETER_TO", "fr")
    if "source_language" in body:
        source = body["source_language"] or None
    else:
        source = os.environ.get("INTERPRETER_FROM") or ("en" if local else None)
    for lang in (target, source):
        if lang is not None and lang not in LANGUAGES:
            raise ValueError(f"unsupported language {lang!r}; choose among {', '.join(LANGUAGES)}")
    return target, source


def make_translator(
    url: str | None, api_key: str | None, target: str | None = None, source: str | None = None
) -> GradiumS2SService:
    """The interpreter: one target language, default Gradium voice unless one is given."""
    if target is None:
        local = _local_server is not None and url == _local_server.url
        target, source = languages(None, local=local)
    translator = GradiumS2SService(
        api_key=api_key,
        url=url,
        settings=GradiumS2SService.Settings(
            target_language=target,
            source_language=source,
            voice_id=os.environ.get("INTERPRETER_VOICE") or None,
        ),
    )

    @translator.event_handler("on_reconnected")
    async def _on_reconnected(_svc: GradiumS2SService, event: Any) -> None:
        logger.info(f"translation connection recovered after {event.downtime_s:.1f} s")

    @translator.event_handler("on_session_renewed")
    async def _on_renewed(_svc: GradiumS2SService, event: Any) -> None:
        logger.info(f"translation session renewed ({event.reason})")

    return translator


class TranscriptRelay(FrameProcessor):  # type: ignore[misc]
    """Sends each translated text to the page over the WebRTC data channel, in step with its audio.

    Messages: ``{"type": "translation", "text": ..., "language": ...}``. (The translator's errors
    reach the page as the RTVI ``error`` messages Pipecat sends by itself.)
    """

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, TranslationFrame) and direction == FrameDirection.DOWNSTREAM:
            language = str(frame.language.value) if frame.language is not None else None
            message = {"type": "translation", "text": frame.text, "language": language}
            await self.push_frame(OutputTransportMessageFrame(message=message), direction)
        await self.push_frame(frame, direction)


async def run_bot(transport: BaseTransport, runner_args: RunnerArguments) -> None:
    """Run the interpreter pipeline on a connected transport until the client leaves."""
    url, api_key = await endpoint()
    local = _local_server is not None and url == _local_server.url
    target, source = languages(getattr(runner_args, "body", None), local=local)
    logger.info(f"interpreting {source or 'any language'} -> {target}")
    translator = make_translator(url, api_key, target, source)
    pipeline = Pipeline([transport.input(), translator, TranscriptRelay(), transport.output()])
    worker = PipelineWorker(
        pipeline,
        # The translated speech is 48 kHz: an output at 48 kHz avoids a 48 -> 24 -> 48 kHz round trip.
        params=PipelineParams(
            audio_in_sample_rate=16000,
            audio_out_sample_rate=48000,
            enable_metrics=True,
            enable_usage_metrics=True,
        ),
        idle_timeout_secs=runner_args.pipeline_idle_timeout_secs,
    )

    @transport.event_handler("on_client_connected")
    async def _on_client_connected(_transport: BaseTransport, _client: Any) -> None:
        logger.info("client connected: speak, the translation follows each pause")

    @transport.event_handler("on_client_disconnected")
    async def _on_client_disconnected(_transport: BaseTransport, _client: Any) -> None:
        await worker.cancel()

    runner = WorkerRunner(handle_sigint=runner_args.handle_sigint)
    await runner.add_workers(worker)
    await runner.run()


async def bot(runner_args: RunnerArguments) -> None:
    """Entry point called by Pipecat's development runner for each client session."""
    transport = await create_transport(
        runner_args,
        {"webrtc": lambda: TransportParams(audio_in_enabled=True, audio_out_enabled=True)},
    )
    await run_bot(transport, runner_args)


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback IP address (an mDNS or other host name is not)."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def use_loopback_ice() -> type:
    """For local tests: every WebRTC connection of this process uses 127.0.0.1 only.

    aioice leaves loopback out of its host candidates, so a browser on the same machine is reached
    through the machine's network interfaces. Here aiortc's ICE connections are replaced by ones
    that gather 127.0.0.1 only, ask no STUN or TURN server, drop remote candidates that are not
    loopback addresses (before any mDNS lookup), and leave checks from other addresses unanswered
    (answering would send to that address and teach aioice a peer-reflexive candidate there).
    Returns the connection class (installed in ``aiortc.rtcicetransport``).
    """
    import aioice
    from aiortc import rtcicetransport

    class LoopbackConnection(aioice.Connection):  # type: ignore[misc]
        """An aioice connection that sends to and answers 127.0.0.0/8 only."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.stun_server = self.turn_server = None  # servers are never on this machine

        async def get_component_candidates(
            self, component: int, addresses: list[str], *args: Any, **kwargs: Any
        ) -> list[aioice.Candidate]:
            # aioice passes the machine's interface addresses (never loopback): replace them.
            candidates: list[aioice.Candidate] = await super().get_component_candidates(
                component, ["127.0.0.1"], *args, **kwargs
            )
            return candidates

        async def add_remote_candidate(self, remote_candidate: aioice.Candidate | None) -> None:
            if remote_candidate is None or is_loopback(remote_candidate.host):
                await super().add_remote_candidate(remote_candidate)
            else:
                logger.debug(f"loopback ICE: ignoring remote candidate {remote_candidate.host}")

        def request_received(self, message: Any, addr: tuple[str, int], protocol: Any) -> None:
            if is_loopback(addr[0]):
                super().request_received(message, addr, protocol)

    rtcicetransport.Connection = LoopbackConnection
    return LoopbackConnection


def add_page_routes() -> None:
    """Serve the interpreter page at ``/interpreter`` from the runner's FastAPI app."""
    from fastapi.responses import FileResponse, JSONResponse
    from pipecat.runner.run import app

    @app.get("/interpreter", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(PAGE, media_type="text/html")

    @app.get("/interpreter/config", include_in_schema=False)
    async def config() -> JSONResponse:
        key, url = os.environ.get(ENV_API_KEY), os.environ.get(ENV_URL)
        target, source = languages(None, local=not key and not url)
        body = {"languages": list(LANGUAGES), "target_language": target, "source_language": source}
        return JSONResponse(body)


if __name__ == "__main__":
    from pipecat.runner.run import main

    if os.environ.get(ENV_LOOPBACK, "").lower() in ("1", "true", "yes", "on"):
        use_loopback_ice()
        logger.info(f"{ENV_LOOPBACK}: WebRTC (ICE) uses 127.0.0.1 only")
    add_page_routes()
    main()
