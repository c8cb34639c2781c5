"""Deliver a job's ``callback_url``: a signed JSON summary when the job completes or fails.

:class:`CallbackDispatcher` subscribes to the job events of the process that finalises the
job (the :class:`~callannotate.jobs.service.JobService` wires it next to the event bus), so
each ``job.completed`` / ``job.failed`` is announced once, by one process, however many API
processes share the Redis bus. Delivery runs in its own task: a slow or failing receiver never
delays or fails the job.

Each announcement is retried with exponential backoff and jitter (``callbacks.*`` settings)
on network errors, timeouts, 408, 429 and 5xx, until ``max_attempts`` or ``max_elapsed_s``;
any other answer is final. Every attempt is recorded in the job (``Job.callbacks``).

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
import random
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx

from callannotate import __version__
from callannotate.config import Settings
from callannotate.errors import NotFound
from callannotate.jobs.callback_targets import Target, TargetPolicy, TargetRefused
from callannotate.jobs.events import JobEvent
from callannotate.jobs.filequeue import FileQueue
from callannotate.jobs.models import CallbackAttempt, Job, JobState, utcnow

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-CallAnnotate-Signature"
EVENT_HEADER = "X-CallAnnotate-Event"
DELIVERY_HEADER = "X-CallAnnotate-Delivery"
ANNOUNCED = frozenset({"job.completed", "job.failed"})
RETRY_STATUSES = frozenset({408, 425, 429})
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


class CallbackDispatcher:
    """Delivers callbacks for the job events of this process, each in its own task."""

    def __init__(
        self,
        settings: Settings,
        queue: FileQueue,
        *,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.settings = settings
        self.config = settings.callbacks
        self.queue = queue
        self.policy = TargetPolicy(self.config.allowed_hosts)
        self._jitter = jitter
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

    def backoff(self, attempt: int) -> float:
        """Wait after failed attempt ``attempt`` (1-based): exponential, half of it jittered."""
        step = min(self.config.backoff_max_s, self.config.backoff_initial_s * 2.0 ** (attempt - 1))
        return float(step / 2 + self._jitter() * step / 2)

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
        deadline = time.monotonic() + self.config.max_elapsed_s
        for number in range(1, self.config.max_attempts + 1):
            attempt, retry = await self._attempt(job.callback_url, event.type, delivery, body)
            attempt.attempt = number
            try:
                await asyncio.to_thread(self.queue.record_callback, job.id, attempt)
            except NotFound:
                return
            if attempt.delivered or not retry:
                if not attempt.delivered:
                    log.warning(
                        "callback refused", extra={"job_id": job.id, "reason": attempt.error}
                    )
                return
            delay = self.backoff(number)
            if number == self.config.max_attempts or time.monotonic() + delay >= deadline:
                break
            await asyncio.sleep(delay)
        log.warning("callback not delivered; giving up", extra={"job_id": job.id})

    async def _attempt(
        self, url: str, event: str, delivery: str, body: bytes
    ) -> tuple[CallbackAttempt, bool]:
        """One POST; returns its record and whether a failure is worth retrying."""
        started_at = utcnow()
        t0 = time.monotonic()
        status: int | None = None
        error: str | None = None
        retry = False
        try:
            async with asyncio.timeout(self.config.timeout_s):
                target = await self.policy.resolve(url)
                response = await self._post(url, target, event, delivery, body)
            status = response.status_code
            if not 200 <= status < 300:
                error = f"HTTP {status}"
                retry = status >= 500 or status in RETRY_STATUSES
        except TargetRefused as exc:
            error = f"refused: {exc}"
        except TimeoutError:
            error = f"timed out after {self.config.timeout_s:g} s"
            retry = True
        except (httpx.HTTPError, OSError) as exc:
            error = f"{type(exc).__name__}: {exc}"[:300]
            retry = True
        record = CallbackAttempt(
            event=event,
            attempt=0,
            at=started_at,
            status_code=status,
            error=error,
            duration_ms=round((time.monotonic() - t0) * 1000.0, 1),
            delivered=error is None,
        )
        return record, retry

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
