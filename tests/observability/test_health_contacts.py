"""``/ready``'s ``contacts`` check against real CardDAV servers (Radicale with htpasswd auth,
Xandikos): up, stopped, and refusing the stored credentials. Contacts are degradable: a
failing probe reads ``degraded: ...`` and ``/ready`` stays 200."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from callannotate.api.app import create_app
from callannotate.config import ApiSettings, ContactsSettings, DatabaseSettings, Settings
from callannotate.contacts.service import ContactsService, password_context
from callannotate.db.contact_models import ContactAccount
from callannotate.db.engine import Database
from callannotate.db.migrate import upgrade_database
from callannotate.jobs.filequeue import FileQueue
from callannotate.observability import health
from callannotate.observability.health import dependency_outcomes, is_failing
from callannotate.security.secrets import seal

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "contacts"))
from carddav_servers import LOCAL_SERVERS, DavServer, Radicale

OWNER = "owner-1"


@pytest.fixture(autouse=True)
def _fresh_probe_cache() -> Iterator[None]:
    health.contacts_probe().clear()
    yield
    health.contacts_probe().clear()


def settings_for(tmp_path: Path, url: str | None = None) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        api=ApiSettings(embedded_workers=False),
        database=DatabaseSettings(url=url or ""),
        contacts=ContactsSettings(allowed_hosts=LOCAL_SERVERS),
    )


def connect(settings: Settings, server: DavServer) -> tuple[Database, str]:
    db = Database.from_settings(settings)
    upgrade_database(db)
    service = ContactsService(settings, db)
    account = service.connect(OWNER, server.url, server.username, server.password)
    return db, account.id


def contacts_outcome(settings: Settings) -> str:
    return dependency_outcomes(settings, FileQueue(settings.queue_dir, settings.queue))["contacts"]


def test_no_account_no_contacts_check(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    db = Database.from_settings(settings)
    upgrade_database(db)  # the store exists, with its tables, but nobody connected an account
    try:
        outcomes = dependency_outcomes(settings, FileQueue(settings.queue_dir, settings.queue))
        assert "contacts" not in outcomes and outcomes["database"].startswith("ok")
    finally:
        db.dispose()


@pytest.mark.parametrize("kind", ["radicale", "xandikos"])
def test_a_reachable_server_is_ok_and_probed_once_per_ttl(
    tmp_path: Path, kind: str, request: pytest.FixtureRequest
) -> None:
    server: DavServer = request.getfixturevalue(kind)
    settings = settings_for(tmp_path)
    db, _ = connect(settings, server)
    try:
        probe = health.contacts_probe()
        before = probe.probes
        outcome = contacts_outcome(settings)
        assert outcome.startswith("ok (1 account(s) on 1 server(s) answer"), outcome
        assert probe.probes == before + 1
        for _ in range(5):  # frequent readiness probes read the cache
            assert contacts_outcome(settings).startswith("ok")
        assert probe.probes == before + 1
    finally:
        db.dispose()


def test_a_stopped_server_degrades_and_ready_stays_200(tmp_path: Path, radicale: Radicale) -> None:
    settings = settings_for(tmp_path)
    db, account_id = connect(settings, radicale)
    try:
        with TestClient(create_app(settings)) as client:
            body = client.get("/ready").json()
            assert body["checks"]["contacts"].startswith("ok"), body

            radicale.stop()
            health.contacts_probe().clear()  # past the cache time
            response = client.get("/ready")
            assert response.status_code == 200, response.text
            outcome = response.json()["checks"]["contacts"]
            assert outcome.startswith("degraded: 1 of 1 account(s) failing"), outcome
            assert f"account {account_id} on http://127.0.0.1:{radicale.port}" in outcome
            assert "unreachable" in outcome and not is_failing(outcome)

            radicale.start()  # back: ok again once the cached answer is older than the TTL
            health.contacts_probe().clear()
            assert client.get("/ready").json()["checks"]["contacts"].startswith("ok")
    finally:
        db.dispose()


@pytest.mark.auth
def test_anonymous_callers_see_only_degraded(tmp_path: Path, radicale: Radicale) -> None:
    settings = settings_for(tmp_path)
    db, _ = connect(settings, radicale)
    radicale.stop()
    try:
        with TestClient(create_app(settings)) as client:
            response = client.get("/ready")
            assert response.status_code == 200, response.text
            assert response.json()["checks"]["contacts"] == "degraded"
            assert "breakers" not in response.json() or not response.json()["breakers"]
    finally:
        db.dispose()


def test_refused_credentials_are_named(tmp_path: Path, radicale: Radicale) -> None:
    settings = settings_for(tmp_path)
    db, account_id = connect(settings, radicale)
    try:
        # the password was changed on the server side: the stored one is now wrong
        wrong = seal(settings, b"not-the-password", context=password_context(account_id))
        with db.session() as session:
            session.execute(
                update(ContactAccount)
                .where(ContactAccount.id == account_id)
                .values(password_sealed=wrong)
            )
        outcome = contacts_outcome(settings)
        assert outcome.startswith("degraded:"), outcome
        assert "refused the stored credentials (401)" in outcome
    finally:
        db.dispose()


def test_accounts_on_postgresql(tmp_path: Path, radicale: Radicale, postgres_admin: str) -> None:
    from callannotate.db.testing import temporary_postgres_database

    with temporary_postgres_database(postgres_admin) as url:
        settings = settings_for(tmp_path, url)
        db, _ = connect(settings, radicale)
        try:
            assert contacts_outcome(settings).startswith("ok (1 account(s)")
            radicale.stop()
            health.contacts_probe().clear()
            assert contacts_outcome(settings).startswith("degraded:")
        finally:
            db.dispose()
            with health._engines_lock:  # the check's pooled connection, before DROP DATABASE
                engine = health._engines.pop(url, None)
            if engine is not None:
                engine.dispose()


def test_the_probe_times_out_quickly_on_a_silent_server(tmp_path: Path) -> None:
    """A server that accepts connections and never answers: the probe gives up after the
    timeout it is given and reports the server unreachable."""
    import socket

    from callannotate.contacts.probe import Target, probe

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        settings = settings_for(tmp_path)
        port = silent.getsockname()[1]
        sealed = seal(settings, b"pw", context=password_context("acc1"))
        target = Target("acc1", f"http://127.0.0.1:{port}/book/", "u", "basic", sealed)
        result = probe(settings, target, timeout_s=0.3)
        assert result.status == "unreachable" and "Timeout" in result.detail
    finally:
        silent.close()


def test_a_deleted_address_book_is_named(tmp_path: Path, radicale: Radicale) -> None:
    from callannotate.contacts.davclient import CardDAVClient

    settings = settings_for(tmp_path)
    db, _ = connect(settings, radicale)
    try:
        with CardDAVClient(radicale.url, radicale.username, radicale.password) as client:
            book = f"{radicale.url}{radicale.username}/contacts/"
            assert client.request("DELETE", book).status_code in (200, 204)
        outcome = contacts_outcome(settings)
        assert outcome.startswith("degraded:") and "address book is gone (404)" in outcome
    finally:
        db.dispose()
