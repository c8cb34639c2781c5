"""Every route of the OpenAPI document, and both WebSockets, with authentication on.

For each operation:

* anonymous, and a bad token -> 401 with ``WWW-Authenticate`` (WebSockets: close 1008);
* ``bob`` on ``alice``'s job / voice / key / contact -> 404 (existence does not leak), and
  nothing changed; on a collection he never sees her ids; on an admin route -> 403;
* ``root`` (admin) -> allowed (not 401/403/404);
* ``alice``'s read-only key on a route that changes something -> 403, her write-only key on
  a ``GET`` -> 403 (scopes are checked by the dependency a route takes).

Public routes are listed in :data:`PUBLIC`, admin routes in :data:`ADMIN_ONLY`. A route added
later without a check fails here; one with a new path parameter fails until a resource
factory for it is added to :data:`FACTORIES`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from apiseed import one_word_annotation, tone_wav
from authtesting import Accounts, auth_settings
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from callannotate.api.app import create_app
from callannotate.config import ApiSettings, Settings
from callannotate.events.session import CloseCode
from callannotate.jobs.events import JobEvent
from callannotate.jobs.filequeue import FileQueue
from callannotate.jobs.intake import new_job
from callannotate.jobs.light import LightKind, LightState, light_store
from callannotate.pipeline.types import (
    AnnotateOptions,
)
from callannotate.voices.routes import _store as voice_store
from callannotate.voices.schemas import Voice, VoiceSample

PUBLIC = {
    "GET /health",
    "GET /ready",
    "GET /info",
    "POST /auth/token",
    "POST /auth/refresh",
    "POST /auth/logout",
}
#: Admin routes: a user gets 403 (they name no resource of anyone's).
ADMIN_ONLY = {
    "GET /audit",
    "GET /audit/export",
    "GET /admin/workers",
    "GET /admin/queues",
    "GET /admin/breakers",
}
#: Routes any credential may call whatever its scopes (it asks who it is).
ANY_SCOPE = {"GET /auth/me"}
#: Routes other than GET that change nothing and so need only ``read`` (a signed read link).
READ_SCOPE = {"POST /jobs/{job_id}/report-link"}
#: Path prefix of resources private even from an admin (per-owner address books): an admin
#: naming another user's contact gets 404 like anyone else.
OWNER_ONLY_PREFIX = "/contacts"

HTTP_METHODS = ("get", "post", "put", "patch", "delete")


def _operations() -> dict[str, dict[str, Any]]:
    doc = create_app(Settings(api=ApiSettings(embedded_workers=False))).openapi()
    return {
        f"{method.upper()} {path}": {"path": path, "method": method.upper(), **item[method]}
        for path, item in doc["paths"].items()
        for method in item
        if method in HTTP_METHODS
    }


OPERATIONS = _operations()
DOC_COMPONENTS: dict[str, Any] = create_app(
    Settings(api=ApiSettings(embedded_workers=False))
).openapi()["components"]["schemas"]


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def accounts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Accounts]:
    root = tmp_path_factory.mktemp("isolation")
    accounts = Accounts.create(auth_settings(root / "data", root / "store.db"))
    yield accounts
    accounts.service.db.dispose()


@pytest.fixture
def settings(tmp_path: Path, accounts: Accounts) -> Settings:
    database = accounts.service.settings.database.url.removeprefix("sqlite:///")
    return auth_settings(tmp_path / "data", Path(database))


@pytest.fixture
def app(settings: Settings, accounts: Accounts) -> FastAPI:
    return accounts.attach(create_app(settings))


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as c:  # the lifespan runs: event service, auth start-up
        yield c


def completed_job(queue: FileQueue, settings: Settings, owner: str) -> str:
    staged = queue.staging_dir() / f"{uuid.uuid4().hex}.part"
    tone_wav(staged)
    job = new_job(
        queue,
        settings,
        staged_path=staged,
        filename="call.wav",
        options=AnnotateOptions(),
        owner=owner,
    )
    claimed = queue.claim("isolation")
    assert claimed is not None and claimed.id == job.id
    queue.complete(job.id, one_word_annotation().model_dump_json().encode())
    return job.id


def enrolled_voice(settings: Settings, owner: str) -> Voice:
    sample = VoiceSample(
        id=uuid.uuid4().hex,
        source="sample.wav",
        duration=2.0,
        speech_duration=1.5,
        embedding=[0.1] * 192,
    )
    voice = Voice(
        id=uuid.uuid4().hex,
        name="Ivan",
        owner=owner,
        embedding_model="test",
        samples=[sample],
    )
    return voice_store(settings).create(voice)


def _contact_rows(app: FastAPI, owner: str) -> dict[str, str]:
    """An account, book and contact of ``owner`` in the store (no CardDAV server needed)."""
    from callannotate.contacts.routes import _service_for
    from callannotate.db.contact_models import Contact, ContactAccount, ContactBook

    service = _service_for(_AppConn(app))
    account_id, book_id, contact_id, other_id = (uuid.uuid4().hex for _ in range(4))
    with service.db.session() as s:
        s.add(
            ContactAccount(
                id=account_id,
                owner=owner,
                url="https://dav.example.com/",
                username="alice",
                password_sealed=b"x",
            )
        )
        s.flush()
        s.add(ContactBook(id=book_id, account_id=account_id, owner=owner, url="/ab/"))
        s.flush()
        for row_id in (contact_id, other_id):
            s.add(
                Contact(
                    id=row_id,
                    owner=owner,
                    book_id=book_id,
                    uid=uuid.uuid4().hex,
                    vcard="BEGIN:VCARD\r\nVERSION:3.0\r\nFN:Ivan\r\nEND:VCARD\r\n",
                    data={"fn": "Ivan"},
                    fn="Ivan",
                )
            )
    return {"account_id": account_id, "contact_id": contact_id, "other_contact_id": other_id}


class _AppConn:
    def __init__(self, app: FastAPI) -> None:
        self.app = app


Factory = Callable[[FastAPI, Settings, Accounts], dict[str, str]]


def _job_factory(app: FastAPI, settings: Settings, accounts: Accounts) -> dict[str, str]:
    return {
        "job_id": completed_job(app.state.queue, settings, accounts.ids["alice"]),
        "label": "SPEAKER_00",
    }


def _voice_factory(app: FastAPI, settings: Settings, accounts: Accounts) -> dict[str, str]:
    voice = enrolled_voice(settings, accounts.ids["alice"])
    return {"voice_id": voice.id, "sample_id": voice.samples[0].id}


def _enrollment_factory(app: FastAPI, settings: Settings, accounts: Accounts) -> dict[str, str]:
    """An asynchronous enrollment of alice's (already ended: no lane picks it up)."""
    store = light_store(settings.data_dir)
    task = store.create(LightKind.ENROLL, {"name": "Ivan"}, owner=accounts.ids["alice"])
    claim = store.claim(task.id, "test")
    assert claim is not None
    claim.fail("sample is silent", "unprocessable", 422)
    return {"enrollment_id": task.id}


def _export_factory(app: FastAPI, settings: Settings, accounts: Accounts) -> dict[str, str]:
    """A completed PDF export of one of alice's jobs (rendered here, as the lane would)."""
    from callannotate.jobs.light_run import run_claimed
    from callannotate.reports.export_task import request_export
    from callannotate.reports.exporters import get_format

    queue: FileQueue = app.state.queue
    job_id = completed_job(queue, settings, accounts.ids["alice"])
    store = light_store(settings.data_dir)
    task, _ = request_export(queue, store, queue.get(job_id), get_format("pdf"))
    claim = store.claim(task.id, "test")
    if claim is not None:  # else the app's light lane took it: wait for it below
        run_claimed(settings, claim)
    deadline = time.monotonic() + 30
    while store.get(task.id).state != LightState.COMPLETED:
        assert time.monotonic() < deadline, "export never completed"
        time.sleep(0.05)
    return {"job_id": job_id, "export_id": task.id}


def _key_factory(app: FastAPI, settings: Settings, accounts: Accounts) -> dict[str, str]:
    return {"key_id": accounts.api_key("alice", "read")[0]}


def _contacts_factory(app: FastAPI, settings: Settings, accounts: Accounts) -> dict[str, str]:
    return _contact_rows(app, accounts.ids["alice"])


#: Path parameter -> what makes alice's resource for it.
FACTORIES: dict[str, Factory] = {
    "job_id": _job_factory,
    "label": _job_factory,
    "voice_id": _voice_factory,
    "sample_id": _voice_factory,
    "enrollment_id": _enrollment_factory,
    "export_id": _export_factory,
    "key_id": _key_factory,
    "contact_id": _contacts_factory,
    "account_id": _contacts_factory,
}

#: JSON bodies that get past validation, so the ownership check is what answers.
BODIES: dict[str, Any] = {
    "POST /jobs/{job_id}/speakers/{label}/enroll": {"name": "Ivan", "voice_id": "0" * 32},
}
#: Operations naming alice's resources in the body: the parameters they need, and the body.
RESOURCE_BODIES: dict[str, tuple[tuple[str, ...], Callable[[dict[str, str]], Any]]] = {
    "POST /contacts/merge": (
        ("contact_id",),
        lambda p: {"ids": [p["contact_id"], p["other_contact_id"]]},
    ),
}

#: Reads that show that alice's resource is still there after others tried to change it.
STILL_THERE = {"job_id": "/jobs/{job_id}", "voice_id": "/voices/{voice_id}"}


# ----------------------------------------------------------------------------- requests


def _schema(ref_or_schema: dict[str, Any]) -> dict[str, Any]:
    ref = ref_or_schema.get("$ref")
    if ref:
        return DOC_COMPONENTS[ref.rsplit("/", 1)[-1]]
    return ref_or_schema


def _example(schema: dict[str, Any]) -> Any:
    """A minimal value of ``schema``: its required fields only."""
    schema = _schema(schema)
    for variant in schema.get("anyOf", []) + schema.get("oneOf", []):
        if _schema(variant).get("type") != "null":
            return _example(variant)
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type")
    if kind == "object" or "properties" in schema:
        props = schema.get("properties", {})
        return {name: _example(props[name]) for name in schema.get("required", [])}
    if kind == "array":
        return [_example(schema.get("items", {})) for _ in range(schema.get("minItems", 0))]
    if kind == "integer":
        return max(1, int(schema.get("minimum", 1)))
    if kind == "number":
        return 1.0
    if kind == "boolean":
        return False
    return "x" * max(1, int(schema.get("minLength", 1)))


def request_for(key: str, params: dict[str, str]) -> tuple[str, str, dict[str, Any]]:
    op = OPERATIONS[key]
    names = [p["name"] for p in op.get("parameters", []) if p["in"] == "path"]
    missing = [n for n in names if n not in params]
    assert not missing, (
        f"{key}: no resource factory for path parameter(s) {missing}; add one to FACTORIES in "
        "tests/api/test_isolation.py"
    )
    url = op["path"].format(**{n: params[n] for n in names})
    query = {
        p["name"]: _example(p.get("schema", {}))
        for p in op.get("parameters", [])
        if p["in"] == "query" and p.get("required")
    }
    kwargs: dict[str, Any] = {"params": query}
    content = op.get("requestBody", {}).get("content", {})
    if key in RESOURCE_BODIES:
        kwargs["json"] = RESOURCE_BODIES[key][1](params)
    elif key in BODIES:
        kwargs["json"] = BODIES[key]
    elif "application/json" in content:
        kwargs["json"] = _example(content["application/json"]["schema"])
    elif "application/x-www-form-urlencoded" in content:
        kwargs["data"] = _example(content["application/x-www-form-urlencoded"]["schema"])
    return op["method"], url, kwargs


def _resources(key: str, app: FastAPI, settings: Settings, accounts: Accounts) -> dict[str, str]:
    params: dict[str, str] = {}
    op = OPERATIONS[key]
    names = [p["name"] for p in op.get("parameters", []) if p["in"] == "path"]
    names += RESOURCE_BODIES.get(key, ((), None))[0]
    for name in names:
        if name not in params and name in FACTORIES:
            params.update(FACTORIES[name](app, settings, accounts))
    return params


def _call(client: TestClient, key: str, params: dict[str, str], headers: dict[str, str]) -> Any:
    method, url, kwargs = request_for(key, params)
    return client.request(method, url, headers=headers, **kwargs)


PROTECTED = sorted(k for k in OPERATIONS if k not in PUBLIC)


WEBSOCKETS = {"/ws/{client_id}", "/stream"}


def test_the_walk_covers_the_document() -> None:
    assert set(OPERATIONS) >= PUBLIC, "a public route listed here no longer exists"
    assert set(OPERATIONS) >= ADMIN_ONLY
    assert len(PROTECTED) >= 20
    # The document says the same: security on every guarded operation, none on public ones.
    undeclared = [k for k in PROTECTED if "security" not in OPERATIONS[k]]
    assert not undeclared, undeclared
    assert not [k for k in PUBLIC if "security" in OPERATIONS[k]]


def test_every_websocket_is_walked() -> None:
    from fastapi.routing import iter_route_contexts
    from starlette.routing import WebSocketRoute

    app = create_app(Settings(api=ApiSettings(embedded_workers=False)))
    sockets = {
        c.path_format
        for c in iter_route_contexts(app.routes)
        if isinstance(c.original_route, WebSocketRoute)
        or type(c.original_route).__name__ == "APIWebSocketRoute"
    }
    assert sockets == WEBSOCKETS, "a new WebSocket needs its cases in this file"


@pytest.mark.parametrize("key", PROTECTED)
def test_route_checks_identity_scope_and_owner(
    key: str, app: FastAPI, client: TestClient, settings: Settings, accounts: Accounts
) -> None:
    params = _resources(key, app, settings, accounts)
    path = OPERATIONS[key]["path"]
    method = OPERATIONS[key]["method"]

    for headers in ({}, {"Authorization": "Bearer not-a-token"}, {"X-API-Key": "ca_0_bad"}):
        r = _call(client, key, params, headers)
        assert r.status_code == 401, (key, headers, r.status_code, r.text)
        assert r.headers["www-authenticate"].startswith("Bearer"), key
        assert r.json()["error"] == "unauthorized"

    bob = _call(client, key, params, accounts.headers("bob"))
    if key in ADMIN_ONLY:
        assert bob.status_code == 403, (key, bob.status_code, bob.text)
    elif params:
        assert bob.status_code == 404, (key, bob.status_code, bob.text)
    else:
        assert bob.status_code not in (401, 403, 404), (key, bob.status_code, bob.text)
        if method == "GET":
            leaked = [v for v in params.values() if v in bob.text]
            assert not leaked, key

    _, read_only = accounts.api_key("alice", "read")
    _, write_only = accounts.api_key("alice", "write")
    if key not in ANY_SCOPE:
        wrong = write_only if method == "GET" or key in READ_SCOPE else read_only
        r = _call(client, key, params, {"X-API-Key": wrong})
        assert r.status_code == 403, (key, r.status_code, r.text)
        assert r.json()["error"] == "forbidden"

    for name, url in STILL_THERE.items():  # nobody above changed alice's resources
        if name in params:
            seen = client.get(url.format(**params), headers=accounts.headers("alice"))
            assert seen.status_code == 200, (key, url, seen.text)

    admin = _call(client, key, params, accounts.headers("root"))
    if params and path.startswith(OWNER_ONLY_PREFIX):
        assert admin.status_code == 404, (key, admin.status_code, admin.text)
    else:
        assert admin.status_code not in (401, 403, 404), (key, admin.status_code, admin.text)
    if key == "POST /auth/logout-all":  # bob and root signed themselves out everywhere
        accounts.log_in_again()


@pytest.mark.parametrize("key", sorted(PUBLIC))
def test_public_routes_answer_anonymous_callers(key: str, client: TestClient) -> None:
    method, url, kwargs = request_for(key, {})
    r = client.request(method, url, **kwargs)
    assert r.status_code != 401 or key.startswith("POST /auth/token"), (key, r.text)


def test_public_routes_show_no_internals(client: TestClient, settings: Settings) -> None:
    info = client.get("/info")
    assert info.status_code == 200
    body = info.json()
    assert body["workers"] is None and body["queue"] is None and body["models_config"] is None
    assert all(m["processor"] is None and m["params"] == {} for m in body["models"])
    assert str(settings.data_dir) not in info.text and "/" not in str(
        [m["model"] for m in body["models"]]
    )
    ready = client.get("/ready")
    assert str(settings.data_dir) not in ready.text
    assert client.get("/health").json() == {"status": "ok"}


def test_admin_gets_the_details_of_info(client: TestClient, accounts: Accounts) -> None:
    body = client.get("/info", headers=accounts.headers("root")).json()
    assert body["models_config"] and body["queue"] is not None and body["workers"] == []
    mine = client.get("/info", headers=accounts.headers("alice")).json()
    assert mine["workers"] is None


def test_lists_are_per_owner_and_admins_see_all(
    app: FastAPI, client: TestClient, settings: Settings, accounts: Accounts
) -> None:
    alice_job = completed_job(app.state.queue, settings, accounts.ids["alice"])
    bob_job = completed_job(app.state.queue, settings, accounts.ids["bob"])
    alice_voice = enrolled_voice(settings, accounts.ids["alice"]).id
    legacy_voice = enrolled_voice(settings, "local").id  # stored before voices had owners

    def ids(who: str, url: str) -> set[str]:
        r = client.get(url, headers=accounts.headers(who))
        assert r.status_code == 200
        body = r.json()
        items = body["items"] if isinstance(body, dict) else body
        return {item["id"] for item in items}

    assert ids("alice", "/jobs") == {alice_job}
    assert ids("bob", "/jobs") == {bob_job}
    assert ids("root", "/jobs") == {alice_job, bob_job}
    assert ids("bob", f"/jobs?owner={accounts.ids['alice']}") == {bob_job}  # owner: admins only
    assert ids("alice", "/voices") == {alice_voice}
    assert ids("bob", "/voices") == set()
    assert ids("root", "/voices") == {alice_voice, legacy_voice}


def test_enrolling_into_someone_elses_voice_is_404(
    app: FastAPI, client: TestClient, settings: Settings, accounts: Accounts
) -> None:
    bob_job = completed_job(app.state.queue, settings, accounts.ids["bob"])
    alice_voice = enrolled_voice(settings, accounts.ids["alice"]).id
    r = client.post(
        f"/jobs/{bob_job}/speakers/SPEAKER_00/enroll",
        json={"voice_id": alice_voice},
        headers=accounts.headers("bob"),
    )
    assert r.status_code == 404 and alice_voice in r.json()["detail"]


def test_uploads_and_voices_belong_to_the_caller(
    client: TestClient, settings: Settings, tmp_path: Path, accounts: Accounts
) -> None:
    with open(tone_wav(tmp_path / "call.wav"), "rb") as fh:
        r = client.post(
            "/jobs", files={"file": ("call.wav", fh, "audio/wav")}, headers=accounts.headers("bob")
        )
    assert r.status_code == 202, r.text
    assert r.json()["owner"] == accounts.ids["bob"]


# ----------------------------------------------------------------------------- WebSockets


def _closed(ws: Any) -> WebSocketDisconnect:
    with pytest.raises(WebSocketDisconnect) as caught:
        for _ in range(20):
            ws.receive_json()
    return caught.value


@pytest.mark.parametrize("url", ["/ws/dash-1", "/stream"])
@pytest.mark.parametrize("how", ["none", "bad-header", "bad-protocol", "bad-query", "expired"])
def test_websockets_refuse_missing_and_bad_tokens(
    url: str, how: str, client: TestClient, accounts: Accounts
) -> None:
    headers: dict[str, str] = {}
    subprotocols: list[str] | None = None
    target = url
    if how == "bad-header":
        headers = {"Authorization": "Bearer nope"}
    elif how == "bad-protocol":
        subprotocols = ["bearer", "nope"]
    elif how == "bad-query":
        target = f"{url}?access_token=nope"
    elif how == "expired":
        headers = {"Authorization": f"Bearer {accounts.short_token('alice', -60)}"}
    with client.websocket_connect(target, headers=headers, subprotocols=subprotocols) as ws:
        closed = _closed(ws)
    assert closed.code == CloseCode.POLICY_VIOLATION
    assert closed.reason, "a refused socket says why"


def test_ws_token_in_subprotocol_or_query(client: TestClient, accounts: Accounts) -> None:
    token = accounts.tokens["alice"]
    with client.websocket_connect("/ws/a-1", subprotocols=["bearer", token]) as ws:
        assert ws.accepted_subprotocol == "bearer"
        welcome = ws.receive_json()
        assert welcome["type"] == "welcome" and welcome["token_expires_at"]
    with client.websocket_connect(f"/ws/a-2?access_token={token}") as ws:
        assert ws.receive_json()["type"] == "welcome"
    _, key = accounts.api_key("alice", "read")
    with client.websocket_connect("/ws/a-3", headers={"X-API-Key": key}) as ws:
        assert ws.receive_json()["token_expires_at"] is None  # keys do not expire


def test_ws_scopes(client: TestClient, accounts: Accounts) -> None:
    _, write_only = accounts.api_key("alice", "write")
    with client.websocket_connect("/ws/a-1", headers={"X-API-Key": write_only}) as ws:
        closed = _closed(ws)
    assert closed.code == 1008 and "read" in closed.reason
    _, read_only = accounts.api_key("alice", "read")
    with client.websocket_connect("/stream", headers={"X-API-Key": read_only}) as ws:
        closed = _closed(ws)
    assert closed.code == 1008 and "write" in closed.reason


def test_stream_lets_an_allowed_caller_in(client: TestClient, accounts: Accounts) -> None:
    """Past authentication the stream reads its config (a bad one gets an error frame)."""
    with client.websocket_connect("/stream", headers=accounts.headers("root")) as ws:
        ws.send_json({"type": "config", "format": "pcm_s16le", "sample_rate": 8000})
        frame = ws.receive_json()
        assert frame == {
            "type": "error",
            "error": "bad_request",
            "detail": "pcm_s16le streams must be 16 kHz mono",
        }


def _publish(app: FastAPI, job_id: str, owner: str) -> None:
    app.state.events.on_job_event(
        JobEvent(type="job.started", job_id=job_id, owner=owner, data={"state": "running"})
    )


def _until(ws: Any, kind: str) -> list[dict[str, Any]]:
    frames = []
    for _ in range(50):
        frame = ws.receive_json()
        frames.append(frame)
        if frame["type"] == kind:
            return frames
    raise AssertionError(f"no {kind} in {frames}")


def test_ws_sessions_only_get_events_of_visible_jobs(
    app: FastAPI, client: TestClient, settings: Settings, accounts: Accounts
) -> None:
    alice_job = completed_job(app.state.queue, settings, accounts.ids["alice"])
    bob_job = completed_job(app.state.queue, settings, accounts.ids["bob"])
    bob = client.websocket_connect("/ws/b-1", headers=accounts.headers("bob"))
    admin = client.websocket_connect("/ws/r-1", headers=accounts.headers("root"))
    with bob as b, admin as a:
        b.receive_json()
        a.receive_json()
        b.send_json({"type": "subscribe", "jobs": [alice_job]})
        frames = _until(b, "subscribed")
        assert frames[0] == {
            "type": "error",
            "code": "unknown_job",  # the same answer as for a job that does not exist
            "detail": f"no job {alice_job!r}",
            "job_id": alice_job,
        }
        assert frames[-1]["jobs"] == []
        b.send_json({"type": "subscribe", "all": True})
        _until(b, "subscribed")
        a.send_json({"type": "subscribe", "all": True})
        _until(a, "subscribed")
        _publish(app, alice_job, accounts.ids["alice"])
        _publish(app, bob_job, accounts.ids["bob"])
        got = _until(b, "job.started")
        assert got[-1]["job_id"] == bob_job  # alice's event, published first, never came
        seen = {_until(a, "job.started")[-1]["job_id"] for _ in range(2)}
        assert seen == {alice_job, bob_job}


def test_ws_token_expiry_closes_with_4401(client: TestClient, accounts: Accounts) -> None:
    # 4 s (not 2): issue times are whole seconds, and a busy machine must still get to the
    # session's first expiry check before the token runs out.
    token = accounts.short_token("alice", 4)
    with client.websocket_connect("/ws/a-1", subprotocols=["bearer", token]) as ws:
        assert ws.receive_json()["type"] == "welcome"
        assert ws.receive_json()["type"] == "auth.expiring"
        closed = _closed(ws)
    assert closed.code == CloseCode.TOKEN_EXPIRED == 4401
    assert "expired" in closed.reason


def test_ws_auth_message_renews_the_session(client: TestClient, accounts: Accounts) -> None:
    token = accounts.short_token("alice", 4)
    with client.websocket_connect("/ws/a-1", subprotocols=["bearer", token]) as ws:
        ws.receive_json()
        ws.send_json({"type": "auth", "token": accounts.tokens["alice"]})
        renewed = _until(ws, "authenticated")[-1]
        assert renewed["expires_at"] > time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
        time.sleep(5.0)  # past the first token's expiry
        ws.send_json({"type": "ping", "id": 1})
        assert _until(ws, "pong")[-1]["id"] == 1


def test_ws_auth_message_with_another_users_token_closes(
    client: TestClient, accounts: Accounts
) -> None:
    with client.websocket_connect("/ws/a-1", headers=accounts.headers("alice")) as ws:
        ws.receive_json()
        ws.send_json({"type": "auth", "token": accounts.tokens["bob"]})
        error = _until(ws, "error")[-1]
        assert error["code"] == "invalid_token"
        closed = _closed(ws)
    assert closed.code == 1008


@pytest.mark.models
def test_stream_token_expiry_closes_with_4401_unless_renewed(
    client: TestClient, accounts: Accounts
) -> None:
    """A live stream (real tiny.en model) outliving its token: renewed once, then closed."""
    config = {"type": "config", "format": "pcm_s16le", "language": "en"}
    with client.websocket_connect("/stream", headers=accounts.headers("alice")) as ws:
        ws.send_json(config)  # loads the model, so the short token below is not spent on it
        assert ws.receive_json()["type"] == "ready"
        ws.send_json({"type": "end"})
        assert _until(ws, "final")[-1]["type"] == "final"
    token = accounts.short_token("alice", 3)
    with client.websocket_connect("/stream", subprotocols=["bearer", token]) as ws:
        assert ws.accepted_subprotocol == "bearer"
        ws.send_json(config)
        assert ws.receive_json()["type"] == "ready"
        ws.send_json({"type": "auth", "token": accounts.short_token("alice", 6)})
        renewed = ws.receive_json()
        assert renewed["type"] == "authenticated", renewed
        ws.send_bytes(b"\0\0" * 1600)  # 0.1 s of silence: still streaming after 3 s
        frames = []
        with pytest.raises(WebSocketDisconnect) as caught:
            while True:
                frames.append(ws.receive_json())
    assert caught.value.code == 4401
    assert frames[-1]["error"] == "token_expired"
