"""``/auth``: password, refresh and client-credentials grants, logout, API keys, throttling,
through the real app on a temporary data folder (SQLite)."""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from callannotate.api.app import create_app
from callannotate.config import ApiSettings, AuthSettings, Settings
from callannotate.db.engine import Database
from callannotate.security.service import AuthService

PASSWORD = "correct horse battery"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        api=ApiSettings(embedded_workers=False),
        auth=AuthSettings(
            argon2_time_cost=1, argon2_memory_cost=1024, login_max_failures_per_account=3
        ),
    )


@pytest.fixture
def accounts(settings: Settings) -> Iterator[AuthService]:
    """A service on the app's database (created first: the CLI's view of the same data)."""
    from callannotate.db.migrate import upgrade_database

    db = Database.from_settings(settings)
    upgrade_database(db)
    service = AuthService(settings, db)
    service.create_user("alice", PASSWORD, "user")
    service.create_user("bob", PASSWORD, "user")
    service.create_user("root", PASSWORD, "admin")
    yield service
    db.dispose()


@pytest.fixture
def app(settings: Settings, accounts: AuthService) -> Iterator[FastAPI]:
    app = create_app(settings)
    yield app
    service = getattr(app.state, "auth_service", None)
    if service is not None:
        service.db.dispose()


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c


async def _login(client: httpx.AsyncClient, user: str, **extra: str) -> dict[str, str]:
    r = await client.post("/auth/token", data={"username": user, "password": PASSWORD, **extra})
    assert r.status_code == 200, r.text
    body: dict[str, str] = r.json()
    return body


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_password_flow(client: httpx.AsyncClient) -> None:
    r = await client.post("/auth/token", data={"username": "Alice", "password": PASSWORD})
    assert r.status_code == 200
    assert r.headers["cache-control"] == "no-store"
    body = r.json()
    assert body["token_type"] == "bearer" and body["expires_in"] == 900
    assert body["scope"] == "read write" and body["refresh_token"].startswith("rt_")
    me = await client.get("/auth/me", headers=_bearer(body["access_token"]))
    assert me.status_code == 200
    assert me.json()["name"] == "alice" and me.json()["auth_method"] == "password"


async def test_same_answer_for_unknown_user_and_wrong_password(client: httpx.AsyncClient) -> None:
    wrong = await client.post("/auth/token", data={"username": "alice", "password": "nope-nope"})
    unknown = await client.post("/auth/token", data={"username": "zed", "password": "nope-nope"})
    assert wrong.status_code == unknown.status_code == 400
    strip = lambda r: {k: v for k, v in r.json().items() if k != "request_id"}  # noqa: E731
    assert (
        strip(wrong)
        == strip(unknown)
        == {
            "error": "invalid_grant",
            "detail": "invalid user name or password",
        }
    )


async def test_login_failures_are_throttled(client: httpx.AsyncClient) -> None:
    for _ in range(3):
        r = await client.post("/auth/token", data={"username": "bob", "password": "bad-bad-bad"})
        assert r.status_code == 400
    r = await client.post("/auth/token", data={"username": "bob", "password": PASSWORD})
    assert r.status_code == 429
    assert r.json()["error"] == "too_many_requests" and int(r.headers["Retry-After"]) > 0
    assert (
        await client.post("/auth/token", data={"username": "alice", "password": PASSWORD})
    ).status_code == 200


async def test_refresh_rotation_and_reuse(client: httpx.AsyncClient) -> None:
    first = await _login(client, "alice")
    r = await client.post("/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    second = r.json()
    assert second["refresh_token"] != first["refresh_token"]
    r = await client.post(
        "/auth/token",
        data={"grant_type": "refresh_token", "refresh_token": second["refresh_token"]},
    )
    assert r.status_code == 200
    third = r.json()
    reuse = await client.post("/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert reuse.status_code == 400 and reuse.json()["error"] == "invalid_grant"
    killed = await client.post("/auth/refresh", json={"refresh_token": third["refresh_token"]})
    assert killed.status_code == 400


async def test_logout(client: httpx.AsyncClient) -> None:
    tokens = await _login(client, "alice")
    r = await client.post("/auth/logout", json={"refresh_token": tokens["refresh_token"]})
    assert r.status_code == 204
    r = await client.post("/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert r.status_code == 400
    unknown = await client.post("/auth/logout", json={"refresh_token": "rt_whatever"})
    assert unknown.status_code == 204  # says nothing about what exists


async def test_logout_all_ends_every_session_of_the_caller_only(
    client: httpx.AsyncClient, accounts: AuthService
) -> None:
    """A user who lost a laptop could only end the one login whose refresh token they held;
    ``/auth/logout-all`` ends all of them, access tokens already issued included."""
    alice = accounts.store.user_by_name("alice")
    assert alice is not None
    scopes = frozenset({"read", "write"})
    laptop = accounts.codec.encode(alice.id, scopes, now=time.time() - 2)[0]
    phone = await _login(client, "alice")
    bob = await _login(client, "bob")
    _, key = accounts.create_api_key(alice.id, "ci", None)

    assert (await client.post("/auth/logout-all")).status_code == 401
    r = await client.post("/auth/logout-all", headers=_bearer(laptop))
    assert r.status_code == 204, r.text
    assert (await client.get("/auth/me", headers=_bearer(laptop))).status_code == 401
    r = await client.post("/auth/refresh", json={"refresh_token": phone["refresh_token"]})
    assert r.status_code == 400
    assert (await client.get("/auth/me", headers=_bearer(bob["access_token"]))).status_code == 200
    assert (await client.get("/auth/me", headers={"X-API-Key": key})).status_code == 200
    again = await _login(client, "alice")
    assert (await client.get("/auth/me", headers=_bearer(again["access_token"]))).status_code == 200


async def test_client_credentials(client: httpx.AsyncClient, accounts: AuthService) -> None:
    row, secret = accounts.create_client("alice", "crm", "read")
    r = await client.post(
        "/auth/token",
        data={"grant_type": "client_credentials", "client_id": row.id, "client_secret": secret},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["scope"] == "read" and "refresh_token" not in body
    me = (await client.get("/auth/me", headers=_bearer(body["access_token"]))).json()
    assert me["auth_method"] == "client" and me["name"] == "alice" and me["scopes"] == ["read"]

    basic = base64.b64encode(f"{row.id}:{secret}".encode()).decode()
    r = await client.post(
        "/auth/token",
        data={"grant_type": "client_credentials", "scope": "read"},
        headers={"Authorization": f"Basic {basic}"},
    )
    assert r.status_code == 200
    bad = await client.post(
        "/auth/token",
        data={"grant_type": "client_credentials", "client_id": row.id, "client_secret": "x"},
    )
    assert bad.status_code == 401 and bad.json()["error"] == "invalid_client"
    assert "WWW-Authenticate" in bad.headers
    too_much = await client.post(
        "/auth/token",
        data={
            "grant_type": "client_credentials",
            "client_id": row.id,
            "client_secret": secret,
            "scope": "write",
        },
    )
    assert too_much.status_code == 400 and too_much.json()["error"] == "invalid_scope"


async def test_unsupported_grant_and_missing_fields(client: httpx.AsyncClient) -> None:
    r = await client.post("/auth/token", data={"grant_type": "implicit"})
    assert r.status_code == 400 and r.json()["error"] == "unsupported_grant_type"
    r = await client.post("/auth/token", data={"username": "alice"})
    assert r.status_code == 400


async def test_api_key_create_use_revoke(client: httpx.AsyncClient) -> None:
    access = (await _login(client, "alice"))["access_token"]
    r = await client.post(
        "/auth/apikeys",
        json={"name": "nightly export", "scopes": ["read"]},
        headers=_bearer(access),
    )
    assert r.status_code == 201, r.text
    created = r.json()
    key = created["key"]
    assert key.startswith(f"ca_{created['prefix']}_") and created["last_used_at"] is None

    listed = (await client.get("/auth/apikeys", headers=_bearer(access))).json()
    assert [k["id"] for k in listed] == [created["id"]] and "key" not in listed[0]

    for headers in ({"X-API-Key": key}, _bearer(key)):
        me = await client.get("/auth/me", headers=headers)
        assert me.status_code == 200
        assert me.json()["auth_method"] == "api_key" and me.json()["scopes"] == ["read"]
    listed = (await client.get("/auth/apikeys", headers=_bearer(access))).json()
    assert listed[0]["last_used_at"] is not None

    # a read-only key cannot mint keys
    r = await client.post("/auth/apikeys", json={"name": "x"}, headers={"X-API-Key": key})
    assert r.status_code == 403

    # bob cannot see or revoke alice's key (404: existence does not leak)
    bob = (await _login(client, "bob"))["access_token"]
    r = await client.delete(f"/auth/apikeys/{created['id']}", headers=_bearer(bob))
    assert r.status_code == 404
    r = await client.get("/auth/apikeys", params={"all": "true"}, headers=_bearer(bob))
    assert r.status_code == 403
    root = (await _login(client, "root"))["access_token"]
    r = await client.get("/auth/apikeys", params={"all": "true"}, headers=_bearer(root))
    assert [k["id"] for k in r.json()] == [created["id"]]

    r = await client.delete(f"/auth/apikeys/{created['id']}", headers=_bearer(access))
    assert r.status_code == 204
    assert (await client.get("/auth/me", headers={"X-API-Key": key})).status_code == 401
    again = await client.delete(f"/auth/apikeys/{created['id']}", headers=_bearer(access))
    assert again.status_code == 204  # revoking twice is harmless


async def test_asking_for_no_scope_or_only_scopes_the_role_lacks_is_invalid_scope(
    client: httpx.AsyncClient,
) -> None:
    """``"scopes": []`` made a key with every scope of the role (the opposite of what was
    asked); a user's login asking only for ``admin`` got a 200 with a token of no scope."""
    access = (await _login(client, "alice"))["access_token"]
    r = await client.post(
        "/auth/apikeys", json={"name": "least", "scopes": []}, headers=_bearer(access)
    )
    assert r.status_code == 400 and r.json()["error"] == "invalid_scope", r.text
    assert (await client.get("/auth/apikeys", headers=_bearer(access))).json() == []
    r = await client.post(
        "/auth/token", data={"username": "alice", "password": PASSWORD, "scope": "admin"}
    )
    assert r.status_code == 400 and r.json()["error"] == "invalid_scope", r.text
    assert "access_token" not in r.json()
    # a partly allowed request still gets what the role allows (RFC 6749 section 3.3)
    assert (await _login(client, "alice", scope="read admin"))["scope"] == "read"
    assert (await _login(client, "alice", scope=""))["scope"] == "read write"


async def test_credentials_required_and_refused(client: httpx.AsyncClient) -> None:
    r = await client.get("/auth/me")
    assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
    r = await client.get("/auth/me", headers=_bearer("eyJhbGciOiJub25lIn0.e30."))
    assert r.status_code == 401 and r.json()["error"] == "unauthorized"
    r = await client.post("/auth/apikeys", json={"name": "x"})
    assert r.status_code == 401


async def test_disabled_user_token_is_refused(
    app: FastAPI, client: httpx.AsyncClient, accounts: AuthService
) -> None:
    access = (await _login(client, "alice"))["access_token"]
    assert (await client.get("/auth/me", headers=_bearer(access))).status_code == 200
    accounts.set_disabled("alice", True)  # another process (the CLI) disables the account
    service: AuthService = app.state.auth_service
    service.invalidate()  # what principal_cache_s seconds do on their own
    assert (await client.get("/auth/me", headers=_bearer(access))).status_code == 401


async def test_auth_on_by_default_guards_other_routes(client: httpx.AsyncClient) -> None:
    r = await client.get("/jobs")
    assert r.status_code == 401  # auth.enabled is true by default
    assert r.headers["www-authenticate"] == 'Bearer realm="callannotate"'
    access = (await _login(client, "alice"))["access_token"]
    assert (await client.get("/jobs", headers=_bearer(access))).status_code == 200
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert {"/auth/token", "/auth/refresh", "/auth/logout", "/auth/apikeys"} <= set(paths)


async def test_concurrent_logins_share_a_cpu_bound_limiter(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    import os

    import anyio

    results: list[int] = []

    async def one(user: str) -> None:
        r = await client.post("/auth/token", data={"username": user, "password": PASSWORD})
        results.append(r.status_code)

    async with anyio.create_task_group() as tg:
        for user in ("alice", "bob", "root") * 3:
            tg.start_soon(one, user)
    assert results == [200] * 9
    limiter = app.state.password_limiter
    assert limiter.total_tokens == (os.cpu_count() or 2) and limiter.borrowed_tokens == 0
