"""Exports as light work on the real app (ASGI transport, lifespan with the local light lane):
``GET /jobs/{id}/export?wait=false`` (or ``Prefer: respond-async``) answers 202, the status
URL reports the state, the file is served like the synchronous export, stored in the job
folder (0600, encrypted at rest) and removed with the job; the 4xx cases answer at once."""

from __future__ import annotations

import asyncio
import stat
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from reports_sample import completed_job
from test_report_routes import queue_of, queued_job, tone_wav

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "jobs"))

from fake_runners import SleepRunner
from queue_testing import new_job

from callannotate.api.app import create_app
from callannotate.api.headers import USER_BYTES
from callannotate.config import ApiSettings, Settings, WorkerSettings
from callannotate.jobs.filequeue import FileQueue
from callannotate.jobs.light import LightKind, LightState, light_store
from callannotate.jobs.models import JobState
from callannotate.pipeline.types import Annotation
from callannotate.security.envelope import MAGIC


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c,
    ):
        c.app = app  # type: ignore[attr-defined]
        yield c


@pytest.fixture
def job_id(client: httpx.AsyncClient, ru_annotation: Annotation, tmp_path: Path) -> str:
    return completed_job(queue_of(client), ru_annotation, tone_wav(tmp_path / "call.wav"))


async def poll(client: httpx.AsyncClient, url: str, timeout: float = 60.0) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        r = await client.get(url)
        assert r.status_code == 200, r.text
        body: dict[str, object] = r.json()
        if body["state"] in ("completed", "failed"):
            return body
        assert time.monotonic() < deadline, f"export not finished: {body}"
        await asyncio.sleep(0.05)


@pytest.mark.parametrize(
    ("fmt", "media", "how"),
    [
        ("pdf", "application/pdf", "query"),
        ("csv", "text/csv", "prefer"),
        ("words.csv", "text/csv", "query"),
        ("json", "application/json", "prefer"),
        ("html", "text/html", "query"),
    ],
)
async def test_async_export_is_accepted_polled_and_downloaded(
    client: httpx.AsyncClient, job_id: str, fmt: str, media: str, how: str
) -> None:
    sync = await client.get(f"/jobs/{job_id}/export", params={"format": fmt})
    assert sync.status_code == 200
    if how == "query":
        r = await client.get(f"/jobs/{job_id}/export", params={"format": fmt, "wait": "false"})
    else:
        r = await client.get(
            f"/jobs/{job_id}/export",
            params={"format": fmt},
            headers={"Prefer": "return=minimal, respond-async; wait=5"},
        )
    assert r.status_code == 202, r.text
    accepted = r.json()
    assert accepted["state"] in ("queued", "running", "completed")
    assert accepted["status_url"] == f"/jobs/{job_id}/exports/{accepted['id']}"
    assert r.headers["location"] == accepted["status_url"]
    assert accepted["job_id"] == job_id and accepted["format"] == fmt

    done = await poll(client, r.headers["location"])
    assert done["state"] == "completed" and done["error"] is None, done
    assert done["download_url"] == f"{accepted['status_url']}/file"
    assert done["attempts"] == 1

    file = await client.get(str(done["download_url"]))
    assert file.status_code == 200, file.text
    assert file.headers["content-type"] == sync.headers["content-type"]
    assert file.headers["content-type"].startswith(media)
    assert file.headers["content-disposition"] == sync.headers["content-disposition"]
    assert file.headers["content-security-policy"] == USER_BYTES
    assert file.headers["x-content-type-options"] == "nosniff"
    assert file.headers["cache-control"] == "private, no-store"
    assert done["size"] == len(file.content) == int(file.headers["content-length"])
    if fmt == "pdf":
        assert file.content.startswith(b"%PDF") and len(file.content) > 1000
        part = await client.get(str(done["download_url"]), headers={"Range": "bytes=0-3"})
        assert part.status_code == 206 and part.content == b"%PDF"
        past = await client.get(str(done["download_url"]), headers={"Range": "bytes=99999999-"})
        assert past.status_code == 416 and past.json()["error"] == "range_not_satisfiable"
    else:  # text formats render the same bytes as in the request
        assert file.content == sync.content

    # stored in the job's folder, private and encrypted at rest
    queue = queue_of(client)
    (stored,) = [p for p in queue.job_dir(job_id).iterdir() if p.name.startswith("export.")]
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    raw = stored.read_bytes()
    assert raw.startswith(MAGIC)
    assert file.content[:64] not in raw


def test_download_is_audited_as_a_read_of_the_export() -> None:
    from callannotate.api.audit_middleware import audited_read, describe_route

    template = "/jobs/{job_id}/exports/{export_id}/file"
    assert audited_read(template)
    assert describe_route("GET", template, {"job_id": "j", "export_id": "e"}) == (
        "read_file",
        "export",
        "j/e",
    )


async def test_repeat_reuses_the_export_and_deleting_the_job_removes_it(
    client: httpx.AsyncClient, job_id: str
) -> None:
    url = f"/jobs/{job_id}/export?format=pdf&wait=false"
    first = (await client.get(url)).json()
    again = await client.get(url)  # pending (or already done): the same export
    assert again.status_code == 202 and again.json()["id"] == first["id"]
    done = await poll(client, first["status_url"])
    assert done["state"] == "completed"
    third = await client.get(url)  # completed with its file: reused, nothing rendered again
    assert third.status_code == 202
    assert third.json()["id"] == first["id"] and third.json()["state"] == "completed"
    other = await client.get(f"/jobs/{job_id}/export?format=srt&wait=false")
    assert other.json()["id"] != first["id"]  # another format: another export
    await poll(client, other.json()["status_url"])

    queue = queue_of(client)
    folder = queue.job_dir(job_id)
    assert {p.name for p in folder.glob("export.*")} == {"export.pdf", "export.srt"}
    assert (await client.delete(f"/jobs/{job_id}")).status_code == 204
    assert not folder.exists()
    for path in (first["status_url"], str(done["download_url"])):
        r = await client.get(path)
        assert r.status_code == 404 and r.json()["error"] == "not_found", path


async def test_a_failed_export_is_replaced_by_a_new_one(
    client: httpx.AsyncClient, job_id: str, settings: Settings
) -> None:
    store = light_store(settings.data_dir)
    first = (await client.get(f"/jobs/{job_id}/export?format=vtt&wait=false")).json()
    await poll(client, first["status_url"])
    # as if that run had failed: a new request renders again
    claim_task = store.get(first["id"])
    claim_task.state = LightState.FAILED
    claim_task.error, claim_task.error_code, claim_task.status_code = "boom", "internal_error", 500
    store.save(claim_task)
    failed = (await client.get(first["status_url"])).json()
    assert failed["state"] == "failed" and failed["download_url"] is None
    assert failed["error"] == {"error": "internal_error", "detail": "boom", "status_code": 500}
    r = await client.get(f"{first['status_url']}/file")
    assert r.status_code == 409 and r.json()["error"] == "conflict"
    second = (await client.get(f"/jobs/{job_id}/export?format=vtt&wait=false")).json()
    assert second["id"] != first["id"]
    assert (await poll(client, second["status_url"]))["state"] == "completed"


async def test_export_of_a_job_deleted_before_it_ran_fails_with_not_found(
    client: httpx.AsyncClient, job_id: str, settings: Settings
) -> None:
    from callannotate.jobs.light_run import run_claimed

    store = light_store(settings.data_dir)
    task = store.create(LightKind.EXPORT, {"job_id": job_id, "format": "pdf"}, owner="local")
    claim = store.claim(task.id, "test")  # held here: the lane cannot take it
    assert claim is not None
    queue_of(client).delete(job_id)
    assert run_claimed(settings, claim) is None
    ended = store.get(task.id)
    assert ended.state == LightState.FAILED
    assert (ended.error_code, ended.status_code) == ("not_found", 404)


async def test_errors_answer_at_once_and_store_nothing(
    client: httpx.AsyncClient,
    job_id: str,
    ru_annotation: Annotation,
    settings: Settings,
    tmp_path: Path,
) -> None:
    store = light_store(settings.data_dir)
    other = completed_job(queue_of(client), ru_annotation, tone_wav(tmp_path / "b.wav"))
    r = await client.get(f"/jobs/{job_id}/export", params={"format": "docx", "wait": "false"})
    assert r.status_code == 422 and r.json()["error"] == "validation_error"
    r = await client.get(
        "/jobs/" + "0" * 32 + "/export?format=pdf", headers={"Prefer": "respond-async"}
    )
    assert r.status_code == 404 and r.json()["error"] == "not_found"
    qid = queued_job(queue_of(client))
    r = await client.get(f"/jobs/{qid}/export?format=pdf&wait=false")
    assert r.status_code == 409 and r.json()["error"] == "conflict"
    r = await client.get(f"/jobs/{job_id}/export", params={"wait": "maybe"})
    assert r.status_code == 422
    assert store.pending() == [] and list(store._task_dirs()) == []

    # unknown / malformed export ids, and an export asked under another job's path
    for bad in ("0" * 32, "../../etc", "x"):
        r = await client.get(f"/jobs/{job_id}/exports/{bad}")
        assert r.status_code == 404, bad
        r = await client.get(f"/jobs/{job_id}/exports/{bad}/file")
        assert r.status_code == 404, bad
    accepted = (await client.get(f"/jobs/{job_id}/export?format=rttm&wait=false")).json()
    r = await client.get(f"/jobs/{other}/exports/{accepted['id']}")
    assert r.status_code == 404
    # an enrollment task is not an export
    enroll = store.create(LightKind.ENROLL, {"name": "x"}, owner="local")
    r = await client.get(f"/jobs/{job_id}/exports/{enroll.id}")
    assert r.status_code == 404


async def test_another_users_export_is_hidden(
    client: httpx.AsyncClient, ru_annotation: Annotation, tmp_path: Path
) -> None:
    from callannotate.api.deps import get_current_principal
    from callannotate.security.principal import Principal

    theirs = completed_job(
        queue_of(client), ru_annotation, tone_wav(tmp_path / "o.wav"), owner="someone-else"
    )
    app = client.app  # type: ignore[attr-defined]
    app.dependency_overrides[get_current_principal] = lambda: Principal(id="someone-else")
    try:
        accepted = (await client.get(f"/jobs/{theirs}/export?format=pdf&wait=false")).json()
        done = await poll(client, accepted["status_url"])
        assert done["state"] == "completed"
        app.dependency_overrides[get_current_principal] = lambda: Principal(id="bob")
        for path in (
            f"/jobs/{theirs}/export?format=pdf&wait=false",
            accepted["status_url"],
            str(done["download_url"]),
        ):
            r = await client.get(path)
            assert r.status_code == 404 and r.json()["error"] == "not_found", path
    finally:
        app.dependency_overrides.clear()


# ------------------------------------------------------------------ beside a busy worker


@pytest.fixture
async def busy_app(tmp_path: Path) -> AsyncIterator[FastAPI]:
    settings = Settings(
        data_dir=tmp_path / "busy",
        api=ApiSettings(embedded_workers=True),
        workers=WorkerSettings(concurrency=1, preload_models=False),
    )
    # each job reports progress every 0.1 s for 10 min: it only ends when cancelled
    app = create_app(settings, job_runner=SleepRunner(steps=6000, step_s=0.1))
    async with app.router.lifespan_context(app):
        yield app


async def test_export_renders_while_the_only_worker_runs_a_long_job(
    busy_app: FastAPI, ru_annotation: Annotation, tmp_path: Path
) -> None:
    queue: FileQueue = busy_app.state.queue
    done_job = completed_job(queue, ru_annotation, tone_wav(tmp_path / "c.wav"))
    long_job, waiting = new_job(queue), new_job(queue)
    busy_app.state.executor.submit(long_job.id)
    busy_app.state.executor.submit(waiting.id)
    deadline = time.monotonic() + 60
    while queue.get(long_job.id).state != JobState.RUNNING:
        assert time.monotonic() < deadline, "the long job never started"
        await asyncio.sleep(0.05)
    transport = httpx.ASGITransport(app=busy_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        r = await client.get(f"/jobs/{done_job}/export?format=pdf&wait=false")
        assert r.status_code == 202, r.text
        done = await poll(client, r.headers["location"])
        assert done["state"] == "completed", done
        assert queue.get(long_job.id).state == JobState.RUNNING
        assert queue.get(waiting.id).state == JobState.QUEUED
        file = await client.get(str(done["download_url"]))
        assert file.status_code == 200 and file.content.startswith(b"%PDF")
        await busy_app.state.executor.cancel(long_job.id)
