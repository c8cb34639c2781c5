"""A real Celery worker's children count the light tasks they end (callback deliveries), and
its metrics port serves the merged count; the API exports the light-task gauges.

Same set-up as test_celery_metrics.py: :class:`CeleryExecutor` on the real Redis (private
queue prefix), a real ``run_celery_worker`` subprocess with ``metrics.port`` (fake runner),
and a real HTTP receiver on 127.0.0.1 for the callbacks.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "jobs"))

from callback_receiver import SECRET, serve_receiver
from celery_testing import wait_for_final
from queue_testing import new_job
from test_celery_metrics import metrics_worker, service, value, wait_scrape  # noqa: F401

from callannotate.jobs.light import light_store
from callannotate.jobs.models import JobState
from callannotate.jobs.service import JobService
from callannotate.observability.export import MetricsExport
from local_servers import free_port

pytestmark = pytest.mark.integration

FINISHED = "callannotate_light_tasks_finished_total"


async def test_celery_children_count_the_light_tasks_they_end(
    service: JobService,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the worker (a subprocess) reads its callback settings from the environment
    monkeypatch.setenv("CALLANNOTATE_CALLBACKS__SECRET", SECRET)
    monkeypatch.setenv("CALLANNOTATE_CALLBACKS__ALLOWED_HOSTS", '["127.0.0.1"]')
    queue = service.queue
    before_api = REGISTRY.get_sample_value(FINISHED, {"kind": "callback", "outcome": "completed"})
    port = free_port()
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    export = MetricsExport(service.settings, queue, service.executor)
    export.start()  # the API's scrape-time gauges (light tasks of the shared folder)
    try:
        with (
            serve_receiver() as receiver,
            serve_receiver() as refusing,
            metrics_worker(service, port, tmp),
        ):
            refusing.statuses = [404]  # a final answer: the delivery task fails
            samples = await wait_scrape(
                port, "callannotate_model_load_seconds_count", 2, step="vad"
            )
            assert value(samples, FINISHED, kind="callback", outcome="completed") == 0
            assert value(samples, FINISHED, kind="callback", outcome="failed") == 0
            delivered = [new_job(queue, callback_url=receiver.url()) for _ in range(3)]
            refused = new_job(queue, callback_url=refusing.url())
            jobs = [*delivered, refused]
            for job in jobs:
                service.executor.submit(job.id)
            await asyncio.to_thread(wait_for_final, queue, [j.id for j in jobs])
            assert all(queue.get(j.id).state == JobState.COMPLETED for j in jobs)
            samples = await wait_scrape(port, FINISHED, 3, kind="callback", outcome="completed")
            samples = await wait_scrape(port, FINISHED, 1, kind="callback", outcome="failed")
            assert value(samples, FINISHED, kind="callback", outcome="completed") == 3
            assert value(samples, FINISHED, kind="callback", outcome="failed") == 1
            assert len(receiver.requests) == 3 and all(r["valid"] for r in receiver.requests)
            assert [r["valid"] for r in refusing.requests] == [True]
            store = light_store(service.settings.data_dir)
            states = sorted(store.get(p.name).state.value for p in store._task_dirs())
            assert states == ["completed"] * 3 + ["failed"]
            # the API process ended none of them: the children did
            api = REGISTRY.get_sample_value(FINISHED, {"kind": "callback", "outcome": "completed"})
            assert api == before_api
            # the API exports the folder's gauges: nothing left to run
            for state in ("waiting", "delayed", "running", "orphaned"):
                labels = {"kind": "callback", "state": state}
                assert REGISTRY.get_sample_value("callannotate_light_tasks", labels) == 0
            assert json.loads(receiver.requests[0]["body"])["event"] == "job.completed"
    finally:
        export.stop()
