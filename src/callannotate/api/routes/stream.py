"""``WS /stream``: live transcription of an audio stream.

Protocol (JSON text messages, audio as binary messages):

1. The client sends a config message first::

       {"type": "config", "format": "pcm_s16le" | "webm" | "ogg", "language": "auto" | "en" | ...,
        "initial_prompt": null, "create_job": false, "options": {AnnotateOptions, optional}}

   ``pcm_s16le`` is 16-bit little-endian mono PCM at 16 kHz; ``webm``/``ogg`` carry Opus
   (what browsers' ``MediaRecorder`` produce). The server answers
   ``{"type": "ready", "stream_id", "language", "model", "sample_rate": 16000}``.
2. The client sends audio as binary messages of at most 1 MiB each (:data:`WS_MAX_FRAME_BYTES`).
3. The server sends ``{"type": "partial" | "committed", "text", "words": [{text, start, end,
   probability}], "audio_time"}``: partial words may still change, committed ones never do.
4. The client sends ``{"type": "end"}``; the server answers with the last ``committed`` and a
   ``final`` message holding every word (and ``job_id`` when ``create_job`` was true: the saved
   stream was queued as a normal annotation job), then closes with 1000.

Authentication: the token comes with the handshake (``Sec-WebSocket-Protocol: bearer,
<token>``, the server answering ``bearer``, or ``?access_token=``) and needs the ``write``
scope; a refused one closes with 1008 before any message. A stream that outlives its access
token is closed with 4401 (``token_expired``) unless the client sends
``{"type": "auth", "token": "<fresh token of the same user>"}`` before the expiry (answered
``{"type": "authenticated", "expires_at"}``; a bad one closes with 1008 ``invalid_token``).

Errors are ``{"type": "error", "error": <code>, "detail"}`` followed by a close: 1003 bad data
(``bad_request``, ``invalid_audio``), 1007 text that is not JSON or nests deeper than
``api.ws_max_json_depth`` (``invalid_payload``), 1008 bad config or no message for
``api.ws_idle_timeout_s`` (``idle_timeout``), 1009 a text message over
``api.ws_max_message_bytes`` (``message_too_big``) or a stream over ``stream.max_duration_s`` /
``stream.max_bytes`` (``stream_too_long``; the recording is deleted), 1011 server error, 1013
too many streams. A page from a foreign ``Origin`` is refused before the handshake (HTTP 403,
see :mod:`callannotate.api.origin`).

Memory: audio is read only as fast as it is transcribed (at most :data:`BACKLOG_BYTES` wait;
then the server stops reading, and TCP flow control slows the client), it reaches the
transcriber in pieces of at most :data:`PUSH_SAMPLES`, the transcriber keeps a bounded window
of recent audio, and the recording is written to a file as it arrives.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any, Literal, TypeVar

import anyio
from fastapi import APIRouter, FastAPI, WebSocket, WebSocketDisconnect
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from callannotate.api.deps import QueueDep, SettingsDep, WritePrincipal, ws_subprotocol
from callannotate.api.origin import origin_allowed
from callannotate.api.routes.jobs import wake_executor
from callannotate.api.ws import announce_queued_before_visible, token_renewer
from callannotate.config import Settings
from callannotate.errors import BadRequest, CallAnnotateError, PayloadTooLarge
from callannotate.events.limits import parse_message
from callannotate.events.session import AuthRefused, Renew
from callannotate.jobs.filequeue import FileQueue
from callannotate.jobs.intake import new_job
from callannotate.observability.metrics import observe_stream_latency
from callannotate.pipeline.asr.streaming import (
    StreamEvent,
    StreamingTranscriber,
    open_stream,
    streaming_model_name,
)
from callannotate.pipeline.asr.transcription import check_language
from callannotate.pipeline.audio.stream_decode import StreamDecoder, make_decoder
from callannotate.pipeline.types import REQUEST_CONTEXT, SAMPLE_RATE, AnnotateOptions, Float32Array
from callannotate.security.scopes import WRITE

logger = logging.getLogger(__name__)
router = APIRouter(tags=["stream"])

CONFIG_TIMEOUT_S = 10.0
#: Received audio bytes not yet decoded above which the server stops reading the socket.
BACKLOG_BYTES = 1024 * 1024
#: Most samples handed to the transcriber at once (10 s): a client far ahead of the decoder
#: is caught up in bounded steps.
PUSH_SAMPLES = 10 * SAMPLE_RATE
#: Largest WebSocket message uvicorn accepts (``serve``; larger ones close with 1009), and
#: how many received messages it queues per connection before it stops reading: what a
#: connection can hold beyond :data:`BACKLOG_BYTES` (uvicorn's defaults, 16 MiB x 32, allowed
#: 512 MiB). 1 MiB is 32 s of PCM; browsers' MediaRecorder sends a few kB at a time.
WS_MAX_FRAME_BYTES = 1024 * 1024
WS_MAX_QUEUE = 8
_E = TypeVar("_E", bound=BaseException)


class StreamTooLong(PayloadTooLarge):
    """The stream passed ``stream.max_duration_s`` or ``stream.max_bytes`` (close 1009)."""

    code = "stream_too_long"
    close_code = 1009


class IdleTimeout(CallAnnotateError):
    """The client sent nothing for ``api.ws_idle_timeout_s`` (close 1008)."""

    status_code = 408
    code = "idle_timeout"
    close_code = 1008


class TokenExpired(CallAnnotateError):
    """The access token expired during the stream and was not renewed (close 4401)."""

    status_code = 401
    code = "token_expired"
    close_code = 4401


class TokenRefused(CallAnnotateError):
    """A token sent in an ``auth`` message was refused (close 1008)."""

    status_code = 401
    code = "invalid_token"
    close_code = 1008


def _close_code(exc: CallAnnotateError, default: int) -> int:
    """The WebSocket close code of ``exc``: its own (limits, idle) or ``default``."""
    code: int = getattr(exc, "close_code", default)
    return code


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
    from callannotate.pipeline.asr.streaming import streaming_settings

    try:
        return streaming_settings(settings).max_streams
    except CallAnnotateError:
        return 1


async def _send_error(ws: WebSocket, exc: CallAnnotateError, code: int) -> None:
    with suppress(Exception):
        await ws.send_json({"type": "error", "error": exc.code, "detail": exc.detail})
        await ws.close(code, exc.detail[:120])


def _event_message(event: StreamEvent) -> dict[str, Any]:
    return event.to_dict()


def _submit_job(
    queue: FileQueue, settings: Settings, path: Path, cfg: StreamConfig, owner: str, app: FastAPI
) -> str:
    """Queue the saved stream as a job (the same constructor and announcement as uploads).

    Runs in a worker thread (``anyio.to_thread``)."""
    options = cfg.options or AnnotateOptions(
        language=cfg.language,
        initial_prompt=cfg.initial_prompt,
    )
    job = new_job(
        queue,
        settings,
        staged_path=path,
        filename="stream.wav",
        options=options,
        owner=owner,
        before_visible=announce_queued_before_visible(app),
    )
    anyio.from_thread.run_sync(wake_executor, app, job)  # on the event loop's thread
    return job.id


async def _read_config(ws: WebSocket, settings: Settings) -> StreamConfig:
    with anyio.fail_after(min(CONFIG_TIMEOUT_S, settings.api.ws_idle_timeout_s)):
        message = await ws.receive()
    if message.get("type") == "websocket.disconnect":
        raise WebSocketDisconnect(int(message.get("code", 1000)))
    text = message.get("text")
    if text is None:
        raise BadRequest("the first message must be a JSON config message, not audio")
    payload = parse_message(
        text, max_bytes=settings.api.ws_max_message_bytes, max_depth=settings.api.ws_max_json_depth
    )
    try:
        return StreamConfig.model_validate(payload, context=REQUEST_CONTEXT)
    except ValidationError as exc:
        raise BadRequest(f"invalid config message: {exc}") from exc


class _Session:
    """One connected stream: receive audio, decode it in a worker thread, send events.

    :meth:`receive` reads the socket and queues the raw bytes; :meth:`process` decodes them
    and feeds the transcriber. When more than :data:`BACKLOG_BYTES` wait, :meth:`receive`
    stops reading until :meth:`process` took them, so a client sending faster than the
    server transcribes is slowed down by TCP instead of filling the server's memory.
    """

    def __init__(
        self,
        ws: WebSocket,
        transcriber: StreamingTranscriber,
        decoder: StreamDecoder,
        settings: Settings,
        expires_at: float | None = None,
        renew: Renew | None = None,
    ) -> None:
        self.ws = ws
        self.expires_at = expires_at  # Unix time the caller's token expires (None: never)
        self.renew = renew
        self.transcriber = transcriber
        self.decoder = decoder
        self.api = settings.api
        self.byte_limit = settings.stream.byte_limit
        self.max_duration_s = settings.stream.max_duration_s
        self.sample_limit = int(settings.stream.max_duration_s * SAMPLE_RATE)
        self.raw: list[bytes] = []  # received, not yet decoded
        self.raw_bytes = 0
        self.raw_since: float | None = None  # monotonic arrival of the oldest undecoded bytes
        self.arrived: float | None = None  # ... of the bytes being transcribed now (metrics)
        self.received_bytes = 0
        self.samples = 0  # decoded samples handed to the transcriber
        self.wake = anyio.Event()  # process: there is work
        self.drained = anyio.Event()  # receive: the backlog was taken
        self.busy = False  # process is decoding or transcribing
        self.ended = False

    async def _next_message(self) -> dict[str, Any]:
        """The next client message; :class:`IdleTimeout` when the client stays silent.

        Time spent transcribing what the client already sent does not count as idle.
        """
        while True:
            with anyio.move_on_after(self.api.ws_idle_timeout_s) as scope:
                message: dict[str, Any] = dict(await self.ws.receive())
            if not scope.cancelled_caught:
                return message
            if not self.busy and not self.raw:
                raise IdleTimeout(f"nothing received for {self.api.ws_idle_timeout_s:g} s")

    async def receive(self) -> None:
        while True:
            message = await self._next_message()
            if message.get("type") == "websocket.disconnect":
                raise WebSocketDisconnect(int(message.get("code", 1000)))
            data = message.get("bytes")
            if data is not None:
                self.received_bytes += len(data)
                if self.received_bytes > self.byte_limit:
                    raise StreamTooLong(f"a stream may send at most {self.byte_limit} bytes")
                if data:
                    if self.raw_since is None:
                        self.raw_since = time.monotonic()
                    self.raw.append(data)
                    self.raw_bytes += len(data)
                    self.wake.set()
                while self.raw_bytes > BACKLOG_BYTES:  # backpressure: stop reading
                    self.drained = anyio.Event()
                    await self.drained.wait()
                continue
            payload = parse_message(
                message.get("text") or "",
                max_bytes=self.api.ws_max_message_bytes,
                max_depth=self.api.ws_max_json_depth,
            )
            if isinstance(payload, dict) and payload.get("type") in ("end", "stop"):
                self.ended = True
                self.wake.set()
                return
            if isinstance(payload, dict) and payload.get("type") == "auth":
                await self._reauthenticate(payload.get("token"))
                continue
            raise BadRequest('unknown message; send audio as binary or {"type": "end"}')

    async def _reauthenticate(self, token: object) -> None:
        if not isinstance(token, str) or not token:
            raise TokenRefused('an auth message needs {"type": "auth", "token": "..."}')
        if self.renew is not None:
            try:
                self.expires_at = await self.renew(token)
            except AuthRefused as exc:
                raise TokenRefused(str(exc)) from exc
        expires = self.expires_at
        await self.ws.send_json(
            {
                "type": "authenticated",
                "expires_at": None if expires is None else int(expires),
            }
        )

    async def watch_expiry(self) -> None:
        """Raise :class:`TokenExpired` once the token expired and no ``auth`` renewed it."""
        while self.expires_at is not None:
            left = self.expires_at - time.time()
            if left <= 0:
                raise TokenExpired(
                    'the access token expired; send {"type": "auth", "token": ...} before expiry'
                )
            await anyio.sleep(min(left, 60.0))

    async def _push(self, samples: Float32Array) -> None:
        """Hand ``samples`` to the transcriber in bounded pieces; send the events."""
        for start in range(0, samples.shape[0], PUSH_SAMPLES):
            piece = samples[start : start + PUSH_SAMPLES]
            if self.samples + piece.shape[0] > self.sample_limit:
                raise StreamTooLong(f"a stream may last at most {self.max_duration_s:g} s")
            self.samples += piece.shape[0]
            events = await anyio.to_thread.run_sync(self.transcriber.push, piece)
            for event in events:
                await self.ws.send_json(_event_message(event))
            if events and self.arrived is not None:
                observe_stream_latency(time.monotonic() - self.arrived)

    async def process(self) -> list[StreamEvent]:
        """Decode received audio until the client ends; returns the closing events."""
        while True:
            await self.wake.wait()
            self.wake = anyio.Event()
            while self.raw:
                blob = b"".join(self.raw)
                self.raw.clear()
                self.raw_bytes = 0
                self.arrived, self.raw_since = self.raw_since, None
                self.drained.set()
                self.busy = True
                try:
                    samples = await anyio.to_thread.run_sync(self.decoder.feed, blob)
                    del blob
                    await self._push(samples)
                    while self.decoder.backlog:  # compressed audio comes out in pieces
                        await self._push(await anyio.to_thread.run_sync(self.decoder.feed, b""))
                finally:
                    self.busy = False
            if self.ended:
                while (rest := await anyio.to_thread.run_sync(self.decoder.close)).size:
                    await self._push(rest)
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
            tg.start_soon(session.watch_expiry)
            closing = await session.process()
            tg.cancel_scope.cancel()  # the receiver returned at "end"; stop the expiry watch
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
    websocket: WebSocket, settings: SettingsDep, queue: QueueDep, principal: WritePrincipal
) -> None:
    """Live transcription; see the module docstring for the protocol."""
    if not origin_allowed(websocket, settings.api):
        # Before accept: the handshake is refused with HTTP 403.
        logger.info("stream: origin %.200r refused", websocket.headers.get("origin"))
        await websocket.close(1008, "origin not allowed")
        return
    await websocket.accept(subprotocol=ws_subprotocol(websocket))
    try:
        cfg = await _read_config(websocket, settings)
        if cfg.format == "pcm_s16le" and cfg.sample_rate != 16000:
            raise BadRequest("pcm_s16le streams must be 16 kHz mono")
        language = check_language(cfg.language)  # a bad config: 1008, not a later 1011
    except WebSocketDisconnect:
        return
    except TimeoutError:
        await _send_error(websocket, IdleTimeout("no config message received"), 1008)
        return
    except CallAnnotateError as exc:
        await _send_error(websocket, exc, _close_code(exc, 1008))
        return

    if not SLOTS.take(_max_streams(settings)):
        await _send_error(websocket, CallAnnotateError("too many live streams; retry later"), 1013)
        return
    stream_id = uuid.uuid4().hex
    record = queue.staging_dir() / f"stream-{stream_id}.wav"
    transcriber: StreamingTranscriber | None = None
    decoder: StreamDecoder | None = None
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
                "model": streaming_model_name(settings, language),
                "sample_rate": 16000,
            }
        )
        decoder = make_decoder(cfg.format)
        session = _Session(
            websocket,
            transcriber,
            decoder,
            settings,
            expires_at=principal.expires_at,
            renew=token_renewer(websocket, principal, WRITE),
        )

        outcome = await _run_session(session)
        if isinstance(outcome, WebSocketDisconnect):
            logger.info("stream %s: client went away", stream_id)
            return
        if isinstance(outcome, CallAnnotateError):
            logger.info("stream %s: stopped: %s", stream_id, outcome.code)
            await _send_error(websocket, outcome, _close_code(outcome, 1003))
            return
        closing = outcome
        job_id: str | None = None
        if cfg.create_job and transcriber.audio_time > 0:
            try:
                job_id = await anyio.to_thread.run_sync(
                    _submit_job, queue, settings, record, cfg, principal.id, websocket.app
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
        if decoder is not None:  # ends a container decoder's thread and frees its buffers
            decoder.release()
