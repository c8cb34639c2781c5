"""Executor ``celery``: the API sends job ids to Celery workers on a Redis broker.

API side, :class:`CeleryExecutor`: ``submit`` publishes the job id (the only payload) to the
heavy queue; ``cancel`` cancels through the file queue (a queued job is cancelled at once and
its task revoked; a running job is flagged and its worker stops it at its next progress
report); readiness comes from pinging the workers every ``jobs.ping_interval_s``.

Worker side, :func:`run_celery_worker` (``callannotate worker --executor celery``): a Celery
worker whose prefork children each load the models once (``worker_process_init``) and run
task ``callannotate.run_job``, which

1. claims the job through the file queue's run lock (:meth:`FileQueue.claim_job`): a job
   that is finished, gone or run by a live process makes the task a no-op, so a job never
   runs twice at once and a redelivered task for a finished job does nothing;
2. runs the same job function as the local executor's worker processes
   (:func:`callannotate.jobs.worker._run_job`) with the same :class:`JobRunner`;
3. completes or fails the job in the queue and announces ``job.*`` events on the same event
   bus and callbacks as the local executor (:class:`~callannotate.jobs.service.JobService`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Coroutine
from datetime import datetime
from typing import Any, cast

from celery import Celery, Task, current_task
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from celery.signals import worker_process_init, worker_process_shutdown

from callannotate.config import Settings
from callannotate.errors import CallAnnotateError, NotFound
from callannotate.events.bus import create_bus
from callannotate.jobs.callbacks import CallbackDispatcher
from callannotate.jobs.events import EventCallback, JobEvent, JobEventType
from callannotate.jobs.executors.base import WorkerInfo
from callannotate.jobs.executors.celery_app import (
    RUN_JOB,
    create_celery_app,
    heavy_queue,
    light_queue,
    message_priority,
)
from callannotate.jobs.executors.external import ExternalExecutor
from callannotate.jobs.filequeue import FileQueue, interrupted_reason
from callannotate.jobs.fsutil import try_lock, unlock
from callannotate.jobs.heartbeat import WorkerRegistry, start_heartbeat
from callannotate.jobs.light import LightKind
from callannotate.jobs.light_run import run_claimed
from callannotate.jobs.manager import TIMEOUT, apply_step_reports, timeout_reason
from callannotate.jobs.models import DEFAULT_PRIORITY, Job, JobState, StepProgress, utcnow
from callannotate.jobs.retention import RETENTION_INTERVAL_S, safe_retention_pass
from callannotate.jobs.runner import JobRunner, JobStopped, PipelineRunner
from callannotate.jobs.speaker_contacts import resolve_result
from callannotate.jobs.worker import _Control, _run_job
from callannotate.observability.metrics import observe_model_load, observe_result
from callannotate.observability.multiproc import CeleryWorkerMetrics
from callannotate.security.atrest import vault_for

log = logging.getLogger(__name__)

RUN_LIGHT = "callannotate.run_light"
CANCELLED = "cancelled"
DELETED = "deleted"
CHECK_INTERVAL_S = 0.5
PROGRESS_WRITE_INTERVAL_S = 0.5


# ---------------------------------------------------------------------------- job side


class _Announcer:
    """File queue, event bus and callbacks of one worker process, on a loop thread.

    The same pieces as :class:`~callannotate.jobs.service.JobService` (events go to the bus
    and to the callback dispatcher); they are asyncio services and a Celery child runs tasks
    on its main thread, so they live on a private event loop thread, fed thread-safely.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.queue = FileQueue(settings.queue_dir, settings.queue, vault_for(settings))
        self.bus = create_bus(settings.events, public_url=settings.api.public_url)
        # callbacks of the jobs this process finishes go to the light queue, not sent here
        self.callbacks = CallbackDispatcher(settings, self.queue, handoff=self.send_light)
        self._app: Celery | None = None
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="celery-job-events", daemon=True
        )
        self._thread.start()
        self._call(self._start(), 30)

    async def _start(self) -> None:
        await self.bus.start()
        await self.callbacks.start()

    async def _stop(self) -> None:
        await self.callbacks.stop()
        await self.bus.stop()

    def _call(self, coro: Coroutine[Any, Any, None], timeout: float) -> None:
        asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def publish(self, type_: JobEventType, job: Job, data: dict[str, Any]) -> None:
        event = JobEvent(type=type_, job_id=job.id, owner=job.owner, data=data)
        try:
            self.bus.on_job_event(event)
            self.callbacks.on_job_event(event)
        except Exception:
            log.exception("event subscriber failed", extra={"job_id": job.id})

    def send_light(self, task_id: str) -> None:
        """Send a light task (a callback delivery) to the light queue; when the broker cannot
        be reached the task stays queued in the data folder and the API sends it later."""
        if self._app is None:
            self._app = build_app(self.settings)
        _send_light(self._app, self.settings, task_id)

    def flush(self) -> None:
        """Wait until the events published so far left this process."""
        with contextlib.suppress(Exception):
            self._call(self.bus.flush(), 10)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._call(self._stop(), 30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


class _TaskChannel:
    """Stands in for the worker pipe of :func:`_run_job`: what the job reports goes to the
    queue and the bus here, and this is where a cancel, a delete or the soft time limit
    stops the job (``JobStopped`` raised from the job's own progress report)."""

    def __init__(self, announcer: _Announcer, job: Job, worker_id: str) -> None:
        self.announcer = announcer
        self.queue = announcer.queue
        self.settings = announcer.settings
        self.job = job
        self.worker_id = worker_id
        self.started = time.monotonic()
        self.progress: dict[str, StepProgress] = {}
        self.progress_written = 0.0
        self.last_check = self.started
        self.last_renew = self.started

    def send(self, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        if kind == "progress":
            self._on_progress(msg)
        elif kind == "partial" and msg.get("words"):
            step = str(msg.get("step") or "transcribe")
            self.announcer.publish("job.partial", self.job, {"step": step, "words": msg["words"]})
        self.check()

    def check(self) -> None:
        now = time.monotonic()
        if now - self.started > self.settings.workers.job_timeout_s:
            raise JobStopped(TIMEOUT)
        if now - self.last_renew >= self.settings.queue.lease_seconds / 3:
            self.last_renew = now
            with contextlib.suppress(CallAnnotateError):
                self.queue.renew(self.job.id, self.worker_id)
        if now - self.last_check < CHECK_INTERVAL_S:
            return
        self.last_check = now
        try:
            current = self.queue.get(self.job.id)
        except NotFound:
            raise JobStopped(DELETED) from None
        if current.cancel_requested:
            raise JobStopped(CANCELLED)

    def _on_progress(self, msg: dict[str, Any]) -> None:
        step, completed, total = str(msg["step"]), int(msg["completed"]), int(msg["total"])
        percent = round(100.0 * completed / total, 1) if total > 0 else 0.0
        for other in self.progress.values():
            if other.step != step and other.status == "running":
                other.status, other.percent = "done", 100.0
        done = total > 0 and completed >= total
        self.progress[step] = StepProgress(
            step=step,
            completed=completed,
            total=total,
            percent=percent,
            status="done" if done else "running",
        )
        self.announcer.publish(
            "job.progress",
            self.job,
            {
                "step": step,
                "completed": completed,
                "total": total,
                "percent": percent,
                "progress": [p.model_dump() for p in self.progress.values()],
            },
        )
        now = time.monotonic()
        if now - self.progress_written >= PROGRESS_WRITE_INTERVAL_S:
            self.write_progress()

    def write_progress(self) -> None:
        self.progress_written = time.monotonic()
        with contextlib.suppress(CallAnnotateError):
            self.queue.update_progress(self.job.id, list(self.progress.values()))


class JobHost:
    """What one Celery worker child keeps between tasks: settings, runner (models loaded
    once) and its announcer."""

    def __init__(self, settings: Settings, runner: JobRunner) -> None:
        self.settings = settings
        self.runner = runner
        self.announcer = _Announcer(settings)
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:celery"
        # a worker of the light queue only runs no annotation: no pipeline models to load
        pool_queues = _pool[1] if _pool else []
        light_only = bool(pool_queues) and heavy_queue(settings) not in pool_queues
        self.preload_error = None if light_only else runner.preload(settings)
        observe_model_load(getattr(runner, "load_seconds", None))
        self.current: str | None = None  # the job this child runs now (heartbeat)
        self.jobs_done = 0
        concurrency, queues, node = _pool or (settings.workers.concurrency, [], "celery")
        self.heartbeat = start_heartbeat(
            settings,
            executor="celery",
            name=node,
            concurrency=concurrency,
            queues=queues,
            running=lambda: ([self.current] if self.current else [], self.jobs_done),
            runner=runner,
            preload_error=self.preload_error,
        )
        log.info(
            "celery worker child ready",
            extra={"pid": os.getpid(), "models_ok": self.preload_error is None},
        )

    def close(self) -> None:
        self.heartbeat.stop(remove=True)
        self.announcer.close()

    def run(self, job_id: str) -> str:
        """Run ``job_id`` once; returns what happened (``skipped`` for a no-op delivery)."""
        queue = self.announcer.queue
        job = queue.claim_job(job_id, self.worker_id)
        if job is None:
            log.info("task for a job not to run here: no-op", extra={"job_id": job_id})
            return "skipped"
        self.current = job.id
        self.heartbeat.beat()  # the registry shows the running job at once
        try:
            return self._run_claimed(job)
        finally:
            self.current = None
            self.jobs_done += 1
            self.heartbeat.beat()  # the registry shows the finished job at once

    def run_light(self, task_id: str) -> float | None:
        """Run light task ``task_id`` once; returns the countdown of its next attempt, or
        ``None`` (done, failed, or a no-op delivery: finished, or run by a live process)."""
        store = self.announcer.callbacks.light
        claim = store.claim(task_id, self.worker_id, early=True)
        if claim is None:
            log.info("light task not to run here: no-op", extra={"task_id": task_id})
            return None
        self.current = task_id
        self.heartbeat.beat()
        try:
            if claim.task.kind == LightKind.CALLBACK:
                future = asyncio.run_coroutine_threadsafe(
                    self.announcer.callbacks.deliver_once(claim), self.announcer.loop
                )
                return future.result(self.settings.callbacks.timeout_s * 3 + 30)
            return run_claimed(self.settings, claim)
        finally:
            claim.release()
            self.current = None
            self.jobs_done += 1
            self.heartbeat.beat()

    def _run_claimed(self, job: Job) -> str:
        queue = self.announcer.queue
        if len(job.history) > 1 and job.history[-2].outcome == "interrupted":
            # taken over from a dead child (its task redelivered at once): announce the
            # requeue as the API's recovery would have (clients, worker_died retries)
            reason = interrupted_reason(job.attempts - 1, job.max_attempts)
            data = {"state": "queued", "attempts": job.attempts - 1, "reason": reason}
            self.announcer.publish("job.queued", job, data)
        self.announcer.publish(
            "job.started", job, {"worker": self.worker_id, "attempt": job.attempts}
        )
        channel = _TaskChannel(self.announcer, job, self.worker_id)
        try:
            audio = queue.audio_path(job.id)
            msg = {
                "type": "job",
                "job_id": job.id,
                "audio": str(audio),
                "options": job.options.model_dump(mode="json"),
                "filename": job.audio.filename,
                "request_id": job.request_id,
                "owner": job.owner,
            }
            try:
                out = _run_job(cast(Any, channel), self.settings, self.runner, _Control(), msg)
            except SoftTimeLimitExceeded:
                out = {"type": "error", "job_id": job.id, "error": TIMEOUT, "reason": TIMEOUT}
            if out.get("type") == "done":
                self._final_steps(channel, str(out["result"]))
            if channel.progress:
                channel.write_progress()
            return self._finish(job, channel, out)
        except Exception as exc:  # never leave the job locked in processing by this process
            log.exception("celery task failed around its job", extra={"job_id": job.id})
            out = {"type": "error", "job_id": job.id, "error": f"{type(exc).__name__}: {exc}"}
            return self._finish(job, channel, out)
        finally:
            self.announcer.flush()

    @staticmethod
    def _final_steps(channel: _TaskChannel, result: str) -> None:
        """Final per-step statuses from the annotation's own step reports (as the local
        executor does)."""
        try:
            doc = json.loads(result)
            steps = doc.get("steps", [])
        except (ValueError, AttributeError):
            return
        observe_result(doc, time.monotonic() - channel.started)  # steps, RTF, audio seconds
        apply_step_reports(channel.progress, steps)

    def _finish(self, job: Job, channel: _TaskChannel, out: dict[str, Any]) -> str:
        queue = self.announcer.queue
        error = str(out.get("error") or "unknown error")
        reason = out.get("reason")
        if error.startswith("SoftTimeLimitExceeded"):
            reason = TIMEOUT
        try:
            if out.get("type") == "done":
                # speakers become people, exactly as the local executor finalises a result
                payload = resolve_result(self.settings, job, str(out["result"]).encode())
                final = queue.complete(job.id, payload)
                self.announcer.publish("job.completed", final, {"attempts": final.attempts})
                return "completed"
            if reason == DELETED:
                queue.forget(job.id)
                return "deleted"
            if reason == CANCELLED:
                final = queue.mark_cancelled(job.id)
            elif reason == TIMEOUT:
                final = queue.fail(job.id, timeout_reason(self.settings, killed=False))
            else:  # transient: back to the queue while attempts remain, sent again later
                final = queue.fail(job.id, error, retry=bool(out.get("transient")))
        except CallAnnotateError as exc:  # deleted meanwhile
            queue.forget(job.id)
            log.warning(
                "job left processing before it finished",
                extra={"job_id": job.id, "reason": str(exc)},
            )
            return "gone"
        if final.state == JobState.QUEUED:  # a transient error: retried (_run_job_task)
            # the fields of every job.queued (docs/api-specification.md); "reason" is what
            # the metrics count as a retry
            queued = {"state": final.state.value, "attempts": final.attempts}
            self.announcer.publish("job.queued", final, {**queued, "reason": final.error})
            return final.state.value
        data: dict[str, Any] = {"state": final.state.value, "error": final.error}
        if reason == TIMEOUT:
            data["reason"] = TIMEOUT
        self.announcer.publish("job.failed", final, data)
        return final.state.value


# What ``run_celery_worker`` hands to the worker's children (inherited through fork).
_config: tuple[Settings, JobRunner] | None = None
_pool: tuple[int, list[str], str] | None = None  # concurrency, queues, node name (heartbeat)
_host: JobHost | None = None
_parent: _Announcer | None = None


def _job_host() -> JobHost:
    global _host
    if _host is None:
        if _config is None:
            raise RuntimeError("not a callannotate Celery worker (run_celery_worker)")
        _host = JobHost(*_config)
    return _host


def _on_child_start(**_: Any) -> None:
    if _config is not None:
        _job_host()  # models load here, once per child, not per task


def _on_child_stop(**_: Any) -> None:
    global _host
    if _host is not None:
        _host.close()
        _host = None


worker_process_init.connect(_on_child_start, weak=False)
worker_process_shutdown.connect(_on_child_stop, weak=False)


class JobTask(Task):  # type: ignore[misc]
    """The task class: a hard time limit kills the child; the worker's main process then
    fails the job with reason ``timeout`` (the killed child cannot)."""

    def on_failure(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        if isinstance(exc, TimeLimitExceeded) and args:
            _fail_after_hard_limit(str(args[0]))


def _fail_after_hard_limit(job_id: str) -> None:
    """Called by the pool just before it kills the child: fail the job once it is dead.

    Waits on a thread (the pool kills the child only after this returns), holding the job's
    run lock while failing it so that no recovery or redelivery takes the job meanwhile.
    """
    if _config is not None:
        threading.Thread(
            target=_fail_when_child_gone, args=(job_id, _config[0]), daemon=True
        ).start()


def _fail_when_child_gone(job_id: str, settings: Settings, wait_s: float = 60.0) -> None:
    global _parent
    if _parent is None:
        _parent = _Announcer(settings)
    queue = _parent.queue
    try:
        path = queue.job_dir(job_id)
    except NotFound:
        return
    deadline = time.monotonic() + wait_s
    fd = None
    while fd is None and time.monotonic() < deadline:
        fd = try_lock(path / ".lock")  # free once the killed child is gone
        if fd is None:
            time.sleep(0.05)
    if fd is None:
        log.error("job over its hard time limit still locked", extra={"job_id": job_id})
        return
    try:
        job = queue.fail(job_id, timeout_reason(settings, killed=True))
    except CallAnnotateError:
        return  # finished or taken over meanwhile
    finally:
        unlock(fd)
    _parent.publish(
        "job.failed", job, {"state": job.state.value, "error": job.error, "reason": TIMEOUT}
    )
    _parent.flush()


def _run_job_task(job_id: str) -> str:
    outcome = _job_host().run(job_id)
    if outcome == JobState.QUEUED.value:
        # A transient error put the job back in the queue (attempts left) with the time of its
        # next attempt (``not_before``, the queue's backoff with jitter, in its history too):
        # send it again then (Celery's own retry; the file queue's queue.max_attempts bounds
        # the attempts, not Celery's max_retries).
        job = _job_host().announcer.queue.get(job_id)
        attempts = job.attempts
        delay = 0.0
        if job.not_before is not None:
            delay = max(0.0, (job.not_before - utcnow()).total_seconds())
        log.warning(
            "job failed with a transient error; retrying",
            extra={"job_id": job_id, "attempts": attempts, "countdown_s": delay},
        )
        raise current_task.retry(countdown=delay, max_retries=None)
    return outcome


def _run_light_task(task_id: str) -> str:
    delay = _job_host().run_light(task_id)
    if delay is not None:  # a transient failure: the next attempt after the backoff
        raise current_task.retry(countdown=delay, max_retries=None)
    return "done"


def _send_light(app: Celery, settings: Settings, task_id: str) -> None:
    try:
        app.send_task(
            RUN_LIGHT,
            args=[task_id],
            task_id=f"{task_id}-{uuid.uuid4().hex[:8]}",
            queue=light_queue(settings),
        )
    except Exception as exc:  # the task is stored: the API's light lane sends it again
        log.warning(
            "could not send a light task to the broker; will retry",
            extra={"task_id": task_id, "reason": f"{type(exc).__name__}: {exc}"},
        )


def build_app(settings: Settings) -> Celery:
    """The Celery app with tasks ``callannotate.run_job`` (heavy queue) and
    ``callannotate.run_light`` (light queue) registered."""
    app = create_celery_app(settings)
    app.conf.task_routes = {
        **dict(app.conf.task_routes or {}),
        RUN_LIGHT: {"queue": light_queue(settings)},
    }
    app.task(name=RUN_JOB, base=JobTask)(_run_job_task)
    app.task(name=RUN_LIGHT)(_run_light_task)
    return app


def run_celery_worker(
    settings: Settings,
    runner: JobRunner | None = None,
    *,
    concurrency: int | None = None,
    queues: list[str] | None = None,
    hostname: str | None = None,
) -> int:
    """``callannotate worker --executor celery``: a Celery worker (prefork children).

    ``queues`` are ``heavy``/``light`` (or full queue names); default both. Returns the
    worker's exit code.
    """
    global _config, _pool
    _config = (settings, runner or PipelineRunner())
    names = {"heavy": heavy_queue(settings), "light": light_queue(settings)}
    # light first: with queue_order_strategy "priority" a worker on both queues takes short
    # work before long calls of the same priority
    chosen = [names.get(q, q) for q in (queues or ["light", "heavy"])]
    node = hostname or f"callannotate-{os.getpid()}@{socket.gethostname()}"
    size = concurrency or settings.workers.concurrency
    _pool = (size, chosen, node)
    app = build_app(settings)
    worker = app.Worker(
        concurrency=size,
        queues=chosen,
        pool="prefork",
        hostname=node,
        loglevel="INFO",
        without_gossip=True,
        without_mingle=True,
    )
    metrics = CeleryWorkerMetrics(settings.metrics)  # metrics.port: the children's metrics
    metrics.start()  # before the pool forks its children
    try:
        worker.start()
    finally:
        metrics.stop()
    return int(worker.exitcode or 0)


# ---------------------------------------------------------------------------- API side


class CeleryExecutor(ExternalExecutor):
    """``jobs.executor: celery`` in the API: jobs run in Celery workers elsewhere."""

    name = "celery"
    embedded = False

    def __init__(
        self, settings: Settings, queue: FileQueue, *, on_event: EventCallback | None = None
    ) -> None:
        super().__init__(queue, on_event=on_event)
        self.settings = settings
        self.app = build_app(settings)
        self._tasks: dict[str, str] = {}  # job id -> task id (to revoke a queued job)
        self._unsent: set[str] = set()  # queued jobs whose publish failed (sent again)
        self._seen: dict[str, tuple[datetime, float]] = {}  # worker -> (first seen, last seen)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._pinger: threading.Thread | None = None
        self._pinged = False

    async def start(self) -> None:
        self._stop.clear()
        self._pinger = threading.Thread(target=self._ping_loop, name="celery-ping", daemon=True)
        self._pinger.start()

    async def stop(self, graceful: bool = True) -> None:
        self._stop.set()
        if self._pinger is not None:
            await asyncio.to_thread(self._pinger.join, 5)
            self._pinger = None

    def submit(self, job_id: str) -> None:
        """Publish the job id. The job is already queued durably: when the broker cannot be
        reached, the id is kept and sent again by the ping loop (never an error here)."""
        task_id = f"{job_id}-{uuid.uuid4().hex[:8]}"
        queue = heavy_queue(self.settings)
        try:
            priority = self.queue.get(job_id).priority
        except CallAnnotateError:
            priority = DEFAULT_PRIORITY  # gone meanwhile: the task will be a no-op
        try:
            self.app.send_task(
                RUN_JOB,
                args=[job_id],
                task_id=task_id,
                queue=queue,
                priority=message_priority(priority),
            )
        except Exception as exc:
            log.warning(
                "could not send a job to the broker; will retry",
                extra={"job_id": job_id, "reason": f"{type(exc).__name__}: {exc}"},
            )
            with self._lock:
                self._unsent.add(job_id)
            return
        with self._lock:
            self._tasks[job_id] = task_id
            self._unsent.discard(job_id)

    def send_light(self, task_id: str) -> None:
        """Publish a light task id (asynchronous enrollment or export, callback delivery) on
        the light queue; a failure is logged and the task sent again by the light lane's
        maintenance."""
        _send_light(self.app, self.settings, task_id)

    def _resend(self) -> None:
        with self._lock:
            pending = sorted(self._unsent)
        for job_id in pending:
            try:
                state = self.queue.get(job_id).state
            except CallAnnotateError:
                state = None
            if state != JobState.QUEUED:
                with self._lock:
                    self._unsent.discard(job_id)
                continue
            self.submit(job_id)

    async def cancel(self, job_id: str) -> Job:
        job = await super().cancel(job_id)
        with self._lock:
            task_id = self._tasks.pop(job_id, None)
        if job.state == JobState.CANCELLED and task_id is not None:
            # the task would be a no-op anyway; revoking spares the delivery
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.app.control.revoke, task_id)
        return job

    def ping(self, timeout: float = 1.0) -> list[str]:
        """Names of the workers answering now."""
        replies = self.app.control.ping(timeout=timeout)
        return sorted(name for reply in replies for name in reply)

    def recover(self) -> list[str]:
        """Jobs left in processing by a worker that died as a whole (its run locks are free):
        back to incoming and sent again, without waiting for the broker's visibility timeout.
        A late redelivery of the old task is then a no-op."""
        out = []
        data: dict[str, Any]
        for job_id in self.queue.recover():
            try:
                job = self.queue.get(job_id)
            except CallAnnotateError:
                continue
            log.warning("recovered a job of a lost worker", extra={"job_id": job_id})
            if job.state == JobState.QUEUED:
                self.submit(job_id)
                data = {"state": "queued", "attempts": job.attempts, "reason": job.error}
                self._announce(job, "job.queued", data)
            else:
                data = {"state": job.state.value, "error": job.error}
                self._announce(job, "job.failed", data)
            out.append(job_id)
        return out

    def _announce(self, job: Job, type_: JobEventType, data: dict[str, Any]) -> None:
        if self.on_event is not None:
            with contextlib.suppress(Exception):
                self.on_event(JobEvent(type=type_, job_id=job.id, owner=job.owner, data=data))

    def _ping_loop(self) -> None:
        last_recover = time.monotonic()
        last_retention = -RETENTION_INTERVAL_S  # a first pass at start-up, as the manager's
        while not self._stop.is_set():
            if time.monotonic() - last_retention >= RETENTION_INTERVAL_S:
                # no QueueManager runs beside Celery: the API applies the retention policy
                last_retention = time.monotonic()
                safe_retention_pass(self.queue, self.settings.queue)
            if time.monotonic() - last_recover >= self.settings.queue.lease_seconds:
                last_recover = time.monotonic()
                try:
                    self.recover()
                except Exception:
                    log.exception("recovering the jobs of lost workers failed")
            self._resend()
            try:
                names = self.ping()
            except Exception as exc:
                log.warning("could not ping the Celery workers", extra={"reason": str(exc)})
                names = []
            self._record_ping(names, time.monotonic())
            self._stop.wait(self.settings.jobs.ping_interval_s)

    def _record_ping(self, names: list[str], now: float) -> None:
        """Note the workers that answered at ``now`` (monotonic); forget those silent for
        ``jobs.worker_forget_after_s``, as their heartbeat records are: every restart of a
        worker is a new node name, and before, each one stayed in ``/info`` and in
        ``callannotate_workers_configured`` until the API restarted."""
        forget_after = self.settings.jobs.worker_forget_after_s
        with self._lock:
            for name in names:
                first = self._seen.get(name, (utcnow(), now))[0]
                self._seen[name] = (first, now)
            for name, (_, last) in list(self._seen.items()):
                if now - last > forget_after:
                    del self._seen[name]
            self._pinged = True

    def workers(self) -> list[WorkerInfo]:
        """The Celery workers (nodes) that answered the ping, each with a job its children
        run now (from their heartbeat records), so ``callannotate_workers_busy`` counts the
        nodes at work."""
        now = time.monotonic()
        lost_after = self.settings.jobs.worker_lost_after_s
        with self._lock:
            seen = dict(self._seen)
        running = self._running_by_node() if seen else {}
        return [
            WorkerInfo(
                name=name,
                pid=None,
                alive=now - last <= lost_after,
                ready=now - last <= lost_after,
                job_id=running.get(name),
                started_at=first,
            )
            for name, (first, last) in sorted(seen.items())
        ]

    def _running_by_node(self) -> dict[str, str]:
        """Node name -> a job one of its live children runs (heartbeat records)."""
        out: dict[str, str] = {}
        for record in WorkerRegistry.from_settings(self.settings).snapshot(clean=False):
            if record.executor == "celery" and not record.lost and record.jobs_running:
                out.setdefault(record.name, record.jobs_running[0])
        return out

    def readiness(self) -> tuple[bool, str]:
        with self._lock:
            pinged = self._pinged
        if not pinged:
            return False, "no answer from the Celery workers yet"
        live = [w for w in self.workers() if w.alive]
        if not live:
            return (
                False,
                "no Celery worker answered (is `callannotate worker --executor celery` running?)",
            )
        return True, f"ok ({len(live)} Celery workers)"
