"""The contacts service's circuit breaker (``contacts`` in callannotate.resilience.breakers)
against a real Radicale that is stopped and started again: the breaker opens, contacts are
served from the cache, writes wait in the outbox, and the first sync after the restart (the
half-open trial) closes it and replays the outbox."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from carddav_servers import LOCAL_SERVERS, Radicale
from prometheus_client import REGISTRY
from test_contacts_sync import OWNER, _connect, _put

from callannotate.config import ContactsSettings, Settings
from callannotate.contacts.schemas import ContactFields, Phone
from callannotate.contacts.service import ContactsService
from callannotate.db.engine import Database
from callannotate.db.migrate import upgrade_database
from callannotate.resilience import breakers

RESET_S = 1.0


def sample(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


def syncs(result: str) -> float:
    return sample("callannotate_contacts_sync_total", {"result": result})


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'contacts.db'}")
    upgrade_database(database)
    try:
        yield database
    finally:
        database.dispose()


def test_server_down_opens_the_breaker_cache_serves_and_restart_closes_it(
    tmp_path: Path, sqlite_db: Database, radicale: Radicale
) -> None:
    settings = Settings(
        data_dir=tmp_path / "data",
        contacts=ContactsSettings(
            breaker_failures=2, breaker_reset_s=RESET_S, timeout_s=5, allowed_hosts=LOCAL_SERVERS
        ),
    )
    service = ContactsService(settings, sqlite_db)
    assert breakers.get("contacts") is service.breaker
    _put(radicale, "ivan", "Ivan Petrov", "+79161234567")
    account_id = _connect(service, radicale)
    before = {r: syncs(r) for r in ("ok", "failed", "circuit_open")}
    assert service.sync(OWNER, account_id).ok
    assert sample("callannotate_contacts_last_success_timestamp_seconds") > time.time() - 60

    radicale.stop()
    for _ in range(2):  # two failures in a row open it
        result = service.sync(OWNER, account_id)
        assert not result.ok and "unreachable" in (result.error or "")
    assert service.breaker.state(account_id) == "open"
    assert breakers.get("contacts") is service.breaker
    assert service.breaker.open_keys() == [account_id]
    assert sample("callannotate_circuit_breakers", {"breaker": "contacts", "state": "open"}) == 1

    # open: the server is not called; reads come from the cache, writes wait in the outbox
    t0 = time.monotonic()
    skipped = service.sync(OWNER, account_id)
    assert time.monotonic() - t0 < 0.5
    assert not skipped.ok and "circuit breaker contacts" in (skipped.error or "")
    assert skipped.books == []
    [ivan] = service.lookup_phone(OWNER, "8 916 123-45-67")
    assert ivan.fn == "Ivan Petrov"
    assert service.is_stale(OWNER)
    created = service.create(
        OWNER, ContactFields(fn="Offline Person", phones=[Phone(value="+79160000009")])
    )
    assert created.pending and service.pending_writes(OWNER, account_id) == 1
    assert syncs("failed") - before["failed"] == 2
    assert syncs("circuit_open") - before["circuit_open"] == 1

    # the server comes back; after breaker_reset_s the next sync is the trial and closes it
    radicale.start()
    time.sleep(RESET_S + 0.1)
    resumed = service.sync(OWNER, account_id)
    assert resumed.ok, resumed.error
    assert resumed.outbox_replayed == 1 and resumed.outbox_left == 0
    assert service.breaker.state(account_id) == "closed"
    assert not service.is_stale(OWNER)
    assert not service.get(OWNER, created.id).pending
    assert syncs("ok") - before["ok"] == 2
    assert sample("callannotate_circuit_breakers", {"breaker": "contacts", "state": "open"}) == 0
