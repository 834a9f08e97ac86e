"""A live interpreter you can talk to: your microphone in, translated speech out.

Pipeline: ``transport.input() -> GradiumS2SService -> transport.output()`` on Pipecat's
SmallWebRTC transport (peer-to-peer, no account), served by Pipecat's development runner
together with its prebuilt browser client.

Run it::

    pip install 'gradium-plugins[pipecat]' 'pipecat-ai[webrtc,runner]'
    python examples/pipecat_interpreter_bot.py          # then open http://localhost:7860/client

Click *Connect*, allow the microphone and speak: each sentence comes back translated in the
other voice a moment after you pause. It behaves like a human interpreter, not a turn-taking
bot: talking over the translation does not cut it.

Where it translates (same rules as the other examples):

- ``GRADIUM_API_KEY`` set: the Gradium cloud (``GRADIUM_S2S_URL`` overrides the endpoint).
- ``GRADIUM_S2S_URL`` set without a key: that endpoint (e.g. ``gradium-plugins serve``).
- Neither: an embedded local server starts in this process with the ``offline`` engine when
  ``gradium-plugins[local]`` is installed (real speech translation, no network), else the
  ``echo`` engine (you hear your own sentences back, to check the audio path).

Settings (environment variables):

- ``INTERPRETER_TO``: target language, ``fr`` by default (``en``, ``fr``, ``de``, ``es``, ``pt``).
- ``INTERPRETER_FROM``: language you speak, when known (the offline engine wants it; ``en``).
- ``INTERPRETER_VOICE``: voice uid (default: the flagship voice of the target language).
- ``INTERPRETER_ENGINE``: ``offline`` or ``echo``, to pick the embedded engine.

Other runner options: ``python examples/pipecat_interpreter_bot.py --help`` (host, port...).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from loguru import logger
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.runner.types import RunnerArguments
from pipecat.runner.utils import create_transport
from pipecat.transports.base_transport import BaseTransport, TransportParams
from pipecat.workers.runner import WorkerRunner

from gradium_plugins.config import ENV_API_KEY, ENV_URL
from gradium_plugins.local import LocalServer, serve
from gradium_plugins.pipecat import GradiumS2SService

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


def make_translator(url: str | None, api_key: str | None) -> GradiumS2SService:
    """The interpreter: one target language, default Gradium voice unless one is given."""
    translator = GradiumS2SService(
        api_key=api_key,
        url=url,
        settings=GradiumS2SService.Settings(
            target_language=os.environ.get("INTERPRETER_TO", "fr"),
            source_language=os.environ.get("INTERPRETER_FROM") or ("en" if not api_key and not url else None),
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


async def run_bot(transport: BaseTransport, runner_args: RunnerArguments) -> None:
    """Run the interpreter pipeline on a connected transport until the client leaves."""
    url, api_key = await endpoint()
    translator = make_translator(url, api_key)
    pipeline = Pipeline([transport.input(), translator, transport.output()])
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


if __name__ == "__main__":
    from pipecat.runner.run import main

    main()
