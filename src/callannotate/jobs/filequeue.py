"""The durable file queue: one folder per job, moved between state folders by atomic renames.

Layout under ``root``::

    incoming/<id>/      queued jobs            job.json, the audio file, .lock
    processing/<id>/    running jobs           + lease in .lock (flock held by the runner)
    completed/<id>/     finished jobs          + result.json
    failed/<id>/        failed or cancelled    job.json carries the reason
    archived/<id>/      past the retention period
    staging/            uploads in flight and job folders being built (same filesystem)

Rules that keep it safe with several processes on one queue folder:

* Every state change is one ``rename(2)`` of the job folder; ``job.json`` is rewritten with
  write-temp + fsync + rename, and the parent folders are fsync'd after each rename.
* Every read-modify-write of a job runs under a queue-wide ``flock`` (``root/.queue.lock``),
  so two processes never claim the same job nor lose each other's updates.
* The process running a job holds an exclusive ``flock`` on the job's ``.lock`` file for as
  long as it runs it. The kernel drops that lock when the process dies, which is how
  :meth:`FileQueue.recover` tells a crashed holder from a live one: it only takes jobs whose
  lock it can acquire. The lock file also carries a lease (holder, pid, expiry) for humans
  and tools; the runner renews it with :meth:`FileQueue.renew`.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from callannotate.config import QueueSettings
from callannotate.errors import Conflict, NotFound
from callannotate.jobs.fsutil import (
    PRIVATE_DIR,
    PRIVATE_FILE,
    atomic_write,
    fsync_dir,
    private_dir,
    try_lock,
    unlock,
)
from callannotate.jobs.job_index import CallFilter, JobIndex
from callannotate.jobs.models import CallbackAttempt, Job, JobState, StepProgress, utcnow
from callannotate.resilience.retry import RetryPolicy

if TYPE_CHECKING:
    from callannotate.security.atrest import Vault

log = logging.getLogger(__name__)

INCOMING = "incoming"
PROCESSING = "processing"
COMPLETED = "completed"
FAILED = "failed"
ARCHIVED = "archived"
STAGING = "staging"
FOLDERS: tuple[str, ...] = (INCOMING, PROCESSING, COMPLETED, FAILED, ARCHIVED)
# queue folder -> the state name reports and metrics use for it (cancelled jobs live in failed/)
STATE_OF_FOLDER: dict[str, str] = {
    INCOMING: "queued",
    PROCESSING: "running",
    COMPLETED: "completed",
    FAILED: "failed",
    ARCHIVED: "archived",
}
# Where get() looks first: running jobs move most often, archived ones least.
_SEARCH_ORDER: tuple[str, ...] = (PROCESSING, INCOMING, COMPLETED, FAILED, ARCHIVED)

JOB_FILE = "job.json"
RESULT_FILE = "result.json"
LOCK_FILE = ".lock"
_RESERVED_NAMES = {JOB_FILE, RESULT_FILE, LOCK_FILE}

_STATES_IN_FOLDER: dict[str, tuple[JobState, ...]] = {
    INCOMING: (JobState.QUEUED,),
    PROCESSING: (JobState.RUNNING,),
    COMPLETED: (JobState.COMPLETED,),
    FAILED: (JobState.FAILED, JobState.CANCELLED),
    ARCHIVED: (JobState.ARCHIVED,),
}
FOLDER_OF_STATE: dict[JobState, str] = {
    state: folder for folder, states in _STATES_IN_FOLDER.items() for state in states
}

_ID_RE = re.compile(r"[0-9a-f]{32}")
_CANCELLED_REASON = "cancelled"
_STALE_STAGING_S = 3600.0
_CACHE_MAX = 20_000
_JSON_CACHE_MAX = 5_000
# A cached record read less than this after its mtime is checked by its bytes on next use
# (file timestamps come from a clock that ticks every 1-10 ms).
_RECORD_TICK_NS = 50_000_000
_T = TypeVar("_T")


def valid_job_id(job_id: str) -> bool:
    """True for the ids this queue creates (uuid4 hex); rejects anything path-like."""
    return bool(_ID_RE.fullmatch(job_id))


def _check_id(job_id: str) -> None:
    if not isinstance(job_id, str) or not valid_job_id(job_id):
        raise NotFound("no such job (invalid job id)")


def _safe_audio_name(name: str, src: Path) -> str:
    """The stored audio file name: a plain file name that cannot escape the job folder."""
    if (
        name
        and "/" not in name
        and "\\" not in name
        and "\x00" not in name
        and not name.startswith(".")
        and name not in _RESERVED_NAMES
        and len(name) <= 128
    ):
        return name
    suffix = src.suffix.lower() if re.fullmatch(r"\.[A-Za-z0-9]{1,8}", src.suffix) else ""
    return f"audio{suffix}"


def interrupted_reason(attempt: int, max_attempts: int) -> str:
    """Why a job is queued again after the process running ``attempt`` died (its ``error``,
    and the ``reason`` of its ``job.queued``; the metrics count it as ``worker_died``)."""
    return f"interrupted: the process running the job died (attempt {attempt} of {max_attempts})"


def _finished(job: Job) -> datetime:
    """When ``job`` finished (its last change for a record without ``finished_at``)."""
    return job.finished_at or job.updated_at


class FileQueue:
    """A job queue in plain folders, safe across threads and processes on one filesystem."""

    def __init__(self, root: Path, settings: QueueSettings, vault: Vault | None = None) -> None:
        self.root = Path(root)
        self.settings = settings
        self.vault = vault  # encrypts result.json at rest (audio is encrypted as it is staged)
        for name in (*FOLDERS, STAGING):
            private_dir(self.root / name)  # 0700, parents too (data is private)
        self._queue_lock_path = self.root / ".queue.lock"
        self._tlock = threading.RLock()
        self._depth = 0
        self._qfd: int | None = None
        self._held: dict[str, int] = {}  # job id -> fd holding its .lock (jobs this process runs)
        # job.json -> (stat key, its bytes, the parsed record). The parsed record is shared
        # and never mutated (``_peek``); callers get fresh copies from the bytes (``_read``).
        self._cache: dict[Path, tuple[tuple[int, int, int], bytes, Job, bool]] = {}
        # job id -> the folder it was last found in: get() tries there first (one stat
        # instead of up to six on the hot polling path); a miss falls back to the search.
        self._where: dict[str, str] = {}
        # job id -> (the cached record it was made from, state, the client view, its JSON)
        self._json: dict[str, tuple[Job, JobState, Job, bytes]] = {}
        # Listing without reading every record; kept current by the folders' mtimes.
        self._index = JobIndex(self.root, FOLDERS, _STATES_IN_FOLDER, self._peek, valid_job_id)
        self._host = socket.gethostname()

    # ------------------------------------------------------------------ locking helpers

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Queue-wide exclusive section: a thread lock inside the process, flock across them."""
        with self._tlock:
            if self._depth == 0:
                fd = os.open(self._queue_lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                except BaseException:
                    os.close(fd)
                    raise
                self._qfd = fd
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0 and self._qfd is not None:
                    unlock(self._qfd)
                    self._qfd = None

    def holds(self, job_id: str) -> bool:
        """True when this process holds the run lock of ``job_id``."""
        return job_id in self._held

    def forget(self, job_id: str) -> None:
        """Drop this process's run lock of a job that disappeared (deleted elsewhere)."""
        with self._tlock:
            self._drop_hold(job_id)

    def _drop_hold(self, job_id: str) -> None:
        fd = self._held.pop(job_id, None)
        if fd is not None:
            unlock(fd)

    def _write_lease(self, fd: int, job_id: str, worker_id: str) -> None:
        expires = utcnow() + timedelta(seconds=self.settings.lease_seconds)
        lease = {
            "job_id": job_id,
            "worker": worker_id,
            "host": self._host,
            "pid": os.getpid(),
            "expires_at": expires.isoformat(),
        }
        data = json.dumps(lease).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)

    def lease(self, job_id: str) -> dict[str, object] | None:
        """The lease written by a job's current runner, or None."""
        found = self._locate(job_id)
        if found is None or found[0] != PROCESSING:
            return None
        try:
            data = json.loads((found[1] / LOCK_FILE).read_bytes() or b"null")
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    # ------------------------------------------------------------------ reading

    def _locate(self, job_id: str) -> tuple[str, Path] | None:
        hint = self._where.get(job_id)
        if hint is not None:
            path = self.root / hint / job_id
            if (path / JOB_FILE).is_file():
                return hint, path
        for _ in range(3):
            for folder in _SEARCH_ORDER:
                path = self.root / folder / job_id
                if (path / JOB_FILE).is_file():
                    self._remember(job_id, folder)
                    return folder, path
        self._where.pop(job_id, None)
        return None

    def _remember(self, job_id: str, folder: str) -> None:
        if len(self._where) >= _CACHE_MAX:
            self._where.clear()
        self._where[job_id] = folder

    def _load(self, path: Path) -> tuple[bytes, Job]:
        """The record's bytes and its parsed form, cached by (inode, mtime, size).

        A rewrite can reuse the inode of the file it replaces, within one tick of the coarse
        file clock and at the same size (``attempts`` 1 -> 2). So an entry cached within
        :data:`_RECORD_TICK_NS` of the file's mtime is "racy" (git's word): on its next use
        the file is read again and compared by its bytes."""
        file = path / JOB_FILE
        st = file.stat()
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        cached = self._cache.get(file)
        raw: bytes | None = None
        if cached is not None and cached[0] == key:
            if not cached[3]:
                return cached[1], cached[2]
            raw = file.read_bytes()
            job = cached[2] if raw == cached[1] else Job.model_validate_json(raw)
        else:
            raw = file.read_bytes()
            job = Job.model_validate_json(raw)
        racy = time.time_ns() - st.st_mtime_ns < _RECORD_TICK_NS
        if len(self._cache) >= _CACHE_MAX:
            self._cache.clear()
        self._cache[file] = (key, raw, job, racy)
        return raw, job

    def _peek(self, folder: str, path: Path) -> tuple[Job, JobState]:
        """A read-only view of the record (shared: do not mutate) and its state as its folder
        says. Cheap: for scans (list, claim) that only look at a few fields."""
        job = self._load(path)[1]
        allowed = _STATES_IN_FOLDER[folder]
        # The folder is the truth: a crash between the job.json write and the rename
        # leaves the record one step ahead of its folder.
        return job, job.state if job.state in allowed else allowed[0]

    def _read(self, folder: str, path: Path) -> Job:
        """A fresh, mutable copy of the record (parsed again from the cached bytes, which
        costs a fifth of a deep copy)."""
        raw, _ = self._load(path)
        job = Job.model_validate_json(raw)
        allowed = _STATES_IN_FOLDER[folder]
        if job.state not in allowed:
            job.state = allowed[0]
        return job

    def _find(self, job_id: str) -> tuple[str, Path, Job]:
        _check_id(job_id)
        hint = self._where.get(job_id)
        if hint is not None:  # where it was last time: one stat when it has not moved
            path = self.root / hint / job_id
            try:
                return hint, path, self._read(hint, path)
            except FileNotFoundError:
                pass
        for _ in range(3):
            found = self._locate(job_id)
            if found is None:
                break
            try:
                return found[0], found[1], self._read(found[0], found[1])
            except FileNotFoundError:
                continue  # moved while we looked; look again
        raise NotFound(f"job {job_id} not found")

    def get(self, job_id: str) -> Job:
        return self._find(job_id)[2]

    def view(self, job_id: str) -> tuple[Job, bytes]:
        """A job as clients see it, for reading only (shared: never mutate it), and its JSON.

        Both are cached by the record's stat key and the folder hint, so polling a job that
        has not changed costs one ``stat`` and no parsing or serialising: the hot path of
        ``GET /jobs/{id}``. :meth:`get` is for callers that change the record."""
        return self._view_of(job_id)[2:]

    def _view_of(self, job_id: str) -> tuple[str, Path, Job, bytes]:
        _check_id(job_id)
        for _ in range(3):
            hint = self._where.get(job_id)
            if hint is not None:
                folder, path = hint, self.root / hint / job_id
            else:
                found = self._locate(job_id)
                if found is None:
                    break
                folder, path = found
            try:
                return (folder, path, *self._view(folder, path))
            except FileNotFoundError:
                self._where.pop(job_id, None)  # moved while we looked: look again
        raise NotFound(f"job {job_id} not found")

    def _view(self, folder: str, path: Path) -> tuple[Job, bytes]:
        job, state = self._peek(folder, path)
        cached = self._json.get(path.name)
        if cached is not None and cached[0] is job and cached[1] == state:
            return cached[2], cached[3]
        shown = job if job.state == state else job.model_copy(update={"state": state})
        body = shown.model_dump_json().encode()
        if len(self._json) >= _JSON_CACHE_MAX:  # polled jobs are few and recent
            self._json.clear()
        self._json[path.name] = (job, state, shown, body)
        return shown, body

    def job_dir(self, job_id: str) -> Path:
        return self._find(job_id)[1]

    def audio_path(self, job_id: str) -> Path:
        _, path, job = self._find(job_id)
        return path / _safe_audio_name(job.audio.stored_as, Path(job.audio.stored_as))

    def read_result(self, job_id: str) -> bytes:
        for _ in range(3):
            _, path, job, _ = self._view_of(job_id)
            result = path / RESULT_FILE
            if job.state not in (JobState.COMPLETED, JobState.ARCHIVED) or (
                job.state == JobState.ARCHIVED and not result.is_file()
            ):
                raise Conflict(f"job {job_id} is {job.state.value}; it has no result")
            try:
                return self._open_result(result.read_bytes())
            except FileNotFoundError:
                continue
        raise Conflict(f"job {job_id} result is not available")

    def _open_result(self, data: bytes) -> bytes:
        from callannotate.security.envelope import decrypt_bytes, is_encrypted_prefix

        if not is_encrypted_prefix(data):
            return data  # written before encryption at rest, or with it off
        if self.vault is None:
            raise Conflict("the job result is encrypted and this queue has no keys")
        return decrypt_bytes(self.vault.ring, data)

    def _seal_result(self, data: bytes) -> bytes:
        if self.vault is None or not self.vault.enabled:
            return data
        from callannotate.security.envelope import encrypt_bytes

        return encrypt_bytes(self.vault.ring, data, chunk_size=self.vault.chunk_size)

    def list(
        self,
        *,
        owner: str | None = None,
        states: set[JobState] | None = None,
        offset: int = 0,
        limit: int = 50,
        calls: CallFilter | None = None,
    ) -> tuple[builtins.list[Job], int]:
        """Jobs newest first, filtered by owner, state and ``calls`` (creation time, phone
        number); returns (page, total matching).

        The index (:mod:`callannotate.jobs.job_index`) finds the matching ids without reading
        the records; only the records of the page are read (from the stat-keyed cache)."""
        return self._page(self._read, self.get, owner, states, offset, limit, calls)

    def list_views(
        self,
        *,
        owner: str | None = None,
        states: set[JobState] | None = None,
        offset: int = 0,
        limit: int = 50,
        calls: CallFilter | None = None,
    ) -> tuple[builtins.list[tuple[Job, bytes]], int]:
        """:meth:`list` as read-only views and their JSON (see :meth:`view`)."""
        return self._page(self._view, self.view, owner, states, offset, limit, calls)

    def _page(
        self,
        read_at: Callable[[str, Path], _T],
        read_anywhere: Callable[[str], _T],
        owner: str | None,
        states: set[JobState] | None,
        offset: int,
        limit: int,
        calls: CallFilter | None = None,
    ) -> tuple[builtins.list[_T], int]:
        """One page of the index's matches, each read with ``read_at`` where the index saw it
        (``read_anywhere`` when it moved since); returns (page, total matching)."""
        page_ids, total = self._index.query(
            owner=owner, states=states, offset=max(0, offset), limit=max(0, limit), calls=calls
        )
        page: builtins.list[_T] = []
        for job_id, folder in page_ids:
            try:
                page.append(read_at(folder, self.root / folder / job_id))
            except (FileNotFoundError, ValueError):
                try:  # moved since the index looked: read it where it is now
                    page.append(read_anywhere(job_id))
                except (NotFound, ValueError):
                    continue
        return page, total

    def counts(self) -> dict[str, int]:
        return {folder: sum(1 for _ in self._job_dirs(folder)) for folder in FOLDERS}

    def writable(self) -> bool:
        probe = self.root / STAGING / f".probe-{uuid.uuid4().hex}"
        try:
            atomic_write(probe, b"ok")
            probe.unlink()
        except OSError:
            return False
        return True

    def _job_dirs(self, folder: str) -> Iterator[Path]:
        try:
            with os.scandir(self.root / folder) as it:
                for entry in it:
                    if valid_job_id(entry.name) and entry.is_dir(follow_symlinks=False):
                        yield Path(entry.path)
        except FileNotFoundError:
            return

    # ------------------------------------------------------------------ writing helpers

    def retry_delay(self, attempt: int) -> float:
        """Seconds a job waits in incoming after its attempt ``attempt`` failed transiently:
        exponential backoff with jitter (``queue.retry_backoff_s`` doubling per attempt, at
        most ``queue.retry_backoff_max_s``), the same policy as the other retries."""
        policy = RetryPolicy(
            attempts=self.settings.max_attempts,
            initial_s=self.settings.retry_backoff_s,
            max_s=self.settings.retry_backoff_max_s,
        )
        return policy.delay(attempt)

    def _reset_to_queued(self, job: Job) -> None:
        """A fresh start in incoming: no attempts, no run, no error (submit and retry)."""
        job.state = JobState.QUEUED
        job.attempts = 0
        job.max_attempts = self.settings.max_attempts
        job.started_at = None
        job.finished_at = None
        job.error = None
        job.worker = None
        job.cancel_requested = False
        job.not_before = None

    def _save(self, path: Path, job: Job) -> None:
        job.updated_at = utcnow()
        atomic_write(path / JOB_FILE, job.model_dump_json(indent=2).encode())

    def _move(self, src: Path, folder: str, name: str | None = None) -> Path:
        dst = self.root / folder / (name or src.name)
        if dst.exists():
            raise Conflict(f"job {dst.name} already exists in {folder}")
        os.rename(src, dst)
        fsync_dir(src.parent)
        fsync_dir(dst.parent)
        return dst

    def _transition(self, path: Path, job: Job, folder: str) -> Job:
        """Write the new record into the job folder, then rename the folder into ``folder``."""
        if folder != PROCESSING:
            job.end_attempt()  # the attempt's outcome follows from the job's new state
        self._save(path, job)
        self._move(path, folder)
        return job

    def _in_processing(self, job_id: str) -> tuple[Path, Job]:
        folder, path, job = self._find(job_id)
        if folder != PROCESSING:
            raise Conflict(f"job {job_id} is {job.state.value}, not running")
        return path, job

    def _finish_cancel(self, path: Path, job: Job) -> Job:
        job.state = JobState.CANCELLED
        job.error = _CANCELLED_REASON
        job.finished_at = utcnow()
        job.worker = None
        return self._transition(path, job, FAILED)

    # ------------------------------------------------------------------ submitting

    def staging_dir(self) -> Path:
        return self.root / STAGING

    def new_job_id(self) -> str:
        return uuid.uuid4().hex

    def submit(
        self, job: Job, audio_src: Path, *, before_visible: Callable[[Job], None] | None = None
    ) -> Job:
        """Store ``audio_src`` (moved, not copied) with ``job`` and enqueue it atomically.

        The folder is built in ``staging/`` (audio moved in and fsync'd, ``job.json`` written
        and fsync'd) and only then renamed into ``incoming/``: a crash leaves either nothing
        in the queue or a complete job. ``before_visible(job)`` runs once the job is stored
        and just before any worker can claim it (the API announces ``job.queued`` there, so
        no worker's ``job.started`` can come first).
        """
        _check_id(job.id)
        audio_src = Path(audio_src)
        if not audio_src.is_file():
            raise NotFound(f"uploaded audio {audio_src.name} is missing")
        build = self.root / STAGING / f".build-{job.id}-{uuid.uuid4().hex[:8]}"
        build.mkdir(mode=PRIVATE_DIR)
        os.chmod(build, PRIVATE_DIR)
        try:
            name = _safe_audio_name(job.audio.stored_as, audio_src)
            job = job.model_copy(deep=True)
            job.audio.stored_as = name
            target = build / name
            try:
                os.rename(audio_src, target)
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                shutil.move(str(audio_src), str(target))
            os.chmod(target, PRIVATE_FILE)
            with open(target, "rb") as fh:
                os.fsync(fh.fileno())
            (build / LOCK_FILE).touch(mode=PRIVATE_FILE)
            self._reset_to_queued(job)
            job.created_at = utcnow()
            self._save(build, job)
            fsync_dir(build)
            if before_visible is not None:
                before_visible(job)
            with self._locked():
                if self._locate(job.id) is not None:
                    raise Conflict(f"job {job.id} already exists")
                self._move(build, INCOMING, job.id)
        except BaseException:
            shutil.rmtree(build, ignore_errors=True)
            raise
        log.info("job queued", extra={"job_id": job.id})
        return job

    # ------------------------------------------------------------------ running

    def claim(self, worker_id: str) -> Job | None:
        """Take the next queued job: highest ``priority`` first, oldest first within a
        priority, skipping jobs whose retry backoff (``not_before``) is not over. Lock it,
        move it to processing, count an attempt."""
        with self._locked():
            now = utcnow()
            candidates: builtins.list[tuple[int, datetime, str, Path]] = []
            for path in self._job_dirs(INCOMING):
                try:
                    seen, _ = self._peek(INCOMING, path)
                except (FileNotFoundError, ValueError):
                    continue
                if seen.not_before is not None and seen.not_before > now:
                    continue  # waiting out its retry backoff
                candidates.append((-seen.priority, seen.created_at, seen.id, path))
            candidates.sort(key=lambda c: (c[0], c[1], c[2]))
            for _, _, job_id, path in candidates:
                fd = try_lock(path / LOCK_FILE)
                if fd is None:
                    continue
                try:
                    job = self._read(INCOMING, path)
                except (FileNotFoundError, ValueError):
                    unlock(fd)
                    continue
                try:
                    job.state = JobState.RUNNING
                    job.attempts += 1
                    job.started_at = utcnow()
                    job.finished_at = None
                    job.worker = worker_id
                    job.not_before = None
                    job.begin_attempt(worker_id)
                    self._write_lease(fd, job_id, worker_id)
                    self._transition(path, job, PROCESSING)
                except BaseException:
                    unlock(fd)
                    raise
                self._held[job_id] = fd
                log.info("job claimed", extra={"job_id": job_id, "worker": worker_id})
                return job
        return None

    def claim_job(self, job_id: str, worker_id: str) -> Job | None:
        """Take one given job (the payload of a Celery task): queued, or left in processing
        by a runner that died (its run lock is free), counting an attempt.

        None when the job is gone, finished, or run by a live process: a duplicate or
        redelivered task is then a no-op. An orphan flagged cancelled, or out of attempts,
        is finalised here instead of run.
        """
        with self._locked():
            try:
                folder, path, job = self._find(job_id)
            except NotFound:
                return None
            if folder not in (INCOMING, PROCESSING) or job_id in self._held:
                return None
            fd = try_lock(path / LOCK_FILE)
            if fd is None:
                return None  # a live process runs it
            try:
                if folder == PROCESSING and job.cancel_requested:
                    self._finish_cancel(path, job)
                    unlock(fd)
                    return None
                if folder == PROCESSING and job.attempts >= job.max_attempts:
                    self._give_up_orphan(path, job)
                    unlock(fd)
                    return None
                job.state = JobState.RUNNING
                job.attempts += 1
                job.started_at = utcnow()
                job.finished_at = None
                job.worker = worker_id
                job.not_before = None  # Celery's task countdown did the waiting
                job.progress = []  # a new attempt: nothing of a dead runner's attempt runs
                job.begin_attempt(worker_id)
                self._write_lease(fd, job_id, worker_id)
                if folder == INCOMING:
                    self._transition(path, job, PROCESSING)
                else:
                    self._save(path, job)
            except BaseException:
                unlock(fd)
                raise
            self._held[job_id] = fd
        log.info("job claimed", extra={"job_id": job_id, "worker": worker_id})
        return job

    def renew(self, job_id: str, worker_id: str) -> None:
        """Extend the lease of a job this process runs."""
        with self._tlock:
            fd = self._held.get(job_id)
            if fd is None:
                raise Conflict(f"job {job_id} is not run by this process")
            self._write_lease(fd, job_id, worker_id)

    def update_progress(self, job_id: str, progress: builtins.list[StepProgress]) -> Job:
        with self._locked():
            path, job = self._in_processing(job_id)
            job.progress = [p.model_copy() for p in progress]
            self._save(path, job)
            return job

    def complete(self, job_id: str, result_json: bytes) -> Job:
        with self._locked():
            path, job = self._in_processing(job_id)
            atomic_write(path / RESULT_FILE, self._seal_result(result_json))
            job.state = JobState.COMPLETED
            job.finished_at = utcnow()
            job.error = None
            job.worker = None
            self._transition(path, job, COMPLETED)
            self._drop_hold(job_id)
        log.info("job completed", extra={"job_id": job_id})
        return job

    def fail(self, job_id: str, error: str, *, retry: bool = False) -> Job:
        """Fail a running job; with ``retry`` it goes back to incoming while attempts remain."""
        with self._locked():
            path, job = self._in_processing(job_id)
            if job.cancel_requested:
                job = self._finish_cancel(path, job)
            elif retry and job.attempts < job.max_attempts:
                delay = self.retry_delay(job.attempts)
                job.state = JobState.QUEUED
                job.error = error
                job.worker = None
                job.started_at = None
                job.not_before = utcnow() + timedelta(seconds=delay)
                job.progress = []  # as release() leaves it: no step runs while it waits
                job.end_attempt()  # outcome "retried"; the history shows the wait too
                if job.history:
                    job.history[-1].retry_delay_s = round(delay, 3)
                self._transition(path, job, INCOMING)
            else:
                job.state = JobState.FAILED
                job.error = error
                job.finished_at = utcnow()
                job.worker = None
                for step in job.progress:  # the step it failed in does not run any more
                    if step.status == "running":
                        step.status = "failed"
                self._transition(path, job, FAILED)
            self._drop_hold(job_id)
        log.info("job failed", extra={"job_id": job_id, "state": job.state.value, "reason": error})
        return job

    def release(self, job_id: str) -> Job:
        """Put a running job back in incoming without using up an attempt (shutdown)."""
        with self._locked():
            path, job = self._in_processing(job_id)
            if job.cancel_requested:
                job = self._finish_cancel(path, job)
            else:
                job.state = JobState.QUEUED
                job.attempts = max(0, job.attempts - 1)
                job.end_attempt("released", "returned to the queue at shutdown")
                job.worker = None
                job.started_at = None
                job.progress = []
                self._transition(path, job, INCOMING)
            self._drop_hold(job_id)
        return job

    def mark_cancelled(self, job_id: str) -> Job:
        """Finalise a running job whose runner was stopped on a cancel request."""
        with self._locked():
            path, job = self._in_processing(job_id)
            job = self._finish_cancel(path, job)
            self._drop_hold(job_id)
        return job

    def record_callback(self, job_id: str, attempt: CallbackAttempt) -> Job:
        """Append one callback delivery attempt to a job's record, wherever the job is."""
        with self._locked():
            _, path, job = self._find(job_id)
            job.callbacks.append(attempt)
            self._save(path, job)
            return job

    # ------------------------------------------------------------------ user actions

    def cancel(self, job_id: str) -> Job:
        """Queued: cancelled now. Running: flagged (its runner stops it). Finished: Conflict."""
        with self._locked():
            folder, path, job = self._find(job_id)
            if folder == INCOMING:
                return self._finish_cancel(path, job)
            if folder == PROCESSING:
                if job_id not in self._held:
                    fd = try_lock(path / LOCK_FILE)
                    if fd is not None:  # its runner died: nothing will stop it, do it here
                        try:
                            return self._finish_cancel(path, job)
                        finally:
                            unlock(fd)
                if not job.cancel_requested:
                    job.cancel_requested = True
                    self._save(path, job)
                return job
            raise Conflict(f"job {job_id} is already {job.state.value}")

    def delete(self, job_id: str) -> None:
        """Remove a job and its files; a running job elsewhere is flagged and stops itself."""
        with self._locked():
            folder, path, job = self._find(job_id)
            if folder == PROCESSING:
                if job_id in self._held:
                    self._drop_hold(job_id)
                else:
                    job.cancel_requested = True
                    self._save(path, job)
            trash = self._to_trash(path)
        shutil.rmtree(trash, ignore_errors=True)
        log.info("job deleted", extra={"job_id": job_id})

    def _to_trash(self, path: Path) -> Path:
        """Take a job folder out of the queue (under the lock) in one rename; the caller
        removes the returned folder after releasing the lock."""
        trash = self.root / STAGING / f".trash-{path.name}-{uuid.uuid4().hex[:8]}"
        os.rename(path, trash)
        fsync_dir(path.parent)
        self._where.pop(path.name, None)
        return trash

    def retry(self, job_id: str, *, before_visible: Callable[[Job], None] | None = None) -> Job:
        """Queue a failed or cancelled job again with a fresh attempt count;
        ``before_visible`` as in :meth:`submit` (it runs outside the queue's lock, so the job
        is checked again after it)."""

        def reset() -> tuple[Path, Job]:
            folder, path, job = self._find(job_id)
            if folder != FAILED:
                raise Conflict(
                    f"job {job_id} is {job.state.value}; only failed or cancelled jobs are retried"
                )
            if job.audio_deleted_at is not None:
                raise Conflict(
                    f"job {job_id} cannot run again: its recording was deleted at "
                    f"{job.audio_deleted_at:%Y-%m-%d %H:%M} UTC (queue.audio_retention_hours)"
                )
            self._reset_to_queued(job)
            job.progress = []
            return path, job

        if before_visible is not None:
            with self._locked():
                _, job = reset()
            before_visible(job)
        with self._locked():
            path, job = reset()
            return self._transition(path, job, INCOMING)

    # ------------------------------------------------------------------ maintenance

    def recover(self) -> builtins.list[str]:
        """Return jobs whose runner died to incoming (or failed after max attempts).

        A job counts as orphaned only when its ``.lock`` can be taken, i.e. no live process
        holds it. Also clears leftovers of interrupted submits and deletes in ``staging/``.
        """
        recovered: builtins.list[str] = []
        with self._locked():
            for path in builtins.list(self._job_dirs(PROCESSING)):
                job_id = path.name
                if job_id in self._held:
                    continue
                fd = try_lock(path / LOCK_FILE)
                if fd is None:
                    continue  # a live process runs it
                try:
                    try:
                        job = self._read(PROCESSING, path)
                    except (FileNotFoundError, ValueError):
                        log.warning("unreadable job record in processing", extra={"job_id": job_id})
                        continue
                    if job.cancel_requested:
                        self._finish_cancel(path, job)
                    elif job.attempts >= job.max_attempts:
                        self._give_up_orphan(path, job)
                    else:
                        job.state = JobState.QUEUED
                        job.error = interrupted_reason(job.attempts, job.max_attempts)
                        job.worker = None
                        job.started_at = None
                        job.progress = []  # as release() leaves it: no step runs now
                        self._transition(path, job, INCOMING)
                    recovered.append(job_id)
                    log.warning(
                        "recovered orphaned job",
                        extra={"job_id": job_id, "state": job.state.value},
                    )
                finally:
                    unlock(fd)
            self._clean_staging()
        self._index.refresh()  # (re)build the listing index now, not on the first GET /jobs
        return recovered

    def _give_up_orphan(self, path: Path, job: Job) -> None:
        """Fail a job whose runner died once too often (caller holds its lock)."""
        job.state = JobState.FAILED
        job.error = (
            f"interrupted: the process running the job died; gave up after {job.attempts} attempts"
        )
        job.finished_at = utcnow()
        job.worker = None
        self._transition(path, job, FAILED)

    def _clean_staging(self) -> None:
        now = time.time()
        with os.scandir(self.root / STAGING) as it:
            entries = builtins.list(it)
        for entry in entries:
            if not entry.is_dir(follow_symlinks=False):
                continue
            try:
                age = now - entry.stat(follow_symlinks=False).st_mtime
            except FileNotFoundError:
                continue
            if entry.name.startswith(".trash-") or (
                entry.name.startswith(".build-") and age > _STALE_STAGING_S
            ):
                shutil.rmtree(entry.path, ignore_errors=True)

    def _expired(self, cutoff: datetime) -> Iterator[tuple[Path, Job]]:
        """``(job folder, record)`` of each job that finished before ``cutoff``, read again and
        yielded **under the queue lock** (held until the caller asks for the next one). The
        folders are scanned without the lock, so a long scan does not stall the queue."""
        found: builtins.list[tuple[str, str]] = []
        for folder in (COMPLETED, FAILED, ARCHIVED):
            for path in self._job_dirs(folder):
                try:
                    job = self._peek(folder, path)[0]
                except (FileNotFoundError, ValueError):
                    continue
                if _finished(job) <= cutoff:
                    found.append((folder, path.name))
        for folder, job_id in found:
            path = self.root / folder / job_id
            with self._locked():
                try:
                    job = self._read(folder, path)
                except (FileNotFoundError, ValueError):
                    continue  # moved or deleted meanwhile: the next pass sees it
                if _finished(job) <= cutoff:
                    yield path, job

    def expire_audio(self, hours: float, now: datetime | None = None) -> builtins.list[str]:
        """Delete the recordings of jobs finished more than ``hours`` ago (their annotation,
        record and exports stay; ``audio_deleted_at`` says when). Returns their ids."""
        now = now or utcnow()
        done: builtins.list[str] = []
        for path, job in self._expired(now - timedelta(hours=hours)):
            audio = path / _safe_audio_name(job.audio.stored_as, Path(job.audio.stored_as))
            try:
                audio.unlink()
            except FileNotFoundError:
                if job.audio_deleted_at is not None:
                    continue  # done in an earlier pass
            if job.audio_deleted_at is None:
                job.audio_deleted_at = now
                self._save(path, job)
            fsync_dir(path)
            done.append(job.id)
        if done:
            log.info("deleted recordings past their retention", extra={"count": len(done)})
        return done

    def expire_jobs(self, hours: float, now: datetime | None = None) -> builtins.list[str]:
        """Delete the jobs finished more than ``hours`` ago with all their files (as
        ``DELETE /jobs/{id}`` does). Returns their ids."""
        now = now or utcnow()
        trashed = [
            (job.id, self._to_trash(path))
            for path, job in self._expired(now - timedelta(hours=hours))
        ]
        for _, trash in trashed:  # outside the lock
            shutil.rmtree(trash, ignore_errors=True)
        if trashed:
            log.info("deleted jobs past their retention", extra={"count": len(trashed)})
        return [job_id for job_id, _ in trashed]

    def archive_expired(self, now: datetime | None = None) -> builtins.list[str]:
        """Move completed and failed jobs older than the retention period to archived."""
        now = now or utcnow()
        cutoff = now - timedelta(hours=self.settings.retention_hours)
        moved: builtins.list[str] = []
        with self._locked():
            for folder in (COMPLETED, FAILED):
                for path in builtins.list(self._job_dirs(folder)):
                    try:
                        job = self._read(folder, path)
                    except (FileNotFoundError, ValueError):
                        continue
                    if _finished(job) > cutoff:
                        continue
                    job.state = JobState.ARCHIVED
                    self._transition(path, job, ARCHIVED)
                    moved.append(job.id)
        if moved:
            log.info("archived jobs", extra={"count": len(moved)})
        return moved
