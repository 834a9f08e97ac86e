"""Micro benchmark of the wire hot path: stdlib json/base64 vs orjson/pybase64, ratios in one run.

Run: python benchmarks/hot_path.py [--repeat 7] [--number 20000]

Measures, per message, the work every stream does 12.5 times a second in each direction:

* sending: `protocol.audio_message` around 80 ms of 24 kHz s16le input (3,840 bytes), without and
  with a `client_req_id`;
* receiving: `protocol.parse_server_message` of a server `audio` message carrying 80 ms of 48 kHz
  s16le output (7,680 bytes), and its two parts (JSON decode, base64 decode) on their own.

Each variant is timed with `timeit` (best of --repeat); the table shows µs per call and the
stdlib / C-accelerated ratio. The "protocol" rows time the functions as shipped (whatever they
use), the other rows the libraries alone.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import os
import sys
import timeit
from collections.abc import Callable
from typing import Any

from gradium_plugins import protocol

try:
    import orjson
    import pybase64
except ImportError as exc:  # pragma: no cover - both are dependencies of the package
    raise SystemExit(f"{exc.name} is not installed: pip install -e .") from None

IN_CHUNK = os.urandom(3840)  # 80 ms of 24 kHz s16le
OUT_FRAME = os.urandom(7680)  # 80 ms of 48 kHz s16le
SERVER_AUDIO = protocol.server_audio_message(OUT_FRAME, 1.28, 1.36, 0)


# --- the stdlib variants (what protocol.py did before orjson/pybase64) -----------------------


def stdlib_audio_message(payload: bytes, client_req_id: str | None = None) -> str:
    b64 = base64.b64encode(payload).decode("ascii")
    if client_req_id is None:
        return '{"type":"audio","audio":"' + b64 + '"}'
    return json.dumps({"type": "audio", "audio": b64, "client_req_id": client_req_id}, separators=(",", ":"))


def stdlib_parse_audio(text: str) -> bytes:
    data = json.loads(text)
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        raise ValueError("bad message")
    try:
        return base64.b64decode(data["audio"], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("bad base64") from None


def fast_audio_message(payload: bytes, client_req_id: str | None = None) -> str:
    b64 = pybase64.b64encode_as_string(payload)
    if client_req_id is None:
        return '{"type":"audio","audio":"' + b64 + '"}'
    return orjson.dumps({"type": "audio", "audio": b64, "client_req_id": client_req_id}).decode()


def fast_parse_audio(text: str) -> bytes:
    data = orjson.loads(text)
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        raise ValueError("bad message")
    return pybase64.b64decode(data["audio"], validate=True)


B64_TEXT = json.loads(SERVER_AUDIO)["audio"]

CASES: list[tuple[str, Callable[[], Any], Callable[[], Any]]] = [
    # (name, stdlib, accelerated)
    (
        "send: base64 encode 3840 B",
        lambda: base64.b64encode(IN_CHUNK).decode("ascii"),
        lambda: pybase64.b64encode_as_string(IN_CHUNK),
    ),
    ("send: audio_message", lambda: stdlib_audio_message(IN_CHUNK), lambda: fast_audio_message(IN_CHUNK)),
    (
        "send: audio_message + client_req_id",
        lambda: stdlib_audio_message(IN_CHUNK, "req-1"),
        lambda: fast_audio_message(IN_CHUNK, "req-1"),
    ),
    ("recv: JSON decode audio msg", lambda: json.loads(SERVER_AUDIO), lambda: orjson.loads(SERVER_AUDIO)),
    (
        "recv: base64 decode 7680 B",
        lambda: base64.b64decode(B64_TEXT, validate=True),
        lambda: pybase64.b64decode(B64_TEXT, validate=True),
    ),
    ("recv: JSON + base64", lambda: stdlib_parse_audio(SERVER_AUDIO), lambda: fast_parse_audio(SERVER_AUDIO)),
]


def _best_us(fn: Callable[[], Any], number: int, repeat: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e6


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--number", type=int, default=20000)
    args = p.parse_args(argv)
    assert fast_parse_audio(SERVER_AUDIO) == stdlib_parse_audio(SERVER_AUDIO) == OUT_FRAME
    assert fast_audio_message(IN_CHUNK, "r") == stdlib_audio_message(IN_CHUNK, "r")
    print(f"python {sys.version.split()[0]}, orjson {orjson.__version__}, pybase64 {pybase64.get_version()}")
    print(f"{'case':<38} {'stdlib µs':>10} {'C µs':>8} {'stdlib/C':>9}")
    for name, slow, fast in CASES:
        a, b = _best_us(slow, args.number, args.repeat), _best_us(fast, args.number, args.repeat)
        print(f"{name:<38} {a:>10.2f} {b:>8.2f} {a / b:>8.2f}x")
    # As shipped: protocol.py's own functions, so a regression in the module shows here.
    shipped_send = _best_us(lambda: protocol.audio_message(IN_CHUNK), args.number, args.repeat)
    shipped_recv = _best_us(lambda: protocol.parse_server_message(SERVER_AUDIO), args.number, args.repeat)
    old_send = _best_us(lambda: stdlib_audio_message(IN_CHUNK), args.number, args.repeat)
    old_recv = _best_us(lambda: stdlib_parse_audio(SERVER_AUDIO), args.number, args.repeat)
    print(
        f"{'protocol.audio_message (shipped)':<38} {old_send:>10.2f} {shipped_send:>8.2f} "
        f"{old_send / shipped_send:>8.2f}x"
    )
    print(
        f"{'protocol.parse_server_message (shipped)':<38} {old_recv:>10.2f} {shipped_recv:>8.2f} "
        f"{old_recv / shipped_recv:>8.2f}x"
    )
    per_stream_s = 12.5 * ((old_send - shipped_send) + (old_recv - shipped_recv))
    print(f"saved per stream-second (12.5 messages each way): {per_stream_s / 1000:.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
