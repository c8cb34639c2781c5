"""The one job constructor (``jobs/intake.new_job``) and the one announcement of a new job,
for uploads and ``/stream`` alike (issue 16.3)."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import anyio
import numpy as np
import pytest
from fastapi.testclient import TestClient

from audio_encoding import encode_pcm
from callannotate.api.app import create_app
from callannotate.api.routes.stream import StreamConfig, _submit_job
from callannotate.config import ApiSettings, Settings
from callannotate.errors import InvalidAudio
from callannotate.events.bus import EventBus
from callannotate.jobs.filequeue import FileQueue
from callannotate.jobs.intake import audio_type, new_job, stored_name
from callannotate.pipeline.types import AnnotateOptions


def synthesise(path: Path, container: str, codec: str, rate: int, seconds: float) -> Path:
    """A 440 Hz mono tone encoded with PyAV."""
    n = int(rate * seconds)
    tone = (0.3 * np.sin(2 * np.pi * 440.0 * np.arange(n) / rate) * 32767).astype(np.int16)
    return encode_pcm(path, container, codec, rate, tone[:, None], chunk=1152)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", api=ApiSettings(embedded_workers=False))


@pytest.fixture
def queue(settings: Settings) -> FileQueue:
    return FileQueue(settings.queue_dir, settings.queue)


def _staged(queue: FileQueue, source: Path, name: str = "upload.part") -> Path:
    staged = queue.staging_dir() / name
    shutil.copyfile(source, staged)
    os.chmod(staged, 0o644)
    return staged


def test_types_come_from_the_decoded_container() -> None:
    assert audio_type("wav") == ("wav", "audio/wav")
    assert audio_type("mp3") == ("mp3", "audio/mpeg")
    assert audio_type("mov,mp4,m4a,3gp,3g2,mj2") == ("m4a", "audio/mp4")
    assert audio_type("html") == ("bin", "application/octet-stream")
    assert stored_name("ogg") == "audio.ogg"


def test_new_job_describes_and_queues_what_the_file_is(
    queue: FileQueue, settings: Settings, tmp_path: Path
) -> None:
    mp3 = synthesise(tmp_path / "tone.mp3", "mp3", "libmp3lame", 16000, 1.0)
    staged = _staged(queue, mp3)
    job = new_job(
        queue,
        settings,
        staged_path=staged,
        filename="call.wav",
        options=AnnotateOptions(language="ru"),
        owner="anna",
        callback_url="https://example.test/hook",
    )
    assert job.audio.filename == "call.wav"
    assert job.audio.stored_as == "audio.mp3" and job.audio.format == "mp3"
    assert job.audio.size_bytes == mp3.stat().st_size
    assert 0.9 < job.audio.duration < 1.2
    assert job.owner == "anna" and job.callback_url == "https://example.test/hook"
    stored = queue.audio_path(job.id)
    assert stored.name == "audio.mp3" and stored.parent.parent.name == "incoming"
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    assert not staged.exists()
    assert queue.get(job.id).options.language == "ru"


def test_new_job_refuses_what_is_not_audio(
    queue: FileQueue, settings: Settings, tmp_path: Path
) -> None:
    page = tmp_path / "x.wav"
    page.write_text("<script>alert(1)</script>\n" * 50)
    staged = _staged(queue, page)
    with pytest.raises(InvalidAudio):
        new_job(
            queue,
            settings,
            staged_path=staged,
            filename="x.wav",
            options=AnnotateOptions(),
            owner="local",
        )
    assert queue.list() == ([], 0)


async def _events_of(bus: EventBus, job_id: str) -> list[str]:
    await bus.flush()
    return [event.type for event in (await bus.replay(job_id)).events]


async def test_stream_jobs_are_announced_like_uploads(settings: Settings, tmp_path: Path) -> None:
    """A stream saved as a job goes through new_job and publishes job.queued, as an upload
    does (before, /stream built its own record and announced nothing)."""
    app = create_app(settings)
    queue: FileQueue = app.state.queue
    async with app.router.lifespan_context(app):
        record = queue.staging_dir() / "stream-x.wav"
        synthesise(record, "wav", "pcm_s16le", 16000, 1.0)
        cfg = StreamConfig(create_job=True, language="en")
        job_id = await anyio.to_thread.run_sync(
            _submit_job, queue, settings, record, cfg, "local", app
        )
        job = queue.get(job_id)
        assert job.audio.filename == "stream.wav" and job.audio.stored_as == "audio.wav"
        assert job.options.language == "en"
        assert await _events_of(app.state.events.bus, job_id) == ["job.queued"]


def _shared_data() -> Path:
    env = os.environ.get("CALLANNOTATE_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


JFK = _shared_data() / "asr" / "en" / "jfk" / "jfk.flac"


@pytest.mark.models
@pytest.mark.skipif(not JFK.is_file(), reason=f"{JFK} not found (set CALLANNOTATE_SHARED_DATA)")
def test_real_stream_with_create_job_publishes_job_queued(settings: Settings) -> None:
    """End to end: ``WS /stream`` with ``create_job`` puts job.queued on the app's bus."""
    from callannotate.pipeline.audio.decode import decode

    app = create_app(settings)
    pcm = (np.clip(decode(JFK).mono()[: 16000 * 4], -1, 1) * 32767).astype("<i2").tobytes()
    with TestClient(app) as client, client.websocket_connect("/stream") as ws:
        ws.send_json(
            {"type": "config", "format": "pcm_s16le", "language": "en", "create_job": True}
        )
        assert ws.receive_json()["type"] == "ready"
        ws.send_bytes(pcm)
        ws.send_json({"type": "end"})
        while (message := ws.receive_json())["type"] != "final":
            pass
        job_id = message["job_id"]
        assert job_id
        events = client.portal.call(_events_of, app.state.events.bus, job_id)
    assert "job.queued" in events


def test_a_wma_recording_is_stored_and_served_as_wma(
    queue: FileQueue, settings: Settings, tmp_path: Path
) -> None:
    """Windows call recorders write WMA (ASF container): it was stored as ``audio.bin`` and
    served as ``application/octet-stream``."""
    import av

    wma = tmp_path / "tone.wma"
    tone = (0.3 * np.sin(2 * np.pi * 440.0 * np.arange(16000) / 16000) * 32767).astype(np.int16)
    with av.open(str(wma), "w", format="asf") as out:
        stream = out.add_stream("wmav2", rate=16000, layout="mono")
        stream.bit_rate = 32000
        frame = av.AudioFrame.from_ndarray(tone[None, :], format="s16", layout="mono")
        frame.sample_rate = 16000
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    job = new_job(
        queue,
        settings,
        staged_path=_staged(queue, wma),
        filename="call.wma",
        options=AnnotateOptions(),
        owner="local",
    )
    assert job.audio.format == "asf" and job.audio.codec == "wmav2"
    assert job.audio.stored_as == "audio.wma"
    assert audio_type(job.audio.format) == ("wma", "audio/x-ms-wma")
