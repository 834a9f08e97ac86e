"""Machine translation with the Apertium command-line tool (Debian packages), one process per utterance.

Each call runs in a worker thread, with temporary files for input and output, so it works the same
under any event loop (uvloop included).

Apertium's installed modes are discovered with ``apertium -l``; pairs without a direct mode are
served through one pivot language (en↔fr through es). A persistent pipe is not used: Apertium's
null-flush mode hangs on Debian bookworm, and a spawn costs only 0.1-0.2 s.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from typing import IO

from .assets import APT_INSTALL_HINT, OfflineEngineUnavailable

logger = logging.getLogger(__name__)

# Apertium names languages with ISO 639-3 (newer pairs) or 639-1 (older pairs).
_ISO: dict[str, str] = {
    "en": "en", "eng": "en",
    "es": "es", "spa": "es",
    "fr": "fr", "fra": "fr", "fre": "fr",
    "de": "de", "deu": "de", "ger": "de",
    "pt": "pt", "por": "pt",
}  # fmt: skip
_MODE_RE = re.compile(r"^([a-z]{2,3})-([a-z]{2,3})$")
# Leftovers Apertium may emit on odd input: analysis tags, and error marks in front of words.
_TAG_RE = re.compile(r"<[a-z0-9_]+>")
_MARK_RE = re.compile(r"(?<!\S)[#@*~](?=\w)")


@dataclass(frozen=True, slots=True)
class Route:
    """How to translate one language pair: one mode, or two through a pivot."""

    source: str
    target: str
    modes: tuple[str, ...]

    @property
    def pivot(self) -> str | None:
        """The intermediate language, if any."""
        return None if len(self.modes) == 1 else _ISO[self.modes[0].split("-")[1]]


def parse_modes(listing: str, languages: tuple[str, ...]) -> dict[tuple[str, str], Route]:
    """Build routes from the output of ``apertium -l``, restricted to ``languages``.

    Direct modes win; otherwise one pivot is tried (the shortest route is deterministic:
    pivots are tried in ``languages`` order).
    """
    direct: dict[tuple[str, str], str] = {}
    for line in listing.split():
        m = _MODE_RE.match(line.strip())
        if not m:  # variants ("spa-eng_US"), "eco-" modes, anything unusual
            continue
        src, tgt = _ISO.get(m.group(1)), _ISO.get(m.group(2))
        if src and tgt and src != tgt:
            direct.setdefault((src, tgt), line.strip())
    routes = {
        pair: Route(pair[0], pair[1], (mode,)) for pair, mode in direct.items() if set(pair) <= set(languages)
    }
    for src in languages:
        for tgt in languages:
            if src == tgt or (src, tgt) in routes:
                continue
            for pivot in languages:
                first, second = direct.get((src, pivot)), direct.get((pivot, tgt))
                if first and second:
                    routes[(src, tgt)] = Route(src, tgt, (first, second))
                    break
    return routes


class ApertiumTranslator:
    """Translates text with Apertium subprocesses, asynchronously.

    Args:
        languages: Languages the engine cares about.
        binary: The ``apertium`` executable (name or path).
        timeout_s: Per-call limit; a stuck process is killed.
    """

    def __init__(self, languages: tuple[str, ...], binary: str = "apertium", timeout_s: float = 20.0) -> None:
        path = shutil.which(binary)
        if path is None:
            raise OfflineEngineUnavailable(
                f"offline engine: the Apertium translator ({binary!r}) is not installed; install it with: "
                f"{APT_INSTALL_HINT}"
            )
        self.binary = path
        self.timeout_s = timeout_s
        # Threads that wait on Apertium processes (the engine caps calls with mt_concurrency).
        self._pool = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="apertium")
        try:
            listing = subprocess.run(
                [path, "-l"], capture_output=True, text=True, timeout=30, check=False
            ).stdout
        except (OSError, subprocess.SubprocessError) as exc:
            raise OfflineEngineUnavailable(
                f"offline engine: cannot run {path} -l ({exc}); {APT_INSTALL_HINT}"
            ) from exc
        self.routes = parse_modes(listing, languages)
        if not self.routes:
            raise OfflineEngineUnavailable(
                f"offline engine: Apertium has no language pair for {', '.join(languages)} installed; "
                f"install them with: {APT_INSTALL_HINT}"
            )

    def route(self, source: str, target: str) -> Route | None:
        """Return the route for a pair, or None when it is not available."""
        return self.routes.get((source, target))

    async def translate(self, text: str, source: str, target: str) -> str:
        """Translate one utterance.

        Raises:
            KeyError: The pair has no route.
            RuntimeError: Apertium failed, timed out, or answered nothing for a non-empty text
                (the message carries Apertium's stderr).
        """
        route = self.routes[(source, target)]
        words = " ".join(text.split())
        if not words:
            return ""
        out, err = await self._run_pipeline(route.modes, (words + "\n").encode("utf-8"))
        result = clean_output(out.decode("utf-8", errors="replace"))
        if not result:
            # Never a silent drop: an empty answer to words is a broken installation or invocation.
            raise RuntimeError(
                f"apertium {' | '.join(route.modes)} gave no output for {len(words)} characters of input; "
                f"stderr: {_tail(err) or '(empty)'}"
            )
        return result

    async def _run_pipeline(self, modes: tuple[str, ...], data: bytes) -> tuple[bytes, bytes]:
        # A worker thread runs the processes synchronously: the event loop's subprocess support
        # differs between loops (uvloop hands the child a socket for a piped stdin, on which the
        # `apertium` script cannot open /dev/stdin: usage on stderr, exit 0, no output), and a
        # thread costs the same (0.11 s a call either way, measured on both loops).
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._run_sync, modes, data)

    def _run_sync(self, modes: tuple[str, ...], data: bytes) -> tuple[bytes, bytes]:
        # Input, output and errors are temporary files: no pipe to keep drained, no deadlock
        # whatever the sizes. Pivot modes run as two processes joined by a pipe (a shell pipeline).
        with contextlib.ExitStack() as files:

            def temp() -> IO[bytes]:
                return files.enter_context(tempfile.TemporaryFile(prefix="gradium-apertium-"))

            source, out = temp(), temp()
            source.write(data)
            source.flush()
            source.seek(0)
            errs: list[IO[bytes]] = []
            procs: list[subprocess.Popen[bytes]] = []
            stdin: IO[bytes] | None = source
            try:
                for i, mode in enumerate(modes):
                    last = i == len(modes) - 1
                    errs.append(temp())
                    proc = subprocess.Popen(
                        [self.binary, "-u", mode],
                        stdin=stdin,
                        stdout=out if last else subprocess.PIPE,
                        stderr=errs[-1],
                    )
                    procs.append(proc)
                    if stdin is not source and stdin is not None:
                        stdin.close()  # the previous stage's pipe: the child holds it now
                    stdin = proc.stdout
                deadline = time.monotonic() + self.timeout_s
                for proc in procs:
                    proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise RuntimeError(
                    f"apertium {' | '.join(modes)} timed out after {self.timeout_s:.0f} s"
                ) from None
            finally:
                for proc in procs:
                    if proc.poll() is None:
                        proc.kill()
                        proc.wait()
            out.seek(0)
            result = out.read()
            for e in errs:
                e.seek(0)
            err = b"\n".join(text for text in (e.read() for e in errs) if text)
        codes = [p.returncode for p in procs]
        if any(codes):
            raise RuntimeError(f"apertium {' | '.join(modes)} failed (exit {codes}): {_tail(err)}")
        return result, err


def _tail(err: bytes, limit: int = 300) -> str:
    """Apertium's stderr, shortened for a log line."""
    text = " ".join(err.decode("utf-8", errors="replace").split())
    return text if len(text) <= limit else text[:limit] + "..."


def clean_output(text: str) -> str:
    """Remove Apertium debug leftovers (tags, error marks) and normalise spaces."""
    text = _TAG_RE.sub("", text)
    text = _MARK_RE.sub("", text)
    return " ".join(text.split())
