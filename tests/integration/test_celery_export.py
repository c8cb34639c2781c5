"""Exports as light work on the Celery ``light`` queue: real workers on the real Redis.

One worker serves only ``heavy`` with one child, kept busy by a long annotation job while
another job waits behind it; a second worker serves only ``light``. A PDF export asked with
``Prefer: respond-async`` on the real app is rendered by the light worker meanwhile (the API
process runs no light task with Celery), stored encrypted in the job folder, and downloaded
through the API.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "jobs"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "reports"))

from celery_testing import celery_worker, cleanup_broker, redis_or_skip, unique_prefix
from queue_testing import new_job
from reports_sample import completed_job, russian_annotation
from test_celery_light import _until, light_settings
from test_report_routes import tone_wav

from callannotate.api.app import create_app
from callannotate.jobs.executors.celery import CeleryExecutor
from callannotate.jobs.filequeue import FileQueue
from callannotate.jobs.light import LightState, light_store
from callannotate.jobs.models import JobState
from callannotate.security.envelope import MAGIC

pytestmark = [pytest.mark.integration]


async def test_light_worker_renders_an_export_while_the_heavy_slot_is_busy(
    tmp_path: Path,
) -> None:
    redis_or_skip()
    prefix = unique_prefix()
    settings = light_settings(tmp_path / "data", prefix)
    app = create_app(settings)
    queue: FileQueue = app.state.queue
    executor = app.state.executor
    assert isinstance(executor, CeleryExecutor)
    done_job = completed_job(queue, russian_annotation(), tone_wav(tmp_path / "call.wav"))
    try:
        with (
            # the only heavy slot: each job reports progress every 0.1 s for 10 min
            celery_worker(settings, concurrency=1, steps=6000, step_s=0.1, queues="heavy"),
            celery_worker(settings, concurrency=1, queues="light") as light_proc,
        ):
            async with app.router.lifespan_context(app):
                await _until(lambda: executor.readiness()[0], "workers never ready", 60)
                await _until(lambda: len(executor.workers()) == 2, "both workers answer", 60)
                long_job, waiting = new_job(queue), new_job(queue)
                executor.submit(long_job.id)
                executor.submit(waiting.id)
                await _until(
                    lambda: queue.get(long_job.id).state == JobState.RUNNING, "job never ran", 60
                )
                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                    t0 = time.monotonic()
                    r = await client.get(
                        f"/jobs/{done_job}/export?format=pdf",
                        headers={"Prefer": "respond-async"},
                    )
                    assert r.status_code == 202, r.text
                    status_url = r.headers["location"]
                    deadline = time.monotonic() + 120
                    while (body := (await client.get(status_url)).json())["state"] not in (
                        "completed",
                        "failed",
                    ):
                        assert time.monotonic() < deadline, f"export stuck: {body}"
                        await asyncio.sleep(0.1)
                    assert body["state"] == "completed", body
                    # rendered by the light worker while the heavy slot stayed busy
                    assert queue.get(long_job.id).state == JobState.RUNNING
                    assert queue.get(waiting.id).state == JobState.QUEUED
                    file = await client.get(body["download_url"])
                    elapsed = time.monotonic() - t0
                    assert file.status_code == 200
                    assert file.headers["content-type"] == "application/pdf"
                    assert file.headers["content-disposition"].startswith("attachment;")
                    assert file.content.startswith(b"%PDF") and len(file.content) == body["size"]
                    stored = queue.job_dir(done_job) / "export.pdf"
                    assert stored.read_bytes().startswith(MAGIC)
                    task = light_store(settings.data_dir).get(body["id"])
                    assert task.state == LightState.COMPLETED and task.attempts == 1
                    print(f"async PDF export round trip via Celery: {elapsed:.2f} s")

                await executor.cancel(long_job.id)
                await _until(
                    lambda: queue.get(long_job.id).state == JobState.CANCELLED,
                    "long job not cancelled",
                    60,
                )
        light_log = next(
            p.read_text(errors="replace")
            for p in settings.data_dir.glob("worker-*.log")
            if "light task completed" in p.read_text(errors="replace")
        )
        assert body["id"] in light_log  # the light worker ran it, not the API
        assert light_proc.returncode is not None
    finally:
        cleanup_broker(prefix)
