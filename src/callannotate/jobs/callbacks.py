"""Deliver a job's ``callback_url``: a signed JSON summary when the job completes or fails.

:class:`CallbackDispatcher` subscribes to the job events of the process that finalises the
job (the :class:`~callannotate.jobs.service.JobService` wires it next to the event bus), so
each ``job.completed`` / ``job.failed`` is announced once, by one process, however many API
processes share the Redis bus. Delivery is light work, never done by a job's worker: each
announcement is first stored as a light task (``data_dir/light/``, so an accepted delivery
survives the death of its process), then delivered on the event loop of the process (local
executor) or sent to the Celery ``light`` queue (executor ``celery``). A slow or failing
receiver never delays or fails the job, nor occupies an annotation worker.

Each announcement is retried with exponential backoff and jitter (tenacity, see
:mod:`callannotate.resilience.retry`; ``callbacks.*`` settings) on network errors, timeouts,
408, 425, 429 and 5xx, until ``max_attempts`` or ``max_elapsed_s``; any other answer is final.
A circuit breaker per receiving host (``callbacks`` in :mod:`callannotate.resilience.breakers`)
stops calling a host after ``breaker_failures`` failures in a row, for ``breaker_reset_s``;
attempts meanwhile are recorded as not sent ("circuit open") and retried later. Every attempt
is recorded in the job (``Job.callbacks``) and counted in
``callannotate_webhook_deliveries_total{kind="callback", result}``.

Signature (``X-CallAnnotate-Signature: t=<unix seconds>,v1=<hex>``): HMAC-SHA256 with key
``callbacks.secret`` over ``"<t>." + body``. A receiver recomputes it over the raw body,
compares in constant time and refuses a ``t`` too far from its clock (replay); see
:func:`verify_signature` and docs/api-specification.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Coroutine
from datetime import timedelta
from typing import Any

import httpx
import tenacity

from callannotate import __version__
from callannotate.config import Settings
from callannotate.errors import NotFound
from callannotate.jobs.callback_sweep import CallbackSweep, delivery_task_id
from callannotate.jobs.callback_targets import Target, TargetPolicy, TargetRefused
from callannotate.jobs.events import JobEvent
from callannotate.jobs.filequeue import FileQueue
from callannotate.jobs.light import Claim, LightKind, LightState, LightTask, light_store
from callannotate.jobs.light_run import backoff_s
from callannotate.jobs.models import CallbackAttempt, Job, JobState, utcnow
from callannotate.observability.metrics import WEBHOOK_DELIVERIES
from callannotate.resilience.breakers import Breaker, CircuitOpen
from callannotate.resilience.retry import (
    RetryPolicy,
    TransientError,
    async_retrying,
    is_transient,
    retryable_status,
)

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-CallAnnotate-Signature"
EVENT_HEADER = "X-CallAnnotate-Event"
DELIVERY_HEADER = "X-CallAnnotate-Delivery"
ANNOUNCED = frozenset({"job.completed", "job.failed"})
STOP_GRACE_S = 5.0
STALE_QUEUED_S = 30.0  # a queued delivery this old lost its process: recover() takes it
SWEEP_WINDOW_S = 24 * 3600.0  # jobs ended this long ago at most are checked for a lost delivery


def attempts_made(job: Job, event: str) -> int:
    """Attempts already recorded for ``job``'s announcement ``event`` (of its latest run)."""
    since = job.finished_at
    return sum(1 for a in job.callbacks if a.event == event and (since is None or a.at >= since))


def sign(secret: bytes, body: bytes, timestamp: int) -> str:
    """The ``X-CallAnnotate-Signature`` value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify_signature(
    secret: bytes, body: bytes, header: str, *, tolerance_s: float = 300.0, now: float | None = None
) -> bool:
    """What a receiver does: check the MAC of the raw body and that ``t`` is recent."""
    try:
        fields = dict(part.split("=", 1) for part in header.split(","))
        timestamp = int(fields["t"])
        given = fields["v1"]
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance_s:
        return False
    expected = sign(secret, body, timestamp).split("v1=", 1)[1]
    return hmac.compare_digest(expected, given)


def summary(job: Job, event: str, public_url: str) -> dict[str, Any]:
    """The JSON body announcing ``job``'s outcome."""
    base = f"{public_url.rstrip('/')}/jobs/{job.id}"
    completed = job.state == JobState.COMPLETED
    return {
        "event": event,
        "job_id": job.id,
        "state": job.state.value,
        "error": job.error,
        "attempts": job.attempts,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
        "links": {
            "job": base,
            "result": f"{base}/result" if completed else None,
            "report": f"{base}/report" if completed else None,
        },
    }


def _count_retry(state: tenacity.RetryCallState) -> None:
    """Count a failed attempt that will be tried again (tenacity's ``before_sleep``)."""
    exc = state.outcome.exception() if state.outcome is not None else None
    result = "circuit_open" if isinstance(exc, CircuitOpen) else "retried"
    WEBHOOK_DELIVERIES.labels("callback", result).inc()


class CallbackDispatcher:
    """Queues and delivers the callbacks of this process's job events.

    Each ``job.completed`` / ``job.failed`` of a job with a ``callback_url`` becomes a light
    task (:mod:`callannotate.jobs.light`, kind ``callback``) stored durably in the data
    folder before anything is sent. Then either

    * ``handoff`` is ``None`` (local executor): the task is delivered on this process's event
      loop (its own asyncio task, never on a job's worker process), all attempts with the
      tenacity backoff in one claim; or
    * ``handoff(task_id)`` sends it to the light queue (Celery), where
      :meth:`deliver_once` makes one attempt per task run and a failed attempt is sent again
      after the same backoff (the light worker slot is free meanwhile).

    A delivery whose process died is found by :meth:`recover` (the local lane calls it) or
    by the Celery API's recovery and delivered again; attempts stay in ``Job.callbacks``.
    So is one whose process died after the job ended but before the delivery was stored
    (:mod:`callannotate.jobs.callback_sweep`): a delivery's task id is derived from the job
    and its end, so it is stored, and sent, once however many processes look.
    """

    def __init__(
        self,
        settings: Settings,
        queue: FileQueue,
        *,
        handoff: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings
        self.config = settings.callbacks
        self.queue = queue
        self.light = light_store(settings.data_dir)
        self.handoff = handoff
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:callbacks"
        self.policy = TargetPolicy(self.config.allowed_hosts)
        self.retry = RetryPolicy(
            attempts=self.config.max_attempts,
            initial_s=self.config.backoff_initial_s,
            max_s=self.config.backoff_max_s,
            max_elapsed_s=self.config.max_elapsed_s,
        )
        # one circuit per receiving host; a 4xx answer proves the host is up
        self.breaker = Breaker(
            "callbacks",
            failures=self.config.breaker_failures,
            reset_s=self.config.breaker_reset_s,
            is_failure=is_transient,
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: httpx.AsyncClient | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._warned_unsigned = False
        # never longer than finished tasks are kept: a purged task must not look missing
        window = min(SWEEP_WINDOW_S, settings.queue.retention_hours * 3600.0)
        self.sweep = CallbackSweep(queue, self.light, window_s=window, grace_s=STALE_QUEUED_S)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        # No proxies from the environment (they would bypass the address check), no redirects
        # (a redirect could point anywhere).
        self._client = httpx.AsyncClient(
            timeout=self.config.timeout_s, follow_redirects=False, trust_env=False
        )

    async def stop(self) -> None:
        """Let deliveries in flight finish within a few seconds, then stop the rest between
        attempts (their light tasks stay unfinished and are taken over after a restart;
        before, a delivery still retrying was stored as given up)."""
        self._loop = None  # no new deliveries
        await asyncio.sleep(0)  # deliveries handed over from other threads start now
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=STOP_GRACE_S)
            for task in pending:
                task.cancel()
            if pending:
                log.warning("callbacks left for later at shutdown", extra={"count": len(pending)})
                await asyncio.wait(pending, timeout=1.0)
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def drain(self) -> None:
        """Wait until every delivery started so far has ended (tests, shutdown)."""
        while self._tasks:
            await asyncio.wait(set(self._tasks))

    def on_job_event(self, event: JobEvent) -> None:
        """Job event subscriber; safe from any thread. Queues a delivery for final events."""
        loop = self._loop
        if event.type not in ANNOUNCED or loop is None or loop.is_closed():
            return
        try:
            on_loop = asyncio.get_running_loop() is loop
        except RuntimeError:
            on_loop = False
        if on_loop:
            self._spawn(self._deliver(event), event.job_id)
        else:
            loop.call_soon_threadsafe(self._spawn, self._deliver(event), event.job_id)

    def _spawn(self, coro: Coroutine[Any, Any, None], job_id: str) -> None:
        task = asyncio.create_task(coro, name=f"callback-{job_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def queue_delivery(self, event: JobEvent) -> LightTask | None:
        """Store the delivery of ``event`` as a light task (blocking); ``None`` when there is
        nothing to deliver (no ``callback_url``, job gone)."""
        try:
            job = self.queue.get(event.job_id)
        except NotFound:
            return None  # deleted meanwhile: nobody to tell about it
        if not job.callback_url:
            return None
        return self._store(job, event.type)

    def _store(self, job: Job, event: str) -> LightTask | None:
        """The delivery task of ``job``'s end ``event``; ``None`` when it is stored already
        (by the sweep of another process): it is delivered from there."""
        task_id = delivery_task_id(job.id, event, job.finished_at)
        params = {"job_id": job.id, "event": event, "delivery": task_id}
        try:
            task = self.light.create(LightKind.CALLBACK, params, owner=job.owner, task_id=task_id)
        except FileExistsError:
            return None
        if self.handoff is not None:  # one attempt per run: the retries count in the task
            task.max_attempts = self.config.max_attempts
            self.light.save(task)
        return task

    async def _deliver(self, event: JobEvent) -> None:
        try:
            task = await asyncio.to_thread(self.queue_delivery, event)
            if task is None:
                return
            if self.handoff is not None:
                await asyncio.to_thread(self.handoff, task.id)
                return
            claim = await asyncio.to_thread(self.light.claim, task.id, self.worker_id)
            if claim is not None:
                await self.deliver_all(claim)
        except Exception:  # a bug here must not take anything else down
            log.exception("callback delivery failed", extra={"job_id": event.job_id})

    def recover(self) -> int:
        """Deliver (local) or hand off (Celery) callbacks left by a process that died:
        queued deliveries older than :data:`STALE_QUEUED_S`, running ones whose lock is free,
        and those of jobs that ended without their delivery being stored (the sweep)."""
        loop = self._loop
        if loop is None:
            return 0
        count = 0
        stale = utcnow() - timedelta(seconds=STALE_QUEUED_S)
        unfinished = [
            (task, orphaned)
            for task, orphaned in self.light.unfinished()
            if task.kind == LightKind.CALLBACK
        ]
        unfinished.sort(key=lambda pair: pair[0].created_at)
        for task, orphaned in unfinished:
            if task.state == LightState.RUNNING and not orphaned:
                continue  # a live process delivers it
            if task.state == LightState.QUEUED and (task.not_before or task.created_at) > stale:
                continue  # its own process is about to deliver it
            count += 1
            loop.call_soon_threadsafe(self._spawn, self._resume(task.id), task.id)
        busy = frozenset(str(task.params.get("job_id")) for task, _ in unfinished)
        for missed in self.sweep.find(busy):
            stored = self._store(missed.job, missed.event)
            if stored is None:
                continue  # another process stored it first
            log.warning(
                "stored the callback delivery of a job whose process ended before storing it",
                extra={"job_id": missed.job.id, "task_id": stored.id},
            )
            count += 1
            loop.call_soon_threadsafe(self._spawn, self._resume(stored.id), stored.id)
        return count

    async def _resume(self, task_id: str) -> None:
        try:
            if self.handoff is not None:
                await asyncio.to_thread(self.handoff, task_id)
                return
            claim = await asyncio.to_thread(self.light.claim, task_id, self.worker_id)
            if claim is not None:
                log.info("resuming a callback delivery", extra={"task_id": task_id})
                await self.deliver_all(claim)
        except Exception:
            log.exception("callback delivery failed", extra={"task_id": task_id})

    async def _load(self, claim: Claim) -> tuple[Job, str, bytes] | None:
        """The job and body of a claimed delivery; ``None`` (task completed) when the job is
        gone or has no callback URL any more."""
        params = claim.task.params
        try:
            job = await asyncio.to_thread(self.queue.get, str(params["job_id"]))
        except NotFound:
            job = None
        if job is None or not job.callback_url:
            await asyncio.to_thread(claim.complete, {"delivered": False, "reason": "job gone"})
            return None
        event = str(params["event"])
        body = json.dumps(
            summary(job, event, self.settings.api.public_url), separators=(",", ":")
        ).encode()
        return job, event, body

    async def _record(self, job: Job, record: CallbackAttempt) -> bool:
        try:
            await asyncio.to_thread(self.queue.record_callback, job.id, record)
        except NotFound:
            return False  # deleted meanwhile
        return True

    async def deliver_all(self, claim: Claim) -> None:
        """Every attempt of a claimed delivery, with the backoff between them, then the task
        ends (local lane)."""
        loaded = await self._load(claim)
        if loaded is None:
            return
        job, event, body = loaded
        assert job.callback_url is not None
        delivery = str(claim.task.params["delivery"])
        number = attempts_made(job, event)  # > 0 when taken over from a stopped process
        outcome: dict[str, Any] = {"delivered": False}
        stopping = False
        try:
            async for attempt in async_retrying(self.retry, before_sleep=_count_retry):
                with attempt:
                    number += 1
                    record, error = await self._attempt(job.callback_url, event, delivery, body)
                    record.attempt = number
                    if not await self._record(job, record):
                        return
                    if error is not None:
                        raise error
        except asyncio.CancelledError:
            stopping = True  # the process stops between attempts: not given up
            raise
        except CircuitOpen as exc:
            WEBHOOK_DELIVERIES.labels("callback", "failed").inc()
            outcome["reason"] = str(exc)
            log.warning(
                "callback not delivered; giving up",
                extra={"job_id": job.id, "reason": str(exc), "attempts": number},
            )
        except Exception as exc:
            WEBHOOK_DELIVERIES.labels("callback", "failed").inc()
            outcome["reason"] = str(exc)
            final = "callback not delivered; giving up" if is_transient(exc) else "callback refused"
            log.warning(final, extra={"job_id": job.id, "reason": str(exc), "attempts": number})
        else:
            WEBHOOK_DELIVERIES.labels("callback", "delivered").inc()
            outcome["delivered"] = True
        finally:
            if stopping:
                # the task stays running with its lock free: the next start (or another
                # process's recovery) takes it over with the attempts made so far
                claim.release()
            else:
                outcome["attempts"] = number
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(claim.complete, outcome)

    async def deliver_once(self, claim: Claim) -> float | None:
        """One attempt of a claimed delivery (light queue); returns the seconds to wait
        before the next attempt (the task is queued again), or ``None`` when it ended."""
        loaded = await self._load(claim)
        if loaded is None:
            return None
        job, event, body = loaded
        assert job.callback_url is not None
        number = claim.task.attempts
        record, error = await self._attempt(
            job.callback_url, event, str(claim.task.params["delivery"]), body
        )
        record.attempt = number
        if not await self._record(job, record):
            await asyncio.to_thread(claim.complete, {"delivered": False, "reason": "job gone"})
            return None
        if error is None:
            WEBHOOK_DELIVERIES.labels("callback", "delivered").inc()
            await asyncio.to_thread(claim.complete, {"delivered": True, "attempts": number})
            return None
        delay = self._next_wait(number)
        elapsed = (utcnow() - claim.task.created_at).total_seconds()
        limit = self.config.max_elapsed_s
        if is_transient(error) and number < self.config.max_attempts and elapsed + delay < limit:
            result = "circuit_open" if isinstance(error, CircuitOpen) else "retried"
            WEBHOOK_DELIVERIES.labels("callback", result).inc()
            await asyncio.to_thread(claim.retry_later, delay, str(error))
            return delay
        WEBHOOK_DELIVERIES.labels("callback", "failed").inc()
        final = "callback not delivered; giving up" if is_transient(error) else "callback refused"
        log.warning(final, extra={"job_id": job.id, "reason": str(error), "attempts": number})
        await asyncio.to_thread(claim.fail, str(error), "callback_failed")
        return None

    def _next_wait(self, attempt_number: int) -> float:
        """The wait after attempt ``attempt_number`` (as :meth:`deliver_all` waits)."""
        return backoff_s(self.retry, attempt_number)

    async def _attempt(
        self, url: str, event: str, delivery: str, body: bytes
    ) -> tuple[CallbackAttempt, Exception | None]:
        """One POST through the host's circuit; returns its record and, when it failed, the
        error to raise (:func:`is_transient` decides whether it is retried)."""
        started_at = utcnow()
        t0 = time.monotonic()
        status: int | None = None
        failure: Exception | None = None
        try:
            async with asyncio.timeout(self.config.timeout_s):
                target = await self.policy.resolve(url)
            # the timeout inside the guard: a receiver that hangs counts against its host
            with self.breaker.guard(target.host):
                async with asyncio.timeout(self.config.timeout_s):
                    response = await self._post(url, target, event, delivery, body)
                status = response.status_code
                if retryable_status(status):  # counts against the host's circuit
                    raise TransientError(f"HTTP {status}")
            if not 200 <= status < 300:
                failure = ValueError(f"HTTP {status}")  # 4xx: final
        except (TargetRefused, CircuitOpen, TransientError) as exc:
            failure = exc
        except TimeoutError:
            failure = TimeoutError(f"timed out after {self.config.timeout_s:g} s")
        except (httpx.HTTPError, OSError) as exc:
            failure = ConnectionError(f"{type(exc).__name__}: {exc}"[:300])
        error: str | None = None
        if isinstance(failure, TargetRefused):
            error = f"refused: {failure}"
        elif failure is not None:
            error = str(failure)
        record = CallbackAttempt(
            event=event,
            attempt=0,
            at=started_at,
            status_code=status,
            error=error,
            duration_ms=round((time.monotonic() - t0) * 1000.0, 1),
            delivered=failure is None,
        )
        return record, failure

    async def _post(
        self, url: str, target: Target, event: str, delivery: str, body: bytes
    ) -> httpx.Response:
        assert self._client is not None, "the callback dispatcher is not started"
        request_url = httpx.URL(url)
        host_header = request_url.netloc.decode("ascii")
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"callannotate/{__version__}",
            "Host": host_header,
            EVENT_HEADER: event,
            DELIVERY_HEADER: delivery,
        }
        if self.config.secret is not None:
            secret = self.config.secret.get_secret_value().encode()
            headers[SIGNATURE_HEADER] = sign(secret, body, int(time.time()))
        elif not self._warned_unsigned:
            self._warned_unsigned = True
            log.warning("callbacks.secret is not set: callbacks are sent unsigned")
        extensions: dict[str, Any] = {}
        if target.scheme == "https":
            extensions["sni_hostname"] = target.host  # TLS checks the name, not the address
        # Connect to the checked addresses only (the first that accepts the connection).
        for index, address in enumerate(target.addresses):
            try:
                return await self._client.post(
                    request_url.copy_with(host=address),
                    content=body,
                    headers=headers,
                    extensions=extensions,
                )
            except httpx.ConnectError:
                if index == len(target.addresses) - 1:
                    raise
        raise ConnectionError(f"{target.host} has no address")  # resolve() never returns none
