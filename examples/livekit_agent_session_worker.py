"""A LiveKit worker translating with ``AgentSession(llm=RealtimeModel(...))``.

Use this route when you want what an ``AgentSession`` brings: conversation history (each
translated utterance is an assistant message), agent state, recording, and LiveKit's usage
metrics (``RealtimeModelMetrics`` with ``session_duration``). The model declares
``supports_overlapping_speech``: a speaker who keeps talking neither cuts nor delays the
translation. Needs a LiveKit server, as ``examples/livekit_translation_worker.py``::

    python examples/livekit_agent_session_worker.py dev

Settings (environment): ``TRANSLATE_TO`` (default ``es``); ``GRADIUM_API_KEY`` /
``GRADIUM_S2S_URL`` as in every example, else an embedded local server.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from livekit.agents import Agent, AgentServer, AgentSession, JobContext, MetricsCollectedEvent, cli, room_io
from livekit.agents.types import NOT_GIVEN

# Imported at module top level: the LiveKit plugin registration must run on the main thread.
from gradium_plugins.livekit import RealtimeModel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from call_script import choose_endpoint

TARGET = os.environ.get("TRANSLATE_TO", "es")
logger = logging.getLogger("livekit-agent-session-worker")

server = AgentServer()


@server.rtc_session()
async def entrypoint(ctx: JobContext) -> None:
    local, url, key, _ = await choose_endpoint(None)
    if local is not None:
        ctx.add_shutdown_callback(local.close)
    model = RealtimeModel(target_language=TARGET, url=url or NOT_GIVEN, api_key=key or NOT_GIVEN)
    session: AgentSession[None] = AgentSession(llm=model)

    @session.on("metrics_collected")
    def _metrics(ev: MetricsCollectedEvent) -> None:
        logger.info("translation metrics", extra={"metrics": ev.metrics.model_dump()})

    await session.start(
        agent=Agent(instructions=""),  # a translator takes no instructions
        room=ctx.room,
        room_options=room_io.RoomOptions(audio_output=room_io.AudioOutputOptions(sample_rate=48000)),
    )


if __name__ == "__main__":
    cli.run_app(server)
