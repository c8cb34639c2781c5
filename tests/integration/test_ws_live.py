"""Live job events over real sockets: a real uvicorn server and a real WebSocket client.

* A ``callannotate serve`` process with a real worker runs a job on a real recording; a
  client sees its whole life live, and a client that drops mid-job resumes with
  ``last_event_id`` with no gap and no duplicate. A job with the transcribe step sends its
  words live as ``job.partial`` before ``job.completed``.
* An in-process uvicorn server (events injected on its bus) for the slow-client and heartbeat
  cases: a client that never reads does not grow server memory and, when it reads again,
  gets a clean 1013 close and resumes to the final event; a client that never answers pings
  is closed with 4000.
* With the Redis backend, an event published by another process reaches a server's client.
* A page from a foreign ``Origin`` gets HTTP 403 at the handshake of both WebSockets.
* ``WS /stream`` fed 30 MB of PCM as fast as the socket takes it: the ``serve`` process's
  memory stays bounded during and after the stream (it grew by 1 GB for 100 MB before).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import threading
import time
import uuid
import wave
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np
import psutil
import pytest
import uvicorn
import yaml
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Origin

from callannotate.api.app import create_app
from callannotate.api.ws import EventService
from callannotate.config import ApiSettings, EventSettings, Settings
from callannotate.events.models import EventDraft
from callannotate.events.session import CloseCode, Session
from callannotate.jobs.filequeue import FileQueue
from callannotate.jobs.models import AudioMeta, Job
from local_servers import callannotate_command, free_port

pytestmark = pytest.mark.integration

T = TypeVar("T")

SHARED = Path(
    os.environ.get(
        "CALLANNOTATE_SHARED_DATA", Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
    )
)
JFK = SHARED / "asr" / "en" / "jfk" / "jfk.flac"
REDIS_URL = os.environ.get("CALLANNOTATE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
START_TIMEOUT_S = 600.0
JOB_TIMEOUT_S = 600.0
# Cheap real steps: the point is the event stream, not the annotation.
JOB_FORM = {"steps": "preprocess,vad", "language": "en"}
TRANSCRIBE_FORM = {"steps": "vad,transcribe", "language": "en"}


def redis_or_skip() -> None:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1.0).ping()
    except Exception as exc:
        message = f"Redis not reachable at {REDIS_URL} ({exc}); start redis-server"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI requires Redis: {message}")
        pytest.skip(message)


async def recv_json(ws: ClientConnection, timeout: float = 30.0) -> dict[str, Any]:
    frame = json.loads(await asyncio.wait_for(ws.recv(), timeout))
    assert isinstance(frame, dict)
    return frame


async def recv_until(
    ws: ClientConnection, *kinds: str, timeout: float = JOB_TIMEOUT_S, answer_pings: bool = True
) -> list[dict[str, Any]]:
    """Frames up to and including the first whose type is one of ``kinds``."""
    frames: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        while True:
            frame = await recv_json(ws, timeout)
            if frame["type"] == "ping" and answer_pings:
                await ws.send(json.dumps({"type": "pong"}))
            frames.append(frame)
            if frame["type"] in kinds:
                return frames


def job_events(frames: list[dict[str, Any]], job_id: str) -> list[dict[str, Any]]:
    return [f for f in frames if f["type"].startswith("job.") and f["job_id"] == job_id]


# ---------------------------------------------------------------- a `callannotate serve` process
@dataclass
class ServeProcess:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://")

    def tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""


def _serve(tmp: Path, extra_env: dict[str, str], *, workers: bool) -> ServeProcess:
    port = free_port()
    env = dict(os.environ)
    env.update(
        {
            "CALLANNOTATE_DATA_DIR": str(tmp / "data"),
            "CALLANNOTATE_QUEUE__POLL_INTERVAL": "0.1",
            "CALLANNOTATE_WORKERS__PRELOAD_MODELS": "false",
            **extra_env,
        }
    )
    env.setdefault("CALLANNOTATE_MODEL_CACHE_DIR", str(tmp.parent / "model-cache"))
    command = callannotate_command()
    args = ["serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    if not workers:
        args.append("--no-workers")
    log = tmp / "server.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [*command, *args], stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    server = ServeProcess(f"http://127.0.0.1:{port}", process, log)
    deadline = time.monotonic() + START_TIMEOUT_S
    with httpx.Client(base_url=server.url, timeout=10.0) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise AssertionError(f"server exited early:\n{server.tail()}")
            with contextlib.suppress(httpx.HTTPError):
                info = client.get("/info").json()
                ready = info.get("workers") or []
                if not workers or (ready and all(w.get("alive") for w in ready)):
                    return server
            time.sleep(0.3)
    _stop(server)
    raise AssertionError(f"server not ready after {START_TIMEOUT_S}s:\n{server.tail()}")


def _stop(server: ServeProcess) -> None:
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.process.pid, signal.SIGKILL)
            server.process.wait(timeout=10)


def tiny_whisper_config(tmp: Path) -> Path:
    """The repo's models.yaml with Whisper tiny.en, so a transcribe job stays fast."""
    config = yaml.safe_load(Settings().models_config.read_text())
    config["transcription"]["model"] = "tiny.en"
    path = tmp / "models.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    if not JFK.is_file():
        pytest.skip(f"shared recording not found at {JFK}")
    tmp = tmp_path_factory.mktemp("ws-serve")
    env = {"CALLANNOTATE_MODELS_CONFIG": str(tiny_whisper_config(tmp))}
    server = _serve(tmp, env, workers=True)
    try:
        yield server
    finally:
        _stop(server)


def post_job(server: ServeProcess, form: dict[str, str] = JOB_FORM) -> str:
    with httpx.Client(base_url=server.url, timeout=60.0) as client, open(JFK, "rb") as fh:
        response = client.post("/jobs", files={"file": ("jfk.flac", fh, "audio/flac")}, data=form)
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


@pytest.mark.models
async def test_a_job_lifecycle_is_seen_live(serve: ServeProcess) -> None:
    async with connect(f"{serve.ws_url}/ws/lifecycle") as ws:
        assert (await recv_json(ws))["type"] == "welcome"
        await ws.send(json.dumps({"type": "subscribe", "all": True}))
        assert (await recv_json(ws))["type"] == "subscribed"
        job_id = await asyncio.to_thread(post_job, serve)
        frames = await recv_until(ws, "job.completed", "job.failed")
    events = job_events(frames, job_id)
    kinds = [e["type"] for e in events]
    assert kinds[0] == "job.queued" and "job.started" in kinds, kinds
    assert kinds[-1] == "job.completed", f"{events[-1]}\n{serve.tail()}"
    assert "job.progress" in kinds
    progress = [e["data"] for e in events if e["type"] == "job.progress"]
    assert all({"step", "percent"} <= set(p) for p in progress)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    result_url = events[-1]["data"]["result_url"]
    with httpx.Client(base_url=serve.url, timeout=30.0) as client:
        result = client.get(result_url)
    assert result.status_code == 200 and result.json()["recording"]["duration"] > 10


@pytest.mark.models
async def test_a_client_that_drops_mid_job_resumes_without_gap_or_duplicate(
    serve: ServeProcess,
) -> None:
    async with connect(f"{serve.ws_url}/ws/resumer") as ws:
        await recv_json(ws)
        await ws.send(json.dumps({"type": "subscribe", "all": True}))
        await recv_json(ws)
        job_id = await asyncio.to_thread(post_job, serve)
        before = job_events(await recv_until(ws, "job.started"), job_id)
    # Dropped mid-job. Stay away until the job has finished, then come back.
    with httpx.Client(base_url=serve.url, timeout=30.0) as client:
        deadline = time.monotonic() + JOB_TIMEOUT_S
        while client.get(f"/jobs/{job_id}").json()["state"] not in ("completed", "failed"):
            assert time.monotonic() < deadline, serve.tail()
            await asyncio.sleep(0.3)
    last = before[-1]["seq"]
    async with connect(f"{serve.ws_url}/ws/resumer") as ws:
        await recv_json(ws)
        subscribe = {"type": "subscribe", "jobs": [job_id], "last_event_id": {job_id: last}}
        await ws.send(json.dumps(subscribe))
        after = job_events(await recv_until(ws, "job.completed", "job.failed"), job_id)
    async with connect(f"{serve.ws_url}/ws/auditor") as ws:  # the whole history, for reference
        await recv_json(ws)
        await ws.send(json.dumps({"type": "subscribe", "jobs": [job_id]}))
        everything = job_events(await recv_until(ws, "job.completed", "job.failed"), job_id)
    seen = [e["seq"] for e in before + after]
    assert seen == list(range(1, len(seen) + 1)), seen  # no gap, no duplicate
    assert before + after == everything
    assert after[0]["seq"] == last + 1 and after[-1]["type"] == "job.completed"


@pytest.mark.models
async def test_partial_transcript_words_are_seen_live(serve: ServeProcess) -> None:
    async with connect(f"{serve.ws_url}/ws/partials") as ws:
        assert (await recv_json(ws))["type"] == "welcome"
        await ws.send(json.dumps({"type": "subscribe", "all": True}))
        assert (await recv_json(ws))["type"] == "subscribed"
        job_id = await asyncio.to_thread(post_job, serve, TRANSCRIBE_FORM)
        frames = await recv_until(ws, "job.completed", "job.failed")
    events = job_events(frames, job_id)
    kinds = [e["type"] for e in events]
    assert kinds[-1] == "job.completed", f"{events[-1]}\n{serve.tail()}"
    assert "job.partial" in kinds, kinds
    assert kinds.index("job.started") < kinds.index("job.partial")
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    partials = [e["data"] for e in events if e["type"] == "job.partial"]
    assert all(p["step"] == "transcribe" for p in partials)
    words = [w for p in partials for w in p["words"]]
    # No diarize step here: "speaker" is absent from partial words (documented), and when it
    # is present it must agree with the result's.
    assert all({"text", "start", "end"} <= set(w) for w in words)
    with httpx.Client(base_url=serve.url, timeout=30.0) as client:
        result = client.get(events[-1]["data"]["result_url"]).json()
    assert sorted((w["start"], w["text"]) for w in words) == sorted(
        (w["start"], w["text"]) for w in result["words"]
    )
    final = {(w["start"], w["text"]): w.get("speaker") for w in result["words"]}
    assert all(final[(w["start"], w["text"])] == w["speaker"] for w in words if "speaker" in w)


# ---------------------------------------------------------------- in-process uvicorn
class ThreadServer:
    """uvicorn serving the real app in a thread, so the test can publish on its bus."""

    def __init__(self, settings: Settings) -> None:
        self.app = create_app(settings)
        self.port = free_port()
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def events(self) -> EventService:
        service: EventService = self.app.state.events
        return service

    def __enter__(self) -> ThreadServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "server did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)

    def publish(self, job_id: str, kind: str, **data: Any) -> None:
        draft = EventDraft(type=kind, job_id=job_id, owner="local", data=data)
        self.events.bus.publish_threadsafe(draft)

    async def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the server's event loop."""
        loop = self.events.bus._loop
        assert loop is not None
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, loop))

    def add_job(self, tmp: Path) -> str:
        """A real queued job (one second of silence) that nobody runs: events are injected."""
        queue: FileQueue = self.app.state.queue
        audio = tmp / f"{uuid.uuid4().hex}.wav"
        with wave.open(str(audio), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(16000)
            w.writeframes(b"\x00\x00" * 16000)
        meta = AudioMeta(
            filename="silence.wav",
            stored_as="silence.wav",
            size_bytes=audio.stat().st_size,
            format="wav",
            codec="pcm_s16le",
            sample_rate=16000,
            channels=1,
            duration=1.0,
        )
        job = queue.submit(Job(id=queue.new_job_id(), owner="local", audio=meta), audio)
        return job.id

    def sessions(self) -> list[Session]:
        return [s for s in self.events.hub._by_client.values() if isinstance(s, Session)]


def thread_server(tmp_path: Path, **events: Any) -> ThreadServer:
    return ThreadServer(
        Settings(
            data_dir=tmp_path / "data",
            api=ApiSettings(embedded_workers=False),
            events=EventSettings(**events),
        )
    )


async def test_a_client_that_never_reads_is_bounded_and_closed_1013_then_resumes(
    tmp_path: Path,
) -> None:
    queue_size = 8
    total_partials = 300
    with thread_server(
        tmp_path, send_queue_size=queue_size, slow_client_timeout_s=1.0, replay_limit=2000
    ) as srv:
        job = srv.add_job(tmp_path)
        # max_queue=1: the client library stops reading the socket after a frame or two.
        # No compression, so the flood really fills the socket buffers; no client keepalive
        # pings, which a client that does not read could not see answered.
        async with connect(
            f"{srv.ws_url}/ws/sleepy", max_queue=1, compression=None, ping_interval=None
        ) as ws:
            await recv_json(ws)
            await ws.send(json.dumps({"type": "subscribe", "all": True}))
            await recv_json(ws)
            # The client now reads nothing while ~30 MB of events are published.
            process = psutil.Process()
            rss_before = process.memory_info().rss
            words = [os.urandom(8).hex() for _ in range(5_000)]  # ~95 KB per partial event
            peak_queue = 0
            for i in range(total_partials):
                srv.publish(job, "job.progress", step="transcribe", percent=i / 5)
                srv.publish(job, "job.partial", words=words, index=i)
                if i % 10 == 0:
                    await asyncio.sleep(0.02)
                    peak_queue = max([peak_queue, *(len(s.queue) for s in srv.sessions())])
            srv.publish(job, "job.completed", result_url=f"/jobs/{job}/result")
            await srv.call(srv.events.bus.flush())
            (session,) = srv.sessions()
            deadline = time.monotonic() + 30
            while session.closing is None:  # the server gives up on the sleeping client
                assert time.monotonic() < deadline, "the slow client was never closed"
                peak_queue = max(peak_queue, len(session.queue))
                await asyncio.sleep(0.05)
            assert session.closing[0] == CloseCode.TRY_AGAIN_LATER
            rss_growth = process.memory_info().rss - rss_before
            replay = await srv.call(srv.events.bus.replay(job, 0))
            buffered = sum(len(e.wire) for e in replay.events)
            # Now read: what was buffered, then a clean close telling the client to come back.
            frames: list[dict[str, Any]] = []
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    frames.append(await recv_json(ws, timeout=30))
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == CloseCode.TRY_AGAIN_LATER
            assert "resume" in closed.value.rcvd.reason
        assert peak_queue <= 2 * queue_size + 1
        # Only the replay buffer (bounded by replay_limit) may hold the flood.
        assert rss_growth < buffered + 32 * 2**20, (rss_growth, buffered)

        got = job_events(frames, job)
        last = got[-1]["seq"] if got else 0
        async with connect(f"{srv.ws_url}/ws/sleepy", compression=None) as ws:
            await recv_json(ws)
            resume = {"type": "subscribe", "jobs": [job], "last_event_id": {job: last}}
            await ws.send(json.dumps(resume))
            rest = job_events(await recv_until(ws, "job.completed", timeout=60), job)
        stream = got + rest
        seqs = [e["seq"] for e in stream]
        assert seqs == sorted(set(seqs))  # increasing, no duplicates
        partials = [e["data"]["index"] for e in stream if e["type"] == "job.partial"]
        assert partials == list(range(total_partials))  # only progress may be coalesced
        assert stream[-1]["type"] == "job.completed"


async def test_a_client_that_never_answers_pings_is_closed(tmp_path: Path) -> None:
    with thread_server(tmp_path, ping_interval_s=0.3, pong_timeout_s=0.6) as srv:
        async with (
            connect(f"{srv.ws_url}/ws/mute") as mute,
            connect(f"{srv.ws_url}/ws/polite") as polite,
        ):
            welcome = await recv_json(mute)
            assert welcome["ping_interval_s"] == 0.3 and welcome["pong_timeout_s"] == 0.6
            await recv_json(polite)
            answered = 0

            async def answer_pings() -> None:
                nonlocal answered
                while True:
                    frame = await recv_json(polite, timeout=10)
                    if frame["type"] == "ping":
                        await polite.send(json.dumps({"type": "pong"}))
                        answered += 1

            politeness = asyncio.create_task(answer_pings())
            pings = 0
            with pytest.raises(ConnectionClosed) as closed:
                while True:  # reads everything, answers nothing
                    frame = await recv_json(mute, timeout=10)
                    pings += frame["type"] == "ping"
            assert pings >= 1
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == CloseCode.HEARTBEAT_TIMEOUT
            # The client that answers is still there well after the same time.
            await asyncio.sleep(1.0)
            assert not politeness.done(), politeness
            politeness.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await politeness
            assert answered >= 3
            await polite.send(json.dumps({"type": "ping", "id": 1}))
            frames = await recv_until(polite, "pong", timeout=10)
            assert frames[-1]["id"] == 1


async def test_events_published_by_another_process_reach_clients_over_redis(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Scale-out: a server with the Redis backend; this test process is the publisher."""
    redis_or_skip()
    from callannotate.events.bus import RedisEventBus

    prefix = f"test-{uuid.uuid4().hex[:12]}"
    env = {
        "CALLANNOTATE_EVENTS__BACKEND": "redis",
        "CALLANNOTATE_EVENTS__REDIS_URL": REDIS_URL,
        "CALLANNOTATE_EVENTS__REDIS_PREFIX": prefix,
    }
    server = await asyncio.to_thread(
        _serve, tmp_path_factory.mktemp("ws-redis"), env, workers=False
    )
    publisher = RedisEventBus(
        EventSettings(backend="redis", redis_url=REDIS_URL, redis_prefix=prefix)
    )
    await publisher.start()
    try:
        async with connect(f"{server.ws_url}/ws/remote") as ws:
            await recv_json(ws)
            await ws.send(json.dumps({"type": "subscribe", "all": True}))
            await recv_json(ws)
            for kind in ("job.queued", "job.started", "job.completed"):
                await publisher.publish(EventDraft(type=kind, job_id="remote", owner="local"))
            frames = await recv_until(ws, "job.completed", timeout=30)
        events = job_events(frames, "remote")
        assert [(e["seq"], e["type"]) for e in events] == [
            (1, "job.queued"), (2, "job.started"), (3, "job.completed")
        ]  # fmt: skip
        # A second server process would replay the same history from Redis.
        replay = await publisher.replay("remote", 1)
        assert [e.seq for e in replay.events] == [2, 3]
    finally:
        await publisher.stop()
        await asyncio.to_thread(_stop, server)
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(REDIS_URL)
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


@pytest.mark.parametrize("path", ["/ws/page", "/stream"])
async def test_a_foreign_origin_gets_403_at_the_handshake(tmp_path: Path, path: str) -> None:
    """Issue 15.2: a page on another site could subscribe to ``all`` and read transcripts."""
    with thread_server(tmp_path) as srv:
        with pytest.raises(InvalidStatus) as refused:
            async with connect(f"{srv.ws_url}{path}", origin=Origin("https://evil.example")):
                pass  # pragma: no cover - never opened
        assert refused.value.response.status_code == 403
        same = Origin(f"http://127.0.0.1:{srv.port}")
        async with connect(f"{srv.ws_url}/ws/page", origin=same) as ws:
            assert (await recv_json(ws))["type"] == "welcome"


MB = 1024 * 1024


async def _pcm_stream(ws_url: str, pcm: bytes) -> dict[str, Any]:
    """Send ``pcm`` in 64 KiB messages as fast as the socket takes them; the last message."""
    async with connect(f"{ws_url}/stream", max_size=None) as ws:
        await ws.send(json.dumps({"type": "config", "format": "pcm_s16le", "language": "en"}))
        ready = await recv_json(ws, timeout=300)
        assert ready["type"] == "ready", ready

        async def last_message() -> dict[str, Any]:
            while True:
                frame = await recv_json(ws, timeout=600)
                if frame["type"] in ("final", "error"):
                    return frame

        reader = asyncio.create_task(last_message())
        for i in range(0, len(pcm), 64 * 1024):
            await ws.send(pcm[i : i + 64 * 1024])
        await ws.send(json.dumps({"type": "end"}))
        return await reader


@pytest.mark.models
async def test_a_fast_30_mb_stream_keeps_server_memory_bounded(tmp_path: Path) -> None:
    """Issue 15.8: 100 MB of PCM raised the API's RSS by 470 MB; 735 MB stayed afterwards.

    Quiet noise (the VAD hears no speech), so this measures the stream's plumbing: received
    audio, decoded samples, the transcriber's window, the recording (on disk). Figures are
    printed; ``benchmarks/stream_memory.py`` measures other sizes and signals.
    """
    noise = np.random.default_rng(0).normal(0, 1e-4, 160000)
    block = (noise * 32767).astype("<i2").tobytes()
    pcm = (block * (30 * MB // len(block) + 1))[: 30 * MB]
    server = _serve(tmp_path, {}, workers=False)
    try:
        process = psutil.Process(server.process.pid)
        warm = await _pcm_stream(server.ws_url, pcm[:64000])  # loads the streaming models
        assert warm["type"] == "final", warm
        await asyncio.sleep(1.0)
        before = process.memory_info().rss
        peak = before
        sampling = True

        def sample() -> None:
            nonlocal peak
            while sampling:
                peak = max(peak, process.memory_info().rss)
                time.sleep(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        final = await _pcm_stream(server.ws_url, pcm)
        sampling = False
        sampler.join()
        await asyncio.sleep(2.0)
        after = process.memory_info().rss
        staged = list((tmp_path / "data").rglob("stream-*.wav"))
        # One message over 1 MiB is refused by uvicorn itself (it would queue 32 of 16 MiB).
        async with connect(f"{server.ws_url}/stream", max_size=None) as ws:
            await ws.send(json.dumps({"type": "config", "language": "en"}))
            assert (await recv_json(ws))["type"] == "ready"
            with pytest.raises(ConnectionClosed) as too_big:
                await ws.send(pcm[: 2 * MB])
                await recv_json(ws)
        assert too_big.value.rcvd is not None and too_big.value.rcvd.code == 1009
    finally:
        _stop(server)
    print(
        f"\n30 MB stream: RSS before {before / MB:.0f} MB, peak {peak / MB:.0f} MB "
        f"(+{(peak - before) / MB:.0f}), after {after / MB:.0f} MB (+{(after - before) / MB:.0f})"
    )
    assert final["type"] == "final", final
    assert final["duration"] == pytest.approx(30 * MB / 32000, abs=0.1)
    assert staged == []  # the recording was deleted (no job asked for)
    assert peak - before < 100 * MB
    assert after - before < 50 * MB
