"""Glue shared by the LiveKit adapters: options, LiveKit frames into an S2SSession, translations out.

One :class:`S2SBridge` drives one :class:`~gradium_plugins.session.S2SSession`. LiveKit's
``push_audio`` is synchronous, so frames (and the ``update`` / ``end_input`` commands that
must stay ordered with them) go through one queue to a sender task; a reader task maps the
core's utterance-level events (``TranslationStarted`` / ``TranslationCompleted``, which bracket
each translation's audio and text) to handler calls. No audio processing, reconnect, pairing or
pacing happens here: that is the core's job.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
from livekit.agents import APIConnectionError, APIConnectOptions, APIError, APIStatusError
from livekit.agents.language import LanguageCode
from livekit.agents.types import NotGivenOr
from livekit.agents.utils import aio, http_context, is_given

from livekit import rtc

from ..config import S2SConfig
from ..errors import ConfigurationError, ConnectionLostError, GradiumError
from ..events import (
    InputSpeechStarted,
    InputSpeechStopped,
    Reconnected,
    TranslationCompleted,
    TranslationStarted,
    UpdateRejected,
)
from ..protocol import AudioOut, EndOfStream, Ready, TextOut
from ..session import S2SSession
from .log import logger

#: Settings ``S2SSession.update`` can change.
_UPDATABLE = (
    "target_language",
    "voice_id",
    "source_language",
    "model_name",
    "stt_model_name",
    "tts_model_name",
)


def normalize_language(code: str | None) -> str | None:
    """``fr-FR``, ``fra`` or ``French`` to ``fr``, with LiveKit's own language normalisation."""
    return None if code is None else LanguageCode(code).language


def build_config(
    base: NotGivenOr[S2SConfig],
    *,
    target_language: str | None,
    conn_options: NotGivenOr[APIConnectOptions],
    **options: Any,
) -> S2SConfig:
    """Merge keyword options over a base config (validated: raises ``ConfigurationError``)."""
    changes = {k: v for k, v in options.items() if is_given(v)}
    if "source_language" in changes:
        changes["source_language"] = normalize_language(changes["source_language"])
    if is_given(conn_options):
        changes.update(
            connect_timeout=conn_options.timeout,
            ready_timeout=conn_options.timeout,
            max_reconnect_attempts=conn_options.max_retry,
            reconnect_backoff_s=conn_options.retry_interval,
        )
    target = normalize_language(target_language)
    if is_given(base):
        if target is not None and target != base.target_language:
            changes["target_language"] = target
        return base.replace(**changes) if changes else base
    return S2SConfig(target_language=target, **changes)


def job_http_session(given: aiohttp.ClientSession | None) -> aiohttp.ClientSession | None:
    """The session to use: the given one, else LiveKit's shared one inside a job, else None."""
    if given is not None:
        return given
    try:
        return http_context.http_session()
    except RuntimeError:  # outside a job: the core opens (and closes) its own
        return None


def to_api_error(exc: BaseException) -> APIError:
    """The LiveKit ``APIError`` for a failure; the original error is its ``__cause__``."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, ConnectionLostError):
        err: APIError = APIConnectionError(str(exc), retryable=exc.retryable)
    elif isinstance(exc, GradiumError):
        err = APIStatusError(
            str(exc), status_code=exc.code or -1, request_id=exc.request_id, retryable=exc.retryable
        )
    else:
        err = APIError(str(exc) or type(exc).__name__, retryable=False)
    err.__cause__ = exc
    return err


class BridgeHandler(Protocol):
    """Receives what the bridge sees, on the event loop, in stream order."""

    def _on_input_speech(self, ev: InputSpeechStarted | InputSpeechStopped) -> None: ...

    def _on_started(self, index: int, ev: TranslationStarted) -> None: ...

    def _on_audio(self, index: int, frame: rtc.AudioFrame, language: str | None) -> None: ...

    def _on_text(self, index: int, text: str) -> None: ...

    def _on_completed(self, index: int, ev: TranslationCompleted) -> None: ...

    def _on_reconnected(self, ev: Reconnected) -> None: ...

    def _on_error(self, error: APIError, recoverable: bool) -> None: ...

    def _on_finished(self, end_of_stream: bool) -> None: ...


@dataclass(frozen=True, slots=True)
class _Update:
    config: S2SConfig  # the settings wanted once this update applies


@dataclass(frozen=True, slots=True)
class _EndInput:
    pass


@dataclass(slots=True)
class _Open:
    started: TranslationStarted
    texts: list[str]
    audio_s: float = 0.0


_Command = rtc.AudioFrame | _Update | _EndInput


class S2SBridge:
    """Runs one S2S stream for one LiveKit session object.

    Args:
        config: Validated settings of the stream.
        handler: Receives input speech, translation and error callbacks.
        http_session: Optional aiohttp session handed to the core.
    """

    def __init__(
        self, config: S2SConfig, handler: BridgeHandler, *, http_session: aiohttp.ClientSession | None = None
    ) -> None:
        self._config = config  # what the stream will run with once queued updates applied
        self._handler = handler
        self._session = S2SSession(config, http_session=job_http_session(http_session))
        self._session.add_input_listener(handler._on_input_speech)
        self._in_ch: aio.Chan[_Command] = aio.Chan()
        self._input_ended = False
        self._closed = False
        self._index = -1  # of the translation being delivered
        self._open: _Open | None = None  # the translation being delivered, if any
        self._language = config.target_language
        self.started_at = time.monotonic()
        self.connected_at: float | None = None
        self._send_atask: asyncio.Task[None] | None = None
        self._main_atask = asyncio.create_task(self._main(), name="gradium-livekit-bridge")

    @property
    def session(self) -> S2SSession:
        """The core session (read-only use: ``request_id``, ``config``)."""
        return self._session

    @property
    def config(self) -> S2SConfig:
        """Settings of the stream, including updates queued but not applied yet."""
        return self._config

    @property
    def language(self) -> str | None:
        """Language of the translation being delivered (or last delivered)."""
        return self._language

    def push_frame(self, frame: rtc.AudioFrame) -> None:
        """Queue one frame (any rate, any channel count); never blocks."""
        if self._input_ended or self._closed:
            return  # after the end of input: dropped (no per-frame log while draining)
        with contextlib.suppress(aio.ChanClosed):
            self._in_ch.send_nowait(frame)

    def update(self, **changes: Any) -> None:
        """Validate and queue a settings change; it applies after the frames already pushed.

        Validated against the settings of earlier queued changes, not the ones in effect.

        Raises:
            ConfigurationError: Invalid settings (nothing is queued).
            RuntimeError: The input has ended.
        """
        if self._input_ended or self._closed:
            raise RuntimeError("the translation input has ended; open a new session to change it")
        if "target_language" in changes:
            changes["target_language"] = normalize_language(changes["target_language"])
        self._config = self._config.replace(**changes)
        self._in_ch.send_nowait(_Update(self._config))

    def end_input(self) -> None:
        """Queue the end of input (the core flushes, adds trailing silence, ends the stream)."""
        if self._input_ended or self._closed:
            return
        self._input_ended = True
        with contextlib.suppress(aio.ChanClosed):
            self._in_ch.send_nowait(_EndInput())
            self._in_ch.close()

    async def wait_done(self) -> None:
        """Wait until the output stream finished (end of stream, failure or close)."""
        await asyncio.wait({self._main_atask})

    async def aclose(self) -> None:
        """Stop now: pending input and output are dropped. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._input_ended = True
        self._in_ch.close()
        if self._send_atask is not None:
            await aio.cancel_and_wait(self._send_atask)
        # Closing the core first ends the reader's iteration: a cancel alone can be lost in
        # Python 3.11's wait_for when an event arrives at the same moment.
        await self._session.aclose()
        await aio.cancel_and_wait(self._main_atask)

    async def _send(self) -> None:
        async for cmd in self._in_ch:
            if isinstance(cmd, rtc.AudioFrame):
                await self._session.send_audio(
                    bytes(cmd.data), sample_rate=cmd.sample_rate, channels=cmd.num_channels
                )
            elif isinstance(cmd, _Update):
                # The whole wanted difference: the core checks an update against the settings
                # in effect, which an earlier update still pending has not changed yet.
                current = self._session.config
                changes = {k: getattr(cmd.config, k) for k in _UPDATABLE}
                changes = {k: v for k, v in changes.items() if v != getattr(current, k)}
                if changes:
                    await self._session.update(**changes)
            else:
                await self._session.end_input()
                return

    def _on_send_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or (exc := task.exception()) is None:
            return
        if isinstance(exc, GradiumError) and not isinstance(exc, ConfigurationError):
            return  # the session failed: the reader raises the same error, with its context
        # A rejected frame or setting: the output side will never hear of it, so report it here.
        logger.error("sending to the translation session failed", exc_info=exc)
        self._handler._on_error(to_api_error(exc), False)
        self._main_atask.cancel()

    async def _main(self) -> None:
        end_of_stream = False
        try:
            # Connects in the background, retrying per the reconnect policy; input is buffered
            # meanwhile and a final failure is raised from the iteration below.
            await self._session.start()
            self._send_atask = asyncio.create_task(self._send(), name="gradium-livekit-send")
            self._send_atask.add_done_callback(self._on_send_done)
            async for ev in self._session:
                end_of_stream = self._dispatch(ev) or end_of_stream
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - reported to LiveKit as a final error
            if not isinstance(exc, GradiumError):
                logger.exception("translation stream failed unexpectedly")
            # The core already retried what could be retried: whatever reaches here is final.
            self._handler._on_error(to_api_error(exc), False)
        finally:
            self._handler._on_finished(end_of_stream)

    def _dispatch(self, ev: Any) -> bool:
        h = self._handler
        if isinstance(ev, AudioOut | TextOut):
            op = self._open or self._start(TranslationStarted(None, time.monotonic(), self._language))
            if isinstance(ev, AudioOut):
                pcm = ev.pcm
                op.audio_s += len(pcm) / 2 / ev.sample_rate
                h._on_audio(
                    self._index, rtc.AudioFrame(pcm, ev.sample_rate, 1, len(pcm) // 2), self._language
                )
            else:
                op.texts.append(ev.text.strip())
                h._on_text(self._index, ev.text)
        elif isinstance(ev, TranslationStarted):
            self._close_open()
            self._start(ev)
        elif isinstance(ev, TranslationCompleted):
            if self._open is not None:  # else already closed at a session boundary
                self._open = None
                h._on_completed(self._index, ev)
        elif isinstance(ev, Ready):
            if self.connected_at is None:
                self.connected_at = time.monotonic()
            logger.info("translation session ready", extra={"request_id": ev.request_id})
        elif isinstance(ev, Reconnected):
            # Recovered: nothing failed from LiveKit's point of view, so no error event.
            logger.info("translation connection recovered", extra={"attempts": ev.attempts})
            h._on_reconnected(ev)
        elif isinstance(ev, UpdateRejected):
            # Non-fatal: the old connection and settings carry on; so do ours.
            self._config = self._session.config
            h._on_error(to_api_error(ev.error), True)
        elif isinstance(ev, EndOfStream):
            self._close_open()
            return True
        return False

    def _start(self, ev: TranslationStarted) -> _Open:
        self._index += 1
        self._language = ev.language or self._language
        self._open = _Open(ev, [])
        self._handler._on_started(self._index, ev)
        return self._open

    def _close_open(self) -> None:
        """Close the open translation with what the bridge saw of it (no latency figure)."""
        op, self._open = self._open, None
        if op is not None:
            st = op.started
            text = " ".join(t for t in op.texts if t)
            done = TranslationCompleted(
                st.utterance, st.language, None, st.replayed, text, op.audio_s, time.monotonic()
            )
            self._handler._on_completed(self._index, done)
