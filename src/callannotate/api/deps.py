"""Dependency aliases every route uses (import these in your own routers).

``SettingsDep``, ``QueueDep``, ``ManagerDep`` (``None`` when the app runs without embedded
workers) and ``CurrentPrincipal``, the single place where the caller's identity comes from.

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
from callannotate.jobs.filequeue import FileQueue, valid_job_id
from callannotate.jobs.manager import QueueManager
from callannotate.jobs.models import Job
from callannotate.security.principal import Principal, local_principal


async def get_settings(conn: HTTPConnection) -> Settings:
    settings: Settings = conn.app.state.settings
    return settings


async def get_queue(conn: HTTPConnection) -> FileQueue:
    queue: FileQueue = conn.app.state.queue
    return queue


async def get_manager(conn: HTTPConnection) -> QueueManager | None:
    manager: QueueManager | None = conn.app.state.manager
    return manager


async def get_current_principal() -> Principal:
    """The caller. A single local admin user until authentication lands (security issue)."""
    return local_principal()


SettingsDep = Annotated[Settings, Depends(get_settings)]
QueueDep = Annotated[FileQueue, Depends(get_queue)]
ManagerDep = Annotated[QueueManager | None, Depends(get_manager)]
CurrentPrincipal = Annotated[Principal, Depends(get_current_principal)]


def visible_job(queue: FileQueue, job_id: str, principal: Principal) -> Job:
    """The job when it exists and ``principal`` may see it; 404 otherwise (no existence leak)."""
    if not valid_job_id(job_id):
        raise NotFound(f"job {job_id} not found")
    job = queue.get(job_id)
    if not principal.can_access(job.owner):
        raise NotFound(f"job {job_id} not found")
    return job
