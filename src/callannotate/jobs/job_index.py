"""An in-memory index of the file queue for listing jobs without reading every record.

``GET /jobs`` used to scan every state folder and read (or at least ``stat``) every job record
on each call. The index keeps, per job, only what never changes after submit (``owner``,
``created_at``) plus the state folder it was last seen in, in one list sorted newest first
and one per owner.

It stays correct across processes without any cooperation from them: every state change of a
job is a ``rename(2)`` of its folder, which changes the modification time of the state
folders it leaves and enters. Each refresh ``stat``s the five state folders and lists again
(names only) the ones whose ``(mtime, inode)`` changed; a record is read only for a job id
seen for the first time. Folder timestamps are coarse (a clock tick), so a folder changed
within :data:`RACY_WINDOW_NS` of its scan is listed again on the next refresh: a second
change inside the same tick cannot hide (the "racy timestamp" rule of git's index).

The index is rebuilt from the folders on first use (a restart loses nothing) and needs no
file of its own. The state a job shows is the one its folder implies; ``failed/`` holds both
failed and cancelled jobs, so telling those two apart reads the (stat-cached) record, and
only when the filter asks for one and not the other.
"""

from __future__ import annotations

import bisect
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from callannotate.jobs.models import Job, JobState

log = logging.getLogger(__name__)

#: A folder changed less than this before it was listed is listed again at the next refresh.
#: Generous against coarse timestamps and small clock differences on shared filesystems.
RACY_WINDOW_NS = 2_000_000_000

OrderKey = tuple[datetime, str]  # (created_at, id): newest first is this order reversed
# (folder, job folder) -> the record (shared, read-only) and the state its folder implies.
Peek = Callable[[str, Path], tuple[Job, JobState]]


@dataclass(slots=True)
class _Entry:
    owner: str
    created_at: datetime
    folder: str
    phones: tuple[str, ...] = ()  # the call's caller and callee (E.164), set at submit


@dataclass(frozen=True, slots=True)
class CallFilter:
    """What a listing asks beyond owner and state: created in ``[since, until)`` (aware
    datetimes), and ``phone`` (E.164) as the caller or the callee."""

    since: datetime | None = None
    until: datetime | None = None
    phone: str | None = None

    def __bool__(self) -> bool:
        return self.since is not None or self.until is not None or self.phone is not None


class JobIndex:
    """Job ids by owner and creation time, with the folder each one is in. Thread-safe."""

    def __init__(
        self,
        root: Path,
        folders: tuple[str, ...],
        states_in_folder: dict[str, tuple[JobState, ...]],
        peek: Peek,
        valid_id: Callable[[str], bool],
    ) -> None:
        self._root = root
        self._folders = folders
        self._states_in = states_in_folder
        self._peek = peek
        self._valid_id = valid_id
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        self._members: dict[str, set[str]] = {f: set() for f in folders}
        self._stamps: dict[str, tuple[int, int] | None] = dict.fromkeys(folders)
        self._all: list[OrderKey] = []
        self._by_owner: dict[str, list[OrderKey]] = {}
        self._left: set[str] = set()  # ids gone from a folder in this refresh
        self.rescans = 0  # folders listed again (tests and diagnostics)
        self.records_read = 0  # job records read to learn owner and creation time

    # ------------------------------------------------------------------ keeping it current

    def refresh(self) -> None:
        """Bring the index in step with the folders (cheap when nothing moved)."""
        with self._lock:
            self._refresh_locked()

    def _refresh_locked(self) -> None:
        for folder in self._folders:
            self._rescan(folder)
        if self._left:
            self._drop_gone()

    def _rescan(self, folder: str) -> None:
        directory = self._root / folder
        try:
            st = os.stat(directory)
        except FileNotFoundError:
            names: set[str] = set()
            stamp: tuple[int, int] | None = None
        else:
            stamp = (st.st_mtime_ns, st.st_ino)
            if stamp == self._stamps[folder]:
                return
            if time.time_ns() - st.st_mtime_ns < RACY_WINDOW_NS:
                stamp = None  # changed just now: another change may share this timestamp
            try:
                names = {n for n in os.listdir(directory) if self._valid_id(n)}
            except FileNotFoundError:
                names, stamp = set(), None
        self.rescans += 1
        old = self._members[folder]
        for job_id in names - old:
            entry = self._entries.get(job_id)
            if entry is not None:
                entry.folder = folder
                continue
            if not self._add(folder, job_id):
                names.discard(job_id)  # moved on (or unreadable): find it at the next look
                stamp = None
        self._left |= old - names
        self._members[folder] = names
        self._stamps[folder] = stamp

    def _add(self, folder: str, job_id: str) -> bool:
        try:
            job, _ = self._peek(folder, self._root / folder / job_id)
        except FileNotFoundError:
            return False
        except (OSError, ValueError):
            log.warning("unreadable job record", extra={"job_id": job_id})
            return False
        self.records_read += 1
        key = (job.created_at, job_id)
        phones = tuple(p for p in (job.caller, job.callee) if p)
        self._entries[job_id] = _Entry(job.owner, job.created_at, folder, phones)
        bisect.insort(self._all, key)
        bisect.insort(self._by_owner.setdefault(job.owner, []), key)
        return True

    def _drop_gone(self) -> None:
        """Forget jobs in no folder any more (deleted), and fix where moved ones are."""
        left, self._left = self._left, set()
        for job_id in left:
            entry = self._entries.get(job_id)
            if entry is None or job_id in self._members[entry.folder]:
                continue
            where = next((f for f in self._folders if job_id in self._members[f]), None)
            if where is not None:
                entry.folder = where
                continue
            del self._entries[job_id]
            key = (entry.created_at, job_id)
            for order in (self._all, self._by_owner.get(entry.owner, [])):
                i = bisect.bisect_left(order, key)
                if i < len(order) and order[i] == key:
                    del order[i]
            if not self._by_owner.get(entry.owner, True):
                del self._by_owner[entry.owner]

    # ------------------------------------------------------------------ queries

    def query(
        self,
        *,
        owner: str | None,
        states: set[JobState] | None,
        offset: int,
        limit: int,
        calls: CallFilter | None = None,
    ) -> tuple[list[tuple[str, str]], int]:
        """(page of (job id, folder) newest first, total matching) after a refresh."""
        with self._lock:
            self._refresh_locked()
            order = self._all if owner is None else self._by_owner.get(owner, [])
            if calls:
                order = self._calls(order, calls)
            if not states:
                total = len(order)
                stop = max(0, total - offset)
                keys = order[max(0, stop - limit) : stop]
                page = [(jid, self._entries[jid].folder) for _, jid in reversed(keys)]
                return page, total
            wanted = {f for f in self._folders if set(self._states_in[f]) & states}
            matching = [
                (jid, folder)
                for _, jid in reversed(order)
                if (folder := self._entries[jid].folder) in wanted
            ]
        # Folders holding several states (failed/: failed and cancelled) when the filter
        # takes only some of them: ask the records (stat-cached), outside the index lock.
        split = {f for f in wanted if not set(self._states_in[f]) <= states}
        if split:
            matching = [
                (jid, f) for jid, f in matching if f not in split or self._has(f, jid, states)
            ]
        return matching[offset : offset + limit], len(matching)

    def _calls(self, order: list[OrderKey], calls: CallFilter) -> list[OrderKey]:
        """The part of ``order`` (oldest first) created in the window, with the phone."""
        lo = 0 if calls.since is None else bisect.bisect_left(order, (calls.since, ""))
        hi = len(order) if calls.until is None else bisect.bisect_left(order, (calls.until, ""))
        window = order[lo:hi]
        if calls.phone is None:
            return window
        return [key for key in window if calls.phone in self._entries[key[1]].phones]

    def _has(self, folder: str, job_id: str, states: set[JobState]) -> bool:
        try:
            _, state = self._peek(folder, self._root / folder / job_id)
        except (OSError, ValueError):
            return False
        return state in states

    def folder_of(self, job_id: str) -> str | None:
        """Where the job was at the last refresh (a hint: it may have moved since)."""
        entry = self._entries.get(job_id)
        return entry.folder if entry is not None else None

    def ids(self) -> Iterable[str]:
        with self._lock:
            return list(self._entries)
