"""Audio formats of the Gradium S2S protocol and their sample rates."""

from __future__ import annotations

from dataclasses import dataclass

#: The 80 ms chunk duration the service recommends for input and uses for output.
CHUNK_SECONDS = 0.08


@dataclass(frozen=True, slots=True)
class AudioFormat:
    """One wire audio format.

    Attributes:
        name: The protocol name (``"pcm_16000"``, ``"ulaw_8000"``...).
        codec: ``"pcm"`` (s16le), ``"ulaw"``, ``"alaw"`` or ``"wav"``.
        input_rate: Sample rate of audio the client sends in this format.
        output_rate: Sample rate of audio the server returns in this format.
    """

    name: str
    codec: str
    input_rate: int
    output_rate: int

    def rate(self, direction: str) -> int:
        """Return the sample rate for ``"input"`` or ``"output"``."""
        return self.input_rate if direction == "input" else self.output_rate

    def bytes_per_sample(self) -> int:
        """Return the encoded size of one sample (1 for G.711, 2 for s16le)."""
        return 1 if self.codec in ("ulaw", "alaw") else 2


_FORMATS: dict[str, AudioFormat] = {
    "pcm": AudioFormat("pcm", "pcm", 24000, 48000),
    **{f"pcm_{r}": AudioFormat(f"pcm_{r}", "pcm", r, r) for r in (8000, 16000, 22050, 24000, 44100, 48000)},
    # A WAV stream: one RIFF header, then PCM. Output from the service is 48 kHz s16 mono.
    "wav": AudioFormat("wav", "wav", 24000, 48000),
    "ulaw_8000": AudioFormat("ulaw_8000", "ulaw", 8000, 8000),
    "mulaw_8000": AudioFormat("mulaw_8000", "ulaw", 8000, 8000),
    "alaw_8000": AudioFormat("alaw_8000", "alaw", 8000, 8000),
}

#: Formats the protocol defines that this package cannot encode or decode.
UNSUPPORTED_FORMATS = {"opus": "Ogg Opus needs an Opus codec that gradium-plugins does not ship"}

SUPPORTED_FORMATS: tuple[str, ...] = tuple(_FORMATS)


def get_format(name: str) -> AudioFormat:
    """Look up a wire format by name.

    Raises:
        KeyError: The name is not a supported format.
    """
    return _FORMATS[name]
