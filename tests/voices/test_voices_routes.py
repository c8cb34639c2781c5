"""The /voices REST routes and job-speaker enrollment against the real app and CAM++."""

from __future__ import annotations

import io
import wave
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
from fastapi import FastAPI
from voices_testing import FSDD, needs_fsdd

from callannotate.api.app import create_app
from callannotate.config import ApiSettings, Settings
from callannotate.jobs.filequeue import FileQueue
from callannotate.jobs.models import AudioMeta, Job
from callannotate.pipeline.types import Annotation, RecordingInfo, Speaker, Turn
from callannotate.voices.schemas import Voice
from callannotate.voices.service import VoiceService
from callannotate.voices.store import VoiceStore


@pytest.fixture
def settings(tmp_path: Path, model_cache: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        model_cache_dir=model_cache,
        api=ApiSettings(embedded_workers=False, max_upload_bytes=2 * 1024 * 1024),
    )


@pytest.fixture
def app(settings: Settings) -> FastAPI:
    return create_app(settings)


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c


def files_of(*paths: Path) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("file", (p.name, p.read_bytes(), "audio/wav")) for p in paths]


def silent_wav(seconds: float = 1.0) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(b"\0\0" * int(16000 * seconds))
    return buf.getvalue()


JACKSON = [FSDD / f"{d}_jackson_0.wav" for d in range(5)]
GEORGE = [FSDD / f"{d}_george_0.wav" for d in range(5)]


@pytest.mark.models
@needs_fsdd
async def test_voice_crud(client: httpx.AsyncClient, settings: Settings) -> None:
    # contact_id must name one of your contacts (tests/contacts/test_speakers_api.py)
    r = await client.post(
        "/voices", data={"name": "Jackson", "contact_id": "c-42"}, files=files_of(*JACKSON[:1])
    )
    assert r.status_code == 422 and "not one of your contacts" in r.json()["detail"]
    r = await client.post("/voices", data={"name": "Jackson"}, files=files_of(*JACKSON[:3]))
    assert r.status_code == 201, r.text
    voice = r.json()
    assert r.headers["location"] == f"/voices/{voice['id']}"
    assert voice["name"] == "Jackson" and voice["contact_id"] is None
    assert len(voice["samples"]) == 3 and "embedding" not in voice["samples"][0]
    assert voice["samples"][0]["source"] == JACKSON[0].name
    assert voice["samples"][0]["speech_duration"] > 0.2

    r = await client.post(f"/voices/{voice['id']}/samples", files=files_of(JACKSON[3]))
    assert r.status_code == 201 and len(r.json()["samples"]) == 4

    r = await client.get("/voices")
    assert [v["id"] for v in r.json()] == [voice["id"]]
    r = await client.get(f"/voices/{voice['id']}")
    assert r.status_code == 200 and len(r.json()["samples"]) == 4

    sample_id = voice["samples"][0]["id"]
    r = await client.delete(f"/voices/{voice['id']}/samples/{sample_id}")
    assert r.status_code == 200 and sample_id not in {s["id"] for s in r.json()["samples"]}
    r = await client.delete(f"/voices/{voice['id']}/samples/{sample_id}")
    assert r.status_code == 404 and r.json()["error"] == "not_found"

    assert (await client.delete(f"/voices/{voice['id']}")).status_code == 204
    assert (await client.get(f"/voices/{voice['id']}")).status_code == 404
    assert list(settings.voices_dir.glob("*.json")) == []


@pytest.mark.models
@needs_fsdd
async def test_bad_samples_are_refused(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/voices", data={"name": "X"}, files=[("file", ("s.wav", silent_wav(), "audio/wav"))]
    )
    assert r.status_code == 422 and "silent" in r.json()["detail"]
    short = FSDD / "0_jackson_0.wav"
    x, sr = sf.read(short, dtype="float32")
    buf = io.BytesIO()
    sf.write(buf, x[: int(0.12 * sr)], sr, format="WAV")
    r = await client.post(
        "/voices", data={"name": "X"}, files=[("file", ("c.wav", buf.getvalue(), "audio/wav"))]
    )
    assert r.status_code == 422 and "too little speech" in r.json()["detail"]
    r = await client.post(
        "/voices", data={"name": "X"}, files=[("file", ("t.wav", b"not audio" * 50, "audio/wav"))]
    )
    assert r.status_code == 422 and r.json()["error"] == "invalid_audio"
    r = await client.post("/voices", files=files_of(JACKSON[0]))
    assert r.status_code == 422 and "name" in r.json()["detail"]
    r = await client.post("/voices", data={"name": "X"})
    assert r.status_code in (415, 422)
    r = await client.post("/voices", json={"name": "X"})
    assert r.status_code == 415
    r = await client.post(f"/voices/{'0' * 32}/samples", files=files_of(JACKSON[0]))
    assert r.status_code == 404
    assert (await client.get("/voices")).json() == []


def jackson_then_george(tmp_path: Path) -> tuple[Path, Annotation]:
    """A "call": five Jackson takes, then five George takes, at 8 kHz like the originals, and
    its annotation (S0 then S1)."""
    pieces = [sf.read(p, dtype="float32")[0] for p in [*JACKSON, *GEORGE]]
    bounds = np.cumsum([0, *[len(p) for p in pieces]]) / 8000
    call = tmp_path / "call.wav"
    sf.write(call, np.concatenate(pieces), 8000, subtype="PCM_16")
    turns = [
        Turn(start=float(bounds[i]), end=float(bounds[i + 1]), speaker="S0" if i < 5 else "S1")
        for i in range(10)
    ]
    annotation = Annotation(
        recording=RecordingInfo(duration=float(bounds[-1]), sample_rate=8000, channels=1),
        speakers=[Speaker(label="S0"), Speaker(label="S1")],
        turns=turns,
        exclusive_turns=turns,
    )
    return call, annotation


def _completed_job(queue: FileQueue, audio: Path, annotation: Annotation) -> str:
    job_id = queue.new_job_id()
    staged = queue.staging_dir() / f"upload-{job_id}"
    staged.parent.mkdir(parents=True, exist_ok=True)
    staged.write_bytes(audio.read_bytes())
    info = sf.info(audio)
    job = Job(
        id=job_id,
        owner="local",
        audio=AudioMeta(
            filename=audio.name,
            stored_as="audio.wav",
            size_bytes=audio.stat().st_size,
            format="wav",
            codec="pcm_s16le",
            sample_rate=int(info.samplerate),
            channels=1,
            duration=float(info.duration),
        ),
    )
    queue.submit(job, staged)
    claimed = queue.claim("test-worker")
    assert claimed is not None and claimed.id == job_id
    queue.complete(job_id, annotation.model_dump_json().encode())
    return job_id


def _offline_address_book(settings: Settings) -> None:
    """An address book of the local user whose CardDAV server does not answer."""
    from callannotate.contacts.service import ContactsService
    from callannotate.db.contact_models import ContactAccount, ContactBook
    from callannotate.db.engine import Database
    from callannotate.db.migrate import upgrade_database

    db = Database.from_settings(settings)
    upgrade_database(db)
    account = "a" * 32
    sealed = ContactsService(settings, db)._seal(account, "app-password")
    with db.session() as session:
        session.add(
            ContactAccount(
                id=account,
                owner="local",
                url="http://127.0.0.1:9/",
                username="u",
                password_sealed=sealed,
            )
        )
        session.add(ContactBook(id="b" * 32, account_id=account, owner="local", url="/b/"))
    db.dispose()


@pytest.mark.models
@needs_fsdd
async def test_enroll_speaker_of_a_job(
    client: httpx.AsyncClient, app: FastAPI, settings: Settings, tmp_path: Path
) -> None:
    call, annotation = jackson_then_george(tmp_path)
    queue: FileQueue = app.state.queue
    job_id = _completed_job(queue, call, annotation)

    r = await client.post(f"/jobs/{job_id}/speakers/S0/enroll", json={"name": "Jackson"})
    assert r.status_code == 201, r.text
    voice = r.json()
    assert voice["samples"][0]["source"] == f"job:{job_id}/S0"
    assert voice["samples"][0]["speech_duration"] > 1.0
    r = await client.post(f"/jobs/{job_id}/speakers/S1/enroll", json={"name": "George"})
    assert r.status_code == 201

    r = await client.post(f"/jobs/{job_id}/speakers/S9/enroll", json={"name": "X"})
    assert r.status_code == 404
    r = await client.post(f"/jobs/{job_id}/speakers/S0/enroll", json={})
    assert r.status_code == 422
    r = await client.post(f"/jobs/{job_id}/speakers/S0/enroll", json={"voice_id": voice["id"]})
    assert r.status_code == 201 and len(r.json()["samples"]) == 2
    r = await client.post(f"/jobs/{'f' * 32}/speakers/S0/enroll", json={"name": "X"})
    assert r.status_code == 404

    # "S1 is George of Acme": the contact is created with the voice and linked to it (the
    # address book's server is down here: the contact waits in the outbox)
    _offline_address_book(settings)
    r = await client.post(
        f"/jobs/{job_id}/speakers/S1/enroll",
        json={
            "name": "George Smith",  # "George" is taken (409)
            "contact": {"org": "Acme", "phones": [{"value": "+79161234567"}]},
        },
    )
    assert r.status_code == 201, r.text
    contact_id = r.json()["contact_id"]
    r = await client.get(f"/contacts/{contact_id}")
    assert r.status_code == 200, r.text
    assert (r.json()["fields"]["fn"], r.json()["fields"]["org"]) == ("George Smith", "Acme")
    assert r.json()["pending"] is True
    # an existing contact links an existing voice
    r = await client.post(
        f"/jobs/{job_id}/speakers/S0/enroll",
        json={"voice_id": voice["id"], "contact_id": contact_id},
    )
    assert r.status_code == 201 and r.json()["contact_id"] == contact_id
    r = await client.post(
        f"/jobs/{job_id}/speakers/S0/enroll", json={"name": "X", "contact_id": "f" * 32}
    )
    assert r.status_code == 422

    # The store the API wrote is the one identification reads.
    from callannotate.pipeline import registry
    from callannotate.pipeline.audio.decode import decode
    from callannotate.security.atrest import vault_for

    service = VoiceService(
        VoiceStore(settings.voices_dir, vault_for(settings)),  # voice files are encrypted
        registry.loaded_processor(settings, "embedding"),
    )
    takes = [decode(FSDD / f"{d}_jackson_20.wav").mono() for d in range(5, 10)]
    result = service.identify_wave(np.concatenate(takes))
    assert result.candidates[0].name == "Jackson"


CHUNK = 64 * 1024


class _Body:
    """A chunked request body (no Content-Length) that counts what the server read."""

    def __init__(self, head: bytes, total: int) -> None:
        self.head = head
        self.total = total
        self.sent = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.head
        while self.sent < self.total:
            self.sent += CHUNK
            yield b"\0" * CHUNK


@pytest.mark.parametrize("path", ["/voices", f"/voices/{'0' * 32}/samples"])
async def test_chunked_oversized_samples_are_refused_while_streaming(
    client: httpx.AsyncClient, settings: Settings, path: str
) -> None:
    """Issue 16.5: a chunked body (no Content-Length) larger than the limit gets 413 as soon
    as the limit is crossed, not after the whole body was read, and leaves nothing behind."""
    if path != "/voices":  # the voice must exist, or the route answers 404 first
        VoiceStore(settings.voices_dir).create(
            Voice(id="0" * 32, name="A", embedding_model="campplus")
        )
    limit = settings.api.max_upload_bytes
    boundary = "v0ices"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="name"\r\n\r\nX\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
        "Content-Type: audio/wav\r\n\r\n"
    ).encode()
    body = _Body(head, total=8 * limit)
    response = await client.post(
        path,
        content=body,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert response.status_code == 413, response.text
    assert response.json()["error"] == "payload_too_large"
    assert body.sent <= limit + 2 * CHUNK  # stopped reading at the limit
    staging = settings.queue_dir / "staging"
    assert list(staging.iterdir()) == []
    assert len(VoiceStore(settings.voices_dir).list()) == (0 if path == "/voices" else 1)


def _one_second_job(app: FastAPI, tmp_path: Path) -> str:
    """A completed job of 1 s of silence with one speaker, S0, speaking throughout."""
    call = tmp_path / "call.wav"
    call.write_bytes(silent_wav(1.0))
    turns = [Turn(start=0.0, end=1.0, speaker="S0")]
    annotation = Annotation(
        recording=RecordingInfo(duration=1.0, sample_rate=16000, channels=1),
        speakers=[Speaker(label="S0")],
        turns=turns,
        exclusive_turns=turns,
    )
    return _completed_job(app.state.queue, call, annotation)


@pytest.mark.parametrize("wait", ["true", "false"])
async def test_a_blank_speaker_name_is_refused_before_any_work(
    client: httpx.AsyncClient, app: FastAPI, tmp_path: Path, wait: str
) -> None:
    """``{"name": "   "}`` got a 202 with ``?wait=false`` and an enrollment that could only
    fail; both ways it is a 422 now, before a model or a light task."""
    job_id = _one_second_job(app, tmp_path)
    r = await client.post(
        f"/jobs/{job_id}/speakers/S0/enroll", params={"wait": wait}, json={"name": "   "}
    )
    assert r.status_code == 422, r.text
    assert r.json()["detail"] == "the voice needs a name"
    light = Path(app.state.settings.data_dir) / "light"
    assert not light.exists() or not any(p.is_file() for p in light.rglob("*.json"))


@pytest.mark.parametrize("wait", ["true", "false"])
async def test_a_name_the_user_already_has_is_a_409_before_any_work(
    client: httpx.AsyncClient, app: FastAPI, settings: Settings, tmp_path: Path, wait: str
) -> None:
    """A second voice called "Jackson" was enrolled beside the first (both matched him at
    1.0); enrolling, renaming or enrolling a job's speaker under a taken name is a 409 now,
    before a model or a light task."""
    from callannotate.security.atrest import vault_for

    store = VoiceStore(settings.voices_dir, vault_for(settings))  # the app encrypts them
    jackson = store.create(
        Voice(id="a" * 32, name="Jackson", embedding_model="campplus_cn_en_common")
    )
    george = store.create(
        Voice(id="b" * 32, name="George", embedding_model="campplus_cn_en_common")
    )
    conflict = (
        f"a voice named 'Jackson' already exists ({jackson.id}): add samples to it, or "
        "choose another name"
    )
    r = await client.post(
        "/voices",
        params={"wait": wait},
        data={"name": " jackson "},
        files=[("file", ("s.wav", silent_wav(), "audio/wav"))],
    )
    assert r.status_code == 409, r.text
    assert r.json()["detail"] == conflict

    r = await client.patch(f"/voices/{george.id}", json={"name": "JACKSON"})
    assert r.status_code == 409 and r.json()["detail"] == conflict
    r = await client.patch(f"/voices/{jackson.id}", json={"name": "JACKSON"})
    assert r.status_code == 200 and r.json()["name"] == "JACKSON"  # its own name

    job_id = _one_second_job(app, tmp_path)
    r = await client.post(
        f"/jobs/{job_id}/speakers/S0/enroll", params={"wait": wait}, json={"name": "george"}
    )
    assert r.status_code == 409, r.text
    assert r.json()["detail"].startswith("a voice named 'George' already exists")
    assert sorted(v.name for v in store.list()) == ["George", "JACKSON"]
    light = Path(app.state.settings.data_dir) / "light"
    assert not light.exists() or not any(p.is_file() for p in light.rglob("*.json"))
