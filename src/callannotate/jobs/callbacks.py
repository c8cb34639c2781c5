"""Deliver a job's ``callback_url``: a signed JSON summary when the job completes or fails.

:class:`CallbackDispatcher` subscribes to the job events of the process that finalises the
job (the :class:`~callannotate.jobs.service.JobService` wires it next to the event bus), so
each ``job.completed`` / ``job.failed`` is announced once, by one process, however many API
processes share the Redis bus. Delivery runs in its own task: a slow or failing receiver never
delays or fails the job.

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
import hashlib
import hmac
import json
import logging
import time
import uuid
from typing import Any

import httpx
import tenacity

from callannotate import __version__
from callannotate.config import Settings
from callannotate.errors import NotFound
from callannotate.jobs.callback_targets import Target, TargetPolicy, TargetRefused
from callannotate.jobs.events import JobEvent
from callannotate.jobs.filequeue import FileQueue
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
    """Delivers callbacks for the job events of this process, each in its own task."""

    def __init__(self, settings: Settings, queue: FileQueue) -> None:
        self.settings = settings
        self.config = settings.callbacks
        self.queue = queue
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

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        # No proxies from the environment (they would bypass the address check), no redirects
        # (a redirect could point anywhere).
        self._client = httpx.AsyncClient(
            timeout=self.config.timeout_s, follow_redirects=False, trust_env=False
        )

    async def stop(self) -> None:
        """Let deliveries in flight finish within a few seconds, then drop the rest."""
        self._loop = None  # no new deliveries
        await asyncio.sleep(0)  # deliveries handed over from other threads start now
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=STOP_GRACE_S)
            for task in pending:
                task.cancel()
            if pending:
                log.warning("callbacks dropped at shutdown", extra={"count": len(pending)})
                await asyncio.wait(pending, timeout=1.0)
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def drain(self) -> None:
        """Wait until every delivery started so far has ended (tests, shutdown)."""
        while self._tasks:
            await asyncio.wait(set(self._tasks))

    def on_job_event(self, event: JobEvent) -> None:
        """Job event subscriber; safe from any thread. Starts a delivery for final events."""
        loop = self._loop
        if event.type not in ANNOUNCED or loop is None or loop.is_closed():
            return
        try:
            on_loop = asyncio.get_running_loop() is loop
        except RuntimeError:
            on_loop = False
        if on_loop:
            self._spawn(event)
        else:
            loop.call_soon_threadsafe(self._spawn, event)

    def _spawn(self, event: JobEvent) -> None:
        task = asyncio.create_task(self._deliver(event), name=f"callback-{event.job_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, event: JobEvent) -> None:
        try:
            await self._announce(event)
        except Exception:  # a bug here must not take anything else down
            log.exception("callback delivery failed", extra={"job_id": event.job_id})

    async def _announce(self, event: JobEvent) -> None:
        try:
            job = await asyncio.to_thread(self.queue.get, event.job_id)
        except NotFound:
            return  # deleted meanwhile: nobody to tell about it
        if not job.callback_url:
            return
        body = json.dumps(
            summary(job, event.type, self.settings.api.public_url), separators=(",", ":")
        ).encode()
        delivery = uuid.uuid4().hex
        number = 0
        try:
            async for attempt in async_retrying(self.retry, before_sleep=_count_retry):
                with attempt:
                    number += 1
                    record, error = await self._attempt(
                        job.callback_url, event.type, delivery, body
                    )
                    record.attempt = number
                    try:
                        await asyncio.to_thread(self.queue.record_callback, job.id, record)
                    except NotFound:
                        return  # deleted meanwhile
                    if error is not None:
                        raise error
        except CircuitOpen as exc:
            WEBHOOK_DELIVERIES.labels("callback", "failed").inc()
            log.warning(
                "callback not delivered; giving up",
                extra={"job_id": job.id, "reason": str(exc), "attempts": number},
            )
        except Exception as exc:
            WEBHOOK_DELIVERIES.labels("callback", "failed").inc()
            final = "callback not delivered; giving up" if is_transient(exc) else "callback refused"
            log.warning(final, extra={"job_id": job.id, "reason": str(exc), "attempts": number})
        else:
            WEBHOOK_DELIVERIES.labels("callback", "delivered").inc()

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
