"""Contacts: connected CardDAV accounts, the local cache, sync, the outbox and CRUD.

Reads always come from the cache (marked ``stale`` while an account's server is unreachable).
Writes change the cache at once, are queued in ``contact_outbox`` (a database table, so they
survive a restart) and pushed to the server in ``seq`` order: right away when the server
answers, otherwise on the next sync. A circuit breaker per account stops calling a server that
keeps failing. Everything is per owner (the principal id); another owner's ids are "not found".
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import delete, func, or_, select
from sqlalchemy.orm import Session

from callannotate.config import Settings
from callannotate.contacts import davclient as dav
from callannotate.contacts.duplicates import Suggestion, find_duplicates
from callannotate.contacts.guard import contacts_policy
from callannotate.contacts.merge import FieldConflict, merge_duplicates, three_way
from callannotate.contacts.normalize import fold_query, name_key, normalize_phone, search_text
from callannotate.contacts.schemas import (
    ContactFields,
    ContactPatch,
    SyncBookResult,
    SyncResult,
)
from callannotate.contacts.vcard import VCardError, new_uid, parse_vcard, render_vcard
from callannotate.db.contact_models import (
    Contact,
    ContactAccount,
    ContactBook,
    ContactConflict,
    ContactOutboxEntry,
    ContactPhone,
)
from callannotate.db.engine import Database
from callannotate.errors import BadRequest, CallAnnotateError, Conflict, NotFound, Unprocessable
from callannotate.observability.metrics import CONTACTS_LAST_SYNC, CONTACTS_SYNC
from callannotate.resilience.breakers import Breaker, CircuitOpen

logger = logging.getLogger(__name__)

APPLY_BATCH = 200


class StaleWrite(CallAnnotateError):
    """If-Match named an older version of the contact."""

    status_code = 412
    code = "precondition_failed"


@dataclass(frozen=True)
class BookSyncStats:
    mode: str
    changed: int = 0
    removed: int = 0
    skipped: int = 0


def _new_id() -> str:
    return uuid.uuid4().hex


def _now() -> datetime:
    return datetime.now(UTC)


def _short(exc: BaseException) -> str:
    return str(exc)[:480] or type(exc).__name__


class ContactsService:
    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings = settings
        self.cfg = settings.contacts
        self.db = db
        # one circuit per account; only "server down" errors (dav.Unreachable) count
        self.breaker = Breaker(
            "contacts",
            failures=self.cfg.breaker_failures,
            reset_s=self.cfg.breaker_reset_s,
            is_failure=lambda exc: isinstance(exc, dav.Unreachable),
        )
        self.last_requests = 0  # HTTP requests of the last sync (benchmarks read it)
        self._stop = threading.Event()
        self._periodic: threading.Thread | None = None

    # -- accounts -----------------------------------------------------------------------
    def _seal(self, account_id: str, password: str) -> bytes:
        from callannotate.security.secrets import seal

        return seal(self.settings, password.encode(), context=password_context(account_id))

    def _password(self, account: ContactAccount) -> str:
        from callannotate.security.secrets import SealedDataError, unseal

        try:
            return unseal(
                self.settings, account.password_sealed, context=password_context(account.id)
            ).decode()
        except SealedDataError as exc:
            raise BadRequest(
                "the stored password of this account cannot be decrypted; connect it again"
            ) from exc

    def _verify(self) -> bool | ssl.SSLContext:
        from callannotate.contacts.probe import tls_verify

        return tls_verify(self.cfg)

    def client(self, url: str, username: str, password: str, auth: str) -> dav.CardDAVClient:
        return dav.CardDAVClient(
            url,
            username,
            password,
            auth=auth,
            timeout=self.cfg.timeout_s,
            verify=self._verify(),
            policy=contacts_policy(self.cfg.allowed_hosts),
        )

    def _client_for(self, account: ContactAccount) -> dav.CardDAVClient:
        return self.client(account.url, account.username, self._password(account), account.auth)

    def connect(
        self,
        owner: str,
        url: str,
        username: str,
        password: str,
        auth: str = "basic",
        name: str = "",
    ) -> ContactAccount:
        """Discover the address books at ``url`` and store the account (password sealed)."""
        if not url.lower().startswith(("http://", "https://")):
            raise BadRequest("url must start with https:// (or http:// for a local server)")
        for existing in self.accounts(owner):
            if existing.url == url and existing.username == username:
                raise Conflict(f"this account is already connected as {existing.id}")
        try:
            with self.client(url, username, password, auth) as client:
                books = client.discover()
        except dav.TargetNotAllowed as exc:
            raise Unprocessable(f"url: {exc}") from exc
        except dav.AuthFailed as exc:
            raise BadRequest("the CardDAV server refused these credentials") from exc
        except dav.Unreachable as exc:
            raise BadRequest(f"cannot reach the CardDAV server: {_short(exc)}") from exc
        except dav.CardDAVError as exc:
            raise BadRequest(f"not a usable CardDAV account: {_short(exc)}") from exc
        if not books:
            raise BadRequest("no address book found at this URL")
        account_id = _new_id()
        with self.db.session() as session:
            account = ContactAccount(
                id=account_id,
                owner=owner,
                name=name or username,
                url=url,
                username=username,
                auth=auth,
                password_sealed=self._seal(account_id, password),
                reachable=True,
            )
            session.add(account)
            session.flush()
            for book in books:
                session.add(
                    ContactBook(
                        id=_new_id(),
                        account_id=account_id,
                        owner=owner,
                        url=book.url,
                        display_name=book.display_name,
                        supports_sync=book.supports_sync,
                    )
                )
        logger.info("contacts account %s connected with %d book(s)", account_id, len(books))
        return account

    def accounts(self, owner: str) -> list[ContactAccount]:
        with self.db.session() as session:
            rows = session.scalars(
                select(ContactAccount)
                .where(ContactAccount.owner == owner)
                .order_by(ContactAccount.created_at)
            )
            return list(rows)

    def account(self, owner: str, account_id: str) -> ContactAccount:
        with self.db.session() as session:
            return self._account(session, owner, account_id)

    def _account(self, session: Session, owner: str, account_id: str) -> ContactAccount:
        account = session.get(ContactAccount, account_id)
        if account is None or account.owner != owner:
            raise NotFound(f"contacts account {account_id} not found")
        return account

    def books(self, owner: str, account_id: str | None = None) -> list[tuple[ContactBook, int]]:
        with self.db.session() as session:
            query = (
                select(ContactBook, func.count(Contact.id))
                .outerjoin(Contact, (Contact.book_id == ContactBook.id) & (~Contact.deleted))
                .where(ContactBook.owner == owner)
                .group_by(ContactBook.id)
                .order_by(ContactBook.url)
            )
            if account_id is not None:
                query = query.where(ContactBook.account_id == account_id)
            return [(book, int(count)) for book, count in session.execute(query)]

    def pending_writes(self, owner: str, account_id: str) -> int:
        with self.db.session() as session:
            count = session.scalar(
                select(func.count())
                .select_from(ContactOutboxEntry)
                .where(ContactOutboxEntry.owner == owner)
                .where(ContactOutboxEntry.account_id == account_id)
            )
            return int(count or 0)

    def disconnect(self, owner: str, account_id: str) -> None:
        """Forget the account, its cached contacts and its unsent writes."""
        with self.db.session() as session:
            account = self._account(session, owner, account_id)
            book_ids = select(ContactBook.id).where(ContactBook.account_id == account_id)
            contact_ids = select(Contact.id).where(Contact.book_id.in_(book_ids))
            session.execute(delete(ContactPhone).where(ContactPhone.contact_id.in_(contact_ids)))
            session.execute(delete(Contact).where(Contact.book_id.in_(book_ids)))
            session.execute(
                delete(ContactOutboxEntry).where(ContactOutboxEntry.account_id == account_id)
            )
            session.execute(delete(ContactBook).where(ContactBook.account_id == account_id))
            session.delete(account)
        self.breaker.reset(account_id)

    def sync_every_account(self) -> int:
        """Sync the accounts of every owner (the periodic sync); returns how many were ok."""
        with self.db.session() as session:
            accounts = list(session.execute(select(ContactAccount.owner, ContactAccount.id)))
        ok = 0
        for owner, account_id in accounts:
            try:
                ok += self.sync(owner, account_id).ok
            except CallAnnotateError as exc:  # e.g. a password sealed under a retired key
                logger.warning("periodic contacts sync of %s failed: %s", account_id, exc)
        return ok

    def start_periodic_sync(self) -> threading.Thread | None:
        """A daemon thread syncing every ``contacts.sync_interval_s`` seconds (0: none)."""
        interval = self.cfg.sync_interval_s
        if interval <= 0 or self._periodic is not None:
            return None

        def loop() -> None:
            while not self._stop.wait(interval):
                try:
                    self.sync_every_account()
                except Exception:  # keep the loop alive; the next round retries
                    logger.exception("periodic contacts sync failed")

        self._periodic = threading.Thread(target=loop, name="contacts-sync", daemon=True)
        self._periodic.start()
        return self._periodic

    def stop_periodic_sync(self) -> None:
        self._stop.set()

    def is_stale(self, owner: str) -> bool:
        """True when some account of ``owner`` could not be reached at its last try."""
        return any(not a.reachable or self.breaker.is_open(a.id) for a in self.accounts(owner))

    # -- sync ---------------------------------------------------------------------------
    def sync_all(self, owner: str) -> list[SyncResult]:
        return [self.sync(owner, account.id) for account in self.accounts(owner)]

    def sync(self, owner: str, account_id: str) -> SyncResult:
        """Replay the outbox, then bring every book of the account up to date."""
        account = self.account(owner, account_id)
        result = SyncResult(account_id=account_id, ok=False)
        client = self._client_for(account)
        try:
            with self.breaker.guard(account_id):
                self._sync_account(client, account, result)
            CONTACTS_SYNC.labels("ok").inc()
            CONTACTS_LAST_SYNC.set(time.time())
            self._mark(account_id, reachable=True, error=None, synced=True)
        except CircuitOpen as exc:
            CONTACTS_SYNC.labels("circuit_open").inc()
            result.error = f"the server failed repeatedly; waiting before the next try ({exc})"
        except dav.Unreachable as exc:
            CONTACTS_SYNC.labels("failed").inc()
            result.error = f"server unreachable: {_short(exc)}"
            self._mark(account_id, reachable=False, error=result.error)
            logger.warning("contacts sync of %s stopped: %s", account_id, result.error)
        except dav.CardDAVError as exc:
            CONTACTS_SYNC.labels("failed").inc()
            result.error = _short(exc)
            self._mark(account_id, reachable=True, error=result.error)
            logger.warning("contacts sync of %s failed: %s", account_id, result.error)
        finally:
            self.last_requests = client.requests
            client.close()
        result.outbox_left = self.pending_writes(owner, account_id)
        return result

    def _sync_account(
        self, client: dav.CardDAVClient, account: ContactAccount, result: SyncResult
    ) -> None:
        """The outbox, then every book of ``account``, into ``result`` (raises on failure)."""
        account_id = account.id
        replayed, conflicts = self._replay(client, account)
        result.outbox_replayed, result.conflicts = replayed, conflicts
        with self.db.session() as session:
            books = list(
                session.scalars(select(ContactBook).where(ContactBook.account_id == account_id))
            )
        for book in books:
            before = client.requests
            stats = self._sync_book(client, book)
            result.books.append(
                SyncBookResult(
                    book_id=book.id,
                    mode=stats.mode,
                    changed=stats.changed,
                    removed=stats.removed,
                    skipped=stats.skipped,
                    requests=client.requests - before,
                )
            )
        result.ok = True

    def _mark(
        self, account_id: str, *, reachable: bool, error: str | None, synced: bool = False
    ) -> None:
        with self.db.session() as session:
            account = session.get(ContactAccount, account_id)
            if account is None:
                return
            account.reachable = reachable
            account.last_error = error
            if synced:
                account.last_sync_at = _now()

    def _sync_book(self, client: dav.CardDAVClient, book: ContactBook) -> BookSyncStats:
        if book.supports_sync and self.cfg.use_sync_collection:
            try:
                return self._sync_collection(client, book, book.sync_token)
            except dav.SyncTokenInvalid:
                logger.info("sync token of book %s expired: full sync", book.id)
                return self._sync_collection(client, book, None)
            except dav.CardDAVError as exc:
                if isinstance(exc, dav.Unreachable | dav.AuthFailed):
                    raise
                logger.info("book %s: sync-collection failed (%s); using ETags", book.id, exc)
                with self.db.session() as session:
                    row = session.get(ContactBook, book.id)
                    if row is not None:
                        row.supports_sync = False
        return self._sync_etags(client, book)

    def _cached_etags(self, book_id: str) -> dict[str, tuple[str | None, bool]]:
        """``href -> (etag, pending)`` of the cached contacts of a book."""
        with self.db.session() as session:
            rows = session.execute(
                select(Contact.href, Contact.server_etag, Contact.pending).where(
                    Contact.book_id == book_id, Contact.href.is_not(None)
                )
            )
            return {href: (etag, pending) for href, etag, pending in rows if href}

    def _sync_collection(
        self, client: dav.CardDAVClient, book: ContactBook, token: str | None
    ) -> BookSyncStats:
        changes = client.sync_collection(book.url, token)
        cached = self._cached_etags(book.id)
        wanted = [
            h for h, etag in changes.changed if etag is None or cached.get(h, (None,))[0] != etag
        ]
        changed, skipped = self._fetch_and_apply(client, book, wanted)
        removed_hrefs = list(changes.removed)
        if token is None:  # a full listing: whatever we hold that it lacks is gone
            present = {h for h, _ in changes.changed}
            removed_hrefs += [h for h in cached if h not in present]
        removed = self._remove(book.id, removed_hrefs)
        with self.db.session() as session:
            row = session.get(ContactBook, book.id)
            if row is not None:
                row.sync_token = changes.token
        return BookSyncStats("sync-collection", changed, removed, skipped)

    def _sync_etags(self, client: dav.CardDAVClient, book: ContactBook) -> BookSyncStats:
        server = client.list_etags(book.url)
        cached = self._cached_etags(book.id)
        wanted = [
            h for h, etag in server.items() if etag is None or cached.get(h, (None,))[0] != etag
        ]
        changed, skipped = self._fetch_and_apply(client, book, wanted)
        removed = self._remove(book.id, [h for h in cached if h not in server])
        return BookSyncStats("etag", changed, removed, skipped)

    def _fetch_and_apply(
        self, client: dav.CardDAVClient, book: ContactBook, hrefs: list[str]
    ) -> tuple[int, int]:
        """Multiget ``hrefs`` and store them, one transaction per batch (a sync cut short
        keeps what it stored; the token is saved only at the end, so it resumes)."""
        changed = skipped = 0
        for start in range(0, len(hrefs), APPLY_BATCH):
            resources = client.multiget(book.url, hrefs[start : start + APPLY_BATCH])
            with self.db.session() as session:
                existing = {
                    row.href: row
                    for row in session.scalars(
                        select(Contact).where(
                            Contact.book_id == book.id,
                            Contact.href.in_([r.href for r in resources]),
                        )
                    )
                }
                fresh: list[tuple[Contact, ContactFields]] = []
                for resource in resources:
                    if resource.status != 200 or resource.vcard is None:
                        continue
                    try:
                        uid, fields = parse_vcard(resource.vcard)
                    except VCardError as exc:
                        skipped += 1
                        logger.warning(
                            "contacts: skipping malformed vCard %s in book %s: %s",
                            resource.href,
                            book.id,
                            exc,
                        )
                        continue
                    changed += 1
                    row = existing.get(resource.href)
                    if row is not None and row.pending:
                        continue  # a local change waits in the outbox; its replay merges
                    is_new = row is None
                    if row is None:
                        row = Contact(
                            id=_new_id(),
                            owner=book.owner,
                            book_id=book.id,
                            href=resource.href,
                            rev=0,
                            pending=False,
                            deleted=False,
                        )
                        session.add(row)
                        fresh.append((row, fields))
                    row.uid = uid
                    row.server_etag = resource.etag
                    row.base_vcard = resource.vcard
                    if is_new:
                        self._fill(row, fields, resource.vcard)  # phones after the flush
                    else:
                        self._set_fields(session, row, fields, resource.vcard)
                session.flush()  # contacts first: their phones refer to them
                for row, fields in fresh:
                    self._add_phones(session, row, fields)
        return changed, skipped

    def _fill(self, row: Contact, fields: ContactFields, vcard: str) -> None:
        row.vcard = vcard
        row.data = fields.model_dump()
        row.fn = fields.display_name()[:500]
        row.search = search_text(fields)
        key = name_key(fields)
        row.name_key = key[:500] if key else None
        row.rev = (row.rev or 0) + 1
        row.pending = bool(row.pending)
        row.deleted = bool(row.deleted)

    def _add_phones(self, session: Session, row: Contact, fields: ContactFields) -> None:
        seen: set[str] = set()
        for phone in fields.phones:
            e164 = normalize_phone(phone.value, self.cfg.default_region)
            if e164 and e164 not in seen:
                seen.add(e164)
                session.add(ContactPhone(contact_id=row.id, owner=row.owner, e164=e164))

    def _set_fields(
        self, session: Session, row: Contact, fields: ContactFields, vcard: str
    ) -> None:
        """Store ``fields`` on ``row`` (a new row must be in the session) and re-index phones."""
        self._fill(row, fields, vcard)
        session.flush()
        session.execute(delete(ContactPhone).where(ContactPhone.contact_id == row.id))
        self._add_phones(session, row, fields)

    def _remove(self, book_id: str, hrefs: list[str]) -> int:
        if not hrefs:
            return 0
        removed = 0
        with self.db.session() as session:
            for start in range(0, len(hrefs), 500):
                rows = session.scalars(
                    select(Contact).where(
                        Contact.book_id == book_id,
                        Contact.href.in_(hrefs[start : start + 500]),
                        ~Contact.pending,
                    )
                )
                for row in rows:
                    session.delete(row)
                    removed += 1
        return removed

    # -- outbox -------------------------------------------------------------------------
    def _replay(self, client: dav.CardDAVClient, account: ContactAccount) -> tuple[int, int]:
        """Push queued writes in order; stops (keeping the rest) when the server is down."""
        replayed = conflicts = 0
        while True:
            with self.db.session() as session:
                entry = session.scalars(
                    select(ContactOutboxEntry)
                    .where(ContactOutboxEntry.account_id == account.id)
                    .order_by(ContactOutboxEntry.seq)
                    .limit(1)
                ).first()
            if entry is None:
                return replayed, conflicts
            try:
                conflicts += self._push(client, entry)
            except dav.Unreachable:
                self._entry_failed(entry.seq, "server unreachable", drop=False)
                raise
            except dav.AuthFailed:
                self._entry_failed(entry.seq, "authentication failed", drop=False)
                raise
            except dav.CardDAVError as exc:
                drop = entry.attempts + 1 >= self.cfg.outbox_max_attempts
                self._entry_failed(entry.seq, _short(exc), drop=drop)
                logger.warning("contacts outbox entry %s rejected: %s", entry.seq, exc)
                if not drop:
                    return replayed, conflicts
                self._record(
                    [FieldConflict("*", entry.op, _short(exc), "rejected")],
                    entry.owner,
                    entry.contact_id,
                )
                continue
            replayed += 1

    def _entry_failed(self, seq: int, error: str, *, drop: bool) -> None:
        with self.db.session() as session:
            entry = session.get(ContactOutboxEntry, seq)
            if entry is None:
                return
            if drop:
                session.delete(entry)
                return
            entry.attempts += 1
            entry.last_error = error[:500]

    def _push(self, client: dav.CardDAVClient, entry: ContactOutboxEntry) -> int:
        """Send one outbox entry; returns the number of field conflicts resolved."""
        with self.db.session() as session:
            row = session.get(Contact, entry.contact_id)
            book = session.get(ContactBook, row.book_id) if row is not None else None
        if row is None or book is None:
            self._done(entry.seq, None)
            return 0
        conflicts = 0
        if entry.op == "delete":
            if row.href:
                try:
                    client.delete(row.href, etag=row.server_etag)
                except dav.PreconditionFailed:
                    if self.cfg.conflict_policy == "server":
                        # changed on the server since we deleted it here: keep the server copy
                        self._record(
                            [FieldConflict("*", "deleted", "changed", "server")],
                            row.owner,
                            row.id,
                        )
                        self._restore_from_server(client, book, row)
                        self._done(entry.seq, None)
                        return 1
                    client.delete(row.href)
                    conflicts = 1
            self._done(entry.seq, row.id, delete_contact=True)
            return conflicts
        href = row.href or dav.member_href(book.url, row.uid)
        vcard, etag = row.vcard, row.server_etag
        create = entry.op == "create" and row.href is None
        for _attempt in range(3):
            try:
                new_etag = client.put(href, vcard, etag=etag, create=create)
                break
            except dav.PreconditionFailed:
                server = client.get(href)
                if server.vcard is None:  # gone on the server: create it again
                    create, etag = True, None
                    continue
                vcard, found = self._three_way(row, server.vcard)
                conflicts += found
                create, etag = False, server.etag
        else:
            raise dav.CardDAVError(f"PUT {href}: kept changing on the server")
        with self.db.session() as session:
            current = session.get(Contact, row.id)
            if current is not None:
                current.href = href
                current.server_etag = new_etag
                current.base_vcard = vcard
                if vcard != current.vcard and current.rev == row.rev:
                    self._set_fields(session, current, parse_vcard(vcard)[1], vcard)
        self._done(entry.seq, row.id)
        return conflicts

    def _three_way(self, row: Contact, server_vcard: str) -> tuple[str, int]:
        """Merge our copy with the server's against the last common copy; record conflicts."""
        _, local = parse_vcard(row.vcard)
        _, server = parse_vcard(server_vcard)
        base = parse_vcard(row.base_vcard)[1] if row.base_vcard else server
        merged, conflicts = three_way(base, local, server, self.cfg.conflict_policy)
        if conflicts:
            self._record(conflicts, row.owner, row.id)
            logger.info("contact %s: %d field conflict(s) resolved", row.id, len(conflicts))
        return render_vcard(merged, uid=row.uid, base=server_vcard), len(conflicts)

    def _restore_from_server(
        self, client: dav.CardDAVClient, book: ContactBook, row: Contact
    ) -> None:
        assert row.href is not None
        server = client.get(row.href)
        with self.db.session() as session:
            current = session.get(Contact, row.id)
            if current is None:
                return
            if server.vcard is None:
                session.delete(current)
                return
            _uid, fields = parse_vcard(server.vcard)
            current.deleted = False
            current.pending = False
            current.server_etag = server.etag
            current.base_vcard = server.vcard
            self._set_fields(session, current, fields, server.vcard)

    def _record(self, conflicts: list[FieldConflict], owner: str, contact_id: str) -> None:
        with self.db.session() as session:
            for conflict in conflicts:
                session.add(
                    ContactConflict(
                        id=_new_id(),
                        owner=owner,
                        contact_id=contact_id,
                        field=conflict.field,
                        local_value=conflict.local_text(),
                        server_value=conflict.server_text(),
                        resolution=conflict.resolution,
                    )
                )

    def _done(self, seq: int, contact_id: str | None, *, delete_contact: bool = False) -> None:
        with self.db.session() as session:
            entry = session.get(ContactOutboxEntry, seq)
            if entry is not None:
                session.delete(entry)
            session.flush()
            if contact_id is None:
                return
            contact = session.get(Contact, contact_id)
            if contact is None:
                return
            if delete_contact:
                session.delete(contact)
                return
            left = session.scalar(
                select(func.count())
                .select_from(ContactOutboxEntry)
                .where(ContactOutboxEntry.contact_id == contact_id)
            )
            if not left:
                contact.pending = False

    def conflicts(self, owner: str) -> list[ContactConflict]:
        with self.db.session() as session:
            return list(
                session.scalars(
                    select(ContactConflict)
                    .where(ContactConflict.owner == owner)
                    .order_by(ContactConflict.created_at)
                )
            )

    def _flush_soon(self, owner: str, account_id: str) -> None:
        """Try to push the outbox now; a down server leaves it for the next sync."""
        account = self.account(owner, account_id)
        client = self._client_for(account)
        try:
            with self.breaker.guard(account_id):
                self._replay(client, account)
            self._mark(account_id, reachable=True, error=None)
        except CircuitOpen:
            return
        except dav.Unreachable as exc:
            self._mark(account_id, reachable=False, error=f"server unreachable: {_short(exc)}")
        except dav.CardDAVError as exc:
            self._mark(account_id, reachable=True, error=_short(exc))
        finally:
            client.close()

    # -- contacts -----------------------------------------------------------------------
    @contextmanager
    def _owned(self, owner: str, contact_id: str) -> Iterator[tuple[Session, Contact, ContactBook]]:
        with self.db.session() as session:
            row = session.get(Contact, contact_id)
            if row is None or row.owner != owner or row.deleted:
                raise NotFound(f"contact {contact_id} not found")
            book = session.get(ContactBook, row.book_id)
            assert book is not None
            yield session, row, book

    def get(self, owner: str, contact_id: str) -> Contact:
        with self._owned(owner, contact_id) as (_session, row, _book):
            return row

    def search(
        self,
        owner: str,
        *,
        q: str = "",
        phone: str = "",
        email: str = "",
        org: str = "",
        offset: int = 0,
        limit: int = 50,
    ) -> tuple[list[Contact], int]:
        query = select(Contact).where(Contact.owner == owner, ~Contact.deleted)
        if q.strip():
            words = fold_query(q)
            query = query.where(or_(*[Contact.search.contains(w, autoescape=True) for w in words]))
        if phone.strip():
            e164 = normalize_phone(phone, self.cfg.default_region)
            if e164 is None:
                raise BadRequest(f"not a phone number: {phone!r}")
            ids = select(ContactPhone.contact_id).where(
                ContactPhone.owner == owner, ContactPhone.e164 == e164
            )
            query = query.where(Contact.id.in_(ids))
        if email.strip():
            query = query.where(Contact.search.contains(email.strip().lower(), autoescape=True))
        if org.strip():
            query = query.where(Contact.search.contains(org.strip().lower(), autoescape=True))
        with self.db.session() as session:
            total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
            rows = session.scalars(
                query.order_by(Contact.fn, Contact.id).offset(offset).limit(limit)
            )
            return list(rows), int(total)

    def lookup_phone(self, owner: str, number: str) -> list[Contact]:
        """Contacts of ``owner`` with this phone number (any notation)."""
        e164 = normalize_phone(number, self.cfg.default_region)
        if e164 is None:
            return []
        query = (
            select(Contact)
            .join(ContactPhone, ContactPhone.contact_id == Contact.id)
            .where(ContactPhone.owner == owner, ContactPhone.e164 == e164, ~Contact.deleted)
        )
        with self.db.session() as session:
            return list(session.scalars(query))

    def _default_book(self, session: Session, owner: str, book_id: str | None) -> ContactBook:
        if book_id:
            book = session.get(ContactBook, book_id)
            if book is None or book.owner != owner:
                raise NotFound(f"address book {book_id} not found")
            return book
        book = session.scalars(
            select(ContactBook)
            .join(ContactAccount, ContactAccount.id == ContactBook.account_id)
            .where(ContactBook.owner == owner)
            .order_by(ContactAccount.created_at, ContactBook.url)
            .limit(1)
        ).first()
        if book is None:
            raise BadRequest("connect an address book first (POST /contacts/accounts)")
        return book

    def _enqueue(self, session: Session, row: Contact, book: ContactBook, op: str) -> None:
        row.pending = True
        if op == "update":
            queued = session.scalar(
                select(func.count())
                .select_from(ContactOutboxEntry)
                .where(ContactOutboxEntry.contact_id == row.id, ContactOutboxEntry.op != "delete")
            )
            if queued:
                return  # the queued create/update sends the latest copy anyway
        session.add(
            ContactOutboxEntry(
                owner=row.owner, account_id=book.account_id, contact_id=row.id, op=op
            )
        )

    def create(
        self,
        owner: str,
        fields: ContactFields,
        book_id: str | None = None,
        *,
        vcard: str | None = None,
        push: bool = True,
    ) -> Contact:
        """A new contact, in the cache now and on the server as soon as it answers.

        ``vcard``: the original text (an import), kept with its unknown properties.
        """
        if not fields.display_name():
            raise BadRequest("a contact needs a name (fn, or given/family)")
        with self.db.session() as session:
            book = self._default_book(session, owner, book_id)
            uid = parse_vcard(vcard)[0] if vcard else new_uid()
            text = render_vcard(fields, uid=uid, base=vcard)
            row = Contact(id=_new_id(), owner=owner, book_id=book.id, uid=uid, rev=0)
            session.add(row)
            self._set_fields(session, row, fields, text)
            self._enqueue(session, row, book, "create")
            account_id = book.account_id
            contact_id = row.id
        if push:
            self._flush_soon(owner, account_id)
        return self.get(owner, contact_id)

    def update(
        self, owner: str, contact_id: str, patch: ContactPatch, if_match: int | None = None
    ) -> Contact:
        with self._owned(owner, contact_id) as (session, row, book):
            if if_match is not None and if_match != row.rev:
                raise StaleWrite(
                    f"contact {contact_id} changed (version {row.rev}, you sent {if_match}); "
                    "fetch it again and retry"
                )
            current = ContactFields(**row.data)
            changes = patch.model_dump(exclude_unset=True)
            fields = ContactFields(**{**current.model_dump(), **changes})
            if not fields.display_name():
                raise BadRequest("a contact needs a name (fn, or given/family)")
            if fields != current:
                self._set_fields(
                    session, row, fields, render_vcard(fields, uid=row.uid, base=row.vcard)
                )
                self._enqueue(session, row, book, "update")
            account_id = book.account_id
        self._flush_soon(owner, account_id)
        return self.get(owner, contact_id)

    def delete(self, owner: str, contact_id: str, if_match: int | None = None) -> None:
        with self._owned(owner, contact_id) as (session, row, book):
            if if_match is not None and if_match != row.rev:
                raise StaleWrite(f"contact {contact_id} changed; fetch it again and retry")
            account_id = book.account_id
            if row.href is None:  # never reached the server: forget it here
                session.execute(
                    delete(ContactOutboxEntry).where(ContactOutboxEntry.contact_id == row.id)
                )
                session.delete(row)
                return
            session.execute(
                delete(ContactOutboxEntry).where(ContactOutboxEntry.contact_id == row.id)
            )
            session.execute(delete(ContactPhone).where(ContactPhone.contact_id == row.id))
            row.deleted = True
            self._enqueue(session, row, book, "delete")
        self._flush_soon(owner, account_id)

    def duplicates(self, owner: str) -> list[Suggestion]:
        with self.db.session() as session:
            rows = session.execute(
                select(Contact.id, Contact.data).where(Contact.owner == owner, ~Contact.deleted)
            )
            items = [(cid, ContactFields(**data)) for cid, data in rows]
        return find_duplicates(items, self.cfg.default_region)

    def merge(self, owner: str, ids: list[str]) -> Contact:
        """Keep ``ids[0]`` with every distinct phone, e-mail and category; delete the others."""
        if len(set(ids)) != len(ids):
            raise BadRequest("ids must be distinct")
        rows = [self.get(owner, cid) for cid in ids]
        merged = merge_duplicates([ContactFields(**r.data) for r in rows], self.cfg.default_region)
        patch = ContactPatch(**merged.model_dump())
        kept = self.update(owner, ids[0], patch)
        for other in ids[1:]:
            self.delete(owner, other)
        return kept

    def export(self, owner: str) -> str:
        with self.db.session() as session:
            cards = session.scalars(
                select(Contact.vcard)
                .where(Contact.owner == owner, ~Contact.deleted)
                .order_by(Contact.fn, Contact.id)
            )
            return "".join(c if c.endswith("\n") else c + "\r\n" for c in cards)


def password_context(account_id: str) -> bytes:
    """What an account's sealed password is bound to (its account id), so a sealed value
    copied to another account does not open."""
    return f"contact-account:{account_id}:password".encode()
