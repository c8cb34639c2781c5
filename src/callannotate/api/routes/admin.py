"""Admin monitoring: the worker processes (heartbeat registry) and the queues.

``GET /admin/workers``: every worker process of every executor that wrote a heartbeat in
``data_dir/workers/`` (:mod:`callannotate.jobs.heartbeat`), with ``lost`` set when its
heartbeat is older than ``jobs.worker_lost_after_s``. ``GET /admin/queues``: the file queue
and, with ``jobs.executor: celery``, the Celery queues in Redis
(:mod:`callannotate.jobs.queue_stats`). Both are what ``callannotate status`` prints.
"""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter
from pydantic import BaseModel, Field

from callannotate.api.deps import AdminPrincipal, QueueDep, SettingsDep
from callannotate.jobs.heartbeat import WorkerRegistry, WorkerStatus
from callannotate.jobs.light import light_store
from callannotate.jobs.models import utcnow
from callannotate.jobs.queue_stats import (
    BrokerStats,
    FileQueueStats,
    LightKindStats,
    broker_stats,
    file_queue_stats,
    light_stats,
)

router = APIRouter(prefix="/admin", tags=["admin"])


class WorkersBody(BaseModel):
    checked_at: datetime
    executor: str = Field(description="jobs.executor of this API: local or celery.")
    heartbeat_interval_s: float
    lost_after_s: float = Field(description="jobs.worker_lost_after_s.")
    alive: int = Field(description="Workers whose heartbeat is recent.")
    lost: int = Field(description="Workers whose heartbeat is older than lost_after_s.")
    workers: list[WorkerStatus]


class QueuesBody(BaseModel):
    checked_at: datetime
    executor: str
    queue: FileQueueStats = Field(description="The file queue (every executor keeps jobs there).")
    light: list[LightKindStats] = Field(
        description="Light tasks (asynchronous enrollments and exports, callback deliveries) "
        "not finished, per kind; every executor keeps them in the data folder."
    )
    broker: BrokerStats | None = Field(
        None, description="The Celery queues in Redis (executor celery only)."
    )
    broker_error: str | None = Field(None, description="Why the broker could not be read.")


@router.get("/workers", response_model=WorkersBody, summary="Worker processes and heartbeats")
def list_workers(settings: SettingsDep, principal: AdminPrincipal) -> WorkersBody:
    """Every worker process that wrote a heartbeat: host, pid, executor, concurrency, jobs
    running, models loaded, memory, start time and last heartbeat. Records of workers lost
    for longer than ``jobs.worker_forget_after_s`` are deleted here."""
    now = utcnow()
    workers = WorkerRegistry.from_settings(settings).snapshot(now)
    lost = sum(1 for w in workers if w.lost)
    return WorkersBody(
        checked_at=now,
        executor=settings.jobs.executor,
        heartbeat_interval_s=settings.jobs.heartbeat_interval_s,
        lost_after_s=settings.jobs.worker_lost_after_s,
        alive=len(workers) - lost,
        lost=lost,
        workers=workers,
    )


@router.get("/queues", response_model=QueuesBody, summary="Queue depths, ages and throughput")
def list_queues(settings: SettingsDep, queue: QueueDep, principal: AdminPrincipal) -> QueuesBody:
    """Jobs waiting (per priority), the oldest waiting age, jobs per state and jobs finished
    in the last 5 minutes and hour; with executor ``celery`` also the heavy and light queues
    in Redis. A broker that cannot be read is reported in ``broker_error``, not as a 5xx."""
    now = utcnow()
    body = QueuesBody(
        checked_at=now,
        executor=settings.jobs.executor,
        queue=file_queue_stats(queue, now),
        light=light_stats(light_store(settings.data_dir), now),
    )
    if settings.jobs.executor == "celery":
        try:
            body.broker = broker_stats(settings, queue, now)
        except Exception as exc:  # redis errors, timeouts: the rest of the answer stands
            body.broker_error = f"{type(exc).__name__}: {exc}"
    return body
