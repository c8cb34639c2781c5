"""The queue's retention policy, applied every few minutes by whatever runs the queue.

Three settings of ``queue`` decide what happens to a finished job (completed, failed or
cancelled) as it ages:

* ``retention_hours``: it moves from ``completed/`` / ``failed/`` to ``archived/``;
* ``audio_retention_hours`` (unset: never): its recording is deleted, the annotation stays;
* ``job_retention_hours`` (unset: never): the job is deleted with all its files.

The local executor's :class:`~callannotate.jobs.manager.QueueManager` and the API's Celery
executor both call :func:`apply_retention` every :data:`RETENTION_INTERVAL_S`; several
processes on one queue folder may do so at once (each change is made under the queue lock,
on a record read again under it).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime

from callannotate.config import QueueSettings
from callannotate.jobs.filequeue import FileQueue
from callannotate.jobs.models import utcnow

log = logging.getLogger(__name__)

#: Seconds between two passes of the retention policy.
RETENTION_INTERVAL_S = 300.0


@dataclass(slots=True)
class RetentionPass:
    """What one pass changed (job ids)."""

    archived: list[str] = field(default_factory=list)
    audio_deleted: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)


def apply_retention(
    queue: FileQueue, settings: QueueSettings, now: datetime | None = None
) -> RetentionPass:
    """Delete what has outlived its retention, then archive the jobs past theirs."""
    now = now or utcnow()
    done = RetentionPass()
    if settings.job_retention_hours is not None:
        done.deleted = queue.expire_jobs(settings.job_retention_hours, now)
    if settings.audio_retention_hours is not None:
        done.audio_deleted = queue.expire_audio(settings.audio_retention_hours, now)
    done.archived = queue.archive_expired(now)
    return done


def safe_retention_pass(queue: FileQueue, settings: QueueSettings) -> None:
    """:func:`apply_retention` for a service loop: an error is logged, never raised."""
    try:
        apply_retention(queue, settings)
    except Exception:
        log.exception("applying the queue's retention policy failed")
