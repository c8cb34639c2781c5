"""The queue's retention policy: recordings and whole jobs deleted after the configured
hours, archiving, and the Celery executor's API applying it (no QueueManager runs there)."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from queue_testing import MakeJob

from callannotate.config import QueueSettings, Settings
from callannotate.errors import Conflict, NotFound
from callannotate.jobs.filequeue import FileQueue
from callannotate.jobs.models import Job, JobState, utcnow
from callannotate.jobs.retention import apply_retention
from callannotate.pipeline.types import Annotation, RecordingInfo

RESULT = Annotation(recording=RecordingInfo(duration=1.0, sample_rate=16000, channels=1))


def _finish(queue: FileQueue, job: Job, *, ok: bool = True, at: datetime | None = None) -> None:
    claimed = queue.claim_job(job.id, "w")
    assert claimed is not None
    if ok:
        queue.complete(job.id, RESULT.model_dump_json().encode())
    else:
        queue.fail(job.id, "boom")
    if at is not None:  # finished then
        path = queue.job_dir(job.id) / "job.json"
        data = json.loads(path.read_text())
        data["finished_at"] = at.isoformat()
        path.write_text(json.dumps(data))


def _audio(queue: FileQueue, job: Job) -> Path:
    return queue.audio_path(job.id)


def test_recordings_are_deleted_after_their_hours_and_annotations_stay(
    queue: FileQueue, make_job: MakeJob
) -> None:
    now = utcnow()
    old, old_failed, fresh, queued = make_job(), make_job(), make_job(), make_job()
    _finish(queue, old, at=now - timedelta(hours=30))
    _finish(queue, old_failed, ok=False, at=now - timedelta(hours=25))
    _finish(queue, fresh, at=now - timedelta(hours=23))
    assert all(_audio(queue, j).is_file() for j in (old, old_failed, fresh, queued))

    assert sorted(queue.expire_audio(24.0, now)) == sorted([old.id, old_failed.id])
    assert not _audio(queue, old).exists() and not _audio(queue, old_failed).exists()
    assert _audio(queue, fresh).is_file() and _audio(queue, queued).is_file()
    assert queue.get(old.id).audio_deleted_at == now
    assert queue.get(fresh.id).audio_deleted_at is None
    assert queue.read_result(old.id) == RESULT.model_dump_json().encode()  # it stays
    assert queue.get(old.id).state == JobState.COMPLETED
    assert queue.expire_audio(24.0, now) == []  # nothing left to do

    # A job whose recording cannot come back cannot run again.
    with pytest.raises(Conflict, match=r"its recording was deleted at .*audio_retention_hours"):
        queue.retry(old_failed.id)
    assert queue.get(old_failed.id).state == JobState.FAILED


def test_a_recording_left_by_an_interrupted_pass_is_deleted_by_the_next(
    queue: FileQueue, make_job: MakeJob
) -> None:
    now = utcnow()
    job = make_job()
    _finish(queue, job, at=now - timedelta(hours=2))
    audio = _audio(queue, job)
    kept = audio.read_bytes()
    assert queue.expire_audio(1.0, now) == [job.id]
    audio.write_bytes(kept)  # as if the pass had died between the record and the unlink
    assert queue.expire_audio(1.0, now + timedelta(minutes=5)) == [job.id]
    assert not audio.exists()
    assert queue.get(job.id).audio_deleted_at == now  # the first deletion's time stays


def test_jobs_are_deleted_after_their_hours_wherever_they_are(
    queue: FileQueue, make_job: MakeJob
) -> None:
    now = utcnow()
    archived, failed, fresh, running = make_job(), make_job(), make_job(), make_job()
    _finish(queue, archived, at=now - timedelta(hours=100))
    queue.archive_expired(now)  # retention_hours is 1 in these tests
    assert queue.get(archived.id).state == JobState.ARCHIVED
    _finish(queue, failed, ok=False, at=now - timedelta(hours=80))
    _finish(queue, fresh, at=now - timedelta(minutes=30))
    assert queue.claim_job(running.id, "w") is not None

    deleted = queue.expire_jobs(72.0, now)
    assert sorted(deleted) == sorted([archived.id, failed.id])
    for gone in (archived, failed):
        with pytest.raises(NotFound):
            queue.get(gone.id)
    assert queue.get(fresh.id).state == JobState.COMPLETED
    assert queue.get(running.id).state == JobState.RUNNING
    staging = queue.staging_dir()
    assert not any(p.name.startswith(".trash-") for p in staging.iterdir())


def test_one_pass_applies_every_setting_and_unset_ones_keep_everything(tmp_path: Path) -> None:
    from queue_testing import new_job

    now = utcnow()
    keep = QueueSettings(retention_hours=1.0)
    queue = FileQueue(tmp_path / "queue", keep)
    a, b = new_job(queue), new_job(queue)
    _finish(queue, a, at=now - timedelta(days=400))
    _finish(queue, b, at=now - timedelta(hours=10))

    done = apply_retention(queue, keep, now)  # defaults: archive only
    assert (done.deleted, done.audio_deleted) == ([], [])
    assert sorted(done.archived) == sorted([a.id, b.id])
    assert _audio(queue, a).is_file()

    policy = QueueSettings(retention_hours=1.0, audio_retention_hours=5.0, job_retention_hours=24.0)
    done = apply_retention(queue, policy, now)
    assert (done.deleted, done.audio_deleted, done.archived) == ([a.id], [b.id], [])
    assert queue.get(b.id).audio_deleted_at == now


def test_negative_hours_are_refused() -> None:
    with pytest.raises(ValueError, match="audio_retention_hours"):
        QueueSettings(audio_retention_hours=-1)
    with pytest.raises(ValueError, match="job_retention_hours"):
        QueueSettings.model_validate({"job_retention_hours": "soon"})


def test_the_celery_executor_applies_the_policy(tmp_path: Path) -> None:
    """Archiving ran only in the QueueManager, which does not run beside Celery: with the
    Celery executor completed jobs stayed in completed/ for ever and no retention applied."""
    from queue_testing import new_job

    from callannotate.jobs.executors.celery import CeleryExecutor

    settings = Settings.model_validate(
        {
            "data_dir": tmp_path,
            "queue": {"retention_hours": 1.0, "audio_retention_hours": 2.0},
            "jobs": {
                "executor": "celery",
                "queue_prefix": "t-retention",
                "broker_url": "redis://127.0.0.1:1/0",  # no broker needed for this
                "ping_interval_s": 0.2,
            },
            "workers": {"preload_models": False},
            "events": {"backend": "memory"},
        }
    )
    queue = FileQueue(settings.queue_dir, settings.queue)
    job = new_job(queue)
    _finish(queue, job, at=utcnow() - timedelta(hours=3))
    executor = CeleryExecutor(settings, queue)
    executor.ping = lambda timeout=1.0: []  # type: ignore[method-assign]  # no broker here

    import asyncio

    async def run() -> None:
        await executor.start()
        try:
            deadline = time.monotonic() + 30
            while queue.get(job.id).state != JobState.ARCHIVED and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
        finally:
            await executor.stop()

    asyncio.run(run())
    archived = queue.get(job.id)
    assert archived.state == JobState.ARCHIVED
    assert archived.audio_deleted_at is not None
    assert not _audio(queue, job).exists()


async def test_the_api_after_a_recording_was_deleted(tmp_path: Path) -> None:
    """What a client sees of a job whose recording the policy deleted: the record says when,
    the annotation is served, the audio is a 404 and a retry a 409."""
    import httpx
    from queue_testing import new_job

    from callannotate.api.app import create_app
    from callannotate.db.testing import dispose_app_databases

    settings = Settings.model_validate(
        {
            "data_dir": tmp_path / "data",
            "api": {"embedded_workers": False},
            "queue": {"audio_retention_hours": 1.0},
            "encryption": {"enabled": False},
        }
    )
    app = create_app(settings)
    queue: FileQueue = app.state.queue
    done, failed = new_job(queue), new_job(queue)
    _finish(queue, done, at=utcnow() - timedelta(hours=2))
    _finish(queue, failed, ok=False, at=utcnow() - timedelta(hours=2))
    assert sorted(apply_retention(queue, settings.queue).audio_deleted) == sorted(
        [done.id, failed.id]
    )
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            r = await client.get(f"/jobs/{done.id}")
            assert r.status_code == 200 and r.json()["audio_deleted_at"] is not None
            r = await client.get(f"/jobs/{done.id}/result")
            assert r.status_code == 200 and Annotation.model_validate(r.json()) == RESULT
            r = await client.get(f"/jobs/{done.id}/audio")
            assert r.status_code == 404, r.text
            assert "was deleted at" in r.json()["detail"]
            r = await client.get(f"/jobs/{done.id}/report")  # the page, without a player
            assert r.status_code == 200 and "<audio" not in r.text
            r = await client.post(f"/jobs/{failed.id}/retry")
            assert r.status_code == 409, r.text
            assert "its recording was deleted" in r.json()["detail"]
    finally:
        dispose_app_databases(app)
