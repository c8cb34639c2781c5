"""Exports as light work: ``GET /jobs/{id}/export?format=pdf&wait=false`` answered ``202``.

The route checks what needs no rendering (format, the job visible to the caller, the job
completed) and stores a light task (kind ``export``, see :mod:`callannotate.jobs.light`)
naming the job and the format; :func:`run_export` then renders the stored annotation, as the
synchronous route does inside the request, on the local light lane or a Celery worker of the
``light`` queue, and writes the file into the **job's folder** as ``export.<extension>``
(mode 0600, encrypted when encryption at rest is on, through the same :class:`Vault` as the
recording), so it is removed with the job and covered by ``encrypt-existing`` and key
rotation like the job's other files. ``GET /jobs/{id}/exports/{export_id}`` shows the task's
state; once completed, ``.../file`` serves the file.

Reuse: the job folder also holds ``.export.<format>.task`` with the id of the last task asked
for that format. A new request for the same job and format gets that task back while it is
queued or running, or completed with its file still there; a failed one (or one deleted after
``queue.retention_hours``) is replaced by a new task. Two requests at the same instant may
both create a task: both render the same annotation and the file is replaced atomically, so
either download is right.
"""

from __future__ import annotations

import contextlib
import logging
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from callannotate.config import Settings
from callannotate.errors import Conflict, NotFound, Unprocessable
from callannotate.jobs.filequeue import RESULT_FILE, FileQueue
from callannotate.jobs.fsutil import atomic_write
from callannotate.jobs.light import Claim, LightKind, LightState, LightStore, LightTask
from callannotate.jobs.models import Job, JobState
from callannotate.pipeline.types import Annotation
from callannotate.reports.exporters import ExportFormat, export_filename, get_format
from callannotate.security.atrest import vault_for

log = logging.getLogger(__name__)

EXPORT_PREFIX = "export."
_MARKER = ".export.{name}.task"


def load_annotation(queue: FileQueue, job_id: str) -> Annotation:
    """The stored result of a completed job (409 while it has none)."""
    raw = queue.read_result(job_id)
    try:
        return Annotation.model_validate_json(raw)
    except ValidationError as exc:
        log.error("stored annotation does not validate", extra={"job_id": job_id})
        raise Unprocessable(f"job {job_id} result is not a valid annotation") from exc


def stored_name(fmt: ExportFormat) -> str:
    """The rendered file's name in the job folder (one per format)."""
    return f"{EXPORT_PREFIX}{fmt.extension}"


def check_has_result(queue: FileQueue, job: Job) -> None:
    """409 unless ``job`` has a result to export (as :meth:`FileQueue.read_result` says),
    without reading it."""
    archived_without = (
        job.state == JobState.ARCHIVED and not (queue.job_dir(job.id) / RESULT_FILE).is_file()
    )
    if job.state not in (JobState.COMPLETED, JobState.ARCHIVED) or archived_without:
        raise Conflict(f"job {job.id} is {job.state.value}; it has no result")


def _reusable(queue: FileQueue, store: LightStore, job: Job, fmt: ExportFormat) -> LightTask | None:
    try:
        marker = queue.job_dir(job.id) / _MARKER.format(name=fmt.name)
        task = store.get(marker.read_text(encoding="ascii").strip())
    except (OSError, NotFound, ValueError):
        return None
    if task.kind != LightKind.EXPORT or task.params != {"job_id": job.id, "format": fmt.name}:
        return None
    if task.state in (LightState.QUEUED, LightState.RUNNING):
        return task
    if task.state == LightState.COMPLETED and (queue.job_dir(job.id) / stored_name(fmt)).is_file():
        return task
    return None


def request_export(
    queue: FileQueue, store: LightStore, job: Job, fmt: ExportFormat
) -> tuple[LightTask, bool]:
    """The export task of ``job`` (checked visible and finished) as ``fmt``: a pending or
    completed one reused, or a new queued one stored durably. Returns ``(task, created)``."""
    reused = _reusable(queue, store, job, fmt)
    if reused is not None:
        return reused, False
    task = store.create(LightKind.EXPORT, {"job_id": job.id, "format": fmt.name}, owner=job.owner)
    with contextlib.suppress(OSError, NotFound):  # reuse is an optimisation only
        atomic_write(queue.job_dir(job.id) / _MARKER.format(name=fmt.name), task.id.encode())
    return task, True


def export_path(queue: FileQueue, job_id: str, fmt: ExportFormat) -> Path:
    return queue.job_dir(job_id) / stored_name(fmt)


def run_export(settings: Settings, claim: Claim) -> dict[str, Any]:
    """Render the job's annotation and store it in the job folder; returns the task result.

    Raises the domain errors of the synchronous route (``NotFound`` once the job was
    deleted, ``Conflict`` ...); the caller records them in the task.
    """
    params = claim.task.params
    job_id, fmt = str(params["job_id"]), get_format(str(params["format"]))
    vault = vault_for(settings)
    queue = FileQueue(settings.queue_dir, settings.queue, vault)
    annotation = load_annotation(queue, job_id)
    body = fmt.render(annotation)
    for attempt in range(3):  # the folder moves when the job is archived meanwhile
        try:
            vault.write_bytes(export_path(queue, job_id, fmt), body, mode=0o600)
            break
        except FileNotFoundError:
            if attempt == 2:
                raise NotFound(f"job {job_id} not found") from None
    return {
        "filename": export_filename(annotation, fmt.name),
        "size": len(body),
        "media_type": fmt.media_type,
    }


class ExportError(BaseModel):
    model_config = ConfigDict(extra="forbid")

    error: str = Field(description="Error code, as the synchronous route would answer it.")
    detail: str
    status_code: int | None = Field(None, description="Status the synchronous route gives.")


class ExportStatus(BaseModel):
    """``GET /jobs/{job_id}/exports/{export_id}``: an export accepted with ``202``."""

    model_config = ConfigDict(extra="forbid")

    id: str
    job_id: str
    format: str
    state: Literal["queued", "running", "completed", "failed"]
    attempts: int
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    status_url: str
    download_url: str | None = Field(None, description="The rendered file, once completed.")
    filename: str | None = Field(None, description="Download file name, once completed.")
    size: int | None = Field(None, description="Bytes of the rendered file, once completed.")
    media_type: str | None = None
    error: ExportError | None = Field(None, description="Why it failed.")

    @classmethod
    def of(cls, task: LightTask) -> ExportStatus:
        job_id = str(task.params.get("job_id", ""))
        status_url = f"/jobs/{job_id}/exports/{task.id}"
        result = task.result if task.state == LightState.COMPLETED else None
        error = None
        if task.state == LightState.FAILED:
            error = ExportError(
                error=task.error_code or "internal_error",
                detail=task.error or "",
                status_code=task.status_code,
            )
        return cls(
            id=task.id,
            job_id=job_id,
            format=str(task.params.get("format", "")),
            state=task.state.value,
            attempts=task.attempts,
            created_at=task.created_at,
            started_at=task.started_at,
            finished_at=task.finished_at,
            status_url=status_url,
            download_url=f"{status_url}/file" if result is not None else None,
            filename=None if result is None else str(result["filename"]),
            size=None if result is None else int(result["size"]),
            media_type=None if result is None else str(result["media_type"]),
            error=error,
        )


def export_task(store: LightStore, job_id: str, export_id: str) -> LightTask:
    """The export task ``export_id`` of job ``job_id`` (404 for anything else)."""
    try:
        task = store.get(export_id)
    except NotFound:
        raise NotFound(f"export {export_id} not found") from None
    if task.kind != LightKind.EXPORT or task.params.get("job_id") != job_id:
        raise NotFound(f"export {export_id} not found")
    return task
