"""A LiveKit worker translating one speaker with LiveKit's ``TranslationSession`` in a room.

It shows the shutdown recipe that keeps the last sentence: the session is started with
``close_on_disconnect=False``; when the speaker leaves, ``drain_and_close(session)`` ends the
input, waits until the last translation has played out, and closes; then ``ctx.shutdown()``
ends the job. (A job shutdown closes the session at once: LiveKit disconnects the room first,
so draining from a shutdown callback has nothing left to play into.)

This needs a LiveKit server (e.g. ``livekit-server --dev``, keys ``devkey`` / ``secret``)::

    export LIVEKIT_URL=ws://localhost:7880 LIVEKIT_API_KEY=devkey LIVEKIT_API_SECRET=secret
    python examples/livekit_translation_worker.py dev

Settings (environment): ``TRANSLATE_TO`` (default ``fr``), ``TRANSLATE_FROM`` (optional);
``GRADIUM_API_KEY`` / ``GRADIUM_S2S_URL`` as in every example, else an embedded local server
(offline engine when installed, else echo).
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from livekit.agents import AgentServer, AutoSubscribe, JobContext, cli
from livekit.agents.beta.translation import TranslationRoomOptions, TranslationSession
from livekit.agents.types import NOT_GIVEN
from livekit.agents.voice.room_io import AudioOutputOptions

# Imported at module top level: the LiveKit plugin registration must run on the main thread.
from gradium_plugins.livekit import TranslationModel, drain_and_close, translation_track_name
from livekit import rtc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from call_script import choose_endpoint

TARGET = os.environ.get("TRANSLATE_TO", "fr")
SOURCE = os.environ.get("TRANSLATE_FROM") or None

server = AgentServer()


@server.rtc_session()
async def entrypoint(ctx: JobContext) -> None:
    local, url, key, _ = await choose_endpoint(None)
    await ctx.connect(auto_subscribe=AutoSubscribe.AUDIO_ONLY)
    speaker = await ctx.wait_for_participant()
    model = TranslationModel(
        target_language=TARGET,
        source_language=SOURCE or NOT_GIVEN,
        url=url or NOT_GIVEN,
        api_key=key or NOT_GIVEN,
    )
    session: TranslationSession[None] = TranslationSession(model=model)
    await session.start(
        room=ctx.room,
        room_options=TranslationRoomOptions(
            participant_identity=speaker.identity,
            # LiveKit's room output defaults to 24 kHz: keep the translation's 48 kHz.
            audio_output=AudioOutputOptions(sample_rate=48000, track_name=translation_track_name(TARGET)),
            close_on_disconnect=False,  # drained below instead, so the last sentence is kept
        ),
    )
    left = asyncio.Event()

    def on_disconnected(p: rtc.RemoteParticipant) -> None:
        if p.identity == speaker.identity:
            left.set()

    ctx.room.on("participant_disconnected", on_disconnected)
    await left.wait()
    await drain_and_close(session)
    if local is not None:
        await local.close()
    ctx.shutdown("speaker left")


if __name__ == "__main__":
    cli.run_app(server)
