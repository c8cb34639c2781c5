"""The Celery application of executor ``celery``, built from the settings tree.

Delivery semantics (docs/scale-out.md):

* ``task_acks_late`` + ``task_reject_on_worker_lost``: a task is acknowledged only when it
  returned; a worker child that dies mid-job puts its message back on the queue;
* ``worker_prefetch_multiplier = 1``: a busy child does not sit on waiting jobs;
* the Redis ``visibility_timeout`` is longer than the longest allowed job
  (``workers.job_timeout_s + workers.timeout_grace_s + jobs.visibility_margin_s``), so a
  message is redelivered only when its worker is really gone;
* soft limit ``workers.job_timeout_s``, hard limit ``+ workers.timeout_grace_s``: both end
  the job as failed with reason ``timeout``;
* two queues, ``<prefix>.heavy`` (annotation jobs) and ``<prefix>.light`` (short work), so
  a backlog of long calls never delays short work served by a worker on the light queue;
* message priorities on Redis (``priority_steps`` 0..9, see :func:`message_priority`), so a
  job's ``priority`` decides which waiting job a free worker takes;
* ``worker_proc_alive_timeout`` (:data:`CHILD_START_TIMEOUT_S`): a child replacing a killed
  one loads its models before it reports itself up, which takes longer than Celery's 4 s.

The job id is the only payload; no result backend (results stay in the job folder).
"""

from __future__ import annotations

import functools
from typing import Any

from celery import Celery
from celery.worker.consumer import Consumer
from kombu.entity import Queue

from callannotate.config import Settings
from callannotate.jobs.models import DEFAULT_PRIORITY, MAX_PRIORITY, MIN_PRIORITY

RUN_JOB = "callannotate.run_job"
# Redis pops priority 0 first (kombu scans its priority lists in ascending order), so a job's
# priority (9 = most urgent) is sent as MAX_PRIORITY - priority.
PRIORITY_STEPS = list(range(MIN_PRIORITY, MAX_PRIORITY + 1))


# Seconds between a worker's tries to reach a lost broker (kombu's default grows 2, 4, 6 ...
# to 30 s, so a worker noticed Redis back up to 30 s late: 12 s after a 1-minute outage).
RECONNECT_INTERVAL_S = 1.0

# Seconds a new worker child may take to report itself up (Celery's default: 4 s, then it
# SIGKILLs the child). A child loads every model in ``worker_process_init`` first (12 s for
# the default models while the other children work), so with the default a child killed
# mid-job (OOM, SIGKILL) was never replaced: each new one was killed while loading.
CHILD_START_TIMEOUT_S = 600.0


class ReconnectingConsumer(Consumer):  # type: ignore[misc]
    """Celery's consumer, retrying a lost broker every ``RECONNECT_INTERVAL_S`` (a TCP
    connect to a dead port costs nothing) instead of kombu's growing interval."""

    def ensure_connected(self, conn: Any) -> Any:
        conn.ensure_connection = functools.partial(
            conn.ensure_connection,
            interval_start=RECONNECT_INTERVAL_S,
            interval_step=0,
            interval_max=RECONNECT_INTERVAL_S,
        )
        return super().ensure_connected(conn)


def message_priority(job_priority: int) -> int:
    """The Celery message priority on Redis of a job priority (0 is served first)."""
    return MAX_PRIORITY - min(MAX_PRIORITY, max(MIN_PRIORITY, job_priority))


def heavy_queue(settings: Settings) -> str:
    return f"{settings.jobs.queue_prefix}.heavy"


def light_queue(settings: Settings) -> str:
    return f"{settings.jobs.queue_prefix}.light"


def visibility_timeout_s(settings: Settings) -> float:
    """Seconds before the broker redelivers an unacknowledged task."""
    workers = settings.workers
    return workers.job_timeout_s + workers.timeout_grace_s + settings.jobs.visibility_margin_s


def create_celery_app(settings: Settings) -> Celery:
    """A Celery app for ``settings`` (not the process-wide default app)."""
    jobs, workers = settings.jobs, settings.workers
    heavy, light = heavy_queue(settings), light_queue(settings)
    app = Celery(f"{jobs.queue_prefix}", broker=jobs.broker_url, set_as_current=False)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        broker_transport_options={
            "visibility_timeout": visibility_timeout_s(settings),
            "global_keyprefix": f"{jobs.queue_prefix}:",
            # one Redis list per priority; a worker serving several queues takes them in
            # the order it lists them (light before heavy), not round robin
            "priority_steps": PRIORITY_STEPS,
            "queue_order_strategy": "priority",
        },
        task_default_priority=message_priority(DEFAULT_PRIORITY),
        broker_connection_retry_on_startup=True,
        # broker lost (Redis restart): the worker reconnects for as long as it takes, every
        # RECONNECT_INTERVAL_S, and running jobs go on: the file queue's run lock makes the
        # redelivery of their unacknowledged messages a no-op (docs/scale-out.md)
        broker_connection_max_retries=None,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        worker_proc_alive_timeout=CHILD_START_TIMEOUT_S,
        worker_consumer=f"{__name__}:ReconnectingConsumer",
        task_soft_time_limit=workers.job_timeout_s,
        task_time_limit=workers.job_timeout_s + max(workers.timeout_grace_s, 1.0),
        task_ignore_result=True,
        task_store_errors_even_if_ignored=False,
        result_backend=None,
        task_serializer="json",
        accept_content=["json"],
        task_queues=(
            Queue(heavy, routing_key=heavy),  # type: ignore[no-untyped-call]
            Queue(light, routing_key=light),  # type: ignore[no-untyped-call]
        ),
        task_default_queue=heavy,
        task_routes={RUN_JOB: {"queue": heavy}},
        # broadcast commands (ping, revoke) stay among the workers of this prefix
        control_exchange=f"{jobs.queue_prefix}.control",
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        worker_send_task_events=False,
        task_publish_retry_policy={"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5},
    )
    return app
