"""Report routes: exports of a finished job, the report viewer page and the job's audio.

* ``GET /jobs/{id}/export?format=pdf``: the annotation in one of :data:`FORMATS`, as a
  download (``Content-Disposition: attachment``) with the format's content type.
* ``GET /jobs/{id}/report``: the interactive report page (player, transcript, timeline).
* ``GET /jobs/{id}/audio``: the job's stored audio; honours ``Range`` so players can seek.
"""

from __future__ import annotations

import logging
import mimetypes
from typing import Annotated
from urllib.parse import quote

import anyio
from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import FileResponse, HTMLResponse
from pydantic import ValidationError

from callannotate.api.deps import CurrentPrincipal, QueueDep, visible_job
from callannotate.api.errors import error_responses
from callannotate.errors import NotFound, Unprocessable
from callannotate.jobs.filequeue import FileQueue
from callannotate.pipeline.types import Annotation
from callannotate.reports.exporters import FORMATS, export_filename, get_format
from callannotate.reports.html import render_html

log = logging.getLogger(__name__)

router = APIRouter(prefix="/jobs", tags=["reports"], responses=error_responses(404))

_AUDIO_TYPES = {
    ".wav": "audio/wav",
    ".flac": "audio/flac",
    ".mp3": "audio/mpeg",
    ".ogg": "audio/ogg",
    ".oga": "audio/ogg",
    ".opus": "audio/ogg",
    ".m4a": "audio/mp4",
    ".mp4": "audio/mp4",
    ".aac": "audio/aac",
    ".webm": "audio/webm",
    ".amr": "audio/amr",
}


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
    principal: CurrentPrincipal,
    format: Annotated[str, Query(description="One of: " + ", ".join(FORMATS))] = "json",
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
    job_id: str, request: Request, queue: QueueDep, principal: CurrentPrincipal
) -> HTMLResponse:
    """Audio player, clickable transcript, speaker timeline, analytics and sentiment."""
    visible_job(queue, job_id, principal)
    annotation = load_annotation(queue, job_id)
    audio_url = str(request.url_for("job_audio", job_id=job_id).path)
    page = await anyio.to_thread.run_sync(lambda: render_html(annotation, audio_url=audio_url))
    return HTMLResponse(
        page,
        headers={
            "Cache-Control": "private, no-store",
            "Content-Security-Policy": (
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                "img-src 'self' data:; media-src 'self'"
            ),
        },
    )


@router.get(
    "/{job_id}/audio",
    name="job_audio",
    summary="The job's audio (supports Range requests)",
    response_class=FileResponse,
    responses={200: {"content": {"audio/*": {}}}, 206: {"description": "Partial content."}},
)
async def job_audio(job_id: str, queue: QueueDep, principal: CurrentPrincipal) -> Response:
    job = visible_job(queue, job_id, principal)
    path = queue.audio_path(job_id)
    if not path.is_file():
        raise NotFound(f"job {job_id} has no stored audio")
    media_type = _AUDIO_TYPES.get(path.suffix.lower()) or (
        mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    )
    return FileResponse(
        path,
        media_type=media_type,
        headers={
            "Content-Disposition": _disposition("inline", job.audio.filename or path.name),
            "Cache-Control": "private, max-age=3600",
        },
    )
