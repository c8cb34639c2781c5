"""Rate limits on the real app: 429 with ``Retry-After`` and ``RateLimit-*`` headers, separate
upload / read / login budgets, per-role budgets and per-address anonymous buckets with
authentication on, WebSocket connects and messages (error frame, then close 1008), every route
covered, and two apps sharing one budget through the real Redis."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute, APIWebSocketRoute
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from callannotate.api.app import create_app
from callannotate.api.ratelimit import UPLOAD_ROUTES, enforce_rate_limits
from callannotate.config import (
    AdminRateLimits,
    AnonymousRateLimits,
    ApiSettings,
    AuthSettings,
    BucketSettings,
    EventSettings,
    RateLimitSettings,
    RoleRateLimitTable,
    Settings,
    UserRateLimits,
)

PASSWORD = "correct horse battery"
SLOW = 1 / 3600  # no token comes back during a test
REDIS_URL = os.environ.get("CALLANNOTATE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def bucket(burst: int, per_second: float = SLOW) -> BucketSettings:
    return BucketSettings(burst=burst, per_second=per_second)


def make_settings(tmp_path: Path, limits: RateLimitSettings, **extra: Any) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        api=ApiSettings(embedded_workers=False),
        rate_limits=limits,
        **extra,
    )


@pytest.fixture
async def client_factory() -> AsyncIterator[Any]:
    clients: list[httpx.AsyncClient] = []

    def make(app: FastAPI, ip: str = "192.0.2.10") -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=app, client=(ip, 40000))
        client = httpx.AsyncClient(transport=transport, base_url="http://test")
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()


async def test_reads_over_the_budget_get_429_with_headers(
    tmp_path: Path, client_factory: Any
) -> None:
    limits = RateLimitSettings(roles=RoleRateLimitTable(admin=AdminRateLimits(reads=bucket(3))))
    client = client_factory(create_app(make_settings(tmp_path, limits)))
    remaining = []
    for _ in range(3):
        r = await client.get("/jobs")
        assert r.status_code == 200, r.text
        assert r.headers["RateLimit-Limit"] == "3"
        remaining.append(r.headers["RateLimit-Remaining"])
    assert remaining == ["2", "1", "0"]
    r = await client.get("/jobs/0123456789abcdef0123456789abcdef", headers={"X-Request-ID": "rl-1"})
    assert r.status_code == 429
    assert int(r.headers["Retry-After"]) > 3000  # one token per hour
    assert r.headers["RateLimit-Limit"] == "3"
    assert r.headers["RateLimit-Remaining"] == "0"
    assert int(r.headers["RateLimit-Reset"]) > 0
    assert r.headers["RateLimit-Policy"].startswith("3;w=")
    body = r.json()
    assert body["error"] == "rate_limited"
    assert "retry after" in body["detail"]
    assert body["request_id"] == "rl-1" == r.headers["X-Request-ID"]


async def test_each_rate_limit_and_security_header_is_sent_once(
    tmp_path: Path, client_factory: Any
) -> None:
    """One middleware adds the security and ``RateLimit-*`` headers (and a 405's ``Allow``):
    allowed, refused and not-allowed responses carry each of them exactly once."""
    limits = RateLimitSettings(roles=RoleRateLimitTable(admin=AdminRateLimits(reads=bucket(2))))
    client = client_factory(create_app(make_settings(tmp_path, limits)))
    ok = await client.get("/jobs")
    not_allowed = await client.put("/jobs")  # no PUT route: 405 before any token is taken
    assert (await client.get("/jobs")).status_code == 200  # the second token
    refused = await client.get("/jobs")
    assert (ok.status_code, not_allowed.status_code, refused.status_code) == (200, 405, 429)
    names = ("ratelimit-limit", "ratelimit-remaining", "ratelimit-reset", "ratelimit-policy")
    for response in (ok, refused):
        for name in (*names, "content-security-policy", "x-content-type-options"):
            assert len(response.headers.get_list(name)) == 1, (response.status_code, name)
    assert len(refused.headers.get_list("retry-after")) == 1
    assert not_allowed.headers.get_list("allow") == ["GET, POST, OPTIONS"]
    assert len(not_allowed.headers.get_list("content-security-policy")) == 1


async def test_health_is_exempt(tmp_path: Path, client_factory: Any) -> None:
    limits = RateLimitSettings(
        roles=RoleRateLimitTable(
            admin=AdminRateLimits(reads=bucket(1)), anonymous=AnonymousRateLimits(reads=bucket(1))
        )
    )
    client = client_factory(create_app(make_settings(tmp_path, limits)))
    for _ in range(5):
        r = await client.get("/health")
        assert r.status_code == 200
        assert "RateLimit-Limit" not in r.headers


async def test_uploads_have_their_own_budget(
    tmp_path: Path, client_factory: Any, audio_dir: Path
) -> None:
    limits = RateLimitSettings(
        roles=RoleRateLimitTable(admin=AdminRateLimits(uploads=bucket(1), reads=bucket(50)))
    )
    client = client_factory(create_app(make_settings(tmp_path, limits)))
    wav = (audio_dir / "tone.wav").read_bytes()
    first = await client.post("/jobs", files={"file": ("a.wav", wav, "audio/wav")})
    assert first.status_code == 202, first.text
    assert first.headers["RateLimit-Policy"].endswith('comment="uploads"')
    second = await client.post("/jobs", files={"file": ("b.wav", wav, "audio/wav")})
    assert second.status_code == 429
    assert 'comment="uploads"' in second.headers["RateLimit-Policy"]
    assert (await client.get("/jobs")).status_code == 200  # reads are a separate bucket
    assert (await client.get("/jobs")).json()["total"] == 1  # the refused one left nothing


async def test_token_endpoint_is_limited_per_client_address(
    tmp_path: Path, client_factory: Any
) -> None:
    limits = RateLimitSettings(login=bucket(2))
    app = create_app(make_settings(tmp_path, limits))
    a = client_factory(app, "192.0.2.20")
    b = client_factory(app, "192.0.2.21")
    for i in range(2):
        r = await a.post("/auth/token", data={"username": f"nobody{i}", "password": "x"})
        assert r.status_code in (400, 401), r.text
    r = await a.post("/auth/token", data={"username": "nobody9", "password": "x"})
    assert r.status_code == 429 and r.json()["error"] == "rate_limited"
    assert 'comment="login"' in r.headers["RateLimit-Policy"]
    r = await a.post("/auth/refresh", json={"refresh_token": "x"})  # the same bucket
    assert r.status_code == 429
    r = await b.post("/auth/token", data={"username": "nobody", "password": "x"})
    assert r.status_code != 429  # another address, another bucket


# --------------------------------------------------------------------------- auth on


@pytest.fixture
def auth_app(tmp_path: Path, auth_enabled: None) -> Iterator[FastAPI]:
    from callannotate.db.engine import Database
    from callannotate.db.migrate import upgrade_database
    from callannotate.security.service import AuthService

    limits = RateLimitSettings(
        login=bucket(20),
        roles=RoleRateLimitTable(
            admin=AdminRateLimits(reads=bucket(4)),
            user=UserRateLimits(reads=bucket(2)),
            anonymous=AnonymousRateLimits(reads=bucket(1)),
        ),
    )
    settings = make_settings(
        tmp_path,
        limits,
        auth=AuthSettings(argon2_time_cost=1, argon2_memory_cost=1024),
    )
    db = Database.from_settings(settings)
    upgrade_database(db)
    accounts = AuthService(settings, db)
    accounts.create_user("alice", PASSWORD, "user")
    accounts.create_user("root", PASSWORD, "admin")
    db.dispose()
    app = create_app(settings)
    yield app
    service = getattr(app.state, "auth_service", None)
    if service is not None:
        service.db.dispose()


async def _token(client: httpx.AsyncClient, user: str) -> dict[str, str]:
    r = await client.post("/auth/token", data={"username": user, "password": PASSWORD})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


async def _reads_until_refused(client: httpx.AsyncClient, headers: dict[str, str]) -> int:
    for n in range(20):
        r = await client.get("/jobs", headers=headers)
        if r.status_code == 429:
            return n
        assert r.status_code == 200, r.text
    raise AssertionError("never refused")


async def test_each_role_gets_its_budget_per_principal(
    auth_app: FastAPI, client_factory: Any
) -> None:
    office = client_factory(auth_app, "192.0.2.30")  # both users behind one address
    alice = await _token(office, "alice")
    root = await _token(office, "root")
    assert await _reads_until_refused(office, alice) == 2
    assert await _reads_until_refused(office, root) == 4  # not spent by alice's calls


async def test_anonymous_callers_are_limited_per_address(
    auth_app: FastAPI, client_factory: Any
) -> None:
    a = client_factory(auth_app, "192.0.2.40")
    assert (await a.get("/jobs")).status_code == 401
    r = await a.get("/jobs")
    assert r.status_code == 429 and r.headers["RateLimit-Limit"] == "1"
    bad = {"Authorization": "Bearer not-a-token"}
    assert (await a.get("/jobs", headers=bad)).status_code == 429  # refused credentials too
    b = client_factory(auth_app, "192.0.2.41")
    assert (await b.get("/jobs", headers=bad)).status_code == 401
    assert (await b.get("/jobs", headers=bad)).status_code == 429


# --------------------------------------------------------------------------- WebSockets


def _ws_app(tmp_path: Path, **admin: BucketSettings) -> FastAPI:
    limits = RateLimitSettings(roles=RoleRateLimitTable(admin=AdminRateLimits(**admin)))
    return create_app(make_settings(tmp_path, limits))


def test_websocket_connects_over_the_budget_get_an_error_then_1008(tmp_path: Path) -> None:
    app = _ws_app(tmp_path, ws_connect=bucket(1))
    with TestClient(app) as client:
        with client.websocket_connect("/ws/first") as ws:
            assert ws.receive_json()["type"] == "welcome"
        with client.websocket_connect("/ws/second") as ws:
            frame = ws.receive_json()
            assert frame["type"] == "error" and frame["code"] == "rate_limited"
            assert frame["retry_after"] > 0
            with pytest.raises(WebSocketDisconnect) as closed:
                ws.receive_json()
            assert closed.value.code == 1008
            assert "rate limited" in closed.value.reason


def test_websocket_messages_over_the_budget_error_then_close_1008(tmp_path: Path) -> None:
    app = _ws_app(tmp_path, ws_messages=bucket(2))
    with TestClient(app) as client, client.websocket_connect("/ws/chatty") as ws:
        assert ws.receive_json()["type"] == "welcome"
        for i in range(2):
            ws.send_json({"type": "ping", "id": i})
            pong = ws.receive_json()
            assert pong["type"] == "pong" and pong["id"] == i
        ws.send_json({"type": "ping", "id": 2})  # over: dropped with an error frame
        frame = ws.receive_json()
        assert frame["type"] == "error" and frame["code"] == "rate_limited"
        ws.send_json({"type": "ping", "id": 3})  # keeps going: closed
        frame = ws.receive_json()
        assert frame["type"] == "error"
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
        assert closed.value.code == 1008


def test_a_stream_connect_draws_from_the_uploads_budget(tmp_path: Path, audio_dir: Path) -> None:
    app = _ws_app(tmp_path, uploads=bucket(1))
    with TestClient(app) as client:
        wav = (audio_dir / "tone.wav").read_bytes()
        r = client.post("/jobs", files={"file": ("a.wav", wav, "audio/wav")})
        assert r.status_code == 202, r.text
        with client.websocket_connect("/stream") as ws:
            frame = ws.receive_json()
            assert frame["error"] == "rate_limited" and "uploads" in frame["detail"]
            with pytest.raises(WebSocketDisconnect) as closed:
                ws.receive_json()
            assert closed.value.code == 1008


# --------------------------------------------------------------------------- coverage


def test_every_route_is_limited_and_every_upload_route_is_known(tmp_path: Path) -> None:
    app = create_app(make_settings(tmp_path, RateLimitSettings()))
    routes = [r for r in app.routes if isinstance(r, APIRoute | APIWebSocketRoute)]
    assert routes
    for route in routes:
        calls = [d.call for d in route.dependant.dependencies]
        assert enforce_rate_limits in calls, f"{route.path} is not rate limited"
    for path, item in app.openapi()["paths"].items():
        for method, operation in item.items():
            content = operation.get("requestBody", {}).get("content", {})
            takes_files = any(t.startswith(("multipart/", "audio/")) for t in content)
            if takes_files:
                assert (method.upper(), path) in UPLOAD_ROUTES, f"{method} {path} takes files"


async def test_disabled_limits_add_nothing(tmp_path: Path, client_factory: Any) -> None:
    app = create_app(make_settings(tmp_path, RateLimitSettings(enabled=False)))
    assert getattr(app.state, "rate_limiter", None) is None
    r = await client_factory(app).get("/jobs")
    assert r.status_code == 200 and "RateLimit-Limit" not in r.headers


# --------------------------------------------------------------------------- Redis


@pytest.fixture
async def redis_events() -> AsyncIterator[EventSettings]:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(REDIS_URL, socket_connect_timeout=1.0)
    try:
        await client.ping()
    except Exception as exc:
        message = f"Redis not reachable at {REDIS_URL} ({type(exc).__name__}: {exc})"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI requires Redis: {message}")
        pytest.skip(message)
    prefix = f"test-rl-api-{uuid.uuid4().hex[:8]}"
    yield EventSettings(redis_url=REDIS_URL, redis_prefix=prefix)
    keys = [key async for key in client.scan_iter(match=f"{prefix}:*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


async def test_two_apps_share_a_budget_through_redis(
    tmp_path: Path, client_factory: Any, redis_events: EventSettings
) -> None:
    limits = RateLimitSettings(
        backend="redis", roles=RoleRateLimitTable(admin=AdminRateLimits(reads=bucket(3)))
    )
    first = create_app(make_settings(tmp_path / "a", limits, events=redis_events))
    second = create_app(make_settings(tmp_path / "b", limits, events=redis_events))
    a, b = client_factory(first), client_factory(second)
    try:
        assert (await a.get("/jobs")).status_code == 200
        assert (await b.get("/jobs")).status_code == 200
        r = await a.get("/jobs")
        assert r.status_code == 200 and r.headers["RateLimit-Remaining"] == "0"
        assert (await b.get("/jobs")).status_code == 429
    finally:
        await first.state.rate_limiter.close()
        await second.state.rate_limiter.close()
