"""Worker processes: preload once, then run the jobs the manager sends with a job runner.

A worker is started by :class:`callannotate.jobs.manager.QueueManager` with the
multiprocessing "spawn" context and talks to it over one duplex pipe; what it runs is the
:class:`~callannotate.jobs.runner.JobRunner` the manager was given (the pipeline in
production, fakes in tests). Messages are small dicts:

manager -> worker
    ``{"type": "job", "job_id", "audio", "options", "filename", "request_id"}``;
    ``{"type": "stop_job", "job_id", "reason"}`` (soft time limit: the job's next progress
    report raises :class:`~callannotate.jobs.runner.JobStopped`, the worker keeps serving);
    ``{"type": "stop"}``
worker -> manager
    ``{"type": "ready", "pid", "preload_error", "load_seconds": {step: s}}`` once at start;
    ``{"type": "progress", "job_id", "step", "completed", "total"}`` while a job runs;
    ``{"type": "partial", "job_id", "step", "words": [Word JSON, ...]}`` with transcribed words
    as they are decoded (batched: at most one message per ``PARTIAL_MIN_INTERVAL_S`` or per
    ``PARTIAL_MAX_WORDS`` words, plus what is left when a step ends and when the job ends);
    ``{"type": "done", "job_id", "result"}`` (the Annotation JSON) or
    ``{"type": "error", "job_id", "error", "reason"?, "transient"?}`` when it ends
    (``reason``: ``timeout`` for a job stopped on request; ``transient``: the error is worth
    another attempt, see :func:`callannotate.resilience.retry.is_transient`).

The worker holds no queue locks: the manager owns the job while the worker computes, so a
worker that dies (even by SIGKILL) leaves nothing half-written in the queue.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import signal
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from callannotate.config import Settings
from callannotate.errors import CallAnnotateError
from callannotate.jobs.heartbeat import start_heartbeat
from callannotate.jobs.runner import JobContext, JobRequest, JobRunner, JobStopped
from callannotate.observability.logging import configure_logging, job_context, request_context
from callannotate.resilience.retry import is_transient

if TYPE_CHECKING:
    from callannotate.pipeline.types import Word

log = logging.getLogger(__name__)

PROGRESS_MIN_INTERVAL_S = 0.1
PARTIAL_MIN_INTERVAL_S = 0.5
PARTIAL_MAX_WORDS = 200


class _PartialWords:
    """The pipeline's ``on_words`` hook: batches words into few ``partial`` messages.

    The first batch goes at once, later ones at most every ``PARTIAL_MIN_INTERVAL_S`` (or
    when ``PARTIAL_MAX_WORDS`` are waiting); :meth:`flush` sends what is left. Everything
    runs on the job's thread, so the pipe is never written from two threads at once, and
    the cost per word is one ``model_dump``.
    """

    def __init__(self, conn: Connection, job_id: str, step: str) -> None:
        self.conn = conn
        self.job_id = job_id
        self.step = step
        self.pending: list[dict[str, Any]] = []
        self.last_sent: float | None = None

    def __call__(self, words: list[Word]) -> None:
        self.pending.extend(w.model_dump(mode="json", exclude_none=True) for w in words)
        if len(self.pending) >= PARTIAL_MAX_WORDS:
            self.flush()
        else:
            self.flush_if_due()

    def flush_if_due(self) -> None:
        now = time.monotonic()
        if self.last_sent is None or now - self.last_sent >= PARTIAL_MIN_INTERVAL_S:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        words, self.pending = self.pending, []
        self.last_sent = time.monotonic()
        self.conn.send(
            {"type": "partial", "job_id": self.job_id, "step": self.step, "words": words}
        )


class _Control:
    """The job the worker runs now and whether the manager asked it to stop (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._job_id: str | None = None
        self._stop: str | None = None

    def begin(self, job_id: str) -> None:
        with self._lock:
            self._job_id, self._stop = job_id, None

    def end(self) -> None:
        with self._lock:
            self._job_id, self._stop = None, None

    def request_stop(self, job_id: str, reason: str) -> None:
        with self._lock:
            if self._job_id == job_id:
                self._stop = reason

    def current(self) -> str | None:
        """The id of the job running now, if any."""
        with self._lock:
            return self._job_id

    def check(self) -> None:
        """Raise :class:`JobStopped` when the running job was asked to stop."""
        reason = self._stop
        if reason is not None:
            raise JobStopped(reason)


def _run_job(
    conn: Connection,
    settings: Settings,
    runner: JobRunner,
    control: _Control,
    msg: dict[str, Any],
) -> dict[str, Any]:
    job_id = str(msg["job_id"])
    last_sent: dict[str, float] = {}
    partial = _PartialWords(conn, job_id, "transcribe")

    def hook(step: str, *, completed: int, total: int) -> None:
        control.check()
        now = time.monotonic()
        final = total > 0 and completed >= total
        # words decoded so far go out before the progress that follows them
        if final:
            partial.flush()
        else:
            partial.flush_if_due()
        if not final and now - last_sent.get(step, 0.0) < PROGRESS_MIN_INTERVAL_S:
            return
        last_sent[step] = now
        conn.send(
            {
                "type": "progress",
                "job_id": job_id,
                "step": step,
                "completed": int(completed),
                "total": int(total),
            }
        )

    def on_words(words: list[Word]) -> None:
        control.check()
        partial(words)

    request = JobRequest(
        job_id=job_id,
        audio=Path(str(msg["audio"])),
        options=dict(msg["options"]),
        filename=msg.get("filename"),
        owner=msg.get("owner"),
    )
    control.begin(job_id)
    try:
        control.check()
        # every log line of the job carries its id and the id of the request that queued it
        with job_context(job_id), request_context(msg.get("request_id")):
            result = runner.run(
                request, JobContext(settings=settings, hook=hook, on_words=on_words)
            )
        partial.flush()
    except JobStopped as stop:
        log.warning("job stopped in worker", extra={"job_id": job_id, "reason": stop.reason})
        return {"type": "error", "job_id": job_id, "error": stop.reason, "reason": stop.reason}
    except CallAnnotateError as exc:
        return {"type": "error", "job_id": job_id, "error": f"{exc.code}: {exc.detail}"}
    except Exception as exc:  # the job fails; the worker keeps serving
        log.exception("job failed in worker", extra={"job_id": job_id})
        error = f"{type(exc).__name__}: {exc}"
        # a transient error (temporary I/O, a dependency down) is worth another attempt;
        # domain errors above (undecodable audio, invalid options) never are
        return {"type": "error", "job_id": job_id, "error": error, "transient": is_transient(exc)}
    finally:
        control.end()
    return {"type": "done", "job_id": job_id, "result": result}


def _read_pipe(
    conn: Connection, control: _Control, jobs: queue.SimpleQueue[dict[str, Any] | None]
) -> None:
    """Thread: take the manager's messages while the main thread runs a job.

    ``job`` messages queue up for the main thread; ``stop_job`` flags the running job (the
    next progress report raises :class:`JobStopped`); ``stop`` and EOF end the worker.
    """
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            msg = None
        if not isinstance(msg, dict) or msg.get("type") == "stop":
            jobs.put(None)
            return
        if msg.get("type") == "stop_job":
            control.request_stop(str(msg.get("job_id")), str(msg.get("reason") or "stopped"))
        elif msg.get("type") == "job":
            jobs.put(msg)


def _exit_with_parent(interval: float = 1.0) -> None:
    """Thread: end this worker when the manager process dies, even in the middle of a job.

    The job's run lock died with the manager, so another process may already be running
    it again; finishing our copy would only waste CPU (and we could not report it).
    """
    parent = os.getppid()
    while True:
        time.sleep(interval)
        if os.getppid() != parent:
            os._exit(1)


def worker_main(conn: Connection, settings: Settings, name: str, runner: JobRunner) -> None:
    """Entry point of a worker process (multiprocessing target).

    ``settings`` and ``runner`` arrive pickled (not JSON-dumped) so secret fields keep their
    values.
    """
    # The manager decides when a worker stops: Ctrl-C in a terminal (SIGINT) and a service
    # manager's SIGTERM reach the whole process group, and a worker must not die mid-job
    # because of them (the job would burn an attempt). The manager stops idle workers with
    # a "stop" message, asks a job over its time limit to stop ("stop_job") and kills a
    # worker with SIGKILL once a grace period is over; a worker whose manager is gone exits.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    threading.Thread(target=_exit_with_parent, name="parent-watch", daemon=True).start()
    configure_logging(settings.log)
    control = _Control()
    jobs: queue.SimpleQueue[dict[str, Any] | None] = queue.SimpleQueue()
    threading.Thread(
        target=_read_pipe, args=(conn, control, jobs), name="pipe-reader", daemon=True
    ).start()
    preload_error = runner.preload(settings)
    log.info("worker ready", extra={"worker": name, "models_ok": preload_error is None})
    done = [0]  # jobs finished, for the heartbeat record

    def running() -> tuple[list[str], int]:
        job_id = control.current()
        return ([job_id] if job_id else []), done[0]

    heartbeat = start_heartbeat(
        settings,
        executor="local",
        name=name,
        concurrency=settings.workers.concurrency,
        queues=["local"],
        running=running,
        runner=runner,
        preload_error=preload_error,
    )
    try:
        load_seconds = getattr(runner, "load_seconds", None)  # per step, for the metrics
        conn.send(
            {
                "type": "ready",
                "pid": os.getpid(),
                "preload_error": preload_error,
                "load_seconds": dict(load_seconds) if isinstance(load_seconds, dict) else {},
            }
        )
        while (msg := jobs.get()) is not None:
            out = _run_job(conn, settings, runner, control, msg)
            done[0] += 1
            conn.send(out)
    except (BrokenPipeError, EOFError, OSError):
        pass  # the manager went away while we talked to it
    finally:
        heartbeat.stop(remove=True)
        with contextlib.suppress(OSError):
            conn.close()
