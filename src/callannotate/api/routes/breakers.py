"""Admin view of the circuit breakers (:mod:`callannotate.resilience.breakers`).

``GET /admin/breakers``: every breaker this API process built so far, its state (the worst
of its circuits), its settings, and each circuit (a CardDAV account id, a callback host, an
alert webhook URL) with its consecutive failures and, when open, the seconds until the next
trial call. Breakers are per process: a ``callannotate worker`` or a Celery worker keeps its
own (its metrics port exports them as ``callannotate_circuit_breakers``).
"""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter
from pydantic import BaseModel, Field

from callannotate.api.deps import AdminPrincipal
from callannotate.jobs.models import utcnow
from callannotate.resilience.breakers import NAMES, statuses

router = APIRouter(prefix="/admin", tags=["admin"])


class CircuitBody(BaseModel):
    key: str = Field(description="Account id, host or URL; empty for a single dependency.")
    state: str = Field(description="closed, open or half_open.")
    failures: int = Field(description="Consecutive failures counted now.")
    retry_in_s: float | None = Field(
        None, description="Open: seconds until the next call is let through as a trial."
    )


class BreakerBody(BaseModel):
    name: str = Field(description=f"One of: {', '.join(NAMES)}.")
    state: str = Field(description="The worst state of its circuits (open > half_open > closed).")
    failures_to_open: int
    reset_s: float
    counts: dict[str, int] = Field(description="Circuits per state.")
    circuits: list[CircuitBody]


class BreakersBody(BaseModel):
    checked_at: datetime
    breakers: list[BreakerBody]


@router.get("/breakers", response_model=BreakersBody, summary="Circuit breakers and states")
def list_breakers(principal: AdminPrincipal) -> BreakersBody:
    """The circuit breakers of this process around CardDAV, callbacks, alert receivers and
    the event bus's Redis. An open breaker degrades its feature; it never fails a job."""
    return BreakersBody(
        checked_at=utcnow(),
        breakers=[
            BreakerBody(
                name=status.name,
                state=status.state,
                failures_to_open=status.failures_to_open,
                reset_s=status.reset_s,
                counts=status.counts,
                circuits=[
                    CircuitBody(
                        key=c.key, state=c.state, failures=c.failures, retry_in_s=c.retry_in_s
                    )
                    for c in status.circuits
                ],
            )
            for status in statuses()
        ],
    )
