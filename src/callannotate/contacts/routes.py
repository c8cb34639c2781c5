"""``/contacts``: the cached address books, CRUD with ETag/If-Match, duplicates, merge, sync,
and ``/contacts/accounts`` to connect CardDAV accounts. Every route is per owner: another
owner's ids answer 404.

Each contact's ``ETag`` is its local version (``"3"``); send it in ``If-Match`` on PATCH and
DELETE to get 412 instead of overwriting a newer copy. The service is synchronous (SQLAlchemy,
httpx) and runs in worker threads.
"""

from __future__ import annotations

import re
import threading
from typing import Annotated

import anyio
from fastapi import APIRouter, Depends, Header, Query, Response
from starlette.requests import HTTPConnection

from callannotate.api.deps import ReadPrincipal, WritePrincipal
from callannotate.api.errors import error_responses
from callannotate.config import Settings
from callannotate.contacts.schemas import (
    AccountCreate,
    AccountOut,
    BookOut,
    ConflictOut,
    ContactCreate,
    ContactFields,
    ContactOut,
    ContactPage,
    ContactPatch,
    DuplicateSuggestion,
    MatchReason,
    MergeRequest,
    SyncResult,
)
from callannotate.contacts.service import ContactsService, StaleWrite
from callannotate.db.contact_models import Contact, ContactAccount
from callannotate.db.engine import Database
from callannotate.errors import NotFound

router = APIRouter(prefix="/contacts", tags=["contacts"], responses=error_responses(404))

_lock = threading.Lock()
_ID = re.compile(r"^[0-9a-f]{32}$")
_VERSION = re.compile(r"^[0-9]{1,18}$")


def build_contacts_service(settings: Settings) -> ContactsService:
    """The service on the configured database, its schema upgraded first."""
    from callannotate.db.migrate import upgrade_database

    db = Database.from_settings(settings)
    upgrade_database(db)
    return ContactsService(settings, db)


def _service_for(conn: HTTPConnection) -> ContactsService:
    state = conn.app.state
    with _lock:
        service = getattr(state, "contacts_service", None)
        if service is None:
            service = build_contacts_service(state.settings)
            service.start_periodic_sync()  # when contacts.sync_interval_s > 0
            state.contacts_service = service
    assert isinstance(service, ContactsService)
    return service


async def get_contacts_service(conn: HTTPConnection) -> ContactsService:
    service = getattr(conn.app.state, "contacts_service", None)
    if isinstance(service, ContactsService):
        return service
    return await anyio.to_thread.run_sync(_service_for, conn)


ServiceDep = Annotated[ContactsService, Depends(get_contacts_service)]


def _check_id(contact_id: str) -> None:
    if not _ID.match(contact_id):
        raise NotFound(f"contact {contact_id} not found")


def _if_match(value: str | None) -> int | None:
    """The version named by ``If-Match`` (None for absent or ``*``); -1 when unparsable."""
    if value is None or value.strip() == "*":
        return None
    tag = value.split(",")[0].strip().removeprefix("W/").strip('"')
    return int(tag) if _VERSION.match(tag) else -1  # not str.isdigit: '²' is a digit too


def contact_out(row: Contact, stale: bool) -> ContactOut:
    return ContactOut(
        id=row.id,
        book_id=row.book_id,
        uid=row.uid,
        fields=ContactFields(**row.data),
        phones_e164=[],
        etag=f'"{row.rev}"',
        pending=row.pending,
        stale=stale,
        updated_at=row.updated_at,
    )


def _with_phones(service: ContactsService, out: ContactOut) -> ContactOut:
    from callannotate.contacts.normalize import normalize_phone

    region = service.cfg.default_region
    phones = [normalize_phone(p.value, region) for p in out.fields.phones]
    out.phones_e164 = list(dict.fromkeys(p for p in phones if p))
    return out


def _account_out(service: ContactsService, account: ContactAccount) -> AccountOut:
    books = [
        BookOut(
            id=b.id,
            url=b.url,
            display_name=b.display_name,
            sync_token=b.sync_token,
            contact_count=count,
        )
        for b, count in service.books(account.owner, account.id)
    ]
    return AccountOut(
        id=account.id,
        url=account.url,
        username=account.username,
        auth=account.auth,
        name=account.name,
        books=books,
        last_sync_at=account.last_sync_at,
        last_error=account.last_error,
        reachable=account.reachable and not service.breaker.is_open(account.id),
        pending_writes=service.pending_writes(account.owner, account.id),
    )


@router.get(
    "",
    response_model=ContactPage,
    summary="Search the cached contacts",
    responses=error_responses(400, 422),
)
async def list_contacts(
    principal: ReadPrincipal,
    service: ServiceDep,
    q: Annotated[str, Query(max_length=200, description="Name, organisation or e-mail")] = "",
    phone: Annotated[str, Query(max_length=64, description="Any notation")] = "",
    email: Annotated[str, Query(max_length=254)] = "",
    org: Annotated[str, Query(max_length=200)] = "",
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,  # as GET /audit: no 64-bit overflow
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> ContactPage:
    def run() -> ContactPage:
        rows, total = service.search(
            principal.id, q=q, phone=phone, email=email, org=org, offset=offset, limit=limit
        )
        stale = service.is_stale(principal.id)
        return ContactPage(
            items=[_with_phones(service, contact_out(r, stale)) for r in rows],
            total=total,
            offset=offset,
            limit=limit,
            stale=stale,
        )

    return await anyio.to_thread.run_sync(run)


@router.post(
    "",
    response_model=ContactOut,
    status_code=201,
    summary="Create a contact (pushed to the server now, or queued while it is down)",
    responses=error_responses(400, 422),
)
async def create_contact(
    body: ContactCreate, principal: WritePrincipal, service: ServiceDep, response: Response
) -> ContactOut:
    fields = ContactFields(**body.model_dump(exclude={"book_id"}))

    def run() -> ContactOut:
        row = service.create(principal.id, fields, body.book_id)
        return _with_phones(service, contact_out(row, service.is_stale(principal.id)))

    out = await anyio.to_thread.run_sync(run)
    response.headers["ETag"] = out.etag
    return out


@router.get(
    "/duplicates",
    response_model=list[DuplicateSuggestion],
    summary="Contacts that look like the same person, with the reasons",
)
async def duplicates(principal: ReadPrincipal, service: ServiceDep) -> list[DuplicateSuggestion]:
    def run() -> list[DuplicateSuggestion]:
        out = []
        for group in service.duplicates(principal.id):
            names = [service.get(principal.id, cid).fn for cid in group.contact_ids]
            out.append(
                DuplicateSuggestion(
                    contact_ids=group.contact_ids,
                    names=names,
                    reasons=[MatchReason(kind=k, value=v) for k, v in group.reasons],
                )
            )
        return out

    return await anyio.to_thread.run_sync(run)


@router.get(
    "/conflicts",
    response_model=list[ConflictOut],
    summary="Fields that were changed here and on the server, and which side won",
)
async def conflicts(principal: ReadPrincipal, service: ServiceDep) -> list[ConflictOut]:
    def run() -> list[ConflictOut]:
        return [
            ConflictOut(
                id=c.id,
                contact_id=c.contact_id,
                field=c.field,
                local_value=c.local_value,
                server_value=c.server_value,
                resolution=c.resolution,
                created_at=c.created_at,
            )
            for c in service.conflicts(principal.id)
        ]

    return await anyio.to_thread.run_sync(run)


@router.post(
    "/merge",
    response_model=ContactOut,
    summary="Merge contacts into the first one (every distinct phone and e-mail kept)",
    responses=error_responses(400, 422),
)
async def merge(body: MergeRequest, principal: WritePrincipal, service: ServiceDep) -> ContactOut:
    for contact_id in body.ids:
        _check_id(contact_id)

    def run() -> ContactOut:
        row = service.merge(principal.id, body.ids)
        return _with_phones(service, contact_out(row, service.is_stale(principal.id)))

    return await anyio.to_thread.run_sync(run)


@router.post(
    "/sync",
    response_model=list[SyncResult],
    summary="Replay queued writes and sync every connected account now",
)
async def sync(principal: WritePrincipal, service: ServiceDep) -> list[SyncResult]:
    return await anyio.to_thread.run_sync(service.sync_all, principal.id)


@router.post(
    "/accounts",
    response_model=AccountOut,
    status_code=201,
    summary="Connect a CardDAV account (discovers its address books, then syncs)",
    responses=error_responses(400, 409, 422),
)
async def connect_account(
    body: AccountCreate, principal: WritePrincipal, service: ServiceDep
) -> AccountOut:
    def run() -> AccountOut:
        account = service.connect(
            principal.id, body.url, body.username, body.password, body.auth, body.name
        )
        service.sync(principal.id, account.id)
        return _account_out(service, service.account(principal.id, account.id))

    return await anyio.to_thread.run_sync(run)


@router.get("/accounts", response_model=list[AccountOut], summary="Your connected accounts")
async def list_accounts(principal: ReadPrincipal, service: ServiceDep) -> list[AccountOut]:
    def run() -> list[AccountOut]:
        return [_account_out(service, a) for a in service.accounts(principal.id)]

    return await anyio.to_thread.run_sync(run)


@router.get("/accounts/{account_id}", response_model=AccountOut, summary="One connected account")
async def get_account(account_id: str, principal: ReadPrincipal, service: ServiceDep) -> AccountOut:
    _check_account(account_id)

    def run() -> AccountOut:
        return _account_out(service, service.account(principal.id, account_id))

    return await anyio.to_thread.run_sync(run)


@router.delete(
    "/accounts/{account_id}",
    status_code=204,
    summary="Disconnect an account (its cached contacts and unsent writes are dropped)",
)
async def delete_account(
    account_id: str, principal: WritePrincipal, service: ServiceDep
) -> Response:
    _check_account(account_id)
    await anyio.to_thread.run_sync(service.disconnect, principal.id, account_id)
    return Response(status_code=204)


def _check_account(account_id: str) -> None:
    if not _ID.match(account_id):
        raise NotFound(f"contacts account {account_id} not found")


@router.get("/{contact_id}", response_model=ContactOut, summary="One contact (ETag header)")
async def get_contact(
    contact_id: str, principal: ReadPrincipal, service: ServiceDep, response: Response
) -> ContactOut:
    _check_id(contact_id)

    def run() -> ContactOut:
        row = service.get(principal.id, contact_id)
        return _with_phones(service, contact_out(row, service.is_stale(principal.id)))

    out = await anyio.to_thread.run_sync(run)
    response.headers["ETag"] = out.etag
    return out


@router.patch(
    "/{contact_id}",
    response_model=ContactOut,
    summary="Change some fields (If-Match: 412 when the contact changed meanwhile)",
    responses=error_responses(400, 412, 422),
)
async def patch_contact(
    contact_id: str,
    body: ContactPatch,
    principal: WritePrincipal,
    service: ServiceDep,
    response: Response,
    if_match: Annotated[str | None, Header()] = None,
) -> ContactOut:
    _check_id(contact_id)
    version = _if_match(if_match)

    def run() -> ContactOut:
        if version == -1:
            raise StaleWrite("If-Match does not name a version of this contact")
        row = service.update(principal.id, contact_id, body, version)
        return _with_phones(service, contact_out(row, service.is_stale(principal.id)))

    out = await anyio.to_thread.run_sync(run)
    response.headers["ETag"] = out.etag
    return out


@router.delete(
    "/{contact_id}",
    status_code=204,
    summary="Delete a contact (If-Match: 412 when it changed meanwhile)",
    responses=error_responses(412),
)
async def delete_contact(
    contact_id: str,
    principal: WritePrincipal,
    service: ServiceDep,
    if_match: Annotated[str | None, Header()] = None,
) -> Response:
    _check_id(contact_id)
    version = _if_match(if_match)

    def run() -> None:
        if version == -1:
            raise StaleWrite("If-Match does not name a version of this contact")
        service.delete(principal.id, contact_id, version)

    await anyio.to_thread.run_sync(run)
    return Response(status_code=204)
