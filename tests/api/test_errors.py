"""Error bodies: text PostgreSQL cannot store (NUL characters) is the client's 422, not a 500;
on SQLite the same requests succeed."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from callannotate.api.app import create_app
from callannotate.config import ApiSettings, AuthSettings, DatabaseSettings, Settings
from callannotate.db.engine import Database
from callannotate.db.models import Base
from callannotate.db.testing import dispose_app_databases
from callannotate.security.service import AuthService

PASSWORD = "correct horse battery"
pytestmark = pytest.mark.auth


@pytest.fixture(params=["sqlite", "postgresql"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    url = "" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    return Settings(
        data_dir=tmp_path / "data",
        api=ApiSettings(embedded_workers=False),
        auth=AuthSettings(enabled=True, argon2_time_cost=1, argon2_memory_cost=1024),
        database=DatabaseSettings(url=url),
    )


@pytest.fixture
def app(settings: Settings) -> Iterator[FastAPI]:
    from callannotate.db.migrate import upgrade_database

    db = Database.from_settings(settings)
    upgrade_database(db)
    with db.session() as session:  # the PostgreSQL database is shared by the session's tests
        for table in reversed(Base.metadata.sorted_tables):
            session.execute(table.delete())
    AuthService(settings, db).create_user("root", PASSWORD, "admin")
    app = create_app(settings)
    yield app
    dispose_app_databases(app)
    db.dispose()


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c


async def test_nul_characters_in_stored_or_searched_text(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    r = await client.post("/auth/token", data={"username": "root", "password": PASSWORD})
    root = {"Authorization": f"Bearer {r.json()['access_token']}"}
    postgres = bool(settings.database.url)
    requests = [
        client.build_request("POST", "/auth/apikeys", json={"name": "a\x00b"}, headers=root),
        client.build_request("GET", "/audit", params={"principal": "\x00"}, headers=root),
        client.build_request("GET", "/contacts", params={"q": "a\x00b"}, headers=root),
    ]
    for request in requests:
        r = await client.send(request)
        if postgres:  # was a 500 (psycopg.DataError)
            assert r.status_code == 422, (request.url, r.text)
            assert r.json()["error"] == "validation_error"
            assert r.json()["detail"] == "text cannot contain NUL (\\u0000) characters"
        else:
            assert r.status_code < 300, (request.url, r.text)
