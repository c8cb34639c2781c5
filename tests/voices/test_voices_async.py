"""Asynchronous enrollment on the local executor: ``POST /voices?wait=false`` answers 202 and
the enrollment runs on the light lane while the only worker process is busy with a long job
and another job waits behind it (real app with its lifespan, real CAM++, FSDD samples)."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from test_voices_routes import JACKSON, _completed_job, files_of, jackson_then_george, silent_wav
from voices_testing import needs_fsdd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "jobs"))

from fake_runners import SleepRunner
from queue_testing import new_job

from callannotate.api.app import create_app
from callannotate.config import ApiSettings, Settings, WorkerSettings
from callannotate.jobs.filequeue import FileQueue
from callannotate.jobs.models import JobState


@pytest.fixture
def settings(tmp_path: Path, model_cache: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        model_cache_dir=model_cache,
        api=ApiSettings(embedded_workers=True, max_upload_bytes=2 * 1024 * 1024),
        workers=WorkerSettings(concurrency=1, preload_models=False),
    )


@pytest.fixture
async def running_app(settings: Settings) -> AsyncIterator[FastAPI]:
    # each job reports progress every 0.1 s for 10 min: it only ends when cancelled
    app = create_app(settings, job_runner=SleepRunner(steps=6000, step_s=0.1))
    async with app.router.lifespan_context(app):
        yield app


async def _wait_state(queue: FileQueue, job_id: str, state: JobState) -> None:
    deadline = time.monotonic() + 60
    while queue.get(job_id).state != state:
        assert time.monotonic() < deadline, f"job never {state.value}"
        await asyncio.sleep(0.05)


async def _poll(client: httpx.AsyncClient, url: str) -> dict[str, object]:
    deadline = time.monotonic() + 240
    while True:
        r = await client.get(url)
        assert r.status_code == 200, r.text
        body: dict[str, object] = r.json()
        if body["state"] in ("completed", "failed"):
            return body
        assert time.monotonic() < deadline, f"enrollment not finished: {body}"
        await asyncio.sleep(0.1)


@pytest.mark.models
@needs_fsdd
async def test_enrollment_completes_while_the_only_worker_runs_a_long_job(
    running_app: FastAPI,
) -> None:
    queue: FileQueue = running_app.state.queue
    executor = running_app.state.executor
    long_job, waiting = new_job(queue), new_job(queue)
    executor.submit(long_job.id)
    executor.submit(waiting.id)
    await _wait_state(queue, long_job.id, JobState.RUNNING)
    transport = httpx.ASGITransport(app=running_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        r = await client.post(
            "/voices?wait=false", data={"name": "Jackson"}, files=files_of(*JACKSON[:2])
        )
        assert r.status_code == 202, r.text
        accepted = r.json()
        assert accepted["state"] == "queued" and accepted["samples"] == 2
        assert r.headers["location"] == accepted["status_url"]
        assert accepted["status_url"] == f"/voices/enrollments/{accepted['id']}"

        done = await _poll(client, r.headers["location"])
        # the annotation slot was busy all along and the backlog untouched
        assert queue.get(long_job.id).state == JobState.RUNNING
        assert queue.get(waiting.id).state == JobState.QUEUED
        assert done["state"] == "completed" and done["error"] is None, done
        voice = done["voice"]
        assert isinstance(voice, dict) and voice["name"] == "Jackson"
        assert len(voice["samples"]) == 2
        r = await client.get(f"/voices/{voice['id']}")
        assert r.status_code == 200 and r.json()["name"] == "Jackson"

        # samples added to that voice the same way
        r = await client.post(
            f"/voices/{voice['id']}/samples?wait=false", files=files_of(JACKSON[2])
        )
        assert r.status_code == 202, r.text
        added = await _poll(client, r.headers["location"])
        assert added["state"] == "completed", added
        assert isinstance(added["voice"], dict) and len(added["voice"]["samples"]) == 3
        r = await client.post(
            f"/voices/{voice['id']}/samples?wait=false",
            data={"name": "Other"},
            files=files_of(JACKSON[3]),
        )
        assert r.status_code == 422 and "file' parts only" in r.json()["detail"]

        # the same with Prefer: respond-async; a silent sample fails as the sync route would
        r = await client.post(
            "/voices",
            data={"name": "Nobody"},
            files=[("file", ("s.wav", silent_wav(), "audio/wav"))],
            headers={"Prefer": "respond-async"},
        )
        assert r.status_code == 202, r.text
        failed = await _poll(client, r.headers["location"])
        error = failed["error"]
        assert failed["state"] == "failed" and isinstance(error, dict)
        assert error["error"] == "unprocessable" and error["status_code"] == 422
        assert "silent" in str(error["detail"])

        # checks that need no model still answer at once
        r = await client.post("/voices?wait=false", data={}, files=files_of(JACKSON[0]))
        assert r.status_code == 422 and "'name' is required" in r.json()["detail"]
        r = await client.get("/voices/enrollments/" + "0" * 32)
        assert r.status_code == 404
    assert queue.get(long_job.id).state == JobState.RUNNING
    await executor.cancel(long_job.id)
    await executor.cancel(waiting.id)
    await _wait_state(queue, long_job.id, JobState.CANCELLED)
    assert list(queue.staging_dir().iterdir()) == []  # no sample left behind


@pytest.mark.models
@needs_fsdd
async def test_speaker_of_a_job_enrolled_as_light_work(
    running_app: FastAPI, tmp_path: Path
) -> None:
    call, annotation = jackson_then_george(tmp_path)
    job_id = _completed_job(running_app.state.queue, call, annotation)
    transport = httpx.ASGITransport(app=running_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        url = f"/jobs/{job_id}/speakers/S0/enroll?wait=false"
        r = await client.post(url, json={"name": "Jackson"})
        assert r.status_code == 202, r.text
        done = await _poll(client, r.headers["location"])
        voice = done["voice"]
        assert done["state"] == "completed" and isinstance(voice, dict), done
        assert voice["samples"][0]["source"] == f"job:{job_id}/S0"
        r = await client.post(url, json={"voice_id": voice["id"]})
        assert r.status_code == 202 and r.json()["name"] == "Jackson"
        added = await _poll(client, r.headers["location"])
        assert isinstance(added["voice"], dict) and len(added["voice"]["samples"]) == 2
        # what is refused in the request still is, at once
        r = await client.post(f"/jobs/{job_id}/speakers/S9/enroll?wait=false", json={"name": "X"})
        assert r.status_code == 404
