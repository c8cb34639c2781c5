"""Speakers become people: put address-book contacts on a finished job's speakers.

Runs at the jobs layer once the pipeline returned its annotation and before the result is
stored (the pipeline knows nothing about contacts or databases):

* a speaker whose voice was recognised (``voice.accepted``) and whose voice is linked to a
  contact (``voice.contact_id``) gets ``contact`` (id, name, organization, phone);
* each of the job's numbers (``caller``, ``callee``) is looked up in the owner's contacts and
  listed in ``annotation.call``; the speaker it points to gets ``expected_contact`` with
  ``match``: ``confirmed`` (that speaker's voice is linked to the contact, or carries the same
  name), ``contradicted`` (the voice was recognised as someone else) or ``unverified`` (no
  voice recognised).

Which speaker a number points to, in order: the speaker whose voice confirms it; on
per-channel recordings with ``call.caller_channel`` set, the speaker on the caller's channel
(the callee: the other channel); otherwise by elimination: the only speaker left whose voice
was not recognised (``unverified``), or the only speaker left at all (``contradicted``). When
that is still ambiguous (two unknown voices) the number stays in ``annotation.call`` with
``speaker: null`` and no speaker carries it.

:func:`attach_contacts` is the pure merge (unit-tested); :func:`resolve_result` does the
lookups and never fails a job: without contacts, or when the database cannot be read, the
result is stored with what could be found and a warning is logged.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from pydantic import ValidationError

from callannotate.contacts.normalize import name_key, normalize_phone
from callannotate.contacts.schemas import ContactFields
from callannotate.errors import NotFound, Unprocessable
from callannotate.pipeline.types import (
    Annotation,
    CallParty,
    ContactRef,
    ExpectedContact,
    Speaker,
)

if TYPE_CHECKING:
    from callannotate.config import Settings
    from callannotate.contacts.service import ContactsService
    from callannotate.db.contact_models import Contact
    from callannotate.jobs.models import Job

log = logging.getLogger(__name__)

Role = Literal["caller", "callee"]
ROLES: tuple[Role, Role] = ("caller", "callee")
MAX_NUMBER = 64


@dataclass(frozen=True)
class KnownContact:
    """What the merge needs of a contact."""

    id: str
    name: str
    organization: str | None = None
    phones: tuple[str, ...] = ()  # E.164

    def ref(self, phone: str | None = None) -> ContactRef:
        return ContactRef(
            id=self.id,
            name=self.name,
            organization=self.organization,
            phone=phone or (self.phones[0] if self.phones else None),
        )


@dataclass(frozen=True)
class PartyLookup:
    """One of the job's numbers and the contacts that have it."""

    role: Role
    number: str  # E.164
    contacts: Sequence[KnownContact] = field(default_factory=tuple)


# ----------------------------------------------------------------------------- numbers


def normalize_number(value: str, region: str, what: str) -> str:
    """E.164 of a ``caller``/``callee`` value; ``Unprocessable`` (422) when it is no number."""
    raw = value.strip()
    if len(raw) > MAX_NUMBER:
        raise Unprocessable(f"{what} is longer than {MAX_NUMBER} characters")
    e164 = normalize_phone(raw, region)
    if e164 is None:
        raise Unprocessable(f"{what} is not a phone number: {raw!r}")
    return e164


def numbers_from_filename(filename: str, pattern: str | None, region: str) -> dict[Role, str]:
    """``caller``/``callee`` read from a file name with the configured pattern (named groups
    ``caller``, ``callee``). A name that does not match, or a group that is not a phone
    number, gives nothing for it (logged): a recorder's odd file name never refuses a job."""
    if not pattern:
        return {}
    found = re.search(pattern, filename)
    if found is None:
        return {}
    out: dict[Role, str] = {}
    groups = found.groupdict()
    for role in ROLES:
        value = groups.get(role)
        if not value:
            continue
        e164 = normalize_phone(value, region)
        if e164 is None:
            log.info("file name group is not a phone number", extra={"role": role})
            continue
        out[role] = e164
    return out


def call_numbers(
    fields: Mapping[str, str], filename: str, settings: Settings
) -> tuple[str | None, str | None]:
    """The job's ``(caller, callee)`` in E.164: the form fields when given (validated, 422),
    else what the file name pattern yields."""
    region = settings.contacts.default_region
    given: dict[Role, str] = {}
    for role in ROLES:
        value = fields.get(role, "").strip()
        if value:
            given[role] = normalize_number(value, region, role)
    from_name = numbers_from_filename(filename, settings.call.filename_pattern, region)
    caller = given.get("caller") or from_name.get("caller")
    callee = given.get("callee") or from_name.get("callee")
    return caller, callee


# ----------------------------------------------------------------------------- the merge


def _recognised(speaker: Speaker) -> bool:
    return speaker.voice is not None and speaker.voice.accepted


def _confirms(speaker: Speaker, contact: KnownContact) -> bool:
    """The speaker's voice is this contact: linked to it, or enrolled under the same name."""
    if not _recognised(speaker):
        return False
    if speaker.contact is not None:
        return speaker.contact.id == contact.id
    voice = speaker.voice
    assert voice is not None
    if voice.contact_id:  # linked to a contact we could not read: not this one
        return voice.contact_id == contact.id
    key = name_key(ContactFields(fn=voice.name or ""))
    return key is not None and key == name_key(ContactFields(fn=contact.name))


def _by_channel(
    speakers: Sequence[Speaker], role: Role, caller_channel: int | None
) -> Speaker | None:
    if caller_channel is None:
        return None
    mine = [
        s
        for s in speakers
        if s.channel is not None and (s.channel == caller_channel) == (role == "caller")
    ]
    return mine[0] if len(mine) == 1 else None


def _by_elimination(candidates: Sequence[Speaker]) -> Speaker | None:
    unknown = [s for s in candidates if not _recognised(s)]
    if len(unknown) == 1:
        return unknown[0]
    if not unknown and len(candidates) == 1:
        return candidates[0]
    return None


def attach_contacts(
    annotation: Annotation,
    voice_contacts: Mapping[str, KnownContact],
    parties: Sequence[PartyLookup],
    *,
    caller_channel: int | None = None,
) -> Annotation:
    """A copy of ``annotation`` with ``contact``/``expected_contact`` on its speakers and
    ``call`` listing ``parties`` (pure: the lookups are done by the caller).

    ``voice_contacts`` maps contact ids (as linked on voices) to the contacts found.
    """
    speakers, call = merge_speakers(
        annotation.speakers, voice_contacts, parties, caller_channel=caller_channel
    )
    # only the speakers and ``call`` change; the (large) rest is shared
    return annotation.model_copy(update={"speakers": speakers, "call": call})


def merge_speakers(
    original: Sequence[Speaker],
    voice_contacts: Mapping[str, KnownContact],
    parties: Sequence[PartyLookup],
    *,
    caller_channel: int | None = None,
) -> tuple[list[Speaker], list[CallParty]]:
    """The speakers (copies) with their contacts, and the ``call`` list: the merge itself."""
    speakers = [s.model_copy() for s in original]
    for speaker in speakers:
        speaker.contact = None
        speaker.expected_contact = None
        voice = speaker.voice
        if voice is not None and voice.accepted and voice.contact_id:
            known = voice_contacts.get(voice.contact_id)
            if known is not None:
                speaker.contact = known.ref()

    claimed: dict[str, Role] = {}
    chosen: dict[Role, tuple[Speaker, KnownContact]] = {}
    # 1. numbers confirmed by a recognised voice
    for party in parties:
        for speaker in speakers:
            if speaker.label in claimed:
                continue
            hit = next((c for c in party.contacts if _confirms(speaker, c)), None)
            if hit is not None:
                claimed[speaker.label] = party.role
                chosen[party.role] = (speaker, hit)
                break
    # 2. the others: by channel, else by elimination
    for party in parties:
        if party.role in chosen or not party.contacts:
            continue
        candidates = [s for s in speakers if s.label not in claimed]
        target = _by_channel(candidates, party.role, caller_channel)
        if target is None:
            target = _by_elimination(candidates)
        if target is not None:
            claimed[target.label] = party.role
            chosen[party.role] = (target, party.contacts[0])

    call: list[CallParty] = []
    for party in parties:
        pick = chosen.get(party.role)
        if pick is not None:
            speaker, contact = pick
            if _confirms(speaker, contact):
                match: Literal["confirmed", "contradicted", "unverified"] = "confirmed"
            elif _recognised(speaker):
                match = "contradicted"
            else:
                match = "unverified"
            speaker.expected_contact = ExpectedContact(
                **contact.ref(party.number).model_dump(), role=party.role, match=match
            )
        call.append(
            CallParty(
                role=party.role,
                number=party.number,
                contacts=[c.ref(party.number) for c in party.contacts],
                speaker=pick[0].label if pick is not None else None,
            )
        )
    return speakers, call


# ----------------------------------------------------------------------------- lookups


def known_contact(row: Contact, region: str) -> KnownContact:
    fields = ContactFields(**row.data)
    phones = (normalize_phone(p.value, region) for p in fields.phones)
    return KnownContact(
        id=row.id,
        name=fields.display_name() or row.fn,
        organization=fields.org or None,
        phones=tuple(dict.fromkeys(p for p in phones if p)),
    )


_SERVICES: dict[str, ContactsService] = {}
_SERVICES_LOCK = threading.Lock()


def contacts_service(settings: Settings) -> ContactsService:
    """One contacts service per database for this process (schema upgraded once)."""
    from callannotate.contacts.routes import build_contacts_service
    from callannotate.db.engine import database_url

    key = database_url(settings)
    with _SERVICES_LOCK:
        service = _SERVICES.get(key)
        if service is None:
            service = build_contacts_service(settings)
            _SERVICES[key] = service
        return service


def _lookup(
    service: ContactsService, owner: str, speakers: Sequence[Speaker], numbers: Mapping[Role, str]
) -> tuple[dict[str, KnownContact], list[PartyLookup]]:
    region = service.cfg.default_region
    voice_contacts: dict[str, KnownContact] = {}
    for speaker in speakers:
        cid = speaker.voice.contact_id if speaker.voice is not None else None
        if not cid or cid in voice_contacts:
            continue
        try:
            voice_contacts[cid] = known_contact(service.get(owner, cid), region)
        except NotFound:
            log.warning(
                "voice linked to a contact that no longer exists",
                extra={"contact_id": cid, "speaker": speaker.label},
            )
    parties = []
    for role in ROLES:
        number = numbers.get(role)
        if number:
            rows = sorted(service.lookup_phone(owner, number), key=lambda r: (r.fn, r.id))
            parties.append(PartyLookup(role, number, [known_contact(r, region) for r in rows]))
    return voice_contacts, parties


def resolve_result(
    settings: Settings, job: Job, result: bytes, service: ContactsService | None = None
) -> bytes:
    """``result`` (the annotation JSON) with contacts on its speakers; unchanged when it is
    not an annotation or there is nothing to look up. Never raises: a failed lookup is
    logged and the job keeps what could be found (at least its numbers in ``call``)."""
    numbers: dict[Role, str] = {}
    if job.caller:
        numbers["caller"] = job.caller
    if job.callee:
        numbers["callee"] = job.callee
    # Only the speakers are read and rewritten: validating a whole long annotation would
    # cost more than the lookups (benchmarks/speaker_contacts.py).
    try:
        doc = json.loads(result)
        if not isinstance(doc, dict) or "recording" not in doc:
            return result  # not an annotation (a test runner's result): nothing to do
        speakers = [Speaker.model_validate(s) for s in doc.get("speakers", [])]
    except (ValueError, TypeError, ValidationError):
        return result
    linked = any(s.voice is not None and s.voice.contact_id for s in speakers)
    if not numbers and not linked:
        return result
    try:
        svc = service or contacts_service(settings)
        voice_contacts, parties = _lookup(svc, job.owner, speakers, numbers)
    except Exception as exc:  # contacts are a bonus: the job completes without them
        log.warning(
            "contacts lookup failed; speakers keep their labels",
            extra={"job_id": job.id, "reason": f"{type(exc).__name__}: {exc}"[:300]},
        )
        voice_contacts = {}
        parties = [PartyLookup(role, number) for role, number in numbers.items()]
    merged, call = merge_speakers(
        speakers, voice_contacts, parties, caller_channel=settings.call.caller_channel
    )
    doc["speakers"] = [s.model_dump(mode="json") for s in merged]
    doc["call"] = [c.model_dump(mode="json") for c in call]
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()
