"""A LiveKit worker that interprets every speaker of a room into several languages.

For each (speaker, language) it runs one LiveKit ``TranslationSession``, which publishes an
audio track ``translation-<lang>-<speaker>`` (48 kHz) and the translated transcript, in step
with the audio. The worker's participant attribute ``gradium.translations`` maps each language
to those tracks (JSON ``{"fr": {"alice": "translation-fr-alice"}}``): a listener's app
subscribes to the tracks of its language. A listener can also ask for a language by setting
its participant attribute ``language`` (e.g. ``de``): the interpreter adds it, and removes it
again once nobody asks for it (the languages of ``INTERPRETER_LANGUAGES`` always stay).

This needs a LiveKit server. For a local one::

    livekit-server --dev            # https://docs.livekit.io/home/self-hosting/local/ (keys devkey / secret)
    export LIVEKIT_URL=ws://localhost:7880 LIVEKIT_API_KEY=devkey LIVEKIT_API_SECRET=secret
    pip install 'gradium-plugins[livekit]'
    python examples/livekit_room_interpreter.py dev

then join a room with a microphone (e.g. ``lk room join --identity alice --publish-demo my-room``
or https://meet.livekit.io with a token from ``lk token create --join --room my-room --identity alice``).

Settings (environment):

- ``INTERPRETER_LANGUAGES``: comma-separated target languages (default ``fr,es``).
- ``INTERPRETER_SPEAKERS``: comma-separated identities to interpret (default: every participant
  with a microphone that is not an agent, up to ``INTERPRETER_MAX_SPEAKERS``, default 4).
- ``INTERPRETER_SOURCE_LANGUAGE``: language the speaker speaks, if known.
- ``GRADIUM_API_KEY`` / ``GRADIUM_S2S_URL``: where to translate. With neither, each job
  starts an embedded local server in-process with the ``offline`` engine when installed
  (``pip install 'gradium-plugins[local]'``), else the ``echo`` engine, and prints which.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from livekit.agents import AgentServer, AutoSubscribe, JobContext, cli
from livekit.agents.types import NOT_GIVEN

# Imported at module top level: the LiveKit plugin registration must run on the main thread.
from gradium_plugins.config import ENV_API_KEY, ENV_URL
from gradium_plugins.livekit import LANGUAGE_ATTRIBUTE, RoomInterpreter
from gradium_plugins.local import LocalServer, serve
from gradium_plugins.voices import LANGUAGES

logger = logging.getLogger("livekit-room-interpreter")

BASE_LANGUAGES = [
    lang.strip() for lang in os.environ.get("INTERPRETER_LANGUAGES", "fr,es").split(",") if lang.strip()
]
SPEAKERS = [s.strip() for s in os.environ.get("INTERPRETER_SPEAKERS", "").split(",") if s.strip()]
MAX_SPEAKERS = int(os.environ.get("INTERPRETER_MAX_SPEAKERS", "4"))
SOURCE_LANGUAGE = os.environ.get("INTERPRETER_SOURCE_LANGUAGE") or None

server = AgentServer()


async def start_local_server() -> tuple[LocalServer, str]:
    """The embedded server: offline engine if installed, else echo."""
    try:
        return await serve(engine="offline"), "offline"
    except Exception as exc:  # noqa: BLE001 - extra or system packages missing
        logger.warning("offline engine unavailable (%s); using the echo engine", str(exc).splitlines()[0])
        return await serve(engine="echo"), "echo"


@server.rtc_session()
async def entrypoint(ctx: JobContext) -> None:
    options: dict[str, Any] = {}
    local: LocalServer | None = None
    if not os.environ.get(ENV_API_KEY) and not os.environ.get(ENV_URL):
        local, engine = await start_local_server()
        options["url"] = local.url
        print(f"No {ENV_API_KEY} / {ENV_URL}: translating with the embedded '{engine}' engine", flush=True)

    await ctx.connect(auto_subscribe=AutoSubscribe.AUDIO_ONLY)
    interpreter = RoomInterpreter(
        ctx.room,
        languages=BASE_LANGUAGES,
        participants=SPEAKERS if SPEAKERS else NOT_GIVEN,
        max_speakers=MAX_SPEAKERS,
        source_language=SOURCE_LANGUAGE if SOURCE_LANGUAGE else NOT_GIVEN,
        **options,
    )

    @interpreter.on("speaker_added")
    def _added(identity: str) -> None:
        logger.info("interpreting a speaker", extra={"lk.pii.identity": identity})

    async def reconcile_languages() -> None:
        """Publish the base languages plus every language a participant asks for."""
        wanted = set(BASE_LANGUAGES)
        for p in ctx.room.remote_participants.values():
            lang = p.attributes.get(LANGUAGE_ATTRIBUTE)
            if lang in LANGUAGES:
                wanted.add(lang)
        for lang in sorted(wanted - set(interpreter.languages)):
            await interpreter.add_language(lang)
        for lang in set(interpreter.languages) - wanted:
            await interpreter.remove_language(lang)

    async def shutdown() -> None:
        await interpreter.aclose()
        if local is not None:
            await local.close()

    ctx.add_shutdown_callback(shutdown)
    await interpreter.start()
    await reconcile_languages()
    tasks: set[asyncio.Task[None]] = set()

    def schedule(*_args: Any) -> None:
        task = asyncio.ensure_future(reconcile_languages())
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    ctx.room.on("participant_attributes_changed", schedule)
    ctx.room.on("participant_connected", schedule)
    ctx.room.on("participant_disconnected", schedule)


if __name__ == "__main__":
    cli.run_app(server)
