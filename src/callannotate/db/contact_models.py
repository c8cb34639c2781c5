"""Tables of the contacts cache (CardDAV accounts, address books, contacts, outbox, conflicts).

Imported at the end of :mod:`callannotate.db.models` so ``Base.metadata`` holds them; the
migration is ``0003_contacts``. Every row carries ``owner`` (the principal id).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, ForeignKey, Index, Integer, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from callannotate.db.models import Base
from callannotate.db.types import UtcDateTime, utcnow


class ContactAccount(Base):
    """A connected CardDAV account; the password is sealed (never stored or returned plain)."""

    __tablename__ = "contact_accounts"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64), index=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    url: Mapped[str] = mapped_column(String(2000))
    username: Mapped[str] = mapped_column(String(200))
    auth: Mapped[str] = mapped_column(String(16), default="basic")
    password_sealed: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    last_sync_at: Mapped[datetime | None] = mapped_column(UtcDateTime, default=None)
    last_error: Mapped[str | None] = mapped_column(String(500), default=None)
    reachable: Mapped[bool] = mapped_column(Boolean, default=True)


class ContactBook(Base):
    """One address book of an account, with its sync token (None: next sync is a full one)."""

    __tablename__ = "contact_books"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    account_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("contact_accounts.id", ondelete="CASCADE"), index=True
    )
    owner: Mapped[str] = mapped_column(String(64), index=True)
    url: Mapped[str] = mapped_column(String(2000))
    display_name: Mapped[str] = mapped_column(String(500), default="")
    sync_token: Mapped[str | None] = mapped_column(String(2000), default=None)
    supports_sync: Mapped[bool] = mapped_column(Boolean, default=True)


class Contact(Base):
    """A cached contact. ``vcard`` is the local copy, ``base_vcard`` the last server copy
    (the base of a three-way merge), ``rev`` the local version used as the API's ETag."""

    __tablename__ = "contacts"
    __table_args__ = (
        Index("ix_contacts_book_href", "book_id", "href"),
        Index("ix_contacts_owner_fn", "owner", "fn"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64), index=True)
    book_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("contact_books.id", ondelete="CASCADE")
    )
    href: Mapped[str | None] = mapped_column(String(2000), default=None)
    uid: Mapped[str] = mapped_column(String(255))
    server_etag: Mapped[str | None] = mapped_column(String(255), default=None)
    vcard: Mapped[str] = mapped_column(Text)
    base_vcard: Mapped[str | None] = mapped_column(Text, default=None)
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    fn: Mapped[str] = mapped_column(String(500), default="")
    search: Mapped[str] = mapped_column(Text, default="")
    name_key: Mapped[str | None] = mapped_column(String(500), default=None)
    rev: Mapped[int] = mapped_column(Integer, default=1)
    pending: Mapped[bool] = mapped_column(Boolean, default=False)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow, onupdate=utcnow)


class ContactPhone(Base):
    """A contact's phone number in E.164: the index behind caller/callee lookup."""

    __tablename__ = "contact_phones"
    __table_args__ = (Index("ix_contact_phones_owner_e164", "owner", "e164"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    contact_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("contacts.id", ondelete="CASCADE"), index=True
    )
    owner: Mapped[str] = mapped_column(String(64))
    e164: Mapped[str] = mapped_column(String(32))


class ContactOutboxEntry(Base):
    """A write waiting for the server, replayed in ``seq`` order (durable across restarts)."""

    __tablename__ = "contact_outbox"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    owner: Mapped[str] = mapped_column(String(64), index=True)
    account_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("contact_accounts.id", ondelete="CASCADE"), index=True
    )
    contact_id: Mapped[str] = mapped_column(String(32))
    op: Mapped[str] = mapped_column(String(8))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(String(500), default=None)


class ContactConflict(Base):
    """A field changed both here and on the server; ``resolution`` says which side won."""

    __tablename__ = "contact_conflicts"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64), index=True)
    contact_id: Mapped[str] = mapped_column(String(32))
    field: Mapped[str] = mapped_column(String(64))
    local_value: Mapped[str] = mapped_column(Text)
    server_value: Mapped[str] = mapped_column(Text)
    resolution: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
