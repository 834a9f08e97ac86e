"""Speech recognition with faster-whisper and the packaged Whisper base model (int8, greedy).

Utterances arrive already cut by the VAD (at most ~15 s), so instead of
``WhisperModel.transcribe`` (which always encodes a 30 s window, and encodes twice when it
detects the language) we drive the same CTranslate2 model directly:

* the log-Mel features are padded to a 15 s window, not 30 s: the encoder cost halves and, on
  our measurements (Piper English, espeak Spanish), the word error rate does not change;
* the encoder runs once per utterance; language detection and decoding share its output;
* greedy decoding at temperature 0 with a token budget proportional to the audio length, so a
  decoder loop on hard audio cannot run away (no temperature fallback: latency stays bounded).

Utterances longer than the window fall back to ``transcribe`` with the same options.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

logger = logging.getLogger(__name__)


def prefer_passive_openmp() -> bool:
    """Make OpenMP threads sleep when idle, unless the user chose a policy; True when it applies.

    CTranslate2's OpenMP (libgomp) threads spin before sleeping. On a machine whose cores are
    busy with other work (the other stages, other sessions, other processes) spinning threads
    steal the very core they wait for: see ``benchmarks/offline_contention.py``. libgomp reads
    its environment once, when CTranslate2 is first imported, so this runs at import time.
    """
    if "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ:
        return os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE"
    if "ctranslate2" in sys.modules:
        logger.debug("offline engine: CTranslate2 already loaded; OpenMP wait policy left as is")
        return False
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return True


PASSIVE_OPENMP = prefer_passive_openmp()


def default_threads() -> int:
    """Whisper's threads: the CPU count, at most 4.

    With passive OpenMP waiting, two threads on two busy cores beat one (leaving a core to the
    other stages): 1.3-1.7 s against 1.5-2.3 s median end of utterance -> translated audio,
    measured with ``benchmarks/offline_contention.py``.
    """
    return max(1, min(4, os.cpu_count() or 1))

#: Above this probability a detected language outside the allowed set is trusted: the
#: utterance is rejected rather than forced into a wrong language (which yields nonsense).
FOREIGN_LANGUAGE_MIN_PROB = 0.5
#: Feature frames of the short window (100 frames per second).
SHORT_WINDOW_FRAMES = 1500
FULL_WINDOW_FRAMES = 3000
_NO_SPEECH_PROB = 0.6
_LOW_LOGPROB = -1.0
_MAX_TOKENS = 440


@dataclass(frozen=True, slots=True)
class Transcript:
    """Result of recognising one utterance.

    Attributes:
        text: Recognised text (empty when nothing intelligible was said).
        language: Language the text is in (given, or detected).
        language_probability: Detection confidence (1.0 when the language was given).
        rejected_language: Set when the speech was confidently in a language outside the
            allowed set; ``text`` is then empty.
    """

    text: str
    language: str
    language_probability: float = 1.0
    rejected_language: str | None = None


class SpeechRecognizer:
    """A loaded Whisper model. ``transcribe`` is blocking: call it from one worker thread.

    Args:
        model_dir: Directory with ``model.bin``, ``config.json``, ``tokenizer.json``, ``vocabulary.txt``.
        cpu_threads: Threads CTranslate2 may use per call (default: :func:`default_threads`).
    """

    def __init__(self, model_dir: Path, cpu_threads: int | None = None) -> None:
        from faster_whisper import WhisperModel
        from faster_whisper.tokenizer import Tokenizer
        from faster_whisper.transcribe import get_suppressed_tokens

        threads = cpu_threads or default_threads()
        self.threads = threads
        # A local directory + local_files_only: faster-whisper never consults the hub.
        self._model: Any = WhisperModel(
            str(model_dir),
            device="cpu",
            compute_type="int8",
            cpu_threads=threads,
            num_workers=1,
            local_files_only=True,
        )
        self._tokenizer: Any = Tokenizer(self._model.hf_tokenizer, True, task="transcribe", language="en")
        self._suppress = list(get_suppressed_tokens(self._tokenizer, [-1]) or [])
        self.languages: frozenset[str] = frozenset(self._model.supported_languages)

    def transcribe(
        self,
        audio: npt.NDArray[np.float32],
        language: str | None = None,
        allowed: Collection[str] | None = None,
    ) -> Transcript:
        """Recognise one utterance of 16 kHz float32 audio.

        Args:
            audio: The utterance.
            language: Source language when known; else it is detected.
            allowed: When detecting, the languages the caller can handle. Speech confidently
                in another language is rejected (empty text, ``rejected_language`` set).
        """
        features = self._model.feature_extractor(audio)
        frames = features.shape[-1]
        if frames > FULL_WINDOW_FRAMES - 100:
            return self._transcribe_long(audio, language, allowed)
        window = SHORT_WINDOW_FRAMES if frames <= SHORT_WINDOW_FRAMES - 100 else FULL_WINDOW_FRAMES
        features = np.pad(features, ((0, 0), (0, window - frames)))
        encoded = self._model.encode(features)
        prob = 1.0
        if language is None:
            ranked = [(tok[2:-2], float(p)) for tok, p in self._model.model.detect_language(encoded)[0]]
            picked = _pick_language(ranked, allowed)
            if isinstance(picked, Transcript):
                return picked
            language, prob = picked
        tok = self._tokenizer
        prompt = [tok.sot, tok.tokenizer.token_to_id(f"<|{language}|>"), tok.transcribe, tok.no_timestamps]
        budget = min(_MAX_TOKENS - len(prompt), 24 + int(len(audio) / 16000 * 12))
        result = self._model.model.generate(
            encoded,
            [prompt],
            beam_size=1,
            max_length=len(prompt) + budget,
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=self._suppress,
        )[0]
        tokens = [t for t in result.sequences_ids[0] if t < tok.eot]
        avg_logprob = result.scores[0] * len(tokens) / (len(tokens) + 1) if tokens else -10.0
        if result.no_speech_prob > _NO_SPEECH_PROB and avg_logprob < _LOW_LOGPROB:
            return Transcript("", language, prob)  # Whisper's own silence rule
        text = collapse_repetitions(tok.decode(tokens).strip())
        return Transcript(text, language, prob)

    def _transcribe_long(
        self, audio: npt.NDArray[np.float32], language: str | None, allowed: Collection[str] | None
    ) -> Transcript:
        prob = 1.0
        if language is None:
            _lang, _p, ranked = self._model.detect_language(audio=audio)
            picked = _pick_language([(lang, float(p)) for lang, p in ranked], allowed)
            if isinstance(picked, Transcript):
                return picked
            language, prob = picked
        segments, _info = self._model.transcribe(
            audio,
            language=language,
            beam_size=1,
            temperature=0.0,
            condition_on_previous_text=False,
            vad_filter=False,
            without_timestamps=True,
        )
        text = collapse_repetitions(" ".join(s.text.strip() for s in segments).strip())
        return Transcript(text, language, prob)


def _pick_language(
    ranked: list[tuple[str, float]], allowed: Collection[str] | None
) -> tuple[str, float] | Transcript:
    best, prob = ranked[0]
    if not allowed or best in allowed:
        return best, prob
    if prob >= FOREIGN_LANGUAGE_MIN_PROB:
        return Transcript("", best, prob, rejected_language=best)
    candidates = [(lang, p) for lang, p in ranked if lang in allowed]
    if not candidates:
        return Transcript("", best, prob, rejected_language=best)
    return max(candidates, key=lambda lp: lp[1])


_WORD_RE = re.compile(r"\S+")


def collapse_repetitions(text: str, max_ngram: int = 6) -> str:
    """Cut decoder loops: a run of one word repeated 4+ times, or of an n-gram 3+ times, is kept once.

    Greedy decoding without temperature fallback can loop on hard audio ("m'en m'en m'en ...").
    """
    words = _WORD_RE.findall(text)
    out: list[str] = []
    i = 0
    while i < len(words):
        step = 0
        for n in range(1, min(max_ngram, len(words) - i) + 1):
            gram = words[i : i + n]
            reps = 1
            while words[i + reps * n : i + (reps + 1) * n] == gram:
                reps += 1
            if reps >= (4 if n == 1 else 3):
                out.extend(gram)
                step = reps * n
                break
        if step:
            i += step
        else:
            out.append(words[i])
            i += 1
    return " ".join(out)
