"""QueueManager: hands queued jobs to a pool of worker processes and tracks them.

Runs as an asyncio service inside the API process (and in ``callannotate worker``). It owns
every queue transition of the jobs it runs: it claims a job (taking the job's run lock),
sends it to an idle worker process, writes progress into ``job.json`` (throttled), and
completes or fails it. Worker processes only compute. Partial transcript words from a worker
become ``job.partial`` events (not written to ``job.json``).

What runs a job is the :class:`~callannotate.jobs.runner.JobRunner` the manager is given,
inside worker processes running :func:`callannotate.jobs.worker.worker_main`.

Failure handling:

* a worker process that dies (crash, OOM kill, SIGKILL) -> its job goes back to incoming
  (``fail(retry=True)``, counted as an attempt) and a replacement worker starts;
* a job over ``workers.job_timeout_s`` -> its worker is asked to stop it (soft limit: the
  job fails with reason ``timeout`` and the worker keeps serving); a job still running
  ``workers.timeout_grace_s`` later has its worker killed (hard limit), fails the same way,
  and a replacement starts;
* ``workers.max_jobs_per_worker`` > 0 -> a worker process that ran that many jobs is
  stopped and replaced between jobs (memory creep over days of service);
* a cancel request (here or through the queue from another process) -> the worker is
  killed, the job finalised as cancelled, a replacement starts;
* graceful stop -> no new claims, running jobs get ``grace_s`` to finish, the rest are
  released to incoming without using up an attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import multiprocessing
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from callannotate.config import Settings
from callannotate.errors import CallAnnotateError, Conflict, NotFound
from callannotate.jobs.events import EventCallback, JobEvent, JobEventType
from callannotate.jobs.executors.base import WorkerInfo
from callannotate.jobs.filequeue import FileQueue
from callannotate.jobs.heartbeat import WorkerRegistry
from callannotate.jobs.models import Job, JobState, StepProgress, utcnow
from callannotate.jobs.retention import RETENTION_INTERVAL_S, safe_retention_pass
from callannotate.jobs.runner import JobRunner
from callannotate.jobs.speaker_contacts import resolve_result
from callannotate.jobs.worker import worker_main
from callannotate.observability.metrics import observe_model_load, observe_result

log = logging.getLogger(__name__)


async def sleep_until_set(event: asyncio.Event, timeout: float) -> None:
    """Wait until ``event`` is set or ``timeout`` passes, whichever comes first.

    Not ``asyncio.wait_for(event.wait(), timeout)``: on Python 3.11 that swallows a
    cancellation arriving while the event is being set, so a loop built on it can outlive
    ``task.cancel()`` and hang whoever awaits the task.
    """
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await event.wait()


PROGRESS_WRITE_INTERVAL_S = 0.5
CANCEL_CHECK_INTERVAL_S = 0.5
MAX_RESPAWN_DELAY_S = 30.0
TIMEOUT = "timeout"  # the reason of a job over its time limit (error text starts with it)


def timeout_reason(settings: Settings, *, killed: bool) -> str:
    """The error of a job over its time limit (every executor words it the same)."""
    limit, grace = settings.workers.job_timeout_s, settings.workers.timeout_grace_s
    reason = f"{TIMEOUT}: the job ran longer than workers.job_timeout_s ({limit:g} s)"
    if killed:
        reason += (
            f" and did not stop within workers.timeout_grace_s ({grace:g} s); "
            "its worker process was killed"
        )
    return reason


def apply_step_reports(progress: dict[str, StepProgress], steps: object) -> bool:
    """Final per-step statuses from an annotation's step reports (its ``steps`` list), for
    every executor; True when any step was set."""
    changed = False
    for report in steps if isinstance(steps, list) else []:
        name, status = str(report.get("name", "")), str(report.get("status", ""))
        if not name or status not in ("done", "skipped", "failed"):
            continue
        entry = progress.get(name) or StepProgress(step=name)
        entry.status = status
        if status == "done":
            entry.percent = 100.0
        progress[name] = entry
        changed = True
    return changed


@dataclass
class _Proc:
    """One worker process and the thread that reads its pipe."""

    process: BaseProcess
    conn: Connection
    started_at: datetime = field(default_factory=utcnow)
    ready: bool = False
    preload_error: str | None = None
    reader: threading.Thread | None = None
    jobs: int = 0  # jobs this process ran (recycling)


@dataclass
class _Slot:
    name: str
    proc: _Proc | None = None
    job: Job | None = None
    job_started: float = 0.0  # monotonic
    job_started_at: datetime | None = None
    progress: dict[str, StepProgress] = field(default_factory=dict)
    progress_dirty: bool = False
    progress_written: float = 0.0
    last_cancel_check: float = 0.0
    last_renew: float = 0.0
    stop_requested_at: float | None = None  # monotonic time of the soft time-limit request
    jobs_done: int = 0
    restarts: int = 0
    recycled: int = 0
    start_failures: int = 0  # consecutive worker deaths before "ready"
    respawn_at: float | None = None  # monotonic time of a delayed restart


class QueueManager:
    def __init__(
        self,
        queue: FileQueue,
        settings: Settings,
        runner: JobRunner,
        *,
        on_event: EventCallback | None = None,
        grace_s: float = 30.0,
    ) -> None:
        self.queue = queue
        self.settings = settings
        self.runner = runner
        self.on_event = on_event
        self.grace_s = grace_s
        self._ctx = multiprocessing.get_context("spawn")
        self._slots = [_Slot(name=f"w{i}") for i in range(settings.workers.concurrency)]
        self._loop: asyncio.AbstractEventLoop | None = None
        self._inbox: asyncio.Queue[tuple[_Proc, dict[str, Any] | None]] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._running = False
        self._stopping = False
        self._pending = 0
        self._accepting = False
        self._hard_stop: asyncio.Event | None = None
        self._wake: asyncio.Event | None = None
        self._claim_lock: asyncio.Lock | None = None
        self._host = socket.gethostname()
        self._registry = WorkerRegistry.from_settings(settings)  # heartbeat records

    # ------------------------------------------------------------------ public API

    async def start(self) -> None:
        if self._running:
            return
        self._loop = asyncio.get_running_loop()
        self._inbox = asyncio.Queue()
        self._hard_stop = asyncio.Event()
        self._wake = asyncio.Event()
        self._claim_lock = asyncio.Lock()
        recovered = await asyncio.to_thread(self.queue.recover)
        for job_id in recovered:
            with contextlib.suppress(CallAnnotateError):
                job = await asyncio.to_thread(self.queue.get, job_id)
                self._emit_state(job, reason=job.error)
        for slot in self._slots:
            await self._spawn(slot)
        self._running = True
        self._accepting = True
        self._tasks = [
            asyncio.create_task(self._inbox_loop(), name="queue-manager-inbox"),
            asyncio.create_task(self._dispatch_loop(), name="queue-manager-dispatch"),
        ]
        log.info("queue manager started", extra={"workers": len(self._slots)})

    async def stop(self, graceful: bool = True) -> None:
        """Stop taking work; running jobs finish within ``grace_s`` or go back to incoming."""
        if not self._running:
            return
        self._accepting = False
        self._stopping = True
        if self._claim_lock is not None:
            async with self._claim_lock:
                pass  # a claim in flight has been assigned to its slot
        if graceful and self._hard_stop is not None:
            deadline = time.monotonic() + self.grace_s
            while self._busy() and time.monotonic() < deadline:
                if self._hard_stop.is_set():
                    break
                await asyncio.sleep(0.05)
        # Whatever still runs goes back to incoming without using up an attempt.
        for slot in self._slots:
            job = slot.job
            if job is not None:
                slot.job = None
                await self._kill(slot)
                await self._finish(job, self.queue.release)
        # Let a completion or failure being written finish before the loops stop.
        deadline = time.monotonic() + 30.0
        while self._pending and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            _, stuck = await asyncio.wait(self._tasks, timeout=10.0)
            for task in stuck:
                log.error(
                    "queue manager task ignored cancellation", extra={"task": task.get_name()}
                )
        self._tasks = []
        for slot in self._slots:
            await self._shutdown_worker(slot)
        self._running = False
        self._stopping = False
        log.info("queue manager stopped")

    def _busy(self) -> bool:
        return self._pending > 0 or any(s.job is not None for s in self._slots)

    @contextlib.contextmanager
    def _handling(self) -> Iterator[None]:
        """Marks work (a job being finalised) that ``stop`` must not cut off midway."""
        self._pending += 1
        try:
            yield
        finally:
            self._pending -= 1

    def wake(self) -> None:
        """Look at the queue now rather than at the next poll (right after a submit).

        Safe from any thread (the API announces jobs from worker threads too).
        """
        loop, wake = self._loop, self._wake
        if loop is None or wake is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            wake.set()
        else:
            loop.call_soon_threadsafe(wake.set)

    def request_hard_stop(self) -> None:
        """Cut a graceful stop short (second SIGTERM/SIGINT)."""
        self._accepting = False
        if self._hard_stop is not None:
            self._hard_stop.set()

    async def cancel(self, job_id: str) -> Job:
        """Cancel a queued or running job; finished jobs raise Conflict."""
        slot = self._slot_of(job_id)
        if slot is not None and slot.job is not None:
            slot.job = None
            await self._kill(slot)
            result = await asyncio.to_thread(self.queue.mark_cancelled, job_id)
            self._emit_state(result)
            await self._respawn(slot)
            return result
        result = await asyncio.to_thread(self.queue.cancel, job_id)
        if result.state == JobState.CANCELLED:
            self._emit_state(result)
        return result

    def workers(self) -> list[WorkerInfo]:
        out: list[WorkerInfo] = []
        for slot in self._slots:
            proc = slot.proc
            out.append(
                WorkerInfo(
                    name=slot.name,
                    pid=proc.process.pid if proc is not None else None,
                    alive=proc is not None and proc.process.is_alive(),
                    ready=proc is not None and proc.ready,
                    job_id=slot.job.id if slot.job is not None else None,
                    started_at=proc.started_at if proc is not None else utcnow(),
                    job_started_at=slot.job_started_at if slot.job is not None else None,
                    jobs_done=slot.jobs_done,
                    restarts=slot.restarts,
                    recycled=slot.recycled,
                    preload_error=proc.preload_error if proc is not None else None,
                )
            )
        return out

    def running(self) -> bool:
        """True while the manager's loops run (between ``start`` and ``stop``)."""
        return self._running and not any(t.done() for t in self._tasks)

    def alive(self) -> bool:
        """True while the manager runs and every worker process is alive."""
        if not self._running or any(t.done() for t in self._tasks):
            return False
        return all(s.proc is not None and s.proc.process.is_alive() for s in self._slots)

    # ------------------------------------------------------------------ worker processes

    def _worker_id(self, slot: _Slot) -> str:
        return f"{self._host}:{os.getpid()}:{slot.name}"

    async def _spawn(self, slot: _Slot) -> None:
        parent, child = self._ctx.Pipe(duplex=True)
        process = self._ctx.Process(
            target=worker_main,
            args=(child, self.settings, slot.name, self.runner),
            name=f"callannotate-{slot.name}",
            daemon=True,
        )
        await asyncio.to_thread(process.start)
        child.close()
        proc = _Proc(process=process, conn=parent)
        proc.reader = threading.Thread(
            target=self._read_pipe, args=(proc,), name=f"pipe-{slot.name}", daemon=True
        )
        proc.reader.start()
        slot.proc = proc
        log.info("worker started", extra={"worker": slot.name, "pid": process.pid})

    def _read_pipe(self, proc: _Proc) -> None:
        """Thread: forward every message of one worker to the event loop; None means EOF."""
        loop, inbox = self._loop, self._inbox
        assert loop is not None and inbox is not None
        while True:
            try:
                msg = proc.conn.recv()
            except (EOFError, OSError):
                msg = None
            except Exception:  # an unpicklable message: treat the worker as broken
                log.exception("bad message from worker")
                msg = None
            try:
                loop.call_soon_threadsafe(inbox.put_nowait, (proc, msg))
            except RuntimeError:
                return  # the loop is closed
            if msg is None:
                return

    async def _kill(self, slot: _Slot) -> None:
        proc = slot.proc
        if proc is None:
            return
        slot.proc = None
        if proc.process.is_alive():
            proc.process.kill()
        await asyncio.to_thread(proc.process.join, 10)
        self._forget_record(proc)
        with contextlib.suppress(OSError):
            proc.conn.close()

    def _forget_record(self, proc: _Proc) -> None:
        """Delete the heartbeat record of a worker process we reaped (known gone, replaced;
        not a lost worker)."""
        pid = proc.process.pid
        if pid is not None and not proc.process.is_alive():
            with contextlib.suppress(OSError):
                self._registry.remove(self._host, pid)

    async def _respawn(self, slot: _Slot, *, failed_start: bool = False) -> None:
        """Replace a worker; one that keeps dying before it is ready is restarted with backoff."""
        if not self._running or self._stopping:
            return
        slot.restarts += 1
        if failed_start:
            slot.start_failures += 1
            delay = min(MAX_RESPAWN_DELAY_S, 0.5 * 2 ** (slot.start_failures - 1))
            slot.respawn_at = time.monotonic() + delay
            log.warning(
                "worker died while starting; restarting later",
                extra={"worker": slot.name, "delay_s": delay},
            )
            return
        await self._spawn(slot)

    async def _recycle(self, slot: _Slot) -> None:
        """Replace an idle worker process that ran ``workers.max_jobs_per_worker`` jobs."""
        if not self._running or self._stopping:
            return
        log.info("recycling worker", extra={"worker": slot.name, "jobs": slot.jobs_done})
        await self._shutdown_worker(slot)
        slot.recycled += 1
        await self._spawn(slot)

    async def _shutdown_worker(self, slot: _Slot) -> None:
        proc = slot.proc
        if proc is None:
            return
        slot.proc = None
        with contextlib.suppress(OSError):
            proc.conn.send({"type": "stop"})
        await asyncio.to_thread(proc.process.join, 5)
        if proc.process.is_alive():
            proc.process.kill()
            await asyncio.to_thread(proc.process.join, 5)
        self._forget_record(proc)
        with contextlib.suppress(OSError):
            proc.conn.close()

    def _slot_of(self, job_id: str) -> _Slot | None:
        for slot in self._slots:
            if slot.job is not None and slot.job.id == job_id:
                return slot
        return None

    # ------------------------------------------------------------------ events

    def _emit(self, type_: JobEventType, job: Job, data: dict[str, Any]) -> None:
        if self.on_event is None:
            return
        try:
            self.on_event(JobEvent(type=type_, job_id=job.id, owner=job.owner, data=data))
        except Exception:
            log.exception("event subscriber failed", extra={"job_id": job.id})

    def _emit_state(self, job: Job, reason: str | None = None) -> None:
        if job.state == JobState.QUEUED:
            data: dict[str, Any] = {"state": job.state.value, "attempts": job.attempts}
            if reason:
                data["reason"] = reason
            self._emit("job.queued", job, data)
        elif job.state == JobState.COMPLETED:
            self._emit("job.completed", job, {"attempts": job.attempts})
        elif job.state in (JobState.FAILED, JobState.CANCELLED):
            data = {"state": job.state.value, "error": job.error}
            if job.state == JobState.FAILED and (job.error or "").startswith(TIMEOUT + ":"):
                data["reason"] = TIMEOUT
            self._emit("job.failed", job, data)

    # ------------------------------------------------------------------ loops

    async def _dispatch_loop(self) -> None:
        assert self._wake is not None
        last_archive = 0.0
        last_recover = time.monotonic()
        poll = self.settings.queue.poll_interval
        while True:
            try:
                now = time.monotonic()
                with self._handling():
                    await self._supervise(now)
                if self._accepting:
                    await self._dispatch()
                if now - last_archive >= RETENTION_INTERVAL_S:
                    last_archive = now
                    await asyncio.to_thread(safe_retention_pass, self.queue, self.settings.queue)
                if now - last_recover >= self.settings.queue.lease_seconds:
                    # Another process on this queue may have died since start-up.
                    last_recover = now
                    for job_id in await asyncio.to_thread(self.queue.recover):
                        log.warning("took over an orphaned job", extra={"job_id": job_id})
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("queue manager loop error")
            self._wake.clear()
            await sleep_until_set(self._wake, poll)

    async def _dispatch(self) -> None:
        assert self._claim_lock is not None
        for slot in self._slots:
            proc = slot.proc
            if slot.job is not None or proc is None or not proc.ready:
                continue
            if not proc.process.is_alive():
                continue  # the inbox loop replaces it
            async with self._claim_lock:
                if not self._accepting:
                    return
                job = await asyncio.to_thread(self.queue.claim, self._worker_id(slot))
                if job is None:
                    return  # nothing queued
                slot.job = job
            slot.job_started = time.monotonic()
            slot.job_started_at = utcnow()
            slot.progress = {}
            slot.progress_dirty = False
            slot.progress_written = 0.0
            slot.last_cancel_check = slot.job_started
            slot.last_renew = slot.job_started
            slot.stop_requested_at = None
            self._emit("job.started", job, {"worker": slot.name, "attempt": job.attempts})
            try:
                audio = await asyncio.to_thread(self.queue.audio_path, job.id)
                proc.conn.send(
                    {
                        "type": "job",
                        "job_id": job.id,
                        "audio": str(audio),
                        "options": job.options.model_dump(mode="json"),
                        "filename": job.audio.filename,
                        "request_id": job.request_id,
                        "owner": job.owner,  # speakers are matched against their voices only
                    }
                )
            except (OSError, ValueError):
                # The pipe broke: the worker is dead; the inbox loop sees EOF and requeues.
                log.warning("could not hand a job to its worker", extra={"job_id": job.id})

    async def _over_time_limit(self, slot: _Slot, job: Job, now: float) -> bool:
        """Soft, then hard time limit of a running job; True when the job was ended here."""
        workers = self.settings.workers
        if slot.stop_requested_at is None:
            if now - slot.job_started <= workers.job_timeout_s:
                return False
            slot.stop_requested_at = now
            log.warning("job over its time limit; asking it to stop", extra={"job_id": job.id})
            if slot.proc is not None:
                with contextlib.suppress(OSError, ValueError):  # a dead worker: EOF handles it
                    slot.proc.conn.send({"type": "stop_job", "job_id": job.id, "reason": TIMEOUT})
            return False
        if now - slot.stop_requested_at <= workers.timeout_grace_s:
            return False
        slot.job = None
        await self._kill(slot)
        log.warning("job ignored its time limit; worker killed", extra={"job_id": job.id})
        reason = timeout_reason(self.settings, killed=True)
        await self._finish(job, lambda jid: self.queue.fail(jid, reason))
        await self._respawn(slot)
        return True

    async def _supervise(self, now: float) -> None:
        renew_every = self.settings.queue.lease_seconds / 3
        for slot in self._slots:
            job = slot.job
            if job is None:
                proc = slot.proc
                if proc is None and slot.respawn_at is not None and now >= slot.respawn_at:
                    slot.respawn_at = None
                    await self._spawn(slot)
                elif proc is not None and not proc.process.is_alive() and self._running:
                    # An idle worker died; its pipe EOF may still be in flight.
                    await self._kill(slot)
                    await self._respawn(slot, failed_start=not proc.ready)
                continue
            if await self._over_time_limit(slot, job, now):
                continue
            if now - slot.last_cancel_check >= CANCEL_CHECK_INTERVAL_S:
                slot.last_cancel_check = now
                await self._check_cancel(slot, job)
                if slot.job is None:
                    continue
            if now - slot.last_renew >= renew_every:
                slot.last_renew = now
                with contextlib.suppress(CallAnnotateError):
                    await asyncio.to_thread(self.queue.renew, job.id, self._worker_id(slot))
            if slot.progress_dirty and now - slot.progress_written >= PROGRESS_WRITE_INTERVAL_S:
                await self._write_progress(slot, job)

    async def _check_cancel(self, slot: _Slot, job: Job) -> None:
        """Stop a job cancelled or deleted through the queue (possibly by another process)."""
        try:
            current = await asyncio.to_thread(self.queue.get, job.id)
        except NotFound:
            current = None
        if current is not None and not current.cancel_requested:
            return
        if slot.job is None or slot.job.id != job.id:
            return
        slot.job = None
        await self._kill(slot)
        if current is None:
            log.info("running job was deleted; worker stopped", extra={"job_id": job.id})
            self.queue.forget(job.id)
        else:
            await self._finish(job, self.queue.mark_cancelled)
        await self._respawn(slot)

    async def _write_progress(self, slot: _Slot, job: Job) -> None:
        slot.progress_dirty = False
        slot.progress_written = time.monotonic()
        # Cancelled or deleted meanwhile: the supervisor handles that.
        with contextlib.suppress(CallAnnotateError):
            await asyncio.to_thread(
                self.queue.update_progress, job.id, list(slot.progress.values())
            )

    async def _finish(self, job: Job, action: Callable[[str], Job]) -> Job | None:
        """Run one final queue transition (complete/fail/release/...) and emit its event."""
        try:
            result: Job = await asyncio.to_thread(action, job.id)
        except (NotFound, Conflict) as exc:
            self.queue.forget(job.id)  # deleted meanwhile: drop our run lock of it
            log.warning(
                "job left the processing folder before it finished",
                extra={"job_id": job.id, "reason": exc.detail},
            )
            return None
        self._emit_state(result, reason=result.error)
        return result

    async def _inbox_loop(self) -> None:
        assert self._inbox is not None
        while True:
            proc, msg = await self._inbox.get()
            try:
                with self._handling():
                    await self._handle(proc, msg)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("error handling a worker message")

    async def _handle(self, proc: _Proc, msg: dict[str, Any] | None) -> None:
        slot = next((s for s in self._slots if s.proc is proc), None)
        if slot is None:
            return  # a worker we already killed and replaced
        kind = None if msg is None else msg.get("type")
        if kind == "ready":
            assert msg is not None
            proc.ready = True
            slot.start_failures = 0
            proc.preload_error = msg.get("preload_error")
            observe_model_load(msg.get("load_seconds"))
            if proc.preload_error:
                log.warning(
                    "worker could not load every model",
                    extra={"worker": slot.name, "reason": proc.preload_error},
                )
            assert self._wake is not None
            self._wake.set()
            return
        job = slot.job
        if kind == "progress":
            assert msg is not None
            if job is None or msg.get("job_id") != job.id:
                return
            self._on_progress(slot, job, msg)
            return
        if kind == "partial":
            assert msg is not None
            if job is None or msg.get("job_id") != job.id:
                return
            self._on_partial(job, msg)
            return
        if kind in ("done", "error"):
            assert msg is not None
            if job is None or msg.get("job_id") != job.id:
                return
            proc.jobs += 1
            limit = self.settings.workers.max_jobs_per_worker
            retire = bool(limit) and proc.jobs >= limit
            if retire:
                proc.ready = False  # no new job for this process: it is replaced below
            slot.job = None
            if slot.progress_dirty:
                await self._write_progress(slot, job)
            if kind == "done":
                result = str(msg["result"])
                await self._complete(slot, job, result)
            else:
                error = str(msg.get("error") or "unknown error")
                if msg.get("reason") == TIMEOUT:
                    error = timeout_reason(self.settings, killed=False)
                # transient: back to the queue while queue.max_attempts allow (job.history)
                retry = bool(msg.get("transient"))
                await self._finish(job, lambda jid: self.queue.fail(jid, error, retry=retry))
            slot.jobs_done += 1
            if retire:
                await self._recycle(slot)
            assert self._wake is not None
            self._wake.set()
            return
        # EOF: the worker process died.
        await self._kill(slot)
        code = proc.process.exitcode
        if job is not None:
            slot.job = None
            reason = f"worker process died (exit code {code})"
            log.warning("worker died mid-job", extra={"job_id": job.id, "reason": reason})
            await self._finish(job, lambda jid: self.queue.fail(jid, reason, retry=True))
        else:
            log.warning("idle worker died", extra={"worker": slot.name, "exit_code": code})
        await self._respawn(slot, failed_start=not proc.ready)

    def _on_progress(self, slot: _Slot, job: Job, msg: dict[str, Any]) -> None:
        step = str(msg["step"])
        completed = int(msg["completed"])
        total = int(msg["total"])
        done = total > 0 and completed >= total
        percent = round(100.0 * completed / total, 1) if total > 0 else 0.0
        for other in slot.progress.values():
            if other.step != step and other.status == "running":
                other.status = "done"
                other.percent = 100.0
        slot.progress[step] = StepProgress(
            step=step,
            completed=completed,
            total=total,
            percent=percent,
            status="done" if done else "running",
        )
        slot.progress_dirty = True
        self._emit(
            "job.progress",
            job,
            {
                "step": step,
                "completed": completed,
                "total": total,
                "percent": percent,
                "progress": [p.model_dump() for p in slot.progress.values()],
            },
        )

    def _on_partial(self, job: Job, msg: dict[str, Any]) -> None:
        words = msg.get("words")
        if not isinstance(words, list) or not words:
            return
        self._emit(
            "job.partial", job, {"step": str(msg.get("step") or "transcribe"), "words": words}
        )

    async def _complete(self, slot: _Slot, job: Job, result: str) -> None:
        # Final per-step statuses come from the annotation's own step reports.
        try:
            doc = json.loads(result)
            steps = doc.get("steps", [])
        except (ValueError, AttributeError):
            doc, steps = {}, []
        if isinstance(doc, dict):
            observe_result(doc, time.monotonic() - slot.job_started)
        if apply_step_reports(slot.progress, steps):
            slot.progress_dirty = True
            await self._write_progress(slot, job)
        # speakers become people: contacts from linked voices and the call's numbers
        payload = await asyncio.to_thread(resolve_result, self.settings, job, result.encode())
        await self._finish(job, lambda jid: self.queue.complete(jid, payload))
