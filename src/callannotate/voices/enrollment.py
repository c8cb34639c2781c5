"""Enrollment as light work: ``POST /voices`` (or ``POST /voices/{id}/samples``) answered
``202`` runs here, off the request.

The route stores the staged samples in a light task (kind ``enroll``, see
:mod:`callannotate.jobs.light`) after the checks that need no model (form fields, contact,
samples decodable); :func:`run_enrollment` then does what the synchronous route does inside
the request (embed every sample, refuse silent or too short ones, create the voice or add the
samples to it) on the local light lane or a Celery worker of the ``light`` queue.
``GET /voices/enrollments/{id}`` shows the outcome: the voice, or the error the synchronous
route would have answered.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from callannotate.config import Settings
from callannotate.jobs.filequeue import FileQueue
from callannotate.jobs.light import Claim, LightState, LightTask
from callannotate.pipeline.types import Annotation
from callannotate.security.atrest import vault_for
from callannotate.voices.schemas import LEGACY_OWNER, Voice, VoiceInfo

if TYPE_CHECKING:
    from callannotate.voices.service import VoiceService

ENROLLMENTS_PATH = "/voices/enrollments"


def run_enrollment(settings: Settings, claim: Claim) -> dict[str, Any]:
    """Embed the task's samples and create the voice; returns the voice as JSON.

    Raises the domain errors of the synchronous route (``Unprocessable`` for a silent
    sample, ``ModelUnavailable`` ...); the caller records them in the task.
    """
    from callannotate.voices.routes import voice_service  # the API's embedders, loaded once

    params = claim.task.params
    service = voice_service(settings)
    if params.get("job_id"):
        return _enroll_job_speaker(settings, service, claim).info().model_dump(mode="json")
    samples = service.samples_from_files(claim.input_files())
    if params.get("voice_id"):  # POST /voices/{id}/samples (visibility checked there)
        voice = service.add_samples(str(params["voice_id"]), samples)
    else:
        owner = claim.task.owner or LEGACY_OWNER
        voice = service.enroll(str(params["name"]), samples, params.get("contact_id"), owner)
    return voice.info().model_dump(mode="json")


def _enroll_job_speaker(settings: Settings, service: VoiceService, claim: Claim) -> Voice:
    """``POST /jobs/{id}/speakers/{label}/enroll`` answered 202 (checks done there)."""
    params = claim.task.params
    job_id, voice_id = str(params["job_id"]), params.get("voice_id")
    contact_id = params.get("contact_id")
    queue = FileQueue(settings.queue_dir, settings.queue, vault_for(settings))
    annotation = Annotation.model_validate_json(queue.read_result(job_id))
    voice = service.enroll_from_job(
        annotation,
        queue.audio_path(job_id),
        job_id,
        str(params["label"]),
        name=None if voice_id else str(params["name"]),
        voice_id=voice_id,
        contact_id=contact_id,
        owner=claim.task.owner or LEGACY_OWNER,
    )
    if voice_id is not None and contact_id is not None:  # (re)link the existing voice
        voice = service.store.update(
            voice.id, lambda v: v.model_copy(update={"contact_id": contact_id})
        )
    return voice


class EnrollmentError(BaseModel):
    model_config = ConfigDict(extra="forbid")

    error: str = Field(description="Error code, as the synchronous route would answer it.")
    detail: str
    status_code: int | None = Field(None, description="Status the synchronous route gives.")


class EnrollmentStatus(BaseModel):
    """``GET /voices/enrollments/{id}``: an enrollment accepted with ``202``."""

    model_config = ConfigDict(extra="forbid")

    id: str
    state: Literal["queued", "running", "completed", "failed"]
    name: str
    samples: int = Field(description="Sample files sent (0 for a speaker of a job).")
    attempts: int
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    status_url: str
    voice: VoiceInfo | None = Field(None, description="The enrolled voice once completed.")
    error: EnrollmentError | None = Field(None, description="Why it failed.")

    @classmethod
    def of(cls, task: LightTask) -> EnrollmentStatus:
        voice = None
        if task.state == LightState.COMPLETED and task.result is not None:
            voice = VoiceInfo.model_validate(task.result)
        error = None
        if task.state == LightState.FAILED:
            error = EnrollmentError(
                error=task.error_code or "internal_error",
                detail=task.error or "",
                status_code=task.status_code,
            )
        return cls(
            id=task.id,
            state=task.state.value,
            name=str(task.params.get("name", "")),
            samples=len(task.files),
            attempts=task.attempts,
            created_at=task.created_at,
            started_at=task.started_at,
            finished_at=task.finished_at,
            status_url=f"{ENROLLMENTS_PATH}/{task.id}",
            voice=voice,
            error=error,
        )
