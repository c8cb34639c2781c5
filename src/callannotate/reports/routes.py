"""Report routes: exports of a finished job, the report viewer page and the job's audio.

* ``GET /jobs/{id}/export?format=pdf``: the annotation in one of :data:`FORMATS`, as a
  download (``Content-Disposition: attachment``) with the format's content type. With
  ``?wait=false`` or ``Prefer: respond-async``: ``202`` and a status URL, the rendering runs
  as light work (:mod:`callannotate.reports.export_task`).
* ``GET /jobs/{id}/exports/{export_id}`` (status) and ``.../file`` (the rendered file).
* ``GET /jobs/{id}/report``: the interactive report page (player, transcript, timeline).
* ``POST /jobs/{id}/report-link``: a signed, short-lived link to the report page that a
  browser opens without an ``Authorization`` header (:mod:`callannotate.reports.links`).
* ``GET`` / ``HEAD /jobs/{id}/audio``: the job's stored audio; honours ``Range`` so players
  can seek.

The report page and the audio also take a signed link instead of a credential; no other
route does.
"""

from __future__ import annotations

import logging
import os
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import anyio
from fastapi import APIRouter, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse
from pydantic import BaseModel, Field
from starlette.responses import MalformedRangeHeader, RangeNotSatisfiable

from callannotate.api.deps import QueueDep, ReadPrincipal, SettingsDep, visible_job
from callannotate.api.encrypted_files import DecryptedFileResponse, plaintext_stat
from callannotate.api.errors import error_json, error_responses
from callannotate.api.prefer import wants_async
from callannotate.config import Settings
from callannotate.errors import BadRequest, Conflict, NotFound
from callannotate.jobs.filequeue import FileQueue
from callannotate.jobs.intake import AUDIO_TYPES, audio_type
from callannotate.jobs.light import LightState, light_store
from callannotate.jobs.models import Job
from callannotate.jobs.service import JobService
from callannotate.pipeline.types import Annotation
from callannotate.reports.export_task import (
    ExportStatus,
    check_has_result,
    export_path,
    export_task,
    load_annotation,
    request_export,
)
from callannotate.reports.exporters import FORMATS, ExportFormat, export_filename, get_format
from callannotate.reports.html import render_html
from callannotate.reports.links import (
    AUDIO,
    REPORT,
    AudioReader,
    ReportReader,
    link_expiry,
    reader_job,
    signed_path,
)
from callannotate.security.atrest import vault_for
from callannotate.security.principal import Principal

log = logging.getLogger(__name__)

router = APIRouter(prefix="/jobs", tags=["reports"], responses=error_responses(404))

_EXPORT_CONTENT: dict[str, Any] = {f.media_type.split(";")[0]: {} for f in FORMATS.values()}


def _requested_format(name: str) -> ExportFormat:
    """The export format ``name``; an unknown one is a 422 like every other bad parameter."""
    try:
        return get_format(name)
    except BadRequest:  # its message echoes the name; this one does not
        raise RequestValidationError(
            [
                {
                    "loc": ("query", "format"),
                    "msg": f"unknown export format; choose one of {', '.join(FORMATS)}",
                    "type": "enum",
                }
            ]
        ) from None


def _disposition(kind: str, filename: str) -> str:
    """``Content-Disposition`` for ``filename``, whatever it holds: an ASCII ``filename``
    fallback (letters, digits, space and ``._-()+`` kept, anything else ``_``: no quote,
    backslash, CR or LF can end the quoted string or the header) and the name as RFC 5987
    ``filename*`` (control characters as ``_``, every other byte percent-encoded, ``/``
    included)."""
    name = "".join(ch if ch.isprintable() else "_" for ch in filename)
    ascii_name = re.sub(r"[^A-Za-z0-9 ._()+-]", "_", name)
    return f"{kind}; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(name, safe='')}"


@router.get(
    "/{job_id}/export",
    summary="Export the annotation",
    description=(
        "Rendered in the request by default (200 with the file). With `?wait=false` or the "
        "header `Prefer: respond-async` the format and the job are checked, the answer is 202 "
        "with the export's status and its URL in `Location` "
        "(`GET /jobs/{job_id}/exports/{export_id}`), and the rendering runs as light work "
        "(the local light lane or the Celery `light` queue). A pending or completed export of "
        "the same job and format is reused."
    ),
    response_class=Response,
    responses={
        200: {"description": "The annotation in the requested format.", "content": _EXPORT_CONTENT},
        202: {"model": ExportStatus, "description": "Accepted: poll the status URL."},
        **error_responses(409),
    },
)
async def export_job(
    job_id: str,
    request: Request,
    queue: QueueDep,
    settings: SettingsDep,
    principal: ReadPrincipal,
    format: Annotated[
        str,
        Query(
            description="One of: " + ", ".join(FORMATS) + " (case-insensitive).",
            json_schema_extra={"enum": list(FORMATS)},
        ),
    ] = "json",
    wait: Annotated[
        bool, Query(description="false: answer 202 at once and render as light work")
    ] = True,
) -> Response:
    """409 while the job is not completed; 422 for an unknown format."""
    fmt = _requested_format(format)
    if wants_async(request, wait):
        return await _export_later(request, queue, settings, principal, job_id, fmt)

    def render() -> tuple[Annotation, bytes]:
        visible_job(queue, job_id, principal)
        annotation = load_annotation(queue, job_id)
        return annotation, fmt.render(annotation)

    annotation, body = await anyio.to_thread.run_sync(render)
    return Response(
        content=body,
        media_type=fmt.media_type,
        headers={
            "Content-Disposition": _disposition(
                "attachment", export_filename(annotation, fmt.name)
            ),
            "Cache-Control": "private, no-store",
        },
    )


async def _export_later(
    request: Request,
    queue: FileQueue,
    settings: Settings,
    principal: Principal,
    job_id: str,
    fmt: ExportFormat,
) -> Response:
    """Check the job (visible, has a result), store or reuse the export task, answer 202."""
    store = light_store(settings.data_dir)

    def accept() -> tuple[ExportStatus, bool]:
        job = visible_job(queue, job_id, principal)
        check_has_result(queue, job)
        task, created = request_export(queue, store, job, fmt)
        return ExportStatus.of(task), created

    status, created = await anyio.to_thread.run_sync(accept)
    if created:
        jobs: JobService = request.app.state.jobs
        await anyio.to_thread.run_sync(jobs.submit_light, status.id)
        log.info("export %s of job %s queued (%s)", status.id, job_id, fmt.name)
    return Response(
        status.model_dump_json(),
        status_code=202,
        media_type="application/json",
        headers={"Location": status.status_url, "Cache-Control": "private, no-store"},
    )


@router.get(
    "/{job_id}/exports/{export_id}",
    response_model=ExportStatus,
    summary="Status of an export accepted with 202",
)
async def get_export(
    job_id: str, export_id: str, queue: QueueDep, settings: SettingsDep, principal: ReadPrincipal
) -> ExportStatus:
    """Whoever may read the job may read its exports; 404 otherwise."""

    def status() -> ExportStatus:
        visible_job(queue, job_id, principal)
        return ExportStatus.of(export_task(light_store(settings.data_dir), job_id, export_id))

    return await anyio.to_thread.run_sync(status)


@router.get(
    "/{job_id}/exports/{export_id}/file",
    summary="The rendered file of a completed export",
    response_class=Response,
    responses={
        200: {"description": "The rendered export.", "content": _EXPORT_CONTENT},
        206: {"description": "Partial content (one or more byte ranges)."},
        **error_responses(400, 409, 416),
    },
)
async def export_file(
    job_id: str,
    export_id: str,
    request: Request,
    queue: QueueDep,
    settings: SettingsDep,
    principal: ReadPrincipal,
) -> Response:
    """As the synchronous export answers it (type, attachment, no-store); 409 until the
    export completed; decrypted as it is sent when encryption at rest is on."""
    vault = vault_for(settings)

    def locate() -> tuple[Path, str, str, os.stat_result]:
        visible_job(queue, job_id, principal)
        task = export_task(light_store(settings.data_dir), job_id, export_id)
        if task.state != LightState.COMPLETED or task.result is None:
            raise Conflict(f"export {export_id} is {task.state.value}; it has no file yet")
        fmt = get_format(str(task.params["format"]))
        path = export_path(queue, job_id, fmt)
        try:
            stat = plaintext_stat(vault, path)
        except FileNotFoundError:
            raise NotFound(f"export {export_id} has no stored file") from None
        return path, fmt.media_type, str(task.result["filename"]), stat

    path, media_type, filename, stat = await anyio.to_thread.run_sync(locate)
    response = DecryptedFileResponse(
        path,
        vault,
        media_type=media_type,
        stat_result=stat,
        headers={
            "Content-Disposition": _disposition("attachment", filename),
            "Cache-Control": "private, no-store",
        },  # nosniff and a sandboxing CSP: api/headers.py
    )
    return _range_error(request, response, stat.st_size, "the file") or response


class ReportLink(BaseModel):
    """A link to the report page that a browser opens without a credential."""

    url: str = Field(
        description="The report page, signed for this job: its path and query, after "
        "api.public_url when that is set (an absolute link to send on), else relative to the "
        "service's base URL; unsigned when authentication is off."
    )
    expires_at: datetime | None = Field(
        description="When the link stops working (UTC); null when authentication is off."
    )


@router.post(
    "/{job_id}/report-link",
    response_model=ReportLink,
    summary="A signed, short-lived link to the report viewer",
    description=(
        "For a browser, which sends no `Authorization` header when it opens a URL: the report "
        "page's path with a signature for this job and its owner, valid "
        "`auth.report_link_ttl_s` (15 min by default). It opens only `GET /jobs/{job_id}/report` "
        "(whose player gets a signed audio URL of its own), read-only, as the job's owner, "
        "and stops working when it expires, when the signing key is retired or the owner's "
        "account disabled. Treat it as a credential."
    ),
)
async def report_link(
    job_id: str,
    request: Request,
    response: Response,
    queue: QueueDep,
    settings: SettingsDep,
    principal: ReadPrincipal,
) -> ReportLink:
    """Owner or admin (404 otherwise); the job need not be completed yet."""
    job = await anyio.to_thread.run_sync(visible_job, queue, job_id, principal)
    path = str(request.url_for("report_page", job_id=job_id).path)
    response.headers["Cache-Control"] = "private, no-store"
    base = settings.api.public_url.rstrip("/")  # as the callbacks' links
    if not settings.auth.enabled:
        return ReportLink(url=base + path, expires_at=None)
    expires = link_expiry(settings)
    url = await signed_path(request, path, REPORT, job_id, job.owner, expires)
    return ReportLink(url=base + url, expires_at=datetime.fromtimestamp(expires, UTC))


@router.get(
    "/{job_id}/report",
    name="report_page",
    summary="Report viewer page",
    description=(
        "With authentication on, a browser opens it through a signed link from "
        "`POST /jobs/{job_id}/report-link` (query `exp`, `kid`, `sig`) instead of an "
        "`Authorization` header."
    ),
    response_class=HTMLResponse,
    responses=error_responses(409),
)
async def report_page(
    job_id: str,
    request: Request,
    queue: QueueDep,
    settings: SettingsDep,
    principal: ReportReader,
) -> HTMLResponse:
    """Audio player, clickable transcript, speaker timeline, analytics and sentiment."""

    def read() -> tuple[Job, Annotation]:
        job = reader_job(request, queue, job_id, principal)
        return job, load_annotation(queue, job_id)

    job, annotation = await anyio.to_thread.run_sync(read)
    audio_url: str | None = None  # the recording deleted (retention): no player
    if job.audio_deleted_at is None:
        audio_url = str(request.url_for("job_audio", job_id=job_id).path)
        if settings.auth.enabled:  # the page's player sends no header either
            audio_url = await signed_path(
                request, audio_url, AUDIO, job_id, job.owner, link_expiry(settings)
            )
    page = await anyio.to_thread.run_sync(lambda: render_html(annotation, audio_url=audio_url))
    return HTMLResponse(
        page,
        headers={"Cache-Control": "private, no-store"},  # CSP: api/headers.py
    )


def _range_error(
    request: Request, response: FileResponse, size: int, what: str = "the audio"
) -> Response | None:
    """The JSON error for a ``Range`` the file response would refuse (400 / 416), else None.

    Starlette answers these in plain text; the API's errors all carry the error body.
    """
    http_range = request.headers.get("range")
    if_range = request.headers.get("if-range")
    if http_range is None or (if_range is not None and not response._should_use_range(if_range)):
        return None
    try:
        FileResponse._parse_range_header(http_range, size)
    except MalformedRangeHeader as exc:
        return error_json(400, "bad_range", f"invalid Range header: {exc.content}")
    except RangeNotSatisfiable:
        return error_json(
            416,
            "range_not_satisfiable",
            f"the Range starts past the end of {what} ({size} bytes)",
            headers={"Content-Range": f"bytes */{size}"},
        )
    return None


_AUDIO_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The audio, typed from what it decodes as (never the upload's name).",
        "content": {media: {} for media in sorted({t for _, t in AUDIO_TYPES.values()})},
    },
    206: {"description": "Partial content (one or more byte ranges)."},
    **error_responses(400, 416),
}
_AUDIO_LINK_DOC = (
    "The report page's player reaches it through a signed link (query `exp`, `kid`, `sig`) "
    "when authentication is on."
)


@router.head(
    "/{job_id}/audio",
    name="job_audio_head",
    summary="The job's audio: headers only",
    description="As `GET`, without the body. " + _AUDIO_LINK_DOC,
    response_class=FileResponse,
    responses=_AUDIO_RESPONSES,
)
@router.get(
    "/{job_id}/audio",
    name="job_audio",
    summary="The job's audio (supports Range requests)",
    description=_AUDIO_LINK_DOC,
    response_class=FileResponse,
    responses=_AUDIO_RESPONSES,
)
async def job_audio(
    job_id: str,
    request: Request,
    queue: QueueDep,
    principal: AudioReader,
    settings: SettingsDep,
) -> Response:
    """Served inline with ``nosniff`` and a sandboxing CSP, so a file that is also HTML
    (audio with a page appended) can never run as a page on the service's origin.

    The stored file is encrypted at rest: it is decrypted as it is sent, chunk by chunk, and
    a ``Range`` request decrypts only the chunks it covers."""
    path = queue.audio_path(job_id)
    vault = vault_for(settings)

    def locate() -> tuple[Job, os.stat_result]:
        job = reader_job(request, queue, job_id, principal)
        try:
            return job, plaintext_stat(vault, path)
        except FileNotFoundError as exc:
            if job.audio_deleted_at is not None:
                raise NotFound(
                    f"the recording of job {job_id} was deleted at "
                    f"{job.audio_deleted_at:%Y-%m-%d %H:%M} UTC (queue.audio_retention_hours)"
                ) from exc
            raise NotFound(f"job {job_id} has no stored audio") from exc

    job, stat = await anyio.to_thread.run_sync(locate)
    ext, media_type = audio_type(job.audio.format)
    stem = Path(job.audio.filename or "audio").stem or "audio"
    response = DecryptedFileResponse(
        path,
        vault,
        media_type=media_type,
        stat_result=stat,
        headers={
            "Content-Disposition": _disposition("inline", f"{stem}.{ext}"),
            "Cache-Control": "private, max-age=3600",
        },  # nosniff and a sandboxing CSP: api/headers.py
    )
    return _range_error(request, response, stat.st_size) or response
