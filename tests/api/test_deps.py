"""The principal dependencies of ``api/deps.py`` called directly (no route around them)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from authtesting import Accounts, auth_settings
from fastapi import FastAPI
from prometheus_client import REGISTRY
from starlette.requests import HTTPConnection

from callannotate.api.deps import (
    get_current_principal,
    get_optional_principal,
    renewed_principal,
    require_admin,
    require_scope,
)
from callannotate.config import ApiSettings, AuthSettings, Settings
from callannotate.security.errors import (
    AuthenticationFailed,
    AuthenticationRequired,
    InsufficientScope,
    PermissionDenied,
)
from callannotate.security.principal import LOCAL_PRINCIPAL


@pytest.fixture(scope="module")
def accounts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Accounts]:
    root = tmp_path_factory.mktemp("deps")
    accounts = Accounts.create(auth_settings(root / "data", root / "store.db"))
    yield accounts
    accounts.service.db.dispose()


@pytest.fixture
def app(accounts: Accounts) -> FastAPI:
    app = FastAPI()
    app.state.settings = accounts.service.settings
    return accounts.attach(app)


def conn(app: FastAPI, headers: dict[str, str] | None = None, query: str = "") -> HTTPConnection:
    scope = {
        "type": "http",
        "app": app,
        "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
        "query_string": query.encode(),
        "path": "/",
        "state": {},
    }
    return HTTPConnection(scope)


async def test_auth_off_is_the_local_admin(tmp_path: Path) -> None:
    app = FastAPI()
    app.state.settings = Settings(
        data_dir=tmp_path, api=ApiSettings(), auth=AuthSettings(enabled=False)
    )
    assert await get_current_principal(conn(app)) is LOCAL_PRINCIPAL
    assert await get_optional_principal(conn(app)) is LOCAL_PRINCIPAL


def _failures(reason: str) -> float:
    value = REGISTRY.get_sample_value("callannotate_auth_failures_total", {"reason": reason})
    return value or 0.0


async def test_no_credential_is_401_with_a_challenge(app: FastAPI) -> None:
    missing = _failures("missing")
    with pytest.raises(AuthenticationRequired) as caught:
        await get_current_principal(conn(app))
    assert caught.value.status_code == 401
    assert caught.value.headers == {"WWW-Authenticate": 'Bearer realm="callannotate"'}
    assert _failures("missing") == missing + 1  # counted as a refusal
    assert await get_optional_principal(conn(app)) is None  # a public route: not a refusal
    assert _failures("missing") == missing + 1


async def test_bad_credentials_are_401_even_on_public_routes(app: FastAPI) -> None:
    for headers in ({"Authorization": "Bearer x.y.z"}, {"Authorization": "Basic abc"}):
        with pytest.raises(AuthenticationFailed) as caught:
            await get_current_principal(conn(app, headers))
        assert caught.value.headers["WWW-Authenticate"].startswith("Bearer error=")
        with pytest.raises(AuthenticationFailed):
            await get_optional_principal(conn(app, headers))


async def test_jwt_and_key_principals_are_kept_on_the_connection(
    app: FastAPI, accounts: Accounts
) -> None:
    c = conn(app, accounts.headers("alice"))
    principal = await get_current_principal(c)
    assert principal.id == accounts.ids["alice"] and principal.expires_at is not None
    assert c.state.principal is principal
    _, key = accounts.api_key("alice", "read")
    by_key = await get_current_principal(conn(app, {"X-API-Key": key}))
    assert by_key.auth_method == "api_key" and by_key.expires_at is None


async def test_scopes_are_checked_by_the_dependency(app: FastAPI, accounts: Accounts) -> None:
    _, read_only = accounts.api_key("alice", "read")
    c = conn(app, {"X-API-Key": read_only})
    principal = await get_current_principal(c)
    assert await require_scope("read")(c, principal) is principal
    with pytest.raises(InsufficientScope) as caught:
        await require_scope("write")(c, principal)
    assert caught.value.status_code == 403
    assert 'error="insufficient_scope"' in caught.value.headers["WWW-Authenticate"]


async def test_admin_needs_the_role_and_the_scope(app: FastAPI, accounts: Accounts) -> None:
    alice = await get_current_principal(conn(app, accounts.headers("alice")))
    with pytest.raises(PermissionDenied):
        await require_admin(conn(app), alice)
    root = await get_current_principal(conn(app, accounts.headers("root")))
    assert await require_admin(conn(app), root) is root
    _, read_key = accounts.api_key("root", "read")
    limited = await get_current_principal(conn(app, {"X-API-Key": read_key}))
    with pytest.raises(InsufficientScope):  # an admin's key without the admin scope
        await require_admin(conn(app), limited)


async def test_renewal_must_be_the_same_principal(app: FastAPI, accounts: Accounts) -> None:
    alice = await get_current_principal(conn(app, accounts.headers("alice")))
    fresh = await renewed_principal(conn(app), alice, accounts.short_token("alice", 600), "read")
    assert fresh.id == alice.id and fresh.expires_at is not None
    for token, scope in (
        (accounts.tokens["bob"], "read"),
        (accounts.short_token("alice", 600, "read"), "write"),
        ("not-a-token", "read"),
    ):
        with pytest.raises(AuthenticationFailed):
            await renewed_principal(conn(app), alice, token, scope)
