"""GET/DELETE /jobs..., retry, ownership, and the one error body, against the real app."""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from callannotate.api.deps import get_current_principal
from callannotate.config import Settings
from callannotate.jobs.filequeue import FileQueue
from callannotate.jobs.models import JobState
from callannotate.pipeline.types import Annotation, RecordingInfo
from callannotate.security.principal import Principal

Upload = Callable[..., Awaitable[httpx.Response]]


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, str]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "detail", "request_id"}
    assert body["error"] == code, body
    assert body["request_id"] == response.headers["x-request-id"]
    return body


async def submit(upload: Upload, audio_dir: Path, n: int) -> list[str]:
    ids = []
    for _ in range(n):
        response = await upload(audio_dir / "tone.wav")
        assert response.status_code == 202, response.text
        ids.append(response.json()["id"])
    return ids


def complete(queue: FileQueue, job_id: str) -> bytes:
    """Run the job through the real queue transitions with a real (tiny) annotation."""
    claimed = queue.claim("test-worker")
    assert claimed is not None and claimed.id == job_id
    result = (
        Annotation(recording=RecordingInfo(duration=1.0, sample_rate=16000, channels=1))
        .model_dump_json()
        .encode()
    )
    queue.complete(job_id, result)
    return result


# ------------------------------------------------------------------------------ reading


async def test_get_job(upload: Upload, audio_dir: Path, client: httpx.AsyncClient) -> None:
    (job_id,) = await submit(upload, audio_dir, 1)
    response = await client.get(f"/jobs/{job_id}")
    assert response.status_code == 200
    job = response.json()
    assert job["id"] == job_id
    assert job["state"] == "queued"
    assert job["attempts"] == 0
    assert job["progress"] == []
    assert job["created_at"] and job["updated_at"]


async def test_list_pagination_newest_first(
    upload: Upload, audio_dir: Path, client: httpx.AsyncClient
) -> None:
    ids = await submit(upload, audio_dir, 5)
    page = (await client.get("/jobs", params={"limit": 2})).json()
    assert page["total"] == 5 and page["offset"] == 0 and page["limit"] == 2
    assert [j["id"] for j in page["items"]] == ids[::-1][:2]
    page = (await client.get("/jobs", params={"offset": 2, "limit": 2})).json()
    assert [j["id"] for j in page["items"]] == ids[::-1][2:4]
    page = (await client.get("/jobs", params={"offset": 4, "limit": 50})).json()
    assert [j["id"] for j in page["items"]] == [ids[0]]
    page = (await client.get("/jobs", params={"offset": 10})).json()
    assert page["items"] == [] and page["total"] == 5


async def test_list_filters_by_status(
    upload: Upload, audio_dir: Path, client: httpx.AsyncClient, queue: FileQueue
) -> None:
    ids = await submit(upload, audio_dir, 4)
    queue.cancel(ids[0])
    complete(queue, ids[1])  # the oldest queued job is ids[1] now

    async def states(query: dict[str, str | list[str]]) -> set[str]:
        page = (await client.get("/jobs", params=query)).json()
        return {j["id"] for j in page["items"]}

    assert await states({"status": "queued"}) == {ids[2], ids[3]}
    assert await states({"status": "cancelled"}) == {ids[0]}
    assert await states({"status": "completed"}) == {ids[1]}
    assert await states({"status": "failed"}) == set()
    assert await states({"status": "queued,completed"}) == {ids[1], ids[2], ids[3]}
    assert await states({"status": ["cancelled", "completed"]}) == {ids[0], ids[1]}
    assert await states({}) == set(ids)
    body = assert_error(await client.get("/jobs", params={"status": "done"}), 422, "unprocessable")
    assert "done" in body["detail"]


@pytest.mark.parametrize(
    "query", [{"limit": "0"}, {"limit": "501"}, {"offset": "-1"}, {"limit": "x"}]
)
async def test_list_rejects_bad_paging(client: httpx.AsyncClient, query: dict[str, str]) -> None:
    body = assert_error(await client.get("/jobs", params=query), 422, "validation_error")
    assert "query." in body["detail"]


@pytest.mark.parametrize(
    "path",
    [
        f"/jobs/{uuid.uuid4().hex}",
        f"/jobs/{uuid.uuid4().hex}/result",
        "/jobs/not-an-id",
        "/jobs/..%2F..%2Fetc%2Fpasswd",
        "/nowhere",
    ],
)
async def test_unknown_is_404(client: httpx.AsyncClient, path: str) -> None:
    assert_error(await client.get(path), 404, "not_found")


async def test_delete_and_retry_unknown_are_404(client: httpx.AsyncClient) -> None:
    missing = uuid.uuid4().hex
    assert_error(await client.delete(f"/jobs/{missing}"), 404, "not_found")
    assert_error(await client.post(f"/jobs/{missing}/retry"), 404, "not_found")


async def test_result_conflict_until_completed(
    upload: Upload, audio_dir: Path, client: httpx.AsyncClient, queue: FileQueue
) -> None:
    (job_id,) = await submit(upload, audio_dir, 1)
    body = assert_error(await client.get(f"/jobs/{job_id}/result"), 409, "conflict")
    assert "queued" in body["detail"]
    expected = complete(queue, job_id)
    response = await client.get(f"/jobs/{job_id}/result")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.content == expected
    Annotation.model_validate_json(response.content)


# ------------------------------------------------------------------------------ changing


async def test_delete_queued_job(
    upload: Upload, audio_dir: Path, client: httpx.AsyncClient, settings: Settings
) -> None:
    (job_id,) = await submit(upload, audio_dir, 1)
    response = await client.delete(f"/jobs/{job_id}")
    assert response.status_code == 204
    assert response.content == b""
    assert_error(await client.get(f"/jobs/{job_id}"), 404, "not_found")
    for folder in ("incoming", "processing", "completed", "failed", "archived", "staging"):
        assert list((settings.queue_dir / folder).iterdir()) == []


async def test_delete_running_and_completed_jobs(
    upload: Upload, audio_dir: Path, client: httpx.AsyncClient, queue: FileQueue
) -> None:
    first, second = await submit(upload, audio_dir, 2)
    complete(queue, first)
    running = queue.claim("test-worker")
    assert running is not None and running.id == second
    assert (await client.delete(f"/jobs/{second}")).status_code == 204
    assert (await client.delete(f"/jobs/{first}")).status_code == 204
    assert (await client.get("/jobs")).json()["total"] == 0


async def test_retry_rules(
    upload: Upload, audio_dir: Path, client: httpx.AsyncClient, queue: FileQueue
) -> None:
    completed, cancelled, failed, queued = await submit(upload, audio_dir, 4)
    queue.cancel(cancelled)
    complete(queue, completed)  # claims the oldest queued job
    claimed = queue.claim("test-worker")
    assert claimed is not None and claimed.id == failed
    queue.fail(failed, "boom")

    body = assert_error(await client.post(f"/jobs/{queued}/retry"), 409, "conflict")
    assert "only failed or cancelled" in body["detail"]
    assert_error(await client.post(f"/jobs/{completed}/retry"), 409, "conflict")

    for job_id in (cancelled, failed):
        before = (await client.get(f"/jobs/{job_id}")).json()
        assert before["state"] in ("cancelled", "failed")
        response = await client.post(f"/jobs/{job_id}/retry")
        assert response.status_code == 202, response.text
        assert response.headers["location"] == f"/jobs/{job_id}"
        job = response.json()
        assert job["state"] == "queued"
        assert job["error"] is None
        assert job["attempts"] == 0
    assert queue.get(failed).state == JobState.QUEUED


# ------------------------------------------------------------------------------ ownership


async def test_non_admin_sees_only_own_jobs(
    upload: Upload, audio_dir: Path, client: httpx.AsyncClient, app: FastAPI
) -> None:
    (local_job,) = await submit(upload, audio_dir, 1)
    app.dependency_overrides[get_current_principal] = lambda: Principal(id="alice")
    try:
        (alice_job,) = await submit(upload, audio_dir, 1)
        page = (await client.get("/jobs")).json()
        assert [j["id"] for j in page["items"]] == [alice_job]
        assert page["items"][0]["owner"] == "alice"
        # owner= is ignored for non-admins
        page = (await client.get("/jobs", params={"owner": "local"})).json()
        assert [j["id"] for j in page["items"]] == [alice_job]
        for response in (
            await client.get(f"/jobs/{local_job}"),
            await client.get(f"/jobs/{local_job}/result"),
            await client.delete(f"/jobs/{local_job}"),
            await client.post(f"/jobs/{local_job}/retry"),
        ):
            assert_error(response, 404, "not_found")
    finally:
        app.dependency_overrides.clear()
    # The admin sees both, and can filter by owner.
    assert (await client.get("/jobs")).json()["total"] == 2
    page = (await client.get("/jobs", params={"owner": "alice"})).json()
    assert [j["id"] for j in page["items"]] == [alice_job]


# ------------------------------------------------------------------------------ errors


async def test_upload_refuses_a_language_whisper_does_not_know(
    upload: Upload, audio_dir: Path, leftovers: Callable[[], list[str]]
) -> None:
    # "xx" looks like an ISO 639-1 code; it used to be queued and fail after diarization.
    response = await upload(audio_dir / "tone.wav", data={"language": "xx"})
    body = assert_error(response, 422, "unprocessable")
    assert "language" in body["detail"] and "'xx'" in body["detail"]
    assert leftovers() == []
    assert (await upload(audio_dir / "tone.wav", data={"language": "HAW"})).status_code == 202


async def test_request_id_is_echoed_or_made(client: httpx.AsyncClient) -> None:
    response = await client.get("/health", headers={"X-Request-ID": "client-abc.123"})
    assert response.headers["x-request-id"] == "client-abc.123"
    response = await client.get("/nowhere", headers={"X-Request-ID": "client-abc.123"})
    assert response.json()["request_id"] == "client-abc.123"
    for bad in ("x" * 200, "has space", "<script>"):
        response = await client.get("/health", headers={"X-Request-ID": bad})
        made = response.headers["x-request-id"]
        assert made != bad and len(made) == 32
    a = (await client.get("/health")).headers["x-request-id"]
    b = (await client.get("/health")).headers["x-request-id"]
    assert a != b


async def test_method_not_allowed_has_error_body(client: httpx.AsyncClient) -> None:
    response = await client.put("/jobs")
    assert_error(response, 405, "method_not_allowed")
    assert "allow" in response.headers


async def test_unexpected_error_is_500_with_body(app: FastAPI) -> None:
    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret internals")

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get("/boom", headers={"X-Request-ID": "req-500"})
    body = assert_error(response, 500, "internal_error")
    assert body["request_id"] == "req-500"
    assert "secret" not in body["detail"]


async def test_openapi_documents_error_body(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    assert set(spec["components"]["schemas"]["ErrorBody"]["properties"]) == {
        "error",
        "detail",
        "request_id",
    }
    post = spec["paths"]["/jobs"]["post"]
    for code in ("400", "413", "415", "422", "500"):
        schema = post["responses"][code]["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/ErrorBody"}, code
    assert "202" in post["responses"]
    form = post["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert form["required"] == ["file"]
    assert {"file", "language", "num_speakers", "steps", "callback_url"} <= set(form["properties"])
    get = spec["paths"]["/jobs/{job_id}"]["get"]
    assert get["responses"]["404"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorBody"
    }
    listing = spec["paths"]["/jobs"]["get"]["responses"]["422"]["content"]["application/json"]
    assert listing["schema"] == {"$ref": "#/components/schemas/ErrorBody"}
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    json.dumps(spec)


async def test_list_finds_calls_by_number_and_time(
    upload: Upload, audio_dir: Path, client: httpx.AsyncClient
) -> None:
    """``?phone=`` (any notation, caller or callee) and ``?since=``/``?until=`` (ISO 8601)."""
    wav = audio_dir / "tone.wav"
    to_ivan = await upload(wav, data={"caller": "+7 916 123-45-67", "callee": "+7 495 111-22-33"})
    from_office = await upload(wav, data={"caller": "8 (495) 111-22-33"})
    other = await upload(wav)
    jobs = [r.json() for r in (to_ivan, from_office, other)]
    assert all(r.status_code == 202 for r in (to_ivan, from_office, other))

    async def ids(**query: str) -> list[str]:
        r = await client.get("/jobs", params=query)
        assert r.status_code == 200, r.text
        return [j["id"] for j in r.json()["items"]]

    assert await ids(phone="+79161234567") == [jobs[0]["id"]]
    assert await ids(phone="+7 (495) 111 22 33") == [jobs[1]["id"], jobs[0]["id"]]
    assert await ids(phone="+1 212 555 0100") == []
    assert await ids(since=jobs[1]["created_at"]) == [jobs[2]["id"], jobs[1]["id"]]
    naive = jobs[1]["created_at"].replace("Z", "").replace("+00:00", "")  # no zone: UTC
    assert await ids(until=naive) == [jobs[0]["id"]]
    assert await ids(since=jobs[1]["created_at"], phone="+74951112233") == [jobs[1]["id"]]

    r = await client.get("/jobs", params={"phone": "not a number"})
    assert_error(r, 422, "unprocessable")
    assert "phone is not a phone number" in r.json()["detail"]
    r = await client.get("/jobs", params={"since": "yesterday"})
    assert r.status_code == 422
