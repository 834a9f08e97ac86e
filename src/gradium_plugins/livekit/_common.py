"""What the two LiveKit model adapters share: settings, session bookkeeping, close/drain, metrics."""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Awaitable
from typing import Any

import aiohttp
from livekit.agents import APIConnectOptions
from livekit.agents.metrics import RealtimeModelMetrics
from livekit.agents.metrics.base import Metadata
from livekit.agents.types import NOT_GIVEN, NotGivenOr
from livekit.agents.utils import aio, is_given

from livekit import rtc

from ..config import S2SConfig
from ..errors import ConfigurationError
from ..events import TranslationCompleted
from ._bridge import S2SBridge, build_config
from .models import PROVIDER

#: Default bound of the wait for the last translations in ``drain()`` / ``drain_and_close``.
DEFAULT_DRAIN_TIMEOUT = 15.0


class TranslationMetrics(RealtimeModelMetrics):
    """LiveKit's ``RealtimeModelMetrics`` for one translated utterance, with its language.

    Being LiveKit's own type, it is counted by ``metrics.ModelUsageCollector`` and
    ``AgentSession`` usage (``session_duration``: seconds of connection since the previous
    report). ``ttft`` is the time from the end of the input speech to the first translated
    audio, as measured by the session core (-1 when unknown); ``request_id`` identifies the
    utterance (the generation id in ``AgentSession``).

    Attributes:
        language: Language of the translation.
        utterance_index: Input utterance it translates (-1 when the core could not match one).
        audio_duration: Seconds of translated audio.
        characters_count: Characters of translated text.
        replayed: Whether the utterance was re-sent after a reconnect.
    """

    language: str | None = None
    utterance_index: int = -1
    audio_duration: float = 0.0
    characters_count: int = 0
    replayed: bool = False

    @property
    def ttfa(self) -> float:
        """Time to first translated audio in seconds (``ttft``), -1 when unknown."""
        return self.ttft


async def wait_unless_closing(aw: Awaitable[Any], closing: asyncio.Event, timeout: float) -> bool:  # noqa: ASYNC109
    """Await ``aw`` for at most ``timeout`` s; give up as soon as ``closing`` is set.

    Returns True if ``aw`` finished.
    """
    task = asyncio.ensure_future(aw)
    stop = asyncio.ensure_future(closing.wait())
    try:
        await asyncio.wait({task, stop}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        await aio.cancel_and_wait(stop)
        if not task.done():
            await aio.cancel_and_wait(task)
    return task.done() and not task.cancelled() and task.exception() is None


class GradiumModel:
    """Settings and open sessions of a model (mixed in before the LiveKit base class)."""

    _config: S2SConfig
    _sessions: weakref.WeakSet[GradiumSession]

    def _init_gradium(
        self,
        base: NotGivenOr[S2SConfig],
        *,
        target_language: str,
        conn_options: NotGivenOr[APIConnectOptions],
        http_session: aiohttp.ClientSession | None,
        drain_timeout: float,
        **options: Any,
    ) -> None:
        if drain_timeout <= 0:
            raise ConfigurationError("drain_timeout must be > 0")
        self._config = build_config(
            base, target_language=target_language, conn_options=conn_options, **options
        )
        self._http_session = http_session
        self._drain_timeout = drain_timeout
        self._sessions = weakref.WeakSet()

    @property
    def model(self) -> str:
        """Model name sent in ``setup``."""
        return self._config.model_name

    @property
    def provider(self) -> str:
        """``"gradium"``."""
        return PROVIDER

    @property
    def config(self) -> S2SConfig:
        """Settings new sessions are opened with."""
        return self._config

    async def aclose(self) -> None:
        """Close every open session at once (``drain()`` first keeps what is in flight)."""
        await asyncio.gather(*(s.aclose() for s in list(self._sessions)))


class GradiumSession:
    """The bridge, close and drain of a session (mixed in before the LiveKit base class)."""

    _model: Any  # the GradiumModel that opened it

    def _init_gradium(self, model: Any) -> None:
        self._model = model
        self._closed = False
        self._closing_ev = asyncio.Event()  # aclose() was called: stop any drain
        self._bridge = S2SBridge(model.config, self, http_session=model._http_session)  # type: ignore[arg-type]
        self._reported_at: float | None = None
        model._sessions.add(self)

    @property
    def closed(self) -> bool:
        """True once :meth:`aclose` was called."""
        return self._closed

    @property
    def request_id(self) -> str | None:
        """Server request id of the current connection (give it to support)."""
        return self._bridge.session.request_id

    def push_audio(self, frame: rtc.AudioFrame) -> None:
        """Queue one frame of speech (any sample rate and channel count)."""
        self._bridge.push_frame(frame)

    async def _drained(self) -> None:
        await self._bridge.wait_done()

    async def drain(self, timeout: NotGivenOr[float] = NOT_GIVEN) -> bool:  # noqa: ASYNC109
        """End the input and wait until the last translation was delivered.

        The core flushes its resampler, appends trailing silence and ends the stream, so the
        last utterance is translated. Returns False, early, when the session is closed
        meanwhile (e.g. by a job shutdown) or ``timeout`` (default: the model's
        ``drain_timeout``) expires.
        """
        limit = timeout if is_given(timeout) else self._model._drain_timeout
        self._bridge.end_input()
        return await wait_unless_closing(self._drained(), self._closing_ev, limit)

    async def aclose(self) -> None:
        """Close now: the translation in flight is dropped (call :meth:`drain` first to keep it)."""
        if self._closed:
            return
        self._closed = True
        self._closing_ev.set()
        await self._bridge.aclose()
        self._on_finished(False)

    def _on_finished(self, end_of_stream: bool) -> None:
        raise NotImplementedError

    def _metrics(
        self, request_id: str, ev: TranslationCompleted, started_at: float, cancelled: bool = False
    ) -> TranslationMetrics:
        now = time.monotonic()
        start = self._reported_at or self._bridge.connected_at
        self._reported_at = now
        ttfa = ev.time_to_first_audio
        return TranslationMetrics(
            label=self._model.label,
            request_id=request_id,
            timestamp=time.time() - (now - started_at),
            duration=max(0.0, ev.at - started_at),
            session_duration=0.0 if start is None else now - start,
            ttft=-1.0 if ttfa is None else ttfa,
            cancelled=cancelled,
            input_token_details=RealtimeModelMetrics.InputTokenDetails(),
            output_token_details=RealtimeModelMetrics.OutputTokenDetails(),
            metadata=Metadata(model_name=self._model.model, model_provider=PROVIDER),
            language=ev.language,
            utterance_index=-1 if ev.utterance is None else ev.utterance,
            audio_duration=ev.audio_s,
            characters_count=len(ev.text),
            replayed=ev.replayed,
        )
