"""Report routes: exports of a finished job, the report viewer page and the job's audio.

* ``GET /jobs/{id}/export?format=pdf``: the annotation in one of :data:`FORMATS`, as a
  download (``Content-Disposition: attachment``) with the format's content type.
* ``GET /jobs/{id}/report``: the interactive report page (player, transcript, timeline).
* ``GET /jobs/{id}/audio``: the job's stored audio; honours ``Range`` so players can seek.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated
from urllib.parse import quote

import anyio
from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import FileResponse, HTMLResponse
from pydantic import ValidationError
from starlette.responses import MalformedRangeHeader, RangeNotSatisfiable

from callannotate.api.deps import QueueDep, ReadPrincipal, SettingsDep, visible_job
from callannotate.api.encrypted_files import DecryptedFileResponse, plaintext_stat
from callannotate.api.errors import error_json, error_responses
from callannotate.errors import NotFound, Unprocessable
from callannotate.jobs.filequeue import FileQueue
from callannotate.jobs.intake import AUDIO_TYPES, audio_type
from callannotate.pipeline.types import Annotation
from callannotate.reports.exporters import FORMATS, export_filename, get_format
from callannotate.reports.html import render_html
from callannotate.security.atrest import vault_for

log = logging.getLogger(__name__)

router = APIRouter(prefix="/jobs", tags=["reports"], responses=error_responses(404))


def load_annotation(queue: FileQueue, job_id: str) -> Annotation:
    """The stored result of a completed job (409 while it has none)."""
    raw = queue.read_result(job_id)
    try:
        return Annotation.model_validate_json(raw)
    except ValidationError as exc:
        log.error("stored annotation does not validate", extra={"job_id": job_id})
        raise Unprocessable(f"job {job_id} result is not a valid annotation") from exc


def _disposition(kind: str, filename: str) -> str:
    ascii_name = filename.encode("ascii", "replace").decode().replace("?", "_").replace('"', "_")
    return f"{kind}; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename)}"


@router.get(
    "/{job_id}/export",
    summary="Export the annotation",
    response_class=Response,
    responses={
        200: {
            "description": "The annotation in the requested format.",
            "content": {f.media_type.split(";")[0]: {} for f in FORMATS.values()},
        },
        **error_responses(400, 409),
    },
)
async def export_job(
    job_id: str,
    queue: QueueDep,
    principal: ReadPrincipal,
    format: Annotated[
        str,
        Query(
            description="One of: " + ", ".join(FORMATS) + " (case-insensitive).",
            json_schema_extra={"enum": list(FORMATS)},
        ),
    ] = "json",
) -> Response:
    """409 while the job is not completed; 400 for an unknown format."""
    fmt = get_format(format)
    visible_job(queue, job_id, principal)
    annotation = load_annotation(queue, job_id)
    body = await anyio.to_thread.run_sync(fmt.render, annotation)
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


@router.get(
    "/{job_id}/report",
    summary="Report viewer page",
    response_class=HTMLResponse,
    responses=error_responses(409),
)
async def report_page(
    job_id: str, request: Request, queue: QueueDep, principal: ReadPrincipal
) -> HTMLResponse:
    """Audio player, clickable transcript, speaker timeline, analytics and sentiment."""
    visible_job(queue, job_id, principal)
    annotation = load_annotation(queue, job_id)
    audio_url = str(request.url_for("job_audio", job_id=job_id).path)
    page = await anyio.to_thread.run_sync(lambda: render_html(annotation, audio_url=audio_url))
    return HTMLResponse(
        page,
        headers={"Cache-Control": "private, no-store"},  # CSP: api/headers.py
    )


def _range_error(request: Request, response: FileResponse, size: int) -> Response | None:
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
            f"the Range starts past the end of the audio ({size} bytes)",
            headers={"Content-Range": f"bytes */{size}"},
        )
    return None


@router.get(
    "/{job_id}/audio",
    name="job_audio",
    summary="The job's audio (supports Range requests)",
    response_class=FileResponse,
    responses={
        200: {
            "description": "The audio, typed from what it decodes as (never the upload's name).",
            "content": {media: {} for media in sorted({t for _, t in AUDIO_TYPES.values()})},
        },
        206: {"description": "Partial content (one or more byte ranges)."},
        **error_responses(400, 416),
    },
)
async def job_audio(
    job_id: str,
    request: Request,
    queue: QueueDep,
    principal: ReadPrincipal,
    settings: SettingsDep,
) -> Response:
    """Served inline with ``nosniff`` and a sandboxing CSP, so a file that is also HTML
    (audio with a page appended) can never run as a page on the service's origin.

    The stored file is encrypted at rest: it is decrypted as it is sent, chunk by chunk, and
    a ``Range`` request decrypts only the chunks it covers."""
    job = visible_job(queue, job_id, principal)
    path = queue.audio_path(job_id)
    vault = vault_for(settings)
    try:
        stat = await anyio.to_thread.run_sync(plaintext_stat, vault, path)
    except FileNotFoundError as exc:
        raise NotFound(f"job {job_id} has no stored audio") from exc
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
