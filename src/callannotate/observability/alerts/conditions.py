"""The conditions the built-in alerts watch, evaluated from the metrics' own readings.

Every check reads what Prometheus would scrape, so the built-in alerts and the shipped alert
rules agree: the queue, worker and disk gauges come from a
:class:`~callannotate.observability.collector.ServiceCollector` pointed at this process's
queue and executor (the same code as ``GET /metrics``), the failed/completed counts and job
durations from this process's job counters (``callannotate_jobs_failed_total``,
``callannotate_jobs_completed_total``, ``callannotate_job_duration_seconds``). Counters are
sampled at every check; a window's count is the difference to the oldest sample in it.

Conditions (the ``alert`` name of a notice):

* ``jobs_failing``: at least ``alerts.failed_min_count`` jobs failed in ``alerts.window_s``
  (cancellations excluded) and they are at least ``alerts.failed_ratio`` of the jobs that ended;
* ``queue_wait_sla``: the oldest queued job waited longer than ``metrics.queue_wait_sla_s``;
* ``job_duration_sla``: a running job has run longer than ``metrics.job_duration_sla_s``, or a
  job that ended in the window took longer (histogram bucket at or below the SLA);
* ``workers_lost``: this process runs workers and none is alive, or a running job's lease
  (its worker's heartbeat) was not renewed within ``queue.lease_seconds``;
* ``disk_low``: the data folder's filesystem has less than ``alerts.disk_free_ratio`` free;
* ``circuit_open.<dependency>``: a dependency's circuit breaker is open (``contacts``: a CardDAV
  account the service stopped calling).
"""

from __future__ import annotations

import json
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from prometheus_client.core import Metric

from callannotate.config import Settings
from callannotate.jobs.executors.base import Executor
from callannotate.jobs.filequeue import JOB_FILE, PROCESSING, FileQueue, valid_job_id
from callannotate.observability.collector import ServiceCollector, Source
from callannotate.observability.metrics import (
    CANCELLED,
    JOB_DURATION,
    JOBS_COMPLETED,
    JOBS_FAILED,
    PREFIX,
)

Severity = Literal["warning", "critical"]
# dependency name -> keys (accounts, hosts) whose breaker is open now
BreakerReader = Callable[[], Mapping[str, Sequence[str]]]
DEPENDENCIES = ("contacts",)


@dataclass(frozen=True)
class Condition:
    """One condition as evaluated now."""

    alert: str
    firing: bool
    severity: Severity
    summary: str
    details: dict[str, Any] = field(default_factory=dict)


def _readings(metrics: Iterable[Metric]) -> dict[str, float]:
    """``{sample name or name{label="v",...}: value}`` of metric families."""
    out: dict[str, float] = {}
    for family in metrics:
        for sample in family.samples:
            key = sample.name
            if sample.labels:
                key += "{" + ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items())) + "}"
            out[key] = float(sample.value)
    return out


@dataclass(frozen=True)
class _Counts:
    at: float
    failed: float
    ended: float
    over_sla: float


class Conditions:
    """Evaluates every condition of one process; call :meth:`evaluate` periodically."""

    def __init__(
        self,
        settings: Settings,
        queue: FileQueue,
        executor: Executor | None,
        *,
        breakers: BreakerReader | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.cfg = settings.alerts
        self.queue = queue
        self.executor = executor
        self.breakers = breakers
        self._clock = clock
        self._collector = ServiceCollector()  # its own listing caches, not registered
        self._collector.attach(Source(queue, executor, settings.metrics))
        self._history: deque[_Counts] = deque()

    def evaluate(self) -> list[Condition]:
        """Every condition now (blocking file reads: run it in a thread)."""
        gauges = _readings(self._collector.collect())
        counts = self._window()
        return [
            self._jobs_failing(counts),
            self._queue_wait(gauges),
            self._job_duration(counts),
            self._workers(gauges),
            self._disk(gauges),
            *self._circuits(),
        ]

    # ----------------------------------------------------------------- counters

    def _sample(self) -> _Counts:
        counters = _readings([*JOBS_FAILED.collect(), *JOBS_COMPLETED.collect()])
        failed = sum(
            value
            for key, value in counters.items()
            if key.startswith(f"{PREFIX}_jobs_failed_total{{")
            and f'reason="{CANCELLED}"' not in key
        )
        completed = counters.get(f"{PREFIX}_jobs_completed_total", 0.0)
        return _Counts(self._clock(), failed, failed + completed, self._over_sla())

    def _over_sla(self) -> float:
        """Jobs (completed or failed) whose duration fell above the SLA's bucket, ever: the
        count minus the largest bucket whose bound is at or below the SLA."""
        sla = self.settings.metrics.job_duration_sla_s
        over = 0.0
        for family in JOB_DURATION.collect():
            total: dict[str, float] = {}
            below: dict[str, tuple[float, float]] = {}  # outcome -> (bound, cumulative count)
            for sample in family.samples:
                outcome = sample.labels.get("outcome", "")
                if outcome not in ("completed", "failed"):
                    continue
                if sample.name.endswith("_count"):
                    total[outcome] = sample.value
                elif sample.name.endswith("_bucket"):
                    bound = float(sample.labels["le"])
                    if bound <= sla and bound >= below.get(outcome, (-1.0, 0.0))[0]:
                        below[outcome] = (bound, sample.value)
            over += sum(n - below.get(o, (0.0, 0.0))[1] for o, n in total.items())
        return over

    def _window(self) -> _Counts:
        """Counts of the last ``alerts.window_s`` (zero at the first check)."""
        now = self._sample()
        self._history.append(now)
        start = now.at - self.cfg.window_s
        while len(self._history) > 1 and self._history[1].at <= start:
            self._history.popleft()
        base = self._history[0]
        return _Counts(
            now.at,
            max(0.0, now.failed - base.failed),
            max(0.0, now.ended - base.ended),
            max(0.0, now.over_sla - base.over_sla),
        )

    # ----------------------------------------------------------------- conditions

    def _jobs_failing(self, counts: _Counts) -> Condition:
        failed, ended = int(counts.failed), int(counts.ended)
        ratio = failed / ended if ended else 0.0
        firing = failed >= self.cfg.failed_min_count and ratio >= self.cfg.failed_ratio
        minutes = self.cfg.window_s / 60
        return Condition(
            "jobs_failing",
            firing,
            "warning",
            f"{failed} of {ended} jobs ended in the last {minutes:g} min failed",
            {"failed": failed, "ended": ended, "ratio": round(ratio, 3)},
        )

    def _queue_wait(self, gauges: Mapping[str, float]) -> Condition:
        wait = gauges.get(f"{PREFIX}_queue_oldest_waiting_seconds", 0.0)
        sla = self.settings.metrics.queue_wait_sla_s
        depth = int(gauges.get(f"{PREFIX}_queue_depth", 0.0))
        return Condition(
            "queue_wait_sla",
            wait > sla,
            "warning",
            f"oldest queued job waited {wait:.0f} s (SLA {sla:g} s); {depth} waiting",
            {"oldest_wait_s": round(wait, 1), "sla_s": sla, "queue_depth": depth},
        )

    def _job_duration(self, counts: _Counts) -> Condition:
        sla = self.settings.metrics.job_duration_sla_s
        running = _longest_running(self.queue, time.time())
        over = int(counts.over_sla)
        firing = running > sla or over > 0
        parts = []
        if running > sla:
            parts.append(f"a job has been running {running:.0f} s")
        if over:
            parts.append(
                f"{over} job(s) ended in the last {self.cfg.window_s / 60:g} min took longer"
            )
        text = "; ".join(parts) or f"longest running job {running:.0f} s"
        return Condition(
            "job_duration_sla",
            firing,
            "warning",
            f"{text} (SLA {sla:g} s)",
            {"longest_running_s": round(running, 1), "ended_over_sla": over, "sla_s": sla},
        )

    def _workers(self, gauges: Mapping[str, float]) -> Condition:
        configured = int(gauges.get(f"{PREFIX}_workers_configured", 0.0))
        alive = int(gauges.get(f"{PREFIX}_workers_alive", 0.0))
        age = gauges.get(f"{PREFIX}_worker_heartbeat_age_seconds", 0.0)
        lease = self.settings.queue.lease_seconds
        problems = []
        if configured and not alive:
            problems.append(f"no worker process alive (of {configured})")
        if age > lease:
            problems.append(f"a running job's heartbeat is {age:.0f} s old (> {lease:g} s)")
        return Condition(
            "workers_lost",
            bool(problems),
            "critical",
            "; ".join(problems) or f"{alive} of {configured} worker processes alive",
            {"alive": alive, "configured": configured, "heartbeat_age_s": round(age, 1)},
        )

    def _disk(self, gauges: Mapping[str, float]) -> Condition:
        free = gauges.get(f"{PREFIX}_data_dir_free_bytes")
        size = gauges.get(f"{PREFIX}_data_dir_size_bytes")
        if free is None or not size:
            return Condition("disk_low", False, "critical", "data folder size unknown")
        share = free / size
        return Condition(
            "disk_low",
            share < self.cfg.disk_free_ratio,
            "critical",
            f"{share:.1%} free on the data folder ({free / 1024**3:.1f} GiB; "
            f"threshold {self.cfg.disk_free_ratio:.0%})",
            {"free_bytes": int(free), "size_bytes": int(size), "free_ratio": round(share, 4)},
        )

    def _circuits(self) -> list[Condition]:
        opened: Mapping[str, Sequence[str]] = {}
        if self.breakers is not None:
            try:
                opened = self.breakers()
            except Exception:  # a broken reader must not stop the other checks
                opened = {}
        out = []
        for name in sorted({*DEPENDENCIES, *opened}):
            keys = list(opened.get(name, ()))
            out.append(
                Condition(
                    f"circuit_open.{name}",
                    bool(keys),
                    "warning",
                    f"{name}: circuit open for {len(keys)} target(s)"
                    if keys
                    else f"{name}: every circuit closed",
                    {"open": keys[:20]},
                )
            )
        return out


def _longest_running(queue: FileQueue, now: float) -> float:
    """Seconds the longest running job has been running (0: none runs)."""
    folder = queue.root / PROCESSING
    try:
        names = [n for n in os.listdir(folder) if valid_job_id(n)]
    except FileNotFoundError:
        return 0.0
    longest = 0.0
    for name in names:
        try:
            raw = json.loads((folder / name / JOB_FILE).read_bytes())
            started = datetime.fromisoformat(str(raw["started_at"])).timestamp()
        except (OSError, ValueError, KeyError, TypeError):
            continue
        longest = max(longest, now - started)
    return longest
