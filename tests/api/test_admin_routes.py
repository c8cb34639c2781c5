"""GET /admin/workers and /admin/queues (admin only), and the job ``priority`` at upload."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from apiseed import tone_wav
from authtesting import Accounts, auth_settings

from callannotate.api.app import create_app
from callannotate.config import Settings
from callannotate.jobs.heartbeat import WorkerRecord, WorkerRegistry
from callannotate.jobs.models import utcnow


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    base = auth_settings(tmp_path / "data", tmp_path / "store.db")
    return base.model_copy(
        update={"jobs": base.jobs.model_copy(update={"worker_lost_after_s": 10.0})}
    )


@pytest.fixture
def accounts(settings: Settings) -> Accounts:
    return Accounts.create(settings)


@pytest.fixture
async def client(settings: Settings, accounts: Accounts) -> AsyncIterator[httpx.AsyncClient]:
    app = accounts.attach(create_app(settings))
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://test") as c,
    ):
        yield c


def _record(pid: int, age_s: float) -> WorkerRecord:
    now = utcnow()
    return WorkerRecord(
        id=f"box-{pid}",
        host="box",
        pid=pid,
        executor="celery",
        name="callannotate-1@box",
        concurrency=2,
        queues=["callannotate.light", "callannotate.heavy"],
        jobs_running=["c" * 32],
        jobs_done=3,
        models_loaded=["vad"],
        rss_bytes=300 << 20,
        started_at=now - timedelta(minutes=5),
        heartbeat_at=now - timedelta(seconds=age_s),
    )


async def test_only_admins_see_workers_and_queues(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    for path in ("/admin/workers", "/admin/queues"):
        assert (await client.get(path)).status_code == 401
        r = await client.get(path, headers=accounts.headers("alice"))
        assert r.status_code == 403, r.text
        assert r.json()["error"]
        _, read_key = accounts.api_key("root", "read")  # an admin key without 'admin'
        r = await client.get(path, headers={"Authorization": f"Bearer {read_key}"})
        assert r.status_code == 403


async def test_workers_lists_heartbeats_with_lost_ones(
    client: httpx.AsyncClient, accounts: Accounts, settings: Settings
) -> None:
    registry = WorkerRegistry.from_settings(settings)
    registry.write(_record(101, age_s=1.0))
    registry.write(_record(102, age_s=60.0))
    r = await client.get("/admin/workers", headers=accounts.headers("root"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["alive"], body["lost"], body["lost_after_s"]) == (1, 1, 10.0)
    fresh, stale = body["workers"]
    assert (fresh["pid"], fresh["lost"], stale["pid"], stale["lost"]) == (101, False, 102, True)
    assert fresh["rss_bytes"] == 300 << 20 and fresh["jobs_running"] == ["c" * 32]
    assert fresh["models_loaded"] == ["vad"] and fresh["concurrency"] == 2


async def test_queues_and_priority_at_upload(
    client: httpx.AsyncClient, accounts: Accounts, tmp_path: Path
) -> None:
    wav = tone_wav(tmp_path / "tone.wav")
    root = accounts.headers("root")

    async def upload(data: dict[str, str], params: dict[str, str] | None = None) -> httpx.Response:
        with open(wav, "rb") as fh:
            return await client.post(
                "/jobs", files={"file": ("t.wav", fh)}, data=data, params=params, headers=root
            )

    r = await upload({"priority": "9"})
    assert r.status_code == 202, r.text
    assert r.json()["priority"] == 9
    r = await upload({}, {"priority": "2"})
    assert r.status_code == 202 and r.json()["priority"] == 2
    r = await upload({})
    assert r.status_code == 202 and r.json()["priority"] == 5
    for bad_form, bad_query in (({"priority": "10"}, None), ({"priority": "x"}, None)):
        r = await upload(bad_form, bad_query)
        assert r.status_code == 422, r.text
        assert "priority" in r.json()["detail"]
    r = await upload({"priority": "3"}, {"priority": "4"})
    assert r.status_code == 422 and "twice" in r.json()["detail"]
    r = await upload({}, {"priority": "-1"})
    assert r.status_code == 422

    r = await client.get("/admin/queues", headers=root)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["executor"] == "local" and body["broker"] is None
    queue = body["queue"]
    assert queue["depth"] == 3 and queue["states"]["queued"] == 3
    assert queue["waiting_by_priority"] == {"9": 1, "5": 1, "2": 1}
    assert queue["oldest_waiting_s"] >= 0
    assert [w["window_s"] for w in queue["finished"]] == [300, 3600]


async def test_celery_broker_error_is_reported_not_raised(
    settings: Settings, accounts: Accounts
) -> None:
    broken = settings.model_copy(
        update={
            "jobs": settings.jobs.model_copy(
                update={"executor": "celery", "broker_url": "redis://127.0.0.1:1/0"}
            )
        }
    )
    app = accounts.attach(create_app(broken))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        r = await c.get("/admin/queues", headers=accounts.headers("root"))
    assert r.status_code == 200, r.text
    assert r.json()["broker"] is None and "Connection" in r.json()["broker_error"]
