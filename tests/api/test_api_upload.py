"""POST /jobs against the real app: accepted formats, options, and every refused input."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from fastapi import FastAPI

from callannotate.api import uploads
from callannotate.api.app import create_app
from callannotate.api.uploads import (
    FORM_OVERHEAD,
    clean_stale_parts,
    open_part,
    safe_filename,
)
from callannotate.config import Settings
from callannotate.jobs.filequeue import FileQueue
from callannotate.jobs.fsutil import unlock
from callannotate.jobs.intake import stored_name

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
    assert stored.read_bytes().startswith(b"\x89CAE")  # encrypted at rest
    assert queue.vault is not None
    assert queue.vault.read_bytes(stored) == (audio_dir / name).read_bytes()
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
    def files() -> list[Path]:
        # the relational store is left out: the audit log records the refused call there
        return sorted(
            p for p in tmp_path.rglob("*") if p.is_file() and "callannotate.db" not in p.name
        )

    before = files()
    body = assert_error(
        await upload(audio_dir / "tone.wav", filename=filename), 422, "invalid_filename"
    )
    assert "'..'" in body["detail"]
    assert leftovers() == []
    assert files() == before


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
        ({"steps": ",,,"}, "steps"),  # issue 15.13: an empty step list is refused
        ({"steps": " , ,"}, "steps"),
        ({"steps": "   "}, "steps"),
        ({"steps": "decode,align"}, "steps"),  # only the steps that always run: nothing to do
        ({"language": "xx"}, "language"),
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


def test_stored_name_comes_from_the_decoded_container() -> None:
    assert stored_name("wav") == "audio.wav"
    assert stored_name("mp3") == "audio.mp3"
    assert stored_name("mov,mp4,m4a,3gp,3g2,mj2") == "audio.m4a"
    assert stored_name("matroska,webm") == "audio.webm"
    assert stored_name("weird,format") == "audio.bin"


def test_job_json_round_trips(audio_dir: Path) -> None:
    # The error body model is what OpenAPI documents.
    from callannotate.api.schemas import ErrorBody

    body = ErrorBody(error="e", detail="d", request_id="r")
    assert json.loads(body.model_dump_json()) == {"error": "e", "detail": "d", "request_id": "r"}


def _file_head(boundary: str) -> bytes:
    """The start of a multipart body: the ``file`` field's headers (its bytes follow)."""
    return (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
    ).encode()


def _upload_scope(boundary: str) -> dict[str, Any]:
    """The ASGI scope of a multipart ``POST /jobs`` (driven by hand, message by message)."""
    return {
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


class _Sent(list[dict[str, Any]]):
    """An ASGI ``send`` that keeps every message the app sent."""

    async def __call__(self, message: dict[str, Any]) -> None:
        self.append(message)


async def test_client_disconnect_mid_upload_leaves_nothing(
    app: FastAPI, audio_dir: Path, leftovers: Leftovers
) -> None:
    """The client goes away half-way through the file: the staged part is removed."""
    boundary = "disc0nnect"
    head = _file_head(boundary)
    messages: list[dict[str, Any]] = [
        {"type": "http.request", "body": head, "more_body": True},
        {
            "type": "http.request",
            "body": (audio_dir / "tone.wav").read_bytes()[:8000],
            "more_body": True,
        },
        {"type": "http.disconnect"},
    ]
    sent = _Sent()

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    scope = _upload_scope(boundary)
    await app(scope, receive, sent)
    assert leftovers() == []
    assert not any(m["type"] == "http.response.start" and m["status"] == 500 for m in sent)


def test_abandoned_partial_uploads_are_cleaned_whatever_their_age(tmp_path: Path) -> None:
    """Issue 15.11: a .part nobody holds is removed at once; one being written is kept."""
    abandoned = tmp_path / "old.part"
    abandoned.write_bytes(b"x")
    other = tmp_path / ".build-x"
    other.mkdir()
    writing, fd = open_part(tmp_path)
    try:
        assert clean_stale_parts(tmp_path) == 1
        assert not abandoned.exists() and writing.exists() and other.exists()
    finally:
        unlock(fd)
    assert clean_stale_parts(tmp_path) == 1  # its writer let go without queueing it
    assert not writing.exists()


_PART_HOLDER = """
import os, sys, time
from pathlib import Path
from callannotate.api.uploads import open_part
path, fd = open_part(Path(sys.argv[1]))
os.write(fd, b"x" * 65536)
print(path, flush=True)
time.sleep(120)
"""


def _start_part_holder(staging: Path) -> tuple[subprocess.Popen[str], Path]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _PART_HOLDER, str(staging)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    return proc, Path(proc.stdout.readline().strip())


async def test_startup_removes_the_partial_upload_of_a_killed_api(
    app: FastAPI, settings: Settings
) -> None:
    """Issue 15.11: an uploader killed with SIGKILL leaves a .part that start-up removes at
    once (no waiting an hour); a .part a live process is writing is kept."""
    staging = settings.queue_dir / "staging"
    killed, killed_part = _start_part_holder(staging)
    alive, alive_part = _start_part_holder(staging)
    try:
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=30)
        assert killed_part.is_file() and alive_part.is_file()
        async with app.router.lifespan_context(app):
            assert not killed_part.exists()
            assert alive_part.is_file()
    finally:
        for proc in (killed, alive):
            proc.kill()
            proc.wait(timeout=30)


async def test_stalled_upload_times_out_with_408(
    settings: Settings, audio_dir: Path, leftovers: Leftovers
) -> None:
    """Issue 15.9: a client that stops sending mid-body gets 408 and nothing stays staged."""
    settings.api.body_idle_timeout_s = 0.5
    app = create_app(settings)
    boundary = "st4ll"
    head = _file_head(boundary) + (audio_dir / "tone.wav").read_bytes()[:4000]
    first = [{"type": "http.request", "body": head, "more_body": True}]
    stalled = anyio.Event()
    sent = _Sent()

    async def receive() -> dict[str, Any]:
        if first:
            return first.pop()
        stalled.set()
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    scope = _upload_scope(boundary)
    with anyio.fail_after(30):  # a safety net for the broken case, not a speed limit
        await app(scope, receive, sent)
    assert stalled.is_set()
    start = next(m for m in sent if m["type"] == "http.response.start")
    assert start["status"] == 408
    body = json.loads(
        b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    )
    assert body["error"] == "request_timeout" and "0.5 s" in body["detail"]
    assert leftovers() == []


def _modes(root: Path) -> dict[str, str]:
    """Every folder and file under ``root`` (itself included) whose mode is not private."""
    loose: dict[str, str] = {}
    for path in [root, *root.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        want = 0o700 if path.is_dir() else 0o600
        if mode != want:
            loose[str(path.relative_to(root))] = oct(mode)
    return loose


async def test_everything_under_the_data_folder_is_private(
    settings: Settings, audio_dir: Path
) -> None:
    """Issue 15.3: queue folders, staging, uploads, job folders, results and voices are
    0700/0600 even when the process umask would allow more (umask 000 here)."""
    from callannotate.voices.schemas import Voice
    from callannotate.voices.store import VoiceStore

    old = os.umask(0)
    try:
        app = create_app(settings)
        queue: FileQueue = app.state.queue
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            with open(audio_dir / "tone.wav", "rb") as fh:
                response = await client.post("/jobs", files={"file": ("a.wav", fh)})
            assert response.status_code == 202, response.text
            job_id = response.json()["id"]
            assert queue.claim("w") is not None
            queue.complete(job_id, b"{}")
            with open(audio_dir / "tone.flac", "rb") as fh:
                second = await client.post("/jobs", files={"file": ("b.flac", fh)})
            assert second.status_code == 202
        _, in_flight = open_part(queue.staging_dir())  # an upload being written
        unlock(in_flight)
        VoiceStore(settings.voices_dir).create(Voice(id="a" * 32, name="A", embedding_model="m"))
    finally:
        os.umask(old)
    assert (settings.queue_dir / "completed" / job_id / "result.json").is_file()
    assert _modes(settings.data_dir) == {}


async def test_undecodable_upload_error_names_no_server_path(
    upload: Upload, audio_dir: Path, settings: Settings
) -> None:
    """Issue 15.4: the probe error says what is wrong, not where the staged file is."""
    for name in ("text.wav", "truncated.m4a", "truncated.wav"):
        body = assert_error(await upload(audio_dir / name), 422, "invalid_audio")
        assert "does not decode" in body["detail"]
        assert str(settings.data_dir) not in body["detail"]
        assert "staging" not in body["detail"] and ".part" not in body["detail"]


@pytest.mark.parametrize("steps", [",,,", " , ,", "decode,align"])
def test_cli_refuses_an_empty_step_list(steps: str) -> None:
    """Issue 15.13, CLI path: ``--steps ,,,`` (or only the steps that always run) is refused
    by the same options model."""
    import argparse

    from callannotate.cli import CliError, _annotate_options

    args = argparse.Namespace(
        language="auto",
        speakers=None,
        min_speakers=None,
        max_speakers=None,
        steps=steps,
        channel_mode=None,
        initial_prompt=None,
    )
    with pytest.raises(CliError, match="steps"):
        _annotate_options(args)


# ------------------------------------------------------------- staging off the event loop

# File-system audit events (sys.addaudithook) that must not happen on the event loop's thread
# while an upload is staged, queued or discarded (issue 21). os.write, os.close and stat raise
# no audit event; they come with the open and flock seen here.
FS_EVENTS = frozenset(
    {"open", "fcntl.flock", "os.remove", "os.chmod", "os.mkdir", "os.rename", "os.scandir"}
)
_watch: dict[str, Any] = {"thread": None, "seen": []}


def _fs_audit(event: str, args: tuple[Any, ...]) -> None:
    if event in FS_EVENTS and threading.get_ident() == _watch["thread"]:
        _watch["seen"].append((event, args))


@contextlib.contextmanager
def loop_fs_calls() -> Iterator[list[tuple[str, tuple[Any, ...]]]]:
    """The file-system calls made on this thread (the event loop's) inside the block."""
    if not getattr(_fs_audit, "installed", False):  # a hook stays for the process: one, idle
        sys.addaudithook(_fs_audit)
        _fs_audit.installed = True  # type: ignore[attr-defined]
    seen: list[tuple[str, tuple[Any, ...]]] = []
    _watch.update(thread=threading.get_ident(), seen=seen)
    try:
        yield seen
    finally:
        _watch.update(thread=None, seen=[])


async def test_staging_makes_no_file_system_call_on_the_event_loop(
    client: httpx.AsyncClient, audio_dir: Path, leftovers: Leftovers
) -> None:
    """Issue 21: creating and locking the .part, the encrypted writes, the vault look-up, the
    unlock after queueing and the discard of a refused upload all run in worker threads."""
    wav = (audio_dir / "tone.wav").read_bytes()
    text = (audio_dir / "text.wav").read_bytes()
    await client.post("/jobs", files={"file": ("a.wav", wav)})  # first use: key ring, folders
    with loop_fs_calls() as seen:
        accepted = await client.post("/jobs", files={"file": ("a.wav", wav)})
        refused = await client.post("/jobs", files={"file": ("t.wav", text)})
    assert accepted.status_code == 202, accepted.text
    assert_error(refused, 422, "invalid_audio")
    assert seen == []
    assert all(p.startswith("incoming/") for p in leftovers())


async def test_large_upload_is_staged_in_bounded_slices(
    settings: Settings,
    audio_dir: Path,
    leftovers: Leftovers,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The parsed bytes are written a slice at a time, each in one thread hop: never more
    than a slice and a received chunk in memory, still encrypted as they stream."""
    slice_bytes, piece = 64 * 1024, 16 * 1024
    monkeypatch.setattr(uploads, "SLICE_BYTES", slice_bytes)
    hops: list[tuple[int, bool]] = []  # (bytes held when staging, on the loop thread)
    stage = uploads._Receiver.stage
    loop_thread = threading.get_ident()

    def counted(receiver: uploads._Receiver) -> None:
        hops.append((receiver.pending, threading.get_ident() == loop_thread))
        stage(receiver)

    monkeypatch.setattr(uploads._Receiver, "stage", counted)
    settings.api.max_upload_bytes = 1024 * 1024
    app = create_app(settings)
    payload = (audio_dir / "big.wav").read_bytes()
    boundary = "sl1ces"

    async def body() -> AsyncIterator[bytes]:
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="b.wav"\r\n\r\n'
        ).encode()
        for i in range(0, len(payload), piece):
            yield payload[i : i + piece]
        yield f"\r\n--{boundary}--\r\n".encode()

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.post(
            "/jobs",
            content=body(),
            headers={"content-type": f"multipart/form-data; boundary={boundary}"},
        )
    assert response.status_code == 202, response.text
    assert len(hops) >= len(payload) // (slice_bytes + piece)
    assert max(held for held, _ in hops) <= slice_bytes + piece
    assert not any(on_loop for _, on_loop in hops)
    queue: FileQueue = app.state.queue
    stored = queue.audio_path(response.json()["id"])
    assert stored.read_bytes().startswith(b"\x89CAE")
    assert queue.vault is not None and queue.vault.read_bytes(stored) == payload
    assert all(p.startswith("incoming/") for p in leftovers())


@pytest.mark.parametrize("ending", ["disconnect", "stall", "cancel"])
async def test_upload_ended_after_staged_slices_leaves_nothing(
    settings: Settings,
    audio_dir: Path,
    leftovers: Leftovers,
    monkeypatch: pytest.MonkeyPatch,
    ending: str,
) -> None:
    """Slices already on disk (0600, locked: the cleaner keeps them) are removed when the
    client goes away, stalls (408) or the request is cancelled (server shutting down)."""
    monkeypatch.setattr(uploads, "SLICE_BYTES", 4096)
    settings.api.body_idle_timeout_s = 0.5
    app = create_app(settings)
    staging = settings.queue_dir / "staging"
    boundary = "3nd1ng"
    wav = (audio_dir / "tone.wav").read_bytes()
    messages: list[dict[str, Any]] = [
        {
            "type": "http.request",
            "body": _file_head(boundary) + wav[:8000],
            "more_body": True,
        },
        {"type": "http.request", "body": wav[8000:16000], "more_body": True},
    ]
    on_disk: list[tuple[list[str], int]] = []
    stopped = anyio.Event()
    sent = _Sent()

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        if not on_disk:
            parts = sorted(staging.glob("*.part"))
            modes = [oct(stat.S_IMODE(p.stat().st_mode)) for p in parts]
            on_disk.append((modes, clean_stale_parts(staging)))
        stopped.set()
        if ending == "disconnect":
            return {"type": "http.disconnect"}
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    scope = _upload_scope(boundary)
    with anyio.fail_after(30):  # a safety net for the broken case, not a speed limit
        async with anyio.create_task_group() as tg:
            tg.start_soon(app, scope, receive, sent)
            await stopped.wait()
            if ending == "cancel":
                tg.cancel_scope.cancel()
    assert on_disk == [(["0o600"], 0)]  # staged, private, and the cleaner left it alone
    assert leftovers() == []
    statuses = [m["status"] for m in sent if m["type"] == "http.response.start"]
    if ending == "stall":
        assert statuses == [408]
    assert 500 not in statuses
