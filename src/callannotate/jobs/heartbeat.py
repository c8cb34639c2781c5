"""The worker registry: every worker process writes a heartbeat record in the data folder.

Every process that runs jobs (a local executor's worker process, a Celery worker child)
writes ``data_dir/workers/<host>-<pid>.json`` every ``jobs.heartbeat_interval_s``: host, pid,
executor, concurrency of its pool, the jobs it runs now, the models it has loaded, its memory
(RSS) and start time. The API (``GET /admin/workers``, ``callannotate status``) and the
metrics read the folder; a record whose heartbeat is older than ``jobs.worker_lost_after_s``
is a lost worker, and one older than ``jobs.worker_forget_after_s`` is deleted.

Why files and not the relational store: the data folder is already what every executor
shares (the queue lives there, on one machine or on a shared volume), a worker needs no
database connection to report itself, and a heartbeat every few seconds per process would
be write traffic on the store for nothing. Each record is written by one process only, with
write-temp + ``rename(2)``, so readers see a whole record or the previous one.

A worker that stops normally deletes its record; one that dies leaves it behind, which is
how it shows as lost. The local executor's manager also deletes the record of a worker
process it reaped (it knows that one is gone and replaced).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import tempfile
import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from callannotate.config import Settings
from callannotate.jobs.fsutil import PRIVATE_FILE, private_dir
from callannotate.jobs.models import utcnow

log = logging.getLogger(__name__)

WORKERS_FOLDER = "workers"
ExecutorName = Literal["local", "celery"]


class WorkerRecord(BaseModel):
    """What one worker process says about itself in its heartbeat file."""

    # Records come from other processes, possibly another version during a rolling upgrade:
    # fields this version does not know are ignored rather than hiding the worker.
    model_config = ConfigDict(extra="ignore")

    id: str = Field(description="<host>-<pid>, the record's file name.")
    host: str
    pid: int
    executor: ExecutorName
    name: str = Field(description="Slot name (local) or Celery node name (celery).")
    concurrency: int = Field(description="Worker processes of the pool this one belongs to.")
    queues: list[str] = Field(description="Queues it takes jobs from.")
    jobs_running: list[str] = Field(description="Ids of the jobs it runs now.")
    jobs_done: int = Field(0, description="Jobs it finished since it started.")
    models_loaded: list[str] = Field(description="Pipeline steps whose model it has loaded.")
    preload_error: str | None = Field(None, description="Why a model did not load at start.")
    rss_bytes: int = Field(description="Resident memory of the process (psutil).")
    started_at: datetime
    heartbeat_at: datetime


class WorkerStatus(WorkerRecord):
    """A record as the registry reads it: with its heartbeat age and whether it is lost."""

    heartbeat_age_s: float
    lost: bool = Field(description="Heartbeat older than jobs.worker_lost_after_s.")


def workers_dir(settings: Settings) -> Path:
    return settings.data_dir / WORKERS_FOLDER


def record_id(host: str, pid: int) -> str:
    return f"{host}-{pid}"


def _write_replace(path: Path, data: bytes) -> None:
    """Temp file + rename: readers see the old or the new record, never half of one.

    No fsync: a heartbeat lost in a power cut is worth nothing anyway.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, PRIVATE_FILE)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


class WorkerRegistry:
    """The heartbeat records under ``data_dir/workers``."""

    def __init__(self, root: Path, *, lost_after_s: float, forget_after_s: float) -> None:
        self.root = Path(root)
        self.lost_after_s = lost_after_s
        self.forget_after_s = forget_after_s

    @classmethod
    def from_settings(cls, settings: Settings) -> WorkerRegistry:
        return cls(
            workers_dir(settings),
            lost_after_s=settings.jobs.worker_lost_after_s,
            forget_after_s=settings.jobs.worker_forget_after_s,
        )

    def path(self, host: str, pid: int) -> Path:
        return self.root / f"{record_id(host, pid)}.json"

    def write(self, record: WorkerRecord) -> None:
        private_dir(self.root)
        _write_replace(self.path(record.host, record.pid), record.model_dump_json().encode())

    def remove(self, host: str, pid: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(host, pid).unlink()

    def snapshot(self, now: datetime | None = None, *, clean: bool = True) -> list[WorkerStatus]:
        """Every worker's record with its heartbeat age; with ``clean``, records older than
        ``forget_after_s`` are deleted (and left out)."""
        now = now or utcnow()
        out: list[WorkerStatus] = []
        try:
            files = sorted(self.root.glob("*.json"))
        except OSError:
            return out
        for file in files:
            try:
                record = WorkerRecord.model_validate_json(file.read_bytes())
            except FileNotFoundError:
                continue  # removed meanwhile
            except (OSError, ValidationError):
                log.warning("unreadable worker record", extra={"file": file.name})
                continue
            age = max(0.0, (now - record.heartbeat_at).total_seconds())
            if clean and age > self.forget_after_s:
                with contextlib.suppress(FileNotFoundError):
                    file.unlink()
                log.info(
                    "forgot a lost worker",
                    extra={"worker": record.id, "heartbeat_age_s": round(age, 1)},
                )
                continue
            out.append(
                WorkerStatus(
                    **record.model_dump(),
                    heartbeat_age_s=round(age, 3),
                    lost=age > self.lost_after_s,
                )
            )
        return sorted(out, key=lambda w: (w.executor, w.host, w.pid))


def loaded_models(runner: object) -> list[str]:
    """Steps whose model this process has loaded: the pipeline's registry when it is in use
    here, else what the runner says it preloaded (``load_seconds``)."""
    registry: Any = sys.modules.get("callannotate.pipeline.registry")
    steps: set[str] = set(registry.loaded_steps()) if registry is not None else set()
    load_seconds = getattr(runner, "load_seconds", None)
    if isinstance(load_seconds, dict):
        steps.update(str(step) for step in load_seconds)
    return sorted(steps)


def rss_bytes() -> int:
    import psutil

    try:
        return int(psutil.Process().memory_info().rss)
    except psutil.Error:
        return 0


class Heartbeat:
    """A daemon thread writing this process's record every ``interval_s`` until stopped.

    ``running`` returns the ids of the jobs the process runs now and how many it finished;
    ``models`` the steps it has loaded. Failures to write are logged (once per kind of
    error), never raised: a full disk must not kill a worker.
    """

    def __init__(
        self,
        registry: WorkerRegistry,
        *,
        executor: ExecutorName,
        name: str,
        concurrency: int,
        queues: list[str],
        interval_s: float,
        running: Callable[[], tuple[list[str], int]],
        models: Callable[[], list[str]],
        preload_error: str | None = None,
    ) -> None:
        self.registry = registry
        self.executor: ExecutorName = executor
        self.name = name
        self.concurrency = concurrency
        self.queues = list(queues)
        self.interval_s = interval_s
        self.running = running
        self.models = models
        self.preload_error = preload_error
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.started_at = utcnow()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_error: str | None = None

    def record(self) -> WorkerRecord:
        jobs, done = self.running()
        return WorkerRecord(
            id=record_id(self.host, self.pid),
            host=self.host,
            pid=self.pid,
            executor=self.executor,
            name=self.name,
            concurrency=self.concurrency,
            queues=self.queues,
            jobs_running=list(jobs),
            jobs_done=done,
            models_loaded=self.models(),
            preload_error=self.preload_error,
            rss_bytes=rss_bytes(),
            started_at=self.started_at,
            heartbeat_at=utcnow(),
        )

    def beat(self) -> None:
        try:
            self.registry.write(self.record())
            self._last_error = None
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            if error != self._last_error:
                log.warning("could not write the worker heartbeat", extra={"reason": error})
            self._last_error = error

    def start(self) -> None:
        if self._thread is not None:
            return
        self.pid = os.getpid()  # a forked child starts its own heartbeat
        self.beat()
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="worker-heartbeat", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.beat()

    def stop(self, *, remove: bool = True) -> None:
        """Stop beating; ``remove``: delete the record (a normal stop is not a lost worker)."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(5)
        if remove:
            with contextlib.suppress(OSError):
                self.registry.remove(self.host, self.pid)


def start_heartbeat(
    settings: Settings,
    *,
    executor: ExecutorName,
    name: str,
    concurrency: int,
    queues: list[str],
    running: Callable[[], tuple[list[str], int]],
    runner: object,
    preload_error: str | None,
) -> Heartbeat:
    """Start this worker process's heartbeat with the settings' interval and bounds."""
    beat = Heartbeat(
        WorkerRegistry.from_settings(settings),
        executor=executor,
        name=name,
        concurrency=concurrency,
        queues=queues,
        interval_s=settings.jobs.heartbeat_interval_s,
        running=running,
        models=lambda: loaded_models(runner),
        preload_error=preload_error,
    )
    beat.start()
    return beat
