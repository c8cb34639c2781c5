"""Light tasks: short work kept apart from annotation jobs (enrollment, exports, callbacks).

A light task is one folder under ``data_dir/light/<id>/`` holding ``task.json`` (kind, owner,
parameters, state, result or error), any input files (an enrollment's staged samples, still
encrypted when encryption at rest is on) and ``.lock``. The folder is written in a build
folder and renamed into place, so a task that exists is complete, and it is durable before
anyone is told about it: a task accepted with ``202`` or a callback queued when a job ended
survives the death of the process that accepted it.

Who runs a task is decided here, not by the broker (as for jobs): :meth:`LightStore.claim`
takes the task's ``.lock`` with ``flock`` and keeps it while the task runs, so a duplicate or
redelivered message, or two local lanes polling the same folder, never run a task twice at
once, and a finished task is never run again. ``task.json`` is only rewritten by the holder
of that lock (or, for a queued task, under it). A task left ``running`` by a process that
died has a free lock: the next claim takes it over as a new attempt (``max_attempts``).

Executors: the local lane (:mod:`callannotate.jobs.light_lane`) polls this folder in the
API / ``callannotate worker`` process; with ``jobs.executor: celery`` each task id is sent to
the ``<prefix>.light`` queue (task ``callannotate.run_light``).
"""

from __future__ import annotations

import builtins
import contextlib
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from callannotate.errors import NotFound
from callannotate.jobs.fsutil import atomic_write, fsync_dir, private_dir, try_lock, unlock
from callannotate.jobs.models import utcnow
from callannotate.observability.metrics import LIGHT_TASKS_FINISHED

log = logging.getLogger(__name__)

TASK_FILE = "task.json"
LOCK_FILE = ".lock"
BUILD_PREFIX = ".build-"
STALE_BUILD_S = 3600.0
MAX_ATTEMPTS = 3


class LightKind(StrEnum):
    ENROLL = "enroll"  # POST /voices answered 202: embed samples, create the voice
    CALLBACK = "callback"  # deliver a job's callback_url announcement
    EXPORT = "export"  # GET /jobs/{id}/export answered 202: render a format into the job folder


#: Kinds run by :func:`callannotate.jobs.light_run.run_claimed` (callbacks have their own path).
RUN_KINDS: tuple[LightKind, ...] = (LightKind.ENROLL, LightKind.EXPORT)


class LightState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"


FINISHED = frozenset({LightState.COMPLETED, LightState.FAILED})


def _create_series() -> None:
    """``callannotate_light_tasks_finished_total`` exports every kind and outcome from the
    start (0), so a dashboard sees "none" rather than "no data"."""
    for kind in LightKind:
        for outcome in FINISHED:
            LIGHT_TASKS_FINISHED.labels(kind.value, outcome.value)


_create_series()


class LightTask(BaseModel):
    """``task.json`` of one light task."""

    model_config = ConfigDict(extra="forbid")

    id: str
    kind: LightKind
    owner: str | None = None
    state: LightState = LightState.QUEUED
    params: dict[str, Any] = Field(default_factory=dict)
    files: list[tuple[str, str]] = Field(
        default_factory=list, description="(stored name, display name) of the input files"
    )
    result: dict[str, Any] | None = None
    error: str | None = None
    error_code: str | None = None
    status_code: int | None = None  # the HTTP status the error would have had in the request
    attempts: int = 0
    max_attempts: int = MAX_ATTEMPTS
    worker: str | None = None
    created_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    not_before: datetime | None = None  # a retry waits until then

    def due(self, now: datetime) -> bool:
        return self.not_before is None or self.not_before <= now


def _valid_id(task_id: str) -> bool:
    return len(task_id) == 32 and all(c in "0123456789abcdef" for c in task_id)


class Claim:
    """A task claimed by this process: its record and the held ``.lock`` descriptor."""

    def __init__(self, store: LightStore, task: LightTask, fd: int) -> None:
        self.store = store
        self.task = task
        self._fd: int | None = fd

    @property
    def dir(self) -> Path:
        return self.store.task_dir(self.task.id)

    def input_files(self) -> list[tuple[Path, str]]:
        return [(self.dir / stored, shown) for stored, shown in self.task.files]

    def complete(self, result: dict[str, Any] | None = None) -> LightTask:
        self.task.state = LightState.COMPLETED
        self.task.result = result
        self.task.error = self.task.error_code = None
        return self._end()

    def fail(self, error: str, code: str | None = None, status: int | None = None) -> LightTask:
        self.task.state = LightState.FAILED
        self.task.error, self.task.error_code, self.task.status_code = error, code, status
        return self._end()

    def retry_later(self, delay_s: float, error: str | None = None) -> LightTask:
        """Back to queued, due after ``delay_s`` (an attempt that will be tried again)."""
        self.task.state = LightState.QUEUED
        self.task.error = error
        self.task.worker = None
        self.task.not_before = utcnow() + timedelta(seconds=max(0.0, delay_s))
        return self._release()

    def _end(self) -> LightTask:
        self.task.finished_at = utcnow()
        self.task.worker = None
        self.task.not_before = None
        self.store.drop_inputs(self.task)
        ended = self._release()
        LIGHT_TASKS_FINISHED.labels(ended.kind.value, ended.state.value).inc()
        return ended

    def _release(self) -> LightTask:
        self.store.save(self.task)
        if self._fd is not None:
            unlock(self._fd)
            self._fd = None
        return self.task

    def release(self) -> None:
        """Drop the lock without changing the record (the task is taken over later)."""
        if self._fd is not None:
            unlock(self._fd)
            self._fd = None


class LightStore:
    """The light task folder (``data_dir/light``); safe across threads and processes."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def task_dir(self, task_id: str) -> Path:
        if not _valid_id(task_id):
            raise NotFound("no such task (invalid id)")
        return self.root / task_id

    def create(
        self,
        kind: LightKind,
        params: dict[str, Any],
        *,
        owner: str | None = None,
        files: Sequence[tuple[Path, str]] = (),
        task_id: str | None = None,
    ) -> LightTask:
        """Store a new queued task durably; ``files`` (path, display name) are moved in.

        ``task_id`` (32 hex digits) makes the creation idempotent: a task of that id stored
        already, by this process or any other, raises :class:`FileExistsError` and nothing
        changes (the rename into place is atomic and never replaces a task)."""
        if task_id is not None and not _valid_id(task_id):
            raise ValueError("a light task id is 32 hex digits")
        private_dir(self.root)
        task = LightTask(id=task_id or uuid.uuid4().hex, kind=kind, owner=owner, params=params)
        if task_id is not None and (self.root / task_id).exists():
            raise FileExistsError(f"light task {task_id} exists")
        build = self.root / f"{BUILD_PREFIX}{task.id}-{uuid.uuid4().hex[:8]}"
        private_dir(build)
        try:
            for index, (path, shown) in enumerate(files):
                stored = f"input-{index}"
                shutil.move(str(path), build / stored)
                task.files.append((stored, shown[:200]))
            atomic_write(build / TASK_FILE, task.model_dump_json().encode())
            try:
                os.rename(build, self.root / task.id)
            except OSError as exc:  # ENOTEMPTY / EEXIST: stored meanwhile by another process
                if (self.root / task.id).is_dir():
                    raise FileExistsError(f"light task {task.id} exists") from exc
                raise
        except BaseException:
            shutil.rmtree(build, ignore_errors=True)
            raise
        fsync_dir(self.root)
        return task

    def get(self, task_id: str) -> LightTask:
        path = self.task_dir(task_id) / TASK_FILE
        try:
            return LightTask.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            raise NotFound(f"task {task_id} not found") from None

    def save(self, task: LightTask) -> None:
        atomic_write(self.task_dir(task.id) / TASK_FILE, task.model_dump_json().encode())

    def drop_inputs(self, task: LightTask) -> None:
        """Delete a finished task's input files (samples are never kept once embedded)."""
        folder = self.task_dir(task.id)
        for stored, _ in task.files:
            with contextlib.suppress(FileNotFoundError):
                (folder / stored).unlink()

    def claim(self, task_id: str, worker: str, *, early: bool = False) -> Claim | None:
        """Take the task to run it now, or ``None``: finished, gone, run by a live process,
        or not due yet (unless ``early``: a Celery retry arrives at its own countdown)."""
        try:
            folder = self.task_dir(task_id)
        except NotFound:
            return None
        if not folder.is_dir():
            return None
        fd = try_lock(folder / LOCK_FILE)
        if fd is None:
            return None  # a live process runs it
        try:
            task = self.get(task_id)
        except (NotFound, ValueError):
            unlock(fd)
            return None
        claim = Claim(self, task, fd)
        if task.state in FINISHED or (
            task.state == LightState.QUEUED and not early and not task.due(utcnow())
        ):
            claim.release()
            return None
        if task.state == LightState.RUNNING:  # its runner died: take it over
            log.warning("took over an interrupted light task", extra={"task_id": task_id})
            if task.attempts >= task.max_attempts:
                claim.fail(
                    f"interrupted: the process running the task died {task.attempts} times",
                    "interrupted",
                )
                return None
        task.state = LightState.RUNNING
        task.attempts += 1
        task.worker = worker
        task.started_at = utcnow()
        self.save(task)
        return claim

    def _task_dirs(self) -> Iterator[Path]:
        if not self.root.is_dir():
            return
        with os.scandir(self.root) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False) and _valid_id(entry.name):
                    yield Path(entry.path)

    def _tasks(self) -> Iterator[tuple[Path, LightTask]]:
        for folder in self._task_dirs():
            try:
                yield folder, LightTask.model_validate_json((folder / TASK_FILE).read_bytes())
            except (FileNotFoundError, ValueError):
                continue

    def unfinished(self) -> builtins.list[tuple[LightTask, bool]]:
        """Queued and running tasks, each with whether it is orphaned (running, but its
        runner died: the lock is free)."""
        out: builtins.list[tuple[LightTask, bool]] = []
        for folder, task in self._tasks():
            if task.state == LightState.QUEUED:
                out.append((task, False))
            elif task.state == LightState.RUNNING:
                out.append((task, lock_free(folder)))
        return out

    def pending(self, kinds: Sequence[LightKind] | None = None) -> builtins.list[LightTask]:
        """Tasks to run: queued ones, and running ones whose runner died (lock free); oldest
        first. Not-yet-due retries are included (callers check :meth:`LightTask.due`)."""
        out = [
            task
            for task, orphaned in self.unfinished()
            if (kinds is None or task.kind in kinds)
            and (task.state == LightState.QUEUED or orphaned)
        ]
        out.sort(key=lambda t: t.created_at)
        return out

    def purge(self, older_than_s: float) -> int:
        """Delete finished tasks older than ``older_than_s`` and stale build folders."""
        removed = 0
        cutoff = utcnow() - timedelta(seconds=older_than_s)
        for folder, task in builtins.list(self._tasks()):
            if task.state in FINISHED and (task.finished_at or task.created_at) < cutoff:
                shutil.rmtree(folder, ignore_errors=True)
                removed += 1
        if self.root.is_dir():
            now = time.time()
            for entry in os.scandir(self.root):
                if entry.name.startswith(BUILD_PREFIX):
                    with contextlib.suppress(FileNotFoundError):
                        if now - entry.stat().st_mtime > STALE_BUILD_S:
                            shutil.rmtree(entry.path, ignore_errors=True)
        return removed


def lock_free(folder: Path) -> bool:
    """No live process holds the task's lock (its runner, if any, is gone). A task folder
    purged meanwhile is not running anywhere, and not orphaned either: ``False``."""
    try:
        fd = try_lock(folder / LOCK_FILE)
    except OSError:
        return False
    if fd is None:
        return False
    unlock(fd)
    return True


def light_store(data_dir: Path) -> LightStore:
    return LightStore(data_dir / "light")
