"""Report routes on the real app (ASGI transport): export, report page, audio with Range."""

from __future__ import annotations

import wave
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from reports_sample import completed_job

from callannotate.api.app import create_app
from callannotate.config import Settings
from callannotate.jobs.filequeue import FileQueue
from callannotate.jobs.models import AudioMeta, Job
from callannotate.pipeline.types import Annotation


def tone_wav(path: Path, seconds: float = 2.0, rate: int = 8000) -> Path:
    t = np.arange(int(rate * seconds)) / rate
    data = (0.3 * np.sin(2 * np.pi * 300 * t) * 32767).astype(np.int16)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(data.tobytes())
    return path


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c,
    ):
        c.app = app  # type: ignore[attr-defined]
        yield c


def queued_job(queue: FileQueue) -> str:
    """A job that is still queued (no result yet); returns its id."""
    qid = queue.new_job_id()
    staged = queue.staging_dir() / f"up-{qid}"
    tone_wav(staged)
    meta = AudioMeta(
        filename="q.wav",
        stored_as="q.wav",
        size_bytes=1,
        format="wav",
        codec="pcm_s16le",
        sample_rate=8000,
        channels=1,
        duration=2.0,
    )
    queue.submit(Job(id=qid, owner="local", audio=meta), staged)
    return qid


def queue_of(client: httpx.AsyncClient) -> FileQueue:
    queue: FileQueue = client.app.state.queue  # type: ignore[attr-defined]
    return queue


@pytest.fixture
def job_id(client: httpx.AsyncClient, ru_annotation: Annotation, tmp_path: Path) -> str:
    return completed_job(queue_of(client), ru_annotation, tone_wav(tmp_path / "call.wav"))


@pytest.mark.parametrize(
    ("fmt", "media", "suffix"),
    [
        ("json", "application/json", ".json"),
        ("csv", "text/csv", ".utterances.csv"),
        ("words.csv", "text/csv", ".words.csv"),
        ("srt", "application/x-subrip", ".srt"),
        ("vtt", "text/vtt", ".vtt"),
        ("rttm", "text/plain", ".rttm"),
        ("html", "text/html", ".html"),
        ("pdf", "application/pdf", ".pdf"),
    ],
)
async def test_export_formats(
    client: httpx.AsyncClient, job_id: str, fmt: str, media: str, suffix: str
) -> None:
    r = await client.get(f"/jobs/{job_id}/export", params={"format": fmt})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith(media)
    disposition = r.headers["content-disposition"]
    assert disposition.startswith("attachment;")
    assert "filename*=UTF-8''%D0%B7%D0%B2%D0%BE%D0%BD%D0%BE%D0%BA_" in disposition
    assert disposition.endswith(suffix)
    assert r.content


async def test_export_default_is_json(client: httpx.AsyncClient, job_id: str) -> None:
    r = await client.get(f"/jobs/{job_id}/export")
    assert r.status_code == 200
    assert Annotation.model_validate_json(r.content).recording.languages == ["ru"]


async def test_export_errors(client: httpx.AsyncClient, job_id: str, tmp_path: Path) -> None:
    r = await client.get(f"/jobs/{job_id}/export", params={"format": "docx"})
    assert r.status_code == 422 and r.json()["error"] == "validation_error"
    assert r.json()["detail"].startswith("query.format: unknown export format")
    r = await client.get("/jobs/" + "0" * 32 + "/export")
    assert r.status_code == 404 and r.json()["error"] == "not_found"
    r = await client.get("/jobs/../etc/export")
    assert r.status_code == 404
    # a queued job has no result yet: 409
    queue = queue_of(client)
    qid = queued_job(queue)
    r = await client.get(f"/jobs/{qid}/export", params={"format": "pdf"})
    assert r.status_code == 409 and r.json()["error"] == "conflict"
    r = await client.get(f"/jobs/{qid}/report")
    assert r.status_code == 409


async def test_other_owners_job_is_hidden(
    client: httpx.AsyncClient, ru_annotation: Annotation, tmp_path: Path
) -> None:
    from callannotate.api.deps import get_current_principal
    from callannotate.security.principal import Principal

    jid = completed_job(
        queue_of(client), ru_annotation, tone_wav(tmp_path / "o.wav"), owner="someone-else"
    )
    app = client.app  # type: ignore[attr-defined]
    app.dependency_overrides[get_current_principal] = lambda: Principal(id="bob")
    try:
        for path in ("export", "report", "audio"):
            r = await client.get(f"/jobs/{jid}/{path}")
            assert r.status_code == 404, path
    finally:
        app.dependency_overrides.clear()


async def test_report_page(client: httpx.AsyncClient, job_id: str) -> None:
    r = await client.get(f"/jobs/{job_id}/report")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in r.headers["content-security-policy"]
    page = r.text
    assert f'src="/jobs/{job_id}/audio"' in page
    assert "Анна Петрова" in page and "<svg" in page


async def test_audio_supports_ranges(client: httpx.AsyncClient, job_id: str) -> None:
    full = await client.get(f"/jobs/{job_id}/audio")
    assert full.status_code == 200
    assert full.headers["content-type"] == "audio/wav"
    assert full.headers["accept-ranges"] == "bytes"
    size = len(full.content)
    part = await client.get(f"/jobs/{job_id}/audio", headers={"Range": "bytes=100-199"})
    assert part.status_code == 206
    assert part.content == full.content[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{size}"
    tail = await client.get(f"/jobs/{job_id}/audio", headers={"Range": "bytes=-10"})
    assert tail.status_code == 206 and tail.content == full.content[-10:]
    bad = await client.get(f"/jobs/{job_id}/audio", headers={"Range": f"bytes={size + 5}-"})
    assert bad.status_code == 416


@pytest.mark.parametrize(
    ("header", "status", "code"),
    [
        ("bytes=999999999-", 416, "range_not_satisfiable"),
        ("bytes=20-10", 400, "bad_range"),
        ("items=0-10", 400, "bad_range"),
        ("nonsense", 400, "bad_range"),
    ],
)
async def test_audio_range_errors_are_json(
    client: httpx.AsyncClient, job_id: str, header: str, status: int, code: str
) -> None:
    """Issue 15.16: a refused Range gets the documented JSON error body, not plain text."""
    response = await client.get(f"/jobs/{job_id}/audio", headers={"Range": header})
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["error"] == code and body["request_id"] == response.headers["x-request-id"]
    if status == 416:
        assert response.headers["content-range"].startswith("bytes */")


async def test_audio_answers_head_like_get(client: httpx.AsyncClient, job_id: str) -> None:
    full = await client.get(f"/jobs/{job_id}/audio")
    head = await client.head(f"/jobs/{job_id}/audio")
    assert head.status_code == 200 and head.content == b""
    for name in ("content-type", "content-length", "accept-ranges", "content-security-policy"):
        assert head.headers[name] == full.headers[name], name
    part = await client.head(f"/jobs/{job_id}/audio", headers={"Range": "bytes=0-9"})
    assert part.status_code == 206 and part.content == b""
    assert part.headers["content-range"] == f"bytes 0-9/{len(full.content)}"
    options = await client.options(f"/jobs/{job_id}/audio")
    assert options.headers["allow"] == "GET, HEAD, OPTIONS"
    assert (await client.head("/jobs/" + "0" * 32 + "/audio")).status_code == 404
