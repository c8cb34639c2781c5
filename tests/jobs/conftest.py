"""Fixtures for the queue tests: a queue in a tmp folder and a job factory."""

from __future__ import annotations

from pathlib import Path

import pytest
from queue_testing import MakeJob, new_job

from callannotate.config import QueueSettings
from callannotate.jobs.filequeue import FileQueue
from callannotate.jobs.models import Job


@pytest.fixture
def queue(tmp_path: Path) -> FileQueue:
    # no retry backoff: a job failed with retry=True is claimable at once (test_retry_delay.py
    # covers the backoff)
    settings = QueueSettings(max_attempts=3, retention_hours=1.0, retry_backoff_s=0.0)
    return FileQueue(tmp_path / "queue", settings)


@pytest.fixture
def make_job(queue: FileQueue) -> MakeJob:
    def factory(**kwargs: object) -> Job:
        return new_job(queue, **kwargs)  # type: ignore[arg-type]

    return factory
