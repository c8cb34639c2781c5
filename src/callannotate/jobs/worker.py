"""Worker processes: load the models once, then annotate the jobs the manager sends.

A worker is started by :class:`callannotate.jobs.manager.QueueManager` with the
multiprocessing "spawn" context and talks to it over one duplex pipe. Messages are small
dicts:

manager -> worker
    ``{"type": "job", "job_id", "audio", "options", "filename"}`` and ``{"type": "stop"}``
worker -> manager
    ``{"type": "ready", "pid", "preload_error"}`` once at start;
    ``{"type": "progress", "job_id", "step", "completed", "total"}`` while a job runs;
    ``{"type": "partial", "job_id", "step", "words": [Word JSON, ...]}`` with transcribed words
    as they are decoded (batched: at most one message per ``PARTIAL_MIN_INTERVAL_S`` or per
    ``PARTIAL_MAX_WORDS`` words, plus what is left when a step ends and when the job ends);
    ``{"type": "done", "job_id", "result"}`` (the Annotation JSON) or
    ``{"type": "error", "job_id", "error"}`` when it ends.

The worker holds no queue locks: the manager owns the job while the worker computes, so a
worker that dies (even by SIGKILL) leaves nothing half-written in the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from callannotate.config import Settings
from callannotate.errors import CallAnnotateError
from callannotate.observability.logging import configure_logging, job_context

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


def _preload(settings: Settings) -> str | None:
    """Load the configured models; a model that cannot load is reported, not fatal."""
    if not settings.workers.preload_models:
        return None
    from callannotate.pipeline import registry

    errors: list[str] = []
    try:
        steps = registry.configured_steps(settings)
    except Exception as exc:
        return f"models config: {exc}"
    for step in steps:
        try:
            registry.preload(settings, [step])
        except Exception as exc:  # any import/model error: report it, keep serving
            errors.append(f"{step}: {type(exc).__name__}: {exc}")
    if errors:
        message = "; ".join(errors)
        log.warning("models not loaded at worker start", extra={"reason": message})
        return message
    return None


def _run_job(conn: Connection, settings: Settings, msg: dict[str, Any]) -> dict[str, Any]:
    from callannotate.pipeline.run import annotate
    from callannotate.pipeline.types import AnnotateOptions, Step

    job_id = str(msg["job_id"])
    last_sent: dict[str, float] = {}
    partial = _PartialWords(conn, job_id, Step.TRANSCRIBE.value)

    def hook(step: str, *, completed: int, total: int) -> None:
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

    try:
        options = AnnotateOptions.model_validate(msg["options"])
        with job_context(job_id):
            annotation = annotate(
                Path(str(msg["audio"])),
                options,
                settings=settings,
                hook=hook,
                filename=msg.get("filename"),
                on_words=partial,
            )
        partial.flush()
    except CallAnnotateError as exc:
        return {"type": "error", "job_id": job_id, "error": f"{exc.code}: {exc.detail}"}
    except Exception as exc:  # the job fails; the worker keeps serving
        log.exception("job failed in worker", extra={"job_id": job_id})
        return {"type": "error", "job_id": job_id, "error": f"{type(exc).__name__}: {exc}"}
    return {"type": "done", "job_id": job_id, "result": annotation.model_dump_json()}


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


def worker_main(conn: Connection, settings: Settings, name: str) -> None:
    """Entry point of a worker process (multiprocessing target).

    ``settings`` arrives pickled (not JSON-dumped) so secret fields keep their values.
    """
    # The manager decides when a worker stops: Ctrl-C in a terminal (SIGINT) and a service
    # manager's SIGTERM reach the whole process group, and a worker must not die mid-job
    # because of them (the job would burn an attempt). The manager stops idle workers with
    # a "stop" message and kills busy ones with SIGKILL once the grace period is over; a
    # worker whose manager is gone exits when it next reads its pipe.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    threading.Thread(target=_exit_with_parent, name="parent-watch", daemon=True).start()
    configure_logging(settings.log)
    preload_error = _preload(settings)
    log.info("worker ready", extra={"worker": name, "models_ok": preload_error is None})
    try:
        conn.send({"type": "ready", "pid": os.getpid(), "preload_error": preload_error})
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                break  # the manager is gone
            if not isinstance(msg, dict) or msg.get("type") == "stop":
                break
            if msg.get("type") == "job":
                conn.send(_run_job(conn, settings, msg))
    except (BrokenPipeError, EOFError, OSError):
        pass  # the manager went away while we talked to it
    finally:
        with contextlib.suppress(OSError):
            conn.close()


def run_standalone_worker(settings: Settings) -> None:
    """``callannotate worker``: a worker pool on the queue folder, no HTTP.

    Exits on SIGTERM/SIGINT: stops taking work, lets running jobs finish within the grace
    period and returns the others to incoming. A second signal stops at once (running jobs
    go back to incoming).
    """
    from callannotate.jobs.filequeue import FileQueue
    from callannotate.jobs.manager import QueueManager

    async def main() -> None:
        queue = FileQueue(settings.queue_dir, settings.queue)
        manager = QueueManager(queue, settings)
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        signals = 0

        def on_signal() -> None:
            nonlocal signals
            signals += 1
            if signals == 1:
                log.info("stopping: no new jobs; running jobs finish or go back to the queue")
                stop.set()
            else:
                log.info("stopping now: running jobs go back to the queue")
                manager.request_hard_stop()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal)
        await manager.start()
        log.info(
            "worker pool started",
            extra={"queue": str(settings.queue_dir), "workers": settings.workers.concurrency},
        )
        try:
            await stop.wait()
        finally:
            await manager.stop(graceful=True)
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)

    asyncio.run(main())
