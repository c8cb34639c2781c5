"""Speakers become people, through the real app with authentication on and a real Radicale:
voices linked to contacts (validated per owner), the call's numbers on jobs (form fields and
file name pattern), and a finished job's speakers resolved against the contacts."""

from __future__ import annotations

import math
import struct
import wave
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from carddav_servers import LOCAL_SERVERS, Radicale
from fastapi import FastAPI

from callannotate.api.app import create_app
from callannotate.config import ApiSettings, AuthSettings, CallSettings, ContactsSettings, Settings
from callannotate.contacts.service import ContactsService
from callannotate.db.engine import Database
from callannotate.db.testing import dispose_app_databases
from callannotate.jobs.filequeue import FileQueue
from callannotate.jobs.speaker_contacts import resolve_result
from callannotate.pipeline.types import Annotation, RecordingInfo, Speaker, Turn, VoiceMatch
from callannotate.security.atrest import vault_for
from callannotate.security.service import AuthService
from callannotate.voices.schemas import Voice
from callannotate.voices.store import VoiceStore, new_id

PASSWORD = "correct horse battery"
PATTERN = r"^\d{8}-\d{6}_(?P<caller>\+?\d+)_(?P<callee>\+?\d+)"
pytestmark = pytest.mark.auth


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        api=ApiSettings(embedded_workers=False),
        auth=AuthSettings(enabled=True, argon2_time_cost=1, argon2_memory_cost=1024),
        contacts=ContactsSettings(timeout_s=5, allowed_hosts=LOCAL_SERVERS),
        call=CallSettings(filename_pattern=PATTERN),
    )


@pytest.fixture
def users(settings: Settings) -> Iterator[dict[str, str]]:
    from callannotate.db.migrate import upgrade_database

    db = Database.from_settings(settings)
    upgrade_database(db)
    accounts = AuthService(settings, db)
    ids = {name: accounts.create_user(name, PASSWORD, "user").id for name in ("alice", "bob")}
    yield ids
    db.dispose()


@pytest.fixture
def app(settings: Settings, users: dict[str, str]) -> Iterator[FastAPI]:
    app = create_app(settings)
    yield app
    dispose_app_databases(app)


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c


async def _headers(client: httpx.AsyncClient, user: str) -> dict[str, str]:
    r = await client.post("/auth/token", data={"username": user, "password": PASSWORD})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


async def _connect(client: httpx.AsyncClient, headers: dict[str, str], server: Radicale) -> None:
    r = await client.post(
        "/contacts/accounts",
        headers=headers,
        json={"url": server.url, "username": server.username, "password": server.password},
    )
    assert r.status_code == 201, r.text


async def _contact(
    client: httpx.AsyncClient, headers: dict[str, str], fn: str, phone: str, org: str = ""
) -> str:
    r = await client.post(
        "/contacts", headers=headers, json={"fn": fn, "org": org, "phones": [{"value": phone}]}
    )
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def _wav(path: Path, seconds: float = 1.0, rate: int = 16000) -> Path:
    n = int(seconds * rate)
    frames = b"".join(
        struct.pack("<h", int(9000 * math.sin(2 * math.pi * 440 * i / rate))) for i in range(n)
    )
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(frames)
    return path


def _voice(settings: Settings, owner: str, name: str, contact_id: str | None = None) -> Voice:
    store = VoiceStore(settings.voices_dir, vault_for(settings))
    return store.create(
        Voice(id=new_id(), name=name, owner=owner, contact_id=contact_id, embedding_model="x")
    )


async def _upload(
    client: httpx.AsyncClient, headers: dict[str, str], audio: Path, name: str, **fields: str
) -> httpx.Response:
    return await client.post(
        "/jobs", headers=headers, files={"file": (name, audio.read_bytes())}, data=fields
    )


async def test_voice_contact_links_are_checked_per_owner(
    client: httpx.AsyncClient, settings: Settings, users: dict[str, str], radicale: Radicale
) -> None:
    alice = await _headers(client, "alice")
    bob = await _headers(client, "bob")
    await _connect(client, alice, radicale)
    ivan = await _contact(client, alice, "Ivan Petrov", "+7 916 123-45-67", "Acme")
    voice = _voice(settings, users["alice"], "Ivan")

    r = await client.patch(f"/voices/{voice.id}", headers=alice, json={"contact_id": ivan})
    assert r.status_code == 200, r.text
    assert r.json()["contact_id"] == ivan
    # unknown, malformed, or someone else's contact: the same 422
    for bad in ("f" * 32, "../etc", "x"):
        r = await client.patch(f"/voices/{voice.id}", headers=alice, json={"contact_id": bad})
        assert r.status_code == 422 and "not one of your contacts" in r.json()["detail"]
    # bob cannot see alice's voice, nor link his voice to alice's contact
    r = await client.patch(f"/voices/{voice.id}", headers=bob, json={"contact_id": None})
    assert r.status_code == 404
    bobs = _voice(settings, users["bob"], "Bob's voice")
    r = await client.patch(f"/voices/{bobs.id}", headers=bob, json={"contact_id": ivan})
    assert r.status_code == 422
    # rename keeps the link; null unlinks
    r = await client.patch(f"/voices/{voice.id}", headers=alice, json={"name": "Иван"})
    assert r.status_code == 200 and r.json()["name"] == "Иван" and r.json()["contact_id"] == ivan
    r = await client.patch(f"/voices/{voice.id}", headers=alice, json={"contact_id": None})
    assert r.status_code == 200 and r.json()["contact_id"] is None
    r = await client.patch(f"/voices/{voice.id}", headers=alice, json={"name": " "})
    assert r.status_code == 422


async def test_enroll_refuses_foreign_or_double_contacts(
    client: httpx.AsyncClient,
    app: FastAPI,
    settings: Settings,
    users: dict[str, str],
    radicale: Radicale,
    tmp_path: Path,
) -> None:
    alice = await _headers(client, "alice")
    bob = await _headers(client, "bob")
    await _connect(client, alice, radicale)
    ivan = await _contact(client, alice, "Ivan Petrov", "+79161234567")
    r = await _upload(client, bob, _wav(tmp_path / "a.wav"), "call.wav")
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    queue = FileQueue(settings.queue_dir, settings.queue)
    assert queue.claim("test") is not None
    done = Annotation(
        recording=RecordingInfo(duration=1.0, sample_rate=16000, channels=1),
        speakers=[Speaker(label="SPEAKER_00")],
        exclusive_turns=[Turn(start=0.0, end=1.0, speaker="SPEAKER_00")],
    )
    queue.complete(job_id, done.model_dump_json().encode())

    url = f"/jobs/{job_id}/speakers/SPEAKER_00/enroll"
    r = await client.post(url, headers=bob, json={"name": "Ivan", "contact_id": ivan})
    assert r.status_code == 422 and "not one of your contacts" in r.json()["detail"]
    r = await client.post(
        url,
        headers=bob,
        json={"name": "Ivan", "contact_id": ivan, "contact": {"phones": [{"value": "1"}]}},
    )
    assert r.status_code == 422 and "either contact_id" in r.json()["detail"]
    r = await client.post(url, headers=alice, json={"name": "Ivan", "contact_id": ivan})
    assert r.status_code == 404  # not alice's job


async def test_job_numbers_from_fields_and_file_name(
    client: httpx.AsyncClient, settings: Settings, radicale: Radicale, tmp_path: Path
) -> None:
    alice = await _headers(client, "alice")
    audio = _wav(tmp_path / "a.wav")

    r = await _upload(
        client, alice, audio, "call.wav", caller="8 (916) 123-45-67", callee="+7 495 123 45 67"
    )
    assert r.status_code == 202, r.text
    assert (r.json()["caller"], r.json()["callee"]) == ("+79161234567", "+74951234567")

    r = await _upload(client, alice, audio, "20261203-101500_+79161234567_84951234567.wav")
    assert r.status_code == 202, r.text
    job = r.json()
    assert (job["caller"], job["callee"]) == ("+79161234567", "+74951234567")
    r = await client.get(f"/jobs/{job['id']}", headers=alice)
    assert r.json()["caller"] == "+79161234567"

    # the form field wins over the file name
    r = await _upload(
        client,
        alice,
        audio,
        "20261203-101500_+79161234567_84951234567.wav",
        caller="+1 212 555 0100",
    )
    assert (r.json()["caller"], r.json()["callee"]) == ("+12125550100", "+74951234567")

    r = await _upload(client, alice, audio, "call.wav")
    assert (r.json()["caller"], r.json()["callee"]) == (None, None)

    r = await _upload(client, alice, audio, "call.wav", caller="ivan")
    assert r.status_code == 422 and "caller is not a phone number" in r.json()["detail"]
    r = await _upload(client, alice, audio, "call.wav", callee="1" * 80)
    assert r.status_code == 422


async def test_finished_job_speakers_get_contacts(
    client: httpx.AsyncClient,
    app: FastAPI,
    settings: Settings,
    users: dict[str, str],
    radicale: Radicale,
    tmp_path: Path,
) -> None:
    alice = await _headers(client, "alice")
    bob = await _headers(client, "bob")
    await _connect(client, alice, radicale)
    maria = await _contact(client, alice, "Мария Сидорова", "8 495 123-45-67", "Acme")
    ivan = await _contact(client, alice, "Ivan Petrov", "+7 916 123 45 67", "Petrov LLC")
    r = await _upload(
        client,
        alice,
        _wav(tmp_path / "a.wav"),
        "call.wav",
        caller="89161234567",
        callee="84951234567",
    )
    job_id = r.json()["id"]
    queue = FileQueue(settings.queue_dir, settings.queue)
    job = queue.claim("test")
    assert job is not None and job.id == job_id and job.caller == "+79161234567"
    result = Annotation(
        recording=RecordingInfo(duration=1.0, sample_rate=16000, channels=1),
        speakers=[
            Speaker(
                label="SPEAKER_00",
                voice=VoiceMatch(
                    voice_id="v1",
                    name="Maria",
                    contact_id=maria,
                    score=0.9,
                    threshold=0.5,
                    accepted=True,
                ),
            ),
            Speaker(label="SPEAKER_01"),
        ],
    )
    service = app.state.contacts_service
    assert isinstance(service, ContactsService)
    resolved = resolve_result(settings, job, result.model_dump_json().encode(), service)
    queue.complete(job_id, resolved)

    r = await client.get(f"/jobs/{job_id}/result", headers=alice)
    assert r.status_code == 200, r.text
    speakers = {s["label"]: s for s in r.json()["speakers"]}
    assert speakers["SPEAKER_00"]["contact"] == {
        "id": maria,
        "name": "Мария Сидорова",
        "organization": "Acme",
        "phone": "+74951234567",
    }
    assert speakers["SPEAKER_00"]["expected_contact"]["match"] == "confirmed"
    assert speakers["SPEAKER_00"]["expected_contact"]["role"] == "callee"
    expected = speakers["SPEAKER_01"]["expected_contact"]
    assert (expected["id"], expected["match"], expected["role"]) == (ivan, "unverified", "caller")
    r = await client.get(f"/jobs/{job_id}/report", headers=alice)
    assert r.status_code == 200, r.text  # the report viewer names the people
    assert "Мария Сидорова" in r.text and "Ivan Petrov (by number)" in r.text

    # the same numbers mean nothing in bob's (empty) contacts
    r = await _upload(client, bob, _wav(tmp_path / "b.wav"), "call.wav", caller="89161234567")
    bobs = queue.claim("test")
    assert bobs is not None and bobs.owner == users["bob"]
    out = Annotation.model_validate_json(
        resolve_result(settings, bobs, result.model_dump_json().encode(), service)
    )
    assert out.call[0].contacts == [] and out.speakers[0].contact is None
