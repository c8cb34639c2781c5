"""``WS /stream``: live transcription of an audio stream.

Protocol (JSON text messages, audio as binary messages):

1. The client sends a config message first::

       {"type": "config", "format": "pcm_s16le" | "webm" | "ogg", "language": "auto" | "en" | ...,
        "initial_prompt": null, "create_job": false, "options": {AnnotateOptions, optional}}

   ``pcm_s16le`` is 16-bit little-endian mono PCM at 16 kHz; ``webm``/``ogg`` carry Opus
   (what browsers' ``MediaRecorder`` produce). The server answers
   ``{"type": "ready", "stream_id", "language", "model", "sample_rate": 16000}``.
2. The client sends audio as binary messages, any size.
3. The server sends ``{"type": "partial" | "committed", "text", "words": [{text, start, end,
   probability}], "audio_time"}``: partial words may still change, committed ones never do.
4. The client sends ``{"type": "end"}``; the server answers with the last ``committed`` and a
   ``final`` message holding every word (and ``job_id`` when ``create_job`` was true: the saved
   stream was queued as a normal annotation job), then closes with 1000.

Errors are ``{"type": "error", "error": <code>, "detail"}`` followed by a close (1003 bad data,
1008 bad config, 1011 server error, 1013 too many streams).
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any, Literal, TypeVar

import anyio
import numpy as np
from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from callannotate.api.deps import CurrentPrincipal, QueueDep, SettingsDep
from callannotate.config import Settings
from callannotate.errors import BadRequest, CallAnnotateError
from callannotate.jobs.filequeue import FileQueue
from callannotate.jobs.models import AudioMeta, Job
from callannotate.pipeline.asr.streaming import StreamEvent, StreamingTranscriber, open_stream
from callannotate.pipeline.audio import decode as audio_io
from callannotate.pipeline.audio.stream_decode import StreamDecoder, make_decoder
from callannotate.pipeline.types import AnnotateOptions, Float32Array

logger = logging.getLogger(__name__)
router = APIRouter(tags=["stream"])

CONFIG_TIMEOUT_S = 10.0
_E = TypeVar("_E", bound=BaseException)


class StreamConfig(BaseModel):
    """The first message of a stream."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["config"] = "config"
    format: Literal["pcm_s16le", "webm", "ogg"] = "pcm_s16le"
    sample_rate: int = Field(16000, description="Only 16000 for pcm_s16le.")
    language: str = Field("auto", description="'auto' or an ISO 639-1 code; 'en' is fastest.")
    initial_prompt: str | None = Field(None, max_length=2000)
    create_job: bool = Field(False, description="Queue the saved stream as an annotation job.")
    options: AnnotateOptions | None = Field(None, description="Options of that job.")


class _Slots:
    """Counts live streams in this process (each needs a share of the CPU)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.active = 0

    def take(self, limit: int) -> bool:
        with self._lock:
            if self.active >= limit:
                return False
            self.active += 1
            return True

    def give(self) -> None:
        with self._lock:
            self.active = max(0, self.active - 1)


SLOTS = _Slots()


def _max_streams(settings: Settings) -> int:
    from callannotate.pipeline.asr.streaming import streaming_config

    try:
        _, stream = streaming_config(settings)
    except CallAnnotateError:
        return 1
    return max(1, int(stream.get("max_streams", 2)))


async def _send_error(ws: WebSocket, exc: CallAnnotateError, code: int) -> None:
    with suppress(Exception):
        await ws.send_json({"type": "error", "error": exc.code, "detail": exc.detail})
        await ws.close(code, exc.detail[:120])


def _event_message(event: StreamEvent) -> dict[str, Any]:
    return event.to_dict()


def _submit_job(
    queue: FileQueue, settings: Settings, path: Path, cfg: StreamConfig, owner: str
) -> str:
    probe = audio_io.probe(path)
    options = cfg.options or AnnotateOptions(
        language=cfg.language,
        initial_prompt=cfg.initial_prompt,
    )
    job = Job(
        id=queue.new_job_id(),
        owner=owner,
        options=options,
        audio=AudioMeta(
            filename="stream.wav",
            stored_as="audio.wav",
            size_bytes=path.stat().st_size,
            format=probe.format,
            codec=probe.codec,
            sample_rate=probe.sample_rate,
            channels=probe.channels,
            duration=round(probe.duration, 3),
        ),
        max_attempts=settings.queue.max_attempts,
    )
    return queue.submit(job, path).id


async def _read_config(ws: WebSocket) -> StreamConfig:
    with anyio.fail_after(CONFIG_TIMEOUT_S):
        message = await ws.receive()
    if message.get("type") == "websocket.disconnect":
        raise WebSocketDisconnect(int(message.get("code", 1000)))
    text = message.get("text")
    if text is None:
        raise BadRequest("the first message must be a JSON config message, not audio")
    try:
        return StreamConfig.model_validate(json.loads(text))
    except (json.JSONDecodeError, ValidationError) as exc:
        raise BadRequest(f"invalid config message: {exc}") from exc


class _Session:
    """One connected stream: receive audio, decode it in a worker thread, send events."""

    def __init__(self, ws: WebSocket, transcriber: StreamingTranscriber, decoder: StreamDecoder):
        self.ws = ws
        self.transcriber = transcriber
        self.decoder = decoder
        self.pending: list[Float32Array] = []
        self.wake = anyio.Event()
        self.ended = False
        self.error: CallAnnotateError | None = None

    async def receive(self) -> None:
        while True:
            message = await self.ws.receive()
            kind = message.get("type")
            if kind == "websocket.disconnect":
                raise WebSocketDisconnect(int(message.get("code", 1000)))
            data = message.get("bytes")
            if data is not None:
                samples = self.decoder.feed(data)
                if samples.size:
                    self.pending.append(samples)
                    self.wake.set()
                continue
            try:
                payload = json.loads(message.get("text") or "{}")
            except json.JSONDecodeError as exc:
                raise BadRequest("text messages must be JSON") from exc
            if isinstance(payload, dict) and payload.get("type") in ("end", "stop"):
                rest = await anyio.to_thread.run_sync(self.decoder.close)
                if rest.size:
                    self.pending.append(rest)
                self.ended = True
                self.wake.set()
                return
            raise BadRequest('unknown message; send audio as binary or {"type": "end"}')

    async def process(self) -> list[StreamEvent]:
        """Decode pending audio until the client ends; returns the closing events."""
        while True:
            await self.wake.wait()
            self.wake = anyio.Event()
            while self.pending:
                chunk = np.concatenate(self.pending)
                self.pending.clear()
                events = await anyio.to_thread.run_sync(self.transcriber.push, chunk)
                for event in events:
                    await self.ws.send_json(_event_message(event))
            if self.ended:
                return await anyio.to_thread.run_sync(self.transcriber.finish)


async def _run_session(
    session: _Session,
) -> list[StreamEvent] | WebSocketDisconnect | CallAnnotateError:
    """Receive and decode until the end; the closing events, or why it stopped."""
    closing: list[StreamEvent] = []
    stopped: WebSocketDisconnect | CallAnnotateError | None = None
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(session.receive)
            closing = await session.process()
    except* WebSocketDisconnect as group:
        stopped = _first(group.exceptions, WebSocketDisconnect)
    except* CallAnnotateError as group:
        stopped = _first(group.exceptions, CallAnnotateError)
    return stopped if stopped is not None else closing


def _first(errors: Sequence[BaseException], kind: type[_E]) -> _E:
    for exc in errors:
        if isinstance(exc, kind):
            return exc
    raise TypeError(f"no {kind.__name__} in {errors!r}")


@router.websocket("/stream")
async def stream_transcription(
    websocket: WebSocket, settings: SettingsDep, queue: QueueDep, principal: CurrentPrincipal
) -> None:
    """Live transcription; see the module docstring for the protocol."""
    await websocket.accept()
    try:
        cfg = await _read_config(websocket)
        if cfg.format == "pcm_s16le" and cfg.sample_rate != 16000:
            raise BadRequest("pcm_s16le streams must be 16 kHz mono")
    except WebSocketDisconnect:
        return
    except TimeoutError:
        await _send_error(websocket, BadRequest("no config message received"), 1008)
        return
    except CallAnnotateError as exc:
        await _send_error(websocket, exc, 1008)
        return

    if not SLOTS.take(_max_streams(settings)):
        await _send_error(websocket, CallAnnotateError("too many live streams; retry later"), 1013)
        return
    stream_id = uuid.uuid4().hex
    record = queue.staging_dir() / f"stream-{stream_id}.wav"
    transcriber: StreamingTranscriber | None = None
    keep_recording = False
    try:
        try:
            transcriber = await anyio.to_thread.run_sync(
                open_stream, settings, cfg.language, cfg.initial_prompt, record
            )
        except CallAnnotateError as exc:
            await _send_error(websocket, exc, 1011)
            return
        await websocket.send_json(
            {
                "type": "ready",
                "stream_id": stream_id,
                "language": cfg.language,
                "model": transcriber.engine.model_dir.name,
                "sample_rate": 16000,
            }
        )
        session = _Session(websocket, transcriber, make_decoder(cfg.format))

        outcome = await _run_session(session)
        if isinstance(outcome, WebSocketDisconnect):
            logger.info("stream %s: client went away", stream_id)
            return
        if isinstance(outcome, CallAnnotateError):
            await _send_error(websocket, outcome, 1003)
            return
        closing = outcome
        job_id: str | None = None
        if cfg.create_job and transcriber.audio_time > 0:
            try:
                job_id = await anyio.to_thread.run_sync(
                    _submit_job, queue, settings, record, cfg, principal.id
                )
                keep_recording = True
            except CallAnnotateError as exc:
                logger.warning("stream %s: job not created: %s", stream_id, exc.detail)
        for event in closing:
            message = _event_message(event)
            if event.type == "final":
                message["job_id"] = job_id
                message["duration"] = round(transcriber.audio_time, 3)
            await websocket.send_json(message)
        await websocket.close(1000)
    finally:
        SLOTS.give()
        if transcriber is not None:
            transcriber.close()
        if not keep_recording:
            with suppress(FileNotFoundError):
                record.unlink()
