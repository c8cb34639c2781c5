"""QueueManager with real worker processes on real recordings from the shared data folder.

The "long" recording is the JFK clip tiled to ten minutes in a tmp folder: decoding and
measuring it takes a second or more, long enough to kill, cancel or time out a job while
it runs. Jobs ask for no ML steps (``steps=[]``) so these tests exercise the queue and the
process pool, not the models.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml
from queue_testing import JFK, new_job

from callannotate.config import Settings
from callannotate.jobs.events import JobEvent
from callannotate.jobs.filequeue import FileQueue
from callannotate.jobs.manager import TIME_LIMIT_REASON, QueueManager
from callannotate.jobs.models import Job, JobState
from callannotate.pipeline.types import AnnotateOptions, Annotation, Step

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not JFK.is_file(), reason=f"shared data not found at {JFK}"),
]

NO_MODELS = AnnotateOptions(steps=[])


@pytest.fixture(scope="module")
def long_recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    samples, rate = sf.read(JFK, dtype="float32")
    reps = int(600 / (len(samples) / rate)) + 1
    path = tmp_path_factory.mktemp("audio") / "jfk_10min.flac"
    sf.write(path, np.tile(samples, (reps, 1)), rate)
    return path


def make_settings(tmp_path: Path, models_yaml: str = "{}\n", **workers: float) -> Settings:
    models = tmp_path / "models.yaml"
    models.write_text(models_yaml)
    settings = Settings(data_dir=tmp_path / "data", models_config=models)
    settings.queue.poll_interval = 0.05
    for key, value in workers.items():
        setattr(settings.workers, key, value)
    return settings


class Harness:
    def __init__(self, settings: Settings, grace_s: float = 30.0) -> None:
        self.settings = settings
        self.queue = FileQueue(settings.queue_dir, settings.queue)
        self.events: list[JobEvent] = []
        self.manager = QueueManager(
            self.queue, settings, on_event=self.events.append, grace_s=grace_s
        )

    def submit(self, source: Path) -> Job:
        return new_job(self.queue, source=source, stored_as=source.name, options=NO_MODELS)

    def types(self, job_id: str) -> list[str]:
        return [e.type for e in self.events if e.job_id == job_id]

    async def wait(self, pred: Callable[[], bool], timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not pred():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; events: {[e.type for e in self.events]}")
            await asyncio.sleep(0.02)

    async def wait_state(self, job_id: str, *states: JobState, timeout: float = 30.0) -> Job:
        await self.wait(lambda: self.queue.get(job_id).state in states, timeout)
        return self.queue.get(job_id)

    async def wait_event(self, job_id: str, type_: str) -> None:
        """Events are emitted right after the queue write: a reader may see the state first."""
        await self.wait(lambda: type_ in self.types(job_id))

    async def wait_running(self, job_id: str) -> int:
        """Wait until a worker reports progress on the job; returns that worker's pid."""
        await self.wait(lambda: "job.progress" in self.types(job_id))
        pid = next(w.pid for w in self.manager.workers() if w.job_id == job_id)
        assert pid is not None
        return pid


async def test_job_completes_with_annotation(tmp_path: Path) -> None:
    h = Harness(make_settings(tmp_path))
    await h.manager.start()
    try:
        await h.wait(lambda: all(w.ready for w in h.manager.workers()))
        assert h.manager.alive()
        job = h.submit(JFK)
        done = await h.wait_state(job.id, JobState.COMPLETED, JobState.FAILED)
        assert done.state == JobState.COMPLETED, done.error
        assert done.attempts == 1
        annotation = Annotation.model_validate_json(h.queue.read_result(job.id))
        assert annotation.recording.filename == "jfk.flac"
        assert annotation.recording.duration == pytest.approx(11.0, abs=0.1)
        assert annotation.recording.channels == 2
        decode = next(p for p in done.progress if p.step == "decode")
        assert decode.status == "done" and decode.percent == 100.0
        await h.wait_event(job.id, "job.completed")
        types = h.types(job.id)
        assert types[0] == "job.started" and types[-1] == "job.completed"
        assert "job.progress" in types
        (info,) = h.manager.workers()
        assert info.jobs_done == 1 and info.restarts == 0 and info.preload_error is None
    finally:
        await h.manager.stop()
    assert not h.manager.alive()


async def test_pool_of_two_workers_runs_jobs_in_parallel(
    tmp_path: Path, long_recording: Path
) -> None:
    h = Harness(make_settings(tmp_path, concurrency=2))
    await h.manager.start()
    try:
        slow = h.submit(long_recording)
        fast = [h.submit(JFK) for _ in range(3)]
        # The short jobs finish on the second worker while the long one still runs.
        for job in fast:
            done = await h.wait_state(job.id, JobState.COMPLETED, JobState.FAILED)
            assert done.state == JobState.COMPLETED
        assert h.queue.get(slow.id).state in (JobState.RUNNING, JobState.COMPLETED)
        final = await h.wait_state(slow.id, JobState.COMPLETED, JobState.FAILED)
        assert final.state == JobState.COMPLETED
        infos = h.manager.workers()
        assert len({w.pid for w in infos}) == 2
        await h.wait(lambda: sum(w.jobs_done for w in h.manager.workers()) == 4)
    finally:
        await h.manager.stop()


async def test_sigkill_mid_job_completes_exactly_once(tmp_path: Path, long_recording: Path) -> None:
    h = Harness(make_settings(tmp_path))
    await h.manager.start()
    try:
        job = h.submit(long_recording)
        pid = await h.wait_running(job.id)
        os.kill(pid, signal.SIGKILL)
        done = await h.wait_state(job.id, JobState.COMPLETED, JobState.FAILED, timeout=60)
        assert done.state == JobState.COMPLETED, done.error
        assert done.attempts == 2  # the killed attempt counted
        await h.wait_event(job.id, "job.completed")
        types = h.types(job.id)
        assert types.count("job.completed") == 1
        assert types.count("job.started") == 2
        requeued = [e for e in h.events if e.type == "job.queued" and e.job_id == job.id]
        assert len(requeued) == 1 and "worker process died" in requeued[0].data["reason"]
        Annotation.model_validate_json(h.queue.read_result(job.id))
        (info,) = h.manager.workers()
        assert info.restarts == 1 and info.pid != pid and info.alive
        # Exactly once: nothing else is left anywhere in the queue.
        assert h.queue.counts() == {
            "incoming": 0,
            "processing": 0,
            "completed": 1,
            "failed": 0,
            "archived": 0,
        }
    finally:
        await h.manager.stop()


async def test_time_limit_fails_job(tmp_path: Path, long_recording: Path) -> None:
    h = Harness(make_settings(tmp_path, job_timeout_s=0.3))
    await h.manager.start()
    try:
        await h.wait(lambda: all(w.ready for w in h.manager.workers()))
        job = h.submit(long_recording)
        failed = await h.wait_state(job.id, JobState.FAILED, JobState.COMPLETED)
        assert failed.state == JobState.FAILED
        assert failed.error == TIME_LIMIT_REASON
        await h.wait_event(job.id, "job.failed")
        await h.wait(lambda: h.manager.workers()[0].restarts == 1 and h.manager.alive())
    finally:
        await h.manager.stop()


async def test_cancel_running_and_queued(tmp_path: Path, long_recording: Path) -> None:
    h = Harness(make_settings(tmp_path))
    await h.manager.start()
    try:
        running = h.submit(long_recording)
        queued = h.submit(JFK)
        pid = await h.wait_running(running.id)
        cancelled = await h.manager.cancel(queued.id)
        assert cancelled.state == JobState.CANCELLED
        result = await h.manager.cancel(running.id)
        assert result.state == JobState.CANCELLED
        assert result.error == "cancelled"
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # the worker running it was killed
        assert h.types(running.id)[-1] == "job.failed"
        await h.wait(lambda: h.manager.alive() and h.manager.workers()[0].ready)
        # The replacement worker serves new jobs.
        after = h.submit(JFK)
        done = await h.wait_state(after.id, JobState.COMPLETED, JobState.FAILED)
        assert done.state == JobState.COMPLETED
    finally:
        await h.manager.stop()


async def test_cancel_from_another_process_view(tmp_path: Path, long_recording: Path) -> None:
    """An API process that does not run the job flags it in job.json; the runner stops it."""
    h = Harness(make_settings(tmp_path))
    await h.manager.start()
    try:
        job = h.submit(long_recording)
        await h.wait_running(job.id)
        # Progress is written into job.json while the job runs.
        await h.wait(lambda: any(p.step == "decode" for p in h.queue.get(job.id).progress))
        other = FileQueue(h.settings.queue_dir, h.settings.queue)
        assert other.cancel(job.id).cancel_requested
        final = await h.wait_state(job.id, JobState.CANCELLED, JobState.COMPLETED)
        assert final.state == JobState.CANCELLED
    finally:
        await h.manager.stop()


async def test_delete_running_job_from_another_process_view(
    tmp_path: Path, long_recording: Path
) -> None:
    h = Harness(make_settings(tmp_path))
    await h.manager.start()
    try:
        job = h.submit(long_recording)
        await h.wait_running(job.id)
        FileQueue(h.settings.queue_dir, h.settings.queue).delete(job.id)
        # The runner lets go of it (its worker is stopped, or its result is dropped when
        # it finished before the manager noticed the delete).
        await h.wait(lambda: not h.queue.holds(job.id))
        assert sum(h.queue.counts().values()) == 0
        assert "job.completed" not in h.types(job.id)
        await h.wait(lambda: h.manager.alive() and h.manager.workers()[0].ready)
        after = h.submit(JFK)
        done = await h.wait_state(after.id, JobState.COMPLETED, JobState.FAILED)
        assert done.state == JobState.COMPLETED
    finally:
        await h.manager.stop()


async def test_graceful_stop_releases_running_job(tmp_path: Path, long_recording: Path) -> None:
    h = Harness(make_settings(tmp_path), grace_s=0.2)
    await h.manager.start()
    job = h.submit(long_recording)
    await h.wait_running(job.id)
    await h.manager.stop(graceful=True)
    back = h.queue.get(job.id)
    assert back.state == JobState.QUEUED
    assert back.attempts == 0  # a shutdown does not use up an attempt
    assert not h.queue.holds(job.id)
    assert h.types(job.id)[-1] == "job.queued"
    assert all(not w.alive for w in h.manager.workers())


async def test_graceful_stop_lets_running_job_finish(tmp_path: Path) -> None:
    h = Harness(make_settings(tmp_path), grace_s=30.0)
    await h.manager.start()
    job = h.submit(JFK)
    await h.wait_running(job.id)
    await h.manager.stop(graceful=True)
    assert h.queue.get(job.id).state == JobState.COMPLETED


async def test_unloadable_model_is_reported_not_fatal(tmp_path: Path) -> None:
    broken = "broken:\n  class: callannotate_no_such_module:Nope\n"
    h = Harness(make_settings(tmp_path, models_yaml=broken))
    await h.manager.start()
    try:
        await h.wait(lambda: all(w.ready for w in h.manager.workers()))
        (info,) = h.manager.workers()
        assert info.preload_error is not None and "broken" in info.preload_error
        assert info.alive and info.restarts == 0
        job = h.submit(JFK)
        done = await h.wait_state(job.id, JobState.COMPLETED, JobState.FAILED)
        assert done.state == JobState.COMPLETED
    finally:
        await h.manager.stop()


def tiny_models_yaml() -> str:
    """The repo's VAD and Whisper tiny.en (the fastest packaged model)."""
    config = yaml.safe_load(Settings().models_config.read_text())
    whisper = {**config["transcription"], "model": "tiny.en"}
    return str(yaml.safe_dump({"vad": config["vad"], "transcription": whisper}))


@pytest.mark.models
async def test_transcribe_job_emits_partial_words_before_completed(tmp_path: Path) -> None:
    h = Harness(make_settings(tmp_path, models_yaml=tiny_models_yaml()))
    await h.manager.start()
    try:
        options = AnnotateOptions(steps=[Step.VAD, Step.TRANSCRIBE], language="en")
        job = new_job(h.queue, source=JFK, stored_as="jfk.flac", options=options)
        done = await h.wait_state(job.id, JobState.COMPLETED, JobState.FAILED, timeout=300)
        assert done.state == JobState.COMPLETED, done.error
        await h.wait_event(job.id, "job.completed")
        types = h.types(job.id)
        assert "job.partial" in types
        assert types.index("job.started") < types.index("job.partial")
        assert types[-1] == "job.completed"
        partials = [e.data for e in h.events if e.job_id == job.id and e.type == "job.partial"]
        assert all(p["step"] == "transcribe" and p["words"] for p in partials)
        words = [w for p in partials for w in p["words"]]
        assert all({"text", "start", "end", "probability", "speaker"} <= set(w) for w in words)
        annotation = Annotation.model_validate_json(h.queue.read_result(job.id))
        assert sorted((w["start"], w["text"], w["speaker"]) for w in words) == sorted(
            (w.start, w.text, w.speaker) for w in annotation.words
        )
    finally:
        await h.manager.stop()


async def test_start_recovers_jobs_of_a_dead_process(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    queue = FileQueue(settings.queue_dir, settings.queue)
    job = new_job(queue, source=JFK, stored_as="jfk.flac", options=NO_MODELS)
    # A previous process claimed the job and died (its lock is gone with it).
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path;"
            "from callannotate.config import QueueSettings;"
            "from callannotate.jobs.filequeue import FileQueue;"
            "FileQueue(Path(sys.argv[1]), QueueSettings()).claim('old')",
            str(settings.queue_dir),
        ],
        check=True,
    )
    assert child.returncode == 0
    assert queue.get(job.id).state == JobState.RUNNING
    h = Harness(settings)
    await h.manager.start()
    try:
        done = await h.wait_state(job.id, JobState.COMPLETED, JobState.FAILED)
        assert done.state == JobState.COMPLETED
        assert done.attempts == 2
        assert h.types(job.id)[0] == "job.queued"
    finally:
        await h.manager.stop()


def test_standalone_worker_serves_and_exits_on_sigterm(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    queue = FileQueue(settings.queue_dir, settings.queue)
    env = {
        **os.environ,
        "CALLANNOTATE_DATA_DIR": str(settings.data_dir),
        "CALLANNOTATE_MODELS_CONFIG": str(settings.models_config),
        "CALLANNOTATE_QUEUE__POLL_INTERVAL": "0.05",
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from callannotate.config import Settings;"
            "from callannotate.jobs.worker import run_standalone_worker;"
            "run_standalone_worker(Settings())",
        ],
        env=env,
    )
    try:
        job = new_job(queue, source=JFK, stored_as="jfk.flac", options=NO_MODELS)
        deadline = time.monotonic() + 60
        while queue.get(job.id).state != JobState.COMPLETED:
            assert proc.poll() is None, "the worker exited early"
            assert time.monotonic() < deadline, "job not completed by the standalone worker"
            time.sleep(0.05)
        result = json.loads(queue.read_result(job.id))
        assert result["recording"]["filename"] == "jfk.flac"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_killed_manager_process_frees_its_job(tmp_path: Path, long_recording: Path) -> None:
    """SIGKILL a whole worker-pool process: its worker exits too, and the job is recovered."""
    import psutil

    settings = make_settings(tmp_path)
    queue = FileQueue(settings.queue_dir, settings.queue)
    env = {
        **os.environ,
        "CALLANNOTATE_DATA_DIR": str(settings.data_dir),
        "CALLANNOTATE_MODELS_CONFIG": str(settings.models_config),
        "CALLANNOTATE_QUEUE__POLL_INTERVAL": "0.05",
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from callannotate.config import Settings;"
            "from callannotate.jobs.worker import run_standalone_worker;"
            "run_standalone_worker(Settings())",
        ],
        env=env,
    )
    try:
        job = new_job(queue, source=long_recording, stored_as="long.flac", options=NO_MODELS)
        deadline = time.monotonic() + 60
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
