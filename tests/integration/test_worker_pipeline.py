"""Worker processes running the real pipeline (the queue manager's own tests use fakes).

Recordings are generated in a tmp folder; only the partial-words test needs the shared JFK
clip and a Whisper model.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

from callannotate.config import Settings
from callannotate.jobs.events import JobEvent
from callannotate.jobs.filequeue import FileQueue
from callannotate.jobs.manager import QueueManager
from callannotate.jobs.models import AudioMeta, Job, JobState
from callannotate.jobs.runner import PipelineRunner
from callannotate.pipeline.types import AnnotateOptions, Annotation, Step

pytestmark = pytest.mark.integration

SHARED = Path(
    os.environ.get(
        "CALLANNOTATE_SHARED_DATA", Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
    )
)
JFK = SHARED / "asr" / "en" / "jfk" / "jfk.flac"
CHEAP = AnnotateOptions(steps=[Step.PREPROCESS])


def tone(path: Path, seconds: float) -> Path:
    t = np.arange(int(16000 * seconds)) / 16000
    sf.write(path, (0.3 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32), 16000)
    return path


def submit(queue: FileQueue, source: Path, options: AnnotateOptions = CHEAP) -> Job:
    job_id = queue.new_job_id()
    staged = queue.staging_dir() / f"upload-{job_id}"
    staged.write_bytes(source.read_bytes())
    meta = AudioMeta(
        filename=source.name,
        stored_as=f"audio{source.suffix}",
        size_bytes=staged.stat().st_size,
        format=source.suffix.lstrip("."),
        codec="",
        sample_rate=16000,
        channels=1,
        duration=0.0,
    )
    return queue.submit(Job(id=job_id, owner="local", audio=meta, options=options), staged)


def worker_env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "CALLANNOTATE_DATA_DIR": str(tmp_path / "data"),
        "CALLANNOTATE_QUEUE__POLL_INTERVAL": "0.05",
        "CALLANNOTATE_WORKERS__PRELOAD_MODELS": "false",
    }


def start_worker(env: dict[str, str]) -> subprocess.Popen[bytes]:
    code = (
        "from callannotate.config import Settings;"
        "from callannotate.jobs.service import run_standalone_worker;"
        "run_standalone_worker(Settings())"
    )
    return subprocess.Popen([sys.executable, "-c", code], env=env)


def test_standalone_worker_serves_and_exits_on_sigterm(tmp_path: Path) -> None:
    from callannotate.security.atrest import vault_for

    env = worker_env(tmp_path)
    keys = vault_for(Settings(data_dir=tmp_path / "data"))  # the worker encrypts result.json
    queue = FileQueue(tmp_path / "data" / "queue", Settings().queue, keys)
    proc = start_worker(env)
    try:
        job = submit(queue, tone(tmp_path / "tone.wav", 2.0))
        deadline = time.monotonic() + 120
        while queue.get(job.id).state not in (JobState.COMPLETED, JobState.FAILED):
            assert proc.poll() is None, "the worker exited early"
            assert time.monotonic() < deadline, "job not finished by the standalone worker"
            time.sleep(0.05)
        done = queue.get(job.id)
        assert done.state == JobState.COMPLETED, done.error
        result = json.loads(queue.read_result(job.id))
        assert result["recording"]["filename"] == "tone.wav"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_killed_manager_process_frees_its_job(tmp_path: Path) -> None:
    """SIGKILL a whole worker-pool process: its worker exits too, and the job is recovered."""
    import psutil

    env = worker_env(tmp_path)
    queue = FileQueue(tmp_path / "data" / "queue", Settings().queue)
    proc = start_worker(env)
    try:
        job = submit(queue, tone(tmp_path / "long.wav", 600.0))
        deadline = time.monotonic() + 120
        while queue.get(job.id).state != JobState.RUNNING:
            assert time.monotonic() < deadline, "the job was not claimed"
            time.sleep(0.02)
        workers = psutil.Process(proc.pid).children()
        assert workers
        assert queue.recover() == []  # its holder is alive
        proc.kill()
        proc.wait(timeout=10)
        _gone, alive = psutil.wait_procs(workers, timeout=10)
        assert not alive, "worker processes outlived their manager"
        assert queue.recover() == [job.id]
        back = queue.get(job.id)
        assert back.state == JobState.QUEUED and back.attempts == 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def tiny_models_yaml() -> str:
    """The repo's VAD and Whisper tiny.en (the fastest packaged model)."""
    config = yaml.safe_load(Settings().models_config.read_text())
    whisper = {**config["transcription"], "model": "tiny.en"}
    return str(yaml.safe_dump({"vad": config["vad"], "transcription": whisper}))


@pytest.mark.models
@pytest.mark.skipif(not JFK.is_file(), reason=f"shared data not found at {JFK}")
async def test_transcribe_job_emits_partial_words_before_completed(tmp_path: Path) -> None:
    import asyncio

    models = tmp_path / "models.yaml"
    models.write_text(tiny_models_yaml())
    settings = Settings(data_dir=tmp_path / "data", models_config=models)
    settings.queue.poll_interval = 0.05
    queue = FileQueue(settings.queue_dir, settings.queue)
    events: list[JobEvent] = []
    manager = QueueManager(queue, settings, PipelineRunner(), on_event=events.append)
    await manager.start()
    try:
        options = AnnotateOptions(steps=[Step.VAD, Step.TRANSCRIBE], language="en")
        job = submit(queue, JFK, options)
        deadline = time.monotonic() + 300
        while queue.get(job.id).state not in (JobState.COMPLETED, JobState.FAILED):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        done = queue.get(job.id)
        assert done.state == JobState.COMPLETED, done.error
        while "job.completed" not in [e.type for e in events]:
            await asyncio.sleep(0.02)
        types = [e.type for e in events if e.job_id == job.id]
        assert "job.partial" in types
        assert types.index("job.started") < types.index("job.partial")
        assert types[-1] == "job.completed"
        partials = [e.data for e in events if e.job_id == job.id and e.type == "job.partial"]
        assert all(p["step"] == "transcribe" and p["words"] for p in partials)
        words = [w for p in partials for w in p["words"]]
        assert all({"text", "start", "end", "probability"} <= set(w) for w in words)
        annotation = Annotation.model_validate_json(queue.read_result(job.id))
        assert sorted((w["start"], w["text"]) for w in words) == sorted(
            (w.start, w.text) for w in annotation.words
        )
    finally:
        await manager.stop()


async def test_soft_time_limit_stops_the_real_pipeline(tmp_path: Path) -> None:
    """16.8 with the real steps: the pipeline's progress hook is where the stop lands."""
    import asyncio

    settings = Settings(data_dir=tmp_path / "data")
    settings.queue.poll_interval = 0.05
    settings.workers.preload_models = False
    settings.workers.job_timeout_s = 1.0
    settings.workers.timeout_grace_s = 120.0
    queue = FileQueue(settings.queue_dir, settings.queue)
    manager = QueueManager(queue, settings, PipelineRunner())
    await manager.start()
    try:
        long = tone(tmp_path / "long.wav", 1800.0)
        job = submit(queue, long, AnnotateOptions(steps=[Step.PREPROCESS, Step.VAD]))
        deadline = time.monotonic() + 300
        while queue.get(job.id).state not in (JobState.COMPLETED, JobState.FAILED):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        failed = queue.get(job.id)
        assert failed.state == JobState.FAILED
        assert failed.error is not None and failed.error.startswith("timeout: ")
        assert "killed" not in failed.error
        (info,) = manager.workers()
        assert info.restarts == 0 and info.alive
    finally:
        await manager.stop()
