"""Prometheus metrics of one CallAnnotate process (API or ``callannotate worker``).

Every metric lives in prometheus-client's default registry and is named ``callannotate_*``
(docs/observability.md lists them with their labels). Labels are bounded: route templates
(never raw paths), a fixed method list, status codes, pipeline step names, failure reasons
from a fixed vocabulary; never a job id, user id or client id.

Where the numbers come from:

* HTTP and WebSocket metrics: :class:`callannotate.observability.middleware.MetricsMiddleware`;
* job counters and durations: :func:`observe_job_event`, fed by the job service with every
  job event of this process (the process whose queue manager finalised a job counts it);
* per-step durations, real-time factor and audio processed: :func:`observe_result`, called
  by the queue manager with each finished annotation (the step reports the pipeline wrote);
* model load times: :func:`observe_model_load`, from the worker processes' "ready" message;
* light tasks ended: :data:`LIGHT_TASKS_FINISHED`, counted by
  :class:`callannotate.jobs.light.Claim` when a task completes or fails;
* queue depth, jobs per state, oldest waiting job, light tasks per kind and state, workers,
  disk: computed at scrape time by
  :class:`callannotate.observability.collector.ServiceCollector`.

Worker processes (the embedded pool's spawned children) do not hold metrics themselves: they
already report everything to their queue manager over its pipe, and the manager's process
exports it. A Celery worker's prefork children do count their own jobs: ``callannotate
worker --executor celery`` switches its metrics to prometheus-client's multiprocess mode
before the children start (:mod:`callannotate.observability.multiproc`), which is why every
gauge here names its ``multiprocess_mode``.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Mapping
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics import MetricWrapperBase

from callannotate import __version__
from callannotate.errors import CallAnnotateError

log = logging.getLogger(__name__)

PREFIX = "callannotate"
CONTENT_TYPE = CONTENT_TYPE_LATEST

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED_ROUTE = "unmatched"

HTTP_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
JOB_BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200)
STEP_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
RTF_BUCKETS = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 5.0)
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0)
LOAD_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)

BUILD_INFO = Info(f"{PREFIX}_build", "Version of the running CallAnnotate.")
BUILD_INFO.info({"version": __version__})

HTTP_REQUESTS = Counter(
    f"{PREFIX}_http_requests",
    "HTTP requests answered, by route template, method and status code.",
    ["route", "method", "status"],
)
HTTP_DURATION = Histogram(
    f"{PREFIX}_http_request_duration_seconds",
    "Time to answer an HTTP request (until the last body byte), by route template and method.",
    ["route", "method"],
    buckets=HTTP_BUCKETS,
)
WS_CONNECTIONS = Gauge(
    f"{PREFIX}_websocket_connections",
    "WebSocket connections open now, by route template.",
    ["route"],
    multiprocess_mode="livesum",
)
WS_ACCEPTED = Counter(
    f"{PREFIX}_websocket_connections_accepted",
    "WebSocket connections accepted, by route template.",
    ["route"],
)
WS_FRAMES = Counter(
    f"{PREFIX}_websocket_frames_sent",
    "WebSocket messages sent to clients, by route template.",
    ["route"],
)
WS_CLOSES = Counter(
    f"{PREFIX}_websocket_closes",
    "WebSocket connections closed by the server, by route template and close code "
    "(1013 on /ws/{client_id}: a client too slow to read its events).",
    ["route", "code"],
)
STREAM_LATENCY = Histogram(
    f"{PREFIX}_stream_latency_seconds",
    "WS /stream: seconds from audio arriving to the transcript events it produced being sent.",
    buckets=LATENCY_BUCKETS,
)

JOBS_SUBMITTED = Counter(f"{PREFIX}_jobs_submitted", "Jobs queued by this process.")
JOBS_STARTED = Counter(f"{PREFIX}_jobs_started", "Job attempts started by this process.")
JOBS_COMPLETED = Counter(f"{PREFIX}_jobs_completed", "Jobs this process completed.")
JOBS_FAILED = Counter(
    f"{PREFIX}_jobs_failed",
    "Jobs this process finalised as failed or cancelled, by reason.",
    ["reason"],
)
JOBS_RETRIED = Counter(
    f"{PREFIX}_jobs_retried",
    "Job attempts that failed and went back to the queue, by reason.",
    ["reason"],
)
JOB_DURATION = Histogram(
    f"{PREFIX}_job_duration_seconds",
    "Time from a job's start in a worker to its end, by outcome (completed, failed).",
    ["outcome"],
    buckets=JOB_BUCKETS,
)
STEP_DURATION = Histogram(
    f"{PREFIX}_pipeline_step_duration_seconds",
    "Time of each pipeline step of a completed job (model loading excluded), by step.",
    ["step"],
    buckets=STEP_BUCKETS,
)
REAL_TIME_FACTOR = Histogram(
    f"{PREFIX}_job_real_time_factor",
    "Processing time divided by audio duration of completed jobs (below 1: faster than real time).",
    buckets=RTF_BUCKETS,
)
AUDIO_PROCESSED = Counter(
    f"{PREFIX}_audio_processed_seconds",
    "Seconds of audio in completed jobs (divide by 3600 for hours).",
)
LIGHT_TASKS_FINISHED = Counter(
    f"{PREFIX}_light_tasks_finished",
    "Light tasks (asynchronous enrollments and exports, callback deliveries) this process "
    "ended, by kind and outcome (completed, failed); counted where the task ends, Celery "
    "worker children included.",
    ["kind", "outcome"],
)
MODEL_LOAD = Histogram(
    f"{PREFIX}_model_load_seconds",
    "Time a worker process took to load one step's model at start, by step.",
    ["step"],
    buckets=LOAD_BUCKETS,
)

ALERT_NOTIFICATIONS = Counter(
    f"{PREFIX}_alert_notifications",
    "Built-in alert deliveries by channel (webhook, email) and outcome (delivered, retried: "
    "an attempt failed and will be retried, failed: given up, dropped: too many in flight).",
    ["channel", "outcome"],
)
ALERTS_FIRING = Gauge(
    f"{PREFIX}_alerts_firing",
    "Built-in alerts firing now (1) or not (0), by alert name.",
    ["alert"],
    multiprocess_mode="livemax",
)

# ------------------------------------------------- resilience (callannotate.resilience)

CIRCUIT_BREAKERS = Gauge(
    f"{PREFIX}_circuit_breakers",
    "Circuits per breaker (a fixed list of names) and state (closed, open, half_open); a "
    "breaker keyed by account or host counts each key's circuit.",
    ["breaker", "state"],
    multiprocess_mode="livesum",
)
CIRCUIT_TRANSITIONS = Counter(
    f"{PREFIX}_circuit_breaker_transitions",
    "State changes of the circuit breakers, by breaker and the state entered.",
    ["breaker", "state"],
)
WEBHOOK_DELIVERIES = Counter(
    f"{PREFIX}_webhook_deliveries",
    "Webhook delivery attempts by kind (callback: a job's callback_url, alert: built-in alert "
    "notices) and result (delivered, retried, failed, circuit_open).",
    ["kind", "result"],
)
EMAIL_DELIVERIES = Counter(
    f"{PREFIX}_email_deliveries",
    "E-mail delivery attempts of alert notices by result (delivered, retried, failed, "
    "circuit_open).",
    ["result"],
)
EVENTS_DROPPED = Counter(
    f"{PREFIX}_events_dropped",
    "Job events this process could not publish on the event bus (Redis down, circuit open).",
)
CONTACTS_SYNC = Counter(
    f"{PREFIX}_contacts_sync",
    "CardDAV account syncs by result (ok, failed, circuit_open: skipped, its server's breaker "
    "is open).",
    ["result"],
)
CONTACTS_LAST_SYNC = Gauge(
    f"{PREFIX}_contacts_last_success_timestamp_seconds",
    "Unix time of the last successful sync of a CardDAV account in this process (0: none).",
    multiprocess_mode="max",
)

# ----------------------------------------------------------- security (callannotate.security)

#: Why a credential was refused (anything else is counted as ``other``).
AUTH_FAILURE_REASONS = (
    "missing",  # a guarded route called without any credential
    "bad_token",  # malformed, tampered, wrong key or algorithm, unknown user
    "expired",  # an access token or refresh token past its expiry
    "bad_key",  # an API key that does not exist
    "revoked_key",
    "revoked_token",  # an access token issued before its user's password change
    "disabled",  # the user (or OAuth2 client) is disabled
    "bad_password",  # login: unknown user or wrong password (one reason, like the answer)
    "throttled",  # login refused by the failed-login throttle
    "bad_client",  # client credentials: unknown client or wrong secret
    "bad_refresh",  # an unknown refresh token
    "refresh_reuse",  # a spent refresh token presented again (its family is revoked)
    "other",
)
AUTH_FAILURES = Counter(
    f"{PREFIX}_auth_failures",
    "Refused credentials and failed logins, by reason (a fixed list, see the docs).",
    ["reason"],
)
#: Rate-limit budgets (``callannotate.security.ratelimit.Budget``).
RATE_LIMIT_SCOPES = ("login", "uploads", "reads", "ws_connect", "ws_messages", "other")
RATE_LIMIT_REJECTIONS = Counter(
    f"{PREFIX}_rate_limit_rejections",
    "Calls refused by the rate limiter (429, WebSocket refused or message dropped), by budget.",
    ["scope"],
)
#: Results of webhook / e-mail deliveries and CardDAV syncs (the series exported from the start).
WEBHOOK_KINDS = ("callback", "alert")
DELIVERY_RESULTS = ("delivered", "retried", "failed", "circuit_open")
CONTACTS_SYNC_RESULTS = ("ok", "failed", "circuit_open")


def _create_fixed_series() -> None:
    """Every series of a fixed label vocabulary exists from the start (0), so dashboards and
    rate() see "none" rather than "no data"."""
    for reason in AUTH_FAILURE_REASONS:
        AUTH_FAILURES.labels(reason)
    for scope in RATE_LIMIT_SCOPES:
        RATE_LIMIT_REJECTIONS.labels(scope)
    for result in DELIVERY_RESULTS:
        EMAIL_DELIVERIES.labels(result)
        for kind in WEBHOOK_KINDS:
            WEBHOOK_DELIVERIES.labels(kind, result)
    for result in CONTACTS_SYNC_RESULTS:
        CONTACTS_SYNC.labels(result)


_create_fixed_series()


def observe_auth_failure(reason: str) -> None:
    """Count one refused credential or failed login (an unknown reason counts as other)."""
    AUTH_FAILURES.labels(reason if reason in AUTH_FAILURE_REASONS else "other").inc()


def observe_rate_limit_rejection(scope: str) -> None:
    """Count one call the rate limiter refused from budget ``scope``."""
    RATE_LIMIT_REJECTIONS.labels(scope if scope in RATE_LIMIT_SCOPES else "other").inc()


# --------------------------------------------------------------------------- failure reasons

TIMEOUT = "timeout"
CANCELLED = "cancelled"
WORKER_DIED = "worker_died"
OTHER = "error"
_CODE = re.compile(r"^([a-z_]{2,40}):")


def _known_codes() -> frozenset[str]:
    codes = {CallAnnotateError.code}
    stack: list[type[CallAnnotateError]] = [CallAnnotateError]
    while stack:
        cls = stack.pop()
        for sub in cls.__subclasses__():
            codes.add(sub.code)
            stack.append(sub)
    return frozenset(codes)


def failure_reason(error: str | None, *, state: str | None = None) -> str:
    """A bounded label for why a job failed: ``cancelled``, ``timeout``, ``worker_died``, a
    domain error code (``invalid_audio``, ``model_unavailable``, ...) or ``error``."""
    if state == CANCELLED or error == CANCELLED:
        return CANCELLED
    text = (error or "").strip()
    if text.startswith(TIMEOUT):
        return TIMEOUT
    # a worker pool's child that exited, or (file queue) a runner whose lock was found free:
    # a SIGKILLed Celery child, a lost worker machine
    if text.startswith(("worker process died", "interrupted: the process running")):
        return WORKER_DIED
    match = _CODE.match(text)
    if match and match.group(1) in _known_codes():
        return match.group(1)
    return OTHER


# --------------------------------------------------------------------------- job events


class _Starts:
    """When each job running in this process started (bounded by the running jobs)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._at: dict[str, float] = {}

    def begin(self, job_id: str) -> None:
        with self._lock:
            self._at[job_id] = time.monotonic()

    def end(self, job_id: str) -> float | None:
        with self._lock:
            started = self._at.pop(job_id, None)
        return None if started is None else time.monotonic() - started


_starts = _Starts()


def observe_job_event(event: Any) -> None:
    """Count one job event of this process (a :class:`~callannotate.jobs.events.JobEvent`).

    Never raises: a metrics problem must not disturb job processing.
    """
    try:
        _observe_job_event(event.type, event.job_id, event.data)
    except Exception:  # pragma: no cover - defensive
        log.exception("job metrics failed")


def _observe_job_event(kind: str, job_id: str, data: Mapping[str, Any]) -> None:
    if kind == "job.queued":
        reason = data.get("reason")
        if reason:  # an attempt failed and the job went back to the queue
            _starts.end(job_id)
            JOBS_RETRIED.labels(failure_reason(str(reason))).inc()
        elif not data.get("attempts"):
            JOBS_SUBMITTED.inc()
    elif kind == "job.started":
        JOBS_STARTED.inc()
        _starts.begin(job_id)
    elif kind == "job.completed":
        JOBS_COMPLETED.inc()
        elapsed = _starts.end(job_id)
        if elapsed is not None:
            JOB_DURATION.labels("completed").observe(elapsed)
    elif kind == "job.failed":
        state = str(data.get("state") or "failed")
        JOBS_FAILED.labels(failure_reason(data.get("error"), state=state)).inc()
        elapsed = _starts.end(job_id)
        if elapsed is not None:
            JOB_DURATION.labels("cancelled" if state == CANCELLED else "failed").observe(elapsed)


def observe_result(result: Mapping[str, Any], elapsed_s: float) -> None:
    """Step durations, real-time factor and audio seconds of one completed annotation
    (its JSON as a dict); ``elapsed_s``: the job's processing time. Never raises."""
    try:
        for report in result.get("steps") or []:
            if not isinstance(report, Mapping) or report.get("status") != "done":
                continue
            name, seconds = report.get("name"), report.get("seconds")
            if isinstance(name, str) and isinstance(seconds, int | float) and seconds >= 0:
                STEP_DURATION.labels(name[:40]).observe(float(seconds))
        recording = result.get("recording")
        duration = recording.get("duration") if isinstance(recording, Mapping) else None
        if isinstance(duration, int | float) and duration > 0:
            AUDIO_PROCESSED.inc(float(duration))
            REAL_TIME_FACTOR.observe(max(0.0, elapsed_s) / float(duration))
    except Exception:  # pragma: no cover - defensive
        log.exception("result metrics failed")


def observe_model_load(load_seconds: Any) -> None:
    """Model load times a worker process reported (``{step: seconds}``)."""
    if not isinstance(load_seconds, Mapping):
        return
    for step, seconds in load_seconds.items():
        if isinstance(step, str) and isinstance(seconds, int | float) and seconds >= 0:
            MODEL_LOAD.labels(step[:40]).observe(float(seconds))


def observe_stream_latency(seconds: float) -> None:
    STREAM_LATENCY.observe(max(0.0, seconds))


_exposition: CollectorRegistry = REGISTRY


def use_exposition_registry(registry: CollectorRegistry) -> None:
    """Serve ``registry`` at ``GET /metrics`` and on the metrics port instead of the default
    one (several API processes: their merged totals, :mod:`~.multiproc`)."""
    global _exposition
    _exposition = registry


def exposition_registry() -> CollectorRegistry:
    return _exposition


def render() -> bytes:
    """The text exposition of every metric of this process (of every API process sharing
    its port, with ``api.processes`` > 1)."""
    return generate_latest(_exposition)


def own_metrics() -> list[MetricWrapperBase]:
    """The metric objects of this module (Info excepted: it has no value to store)."""
    return [
        m
        for m in globals().values()
        if isinstance(m, MetricWrapperBase) and not isinstance(m, Info)
    ]


def recreate_values() -> None:
    """Give every metric of this module new value holders of the current
    ``prometheus_client.values.ValueClass`` (see :mod:`callannotate.observability.multiproc`).

    Labelled metrics keep the label values they had (their children are created again, at 0);
    call it before anything was counted. Relies on prometheus-client internals
    (``_labelnames``, ``_metrics``, ``_metric_init``), pinned in pyproject.toml and covered by
    tests/observability/test_multiproc.py.
    """
    for metric in own_metrics():
        if metric._labelnames:
            with metric._lock:
                keys = list(metric._metrics)
                metric._metrics.clear()
            for key in keys:
                metric.labels(*key)
        else:
            metric._metric_init()  # type: ignore[no-untyped-call]
    _create_fixed_series()
