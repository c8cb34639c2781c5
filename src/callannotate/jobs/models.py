"""The job record stored beside each job's audio as ``job.json``."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from callannotate.pipeline.types import AnnotateOptions


def utcnow() -> datetime:
    return datetime.now(UTC)


MIN_PRIORITY = 0
MAX_PRIORITY = 9
DEFAULT_PRIORITY = 5


class JobState(StrEnum):
    """Queue folder a job lives in. ``running`` jobs live in ``processing``."""

    QUEUED = "queued"  # folder: incoming
    RUNNING = "running"  # folder: processing
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"  # folder: failed, with error "cancelled"
    ARCHIVED = "archived"


class StepProgress(BaseModel):
    model_config = ConfigDict(extra="forbid")

    step: str
    completed: int = 0
    total: int = 0
    percent: float = 0.0
    status: str = "pending"  # pending | running | done | skipped | failed


class AudioMeta(BaseModel):
    """What the upload probe found."""

    model_config = ConfigDict(extra="forbid")

    filename: str
    stored_as: str
    size_bytes: int
    format: str
    codec: str
    sample_rate: int
    channels: int
    duration: float


class CallbackAttempt(BaseModel):
    """One delivery attempt of a job's ``callback_url`` (``Job.callbacks``)."""

    model_config = ConfigDict(extra="forbid")

    event: str = Field(description="What was announced: job.completed or job.failed.")
    attempt: int = Field(description="1 for the first try of this announcement.")
    at: datetime = Field(description="When the attempt started (UTC).")
    status_code: int | None = Field(None, description="The receiver's HTTP status, if any.")
    error: str | None = Field(None, description="Why the attempt failed, when it did.")
    duration_ms: float = Field(description="How long the attempt took.")
    delivered: bool = Field(description="True when the receiver answered 2xx.")


MAX_HISTORY = 50  # attempts kept in Job.history (oldest dropped)


class JobAttempt(BaseModel):
    """One attempt to run a job (``Job.history``), whichever executor ran it."""

    model_config = ConfigDict(extra="forbid")

    attempt: int = Field(description="Job.attempts when the attempt started (1 for the first).")
    worker: str | None = Field(None, description="The worker that ran it.")
    started_at: datetime
    ended_at: datetime | None = None
    outcome: str = Field(
        "running",
        description="running, completed, failed (final), retried (failed with a transient "
        "error, or its process died: back in the queue), interrupted (its process died and "
        "another took the job over), released (returned at shutdown, not counted), cancelled.",
    )
    error: str | None = Field(None, description="Why the attempt did not complete.")
    retry_delay_s: float | None = Field(
        None,
        description="For a retried attempt: seconds the job then waited in the queue before "
        "it could be claimed again (exponential backoff with jitter; Job.not_before).",
    )


class Job(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    owner: str
    state: JobState = JobState.QUEUED
    options: AnnotateOptions = Field(default_factory=AnnotateOptions)
    callback_url: str | None = None
    caller: str | None = Field(
        None, description="The calling number (E.164), from the upload or the file name."
    )
    callee: str | None = Field(None, description="The called number (E.164).")
    priority: int = Field(
        DEFAULT_PRIORITY,
        ge=MIN_PRIORITY,
        le=MAX_PRIORITY,
        description="0 (lowest) to 9 (most urgent): queued jobs start highest priority first, "
        "oldest first within a priority.",
    )
    audio: AudioMeta
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    attempts: int = 0
    max_attempts: int = 3
    not_before: datetime | None = Field(
        None,
        description="A queued job retried after a transient failure is not claimed before "
        "this time (UTC); None: claimable now.",
    )
    audio_deleted_at: datetime | None = Field(
        None,
        description="When the recording was deleted under queue.audio_retention_hours "
        "(the annotation stays); None: still stored.",
    )
    progress: list[StepProgress] = Field(default_factory=list)
    error: str | None = None
    worker: str | None = None
    cancel_requested: bool = False
    request_id: str | None = Field(
        None,
        description="X-Request-ID of the request that queued the job; the worker's log lines "
        "for the job carry it too (http.request.id, trace.id).",
    )
    callbacks: list[CallbackAttempt] = Field(
        default_factory=list, description="Delivery attempts of callback_url, oldest first."
    )
    history: list[JobAttempt] = Field(
        default_factory=list,
        description="Every attempt to run the job, oldest first, with its outcome and error.",
    )

    def begin_attempt(self, worker: str) -> None:
        """Record that attempt ``attempts`` starts now on ``worker`` (the file queue calls it
        when a worker claims the job); an attempt still open was cut short by its process."""
        self.end_attempt("interrupted", "the process running this attempt died")
        started = self.started_at or utcnow()
        self.history.append(JobAttempt(attempt=self.attempts, worker=worker, started_at=started))
        del self.history[:-MAX_HISTORY]

    def end_attempt(self, outcome: str | None = None, error: str | None = None) -> None:
        """Close the open attempt: with ``outcome`` as given, or from the job's new state."""
        if not self.history or self.history[-1].ended_at is not None:
            return
        last = self.history[-1]
        if outcome is None:
            outcome = {
                JobState.COMPLETED: "completed",
                JobState.CANCELLED: "cancelled",
                JobState.QUEUED: "retried",
            }.get(self.state, "failed")
            error = None if self.state == JobState.COMPLETED else self.error
        last.ended_at = utcnow()
        last.outcome = outcome
        last.error = error
