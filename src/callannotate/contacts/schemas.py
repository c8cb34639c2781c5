"""Typed shapes of a contact: the fields CallAnnotate reads and writes in a vCard, and the API
bodies built on them."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

#: Longest phone value kept (extensions and notes make real ones longer than a number).
MAX_PHONE = 256
#: Longest e-mail address (RFC 5321 path limit).
MAX_EMAIL = 254


class Phone(BaseModel):
    value: str = Field(
        ..., min_length=1, max_length=MAX_PHONE, description="As written by the user."
    )
    types: list[str] = Field(default_factory=list, description="vCard TYPE values, e.g. cell.")


class Email(BaseModel):
    value: str = Field(..., min_length=3, max_length=MAX_EMAIL)
    types: list[str] = Field(default_factory=list)


class ContactFields(BaseModel):
    """The vCard properties CallAnnotate understands; every other property is kept as is."""

    model_config = ConfigDict(extra="forbid")

    fn: str = Field("", max_length=500, description="Formatted name (FN).")
    family: str = Field("", max_length=200, description="N: family name.")
    given: str = Field("", max_length=200, description="N: given name.")
    additional: str = Field("", max_length=200, description="N: additional (patronymic).")
    prefix: str = Field("", max_length=100)
    suffix: str = Field("", max_length=100)
    phones: list[Phone] = Field(default_factory=list)
    emails: list[Email] = Field(default_factory=list)
    org: str = Field("", max_length=500, description="ORG; units joined with ';'.")
    title: str = Field("", max_length=500)
    note: str = Field("", max_length=20000)
    categories: list[str] = Field(default_factory=list)

    def display_name(self) -> str:
        if self.fn:
            return self.fn
        return " ".join(p for p in (self.prefix, self.given, self.additional, self.family) if p)


class ContactPatch(BaseModel):
    """A partial update: only the fields present are changed."""

    model_config = ConfigDict(extra="forbid")

    fn: str | None = Field(None, max_length=500)
    family: str | None = Field(None, max_length=200)
    given: str | None = Field(None, max_length=200)
    additional: str | None = Field(None, max_length=200)
    prefix: str | None = Field(None, max_length=100)
    suffix: str | None = Field(None, max_length=100)
    phones: list[Phone] | None = None
    emails: list[Email] | None = None
    org: str | None = Field(None, max_length=500)
    title: str | None = Field(None, max_length=500)
    note: str | None = Field(None, max_length=20000)
    categories: list[str] | None = None


class ContactCreate(ContactFields):
    book_id: str | None = Field(
        None, description="Address book to create it in (default: the first one you connected)."
    )


class ContactOut(BaseModel):
    id: str
    book_id: str
    uid: str
    fields: ContactFields
    phones_e164: list[str]
    etag: str = Field(..., description="Local version; send it back in If-Match.")
    pending: bool = Field(..., description="A change waits in the outbox for the server.")
    stale: bool = Field(..., description="The address-book server is unreachable: cached copy.")
    updated_at: datetime


class ContactPage(BaseModel):
    items: list[ContactOut]
    total: int
    offset: int
    limit: int
    stale: bool


class AccountCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(..., min_length=8, max_length=2000, description="Server or address-book URL.")
    username: str = Field(..., min_length=1, max_length=200)
    password: str = Field(..., min_length=1, max_length=2000, description="Stored encrypted.")
    auth: str = Field("basic", pattern="^(basic|digest)$")
    name: str = Field("", max_length=200)


class BookOut(BaseModel):
    id: str
    url: str
    display_name: str
    sync_token: str | None
    contact_count: int


class AccountOut(BaseModel):
    id: str
    url: str
    username: str
    auth: str
    name: str
    books: list[BookOut]
    last_sync_at: datetime | None
    last_error: str | None
    reachable: bool
    pending_writes: int


class MatchReason(BaseModel):
    kind: str = Field(..., description="phone | name | email")
    value: str = Field(..., description="The normalised value both contacts share.")


class DuplicateSuggestion(BaseModel):
    contact_ids: list[str]
    names: list[str]
    reasons: list[MatchReason]


class MergeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ids: list[str] = Field(..., min_length=2, max_length=50, description="First one is kept.")


class SyncBookResult(BaseModel):
    book_id: str
    mode: str = Field(..., description="sync-collection | etag")
    changed: int
    removed: int
    skipped: int
    requests: int


class SyncResult(BaseModel):
    account_id: str
    ok: bool
    error: str | None = None
    outbox_replayed: int = 0
    outbox_left: int = 0
    conflicts: int = 0
    books: list[SyncBookResult] = Field(default_factory=list)


class ConflictOut(BaseModel):
    id: str
    contact_id: str
    field: str = Field(..., description="Field changed on both sides ('*' for a whole write).")
    local_value: str = Field(..., description="Our value (JSON).")
    server_value: str = Field(..., description="The server's value (JSON).")
    resolution: str = Field(..., description="server | client | rejected")
    created_at: datetime
