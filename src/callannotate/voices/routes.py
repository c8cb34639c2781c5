"""Voice enrollment over REST: ``/voices`` and ``/jobs/{id}/speakers/{label}/enroll``.

Samples arrive as multipart form data (one or more ``file`` parts, ``name`` and optional
``contact_id``), streamed to the queue's staging folder by the same receiver as ``POST
/jobs`` (size limit counted while the body arrives, chunked or not; idle timeout; nothing
left behind on failure). Each sample is probed (content, not extension), decoded to 16 kHz
mono, checked (silent / too little speech -> 422) and embedded; only the embedding and
quality figures are stored, never the audio.
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Body, Query, Request, Response

from callannotate.api.deps import QueueDep, ReadPrincipal, SettingsDep, WritePrincipal, visible_job
from callannotate.api.errors import error_responses
from callannotate.api.prefer import wants_async
from callannotate.api.uploads import StagedUpload, discard_upload, receive_upload
from callannotate.config import Settings
from callannotate.errors import (
    InvalidAudio,
    ModelUnavailable,
    NotFound,
    Unprocessable,
)
from callannotate.jobs.light import LightKind, LightTask, light_store
from callannotate.jobs.service import JobService
from callannotate.pipeline import registry
from callannotate.pipeline.audio import decode as audio_io
from callannotate.pipeline.speakers.embedding import SpeakerEmbedder
from callannotate.pipeline.types import Annotation
from callannotate.security.atrest import Vault, vault_for
from callannotate.security.principal import Principal
from callannotate.voices.contact_links import check_contact, create_contact
from callannotate.voices.enrollment import EnrollmentStatus
from callannotate.voices.schemas import (
    LEGACY_OWNER,
    JobEnrollRequest,
    Voice,
    VoiceInfo,
    VoicePatch,
    VoiceSample,
    utcnow,
)
from callannotate.voices.service import RecognitionParams, VoiceService, shared_ge2e, voice_name
from callannotate.voices.store import VoiceStore

logger = logging.getLogger(__name__)

router = APIRouter(tags=["voices"], responses=error_responses(404))

FILE_FIELD = "file"
FORM_FIELDS = ("name", "contact_id")
MAX_FILES = 20
MAX_NAME = 200

_SAMPLES_SCHEMA: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": [FILE_FIELD],
                    "properties": {
                        FILE_FIELD: {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": f"1-{MAX_FILES} audio samples of the person "
                            "speaking (any format ffmpeg reads; at least 0.2 s of speech each, "
                            "a few seconds or more is better).",
                        },
                        "name": {"type": "string", "maxLength": MAX_NAME},
                        "contact_id": {"type": "string", "maxLength": MAX_NAME},
                    },
                }
            }
        },
    }
}


def recognition_params(settings: Settings) -> RecognitionParams:
    """The ``recognition`` settings (defaults when the step is not configured; a broken
    models file is a ``ConfigError``, 503)."""
    return registry.models_settings(settings).recognition or RecognitionParams()


def voice_service(settings: Settings) -> VoiceService:
    """The service over ``settings.voices_dir`` with the process-wide CAM++ and GE2E
    embedders."""
    embedder = registry.loaded_processor(settings, "embedding")
    if not isinstance(embedder, SpeakerEmbedder):
        raise ModelUnavailable("the `embedding` step must be a SpeakerEmbedder")
    params = recognition_params(settings)
    ge2e = shared_ge2e(params, settings.model_cache, embedder.threads)
    return VoiceService(
        VoiceStore(settings.voices_dir, vault_for(settings)), embedder, params, ge2e
    )


def visible_voice(store: VoiceStore, voice_id: str, principal: Principal) -> Voice:
    """The voice when it exists and ``principal`` may see it; 404 otherwise (no existence
    leak). Blocking: run it in a thread."""
    voice = store.get(voice_id)
    if not principal.can_access(voice.owner):
        raise NotFound(f"voice {voice_id} not found")
    return voice


def _store(settings: Settings) -> VoiceStore:
    return VoiceStore(settings.voices_dir, vault_for(settings))


async def _receive_samples(
    request: Request, settings: Settings, staging: Path, *, new_voice_of: str | None
) -> tuple[StagedUpload, dict[str, str]]:
    """Stream the multipart body (the same receiver and limits as ``POST /jobs``: a chunked
    body is counted as it arrives) and check the fields, that ``new_voice_of`` (the owner
    of a new voice; ``None`` when adding samples) has no voice of that name yet, and that
    every sample decodes (no model needed). The caller discards the upload."""
    upload = await receive_upload(
        request,
        staging,
        settings.api.max_upload_bytes,
        idle_timeout_s=settings.api.body_idle_timeout_s,
        max_files=MAX_FILES,
        vault=partial(vault_for, settings),  # resolved in the staging thread
    )
    try:
        unknown = sorted(set(upload.fields) - set(FORM_FIELDS))
        if unknown:
            raise Unprocessable(
                f"unknown form field(s) {', '.join(unknown)}; allowed: file, "
                + ", ".join(FORM_FIELDS)
            )
        fields: dict[str, str] = {}
        for key, value in upload.fields.items():
            if len(value) > MAX_NAME:
                raise Unprocessable(f"{key} is longer than {MAX_NAME} characters")
            fields[key] = value.strip()
        if new_voice_of is not None:
            if not fields.get("name"):
                raise Unprocessable("the form field 'name' is required")
            await anyio.to_thread.run_sync(
                lambda: _store(settings).check_name_free(new_voice_of, fields["name"])
            )
        if not upload.files:
            raise Unprocessable(f"the multipart body has no '{FILE_FIELD}' part")
        staged = [(f.path, f.filename) for f in upload.files]
        await anyio.to_thread.run_sync(lambda: _check_samples(staged, vault_for(settings)))
    except BaseException:
        await discard_upload(upload)
        raise
    return upload, fields


async def _read_samples(
    request: Request, settings: Settings, staging: Path, *, new_voice_of: str | None
) -> tuple[list[VoiceSample], dict[str, str]]:
    """The checked samples of the multipart body, embedded (inside the request)."""
    upload, fields = await _receive_samples(request, settings, staging, new_voice_of=new_voice_of)
    try:
        staged = [(f.path, f.filename) for f in upload.files]
        service = await anyio.to_thread.run_sync(voice_service, settings)
        samples = await anyio.to_thread.run_sync(service.samples_from_files, staged)
    finally:
        await discard_upload(upload)
    return samples, fields


def _check_samples(staged: list[tuple[Path, str]], vault: Vault) -> None:
    """Refuse empty or undecodable samples before any model is loaded."""
    for path, name in staged:
        if vault.plaintext_size(path) == 0:
            raise InvalidAudio(f"sample {name!r} is empty (0 bytes)")
        try:
            audio_io.probe(path, vault=vault)
        except InvalidAudio as exc:
            raise InvalidAudio(f"sample {name!r}: {exc.detail}") from exc


@router.post(
    "/voices",
    status_code=201,
    response_model=VoiceInfo,
    summary="Enroll a person's voice from one or more samples",
    description=(
        "Synchronous by default (201 with the voice). With `?wait=false` or the header "
        "`Prefer: respond-async` the samples are checked (fields, contact, decodable audio) "
        "and stored, the answer is 202 with the status of the enrollment and its URL in "
        "`Location` (`GET /voices/enrollments/{id}`), and the embedding runs as light work "
        "(the local light lane or the Celery `light` queue), never behind annotation jobs."
    ),
    openapi_extra=_SAMPLES_SCHEMA,
    responses={
        202: {"model": EnrollmentStatus, "description": "Accepted: poll the status URL."},
        **error_responses(400, 408, 413, 409, 415, 422, 503),
    },
)
async def create_voice(
    request: Request,
    settings: SettingsDep,
    queue: QueueDep,
    principal: WritePrincipal,
    wait: Annotated[
        bool, Query(description="false: answer 202 at once and enroll as light work")
    ] = True,
) -> Response:
    if wants_async(request, wait):
        return await _enroll_later(request, settings, queue.staging_dir(), principal)
    samples, fields = await _read_samples(
        request, settings, queue.staging_dir(), new_voice_of=principal.id
    )
    contact_id = await check_contact(request, principal.id, fields.get("contact_id"))
    service = VoiceService(_store(settings), None, recognition_params(settings))
    voice = await anyio.to_thread.run_sync(
        lambda: service.enroll(fields["name"], samples, contact_id, principal.id)
    )
    logger.info("voice %s enrolled with %d sample(s)", voice.id, len(samples))
    return Response(
        voice.info().model_dump_json(),
        status_code=201,
        media_type="application/json",
        headers={"Location": f"/voices/{voice.id}"},
    )


async def _enroll_later(
    request: Request,
    settings: Settings,
    staging: Path,
    principal: Principal,
    *,
    add_to: Voice | None = None,
) -> Response:
    """Store the checked samples as a light task (durable before the answer) and queue it:
    a new voice, or samples for ``add_to`` (visible to the caller)."""
    upload, fields = await _receive_samples(
        request, settings, staging, new_voice_of=principal.id if add_to is None else None
    )
    try:
        params: dict[str, str | None]
        if add_to is not None:
            if "name" in fields or "contact_id" in fields:
                raise Unprocessable(
                    "add samples with 'file' parts only; rename or link with "
                    "PATCH /voices/{voice_id}"
                )
            params = {"name": add_to.name, "voice_id": add_to.id}
        else:
            contact_id = await check_contact(request, principal.id, fields.get("contact_id"))
            params = {"name": fields["name"], "contact_id": contact_id}
        files = [(f.path, f.filename) for f in upload.files]
        store = light_store(settings.data_dir)
        task = await anyio.to_thread.run_sync(
            lambda: store.create(LightKind.ENROLL, params, owner=principal.id, files=files)
        )
    finally:
        await discard_upload(upload)  # the samples were moved into the task (or are dropped)
    return await _accepted(request, task)


async def _accepted(request: Request, task: LightTask) -> Response:
    """Queue a stored enrollment task and answer 202 with its status and URL."""
    jobs: JobService = request.app.state.jobs
    await anyio.to_thread.run_sync(jobs.submit_light, task.id)
    logger.info("enrollment %s queued with %d sample(s)", task.id, len(task.files))
    status = EnrollmentStatus.of(task)
    return Response(
        status.model_dump_json(),
        status_code=202,
        media_type="application/json",
        headers={"Location": status.status_url},
    )


@router.get(
    "/voices/enrollments/{enrollment_id}",
    response_model=EnrollmentStatus,
    summary="Status of an enrollment accepted with 202",
)
async def get_enrollment(
    enrollment_id: str, settings: SettingsDep, principal: ReadPrincipal
) -> EnrollmentStatus:
    store = light_store(settings.data_dir)
    task = await anyio.to_thread.run_sync(store.get, enrollment_id)
    if task.kind != LightKind.ENROLL or not principal.can_access(task.owner or LEGACY_OWNER):
        raise NotFound(f"enrollment {enrollment_id} not found")
    return EnrollmentStatus.of(task)


@router.post(
    "/voices/{voice_id}/samples",
    status_code=201,
    response_model=VoiceInfo,
    summary="Add samples to an enrolled voice",
    description=(
        "Synchronous by default (201 with the voice). With `?wait=false` or "
        "`Prefer: respond-async`: 202 and a status URL, as for `POST /voices`."
    ),
    openapi_extra=_SAMPLES_SCHEMA,
    responses={
        202: {"model": EnrollmentStatus, "description": "Accepted: poll the status URL."},
        **error_responses(400, 408, 413, 415, 422, 503),
    },
)
async def add_samples(
    voice_id: str,
    request: Request,
    settings: SettingsDep,
    queue: QueueDep,
    principal: WritePrincipal,
    wait: Annotated[
        bool, Query(description="false: answer 202 at once and embed as light work")
    ] = True,
) -> Response:
    store = _store(settings)
    # 404 before the upload is processed
    voice = await anyio.to_thread.run_sync(visible_voice, store, voice_id, principal)
    if wants_async(request, wait):
        return await _enroll_later(request, settings, queue.staging_dir(), principal, add_to=voice)
    samples, fields = await _read_samples(request, settings, queue.staging_dir(), new_voice_of=None)
    if "name" in fields or "contact_id" in fields:
        raise Unprocessable(
            "add samples with 'file' parts only; rename or link with PATCH /voices/{voice_id}"
        )
    service = VoiceService(store, None, recognition_params(settings))
    voice = await anyio.to_thread.run_sync(service.add_samples, voice_id, samples)
    return Response(voice.info().model_dump_json(), status_code=201, media_type="application/json")


@router.get("/voices", response_model=list[VoiceInfo], summary="List enrolled voices")
async def list_voices(settings: SettingsDep, principal: ReadPrincipal) -> list[VoiceInfo]:
    """Your voices (an admin: every voice)."""
    voices = await anyio.to_thread.run_sync(_store(settings).list)
    return [v.info() for v in voices if principal.can_access(v.owner)]


@router.get("/voices/{voice_id}", response_model=VoiceInfo, summary="One enrolled voice")
async def get_voice(voice_id: str, settings: SettingsDep, principal: ReadPrincipal) -> VoiceInfo:
    voice = await anyio.to_thread.run_sync(visible_voice, _store(settings), voice_id, principal)
    return voice.info()


@router.patch(
    "/voices/{voice_id}",
    response_model=VoiceInfo,
    summary="Rename a voice, link it to one of your contacts, or unlink it",
    responses=error_responses(409, 422),
)
async def update_voice(
    voice_id: str,
    request: Request,
    body: Annotated[VoicePatch, Body()],
    settings: SettingsDep,
    principal: WritePrincipal,
) -> VoiceInfo:
    store = _store(settings)
    voice = await anyio.to_thread.run_sync(visible_voice, store, voice_id, principal)
    changes: dict[str, Any] = {}
    if "name" in body.model_fields_set:
        if body.name is None or not body.name.strip():
            raise Unprocessable("name cannot be empty")
        changes["name"] = body.name.strip()
    if "contact_id" in body.model_fields_set:
        # the link names a contact of the voice's owner (an admin edits for that owner)
        changes["contact_id"] = await check_contact(request, voice.owner, body.contact_id)
    if changes:
        voice = await anyio.to_thread.run_sync(
            store.update,
            voice_id,
            lambda v: v.model_copy(update={**changes, "updated_at": utcnow()}),
        )
    return voice.info()


@router.delete("/voices/{voice_id}", status_code=204, summary="Delete a voice and its samples")
async def delete_voice(voice_id: str, settings: SettingsDep, principal: WritePrincipal) -> Response:
    store = _store(settings)
    await anyio.to_thread.run_sync(visible_voice, store, voice_id, principal)
    await anyio.to_thread.run_sync(store.delete, voice_id)
    return Response(status_code=204)


@router.delete(
    "/voices/{voice_id}/samples/{sample_id}",
    response_model=VoiceInfo,
    summary="Delete one sample of a voice",
)
async def delete_sample(
    voice_id: str, sample_id: str, settings: SettingsDep, principal: WritePrincipal
) -> VoiceInfo:
    store = _store(settings)
    await anyio.to_thread.run_sync(visible_voice, store, voice_id, principal)
    voice = await anyio.to_thread.run_sync(store.delete_sample, voice_id, sample_id)
    return voice.info()


@router.post(
    "/jobs/{job_id}/speakers/{label}/enroll",
    status_code=201,
    response_model=VoiceInfo,
    summary="Enroll a speaker of a finished job ('this speaker is Ivan')",
    description=(
        "Synchronous by default (201 with the voice). With `?wait=false` or "
        "`Prefer: respond-async`: 202 and a status URL, as for `POST /voices` (a new "
        "`contact` is created before the answer)."
    ),
    responses={
        202: {"model": EnrollmentStatus, "description": "Accepted: poll the status URL."},
        **error_responses(400, 409, 422, 503),
    },
)
async def enroll_job_speaker(
    job_id: str,
    label: str,
    request: Request,
    body: Annotated[JobEnrollRequest, Body()],
    settings: SettingsDep,
    queue: QueueDep,
    principal: WritePrincipal,
    wait: Annotated[
        bool, Query(description="false: answer 202 at once and embed as light work")
    ] = True,
) -> Response:
    await anyio.to_thread.run_sync(visible_job, queue, job_id, principal)
    result = await anyio.to_thread.run_sync(queue.read_result, job_id)  # 409 unless completed
    annotation = Annotation.model_validate_json(result)
    # Refuse what the service would refuse before loading the embedding models for it.
    if (body.name is None) == (body.voice_id is None):
        raise Unprocessable("give either a name (new voice) or a voice_id (add to it)")
    new_name = voice_name(body.name) if body.name is not None else None  # "  ": 422, not 202
    if new_name is not None:  # a taken name: 409 now, not a failed enrollment later
        await anyio.to_thread.run_sync(
            lambda: _store(settings).check_name_free(principal.id, new_name)
        )
    if body.contact_id is not None and body.contact is not None:
        raise Unprocessable("give either contact_id (an existing contact) or contact (a new one)")
    if body.voice_id is not None:  # adding to a voice: it must be the caller's too
        await anyio.to_thread.run_sync(visible_voice, _store(settings), body.voice_id, principal)
    if not any(s.label == label for s in annotation.speakers):
        raise NotFound(f"speaker {label} not found in job {job_id}")
    contact_id = await check_contact(request, principal.id, body.contact_id)
    audio_path = await anyio.to_thread.run_sync(queue.audio_path, job_id)
    if not audio_path.is_file():
        raise NotFound(f"the audio of job {job_id} is no longer stored")
    if wants_async(request, wait):
        name = new_name
        if name is None:
            assert body.voice_id is not None
            name = (await anyio.to_thread.run_sync(_store(settings).get, body.voice_id)).name
        if body.contact is not None:
            contact_id = await create_contact(request, principal.id, body.contact, name)
        params = {
            "job_id": job_id,
            "label": label,
            "name": name,
            "voice_id": body.voice_id,
            "contact_id": contact_id,
        }
        store = light_store(settings.data_dir)
        task = await anyio.to_thread.run_sync(
            lambda: store.create(LightKind.ENROLL, params, owner=principal.id)
        )
        return await _accepted(request, task)
    service = await anyio.to_thread.run_sync(voice_service, settings)
    if body.contact is not None:  # created only once the request is known to be valid
        name = new_name
        if name is None:
            assert body.voice_id is not None
            name = (await anyio.to_thread.run_sync(service.store.get, body.voice_id)).name
        contact_id = await create_contact(request, principal.id, body.contact, name)
    voice = await anyio.to_thread.run_sync(
        lambda: service.enroll_from_job(
            annotation,
            audio_path,
            job_id,
            label,
            name=new_name,
            voice_id=body.voice_id,
            contact_id=contact_id,
            owner=principal.id,
        )
    )
    if body.voice_id is not None and contact_id is not None:  # (re)link the existing voice
        voice = await anyio.to_thread.run_sync(
            service.store.update,
            voice.id,
            lambda v: v.model_copy(update={"contact_id": contact_id, "updated_at": utcnow()}),
        )
    return Response(
        voice.info().model_dump_json(),
        status_code=201,
        media_type="application/json",
        headers={"Location": f"/voices/{voice.id}"},
    )
