"""Helpers shared by the queue tests (imported by conftest and the test modules)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from callannotate.jobs.filequeue import FileQueue
from callannotate.jobs.models import AudioMeta, Job
from callannotate.pipeline.types import AnnotateOptions

SHARED_DATA = Path(
    os.environ.get(
        "CALLANNOTATE_SHARED_DATA",
        Path(__file__).resolve().parents[2] / ".." / "shared" / "data",
    )
)
JFK = SHARED_DATA / "asr" / "en" / "jfk" / "jfk.flac"

MakeJob = Callable[..., Job]


def new_job(
    queue: FileQueue,
    *,
    owner: str = "local",
    data: bytes = b"not decoded by the queue",
    source: Path | None = None,
    options: AnnotateOptions | None = None,
    stored_as: str = "audio.wav",
    callback_url: str | None = None,
    priority: int = 5,
    before_visible: Callable[[Job], None] | None = None,
    caller: str | None = None,
    callee: str | None = None,
) -> Job:
    """Stage an upload the way the API does and submit it."""
    job_id = queue.new_job_id()
    staged = queue.staging_dir() / f"upload-{job_id}"
    if source is not None:
        staged.write_bytes(source.read_bytes())
    else:
        staged.write_bytes(data)
    meta = AudioMeta(
        filename=source.name if source is not None else "call.wav",
        stored_as=stored_as,
        size_bytes=staged.stat().st_size,
        format="wav",
        codec="pcm_s16le",
        sample_rate=16000,
        channels=1,
        duration=1.0,
    )
    job = Job(
        id=job_id,
        owner=owner,
        audio=meta,
        options=options or AnnotateOptions(),
        callback_url=callback_url,
        priority=priority,
        caller=caller,
        callee=callee,
    )
    return queue.submit(job, staged, before_visible=before_visible)
