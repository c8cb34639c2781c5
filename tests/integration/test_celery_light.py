"""Light work on the Celery ``light`` queue: real workers on the real Redis.

One worker serves only ``heavy`` with one child, kept busy by a long annotation job while
another job waits behind it; a second worker serves only ``light``. An enrollment accepted
with 202 (``POST /voices?wait=false`` on the real app, real CAM++ in the light worker) and
the callback of a cancelled job are done by the light worker meanwhile; the heavy slot
never becomes free.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "jobs"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "voices"))

from callback_receiver import SECRET, serve_receiver
from celery_testing import (
    BROKER_URL,
    celery_worker,
    cleanup_broker,
    redis_or_skip,
    unique_prefix,
)
from queue_testing import new_job
from voices_testing import FSDD, needs_fsdd

from callannotate.api.app import create_app
from callannotate.config import Settings
from callannotate.jobs.executors.celery import CeleryExecutor
from callannotate.jobs.filequeue import FileQueue
from callannotate.jobs.light import LightState, light_store
from callannotate.jobs.models import JobState

pytestmark = [pytest.mark.integration, pytest.mark.models]

JACKSON = [FSDD / f"{d}_jackson_0.wav" for d in range(2)]


def light_settings(data_dir: Path, prefix: str) -> Settings:
    return Settings.model_validate(
        {
            "data_dir": data_dir,
            "queue": {"lease_seconds": 1.0},
            "jobs": {
                "executor": "celery",
                "broker_url": BROKER_URL,
                "queue_prefix": prefix,
                "ping_interval_s": 0.5,
            },
            "workers": {"preload_models": False},
            "events": {"backend": "memory"},
            "api": {"embedded_workers": False},
            "callbacks": {"allowed_hosts": ["127.0.0.1"], "secret": SECRET},
        }
    )


async def _until(check: object, what: str, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(check):  # type: ignore[arg-type]
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.1)


@needs_fsdd
async def test_light_worker_enrolls_and_delivers_while_the_heavy_slot_is_busy(
    tmp_path: Path,
) -> None:
    redis_or_skip()
    prefix = unique_prefix()
    settings = light_settings(tmp_path / "data", prefix)
    env = {
        "CALLANNOTATE_CALLBACKS__ALLOWED_HOSTS": '["127.0.0.1"]',
        "CALLANNOTATE_CALLBACKS__SECRET": SECRET,
    }
    app = create_app(settings)
    queue: FileQueue = app.state.queue
    executor = app.state.executor
    assert isinstance(executor, CeleryExecutor)
    try:
        with (
            serve_receiver() as receiver,
            # the only heavy slot: each job reports progress every 0.1 s for 10 min
            celery_worker(settings, concurrency=1, steps=6000, step_s=0.1, queues="heavy"),
            celery_worker(settings, concurrency=1, queues="light", env=env),
        ):
            async with app.router.lifespan_context(app):
                await _until(lambda: executor.readiness()[0], "workers never ready", 60)
                await _until(lambda: len(executor.workers()) == 2, "both workers answer", 60)
                long_job = new_job(queue)
                waiting = new_job(queue, callback_url=receiver.url())
                executor.submit(long_job.id)
                executor.submit(waiting.id)
                await _until(
                    lambda: queue.get(long_job.id).state == JobState.RUNNING, "job never ran", 60
                )
                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                    files = [("file", (p.name, p.read_bytes(), "audio/wav")) for p in JACKSON]
                    r = await client.post("/voices?wait=false", data={"name": "J"}, files=files)
                    assert r.status_code == 202, r.text
                    status_url = r.headers["location"]

                    async def finished() -> dict[str, object]:
                        body: dict[str, object] = (await client.get(status_url)).json()
                        return body

                    deadline = time.monotonic() + 240
                    while (body := await finished())["state"] not in ("completed", "failed"):
                        assert time.monotonic() < deadline, f"enrollment stuck: {body}"
                        await asyncio.sleep(0.2)
                    assert body["state"] == "completed", body
                    # done by the light worker while the heavy slot stayed busy
                    assert queue.get(long_job.id).state == JobState.RUNNING
                    assert queue.get(waiting.id).state == JobState.QUEUED
                    voice = body["voice"]
                    assert isinstance(voice, dict) and len(voice["samples"]) == 2
                    worker = light_store(settings.data_dir).get(str(body["id"])).worker
                    assert worker is None  # cleared when it ended

                # cancelling the waiting job announces it: the light worker delivers it
                await executor.cancel(waiting.id)
                await _until(lambda: bool(queue.get(waiting.id).callbacks), "no callback", 60)
                (attempt,) = queue.get(waiting.id).callbacks
                assert attempt.delivered and attempt.status_code == 200
                (request,) = receiver.requests
                assert request["valid"] and json.loads(request["body"])["state"] == "cancelled"
                assert queue.get(long_job.id).state == JobState.RUNNING
                store = light_store(settings.data_dir)

                def all_completed() -> bool:  # the delivery ends just after its attempt
                    states = {store.get(p.name).state for p in store._task_dirs()}
                    return states == {LightState.COMPLETED}

                await _until(all_completed, "light tasks not all completed", 30)
                assert store.pending() == []  # nothing left queued or orphaned

                await executor.cancel(long_job.id)
                await _until(
                    lambda: queue.get(long_job.id).state == JobState.CANCELLED,
                    "long job not cancelled",
                    60,
                )
        logs = "\n".join(
            p.read_text(errors="replace") for p in settings.data_dir.glob("worker-*.log")
        )
        assert "light task completed" in logs
    finally:
        cleanup_broker(prefix)
