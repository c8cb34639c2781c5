"""Three-way merge of a contact edited here and on the server, and merging duplicates.

Policy for a field changed on both sides to different values (``contacts.conflict_policy``):
``server`` (default) keeps the server's value, ``client`` keeps ours. Either way each such field
is reported as a :class:`FieldConflict` and stored in ``contact_conflicts`` for review.
Lists (phones, e-mails, categories) are compared as whole values, so "both sides added a
phone" is a conflict resolved by the policy, like any other field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from callannotate.contacts.normalize import normalize_email, normalize_phone
from callannotate.contacts.schemas import ContactFields, Email, Phone

POLICIES = ("server", "client")


@dataclass(frozen=True)
class FieldConflict:
    field: str
    local: Any
    server: Any
    resolution: str  # "server" or "client"

    def local_text(self) -> str:
        return json.dumps(self.local, ensure_ascii=False)

    def server_text(self) -> str:
        return json.dumps(self.server, ensure_ascii=False)


def three_way(
    base: ContactFields, local: ContactFields, server: ContactFields, policy: str = "server"
) -> tuple[ContactFields, list[FieldConflict]]:
    """Merge field by field against ``base``; see the module doc for the policy."""
    if policy not in POLICIES:
        raise ValueError(f"conflict policy must be one of {POLICIES}")
    b, lo, s = base.model_dump(), local.model_dump(), server.model_dump()
    merged: dict[str, Any] = {}
    conflicts: list[FieldConflict] = []
    for name in ContactFields.model_fields:
        if lo[name] == b[name]:
            merged[name] = s[name]
        elif s[name] == b[name] or s[name] == lo[name]:
            merged[name] = lo[name]
        else:
            merged[name] = s[name] if policy == "server" else lo[name]
            conflicts.append(FieldConflict(name, lo[name], s[name], policy))
    return ContactFields(**merged), conflicts


def merge_duplicates(contacts: list[ContactFields], region: str = "RU") -> ContactFields:
    """One contact from several: the first one's values, empty fields filled from the others,
    every distinct phone (by E.164) and e-mail (case-insensitive) and category kept, distinct
    notes joined."""
    if not contacts:
        raise ValueError("nothing to merge")
    first = contacts[0].model_copy(deep=True)
    phones: list[Phone] = []
    seen_phones: set[str] = set()
    emails: list[Email] = []
    seen_emails: set[str] = set()
    categories: list[str] = []
    notes: list[str] = []
    for contact in contacts:
        for phone in contact.phones:
            key = normalize_phone(phone.value, region) or phone.value.strip()
            if key not in seen_phones:
                seen_phones.add(key)
                phones.append(phone)
        for email in contact.emails:
            key = normalize_email(email.value)
            if key not in seen_emails:
                seen_emails.add(key)
                emails.append(email)
        for category in contact.categories:
            if category not in categories:
                categories.append(category)
        if contact.note and contact.note not in notes:
            notes.append(contact.note)
        for name in ("fn", "family", "given", "additional", "prefix", "suffix", "org", "title"):
            if not getattr(first, name) and getattr(contact, name):
                setattr(first, name, getattr(contact, name))
    first.phones, first.emails, first.categories = phones, emails, categories
    first.note = "\n\n".join(notes)
    return first
