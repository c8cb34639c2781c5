"""GET /admin/breakers (admin only) and the breakers in GET /ready, with authentication on."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from authtesting import Accounts, auth_settings

from callannotate.api.app import create_app
from callannotate.config import Settings
from callannotate.resilience.breakers import Breaker


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return auth_settings(tmp_path / "data", tmp_path / "store.db")


@pytest.fixture
def accounts(settings: Settings) -> Accounts:
    return Accounts.create(settings)


@pytest.fixture
async def client(settings: Settings, accounts: Accounts) -> AsyncIterator[httpx.AsyncClient]:
    app = accounts.attach(create_app(settings))
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://test") as c,
    ):
        yield c


async def test_breakers_are_admin_only_and_list_states_and_circuits(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    breaker = Breaker("alerts_webhook", failures=1, reset_s=60)
    with contextlib.suppress(ConnectionError), breaker.guard("https://hooks.example.org/a"):
        raise ConnectionError("refused")
    assert (await client.get("/admin/breakers")).status_code == 401
    r = await client.get("/admin/breakers", headers=accounts.headers("alice"))
    assert r.status_code == 403
    r = await client.get("/admin/breakers", headers=accounts.headers("root"))
    assert r.status_code == 200, r.text
    body = {b["name"]: b for b in r.json()["breakers"]}
    hooks = body["alerts_webhook"]
    assert hooks["state"] == "open" and hooks["failures_to_open"] == 1
    assert hooks["counts"] == {"closed": 0, "open": 1, "half_open": 0}
    [circuit] = hooks["circuits"]
    assert circuit["key"] == "https://hooks.example.org/a" and 59 < circuit["retry_in_s"] <= 60

    # an open breaker never makes /ready 503; admins see the states, others nothing
    public = await client.get("/ready")
    admin = await client.get("/ready", headers=accounts.headers("root"))
    assert public.status_code == 200 and admin.status_code == 200, admin.text
    assert public.json()["breakers"] == {}
    assert admin.json()["breakers"]["alerts_webhook"] == "open"
    del breaker
