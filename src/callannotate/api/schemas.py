"""Response bodies of the API that are not domain models (jobs use :class:`Job` itself)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from callannotate.jobs.models import Job


class ErrorBody(BaseModel):
    """The one error body every error response carries."""

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "error": "not_found",
                "detail": "job j-123 does not exist",
                "request_id": "9f2b6c1e0d7a4f43a1c5b2e8d4f6a9b0",
            }
        }
    )

    error: str = Field(description="Machine-readable error code, e.g. 'invalid_audio'.")
    detail: str = Field(description="Human-readable explanation.")
    request_id: str = Field(description="The request's id, also sent as X-Request-ID.")


class JobPage(BaseModel):
    items: list[Job]
    total: int = Field(description="Jobs matching the filter, over all pages.")
    offset: int
    limit: int


class HealthBody(BaseModel):
    status: str = "ok"


class ReadyBody(BaseModel):
    status: str = "ready"
    checks: dict[str, str] = Field(
        description=(
            "Each check and its outcome: 'ok', 'degraded: why' (an optional dependency is down;"
            " the service still answers) or why it fails."
        ),
    )
    breakers: dict[str, str] = Field(
        default_factory=dict,
        description="Admins: each circuit breaker of this process and its state (closed, open, "
        "half_open). An open breaker degrades an optional feature; it never makes /ready 503.",
    )


class StepModel(BaseModel):
    step: str
    processor: str | None = Field(
        None, description="`module:Class` implementing the step (admins only)."
    )
    model: str | None = None
    params: dict[str, Any] = Field(default_factory=dict, description="Step settings (admins).")


class InfoBody(BaseModel):
    """``/info``. Anonymous and non-admin callers get ``name``, ``version`` and each step's
    model name; the other fields are for admins (``null`` otherwise)."""

    name: str = "callannotate"
    version: str
    models_config: str | None = Field(None, description="The models file (admins only).")
    models: list[StepModel]
    queue: dict[str, int] | None = Field(None, description="Jobs per state (admins only).")
    embedded_workers: bool | None = Field(None, description="Admins only.")
    workers: list[dict[str, Any]] | None = Field(
        None, description="Worker processes and what each runs (admins only)."
    )
