"""POST /jobs against the real app: accepted formats, options, and every refused input."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from callannotate.api.uploads import (
    FORM_OVERHEAD,
    clean_stale_parts,
    safe_filename,
    stored_name,
)
from callannotate.config import Settings
from callannotate.jobs.filequeue import FileQueue

Upload = Callable[..., Awaitable[httpx.Response]]
Leftovers = Callable[[], list[str]]


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, str]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "detail", "request_id"}
    assert body["error"] == code, body
    assert body["detail"]
    assert body["request_id"] == response.headers["x-request-id"]
    return body


# ------------------------------------------------------------------------------ accepted


@pytest.mark.parametrize(
    ("name", "fmt", "codec", "channels"),
    [
        ("tone.wav", "wav", "pcm_s16le", 1),
        ("tone.flac", "flac", "flac", 1),
        ("tone.mp3", "mp3", "mp3", 1),
        ("tone.ogg", "ogg", "opus", 1),
        ("tone.opus", "ogg", "opus", 1),
        ("tone.m4a", "mov", "aac", 1),
        ("tone.amr", "amr", "amr", 1),
        ("tone.webm", "matroska", "opus", 1),
        ("stereo.wav", "wav", "pcm_s16le", 2),
    ],
)
async def test_accepts_audio_formats(
    upload: Upload,
    audio_dir: Path,
    queue: FileQueue,
    leftovers: Leftovers,
    name: str,
    fmt: str,
    codec: str,
    channels: int,
) -> None:
    response = await upload(audio_dir / name)
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"] == f"/jobs/{job['id']}"
    assert job["state"] == "queued"
    assert job["owner"] == "local"
    audio = job["audio"]
    assert audio["filename"] == name
    assert audio["format"] == fmt
    assert audio["codec"].startswith(codec)
    assert audio["channels"] == channels  # stereo is kept as is
    assert 0.9 < audio["duration"] < 1.2
    assert audio["size_bytes"] == (audio_dir / name).stat().st_size
    stored = queue.audio_path(job["id"])
    assert stored.read_bytes() == (audio_dir / name).read_bytes()
    assert stored.parent.parent.name == "incoming"
    # Only the job folder is left: nothing in staging.
    assert all(p.startswith(f"incoming/{job['id']}") for p in leftovers())


async def test_options_are_stored(
    upload: Upload, audio_dir: Path, client: httpx.AsyncClient
) -> None:
    response = await upload(
        audio_dir / "stereo.wav",
        data={
            "language": "RU",
            "min_speakers": "2",
            "max_speakers": "4",
            "steps": "vad, diarize,transcribe",
            "channel_mode": "per-channel",
            "initial_prompt": "Acme, Иван Петров",
            "callback_url": "https://example.test/hook",
        },
    )
    assert response.status_code == 202, response.text
    job = (await client.get(response.headers["location"])).json()
    assert job["options"] == {
        "language": "ru",
        "num_speakers": None,
        "min_speakers": 2,
        "max_speakers": 4,
        "steps": ["vad", "diarize", "transcribe"],
        "channel_mode": "per-channel",
        "initial_prompt": "Acme, Иван Петров",
    }
    assert job["callback_url"] == "https://example.test/hook"


async def test_directory_prefix_is_stripped(
    upload: Upload, audio_dir: Path, queue: FileQueue, settings: Settings
) -> None:
    response = await upload(audio_dir / "tone.wav", filename="/home/anna/calls/звонок 1.wav")
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["audio"]["filename"] == "звонок 1.wav"
    assert job["audio"]["stored_as"] == "audio.wav"
    assert queue.audio_path(job["id"]).parent == settings.queue_dir / "incoming" / job["id"]


# ------------------------------------------------------------------------------ refused


@pytest.mark.parametrize(
    ("name", "detail_part"),
    [
        ("text.wav", "does not decode"),
        ("zero.wav", "empty"),
        ("empty.wav", "empty"),
        ("truncated.m4a", "does not decode"),
        ("truncated.wav", "does not decode"),
    ],
)
async def test_refuses_invalid_audio(
    upload: Upload, audio_dir: Path, leftovers: Leftovers, name: str, detail_part: str
) -> None:
    body = assert_error(await upload(audio_dir / name), 422, "invalid_audio")
    assert detail_part in body["detail"]
    assert leftovers() == []


@pytest.mark.parametrize(
    "filename", ["../../etc/passwd", "..\\..\\windows\\win.ini", "calls/../../x.wav", ".."]
)
async def test_refuses_path_traversal_filename(
    upload: Upload, audio_dir: Path, leftovers: Leftovers, tmp_path: Path, filename: str
) -> None:
    before = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    body = assert_error(
        await upload(audio_dir / "tone.wav", filename=filename), 422, "invalid_filename"
    )
    assert "'..'" in body["detail"]
    assert leftovers() == []
    assert sorted(p for p in tmp_path.rglob("*") if p.is_file()) == before


async def test_refuses_wrong_content_type(client: httpx.AsyncClient, leftovers: Leftovers) -> None:
    body = assert_error(
        await client.post("/jobs", content=b"RIFF....", headers={"content-type": "audio/wav"}),
        415,
        "unsupported_media_type",
    )
    assert "multipart/form-data" in body["detail"]
    assert_error(await client.post("/jobs", json={"file": "x"}), 415, "unsupported_media_type")
    assert_error(await client.post("/jobs", data={"language": "en"}), 415, "unsupported_media_type")
    assert_error(await client.post("/jobs"), 415, "unsupported_media_type")
    assert leftovers() == []


async def test_refuses_multipart_without_boundary(client: httpx.AsyncClient) -> None:
    assert_error(
        await client.post("/jobs", content=b"x", headers={"content-type": "multipart/form-data"}),
        400,
        "bad_request",
    )


async def test_refuses_oversize_by_content_length(
    client: httpx.AsyncClient, leftovers: Leftovers, settings: Settings
) -> None:
    """A declared body far over the limit is refused before any of it is read."""
    pulled = 0
    max_upload = settings.api.max_upload_bytes

    async def body() -> AsyncIterator[bytes]:
        nonlocal pulled
        for _ in range(100):
            pulled += 1
            yield b"x" * 65536

    declared = max_upload + FORM_OVERHEAD + 1
    response = await client.post(
        "/jobs",
        content=body(),
        headers={
            "content-type": "multipart/form-data; boundary=abc",
            "content-length": str(declared),
        },
    )
    body_json = assert_error(response, 413, "payload_too_large")
    assert str(declared) in body_json["detail"]
    assert pulled <= 1
    assert leftovers() == []


async def test_refuses_oversize_file_upload(
    upload: Upload, audio_dir: Path, leftovers: Leftovers, settings: Settings
) -> None:
    body = assert_error(await upload(audio_dir / "big.wav"), 413, "payload_too_large")
    assert f"limit of {settings.api.max_upload_bytes} bytes" in body["detail"]
    assert leftovers() == []


async def test_refuses_oversize_while_streaming(
    client: httpx.AsyncClient, audio_dir: Path, leftovers: Leftovers, settings: Settings
) -> None:
    """No Content-Length (chunked body): the limit is enforced on the streamed bytes."""
    boundary = "XyZbOuNdArY"
    payload = (audio_dir / "big.wav").read_bytes()
    total_chunks = (len(payload) + 16383) // 16384
    chunks_sent = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal chunks_sent
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.wav"\r\n'
            "Content-Type: audio/wav\r\n\r\n"
        ).encode()
        for i in range(0, len(payload), 16384):
            chunks_sent += 1
            yield payload[i : i + 16384]
        yield f"\r\n--{boundary}--\r\n".encode()

    response = await client.post(
        "/jobs",
        content=body(),
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
    )
    assert "content-length" not in response.request.headers
    assert_error(response, 413, "payload_too_large")
    # Reading stopped at the limit, not at the end of the body.
    assert chunks_sent <= settings.api.max_upload_bytes // 16384 + 2 < total_chunks
    assert leftovers() == []


async def test_refuses_incomplete_multipart(
    client: httpx.AsyncClient, audio_dir: Path, leftovers: Leftovers
) -> None:
    boundary = "b0undary"
    content = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
    ).encode() + (audio_dir / "tone.wav").read_bytes()[:5000]
    response = await client.post(
        "/jobs",
        content=content,
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
    )
    assert_error(response, 400, "bad_request")
    assert leftovers() == []


async def test_refuses_missing_file_part(client: httpx.AsyncClient, leftovers: Leftovers) -> None:
    response = await client.post(
        "/jobs",
        files={"language": (None, "en")},  # multipart, but no file
    )
    body = assert_error(response, 422, "unprocessable")
    assert "'file'" in body["detail"]
    assert leftovers() == []


async def test_refuses_two_files(
    client: httpx.AsyncClient, audio_dir: Path, leftovers: Leftovers
) -> None:
    wav = (audio_dir / "tone.wav").read_bytes()
    response = await client.post(
        "/jobs",
        files=[("file", ("a.wav", wav, "audio/wav")), ("file", ("b.wav", wav, "audio/wav"))],
    )
    assert_error(response, 422, "unprocessable")
    assert leftovers() == []


async def test_refuses_other_file_field(
    client: httpx.AsyncClient, audio_dir: Path, leftovers: Leftovers
) -> None:
    wav = (audio_dir / "tone.wav").read_bytes()
    response = await client.post("/jobs", files={"audio": ("a.wav", wav, "audio/wav")})
    body = assert_error(response, 422, "unprocessable")
    assert "'audio'" in body["detail"]
    assert leftovers() == []


@pytest.mark.parametrize(
    ("fields", "detail_part"),
    [
        ({"num_speakers": "0"}, "num_speakers"),
        ({"num_speakers": "two"}, "num_speakers"),
        ({"min_speakers": "5", "max_speakers": "2"}, "min_speakers must not exceed"),
        ({"num_speakers": "2", "max_speakers": "3"}, "not both"),
        ({"language": "english"}, "language"),
        ({"steps": "vad,dance"}, "steps"),
        ({"channel_mode": "left"}, "channel_mode"),
        ({"initial_prompt": "x" * 2001}, "initial_prompt"),
        ({"callback_url": "ftp://example.test/x"}, "callback_url"),
        ({"callback_url": "javascript:alert(1)"}, "callback_url"),
        ({"colour": "blue"}, "unknown form field"),
    ],
)
async def test_refuses_invalid_options(
    upload: Upload,
    audio_dir: Path,
    leftovers: Leftovers,
    fields: dict[str, str],
    detail_part: str,
) -> None:
    body = assert_error(await upload(audio_dir / "tone.wav", data=fields), 422, "unprocessable")
    assert detail_part in body["detail"]
    assert leftovers() == []


async def test_refuses_oversized_form_field(
    upload: Upload, audio_dir: Path, leftovers: Leftovers
) -> None:
    body = assert_error(
        await upload(audio_dir / "tone.wav", data={"initial_prompt": "x" * 70_000}),
        422,
        "unprocessable",
    )
    assert "longer than" in body["detail"]
    assert leftovers() == []


async def test_refused_upload_does_not_create_a_job(
    upload: Upload, audio_dir: Path, client: httpx.AsyncClient
) -> None:
    await upload(audio_dir / "text.wav")
    page = (await client.get("/jobs")).json()
    assert page["total"] == 0


# ------------------------------------------------------------------------------ helpers


@pytest.mark.parametrize(
    ("raw", "safe"),
    [
        ("call.wav", "call.wav"),
        ("C:\\calls\\call.wav", "call.wav"),
        ("/tmp/x/.hidden.wav", "hidden.wav"),
        ("a\x01b.wav", "a_b.wav"),
        ("", "upload"),
        ("...", "upload"),
        ("звонок.mp3", "звонок.mp3"),
        ("x" * 300 + ".flac", "x" * 115 + ".flac"),
    ],
)
def test_safe_filename(raw: str, safe: str) -> None:
    assert safe_filename(raw) == safe
    assert "/" not in safe_filename(raw) and "\\" not in safe_filename(raw)


def test_stored_name_is_ascii_and_fixed() -> None:
    assert stored_name("call.WAV", "wav") == "audio.wav"
    assert stored_name("passwd", "wav") == "audio.wav"
    assert stored_name("x.тест", "mov") == "audio.mov"
    assert stored_name("x", "weird,format") == "audio.bin"


def test_job_json_round_trips(audio_dir: Path) -> None:
    # The error body model is what OpenAPI documents.
    from callannotate.api.schemas import ErrorBody

    body = ErrorBody(error="e", detail="d", request_id="r")
    assert json.loads(body.model_dump_json()) == {"error": "e", "detail": "d", "request_id": "r"}


async def test_client_disconnect_mid_upload_leaves_nothing(
    app: FastAPI, audio_dir: Path, leftovers: Leftovers
) -> None:
    """The client goes away half-way through the file: the staged part is removed."""
    boundary = "disc0nnect"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
    ).encode()
    messages: list[dict[str, Any]] = [
        {"type": "http.request", "body": head, "more_body": True},
        {
            "type": "http.request",
            "body": (audio_dir / "tone.wav").read_bytes()[:8000],
            "more_body": True,
        },
        {"type": "http.disconnect"},
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/jobs",
        "raw_path": b"/jobs",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", f"multipart/form-data; boundary={boundary}".encode())],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
        "state": {},
    }
    await app(scope, receive, send)
    assert leftovers() == []
    assert not any(m["type"] == "http.response.start" and m["status"] == 500 for m in sent)


def test_stale_partial_uploads_are_cleaned(tmp_path: Path) -> None:
    import os
    import time

    stale = tmp_path / "old.part"
    fresh = tmp_path / "new.part"
    other = tmp_path / ".build-x"
    for path in (stale, fresh):
        path.write_bytes(b"x")
    other.mkdir()
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))
    assert clean_stale_parts(tmp_path) == 1
    assert not stale.exists() and fresh.exists() and other.exists()
