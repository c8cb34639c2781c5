"""Job events the QueueManager emits on every state change and progress update.

:class:`callannotate.jobs.service.JobService` hands them to the event bus (WebSocket fan-out)
and to the callback dispatcher; they carry no audio and no transcript text beyond what a
``job.partial`` event is meant to show.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from callannotate.jobs.models import utcnow

JobEventType = Literal[
    "job.queued",
    "job.started",
    "job.progress",
    "job.partial",
    "job.completed",
    "job.failed",
]


class JobEvent(BaseModel):
    """One thing that happened to a job.

    ``data`` per type: ``job.queued`` {state, attempts, reason?}; ``job.started``
    {worker, attempt}; ``job.progress`` {step, completed, total, percent, progress: [...]};
    ``job.partial`` {step: "transcribe", words: [{text, start, end, probability, speaker?,
    language?}]} (provisional words, sent as the transcriber decodes them);
    ``job.completed`` {attempts}; ``job.failed`` {state: failed|cancelled, error}.
    """

    model_config = ConfigDict(extra="forbid")

    type: JobEventType
    job_id: str
    owner: str
    data: dict[str, Any] = Field(default_factory=dict)
    ts: datetime = Field(default_factory=utcnow)


EventCallback = Callable[[JobEvent], None]
