"""vCard 3.0 / 4.0 <-> :class:`ContactFields`, keeping every property we do not understand.

``parse_vcard`` reads FN, N, TEL (with TYPE), EMAIL, ORG, TITLE, NOTE, UID and CATEGORIES.
``render_vcard`` writes them back into the original card (``base``): only those properties are
replaced, so PHOTO, ADR, X-* properties, grouped labels and parameters survive a round trip.
"""

from __future__ import annotations

import uuid
from typing import Any

import vobject

from callannotate.contacts.schemas import MAX_EMAIL, MAX_PHONE, ContactFields, Email, Phone

MANAGED = ("FN", "N", "TEL", "EMAIL", "ORG", "TITLE", "NOTE", "CATEGORIES")
MAX_VCARD_BYTES = 1_000_000


class VCardError(ValueError):
    """The text is not a usable vCard (the reason is the message)."""


def _types(prop: Any) -> list[str]:
    out: list[str] = []
    for raw in prop.params.get("TYPE", []):
        for part in str(raw).split(","):
            part = part.strip().lower()
            if part and part not in out:
                out.append(part)
    return out


def _text(prop: Any) -> str:
    value = prop.value
    if isinstance(value, list):
        return ";".join(str(v) for v in value if str(v))
    return str(value).strip()


def _tel_value(prop: Any) -> str:
    """A TEL property's number as :class:`Phone` holds it (``tel:`` URI prefix dropped)."""
    value = _text(prop)
    if value.lower().startswith("tel:"):
        value = value[4:]
    return value[:MAX_PHONE]


def _email_value(prop: Any) -> str:
    value = _text(prop)
    if value.lower().startswith("mailto:"):
        value = value[7:]
    return value[:MAX_EMAIL]


def _parse_component(text: str) -> Any:
    if len(text.encode("utf-8", "replace")) > MAX_VCARD_BYTES:
        raise VCardError(f"vCard larger than {MAX_VCARD_BYTES} bytes")
    try:
        card = vobject.readOne(text)
    except Exception as exc:  # vobject raises ParseError, ValueError, IndexError...
        raise VCardError(f"unparsable vCard: {exc}") from exc
    if getattr(card, "name", "").upper() != "VCARD":
        raise VCardError("not a VCARD component")
    return card


def parse_vcard(text: str) -> tuple[str, ContactFields]:
    """``(uid, fields)`` of one vCard; :class:`VCardError` when it cannot be used."""
    card = _parse_component(text)
    version = ""
    uid = ""
    fields: dict[str, Any] = {"phones": [], "emails": [], "categories": []}
    try:
        for prop in card.getChildren():
            name = prop.name.upper()
            if name == "VERSION":
                version = str(prop.value).strip()
            elif name == "UID":
                uid = str(prop.value).strip()
            elif name == "FN":
                fields["fn"] = _text(prop)
            elif name == "N":
                n = prop.value
                if isinstance(n, vobject.vcard.Name):
                    fields["family"] = _join(n.family)
                    fields["given"] = _join(n.given)
                    fields["additional"] = _join(n.additional)
                    fields["prefix"] = _join(n.prefix)
                    fields["suffix"] = _join(n.suffix)
                else:
                    fields["family"] = str(n)
            elif name == "TEL":
                value = _tel_value(prop)
                if value:
                    fields["phones"].append(Phone(value=value, types=_types(prop)))
            elif name == "EMAIL":
                value = _email_value(prop)
                if len(value) >= 3:
                    fields["emails"].append(Email(value=value, types=_types(prop)))
            elif name == "ORG":
                fields["org"] = _text(prop)
            elif name == "TITLE":
                fields["title"] = _text(prop)
            elif name == "NOTE":
                fields["note"] = _text(prop)
            elif name == "CATEGORIES":
                values = prop.value if isinstance(prop.value, list) else str(prop.value).split(",")
                for c in values:
                    c = str(c).strip()
                    if c and c not in fields["categories"]:
                        fields["categories"].append(c)
        parsed = ContactFields(**fields)
    except VCardError:
        raise
    except Exception as exc:  # a property vobject could not decode, a value too long
        raise VCardError(f"bad property: {exc}") from exc
    if version not in ("3.0", "4.0", "2.1"):
        raise VCardError(f"unsupported VERSION {version or '(missing)'}")
    if not uid:
        raise VCardError("no UID")
    if not parsed.display_name():
        raise VCardError("neither FN nor N")
    return uid, parsed


def _join(value: Any) -> str:
    if isinstance(value, list):
        return " ".join(str(v) for v in value if str(v))
    return str(value or "")


def new_uid() -> str:
    return str(uuid.uuid4())


def with_uid(text: str) -> str:
    """``text`` (one card of :func:`split_vcards`) with a new ``UID`` line when it has none:
    UID is optional in a .vcf file (phones export cards without it), CardDAV needs one."""
    try:
        card = _parse_component(text)
    except VCardError:
        return text  # parse_vcard says why
    if str(getattr(getattr(card, "uid", None), "value", "") or "").strip():
        return text
    lines = [line for line in text.split("\r\n") if line.strip().upper() != "UID:"]
    return "\r\n".join([lines[0], f"UID:{new_uid()}", *lines[1:]])


def render_vcard(
    fields: ContactFields, *, uid: str, base: str | None = None, version: str = "3.0"
) -> str:
    """The vCard text for ``fields``: ``base`` with the managed properties replaced, or new."""
    kept: dict[tuple[str, str], list[Any]] = {}  # the base's TEL / EMAIL lines by value
    if base:
        card = _parse_component(base)
        for prop in card.getChildren():
            name = prop.name.upper()
            if name in ("TEL", "EMAIL"):
                value = _tel_value(prop) if name == "TEL" else _email_value(prop)
                kept.setdefault((name, value), []).append(prop)
        for name in MANAGED:
            key = name.lower()
            while key in card.contents:
                del card.contents[key]
        if "uid" not in card.contents:
            card.add("uid").value = uid
    else:
        card = vobject.vCard()
        card.add("version").value = version
        card.add("uid").value = uid
    version = str(card.version.value) if "version" in card.contents else version
    card.add("fn").value = fields.display_name()
    card.add("n").value = vobject.vcard.Name(
        family=fields.family,
        given=fields.given,
        additional=fields.additional,
        prefix=fields.prefix,
        suffix=fields.suffix,
    )
    for name, value, types in [
        *(("TEL", p.value, p.types) for p in fields.phones),
        *(("EMAIL", e.value, e.types) for e in fields.emails),
    ]:
        _add_kept(card, kept.get((name, value)), name, value, types)
    if fields.org:
        card.add("org").value = fields.org.split(";")
    if fields.title:
        card.add("title").value = fields.title
    if fields.note:
        card.add("note").value = fields.note
    if fields.categories:
        card.add("categories").value = list(fields.categories)
    text: str = card.serialize()
    return text


def _add_kept(
    card: Any, originals: list[Any] | None, name: str, value: str, types: list[str]
) -> None:
    """Add a TEL / EMAIL line: the base's own line of that value when there is one (its
    group, ``PREF``, ``VALUE=uri`` and full text kept), with ``types`` as its TYPE."""
    if originals:
        prop = originals.pop(0)
        card.add(prop)
        if _types(prop) != types:
            prop.params.pop("TYPE", None)
            if types:
                prop.params["TYPE"] = list(types)
        return
    prop = card.add(name.lower())
    prop.value = value
    if types:
        prop.params["TYPE"] = list(types)


def split_vcards(text: str) -> list[str]:
    """The individual ``BEGIN:VCARD ... END:VCARD`` blocks of a .vcf file (unparsed)."""
    cards: list[str] = []
    current: list[str] = []
    inside = False
    for line in text.replace("\r\n", "\n").split("\n"):
        upper = line.strip().upper()
        if upper == "BEGIN:VCARD":
            inside, current = True, [line]
        elif upper == "END:VCARD" and inside:
            current.append(line)
            cards.append("\r\n".join(current) + "\r\n")
            inside = False
        elif inside:
            current.append(line)
    return cards
