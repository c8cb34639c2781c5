"""Audit records of API calls through the real app (ASGI transport, SQLite in the data folder),
and the admin-only ``GET /audit`` and ``GET /audit/export``."""

from __future__ import annotations

import csv
import io
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from callannotate.api.app import create_app
from callannotate.api.audit_middleware import describe_route
from callannotate.config import ApiSettings, AuthSettings, Settings
from callannotate.db.engine import Database
from callannotate.security.audit import AuditLog
from callannotate.security.audit_store import AuditFilter, AuditStore, verify_chain
from callannotate.security.service import AuthService

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "reports"))

from apiseed import tone_wav
from reports_sample import completed_job, russian_annotation

PASSWORD = "correct horse battery"
CLIENT_IP = "203.0.113.9"


def _settings(tmp_path: Path, *, auth: bool) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        api=ApiSettings(embedded_workers=False),
        auth=AuthSettings(enabled=auth, argon2_time_cost=1, argon2_memory_cost=1024),
    )


@pytest.fixture
def accounts(tmp_path: Path) -> Iterator[dict[str, str]]:
    """alice (user) and root (admin) on the app's database; their ids."""
    from callannotate.db.migrate import upgrade_database

    settings = _settings(tmp_path, auth=True)
    db = Database.from_settings(settings)
    upgrade_database(db)
    service = AuthService(settings, db)
    ids = {
        "alice": service.create_user("alice", PASSWORD, "user").id,
        "root": service.create_user("root", PASSWORD, "admin").id,
    }
    yield ids
    db.dispose()


async def _client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, client=(CLIENT_IP, 50000))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://test") as c,
    ):
        yield c


@pytest.fixture
async def secured(tmp_path: Path, accounts: dict[str, str]) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(_settings(tmp_path, auth=True))
    async for c in _client(app):
        c.app = app  # type: ignore[attr-defined]
        yield c


@pytest.fixture
async def local(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """Auth off: every call runs as the local admin."""
    app = create_app(_settings(tmp_path, auth=False))
    async for c in _client(app):
        c.app = app  # type: ignore[attr-defined]
        yield c


def _audit(client: httpx.AsyncClient) -> AuditLog:
    audit = client.app.state.audit  # type: ignore[attr-defined]
    assert isinstance(audit, AuditLog)
    audit.flush()
    return audit


async def _token(client: httpx.AsyncClient, user: str) -> dict[str, str]:
    r = await client.post("/auth/token", data={"username": user, "password": PASSWORD})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


async def _records(client: httpx.AsyncClient, admin: dict[str, str], **params: Any) -> Any:
    _audit(client)
    r = await client.get("/audit", params=params, headers=admin)
    assert r.status_code == 200, r.text
    return r.json()


async def test_calls_are_recorded_with_who_where_and_what(
    secured: httpx.AsyncClient, accounts: dict[str, str]
) -> None:
    alice = await _token(secured, "alice")
    root = await _token(secured, "root")
    headers = {**alice, "User-Agent": "audit-test/1.0", "X-Request-ID": "req-delete-1"}
    r = await secured.delete("/jobs/j-0123456789abcdef", headers=headers)
    assert r.status_code == 404
    assert r.headers["x-request-id"] == "req-delete-1"

    page = await _records(secured, root, action="job.delete")
    assert page["total"] == 1
    rec = page["items"][0]
    assert rec["principal_id"] == accounts["alice"]
    assert rec["client_ip"] == CLIENT_IP and rec["user_agent"] == "audit-test/1.0"
    assert rec["request_id"] == "req-delete-1"
    assert rec["verb"] == "delete" and rec["resource_type"] == "job"
    assert rec["resource_id"] == "j-0123456789abcdef"
    assert rec["outcome"] == "failed" and rec["status"] == 404
    assert rec["detail"]["route"] == "/jobs/{job_id}" and rec["detail"]["method"] == "DELETE"

    logins = await _records(secured, root, action="auth.login")
    assert {r["principal_id"] for r in logins["items"]} == {accounts["alice"], accounts["root"]}
    assert all(r["client_ip"] == CLIENT_IP and r["outcome"] == "ok" for r in logins["items"])
    # a login is recorded once, as auth.login, not again as a generic POST /auth/token
    assert (await _records(secured, root, action="auth.token"))["total"] == 0


async def test_auth_events_over_http(secured: httpx.AsyncClient, accounts: dict[str, str]) -> None:
    r = await secured.post("/auth/token", data={"username": "alice", "password": "nope-nope"})
    assert r.status_code == 400
    alice = await _token(secured, "alice")
    r = await secured.post("/auth/apikeys", json={"name": "ci"}, headers=alice)
    assert r.status_code == 201
    key_id = r.json()["id"]
    r = await secured.delete(f"/auth/apikeys/{key_id}", headers=alice)
    assert r.status_code == 204
    root = await _token(secured, "root")
    items = (await _records(secured, root, limit=50))["items"]
    seen = [(i["action"], i["outcome"], i["principal_id"]) for i in reversed(items)]
    alice_id = accounts["alice"]
    assert seen[2:6] == [  # after the fixture's two user.create
        ("auth.login", "failed", None),
        ("auth.login", "ok", alice_id),
        ("apikey.create", "ok", alice_id),
        ("apikey.revoke", "ok", alice_id),
    ]
    failed = next(i for i in items if i["action"] == "auth.login" and i["outcome"] == "failed")
    assert failed["detail"]["username"] == "alice" and failed["request_id"]


async def test_refused_calls_are_recorded(secured: httpx.AsyncClient) -> None:
    r = await secured.get("/jobs")  # no credential: 401, recorded although a read
    assert r.status_code == 401
    root = await _token(secured, "root")
    page = await _records(secured, root, outcome="denied")
    assert page["total"] == 1
    rec = page["items"][0]
    assert rec["action"] == "job.read" and rec["status"] == 401 and rec["principal_id"] is None


async def test_audit_is_admin_only(secured: httpx.AsyncClient) -> None:
    assert (await secured.get("/audit")).status_code == 401
    assert (await secured.get("/audit/export")).status_code == 401
    alice = await _token(secured, "alice")
    assert (await secured.get("/audit", headers=alice)).status_code == 403
    assert (await secured.get("/audit/export", headers=alice)).status_code == 403
    root = await _token(secured, "root")
    page = await _records(secured, root, action="audit.read", outcome="denied")
    assert page["total"] == 2  # alice's attempts on /audit are on the record too


async def test_filters_and_paging(secured: httpx.AsyncClient, accounts: dict[str, str]) -> None:
    alice = await _token(secured, "alice")
    for n in range(5):
        await secured.delete(f"/voices/v-{n}", headers=alice)
    root = await _token(secured, "root")
    first = await _records(secured, root, action="voice.delete", limit=2)
    assert first["total"] == 5 and len(first["items"]) == 2
    assert [i["resource_id"] for i in first["items"]] == ["v-4", "v-3"]  # newest first
    rest = await _records(secured, root, action="voice.delete", limit=2, offset=4)
    assert [i["resource_id"] for i in rest["items"]] == ["v-0"]
    assert (await _records(secured, root, action="voice.*"))["total"] == 5
    by_alice = await _records(secured, root, principal=accounts["alice"], resource_type="voice")
    assert by_alice["total"] == 5
    assert (await _records(secured, root, resource_id="v-2"))["total"] == 1
    newest = first["items"][0]["time"]
    assert (await _records(secured, root, action="voice.delete", since=newest))["total"] == 1
    assert (await _records(secured, root, action="voice.delete", until=newest))["total"] == 4
    r = await secured.get("/audit", params={"since": "2026-01-01T00:00:00"}, headers=root)
    assert r.status_code == 400 and "time zone" in r.json()["detail"]
    r = await secured.get("/audit", params={"outcome": "maybe"}, headers=root)
    assert r.status_code == 422


async def test_csv_export_neutralises_formulas(secured: httpx.AsyncClient) -> None:
    alice = await _token(secured, "alice")
    evil = '=HYPERLINK("http://evil.example","x")'
    await secured.delete("/jobs/j-0000000000000001", headers={**alice, "User-Agent": evil})
    root = await _token(secured, "root")
    _audit(secured)
    r = await secured.get("/audit/export", params={"action": "job.delete"}, headers=root)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/csv")
    assert "attachment" in r.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(r.content.decode("utf-8-sig"))))
    assert len(rows) == 1
    assert rows[0]["user_agent"] == "'" + evil  # a spreadsheet shows text, runs nothing
    assert rows[0]["action"] == "job.delete" and rows[0]["status"] == "404"
    assert len(rows[0]["hash"]) == 64 and rows[0]["detail"].startswith("{")


async def test_reads_of_audio_results_reports_exports(local: httpx.AsyncClient) -> None:
    queue = local.app.state.queue  # type: ignore[attr-defined]
    wav = tone_wav(Path(queue.staging_dir()).parent / "tone.wav")
    job_id = completed_job(queue, russian_annotation(), wav)
    assert (await local.get(f"/jobs/{job_id}")).status_code == 200  # status polls: not audited
    assert (await local.get(f"/jobs/{job_id}/result")).status_code == 200
    assert (await local.get(f"/jobs/{job_id}/report")).status_code == 200
    r = await local.get(f"/jobs/{job_id}/export", params={"format": "csv"})
    assert r.status_code == 200
    r = await local.get(f"/jobs/{job_id}/audio", headers={"Range": "bytes=0-99"})
    assert r.status_code == 206
    _audit(local)
    page = (await local.get("/audit", params={"resource_id": job_id})).json()
    by_action = {i["action"]: i for i in page["items"]}
    assert set(by_action) == {
        "job.read_result",
        "job.read_report",
        "job.read_export",
        "job.read_audio",
    }
    assert all(i["principal_id"] == "local" and i["outcome"] == "ok" for i in page["items"])
    assert by_action["job.read_export"]["detail"]["query"] == {"format": "csv"}
    assert by_action["job.read_audio"]["detail"]["range"] == "bytes=0-99"
    assert by_action["job.read_audio"]["status"] == 206


async def test_unmatched_mutations_and_secret_query_values(local: httpx.AsyncClient) -> None:
    r = await local.post("/no/such/route", params={"access_token": "s3cr3t", "q": "1"})
    assert r.status_code in (404, 405)
    _audit(local)
    page = (await local.get("/audit", params={"resource_type": "unknown"})).json()
    rec = page["items"][0]
    assert rec["action"] == "unknown.create" and rec["detail"]["path"] == "/no/such/route"
    assert rec["detail"]["query"] == {"access_token": "[redacted]", "q": "1"}


async def test_chain_of_api_records_verifies(local: httpx.AsyncClient) -> None:
    for n in range(10):
        await local.delete(f"/voices/v-{n}")
    audit = _audit(local)
    report = verify_chain(AuditStore(audit.db))
    assert report.ok and report.checked == 10


async def test_lifespan_end_stores_queued_records(tmp_path: Path) -> None:
    app = create_app(_settings(tmp_path, auth=False))
    async for c in _client(app):
        for n in range(20):
            await c.delete(f"/voices/v-{n}")
        audit = app.state.audit
    # the lifespan has ended: the writer was closed after storing everything
    assert app.state.audit is None
    db = Database.from_settings(_settings(tmp_path, auth=False))
    try:
        assert verify_chain(AuditStore(db)).checked == 20
    finally:
        db.dispose()
    assert audit.written == 20


@pytest.mark.parametrize(
    ("method", "template", "params", "expected"),
    [
        ("POST", "/jobs", {}, ("create", "job", None)),
        ("DELETE", "/jobs/{job_id}", {"job_id": "j-1"}, ("delete", "job", "j-1")),
        ("POST", "/jobs/{job_id}/retry", {"job_id": "j-1"}, ("retry", "job", "j-1")),
        ("GET", "/jobs/{job_id}/audio", {"job_id": "j-1"}, ("read_audio", "job", "j-1")),
        (
            "POST",
            "/jobs/{job_id}/speakers/{label}/enroll",
            {"job_id": "j-1", "label": "S0"},
            ("enroll", "speaker", "j-1/S0"),
        ),
        ("POST", "/voices/{voice_id}/samples", {"voice_id": "v"}, ("add_sample", "voice", "v")),
        (
            "DELETE",
            "/voices/{voice_id}/samples/{sample_id}",
            {"voice_id": "v", "sample_id": "s"},
            ("delete", "sample", "v/s"),
        ),
        ("PATCH", "/contacts/{contact_id}", {"contact_id": "c"}, ("update", "contact", "c")),
        ("GET", "/audit/export", {}, ("read_export", "audit", None)),
        ("PUT", None, {}, ("update", "unknown", None)),
        ("WEBSOCKET", "/stream", {}, ("create", "stream", None)),
        ("WEBSOCKET", "/calls/{call_id}/live", {"call_id": "c"}, ("connect_live", "call", "c")),
    ],
)
def test_actions_come_from_route_templates(
    method: str, template: str | None, params: dict[str, str], expected: tuple[str, ...]
) -> None:
    assert describe_route(method, template, params) == expected


def test_websocket_sessions_are_recorded(tmp_path: Path, accounts: dict[str, str]) -> None:
    from fastapi.testclient import TestClient
    from starlette.websockets import WebSocketDisconnect

    app = create_app(_settings(tmp_path, auth=True))
    with TestClient(app) as client:
        token = client.post("/auth/token", data={"username": "alice", "password": PASSWORD})
        access = token.json()["access_token"]
        with client.websocket_connect(f"/ws/c1?access_token={access}") as ws:
            ws.send_json({"type": "ping"})
            ws.receive_json()
        with (
            pytest.raises(WebSocketDisconnect),
            client.websocket_connect("/ws/c2?access_token=not-a-token") as ws,
        ):
            ws.receive_json()
        app.state.audit.flush()
        store = app.state.audit.store
        rows, _ = store.query(AuditFilter(action="events.subscribe"))
    by_id = {r.resource_id: r for r in rows}
    assert by_id["c1"].outcome == "ok" and by_id["c1"].principal_id == accounts["alice"]
    assert by_id["c1"].detail["accepted"] is True
    assert by_id["c2"].outcome == "denied" and by_id["c2"].detail["close_code"] == 1008
    assert by_id["c2"].principal_id is None
