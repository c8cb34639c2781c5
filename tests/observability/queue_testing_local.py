"""A queued-then-claimed job on a real file queue (observability tests)."""

from __future__ import annotations

from pathlib import Path

from callannotate.jobs.filequeue import FileQueue
from callannotate.jobs.models import AudioMeta, Job


def submit_and_claim(queue: FileQueue) -> Path:
    """Submit one job, claim it; returns its folder in processing."""
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
    queue.submit(Job(id=job_id, owner="u1", audio=meta), staged)
    claimed = queue.claim("host:1:w0")
    assert claimed is not None and claimed.id == job_id
    return queue.job_dir(job_id)
