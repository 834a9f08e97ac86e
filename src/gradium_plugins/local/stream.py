"""One request of a local server connection: ``setup`` ... ``end_of_stream``.

Input is decoded (a WAV header is validated first), resampled to the engine rate and buffered
for the engine within a byte budget; the engine's utterances go out as ``text`` plus 80 ms
``audio`` frames on a gapless timeline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import NoReturn

from websockets.exceptions import ConnectionClosed

from ..audio import Int16Array, StreamResampler, WireDecoder, encode_samples, resample, wav_header
from ..errors import AudioFormatError, ProtocolError
from ..formats import CHUNK_SECONDS, SUPPORTED_FORMATS, UNSUPPORTED_FORMATS, AudioFormat, get_format
from ..protocol import (
    AudioIn,
    EndOfStreamIn,
    SetupRequest,
    parse_client_message,
    ready_message,
    server_audio_message,
    server_text_message,
)
from .connection import Connection, Finished, Halt, with_fields
from .engine import (
    ENGINE_INPUT_RATE,
    ENGINE_OUTPUT_RATE,
    EngineSession,
    EngineSetup,
    EngineSetupError,
    Utterance,
)
from .limits import InputBuffer, WavInfo, check_wav_header
from .records import END_EOS, END_ERROR, END_SESSION_CAP, keep_last

logger = logging.getLogger("gradium_plugins.local.server")


class Request:
    """State of one request (one ``setup`` ... ``end_of_stream``) on a connection."""

    __slots__ = (
        "anchor",
        "completed",
        "decoder",
        "delay_s",
        "delayed",
        "frame",
        "idle",
        "in_rate",
        "input_s",
        "out_fmt",
        "out_rate",
        "out_samples",
        "queue",
        "resampler",
        "suffix",
        "tasks",
        "wav",
        "wav_header_pending",
    )

    def __init__(self, in_fmt: AudioFormat, out_fmt: AudioFormat, suffix: str, queue: InputBuffer) -> None:
        self.decoder = WireDecoder(in_fmt, "input")
        self.resampler: StreamResampler | None = None
        self.in_rate = in_fmt.input_rate
        self.out_fmt = out_fmt
        self.out_rate = out_fmt.output_rate
        self.frame = round(self.out_rate * CHUNK_SECONDS)
        self.suffix = suffix
        self.input_s = 0.0
        self.out_samples = 0
        self.wav: WavInfo | None = None  # the input's WAV header, once seen
        self.wav_header_pending = out_fmt.codec == "wav"
        # Bounded in bytes: when the engine falls behind, reading stops and TCP pushes back.
        self.queue = queue
        self.delayed: asyncio.Queue[tuple[float, str]] | None = None
        self.delay_s = 0.0
        self.tasks: list[asyncio.Task[None]] = []
        self.anchor: float | None = None
        self.completed = False
        # Set while the engine waits on an empty queue, i.e. all output of the input so far is out.
        self.idle = asyncio.Event()


async def _format(conn: Connection, name: str, what: str) -> AudioFormat:
    if name in UNSUPPORTED_FORMATS:
        await conn.fail(
            f"{what} {name!r} is not supported by the local server "
            f"({UNSUPPORTED_FORMATS[name]}); use one of: {', '.join(SUPPORTED_FORMATS)}",
            1008,
            END_ERROR,
        )
    try:
        return get_format(name)
    except KeyError:
        await conn.fail(
            f"unknown {what} {name!r}; allowed values: {', '.join(SUPPORTED_FORMATS)}", 1008, END_ERROR
        )


async def serve_request(conn: Connection, setup: SetupRequest) -> bool:
    """Serve one request; return True when the socket stays open for another ``setup``."""
    conn.suffix = (
        "" if setup.client_req_id is None else (',"client_req_id":' + json.dumps(setup.client_req_id))
    )
    in_fmt = await _format(conn, setup.input_format, "input_format")
    out_fmt = await _format(conn, setup.output_format, "output_format")
    plan = conn.plan
    if plan is not None and plan.reject_setup is not None:
        await conn.fail(plan.reject_setup, 1008, END_ERROR)
    cfg = setup.json_config
    target, source = cfg.get("target_language"), cfg.get("source_language")
    if not isinstance(target, str | None) or not isinstance(source, str | None):
        await conn.fail("json_config target_language and source_language must be strings", 1008, END_ERROR)
    try:
        session = conn.server.engine.open(EngineSetup(target, source, setup.voice_id, setup.model_name, cfg))
    except EngineSetupError as exc:
        await conn.fail(exc.message, exc.code, END_ERROR)

    queue = InputBuffer(conn.limits.max_input_buffer_bytes, conn.server.input_queue_chunks)
    req = Request(in_fmt, out_fmt, conn.suffix, queue)
    if plan is not None and plan.delay_output_s > 0:
        req.delay_s = plan.delay_output_s
        req.delayed = asyncio.Queue()
        req.tasks.append(asyncio.create_task(_delayed_sender(conn, req.delayed)))
    request_id = uuid.uuid4().hex
    keep_last(conn.record.request_ids, request_id)
    producer = asyncio.create_task(_produce(conn, req, session, request_id, setup.model_name))
    try:
        await _read_input(conn, req)
        await producer  # drain: every utterance, then end_of_stream
        if not req.completed:
            raise Halt
    finally:
        for task in (producer, *req.tasks):
            task.cancel()
        await asyncio.gather(producer, *req.tasks, return_exceptions=True)
        conn.record.input_buffer_peak = max(conn.record.input_buffer_peak, queue.peak)
        try:
            await session.aclose()
        except Exception:
            logger.exception("engine session close failed")
    if setup.close_ws_on_eos:
        conn.record.ended = END_EOS
        await conn.close(1000, "")
        return False
    return True


def _check_header(conn: Connection, req: Request, payload: bytes) -> str | None:
    """Validate a WAV header the decoder is about to read; return the problem, if any."""
    try:
        info = check_wav_header(payload)
    except ValueError as exc:
        return str(exc)
    if req.wav is not None and info != req.wav:
        return (
            f"WAV header changed mid-stream ({req.wav.sample_rate} Hz {req.wav.channels} ch "
            f"{req.wav.bits}-bit, then {info.sample_rate} Hz {info.channels} ch {info.bits}-bit)"
        )
    req.wav = info
    return None


async def _read_input(conn: Connection, req: Request) -> None:
    """Read ``audio`` until ``end_of_stream``, feeding the engine queue."""
    rec, queue = conn.record, req.queue
    cap = conn.max_session_s
    wav = req.decoder.fmt.codec == "wav"
    while True:
        raw = await conn.recv_input()
        try:
            msg = parse_client_message(raw)
        except ProtocolError as exc:
            await conn.fail(exc.message, 1008, END_ERROR)
        if type(msg) is AudioIn:
            if wav and msg.payload[:4] == b"RIFF":
                problem = _check_header(conn, req, msg.payload)
                if problem is not None:
                    await conn.fail(problem, 1008, END_ERROR)
            try:
                samples = req.decoder.decode(msg.payload)
            except AudioFormatError as exc:
                await conn.fail(f"invalid audio: {exc.message}", 1008, END_ERROR)
            if req.resampler is None:
                # The rate is known now (a WAV stream carries it in its header).
                req.in_rate = req.decoder.sample_rate
                req.resampler = StreamResampler(req.in_rate, ENGINE_INPUT_RATE)
            if not samples.size:
                continue
            seconds = samples.size / req.in_rate
            if cap is not None and req.input_s + seconds > cap:
                await _session_cap(conn, req, samples, cap)
            req.input_s += seconds
            rec.input_s += seconds
            if conn.watch_input:
                conn.input_faults(rec.input_s)
            out = req.resampler.process(samples)
            if out.size:
                await queue.put(out)
                rec.input_buffer_peak = max(rec.input_buffer_peak, queue.peak)
        elif type(msg) is EndOfStreamIn:
            if req.resampler is not None:
                tail = req.resampler.flush()
                if tail.size:
                    await queue.put(tail)
            await queue.put(None)
            return
        else:
            await conn.fail(
                "'setup' was already received on this stream; send 'end_of_stream' first", 1008, END_ERROR
            )


async def _session_cap(conn: Connection, req: Request, samples: Int16Array, cap: float) -> NoReturn:
    """End a stream at its length cap.

    The input up to the cap is processed and every utterance it completes is delivered;
    the utterance in progress at the cap is dropped. Then ``error`` 1008 and close 1008.
    """
    keep = max(0, min(samples.size, round((cap - req.input_s) * req.in_rate)))
    assert req.resampler is not None
    out = req.resampler.process(samples[:keep])
    if out.size:
        await req.queue.put(out)
    if not req.queue.empty():
        req.idle.clear()  # may be stale: the engine has not taken the queued chunks yet
    seconds = samples.size / req.in_rate
    req.input_s += seconds
    conn.record.input_s += seconds
    if conn.plan is None or conn.plan.send_ready:
        # Bounded wait: an engine that never settles must not keep the error from the client.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5.0):
                await req.idle.wait()
                if req.delayed is not None:
                    await req.delayed.join()
    await conn.fail(f"session length limit of {cap:g} s reached", 1008, END_SESSION_CAP)


async def _engine_input(req: Request) -> AsyncIterator[Int16Array]:
    queue = req.queue
    while True:
        if queue.empty():
            req.idle.set()  # the engine has handled every chunk given so far
        item = await queue.get()
        req.idle.clear()
        if item is None:
            return
        yield item


async def _out(conn: Connection, req: Request, msg: str) -> None:
    """Send an output message, after the plan's output delay if any."""
    if req.delayed is None:
        await conn.send(msg)
    else:
        await req.delayed.put((conn.loop.time() + req.delay_s, msg))


async def _delayed_sender(conn: Connection, queue: asyncio.Queue[tuple[float, str]]) -> None:
    try:
        while True:
            due, msg = await queue.get()
            wait = due - conn.loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            try:
                await conn.send(msg)
            finally:
                queue.task_done()
    except (Halt, ConnectionClosed):
        pass


async def _produce(
    conn: Connection, req: Request, session: EngineSession, request_id: str, model: str
) -> None:
    plan = conn.plan
    try:
        if plan is not None and plan.ready_delay_s > 0:
            await asyncio.sleep(plan.ready_delay_s)
        if plan is not None and not plan.send_ready:
            while True:  # no ready, no output: swallow input until the client gives up
                await req.queue.get()
        await conn.send(with_fields(ready_message(request_id, req.out_rate, req.frame, model), req.suffix))
        gen = session.run(_engine_input(req))
        try:
            async for utt in gen:
                await _emit(conn, req, utt)
        finally:
            aclose = getattr(gen, "aclose", None)
            if aclose is not None:
                await aclose()
        await _out(conn, req, '{"type":"end_of_stream"' + req.suffix + "}")
        if req.delayed is not None:
            await req.delayed.join()
        req.completed = True
    except (Halt, Finished, ConnectionClosed):
        pass
    except Exception as exc:
        logger.exception("engine failed on connection %d", conn.record.index)
        # The engine's own message says what is wrong (e.g. which package to install).
        detail = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        message = f"internal server error in the engine: {type(exc).__name__}"
        conn.fire("internal", f"{message}: {detail}" if detail else message, code=1011)


async def _emit(conn: Connection, req: Request, utt: Utterance) -> None:
    """Send one utterance: its ``text``, then its audio in 80 ms frames."""
    rate = req.out_rate
    audio = utt.audio if rate == ENGINE_OUTPUT_RATE else resample(utt.audio, ENGINE_OUTPUT_RATE, rate)
    start = req.out_samples
    await _out(
        conn,
        req,
        with_fields(server_text_message(utt.text, start / rate, (start + audio.size) / rate, 0), req.suffix),
    )
    keep_last(conn.record.utterances, utt.text)
    fmt = req.out_fmt
    payload = encode_samples(audio, fmt)  # encode once, slice per frame
    width = fmt.bytes_per_sample()
    step = req.frame * width
    server = conn.server
    stamp, realtime, suffix = server.stamp, server.output_realtime, req.suffix
    for off in range(0, len(payload), step):
        chunk = payload[off : off + step]
        s0 = req.out_samples
        s1 = s0 + len(chunk) // width
        if req.wav_header_pending:
            chunk = wav_header(rate) + chunk
            req.wav_header_pending = False
        if realtime:
            await _pace(conn, req, s0 / rate)
        # A stamp rides in stream_id so that every client sees it through its public API.
        msg = server_audio_message(chunk, s0 / rate, s1 / rate, time.perf_counter_ns() if stamp else 0)
        if suffix:
            msg = msg[:-1] + suffix + "}"
        await _out(conn, req, msg)
        req.out_samples = s1


async def _pace(conn: Connection, req: Request, t: float) -> None:
    # Real-time output: frame at output time t leaves at anchor + t. After idle time (or when
    # far behind) the clock restarts, like a synthesiser that starts speaking again.
    now = conn.loop.time()
    if req.anchor is None or now - (req.anchor + t) > 0.1:
        req.anchor = now - t
        return
    wait = req.anchor + t - now
    if wait > 0:
        await asyncio.sleep(wait)
