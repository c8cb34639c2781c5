"""Dependency aliases every route uses (import these in your own routers).

``SettingsDep``, ``QueueDep``, ``ExecutorDep`` (what runs jobs: submit, cancel, workers and
readiness, whichever executor the app was built with) and ``CurrentPrincipal``, the single
place where the caller's identity comes from.

The providers are ``async def`` on purpose: FastAPI runs plain ``def`` dependencies in its
thread pool, which costs more than the work they do (this is the hot polling path). They
take an ``HTTPConnection`` so WebSocket routes can use them too.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends
from starlette.requests import HTTPConnection

from callannotate.config import Settings
from callannotate.errors import NotFound
from callannotate.jobs.executors.base import Executor
from callannotate.jobs.filequeue import FileQueue, valid_job_id
from callannotate.jobs.models import Job
from callannotate.security.principal import Principal, local_principal


async def get_settings(conn: HTTPConnection) -> Settings:
    settings: Settings = conn.app.state.settings
    return settings


async def get_queue(conn: HTTPConnection) -> FileQueue:
    queue: FileQueue = conn.app.state.queue
    return queue


async def get_executor(conn: HTTPConnection) -> Executor:
    executor: Executor = conn.app.state.executor
    return executor


async def get_current_principal() -> Principal:
    """The caller. A single local admin user until authentication lands (security issue)."""
    return local_principal()


SettingsDep = Annotated[Settings, Depends(get_settings)]
QueueDep = Annotated[FileQueue, Depends(get_queue)]
ExecutorDep = Annotated[Executor, Depends(get_executor)]
CurrentPrincipal = Annotated[Principal, Depends(get_current_principal)]


def visible_job(queue: FileQueue, job_id: str, principal: Principal) -> Job:
    """The job when it exists and ``principal`` may see it; 404 otherwise (no existence leak)."""
    if not valid_job_id(job_id):
        raise NotFound(f"job {job_id} not found")
    job = queue.get(job_id)
    if not principal.can_access(job.owner):
        raise NotFound(f"job {job_id} not found")
    return job
