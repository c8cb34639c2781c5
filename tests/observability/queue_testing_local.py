"""Queued and claimed jobs on a real file queue (observability tests)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from callannotate.jobs.filequeue import FileQueue
from callannotate.jobs.models import AudioMeta, Job


def submit(queue: FileQueue, created_at: float | None = None) -> Job:
    """Submit one job (``created_at``: an older submission, as a Unix time)."""
    job_id = queue.new_job_id()
    staged = queue.staging_dir() / f"upload-{job_id}"
    staged.write_bytes(b"RIFF")
    meta = AudioMeta(
        filename="call.wav",
        stored_as="audio.wav",
        size_bytes=4,
        format="wav",
        codec="pcm_s16le",
        sample_rate=16000,
        channels=1,
        duration=1.0,
    )
    job = queue.submit(Job(id=job_id, owner="u1", audio=meta), staged)
    if created_at is not None:  # an older submission: rewrite the record's created_at
        path = queue.job_dir(job.id) / "job.json"
        doc = json.loads(path.read_text())
        doc["created_at"] = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(created_at))
        path.write_text(json.dumps(doc))
    return job


def submit_and_claim(queue: FileQueue) -> Path:
    """Submit one job, claim it; returns its folder in processing."""
    job_id = submit(queue).id
    claimed = queue.claim("host:1:w0")
    assert claimed is not None and claimed.id == job_id
    return queue.job_dir(job_id)
