"""Glue shared by the LiveKit adapters: LiveKit frames into an S2SSession, utterances out.

One :class:`S2SBridge` drives one :class:`~gradium_plugins.session.S2SSession`. LiveKit's
``push_audio`` is synchronous, so frames (and the ``update`` / ``end_input`` commands that
must stay ordered with them) go through one queue to a sender task; a reader task walks the
session's events through :func:`~gradium_plugins.segments.iter_utterances` and calls the
handler. No audio processing, reconnect or pacing happens here: that is the core's job.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
from livekit.agents.utils import aio

from livekit import rtc

from ..config import S2SConfig
from ..errors import ConfigurationError, ConnectionLostError, GradiumError
from ..events import InputSpeechStarted, InputSpeechStopped, Reconnected, SessionRenewed
from ..protocol import EndOfStream, Ready
from ..segments import (
    Passthrough,
    UtteranceAudio,
    UtteranceEnded,
    UtteranceStarted,
    UtteranceText,
    iter_utterances,
)
from ..session import S2SSession
from .log import logger


class BridgeHandler(Protocol):
    """Receives what the bridge sees, on the event loop, in stream order."""

    def _on_connected(self, acquire_time: float) -> None: ...

    def _on_ready(self, request_id: str | None) -> None: ...

    def _on_input_speech(self, ev: InputSpeechStarted | InputSpeechStopped) -> None: ...

    def _on_utterance_started(self, index: int, language: str | None) -> None: ...

    def _on_utterance_audio(self, index: int, frame: rtc.AudioFrame, language: str | None) -> None: ...

    def _on_utterance_text(self, index: int, text: str) -> None: ...

    def _on_utterance_ended(self, ev: UtteranceEnded, language: str | None) -> None: ...

    def _on_reconnected(self, ev: Reconnected) -> None: ...

    def _on_renewed(self, ev: SessionRenewed, language: str | None) -> None: ...

    def _on_error(self, error: Exception, recoverable: bool) -> None: ...

    def _on_finished(self, end_of_stream: bool) -> None: ...


@dataclass(frozen=True, slots=True)
class _Update:
    config: S2SConfig  # the settings wanted once this update applies


#: Settings ``S2SSession.update`` can change.
_UPDATABLE = (
    "target_language",
    "voice_id",
    "source_language",
    "model_name",
    "stt_model_name",
    "tts_model_name",
)


@dataclass(frozen=True, slots=True)
class _EndInput:
    pass


_Command = rtc.AudioFrame | _Update | _EndInput


class S2SBridge:
    """Runs one S2S stream for one LiveKit session object.

    Args:
        config: Validated settings of the stream.
        handler: Receives connection, utterance and error callbacks.
        http_session: Optional aiohttp session handed to the core.
        gap_s: Quiet output time that ends an utterance (see ``UtteranceSegmenter``).
    """

    def __init__(
        self,
        config: S2SConfig,
        handler: BridgeHandler,
        *,
        http_session: aiohttp.ClientSession | None = None,
        gap_s: float = 0.6,
    ) -> None:
        self._config = config  # what the stream will run with once queued updates applied
        self._handler = handler
        self._session = S2SSession(config, http_session=http_session)
        self._session.add_input_listener(handler._on_input_speech)
        self._gap_s = gap_s
        self._in_ch: aio.Chan[_Command] = aio.Chan()
        self._language = config.target_language
        self._input_ended = False
        self._closed = False
        self._started_at = time.perf_counter()
        self._send_atask: asyncio.Task[None] | None = None
        self._main_atask = asyncio.create_task(self._main(), name="gradium-livekit-bridge")

    # --- properties --------------------------------------------------------------------

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
        """Language of the output currently being delivered."""
        return self._language

    @property
    def input_ended(self) -> bool:
        """True once :meth:`end_input` was called (later frames are dropped)."""
        return self._input_ended

    @property
    def done(self) -> bool:
        """True once the output stream has finished (end of stream, failure or close)."""
        return self._main_atask.done()

    # --- input -------------------------------------------------------------------------

    def push_frame(self, frame: rtc.AudioFrame) -> None:
        """Queue one frame (any rate, any channel count); never blocks."""
        if self._input_ended or self._closed:
            logger.debug("audio pushed after the input ended, dropped")
            return
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

    async def wait_done(self, timeout: float | None) -> bool:  # noqa: ASYNC109
        """Wait until the output stream finished; return False on timeout."""
        # asyncio.wait: neither cancels the task on timeout nor raises if it was cancelled.
        done, _ = await asyncio.wait({self._main_atask}, timeout=timeout)
        return bool(done)

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

    # --- tasks -------------------------------------------------------------------------

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
                changes = {
                    k: getattr(cmd.config, k)
                    for k in _UPDATABLE
                    if getattr(cmd.config, k) != getattr(current, k)
                }
                if changes:
                    await self._session.update(**changes)
            else:
                await self._session.end_input()
                return

    def _on_send_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or (exc := task.exception()) is None:
            return
        if isinstance(exc, GradiumError) and not isinstance(exc, ConfigurationError):
            # The session failed: the reader raises the same error, with its context.
            return
        # A rejected frame or setting: the output side will never hear of it, so report it here.
        logger.error("sending to the translation session failed", exc_info=exc)
        self._handler._on_error(exc if isinstance(exc, Exception) else RuntimeError(str(exc)), False)
        self._main_atask.cancel()

    async def _main(self) -> None:
        end_of_stream = False
        try:
            self._started_at = time.perf_counter()
            # Connects in the background, retrying per the reconnect policy; input is buffered
            # meanwhile and a final failure is raised from the iteration below.
            await self._session.start()
            self._send_atask = asyncio.create_task(self._send(), name="gradium-livekit-send")
            self._send_atask.add_done_callback(self._on_send_done)
            async for ev in iter_utterances(self._session, self._gap_s):
                if isinstance(ev, UtteranceAudio):
                    pcm = ev.audio.pcm
                    frame = rtc.AudioFrame(pcm, ev.audio.sample_rate, 1, len(pcm) // 2)
                    self._handler._on_utterance_audio(ev.index, frame, self._language)
                elif isinstance(ev, UtteranceText):
                    self._handler._on_utterance_text(ev.index, ev.text.text)
                elif isinstance(ev, UtteranceStarted):
                    self._handler._on_utterance_started(ev.index, self._language)
                elif isinstance(ev, UtteranceEnded):
                    self._handler._on_utterance_ended(ev, self._language)
                else:
                    end_of_stream = self._dispatch(ev) or end_of_stream
        except asyncio.CancelledError:
            raise
        except GradiumError as exc:
            # The core already retried what could be retried: whatever reaches here is final.
            self._handler._on_error(exc, recoverable=False)
        except Exception as exc:  # noqa: BLE001 - reported to LiveKit as a final error
            logger.exception("translation stream failed unexpectedly")
            self._handler._on_error(exc, recoverable=False)
        finally:
            self._handler._on_finished(end_of_stream)

    def _dispatch(self, ev: Passthrough) -> bool:
        inner = ev.event
        if isinstance(inner, Ready):
            self._handler._on_connected(time.perf_counter() - self._started_at)
            self._handler._on_ready(inner.request_id)
        elif isinstance(inner, Reconnected):
            self._handler._on_reconnected(inner)
        elif isinstance(inner, SessionRenewed):
            if inner.reason == "update":
                # Output after this event comes from the new server session.
                self._language = inner.target_language
            self._handler._on_renewed(inner, self._language)
        else:
            return isinstance(inner, EndOfStream)
        return False


def reconnect_error(ev: Reconnected) -> ConnectionLostError:
    """The recoverable error reported to LiveKit when the core recovered a connection."""
    return ConnectionLostError(
        f"connection lost and recovered after {ev.attempts} attempt(s) "
        f"({ev.downtime_s:.2f} s down, {ev.replayed_s:.2f} s of input replayed)",
        retryable=True,
    )


class LatencyPairing:
    """Pairs input speech starts with output utterances, in order, for time-to-first-audio.

    The service does not say which input an utterance translates, so the n-th input
    utterance found by the core's pause detector is paired with the n-th output utterance;
    when no unpaired input is left, an output continues the last input utterance.
    """

    def __init__(self) -> None:
        self._starts: deque[float] = deque(maxlen=64)
        self._last: float | None = None

    def input_started(self, at: float) -> None:
        """Record the monotonic time an input utterance started."""
        self._starts.append(at)

    def output_started(self) -> float | None:
        """Return the input start the output utterance beginning now answers to."""
        if self._starts:
            self._last = self._starts.popleft()
        return self._last


def ttfa(input_start: float | None, first_audio_at: float | None) -> float:
    """Time to first translated audio in seconds, or -1 when unknown."""
    if input_start is None or first_audio_at is None:
        return -1.0
    return max(0.0, first_audio_at - input_start)
