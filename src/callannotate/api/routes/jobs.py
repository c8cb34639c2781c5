"""Jobs: upload a recording, follow it, fetch its annotation, cancel, delete, retry."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from functools import partial
from typing import Annotated, Any, get_origin

import anyio
from fastapi import APIRouter, FastAPI, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from callannotate.api.deps import (
    ExecutorDep,
    QueueDep,
    ReadPrincipal,
    SettingsDep,
    WritePrincipal,
    visible_job,
)
from callannotate.api.errors import error_responses
from callannotate.api.schemas import JobPage
from callannotate.api.uploads import FILE_FIELD, StagedUpload, discard_upload, receive_upload
from callannotate.api.ws import announce_queued_before_visible
from callannotate.errors import InvalidAudio, NotFound, Unprocessable
from callannotate.jobs.callback_targets import check_callback_url
from callannotate.jobs.filequeue import FileQueue, valid_job_id
from callannotate.jobs.intake import new_job
from callannotate.jobs.job_index import CallFilter
from callannotate.jobs.models import (
    DEFAULT_PRIORITY,
    MAX_PRIORITY,
    MIN_PRIORITY,
    Job,
    JobState,
)
from callannotate.jobs.speaker_contacts import call_numbers, normalize_number
from callannotate.observability.logging import job_context
from callannotate.pipeline.types import REQUEST_CONTEXT, AnnotateOptions, validation_detail
from callannotate.security.atrest import vault_for
from callannotate.security.principal import Principal

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/jobs", tags=["jobs"], responses=error_responses(404))

# Every AnnotateOptions field is a form field (lists comma-separated), plus callback_url.
OPTION_FIELDS: tuple[str, ...] = tuple(AnnotateOptions.model_fields)
LIST_FIELDS = frozenset(
    name
    for name, info in AnnotateOptions.model_fields.items()
    if get_origin(info.annotation) is list
)
FORM_FIELDS = (*OPTION_FIELDS, "callback_url", "caller", "callee", "priority")
MAX_CALLBACK_URL = 2048


def _form_property(prop: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """One option's JSON Schema as a multipart form field (strings, lists comma-separated)."""
    out = {k: v for k, v in prop.items() if k not in ("title", "anyOf", "$ref", "items")}
    if "$ref" in prop:
        out = {**defs[prop["$ref"].rsplit("/", 1)[-1]], **out}
    for variant in prop.get("anyOf", ()):
        if variant.get("type") != "null":
            out = {**_form_property(variant, defs), **out}
    if prop.get("type") == "array":
        item = _form_property(prop.get("items", {}), defs)
        choices = ", ".join(str(v) for v in item.get("enum", ()))
        out["type"] = "string"
        out["description"] = (
            "Comma-separated"
            + (f"; any of: {choices}" if choices else "")
            + "; omit for the default"
        )
        out.pop("default", None)
        out.pop("minItems", None)  # a string here; "at least one" is in the pattern
    out.pop("title", None)
    if out.get("default", "") is None:
        del out["default"]  # omitted means unset
    return out


def _upload_schema() -> dict[str, Any]:
    schema = AnnotateOptions.model_json_schema()
    defs = schema.get("$defs", {})
    properties: dict[str, Any] = {
        FILE_FIELD: {
            "type": "string",
            "format": "binary",
            "description": "The recording (wav, flac, mp3, ogg/opus, m4a/aac, amr, webm, ...). "
            "Checked by decoding, not by extension.",
        }
    }
    for name, prop in schema["properties"].items():
        properties[name] = _form_property(prop, defs)
    properties["num_speakers"]["description"] = (
        "The exact number of speakers. Excludes min_speakers and max_speakers (422 when "
        "given together)."
    )
    for bound in ("min_speakers", "max_speakers"):
        properties[bound]["description"] = (
            f"{bound.split('_')[0].capitalize()}imum number of speakers; not with num_speakers "
            "(min_speakers <= max_speakers)."
        )
    properties["steps"]["pattern"] = r"[A-Za-z]"  # at least one step: `,,,` is refused
    properties["callback_url"] = {
        "type": "string",
        "format": "uri",
        "description": "http(s) URL called when the job finishes.",
    }
    for role, who in (("caller", "calling"), ("callee", "called")):
        properties[role] = {
            "type": "string",
            "maxLength": 64,
            "description": f"The {who} phone number, any notation (stored in E.164; read "
            "without a country code in contacts.default_region). Omitted: taken from the "
            "file name when call.filename_pattern is set. Looked up in your contacts.",
        }
    properties["priority"] = {
        "type": "integer",
        "minimum": MIN_PRIORITY,
        "maximum": MAX_PRIORITY,
        "default": DEFAULT_PRIORITY,
        "description": "Queue priority, 0 (lowest) to 9 (most urgent): waiting jobs start "
        "highest priority first, oldest first within a priority. Also accepted as the "
        "query parameter `priority`.",
    }
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": [FILE_FIELD],
                        "properties": properties,
                    }
                }
            },
        }
    }


def parse_options(fields: dict[str, str]) -> tuple[AnnotateOptions, str | None]:
    """Form fields -> (options, callback_url); ``Unprocessable`` on anything invalid."""
    unknown = sorted(set(fields) - set(FORM_FIELDS))
    if unknown:
        raise Unprocessable(
            f"unknown form field(s) {', '.join(unknown)}; allowed: file, {', '.join(FORM_FIELDS)}"
        )
    raw: dict[str, Any] = {}
    for name in OPTION_FIELDS:
        given = fields.get(name, "")
        value = given.strip()
        if name in LIST_FIELDS and given:
            # Blanks and commas only (`steps=,,,`) is an empty list: refused, not the default.
            raw[name] = [s.strip().lower() for s in value.split(",") if s.strip()]
            continue
        if not value:
            continue
        if name == "language":
            raw[name] = value.lower()
        else:
            raw[name] = value
    try:
        options = AnnotateOptions.model_validate(raw, context=REQUEST_CONTEXT)
    except ValidationError as exc:
        raise Unprocessable(validation_detail(exc)) from exc
    callback = fields.get("callback_url", "").strip() or None
    if callback is not None and (
        len(callback) > MAX_CALLBACK_URL
        or not callback.lower().startswith(("http://", "https://"))
        or any(ch.isspace() for ch in callback)
    ):
        raise Unprocessable("callback_url must be an http:// or https:// URL")
    return options, callback


def parse_priority(form_value: str | None, query_value: int | None) -> int:
    """The job priority from the form field or the query parameter (not two different ones);
    ``Unprocessable`` unless an integer from MIN_PRIORITY to MAX_PRIORITY."""
    value: int | None = query_value
    text = (form_value or "").strip()
    if text:
        try:
            value_form = int(text)
        except ValueError:
            raise Unprocessable(f"priority must be an integer, not {text[:20]!r}") from None
        if query_value is not None and query_value != value_form:
            raise Unprocessable("priority given twice (form field and query) with two values")
        value = value_form
    if value is None:
        return DEFAULT_PRIORITY
    if not MIN_PRIORITY <= value <= MAX_PRIORITY:
        raise Unprocessable(
            f"priority must be from {MIN_PRIORITY} (lowest) to {MAX_PRIORITY} (most urgent)"
        )
    return value


def wake_executor(app: FastAPI, job: Job) -> None:
    """Hand a newly queued job (upload, stream, retry) to the executor. Its ``job.queued``
    went out before the job became visible (``announce_queued_before_visible``)."""
    executor = getattr(app.state, "executor", None)
    if executor is not None:
        executor.submit(job.id)


def _location(request: Request, job_id: str) -> str:
    base = request.app.state.settings.api.public_url.rstrip("/")
    return f"{base}/jobs/{job_id}"


def _job_response(request: Request, job: Job, status: int) -> Response:
    return Response(
        content=job.model_dump_json(),
        status_code=status,
        media_type="application/json",
        headers={"Location": _location(request, job.id)},
    )


@router.post(
    "",
    status_code=202,
    response_model=Job,
    summary="Upload a recording and queue its annotation",
    openapi_extra=_upload_schema(),
    responses={
        202: {"description": "Accepted; `Location` names the job.", "model": Job},
        **error_responses(400, 408, 413, 415, 422),
    },
)
async def submit_job(
    request: Request,
    settings: SettingsDep,
    queue: QueueDep,
    principal: WritePrincipal,
    priority: Annotated[
        int | None,
        Query(
            description="Queue priority 0-9 (9 most urgent; default 5); same as the form "
            "field `priority`."
        ),
    ] = None,
) -> Response:
    """Stream the upload to the staging folder, validate it, and queue it durably."""
    upload: StagedUpload | None = None
    try:
        upload = await receive_upload(
            request,
            queue.staging_dir(),
            settings.api.max_upload_bytes,
            idle_timeout_s=settings.api.body_idle_timeout_s,
            vault=partial(vault_for, settings),  # resolved in the staging thread
        )
        options, callback = parse_options(upload.fields)
        job_priority = parse_priority(upload.fields.get("priority"), priority)
        staged_name = upload.file.filename if upload.file is not None else ""
        caller, callee = call_numbers(upload.fields, staged_name, settings)
        if callback is not None:  # no private, loopback or link-local targets (SSRF)
            check_callback_url(callback, settings.callbacks.allowed_hosts)
        staged = upload.file
        if staged is None:
            raise Unprocessable(f"the multipart body has no '{FILE_FIELD}' part")
        if staged.size == 0:
            raise InvalidAudio("the uploaded file is empty (0 bytes)")
        staged_upload = upload

        def queue_job() -> Job:
            queued = new_job(
                queue,
                settings,
                staged_path=staged.path,
                filename=staged.filename,
                options=options,
                owner=principal.id,
                callback_url=callback,
                caller=caller,
                callee=callee,
                priority=job_priority,
                before_visible=announce_queued_before_visible(request.app),
            )
            staged_upload.release()  # moved into the job: unlock and close here, not on the loop
            return queued

        job = await anyio.to_thread.run_sync(queue_job)
    except BaseException as exc:
        if upload is not None:
            await discard_upload(upload)
        if isinstance(exc, Exception):
            logger.info("upload refused: %s", getattr(exc, "detail", type(exc).__name__))
        raise
    with job_context(job.id):
        logger.info(
            "job accepted",
            extra={
                "owner": job.owner,
                "size_bytes": job.audio.size_bytes,
                "format": job.audio.format,
                "duration_s": job.audio.duration,
            },
        )
    wake_executor(request.app, job)
    return _job_response(request, job, 202)


def _parse_states(values: list[str] | None) -> set[JobState] | None:
    if not values:
        return None
    states: set[JobState] = set()
    for value in values:
        for name in value.split(","):
            name = name.strip().lower()
            if not name:
                continue
            try:
                states.add(JobState(name))
            except ValueError as exc:
                allowed = ", ".join(s.value for s in JobState)
                raise Unprocessable(f"unknown status {name!r}; use one of {allowed}") from exc
    return states or None


def _utc(moment: datetime | None) -> datetime | None:
    """``moment`` with a zone (UTC when it has none), comparable with job times."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


def _no_states() -> list[str]:
    """The default of ``GET /jobs?status``. A function of ours, not ``list``: FastAPI asks
    pydantic for the default on every request, and pydantic inspects the factory's signature
    each time, which for a builtin means parsing its text signature (~0.1 ms per request)."""
    return []


@router.get("", response_model=JobPage, summary="List jobs")
def list_jobs(
    queue: QueueDep,
    principal: ReadPrincipal,
    status: Annotated[
        list[str],
        Query(
            default_factory=_no_states,
            description="Filter by state; repeat or comma-separate (queued,running,...).",
            json_schema_extra={"items": {"type": "string", "enum": [s.value for s in JobState]}},
        ),
    ],
    settings: SettingsDep,
    owner: Annotated[str | None, Query(description="Admins only: jobs of this owner.")] = None,
    since: Annotated[
        datetime | None,
        Query(description="Jobs created at or after this time (ISO 8601; no zone: UTC)."),
    ] = None,
    until: Annotated[
        datetime | None,
        Query(description="Jobs created before this time (ISO 8601; no zone: UTC)."),
    ] = None,
    phone: Annotated[
        str | None,
        Query(
            max_length=64,
            description="Calls with this number as the caller or the callee, any notation "
            "(read without a country code in contacts.default_region).",
        ),
    ] = None,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> Response:
    """Newest first. Non-admin callers only ever see their own jobs."""
    states = _parse_states(status)
    if not principal.is_admin:
        owner = principal.id
    region = settings.contacts.default_region
    calls = CallFilter(
        since=_utc(since),
        until=_utc(until),
        phone=None if phone is None else normalize_number(phone, region, "phone"),
    )
    views, total = queue.list_views(
        owner=owner, states=states, offset=offset, limit=limit, calls=calls
    )
    # The JobPage document, made of the cached JSON of each job (no parse, no re-validation
    # of the page by the response model: this was a third of the route's CPU).
    body = b'{"items":[%b],"total":%d,"offset":%d,"limit":%d}' % (
        b",".join(raw for _, raw in views),
        total,
        offset,
        limit,
    )
    return Response(content=body, media_type="application/json")


def _visible_view(queue: FileQueue, job_id: str, principal: Principal) -> tuple[Job, bytes]:
    """:func:`visible_job` on the cached read-only view of the job (see ``FileQueue.view``)."""
    if not valid_job_id(job_id):
        raise NotFound(f"job {job_id} not found")
    job, raw = queue.view(job_id)
    if not principal.can_access(job.owner):
        raise NotFound(f"job {job_id} not found")
    return job, raw


@router.get("/{job_id}", response_model=Job, summary="Job status and progress")
async def get_job(job_id: str, request: Request, principal: ReadPrincipal) -> Response:
    # Inline, not in a thread: an unchanged job costs one stat of its cached record, less
    # than the thread hop (hot polling path). The queue from the app state, not `QueueDep`:
    # each dependency FastAPI solves costs ~10 µs per request, 5 % of a poll (issue 21).
    queue: FileQueue = request.app.state.queue
    _, raw = _visible_view(queue, job_id, principal)
    return Response(content=raw, media_type="application/json")


@router.get(
    "/{job_id}/result",
    summary="The annotation JSON",
    response_class=JSONResponse,
    responses={
        200: {"description": "The Annotation document (see the Annotation JSON Schema)."},
        **error_responses(409),
    },
)
def get_result(job_id: str, queue: QueueDep, principal: ReadPrincipal) -> Response:
    """409 while the job is not completed."""
    _visible_view(queue, job_id, principal)
    return Response(content=queue.read_result(job_id), media_type="application/json")


@router.delete(
    "/{job_id}",
    status_code=204,
    summary="Cancel (if queued or running) and delete a job",
    response_class=Response,
)
async def delete_job(
    job_id: str, queue: QueueDep, executor: ExecutorDep, principal: WritePrincipal
) -> Response:
    job = await anyio.to_thread.run_sync(visible_job, queue, job_id, principal)
    with job_context(job_id):
        if job.state in (JobState.QUEUED, JobState.RUNNING):
            try:
                await executor.cancel(job_id)
            except Exception as exc:  # it finished meanwhile: deleting is still right
                logger.info("cancel before delete did not apply: %s", exc)
        await anyio.to_thread.run_sync(queue.delete, job_id)
        logger.info("job deleted by %s", principal.id)
    return Response(status_code=204)


@router.post(
    "/{job_id}/retry",
    status_code=202,
    response_model=Job,
    summary="Queue a failed or cancelled job again",
    responses=error_responses(409),
)
def retry_job(
    request: Request, job_id: str, queue: QueueDep, principal: WritePrincipal
) -> Response:
    """409 unless the job is failed or cancelled."""
    visible_job(queue, job_id, principal)
    job = queue.retry(job_id, before_visible=announce_queued_before_visible(request.app))
    with job_context(job_id):
        logger.info("job retried by %s", principal.id)
    wake_executor(request.app, job)
    return _job_response(request, job, 202)
