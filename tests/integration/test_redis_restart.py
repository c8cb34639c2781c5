"""Chaos: the event bus's Redis dies and comes back while jobs run (issue 18).

A PRIVATE ``redis-server`` (127.0.0.1, a free port, no persistence, stopped by its pid) carries
the event bus (``events.backend: redis``) of a real app (``create_app``) whose embedded worker
processes run a fake runner. Redis is SIGKILLed: jobs submitted meanwhile still complete, the
``events_redis`` breaker opens (publishing stops waiting for a dead server) and ``/ready`` and
``GET /admin/breakers`` show it; Redis is started again on the same port: the subscription
comes back, the trial publish closes the breaker, and the next job's events arrive again.
The shared Redis on 6379 is never touched.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from local_servers import PrivateRedis, running_redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "jobs"))

from fake_runners import SleepRunner
from manager_testing import make_settings
from queue_testing import new_job

from callannotate.api.app import create_app
from callannotate.config import EventSettings
from callannotate.events.models import BusEvent
from callannotate.jobs.models import JobState

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

RESET_S = 0.5


class EventBusRedis(PrivateRedis):
    """The event bus's private Redis, no persistence (events are not kept)."""

    def subscribers(self, channel: str) -> int:
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5)
        try:
            return int(dict(client.pubsub_numsub(channel)).get(channel.encode(), 0))
        finally:
            client.close()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[EventBusRedis]:
    with running_redis(EventBusRedis(tmp_path / "redis")) as server:
        yield server


@pytest.fixture
async def app_client(tmp_path: Path, private_redis: EventBusRedis) -> AsyncIterator[Any]:
    settings = make_settings(tmp_path)
    settings.events = EventSettings(
        backend="redis",
        redis_url=private_redis.url,
        redis_prefix=f"chaos-{uuid.uuid4().hex[:8]}",
        publish_attempts=2,
        breaker_failures=2,
        breaker_reset_s=RESET_S,
    )
    app = create_app(settings, job_runner=SleepRunner(steps=3, step_s=0.05))
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://test") as client,
    ):
        yield app, client


async def _until(pred: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_redis_restart_jobs_complete_breaker_opens_and_events_resume(
    app_client: Any, private_redis: EventBusRedis
) -> None:
    app, client = app_client
    jobs = app.state.jobs
    bus = jobs.bus
    seen: list[BusEvent] = []
    bus.add_listener(seen.append)

    def completed_event(job_id: str) -> bool:
        return any(e.job_id == job_id and e.type == "job.completed" for e in seen)

    async def run(timeout: float = 30.0) -> str:
        job = new_job(jobs.queue)
        jobs.executor.submit(job.id)
        await _until(
            lambda: jobs.queue.get(job.id).state == JobState.COMPLETED, timeout, "job completion"
        )
        return job.id

    await _until(lambda: jobs.executor.readiness()[0], 60, "a ready worker")
    first = await run()
    await _until(lambda: completed_event(first), 10, "job.completed of the first job")
    assert bus.breaker.state() == "closed"

    # Redis dies: jobs go on, publishing fails and the breaker opens
    killed_at = time.monotonic()
    private_redis.kill()
    during = [await run() for _ in range(3)]
    await _until(lambda: bus.breaker.state() == "open", 15, "the events_redis breaker to open")
    assert all(jobs.queue.get(j).state == JobState.COMPLETED for j in during)
    assert not any(completed_event(j) for j in during)  # their events had nowhere to go

    ready = await client.get("/ready")
    assert ready.status_code == 503  # the redis PING check fails; the breaker is shown
    assert (
        "redis" in ready.json()["detail"]
        and "circuits open: events_redis" in ready.json()["detail"]
    )
    admin = (await client.get("/admin/breakers")).json()
    events_redis = next(b for b in admin["breakers"] if b["name"] == "events_redis")
    assert events_redis["state"] == "open" and events_redis["circuits"][0]["retry_in_s"] >= 0

    # Redis comes back on the same port: subscription restored, breaker closes, events flow
    private_redis.start()
    restarted_at = time.monotonic()
    await _until(lambda: private_redis.subscribers(bus.channel) >= 1, 15, "the resubscription")
    await asyncio.sleep(RESET_S)
    after = await run()
    await _until(lambda: completed_event(after), 15, "job.completed after the restart")
    recovered_s = time.monotonic() - restarted_at
    assert bus.breaker.state() == "closed"
    ready = await client.get("/ready")
    assert ready.status_code == 200, ready.text
    assert ready.json()["breakers"]["events_redis"] == "closed"
    print(
        f"redis down {restarted_at - killed_at:.1f} s; events flowing again "
        f"{recovered_s:.1f} s after the restart"
    )
