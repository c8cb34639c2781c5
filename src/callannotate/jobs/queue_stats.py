"""Queue figures for ``GET /admin/queues`` and ``callannotate status``.

* the file queue (every executor keeps its jobs there): jobs waiting, oldest waiting age,
  waiting jobs per priority, jobs per state, and jobs finished in the last 5 minutes and the
  last hour;
* the light tasks (``data_dir/light/``: asynchronous enrollments and exports, callbacks), kept
  there by every executor: waiting (due now or waiting out a retry backoff), running, and the
  age of the oldest waiting, per kind;
* with ``jobs.executor: celery``, the Celery queues in Redis (``<prefix>.heavy``,
  ``<prefix>.light``): messages waiting per queue and per priority, the age of the oldest
  waiting job, and messages delivered but not acknowledged (running or reserved).

Cost: one listing per queue folder, one ``job.json`` read per waiting job, and one ``stat``
per finished job plus a read only of those whose folder changed within the hour (a job's
folder is renamed when it finishes, so an older folder cannot hold a job finished since).
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from callannotate.config import Settings
from callannotate.errors import CallAnnotateError
from callannotate.jobs.filequeue import (
    ARCHIVED,
    COMPLETED,
    FAILED,
    FOLDERS,
    INCOMING,
    JOB_FILE,
    STATE_OF_FOLDER,
    FileQueue,
    valid_job_id,
)
from callannotate.jobs.light import LightKind, LightState, LightStore
from callannotate.jobs.models import MAX_PRIORITY, JobState, utcnow

log = logging.getLogger(__name__)

WINDOWS_S = (300, 3600)  # completed/failed per 5 min and per hour
KOMBU_PRIORITY_SEP = "\x06\x16"  # kombu's Redis transport: <queue><sep><step> per priority


class FinishedWindow(BaseModel):
    window_s: int = Field(description="The last this many seconds.")
    completed: int
    failed: int = Field(description="Failed, not counting cancelled.")
    cancelled: int


class FileQueueStats(BaseModel):
    depth: int = Field(description="Jobs waiting for a worker (queued).")
    oldest_waiting_s: float | None = Field(
        description="Age of the oldest waiting job since it was submitted; null when none."
    )
    waiting_by_priority: dict[int, int] = Field(description="Waiting jobs per priority.")
    states: dict[str, int] = Field(
        description="Jobs per state folder: queued, running, completed, failed (includes "
        "cancelled), archived."
    )
    finished: list[FinishedWindow]


class LightKindStats(BaseModel):
    kind: str = Field(description="enroll, export or callback.")
    waiting: int = Field(description="Queued tasks due now.")
    delayed: int = Field(description="Queued tasks waiting out a retry backoff.")
    running: int = Field(description="Tasks a live process is running.")
    orphaned: int = Field(description="Running tasks whose process died (taken over next).")
    oldest_waiting_s: float | None = Field(
        description="Age of the oldest queued task since it was accepted; null when none."
    )


class BrokerQueueStats(BaseModel):
    name: str = Field(description="The Celery queue, <prefix>.heavy or <prefix>.light.")
    kind: str = Field(description="heavy or light.")
    depth: int = Field(description="Messages waiting in Redis.")
    by_priority: dict[int, int] = Field(description="Waiting messages per job priority.")
    oldest_waiting_s: float | None = Field(
        description="Age of the oldest waiting job of this queue; null when none."
    )


class BrokerStats(BaseModel):
    queues: list[BrokerQueueStats]
    unacked: int = Field(description="Messages delivered to workers, not acknowledged yet.")


def file_queue_stats(queue: FileQueue, now: datetime | None = None) -> FileQueueStats:
    now = now or utcnow()
    counts = queue.counts()
    waiting, _ = queue.list(states={JobState.QUEUED}, limit=1 << 30)
    by_priority: dict[int, int] = {}
    for job in waiting:
        by_priority[job.priority] = by_priority.get(job.priority, 0) + 1
    oldest = min((job.created_at for job in waiting), default=None)
    return FileQueueStats(
        depth=counts[INCOMING],
        oldest_waiting_s=round((now - oldest).total_seconds(), 3) if oldest else None,
        waiting_by_priority=dict(sorted(by_priority.items(), reverse=True)),
        states={STATE_OF_FOLDER[folder]: counts[folder] for folder in FOLDERS},
        finished=finished_windows(queue.root, now),
    )


def light_stats(store: LightStore, now: datetime | None = None) -> list[LightKindStats]:
    """Light tasks not finished, per kind (one ``task.json`` read per task in the folder;
    finished tasks are purged after a while, so the folder stays small)."""
    now = now or utcnow()
    rows = {kind: LightKindStats(kind=kind.value, waiting=0, delayed=0, running=0, orphaned=0,
                                 oldest_waiting_s=None) for kind in LightKind}  # fmt: skip
    for task, orphaned in store.unfinished():
        row = rows[task.kind]
        if task.state == LightState.RUNNING:
            if orphaned:
                row.orphaned += 1
            else:
                row.running += 1
            continue
        if task.due(now):
            row.waiting += 1
        else:
            row.delayed += 1
        age = round((now - task.created_at).total_seconds(), 3)
        row.oldest_waiting_s = max(row.oldest_waiting_s or 0.0, age)
    return list(rows.values())


def finished_windows(root: Path, now: datetime) -> list[FinishedWindow]:
    """Jobs completed, failed and cancelled within each of :data:`WINDOWS_S`."""
    horizon = now.timestamp() - max(WINDOWS_S)
    ages: list[tuple[float, str]] = []  # (seconds since finished, outcome)
    for folder in (COMPLETED, FAILED, ARCHIVED):
        try:
            entries = list(os.scandir(root / folder))
        except FileNotFoundError:
            continue
        for entry in entries:
            if not valid_job_id(entry.name):
                continue
            try:
                if entry.stat(follow_symlinks=False).st_ctime < horizon:
                    continue  # finished before the horizon: its folder has not moved since
                raw = json.loads((Path(entry.path) / JOB_FILE).read_bytes())
                finished = datetime.fromisoformat(str(raw["finished_at"]))
            except (OSError, ValueError, KeyError, TypeError):
                continue  # moved meanwhile, or unreadable
            outcome = _outcome(str(raw.get("state")), raw.get("error"))
            ages.append(((now - finished).total_seconds(), outcome))
    windows = []
    for window in WINDOWS_S:
        inside = [outcome for age, outcome in ages if age <= window]
        windows.append(
            FinishedWindow(
                window_s=window,
                completed=inside.count("completed"),
                failed=inside.count("failed"),
                cancelled=inside.count("cancelled"),
            )
        )
    return windows


def _outcome(state: str, error: object) -> str:
    if state == JobState.CANCELLED or error == "cancelled":
        return "cancelled"
    if state == JobState.COMPLETED or (state == JobState.ARCHIVED and not error):
        return "completed"
    return "failed"


def _job_id_of(message: bytes) -> str | None:
    """The job id (the task's only argument) of a kombu message as stored in Redis."""
    try:
        doc = json.loads(message)
        body: Any = doc["body"]
        if doc.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        job_id = str(args[0])
    except (ValueError, KeyError, IndexError, TypeError):
        return None
    return job_id if valid_job_id(job_id) else None


def broker_stats(settings: Settings, queue: FileQueue, now: datetime | None = None) -> BrokerStats:
    """The Celery queues in Redis (raises on a broker that cannot be reached)."""
    import redis

    from callannotate.jobs.executors.celery_app import PRIORITY_STEPS, heavy_queue, light_queue

    now = now or utcnow()
    prefix = f"{settings.jobs.queue_prefix}:"  # kombu's global_keyprefix (celery_app.py)
    client = redis.Redis.from_url(
        settings.jobs.broker_url, socket_timeout=3.0, socket_connect_timeout=3.0
    )
    try:
        out: list[BrokerQueueStats] = []
        for kind, name in (("heavy", heavy_queue(settings)), ("light", light_queue(settings))):
            keys = [
                prefix + (name if step == 0 else f"{name}{KOMBU_PRIORITY_SEP}{step}")
                for step in PRIORITY_STEPS
            ]
            pipe = client.pipeline(transaction=False)
            for key in keys:
                pipe.llen(key)
                pipe.lindex(key, -1)  # LPUSH in, BRPOP out: the tail waited longest
            replies = pipe.execute()
            by_priority: dict[int, int] = {}
            oldest: datetime | None = None
            for step, length, tail in zip(PRIORITY_STEPS, replies[::2], replies[1::2], strict=True):
                if not length:
                    continue
                by_priority[MAX_PRIORITY - step] = int(length)
                job_id = _job_id_of(tail) if tail else None
                if job_id is None:
                    continue
                with contextlib.suppress(CallAnnotateError):
                    created = queue.get(job_id).created_at
                    oldest = created if oldest is None else min(oldest, created)
            out.append(
                BrokerQueueStats(
                    name=name,
                    kind=kind,
                    depth=sum(by_priority.values()),
                    by_priority=dict(sorted(by_priority.items(), reverse=True)),
                    oldest_waiting_s=round((now - oldest).total_seconds(), 3) if oldest else None,
                )
            )
        unacked = int(client.hlen(prefix + "unacked"))
    finally:
        client.close()
    return BrokerStats(queues=out, unacked=unacked)
