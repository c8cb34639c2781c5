"""Finished jobs whose callback delivery was never stored (the process died in between).

A job's final state is written first (its folder renamed into ``completed/`` or ``failed/``),
then its process stores the callback delivery as a light task
(:meth:`~callannotate.jobs.callbacks.CallbackDispatcher.queue_delivery`). A process killed
between the two would lose that one announcement. :class:`CallbackSweep` closes the gap: the
light lane's maintenance (every ``queue.lease_seconds``, and at start) asks it for finished
jobs that have a ``callback_url`` but neither a delivery task nor a delivery attempt since
they finished, and the dispatcher stores and delivers those.

No double delivery: a delivery task's id is derived from (job id, event, ``finished_at``)
(:func:`delivery_task_id`), so the normal path and any number of sweeping processes create
the same task, and :meth:`LightStore.create` with that id stores it once (the rename into
place is atomic); whoever loses the race does nothing. A job that finished less than
``grace_s`` ago is left to its own process (it stores the task within milliseconds).

Cost: the ``completed/`` and ``failed/`` folders are listed again only when they changed (their
mtime, as in :mod:`callannotate.jobs.job_index`); then one ``stat`` per job folder that changed
within ``window_s`` (a folder's ctime: it is renamed in when the job ends), none for older ones
once seen, and a ``job.json`` read only for a job folder not seen before (or changed since)
within the window. A job once judged is not read again. Memory: one entry per finished job.
(A job retried and ended again between two passes, after the window of its first end, is not
looked at again: its own process announces it as usual.)
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass
from datetime import datetime

from callannotate.errors import NotFound
from callannotate.jobs.filequeue import COMPLETED, FAILED, FileQueue, valid_job_id
from callannotate.jobs.light import LightStore
from callannotate.jobs.models import Job, JobState

log = logging.getLogger(__name__)

#: The event each finished-job folder announced (cancelled jobs are in ``failed/`` too).
EVENTS = ((COMPLETED, "job.completed"), (FAILED, "job.failed"))
#: A folder changed less than this before it was listed is listed again at the next pass.
RACY_WINDOW_NS = 2_000_000_000
ENDED = frozenset({JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED})
OLD = -1  # a job folder last changed before the window (judged: nothing to do, ever)


def delivery_task_id(job_id: str, event: str, finished_at: datetime | None) -> str:
    """The light task id of the delivery announcing one end of a job: the same in every
    process, different for each time the job ends (a job retried and ended again)."""
    stamp = finished_at.isoformat() if finished_at is not None else ""
    return hashlib.sha256(f"callback|{job_id}|{event}|{stamp}".encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Missed:
    """A finished job whose announcement was never stored."""

    job: Job
    event: str
    task_id: str


class CallbackSweep:
    """Finds :class:`Missed` deliveries; one per process, called from one thread at a time."""

    def __init__(
        self, queue: FileQueue, light: LightStore, *, window_s: float, grace_s: float
    ) -> None:
        self.queue = queue
        self.light = light
        self.window_s = window_s
        self.grace_s = grace_s
        self._stamps: dict[str, tuple[int, int] | None] = {}
        # per folder: job id -> the job folder's ctime when judged (done with it since)
        self._judged: dict[str, dict[str, int]] = {folder: {} for folder, _ in EVENTS}
        self._recheck: dict[str, bool] = {folder: False for folder, _ in EVENTS}
        self.records_read = 0  # job records read (tests and diagnostics)
        self.rescans = 0  # folders listed

    def find(self, busy: frozenset[str] = frozenset()) -> list[Missed]:
        """Missed deliveries now; ``busy``: job ids an unfinished delivery task names."""
        out: list[Missed] = []
        for folder, event in EVENTS:
            out.extend(self._scan(folder, event, busy))
        return out

    def _scan(self, folder: str, event: str, busy: frozenset[str]) -> list[Missed]:
        directory = self.queue.root / folder
        try:
            st = os.stat(directory)
        except FileNotFoundError:
            return []
        stamp: tuple[int, int] | None = (st.st_mtime_ns, st.st_ino)
        if stamp == self._stamps.get(folder) and not self._recheck[folder]:
            return []  # no job entered or left since the last pass
        if time.time_ns() - st.st_mtime_ns < RACY_WINDOW_NS:
            stamp = None  # changed just now: another change may share this timestamp
        now_ns = time.time_ns()
        horizon_ns = now_ns - int(self.window_s * 1e9)
        judged, seen = self._judged[folder], {}
        self.rescans += 1
        recheck = False
        missed: list[Missed] = []
        try:
            entries = list(os.scandir(directory))
        except FileNotFoundError:
            entries = []
        for entry in entries:
            if not valid_job_id(entry.name):
                continue
            before = judged.get(entry.name)
            if before == OLD:
                seen[entry.name] = OLD  # ended before the window: not even a stat
                continue
            try:
                ctime = entry.stat(follow_symlinks=False).st_ctime_ns
            except FileNotFoundError:
                continue  # moved on meanwhile
            if ctime < horizon_ns:
                seen[entry.name] = OLD
                continue
            if before == ctime:
                seen[entry.name] = ctime  # unchanged since judged
                continue
            verdict = self._judge(entry.name, event, busy, now_ns)
            if verdict is None:
                recheck = True  # ended within the grace period: look again next pass
                continue
            seen[entry.name] = ctime
            if isinstance(verdict, Missed):
                missed.append(verdict)
        self._judged[folder] = seen
        self._recheck[folder] = recheck
        self._stamps[folder] = stamp
        return missed

    def _judge(
        self, job_id: str, event: str, busy: frozenset[str], now_ns: int
    ) -> Missed | bool | None:
        """``Missed``; ``False``: nothing to do; ``None``: too early to tell."""
        try:
            job = self.queue.get(job_id)
        except (NotFound, OSError, ValueError):
            return False
        self.records_read += 1
        if not job.callback_url or job.state not in ENDED or job.finished_at is None:
            return False
        finished_ns = int(job.finished_at.timestamp() * 1e9)
        if finished_ns < now_ns - int(self.window_s * 1e9) or job.id in busy:
            return False
        if any(attempt.at >= job.finished_at for attempt in job.callbacks):
            return False  # announced (an attempt was made since it ended)
        task_id = delivery_task_id(job.id, event, job.finished_at)
        if (self.light.root / task_id).exists():
            return False  # stored: the delivery runs, or ran, from its task
        if now_ns - finished_ns < self.grace_s * 1e9:
            return None  # its own process is storing it right now
        return Missed(job=job, event=event, task_id=task_id)
