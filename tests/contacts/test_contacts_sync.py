"""The contacts service against real CardDAV servers (Radicale with htpasswd, Xandikos)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from carddav_servers import DavServer, Radicale, make_settings

from callannotate.contacts.davclient import MULTIGET_BATCH, VCARD_TYPE, CardDAVClient, member_href
from callannotate.contacts.schemas import ContactFields, ContactPatch, Email, Phone
from callannotate.contacts.service import ContactsService, StaleWrite
from callannotate.contacts.vcard import parse_vcard, render_vcard
from callannotate.db.contact_models import ContactConflict
from callannotate.db.engine import Database
from callannotate.errors import BadRequest, NotFound

OWNER = "user-1"


def _connect(service: ContactsService, server: DavServer) -> str:
    account = service.connect(OWNER, server.url, server.username, server.password)
    return account.id


def _server_client(server: DavServer) -> CardDAVClient:
    return CardDAVClient(server.url, server.username, server.password)


def _book_url(server: DavServer) -> str:
    with _server_client(server) as client:
        return client.discover()[0].url


def _put(server: DavServer, uid: str, fn: str, phone: str = "", extra: str = "") -> str:
    fields = ContactFields(fn=fn, phones=[Phone(value=phone, types=["cell"])] if phone else [])
    text = render_vcard(fields, uid=uid)
    if extra:
        text = text.replace("END:VCARD", extra + "\r\nEND:VCARD")
    book = _book_url(server)
    with _server_client(server) as client:
        client.put(member_href(book, uid), text, create=True)
    return member_href(book, uid)


def test_connect_discovers_and_syncs_both_servers(
    service: ContactsService, dav_server: DavServer
) -> None:
    _put(dav_server, "ivan", "Иван Петров", "8 (916) 123-45-67", "X-CUSTOM;X-P=1:keep me")
    _put(dav_server, "anna", "Anna Smith", "+1 650 253 0000")
    account_id = _connect(service, dav_server)
    result = service.sync(OWNER, account_id)
    assert result.ok, result.error
    assert result.books[0].changed == 2
    _rows, total = service.search(OWNER)
    assert total == 2
    [ivan] = service.lookup_phone(OWNER, "+7 916 1234567")
    assert ivan.fn == "Иван Петров"
    assert "X-CUSTOM;X-P=1:keep me" in ivan.vcard
    # nothing changed: the incremental sync fetches nothing
    again = service.sync(OWNER, account_id)
    assert again.ok and again.books[0].changed == 0 and again.books[0].removed == 0
    # a change and a removal on the server arrive with the next sync
    with _server_client(dav_server) as client:
        client.delete(member_href(_book_url(dav_server), "anna"))
    _put_update(dav_server, "ivan", title="CEO")
    third = service.sync(OWNER, account_id)
    assert third.ok and third.books[0].changed == 1 and third.books[0].removed == 1
    [ivan] = service.lookup_phone(OWNER, "89161234567")
    assert ivan.data["title"] == "CEO"
    assert service.search(OWNER)[1] == 1


def _put_update(server: DavServer, uid: str, **changes: object) -> None:
    href = member_href(_book_url(server), uid)
    with _server_client(server) as client:
        current = client.get(href)
        assert current.vcard is not None
        _, fields = parse_vcard(current.vcard)
        fields = fields.model_copy(update=changes)
        client.put(href, render_vcard(fields, uid=uid, base=current.vcard), etag=current.etag)


def test_etag_fallback_without_sync_collection(
    tmp_path: Path, db: Database, radicale: Radicale
) -> None:
    service = ContactsService(make_settings(tmp_path, use_sync_collection=False), db)
    _put(radicale, "a", "Ivan Petrov", "+79161234567")
    account_id = _connect(service, radicale)
    first = service.sync(OWNER, account_id)
    assert first.ok and first.books[0].mode == "etag" and first.books[0].changed == 1
    _put(radicale, "b", "Olga Ivanova")
    second = service.sync(OWNER, account_id)
    assert second.books[0].changed == 1
    assert service.search(OWNER)[1] == 2


def test_crud_round_trip_keeps_unknown_properties(
    service: ContactsService, dav_server: DavServer
) -> None:
    _put(dav_server, "u1", "Пётр Сидоров", "+79160000001", "X-SOCIAL;TYPE=tg:@petr")
    account_id = _connect(service, dav_server)
    service.sync(OWNER, account_id)
    [row] = service.search(OWNER, q="сидоров")[0]
    updated = service.update(OWNER, row.id, ContactPatch(org="Acme"), if_match=row.rev)
    assert not updated.pending
    with _server_client(dav_server) as client:
        server = client.get(row.href or "")
    assert server.vcard is not None
    assert "X-SOCIAL" in server.vcard and "Acme" in server.vcard
    with pytest.raises(StaleWrite):
        service.update(OWNER, row.id, ContactPatch(title="x"), if_match=row.rev)
    created = service.create(
        OWNER,
        ContactFields(
            fn="New Person",
            emails=[Email(value="new@example.com", types=["work"])],
            categories=["vip"],
        ),
    )
    assert created.href and not created.pending
    with _server_client(dav_server) as client:
        text = client.get(created.href).vcard
    assert text is not None and "new@example.com" in text
    service.delete(OWNER, created.id)
    with _server_client(dav_server) as client:
        assert client.get(created.href).status == 404
    with pytest.raises(NotFound):
        service.get(OWNER, created.id)
    with pytest.raises(NotFound):
        service.get("someone-else", row.id)


def test_bad_credentials_are_refused(service: ContactsService, radicale: Radicale) -> None:
    with pytest.raises(BadRequest, match="refused"):
        service.connect(OWNER, radicale.url, radicale.username, "wrong")


def test_password_is_sealed(service: ContactsService, radicale: Radicale, db: Database) -> None:
    account_id = _connect(service, radicale)
    with db.session() as session:
        from callannotate.db.contact_models import ContactAccount

        row = session.get(ContactAccount, account_id)
        assert row is not None
        assert radicale.password.encode() not in row.password_sealed


def test_malformed_vcard_is_skipped_and_sync_goes_on(
    service: ContactsService, dav_server: DavServer, caplog: pytest.LogCaptureFixture
) -> None:
    _put(dav_server, "good", "Good Person", "+79160000002")
    book = _book_url(dav_server)
    bad = "BEGIN:VCARD\r\nVERSION:9.9\r\nUID:bad\r\nFN:Weird Version\r\nEND:VCARD\r\n"
    with _server_client(dav_server) as client:
        client.put(member_href(book, "bad"), bad, create=True)
    account_id = _connect(service, dav_server)
    with caplog.at_level(logging.WARNING, logger="callannotate.contacts.service"):
        result = service.sync(OWNER, account_id)
    assert result.ok and result.books[0].changed == 1 and result.books[0].skipped == 1
    assert "unsupported VERSION 9.9" in caplog.text and "bad.vcf" in caplog.text
    assert [r.fn for r in service.search(OWNER)[0]] == ["Good Person"]


def test_server_stopped_mid_sync_keeps_cache_and_resumes(
    service: ContactsService, radicale: Radicale
) -> None:
    # more than one multiget batch (MULTIGET_BATCH), stored in one request: Radicale takes a
    # PUT of the whole address book (members named UID.vcf), where 450 single PUTs took ~45 s
    book = _book_url(radicale)
    cards = "".join(
        render_vcard(ContactFields(fn=f"Person {i}"), uid=f"c{i:04d}") for i in range(450)
    )
    with _server_client(radicale) as client:
        stored = client.request("PUT", book, content=cards, headers={"Content-Type": VCARD_TYPE})
        assert stored.status_code in (200, 201, 204), stored.text
        assert len(client.list_etags(book)) == 450 > MULTIGET_BATCH
        # Radicale records the new members in its sync history on the first request for the
        # book's sync token (seconds for 450 on a busy machine): here, not within the service's
        # 5 s timeout (a PUT of one member records it at once)
        assert client.discover()[0].sync_token
    account_id = _connect(service, radicale)
    service.sync(OWNER, account_id)
    assert service.search(OWNER)[1] == 450
    # a change on the server, then the server dies during the next sync's fetches
    _put_update(radicale, "c0001", title="changed")
    original = service._fetch_and_apply

    def dying_fetch(client, book_row, hrefs):  # type: ignore[no-untyped-def]
        radicale.stop()
        return original(client, book_row, hrefs)

    service._fetch_and_apply = dying_fetch  # type: ignore[method-assign]
    result = service.sync(OWNER, account_id)
    service._fetch_and_apply = original  # type: ignore[method-assign]
    assert not result.ok and "unreachable" in (result.error or "")
    assert service.search(OWNER)[1] == 450  # cache intact
    assert service.is_stale(OWNER)
    radicale.start()
    resumed = service.sync(OWNER, account_id)
    assert resumed.ok, resumed.error
    assert resumed.books[0].changed == 1
    assert service.search(OWNER, q="Person 1")[0]
    assert not service.is_stale(OWNER)


def test_writes_while_down_are_replayed_after_restart(
    tmp_path: Path, db: Database, radicale: Radicale
) -> None:
    service = ContactsService(make_settings(tmp_path), db)
    _put(radicale, "keep", "Keep Me", "+79160000003")
    _put(radicale, "gone", "Delete Me")
    account_id = _connect(service, radicale)
    service.sync(OWNER, account_id)
    keep = service.search(OWNER, q="keep")[0][0]
    gone = service.search(OWNER, q="delete")[0][0]
    radicale.stop()
    created = service.create(
        OWNER, ContactFields(fn="Offline Created", phones=[Phone(value="+79160000004")])
    )
    assert created.pending and created.href is None
    service.update(OWNER, keep.id, ContactPatch(title="Edited offline"))
    service.delete(OWNER, gone.id)
    assert service.pending_writes(OWNER, account_id) == 3
    assert service.is_stale(OWNER)
    # the service restarts (a new instance on the same database), then the server comes back
    restarted = ContactsService(make_settings(tmp_path), db)
    assert restarted.pending_writes(OWNER, account_id) == 3
    radicale.start()
    result = restarted.sync(OWNER, account_id)
    assert result.ok, result.error
    assert result.outbox_replayed == 3 and result.outbox_left == 0
    with _server_client(radicale) as client:
        names = sorted(
            parse_vcard(r.vcard)[1].fn
            for r in client.multiget(
                _book_url(radicale), list(client.list_etags(_book_url(radicale)))
            )
            if r.vcard
        )
        assert names == ["Keep Me", "Offline Created"]
    assert restarted.get(OWNER, keep.id).data["title"] == "Edited offline"
    assert not restarted.get(OWNER, created.id).pending


@pytest.mark.parametrize("policy", ["server", "client"])
def test_two_clients_edit_one_contact(
    tmp_path: Path, db: Database, radicale: Radicale, policy: str
) -> None:
    service = ContactsService(make_settings(tmp_path, conflict_policy=policy), db)
    _put(radicale, "shared", "Shared Person", "+79160000005")
    account_id = _connect(service, radicale)
    service.sync(OWNER, account_id)
    [row] = service.search(OWNER)[0]
    # another client changes title and org on the server
    _put_update(radicale, "shared", title="Server title", org="Server org")
    # we change title (conflict) and note (ours only) from our stale copy: the server says 412
    href = row.href or ""
    with (
        _server_client(radicale) as client,
        pytest.raises(Exception, match="changed on the server"),
    ):
        client.put(href, row.vcard, etag=row.server_etag)
    updated = service.update(OWNER, row.id, ContactPatch(title="Our title", note="our note"))
    assert not updated.pending
    with _server_client(radicale) as client:
        server = client.get(href)
    assert server.vcard is not None
    _, merged = parse_vcard(server.vcard)
    assert merged.org == "Server org"  # only the server changed it
    assert merged.note == "our note"  # only we changed it
    assert merged.title == ("Server title" if policy == "server" else "Our title")
    with db.session() as session:
        conflicts = session.query(ContactConflict).all()
    assert [(c.field, c.resolution) for c in conflicts] == [("title", policy)]
    assert service.get(OWNER, row.id).data["title"] == merged.title


def test_periodic_sync_picks_up_server_changes(
    tmp_path: Path, db: Database, radicale: Radicale
) -> None:
    import time

    service = ContactsService(make_settings(tmp_path, sync_interval_s=0.2), db)
    account_id = _connect(service, radicale)
    assert service.sync(OWNER, account_id).ok
    thread = service.start_periodic_sync()
    assert thread is not None
    try:
        _put(radicale, "later", "Added Later", "+79160000009")
        deadline = time.monotonic() + 30
        while not service.lookup_phone(OWNER, "+79160000009") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [c.fn for c in service.lookup_phone(OWNER, "89160000009")] == ["Added Later"]
    finally:
        service.stop_periodic_sync()
        thread.join(timeout=30)


def test_expired_sync_token_falls_back_to_a_full_sync(
    service: ContactsService, dav_server: DavServer, db: Database
) -> None:
    from callannotate.db.contact_models import ContactBook

    _put(dav_server, "t1", "Token Person", "+79160000010")
    account_id = _connect(service, dav_server)
    assert service.sync(OWNER, account_id).ok
    _put(dav_server, "t2", "Second Person")
    with _server_client(dav_server) as client:
        client.delete(member_href(_book_url(dav_server), "t1"))
    with db.session() as session:
        for book in session.query(ContactBook).all():
            book.sync_token = book.sync_token[:-8] + "deadbeef" if book.sync_token else "bogus"
    result = service.sync(OWNER, account_id)
    assert result.ok, result.error
    assert [r.fn for r in service.search(OWNER)[0]] == ["Second Person"]
