"""The offline engine: VAD → Whisper → Apertium → Piper/espeak, per utterance, behind the Engine contract.

Models load once per process (:class:`_Runtime`, shared by every engine instance) in a background
thread. Heavy work runs on three single-thread pools — VAD, STT, TTS — whose FIFO queues serve
concurrent sessions fairly, one utterance at a time per stage, while stages of different
utterances overlap. The event loop only shuffles data and waits on Apertium subprocesses.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from ...audio import Int16Array, resample
from ...voices import LANGUAGES, voice_language
from ..engine import ENGINE_INPUT_RATE, Engine, EngineSession, EngineSetup, EngineSetupError, Utterance
from .assets import (
    ModelPaths,
    OfflineEngineUnavailable,
    check_python_packages,
    isolate_runtime_writes,
    prepare_models,
)
from .mt import ApertiumTranslator, Route
from .stt import SpeechRecognizer, Transcript
from .tts import (
    FLAGSHIP_TO_LOCAL,
    LOCAL_VOICES,
    EspeakLibrary,
    LocalVoice,
    PiperSynth,
    Synthesizer,
    resolve_voice,
)
from .vad import SileroModel, SpeechSegment, StreamingVad, VadConfig

logger = logging.getLogger(__name__)

T = TypeVar("T")

_LANGUAGE_NAMES = {"en": "English", "es": "Spanish", "fr": "French", "de": "German", "pt": "Portuguese"}


class _Runtime:
    """Process-wide models and worker threads (loaded once, whatever the number of engines)."""

    def __init__(self, cache: Path | None, stt_threads: int | None) -> None:
        self.cache_request = cache
        self.stt_threads = stt_threads
        self.vad_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="offline-vad")
        self.stt_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="offline-stt")
        self.tts_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="offline-tts")
        self.loaded = threading.Event()
        self.error: BaseException | None = None
        self.paths: ModelPaths | None = None
        self.vad: SileroModel | None = None
        self.stt: SpeechRecognizer | None = None
        self.tts: Synthesizer | None = None
        self.load_seconds: float | None = None
        self._started = False
        self._lock = threading.Lock()

    def start(self) -> None:
        """Start loading in a background thread (idempotent)."""
        with self._lock:
            if self._started:
                return
            self._started = True
        threading.Thread(target=self._load, name="offline-model-loader", daemon=True).start()

    def _load(self) -> None:
        t0 = time.perf_counter()
        try:
            isolate_runtime_writes()
            paths = prepare_models(self.cache_request)
            self.vad = SileroModel(paths.silero_vad)
            espeak = EspeakLibrary(paths.espeak_library, paths.espeak_data)
            piper = PiperSynth(paths.piper_model, paths.piper_config, paths.cache)
            self.tts = Synthesizer(espeak, piper)
            self.stt = SpeechRecognizer(paths.whisper_dir, cpu_threads=self.stt_threads)
            self.paths = paths
            self.load_seconds = time.perf_counter() - t0
            logger.info("offline engine: models loaded in %.1f s", self.load_seconds)
        except Exception as exc:  # noqa: BLE001 - kept and re-raised to every waiter
            self.error = exc
            logger.error("offline engine: loading models failed: %s", exc)
        finally:
            self.loaded.set()

    async def wait(self) -> None:
        """Wait until the models are loaded; re-raise the load error if any."""
        self.start()
        if not self.loaded.is_set():
            await asyncio.get_running_loop().run_in_executor(None, self.loaded.wait)
        if self.error is not None:
            if isinstance(self.error, OfflineEngineUnavailable):
                raise OfflineEngineUnavailable(str(self.error)) from self.error
            raise RuntimeError(f"offline engine: loading models failed: {self.error}") from self.error


_runtime: _Runtime | None = None
_runtime_lock = threading.Lock()


def _get_runtime(cache: Path | None, stt_threads: int | None) -> _Runtime:
    global _runtime
    with _runtime_lock:
        if _runtime is None:
            _runtime = _Runtime(cache, stt_threads)
        elif cache is not None and _runtime.cache_request not in (None, cache):
            logger.warning(
                "offline engine: models already loaded from %s; ignoring cache_dir=%s",
                _runtime.cache_request,
                cache,
            )
        return _runtime


@dataclass(frozen=True, slots=True)
class _Plan:
    """What a session does with each utterance."""

    source: str | None  # None: detect per utterance
    target: str | None  # None: re-voice in the (detected) source language
    allowed_sources: frozenset[str]
    voice_id: str | None
    target_voice: LocalVoice | None  # resolved at setup when the target is known


class OfflineEngine(Engine):
    """Real speech translation with no key and no network (engine name ``offline``).

    Args:
        cache_dir: Where the Whisper model is assembled once (default
            ``$GRADIUM_PLUGINS_CACHE``, ``$XDG_CACHE_HOME/gradium-plugins`` or
            ``~/.cache/gradium-plugins``; falls back to the temp dir when not writable).
        apertium: The Apertium executable.
        stt_threads: CTranslate2 threads for Whisper (default: CPU count, at most 4; OpenMP
            threads sleep when idle unless ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` is set).
        vad: Utterance segmentation rules (end-of-utterance silence, max length...).
        mt_concurrency: Apertium processes allowed at once per engine.

    Raises:
        OfflineEngineUnavailable: The ``local`` extra or Apertium is missing; the message
            names the exact install commands.
    """

    name = "offline"

    def __init__(
        self,
        *,
        cache_dir: str | Path | None = None,
        apertium: str = "apertium",
        stt_threads: int | None = None,
        vad: VadConfig | None = None,
        mt_concurrency: int = 2,
    ) -> None:
        check_python_packages()
        self.translator = ApertiumTranslator(LANGUAGES, binary=apertium)
        self.vad_config = vad or VadConfig()
        self._runtime = _get_runtime(Path(cache_dir) if cache_dir is not None else None, stt_threads)
        self._mt_concurrency = mt_concurrency
        self._mt_slots: asyncio.Semaphore | None = None
        self._mt_loop: asyncio.AbstractEventLoop | None = None

    # --- capabilities ------------------------------------------------------------------------

    @property
    def languages(self) -> tuple[str, ...]:
        """Languages the engine can recognise and speak (re-voicing works for each)."""
        return tuple(lang for lang in LANGUAGES if lang in LOCAL_VOICES)

    def routes(self) -> dict[tuple[str, str], Route]:
        """Translation routes available (source, target) → Apertium modes."""
        return dict(self.translator.routes)

    def available_pairs(self) -> list[tuple[str, str]]:
        """Every (source, target) served, including same-language re-voicing."""
        pairs = {(lang, lang) for lang in self.languages}
        pairs |= {p for p in self.translator.routes if set(p) <= set(self.languages)}
        order = {lang: i for i, lang in enumerate(LANGUAGES)}
        return sorted(pairs, key=lambda p: (order[p[0]], order[p[1]]))

    def describe_pairs(self) -> str:
        """Human-readable list of the available pairs (used in setup errors)."""
        parts = []
        for (src, tgt), route in sorted(self.translator.routes.items()):
            via = f" (via {route.pivot})" if route.pivot else ""
            parts.append(f"{src}->{tgt}{via}")
        return f"{', '.join(parts)}; same-language re-voicing: {', '.join(self.languages)}"

    def voices(self) -> dict[str, tuple[LocalVoice, ...]]:
        """Local voices per language (first = default)."""
        return {lang: LOCAL_VOICES[lang] for lang in self.languages}

    # --- lifecycle ---------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """True once the models are loaded (successfully)."""
        return self._runtime.loaded.is_set() and self._runtime.error is None

    async def start(self, wait: bool = False) -> None:
        """Start loading the models in a background thread (once per process).

        Args:
            wait: Also wait until they are loaded (raises the load error if any).
        """
        self._runtime.start()
        if wait:
            await self._runtime.wait()

    async def wait_ready(self) -> None:
        """Wait for the models (starting the load if needed).

        Raises:
            OfflineEngineUnavailable: A model is missing or corrupt.
        """
        await self._runtime.wait()

    async def synthesize(self, text: str, language: str, voice_id: str | None = None) -> Int16Array:
        """Speak ``text`` with a local voice (demo material, round-trip checks).

        Returns:
            Mono int16 at 48 kHz.
        """
        await self._runtime.wait()
        rt = self._runtime
        assert rt.tts is not None
        return await _in_pool(rt.tts_pool, rt.tts.synthesize, text, resolve_voice(language, voice_id))

    async def transcribe(
        self, audio: Int16Array, sample_rate: int, language: str | None = None
    ) -> Transcript:
        """Recognise a whole (short) recording with the engine's Whisper model, without VAD."""
        await self._runtime.wait()
        rt = self._runtime
        assert rt.stt is not None
        pcm = resample(audio, sample_rate, 16000).astype(np.float32) / 32768.0
        return await _in_pool(rt.stt_pool, rt.stt.transcribe, pcm, language, None)

    def open(self, setup: EngineSetup) -> EngineSession:
        """Check the language pair and open a session.

        Raises:
            EngineSetupError: Unknown language, or no offline model for the pair; the message
                lists the available pairs.
        """
        return OfflineSession(self, self._plan(setup))

    async def aclose(self) -> None:
        """Nothing per engine: models and threads live for the process."""

    # --- internals ---------------------------------------------------------------------------

    def _refuse(self, what: str) -> EngineSetupError:
        return EngineSetupError(f"offline engine: {what}. Available offline pairs: {self.describe_pairs()}")

    def _plan(self, setup: EngineSetup) -> _Plan:
        src, tgt = setup.source_language, setup.target_language
        for lang, field in ((src, "source_language"), (tgt, "target_language")):
            if lang is not None and lang not in self.languages:
                raise self._refuse(f"{field} {lang!r} is not supported offline")
        if src is not None and tgt is not None and src != tgt and self.translator.route(src, tgt) is None:
            raise self._refuse(
                f"no offline translation model for {_LANGUAGE_NAMES.get(src, src)} -> "
                f"{_LANGUAGE_NAMES.get(tgt, tgt)} ({src}->{tgt})"
            )
        if src is not None:
            allowed = frozenset({src})
        elif tgt is None:
            allowed = frozenset(self.languages)
        else:
            allowed = frozenset({tgt} | {s for (s, t) in self.translator.routes if t == tgt})
            if allowed == {tgt}:
                # Only same-language speech could be served; anything else would be nonsense.
                raise self._refuse(
                    f"no offline translation model into {_LANGUAGE_NAMES.get(tgt, tgt)} ({tgt}); to re-voice "
                    f"{tgt} speech set source_language={tgt!r}"
                )
        # Resolved now so an unknown voice is reported (logged) once, at setup.
        voice = resolve_voice(tgt, setup.voice_id) if tgt is not None else None
        return _Plan(src, tgt, allowed, setup.voice_id, voice)

    def _mt_semaphore(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if self._mt_slots is None or self._mt_loop is not loop:
            self._mt_slots, self._mt_loop = asyncio.Semaphore(self._mt_concurrency), loop
        return self._mt_slots


async def _in_pool(pool: concurrent.futures.Executor, fn: Callable[..., T], *args: Any) -> T:
    return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)


class OfflineSession(EngineSession):
    """One stream: segments its input, then translates utterances one after another, in order."""

    def __init__(self, engine: OfflineEngine, plan: _Plan) -> None:
        self.engine = engine
        self.plan = plan
        self._voices: dict[str, LocalVoice] = {}
        self._reader: asyncio.Task[None] | None = None
        self._closed = False
        #: Per-utterance timings (seconds), for benchmarks and logs.
        self.timings: list[dict[str, float]] = []

    def _voice(self, language: str) -> LocalVoice:
        if self.plan.target_voice is not None and language == self.plan.target:
            return self.plan.target_voice
        voice = self._voices.get(language)
        if voice is None:
            voice_id = self.plan.voice_id
            if self.plan.target is None and voice_id is not None and _voice_language(voice_id) != language:
                # Re-voicing speech detected in another language than the voice's: its default voice.
                voice_id = None
            voice = self._voices[language] = resolve_voice(language, voice_id)
        return voice

    async def run(self, audio: AsyncIterator[Any]) -> AsyncIterator[Utterance]:
        """Consume input chunks, yield translated utterances in order (see :class:`EngineSession`)."""
        runtime = self.engine._runtime
        await runtime.wait()
        queue: asyncio.Queue[SpeechSegment | BaseException | None] = asyncio.Queue()
        self._reader = asyncio.create_task(self._read(audio, queue), name="offline-vad-reader")
        try:
            while True:
                item = await queue.get()
                if item is None:
                    break
                if isinstance(item, BaseException):
                    raise item
                utterance = await self._translate(item)
                if utterance is not None:
                    yield utterance
        finally:
            if not self._reader.done():
                self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader

    async def _read(
        self, audio: AsyncIterator[Any], queue: asyncio.Queue[SpeechSegment | BaseException | None]
    ) -> None:
        runtime = self.engine._runtime
        assert runtime.vad is not None
        vad = StreamingVad(runtime.vad, ENGINE_INPUT_RATE, self.engine.vad_config)
        try:
            async for chunk in audio:
                if len(chunk) == 0:
                    continue
                # Small, bounded work per chunk (a few 32 ms windows); still off the loop.
                for seg in await _in_pool(runtime.vad_pool, vad.push, chunk):
                    queue.put_nowait(seg)
            for seg in await _in_pool(runtime.vad_pool, vad.flush):
                queue.put_nowait(seg)
            queue.put_nowait(None)
        except Exception as exc:  # noqa: BLE001 - handed to run(), which raises it
            queue.put_nowait(exc)

    async def _translate(self, seg: SpeechSegment) -> Utterance | None:
        runtime = self.engine._runtime
        assert runtime.stt is not None and runtime.tts is not None
        plan = self.plan
        t0 = time.perf_counter()
        heard: Transcript = await _in_pool(
            runtime.stt_pool, runtime.stt.transcribe, seg.audio, plan.source, plan.allowed_sources
        )
        t1 = time.perf_counter()
        if heard.rejected_language is not None:
            logger.warning(
                "offline engine: skipped an utterance at %.1f-%.1f s: detected %s (p=%.2f), "
                "no offline model for %s->%s",
                seg.start_s,
                seg.end_s,
                heard.rejected_language,
                heard.language_probability,
                heard.rejected_language,
                plan.target,
            )
            return None
        if not heard.text:
            return None
        target = plan.target or heard.language
        text = heard.text
        if target != heard.language:
            try:
                async with self.engine._mt_semaphore():
                    text = await self.engine.translator.translate(heard.text, heard.language, target)
            except (RuntimeError, OSError) as exc:
                logger.error(
                    "offline engine: translation %s->%s failed, utterance skipped: %s",
                    heard.language,
                    target,
                    exc,
                )
                return None
        t2 = time.perf_counter()
        if not text:
            return None
        speech = await _in_pool(runtime.tts_pool, runtime.tts.synthesize, text, self._voice(target))
        t3 = time.perf_counter()
        self.timings.append(
            {
                "stt": t1 - t0,
                "mt": t2 - t1,
                "tts": t3 - t2,
                "total": t3 - t0,
                "audio_s": seg.end_s - seg.start_s,
            }
        )
        logger.debug(
            "offline engine: %s->%s %r -> %r (stt %.2f s, mt %.2f s, tts %.2f s)",
            heard.language,
            target,
            heard.text,
            text,
            t1 - t0,
            t2 - t1,
            t3 - t2,
        )
        return Utterance(
            text=text, audio=speech, source_text=heard.text, input_start_s=seg.start_s, input_end_s=seg.end_s
        )

    async def aclose(self) -> None:
        """Stop reading input (the run generator's own cleanup does the rest)."""
        self._closed = True
        if self._reader is not None and not self._reader.done():
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader


def _voice_language(voice_id: str) -> str | None:
    lang = voice_language(voice_id)
    if lang is not None:
        return lang
    local = FLAGSHIP_TO_LOCAL.get(voice_id, voice_id)
    return next((code for code, voices in LOCAL_VOICES.items() if any(v.id == local for v in voices)), None)
