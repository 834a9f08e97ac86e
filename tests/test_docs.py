"""The documentation cannot drift from the code.

* Every fenced ``python`` block of ``docs/`` parses, and every name it imports exists (for the
  frameworks that are installed), runnable or not.
* Blocks marked ``<!-- run -->`` (the line before the fence) are executed, in a temporary
  directory holding a short ``speech.wav``, with ``GRADIUM_S2S_URL`` pointing at a local echo
  server. ``<!-- run: key -->`` uses a server that requires an API key and sets
  ``GRADIUM_API_KEY``; ``pipecat`` / ``livekit`` / ``offline`` in the marker skip the block when
  that part is not installed.
* The site builds with ``mkdocs build --strict`` (no warnings), and every public class and
  function of the package (and their public methods) has a docstring and is in the API reference.
* Every message of the troubleshooting table still exists in the source.
"""

from __future__ import annotations

import ast
import asyncio
import importlib
import importlib.util
import inspect
import os
import re
import subprocess
import sys
import threading
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gradium_plugins.local import LocalServer, serve
from tests.conftest import make_speech

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SRC = ROOT / "src" / "gradium_plugins"
API_KEY = "docs-test-key-0123456789abcdef"
PUBLIC_MODULES = (
    "gradium_plugins",
    "gradium_plugins.local",
    "gradium_plugins.local.offline",
    "gradium_plugins.pipecat",
    "gradium_plugins.livekit",
)
NEEDS = {"pipecat": "pipecat", "livekit": "livekit.agents"}

# --- markdown ------------------------------------------------------------------------------------

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<ticks>`{3,})(?P<info>[^\n`]*)$")
_MARKER = re.compile(r"^\s*<!--\s*run(?::\s*(?P<opts>[^>]*?))?\s*-->\s*$")


@dataclass
class Block:
    """One fenced python block of a page."""

    page: str
    line: int
    code: str
    run: bool
    options: frozenset[str]

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


def _blocks() -> list[Block]:
    found = []
    for path in sorted(DOCS.rglob("*.md")):
        lines = path.read_text(encoding="utf-8").splitlines()
        i = 0
        while i < len(lines):
            m = _FENCE.match(lines[i])
            if not m:
                i += 1
                continue
            indent, ticks, info = m["indent"], m["ticks"], m["info"].strip()
            end = i + 1
            while end < len(lines) and lines[end].strip() != ticks:
                end += 1
            body = [ln[len(indent) :] if ln.startswith(indent) else ln for ln in lines[i + 1 : end]]
            if info.split(" ")[0] in ("python", "py"):
                prev = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
                marker = _MARKER.match(prev)
                opts = frozenset((marker["opts"] or "").split()) if marker else frozenset()
                page = str(path.relative_to(DOCS))
                found.append(Block(page, i + 1, "\n".join(body) + "\n", marker is not None, opts))
            i = end + 1
    return found


BLOCKS = _blocks()
RUNNABLE = [b for b in BLOCKS if b.run]


def test_docs_have_runnable_snippets() -> None:
    # Guards the extraction itself: the pages below carry executed examples.
    pages = {b.page for b in RUNNABLE}
    assert {"getting-started.md", "guides/core.md", "faults.md"} <= pages
    assert len(RUNNABLE) >= 8


# --- every block: parses, imports resolve --------------------------------------------------------


def _parse(block: Block) -> ast.Module:
    flags = ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
    tree: ast.Module = compile(block.code, block.id, "exec", flags=flags)
    return tree


def _framework_missing(module: str) -> bool:
    """True when ``module`` belongs to a framework adapter whose framework is not installed."""
    for framework, needed in NEEDS.items():
        if module.split(".")[0] == framework or module.startswith(f"gradium_plugins.{framework}"):
            return importlib.util.find_spec(needed.split(".")[0]) is None
    return False


def _top_level_names(module: str) -> set[str] | None:
    """Names a module defines, read from its source (for modules whose optional deps are missing)."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
        return None
    names: set[str] = set()
    for node in ast.parse(Path(spec.origin).read_text(encoding="utf-8")).body:
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {t.id for t in targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return names


def _check_import(module: str, names: list[str]) -> None:
    if _framework_missing(module):
        return
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        # A framework module that needs an optional dependency of the framework itself (e.g.
        # Pipecat's FastAPI transport): check the names against its source instead.
        if module.startswith("gradium_plugins") or (exc.name or "").split(".")[0] in ("pipecat", "livekit"):
            raise
        defined = _top_level_names(module)
        assert defined is not None, f"cannot read {module} ({exc})"
        missing = [n for n in names if n not in defined]
        assert not missing, f"{module} does not define {missing}"
        return
    for name in names:
        if name != "*" and not hasattr(mod, name):
            importlib.import_module(f"{module}.{name}")  # "from package import submodule"


@pytest.mark.parametrize(
    "block", [b for b in BLOCKS if not b.code.lstrip().startswith("--8<--")], ids=lambda b: b.id
)
def test_python_block_parses_and_its_imports_exist(block: Block) -> None:
    tree = _parse(block)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            _check_import(node.module, [a.name for a in node.names])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                _check_import(alias.name, [])


# --- runnable blocks -----------------------------------------------------------------------------


class ServerThread:
    """A local server on its own event loop thread, so snippets can call ``asyncio.run``."""

    def __init__(self, **kwargs: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="docs-server", daemon=True)
        self.thread.start()
        self.server: LocalServer = asyncio.run_coroutine_threadsafe(serve(**kwargs), self.loop).result(20)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(20)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, ServerThread]]:
    started = {"open": ServerThread(engine="echo"), "key": ServerThread(engine="echo", api_key=API_KEY)}
    try:
        yield started
    finally:
        for s in started.values():
            s.close()


def _write_speech(path: Path) -> None:
    speech = make_speech([330, 550], durations=[0.7, 0.5], rate=16000)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(speech.samples.astype("<i2").tobytes())


def _offline_missing() -> str | None:
    try:
        from gradium_plugins.local.offline import OfflineEngine

        OfflineEngine()
    except Exception as exc:  # noqa: BLE001 - any missing piece means: skip
        return str(exc).splitlines()[0]
    return None


@pytest.mark.parametrize("block", RUNNABLE, ids=lambda b: b.id)
def test_runnable_snippet(
    block: Block,
    servers: dict[str, ServerThread],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    unknown = block.options - {"key", "offline", *NEEDS}
    assert not unknown, f"unknown run options {unknown}"
    for opt, module in NEEDS.items():
        if opt in block.options:
            pytest.importorskip(module)
    if "offline" in block.options and (reason := _offline_missing()) is not None:
        pytest.skip(f"offline engine unavailable: {reason}")
    server = servers["key" if "key" in block.options else "open"]
    for var in [k for k in os.environ if k.startswith("GRADIUM_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("GRADIUM_S2S_URL", server.server.url)
    if "key" in block.options:
        monkeypatch.setenv("GRADIUM_API_KEY", API_KEY)
    monkeypatch.chdir(tmp_path)
    _write_speech(tmp_path / "speech.wav")
    connections = len(server.server.connections)

    exec(compile(block.code, block.id, "exec"), {"__name__": "__main__"})

    out = capsys.readouterr().out
    assert out.strip(), "a runnable snippet should show its result"
    if "key" in block.options:
        assert len(server.server.connections) > connections
        assert all(c.auth != "rejected" for c in server.server.connections[connections:])


# --- the site: strict build, API reference -------------------------------------------------------


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    for module in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python"):
        if importlib.util.find_spec(module.split(".")[0]) is None or importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed (pip install 'gradium-plugins[docs]')")
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"), "-d", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env=env, check=False,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    warnings = [ln for ln in log.splitlines() if "WARNING" in ln]
    assert not warnings, "\n".join(warnings)
    return out


def test_site_builds_strict(site: Path) -> None:
    pages = {p.relative_to(site).as_posix() for p in site.rglob("index.html")}
    for page in ("getting-started/index.html", "faults/index.html", "reference/core/index.html"):
        assert page in pages


def _anchors(site: Path) -> set[str]:
    ids: set[str] = set()
    for page in (site / "reference").rglob("*.html"):
        ids |= set(re.findall(r'id="(gradium_plugins[^"]*)"', page.read_text(encoding="utf-8")))
    return ids


def _own_doc(obj: Any) -> str:
    doc = obj.__dict__.get("__doc__") if inspect.isclass(obj) else getattr(obj, "__doc__", None)
    doc = (doc or "").strip()
    if inspect.isclass(obj) and doc.startswith(f"{obj.__name__}("):
        return ""  # the signature dataclasses put there when the class has no docstring
    return doc


def _members(cls: type) -> Iterator[tuple[str, Any]]:
    for name, value in vars(cls).items():
        if name.startswith("_") or inspect.isclass(value):
            continue
        if isinstance(value, property):
            yield name, value.fget
        elif isinstance(value, staticmethod | classmethod):
            yield name, value.__func__
        elif inspect.isfunction(value):
            yield name, value


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_public_api_is_documented_and_in_the_reference(module_name: str, site: Path) -> None:
    for framework, module in NEEDS.items():
        if framework in module_name:
            pytest.importorskip(module)
    module = importlib.import_module(module_name)
    anchors = _anchors(site)
    missing_doc, missing_ref = [], []
    for name in module.__all__:
        obj = getattr(module, name)
        if not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue
        path = f"{module_name}.{name}"
        if not _own_doc(obj):
            missing_doc.append(path)
        if path not in anchors:
            missing_ref.append(path)
        if inspect.isclass(obj):
            for member, func in _members(obj):
                if not (getattr(func, "__doc__", None) or "").strip():
                    missing_doc.append(f"{path}.{member}")
                if f"{path}.{member}" not in anchors:
                    missing_ref.append(f"{path}.{member}")
    assert not missing_doc, f"public API without a docstring: {missing_doc}"
    assert not missing_ref, f"public API missing from the reference: {missing_ref}"


# --- troubleshooting table -----------------------------------------------------------------------


def _source_strings() -> list[str]:
    """Every string literal of the package; f-string fields become '…'."""
    strings: list[str] = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.JoinedStr):
                strings.append(
                    "".join(v.value if isinstance(v, ast.Constant) else "…" for v in node.values)
                )
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                strings.append(node.value)
    return strings


def _troubleshooting_messages() -> list[str]:
    text = (DOCS / "faults.md").read_text(encoding="utf-8")
    section = text.split("## Troubleshooting", 1)[1]
    cell = re.compile(r"^\|\s*(`+)(.+?)\1\s*\|")
    return [m.group(2) for line in section.splitlines() if (m := cell.match(line))]


def _pattern(source: str) -> re.Pattern[str] | None:
    """A source message as a regex ('…' fields match anything); None if it is mostly fields."""
    literals = source.split("…")
    if sum(len(p) for p in literals) < 15:
        return None
    return re.compile(".*?".join(re.escape(p) for p in literals), re.DOTALL)


def test_troubleshooting_messages_exist_in_the_source() -> None:
    messages = _troubleshooting_messages()
    assert len(messages) >= 30
    strings = _source_strings()
    patterns = [p for p in map(_pattern, strings) if p is not None]

    def cited(message: str) -> bool:
        # The message, with '…' for the parts that vary, is (part of) one source string...
        parts = [p for p in message.split("…") if p]
        for s in strings:
            pos = 0
            for part in parts:
                pos = s.find(part, pos)
                if pos < 0:
                    break
                pos += len(part)
            else:
                return True
        # ...or an instance of a whole source message (with example values filled in).
        return any(p.fullmatch(message) for p in patterns)

    stale = [m for m in messages if not cited(m)]
    assert not stale, f"messages in docs/faults.md that the code no longer produces: {stale}"
