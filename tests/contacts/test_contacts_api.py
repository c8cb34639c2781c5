"""``/contacts`` through the real app with authentication on and a real Radicale."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from carddav_servers import LOCAL_SERVERS, Radicale
from fastapi import FastAPI

from callannotate.api.app import create_app
from callannotate.config import ApiSettings, AuthSettings, ContactsSettings, Settings
from callannotate.contacts.davclient import CardDAVClient, member_href
from callannotate.db.engine import Database
from callannotate.db.testing import dispose_app_databases
from callannotate.security.service import AuthService

PASSWORD = "correct horse battery"
pytestmark = pytest.mark.auth


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        api=ApiSettings(embedded_workers=False),
        auth=AuthSettings(enabled=True, argon2_time_cost=1, argon2_memory_cost=1024),
        contacts=ContactsSettings(timeout_s=5, allowed_hosts=LOCAL_SERVERS),
    )


@pytest.fixture
def app(settings: Settings) -> Iterator[FastAPI]:
    from callannotate.db.migrate import upgrade_database

    db = Database.from_settings(settings)
    upgrade_database(db)
    accounts = AuthService(settings, db)
    accounts.create_user("alice", PASSWORD, "user")
    accounts.create_user("bob", PASSWORD, "user")
    app = create_app(settings)
    yield app
    dispose_app_databases(app)
    db.dispose()


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c


async def _headers(client: httpx.AsyncClient, user: str) -> dict[str, str]:
    r = await client.post("/auth/token", data={"username": user, "password": PASSWORD})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


async def test_contacts_api_end_to_end(client: httpx.AsyncClient, radicale: Radicale) -> None:
    alice = await _headers(client, "alice")
    bob = await _headers(client, "bob")
    assert (await client.get("/contacts")).status_code == 401

    r = await client.post(
        "/contacts/accounts",
        headers=alice,
        json={"url": radicale.url, "username": radicale.username, "password": radicale.password},
    )
    assert r.status_code == 201, r.text
    account = r.json()
    assert "password" not in r.text and radicale.password not in r.text
    assert account["books"] and account["reachable"]
    r = await client.post(
        "/contacts/accounts",
        headers=alice,
        json={"url": radicale.url, "username": radicale.username, "password": radicale.password},
    )
    assert r.status_code == 409 and account["id"] in r.json()["detail"]

    r = await client.post(
        "/contacts",
        headers=alice,
        json={"fn": "Иван Петров", "phones": [{"value": "8 (916) 123-45-67", "types": ["cell"]}]},
    )
    assert r.status_code == 201, r.text
    ivan = r.json()
    assert ivan["phones_e164"] == ["+79161234567"] and not ivan["pending"]
    etag = r.headers["etag"]
    r = await client.post(
        "/contacts",
        headers=alice,
        json={"fn": "Ivan Petrov", "org": "Acme", "emails": [{"value": "ivan@acme.test"}]},
    )
    petrov = r.json()

    # search by name (either script), phone in any notation, organisation
    r = await client.get("/contacts", headers=alice, params={"q": "петров"})
    assert {c["id"] for c in r.json()["items"]} == {ivan["id"], petrov["id"]}
    r = await client.get("/contacts", headers=alice, params={"phone": "+7 916 1234567"})
    assert [c["id"] for c in r.json()["items"]] == [ivan["id"]]
    r = await client.get("/contacts", headers=alice, params={"org": "acme", "limit": 1})
    assert r.json()["total"] == 1 and r.json()["items"][0]["id"] == petrov["id"]
    assert (
        await client.get("/contacts", headers=alice, params={"phone": "abc"})
    ).status_code == 400

    # ETag / If-Match
    r = await client.patch(
        f"/contacts/{ivan['id']}", headers={**alice, "If-Match": etag}, json={"title": "CEO"}
    )
    assert r.status_code == 200 and r.json()["fields"]["title"] == "CEO"
    r = await client.patch(
        f"/contacts/{ivan['id']}", headers={**alice, "If-Match": etag}, json={"title": "CTO"}
    )
    assert r.status_code == 412 and r.json()["error"] == "precondition_failed"
    assert (
        await client.patch(f"/contacts/{ivan['id']}", headers=alice, json={"bogus": 1})
    ).status_code == 422

    # another CardDAV client changes the title meanwhile: our next edit meets a 412 on the
    # server, is merged (server wins the title by default) and the conflict is listed
    href = member_href(account["books"][0]["url"], ivan["uid"])
    with CardDAVClient(radicale.url, radicale.username, radicale.password) as dav:
        current = dav.get(href)
        assert current.vcard is not None
        dav.put(href, current.vcard.replace("TITLE:CEO", "TITLE:Chairman"), etag=current.etag)
    r = await client.patch(f"/contacts/{ivan['id']}", headers=alice, json={"title": "CFO"})
    assert r.status_code == 200 and r.json()["fields"]["title"] == "Chairman"
    r = await client.get("/contacts/conflicts", headers=alice)
    assert [(c["field"], c["resolution"]) for c in r.json()] == [("title", "server")]
    assert (await client.get("/contacts/conflicts", headers=bob)).json() == []

    # other owners see nothing
    assert (await client.get(f"/contacts/{ivan['id']}", headers=bob)).status_code == 404
    assert (
        await client.patch(f"/contacts/{ivan['id']}", headers=bob, json={"title": "x"})
    ).status_code == 404
    assert (await client.delete(f"/contacts/{ivan['id']}", headers=bob)).status_code == 404
    assert (await client.get("/contacts", headers=bob)).json()["total"] == 0
    assert (await client.get(f"/contacts/accounts/{account['id']}", headers=bob)).status_code == 404
    r = await client.post("/contacts/merge", headers=bob, json={"ids": [ivan["id"], petrov["id"]]})
    assert r.status_code == 404

    # duplicates and merge
    r = await client.get("/contacts/duplicates", headers=alice)
    [group] = r.json()
    assert set(group["contact_ids"]) == {ivan["id"], petrov["id"]}
    assert group["reasons"] == [{"kind": "name", "value": "ivan petrov"}]
    r = await client.post(
        "/contacts/merge", headers=alice, json={"ids": [ivan["id"], petrov["id"]]}
    )
    assert r.status_code == 200, r.text
    merged = r.json()["fields"]
    assert merged["title"] == "Chairman"
    assert merged["org"] == "Acme" and [e["value"] for e in merged["emails"]] == ["ivan@acme.test"]
    assert (await client.get(f"/contacts/{petrov['id']}", headers=alice)).status_code == 404

    r = await client.post("/contacts/sync", headers=alice)
    assert r.status_code == 200 and r.json()[0]["ok"]
    assert (await client.get("/contacts/accounts", headers=alice)).json()[0]["books"][0][
        "contact_count"
    ] == 1

    assert (await client.delete(f"/contacts/{ivan['id']}", headers=alice)).status_code == 204
    r = await client.delete(f"/contacts/accounts/{account['id']}", headers=alice)
    assert r.status_code == 204
    assert (await client.get("/contacts/accounts", headers=alice)).json() == []


async def test_connect_errors_are_clear(client: httpx.AsyncClient, radicale: Radicale) -> None:
    alice = await _headers(client, "alice")
    r = await client.post(
        "/contacts/accounts",
        headers=alice,
        json={"url": radicale.url, "username": radicale.username, "password": "wrong"},
    )
    assert r.status_code == 400 and "refused" in r.json()["detail"]
    r = await client.post(
        "/contacts/accounts",
        headers=alice,
        json={"url": "http://127.0.0.1:9/", "username": "a", "password": "b"},
    )
    assert r.status_code == 400 and "cannot reach" in r.json()["detail"]
    r = await client.post("/contacts", headers=alice, json={"fn": "No Book"})
    assert r.status_code == 400 and "connect an address book" in r.json()["detail"]


@pytest.mark.parametrize(
    "if_match",
    [b'"' + b"9" * 5000 + b'"', b'"\xb2"', b'"\xd9\xa3"'],
    ids=["5000-digits", "superscript-two", "arabic-indic-three"],
)
async def test_an_if_match_that_names_no_version_is_a_412(
    client: httpx.AsyncClient, if_match: bytes
) -> None:
    """Every ``If-Match`` that is no plain version number gets the same 412 (was a 500 for
    digits ``int()`` refuses: more than 4300 of them, or '²' sent as the Latin-1 byte)."""
    alice = await _headers(client, "alice")
    url = f"/contacts/{'a' * 32}"
    for method in ("PATCH", "DELETE"):
        r = await client.request(
            method, url, headers={**alice, "If-Match": if_match}, json={"title": "x"}
        )
        assert r.status_code == 412, (method, r.text)
        assert r.json()["detail"] == "If-Match does not name a version of this contact"


async def test_an_offset_past_the_database_integers_is_a_422(client: httpx.AsyncClient) -> None:
    """Was a 500 (the database driver cannot bind an integer over 64 bits)."""
    alice = await _headers(client, "alice")
    for offset in (2**63, 10**30):
        r = await client.get("/contacts", headers=alice, params={"offset": offset})
        assert r.status_code == 422, r.text
        assert r.json()["error"] == "validation_error"
    r = await client.get("/contacts", headers=alice, params={"offset": 10_000_000})
    assert r.status_code == 200 and r.json()["items"] == []


async def test_an_account_on_a_metadata_address_is_a_422(client: httpx.AsyncClient) -> None:
    alice = await _headers(client, "alice")
    r = await client.post(
        "/contacts/accounts",
        headers=alice,
        json={"url": "http://169.254.169.254/latest/", "username": "u", "password": "p"},
    )
    assert r.status_code == 422, r.text
    assert "contacts.allowed_hosts" in r.json()["detail"]
    assert (await client.get("/contacts/accounts", headers=alice)).json() == []
