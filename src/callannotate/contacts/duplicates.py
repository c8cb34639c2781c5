"""Duplicate suggestions over an address book: by phone (E.164) first, then name, then e-mail.

Contacts sharing a key are linked; linked contacts form one suggestion (a connected group),
which lists every shared key as a reason. Runs in O(n) dictionary work plus the group sizes.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from callannotate.contacts.normalize import name_key, normalize_email, normalize_phone
from callannotate.contacts.schemas import ContactFields

KIND_ORDER = {"phone": 0, "name": 1, "email": 2}


@dataclass
class Suggestion:
    contact_ids: list[str]
    reasons: list[tuple[str, str]] = field(default_factory=list)  # (kind, value)


def _keys(fields: ContactFields, region: str) -> Iterable[tuple[str, str]]:
    for phone in fields.phones:
        e164 = normalize_phone(phone.value, region)
        if e164:
            yield ("phone", e164)
    key = name_key(fields)
    if key:
        yield ("name", key)
    for email in fields.emails:
        yield ("email", normalize_email(email.value))


def find_duplicates(
    contacts: Iterable[tuple[str, ContactFields]], region: str = "RU"
) -> list[Suggestion]:
    """Groups of contact ids that look like the same person, strongest reason first."""
    buckets: dict[tuple[str, str], list[str]] = defaultdict(list)
    for contact_id, fields in contacts:
        for key in set(_keys(fields, region)):
            buckets[key].append(contact_id)
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        root = x
        while parent.get(root, root) != root:
            root = parent[root]
        while parent.get(x, x) != root:
            parent[x], x = root, parent[x]
        return root

    shared = {k: ids for k, ids in buckets.items() if len(ids) > 1}
    for ids in shared.values():
        for other in ids[1:]:
            a, b = find(ids[0]), find(other)
            if a != b:
                parent[b] = a
    groups: dict[str, Suggestion] = {}
    for key, ids in shared.items():
        root = find(ids[0])
        group = groups.setdefault(root, Suggestion(contact_ids=[]))
        for contact_id in ids:
            if contact_id not in group.contact_ids:
                group.contact_ids.append(contact_id)
        group.reasons.append(key)
    out = list(groups.values())
    for group in out:
        group.reasons.sort(key=lambda r: (KIND_ORDER[r[0]], r[1]))
        group.contact_ids.sort()
    out.sort(key=lambda g: (KIND_ORDER[g.reasons[0][0]], g.contact_ids))
    return out
