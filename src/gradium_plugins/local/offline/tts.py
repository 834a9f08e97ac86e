"""Speech synthesis: Piper (joe voice) for English, espeak-ng in-process for es/fr/de/pt; 48 kHz output.

espeak-ng is driven through ctypes on the library bundled by ``espeakng-loader`` (no system
package). Neither espeak-ng nor Piper's phonemizer is thread-safe, so :class:`Synthesizer` must
be used from one thread at a time (the engine gives it a single worker thread).
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ...audio import Int16Array, resample

logger = logging.getLogger(__name__)

OUTPUT_RATE = 48000
_SENTENCE_GAP_S = 0.15

# espeak-ng C API constants (speak_lib.h).
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_EE_OK = 0
_PARAM_RATE = 1
#: Words per minute. espeak's default (175) is markedly less intelligible to Whisper than 130
#: (round-trip word error rate, es: 0.50 -> 0.35, fr: 0.92 -> 0.82).
ESPEAK_RATE_WPM = 130

Backend = Literal["piper", "espeak"]


@dataclass(frozen=True, slots=True)
class LocalVoice:
    """A voice the offline engine can speak with.

    Attributes:
        id: Local voice id (``piper:<model>`` or ``espeak:<voice>``), accepted as ``voice_id``.
        language: Language code.
        backend: ``piper`` or ``espeak``.
        model: espeak voice name (with ``+variant``) or Piper model name.
        description: Human-readable label.
        rate_wpm: Speaking rate (espeak voices; 0 = the engine's default).
    """

    id: str
    language: str
    backend: Backend
    model: str
    description: str
    rate_wpm: int = 0


def _espeak(lang: str, voice: str, desc: str) -> LocalVoice:
    # French is the hardest for Whisper to understand from espeak; slower speech helps a little.
    return LocalVoice(
        f"espeak:{voice}", lang, "espeak", voice, desc, 115 if lang == "fr" else ESPEAK_RATE_WPM
    )


_JOE = LocalVoice("piper:en_US-joe-medium", "en", "piper", "en_US-joe-medium", "Piper joe (US English, male)")

#: Local voices per language; the first one is the language default. The espeak variants were
#: picked by round-trip intelligibility (synthesise, then transcribe with Whisper base): "+anika"
#: and "+f5" were the clearest female variants, "+f3" clearly worse.
LOCAL_VOICES: dict[str, tuple[LocalVoice, ...]] = {
    "en": (_JOE, _espeak("en", "en-us", "espeak-ng US English (robotic)")),
    "es": (
        _espeak("es", "es+anika", "espeak-ng Spanish, female variant"),
        _espeak("es", "es", "espeak-ng Spanish, male"),
        _espeak("es", "es+m3", "espeak-ng Spanish, male variant"),
    ),
    "fr": (
        _espeak("fr", "fr+f5", "espeak-ng French, female variant"),
        _espeak("fr", "fr", "espeak-ng French, male"),
    ),
    "de": (
        _espeak("de", "de+f5", "espeak-ng German, female variant"),
        _espeak("de", "de", "espeak-ng German, male"),
    ),
    "pt": (
        _espeak("pt", "pt-br+f5", "espeak-ng Brazilian Portuguese, female variant"),
        _espeak("pt", "pt-br", "espeak-ng Brazilian Portuguese, male"),
    ),
}

_BY_ID = {v.id: v for voices in LOCAL_VOICES.values() for v in voices}

#: Gradium flagship voices mapped to the closest local voice (by language and gender).
#: English has a single neural voice (joe); every English flagship voice uses it.
FLAGSHIP_TO_LOCAL: dict[str, str] = {
    "YTpq7expH9539ERJ": _JOE.id,  # Emma
    "LFZvm12tW_z0xfGo": _JOE.id,  # Kent
    "m86j6D7UZpGzHsNu": _JOE.id,  # Jack
    "b35yykvVppLXyw_l": "espeak:fr+f5",  # Elise
    "axlOaUiFyOZhy4nv": "espeak:fr",  # Leo
    "-uP9MuGtBqAvEyxI": "espeak:de+f5",  # Mia
    "0y1VZjPabOBU3rWy": "espeak:de",  # Maximilian
    "B36pbz5_UoWn4BDl": "espeak:es+anika",  # Valentina
    "xu7iJ_fn2ElcWp2s": "espeak:es",  # Sergio
    "sVLgzKMqaptUdaY8": "espeak:es+m3",  # Mateo
    "pYcGZz9VOo4n2ynh": "espeak:pt-br+f5",  # Alice
    "M-FvVo9c-jGR4PgP": "espeak:pt-br",  # Davi
}


def resolve_voice(language: str, voice_id: str | None) -> LocalVoice:
    """Map a requested ``voice_id`` to a local voice of ``language``.

    Flagship Gradium voices and local ids are accepted. Unknown ids, or voices of another
    language, fall back to the language default with a warning (never an error: the cloud's
    catalogue is larger than what ships offline).

    Raises:
        KeyError: No local voice for ``language``.
    """
    voices = LOCAL_VOICES[language]
    if voice_id is None:
        return voices[0]
    local = _BY_ID.get(FLAGSHIP_TO_LOCAL.get(voice_id, voice_id))
    if local is not None and local.language == language:
        return local
    reason = "is not a voice of this language" if local is not None else "is not available offline"
    logger.warning(
        "offline engine: voice %r %s (%s); using %s (%s)",
        voice_id,
        reason,
        language,
        voices[0].id,
        voices[0].description,
    )
    return voices[0]


class EspeakLibrary:
    """Minimal ctypes binding of libespeak-ng in synchronous mode (one instance per process)."""

    _CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)

    def __init__(self, library: Path, data: Path) -> None:
        lib = ctypes.CDLL(str(library))
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint, ctypes.c_uint,
            ctypes.c_void_p, ctypes.c_void_p,
        ]  # fmt: skip
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_Synchronize.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        # espeak-ng adds random jitter; a fixed seed per call makes the same text sound the same.
        self._seed = getattr(lib, "espeak_ng_SetRandSeed", None)
        if self._seed is not None:
            self._seed.argtypes = [ctypes.c_long]
            self._seed.restype = None
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, str(data).encode(), _INITIALIZE_DONT_EXIT)
        if rate <= 0:
            raise RuntimeError(f"espeak-ng failed to initialise with data {data} (code {rate})")
        self.sample_rate = int(rate)
        self._lib = lib
        self._chunks: list[Int16Array] = []
        # Keep a reference: ctypes callbacks are freed when garbage-collected.
        self._callback = self._CALLBACK(self._collect)
        lib.espeak_SetSynthCallback(self._callback)
        self._lock = threading.Lock()
        self._voice: str | None = None

    def _collect(self, wav: Any, count: int, _events: Any) -> int:
        if wav and count > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(count,)).astype(np.int16, copy=True))
        return 0

    def synthesize(self, text: str, voice: str, rate_wpm: int = ESPEAK_RATE_WPM) -> Int16Array:
        """Speak ``text`` with espeak voice ``voice``; return int16 at :attr:`sample_rate`."""
        with self._lock:
            if voice != self._voice:
                if self._lib.espeak_SetVoiceByName(voice.encode()) != _EE_OK:
                    raise RuntimeError(f"espeak-ng has no voice {voice!r}")
                self._voice = voice
            self._lib.espeak_SetParameter(_PARAM_RATE, rate_wpm, 0)
            if self._seed is not None:
                self._seed(1)
            data = text.encode("utf-8") + b"\0"
            self._chunks = []
            err = self._lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
            if err != _EE_OK:
                raise RuntimeError(f"espeak-ng synthesis failed (code {err})")
            self._lib.espeak_Synchronize()
            chunks, self._chunks = self._chunks, []
        return np.concatenate(chunks) if chunks else np.zeros(0, np.int16)


class PiperSynth:
    """The Piper joe voice (onnxruntime)."""

    def __init__(self, model: Path, config: Path, download_dir: Path, threads: int = 1) -> None:
        import json

        import onnxruntime
        from piper import PiperVoice
        from piper.config import PiperConfig

        opts = onnxruntime.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        session = onnxruntime.InferenceSession(
            str(model), sess_options=opts, providers=["CPUExecutionProvider"]
        )
        # Built directly (not PiperVoice.load) to control threads and keep Piper's download dir in our cache.
        self._voice: Any = PiperVoice(
            session=session,
            config=PiperConfig.from_dict(json.loads(config.read_text(encoding="utf-8"))),
            download_dir=download_dir,
        )
        self.sample_rate = int(self._voice.config.sample_rate)

    def synthesize(self, text: str) -> Int16Array:
        """Speak ``text``; return int16 at :attr:`sample_rate` (sentences joined by short gaps)."""
        gap = np.zeros(int(_SENTENCE_GAP_S * self.sample_rate), np.int16)
        parts: list[Int16Array] = []
        for chunk in self._voice.synthesize(text):
            if parts:
                parts.append(gap)
            parts.append(np.asarray(chunk.audio_int16_array, dtype=np.int16).reshape(-1))
        return np.concatenate(parts) if parts else np.zeros(0, np.int16)


class Synthesizer:
    """Every local voice behind one call; output is 48 kHz int16. Use from one thread at a time."""

    def __init__(self, espeak: EspeakLibrary, piper: PiperSynth) -> None:
        self.espeak = espeak
        self.piper = piper
        self._backends: dict[Backend, tuple[Callable[[str, LocalVoice], Int16Array], int]] = {
            "espeak": (
                lambda text, v: espeak.synthesize(text, v.model, v.rate_wpm or ESPEAK_RATE_WPM),
                espeak.sample_rate,
            ),
            "piper": (lambda text, v: piper.synthesize(text), piper.sample_rate),
        }

    def synthesize(self, text: str, voice: LocalVoice) -> Int16Array:
        """Speak ``text`` with ``voice``; return mono int16 at 48 kHz."""
        speak, rate = self._backends[voice.backend]
        audio = speak(text, voice)
        return resample(audio, rate, OUTPUT_RATE)
