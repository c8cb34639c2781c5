"""Run one claimed light task (both executors call this; callbacks have their own path).

A domain error (``Unprocessable`` for a silent sample, ``ModelUnavailable``, ...) fails the
task at once with its code and the HTTP status the synchronous route would have answered; a
transient error (:func:`callannotate.resilience.retry.is_transient`) queues it again after an
exponential backoff while attempts remain; anything else fails it.
"""

from __future__ import annotations

import logging

import tenacity

from callannotate.config import Settings
from callannotate.errors import CallAnnotateError
from callannotate.jobs.light import Claim, LightKind
from callannotate.observability.logging import job_context
from callannotate.resilience.retry import RetryPolicy, is_transient

log = logging.getLogger(__name__)

RETRY = RetryPolicy(attempts=3, initial_s=1.0, max_s=60.0)


def backoff_s(policy: RetryPolicy, attempt_number: int) -> float:
    """The wait after attempt ``attempt_number`` under ``policy`` (tenacity's exponential
    backoff with jitter, as a tenacity retry loop would wait), for retries that are queued
    instead of slept (the worker slot is free meanwhile)."""
    state = tenacity.RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
    state.attempt_number = max(1, attempt_number)
    return float(policy.wait()(state))


def retry_delay(attempts: int) -> float:
    """Seconds before the next attempt of a light task after ``attempts`` attempts."""
    return backoff_s(RETRY, attempts)


def run_claimed(settings: Settings, claim: Claim) -> float | None:
    """Run a claimed task of a kind other than ``callback`` (blocking). Returns the delay
    before it is tried again, or ``None`` once it ended (completed or failed)."""
    task = claim.task
    with job_context(task.id):
        try:
            if task.kind == LightKind.ENROLL:
                from callannotate.voices.enrollment import run_enrollment

                result = run_enrollment(settings, claim)
            elif task.kind == LightKind.EXPORT:
                from callannotate.reports.export_task import run_export

                result = run_export(settings, claim)
            else:
                raise ValueError(f"light task kind {task.kind.value} is not run here")
            claim.complete(result)
        except CallAnnotateError as exc:
            log.info(
                "light task failed", extra={"task_id": task.id, "reason": f"{exc.code}: {exc}"}
            )
            claim.fail(exc.detail, exc.code, exc.status_code)
            return None
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            if is_transient(exc) and task.attempts < task.max_attempts:
                delay = retry_delay(task.attempts)
                log.warning(
                    "light task failed with a transient error; retrying",
                    extra={"task_id": task.id, "reason": error, "countdown_s": delay},
                )
                claim.retry_later(delay, error)
                return delay
            log.exception("light task failed", extra={"task_id": task.id})
            claim.fail(error, "internal_error", 500)
            return None
        finally:
            claim.release()  # a no-op once the task was saved and its lock dropped
    log.info("light task completed", extra={"task_id": task.id, "kind": task.kind.value})
    return None
