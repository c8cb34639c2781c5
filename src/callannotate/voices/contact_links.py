"""A voice linked to an address-book contact: the checks behind ``contact_id`` on voices.

A voice may only name a contact of its owner: an unknown id, a deleted contact and another
user's contact all answer the same ``422`` ("not one of your contacts"), so the answer never
tells whether someone else's contact exists. Enrolling a speaker from a job can also create the
contact in the same request (``contact``: the contact's fields; ``fn`` defaults to the voice's
name); it goes to the owner's first connected address book unless ``book_id`` says otherwise.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import anyio
from starlette.requests import HTTPConnection

from callannotate.contacts.schemas import ContactFields
from callannotate.errors import NotFound, Unprocessable
from callannotate.voices.schemas import NewContact

if TYPE_CHECKING:
    from callannotate.contacts.service import ContactsService

_ID = re.compile(r"^[0-9a-f]{32}$")


async def _service(conn: HTTPConnection) -> ContactsService:
    from callannotate.contacts.routes import get_contacts_service

    return await get_contacts_service(conn)


async def check_contact(conn: HTTPConnection, owner: str, contact_id: str | None) -> str | None:
    """``contact_id`` stripped (None when blank) once it is known to be one of ``owner``'s
    contacts; ``Unprocessable`` otherwise."""
    cid = (contact_id or "").strip()
    if not cid:
        return None
    refused = Unprocessable(f"contact_id {cid!r} is not one of your contacts")
    if not _ID.match(cid):
        raise refused
    service = await _service(conn)
    try:
        await anyio.to_thread.run_sync(service.get, owner, cid)
    except NotFound as exc:
        raise refused from exc
    return cid


async def create_contact(conn: HTTPConnection, owner: str, contact: NewContact, name: str) -> str:
    """Create ``contact`` for ``owner`` (named ``name`` unless it has a name); its id."""
    fields = contact.model_dump(exclude={"book_id"})
    if not contact.display_name():
        fields["fn"] = name
    service = await _service(conn)
    row = await anyio.to_thread.run_sync(
        lambda: service.create(owner, ContactFields(**fields), contact.book_id)
    )
    return str(row.id)
