"""Light-task gauges computed at scrape time (asynchronous enrollments and exports, callbacks).

The same figures as ``GET /admin/queues`` ``light`` and ``callannotate status``, from the
light task folder (``data_dir/light/``, shared by every process and executor), labelled by
``kind`` only:

* ``callannotate_light_tasks{kind, state}``: ``waiting`` (queued, due now), ``delayed``
  (queued, waiting out a retry backoff), ``running`` (a live process runs it), ``orphaned``
  (left running by a process that died; taken over next);
* ``callannotate_light_task_oldest_waiting_seconds{kind}``: how long the oldest task due now
  has waited for a slot, since it was accepted or since its backoff ended (0 when none): a
  retry backing off from a failing receiver is not counted as waiting.

Cost: one listing of the folder and one ``stat`` of each ``task.json`` per scrape; a record
is parsed again only when its file changed (finished tasks, which are most of the folder
until they are purged, never change), and a running task's lock is tried to tell
``running`` from ``orphaned``.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.core import GaugeMetricFamily, Metric

from callannotate.jobs.light import (
    TASK_FILE,
    LightKind,
    LightState,
    LightStore,
    LightTask,
    lock_free,
)
from callannotate.observability.metrics import PREFIX

STATES = ("waiting", "delayed", "running", "orphaned")
#: A record written less than this before it was parsed is parsed again at the next scrape
#: (a rewrite within one tick of the file clock may keep the inode, mtime and size).
RACY_NS = 50_000_000
_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True, slots=True)
class _Record:
    kind: str
    state: LightState
    created_at: float
    not_before: float | None


def _record(task: LightTask) -> _Record:
    return _Record(
        kind=task.kind.value,
        state=task.state,
        created_at=task.created_at.timestamp(),
        not_before=task.not_before.timestamp() if task.not_before is not None else None,
    )


class LightTally:
    """Counts the light tasks per kind and state; keeps parsed records while unchanged."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[tuple[int, int, int], _Record]] = {}
        self._root: Path | None = None  # the folder the cache is of
        self.parsed = 0  # records parsed (tests and diagnostics)

    def counts(
        self, store: LightStore, now: float | None = None
    ) -> tuple[dict[str, dict[str, int]], dict[str, float]]:
        """({kind: {state: tasks}}, {kind: oldest waiting seconds}) for every kind."""
        now = time.time() if now is None else now
        counts = {kind.value: dict.fromkeys(STATES, 0) for kind in LightKind}
        oldest = {kind.value: 0.0 for kind in LightKind}
        with self._lock:
            records = self._records(store)
        for name, record in records.items():
            row = counts.setdefault(record.kind, dict.fromkeys(STATES, 0))
            if record.state == LightState.RUNNING:
                row["orphaned" if lock_free(store.root / name) else "running"] += 1
            elif record.state == LightState.QUEUED:
                due = record.not_before is None or record.not_before <= now
                row["waiting" if due else "delayed"] += 1
                if due:
                    since = max(record.created_at, record.not_before or 0.0)
                    oldest[record.kind] = max(oldest.get(record.kind, 0.0), now - since)
        return counts, oldest

    def _records(self, store: LightStore) -> dict[str, _Record]:
        if store.root != self._root:  # another app's folder (tests build several)
            self._cache.clear()
            self._root = store.root
        out: dict[str, _Record] = {}
        try:
            entries = list(os.scandir(store.root))
        except FileNotFoundError:
            entries = []
        for entry in entries:
            name = entry.name
            if len(name) != 32 or not _HEX.issuperset(name):
                continue  # build folders, stray files
            path = os.path.join(entry.path, TASK_FILE)
            try:
                st = os.stat(path)
            except OSError:
                continue  # not a task folder, or purged meanwhile
            key = (st.st_ino, st.st_mtime_ns, st.st_size)
            hit = self._cache.get(name)
            if hit is not None and hit[0] == key:
                out[name] = hit[1]
                continue
            try:
                with open(path, "rb") as fh:
                    record = _record(LightTask.model_validate_json(fh.read()))
            except (OSError, ValueError):
                continue
            self.parsed += 1
            out[name] = record
            if time.time_ns() - st.st_mtime_ns >= RACY_NS:
                self._cache[name] = (key, record)
            else:
                self._cache.pop(name, None)
        for gone in self._cache.keys() - out.keys():
            del self._cache[gone]  # purged tasks: memory stays bounded by the folder
        return out


def light_families(tally: LightTally, store: LightStore) -> Iterator[Metric]:
    """The light-task gauges (every kind and state, 0 when there is none)."""
    counts, oldest = tally.counts(store)
    tasks = GaugeMetricFamily(
        f"{PREFIX}_light_tasks",
        "Light tasks not finished (data_dir/light), by kind and state: waiting (due now), "
        "delayed (in a retry backoff), running, orphaned (its process died).",
        labels=["kind", "state"],
    )
    for kind, row in sorted(counts.items()):
        for state in STATES:
            tasks.add_metric([kind, state], row[state])
    yield tasks
    age = GaugeMetricFamily(
        f"{PREFIX}_light_task_oldest_waiting_seconds",
        "Seconds the oldest light task due now has waited for a slot (since accepted, or "
        "since its retry backoff ended), by kind; 0 when none waits.",
        labels=["kind"],
    )
    for kind, seconds in sorted(oldest.items()):
        age.add_metric([kind], round(max(0.0, seconds), 3))
    yield age
