"""Unit tests beside the real-server ones: vCard parsing, normalising, duplicates, merging,
and client behaviours no local server shows (Digest, expired tokens)."""

from __future__ import annotations

import httpx
import pytest

from callannotate.contacts.davclient import (
    CardDAVClient,
    PreconditionFailed,
    SyncTokenInvalid,
    Unreachable,
    member_href,
)
from callannotate.contacts.duplicates import find_duplicates
from callannotate.contacts.merge import merge_duplicates, three_way
from callannotate.contacts.normalize import name_key, normalize_phone
from callannotate.contacts.schemas import ContactFields, Email, Phone
from callannotate.contacts.vcard import VCardError, parse_vcard, render_vcard, split_vcards

V4 = (
    "BEGIN:VCARD\r\nVERSION:4.0\r\nUID:abc\r\nFN:Иван Петров\r\n"
    "N:Петров;Иван;Сергеевич;;\r\n"
    "TEL;TYPE=cell,voice;VALUE=uri:tel:+7-916-123-45-67\r\n"
    "TEL;TYPE=work:8 (916) 123-45-67\r\nEMAIL;TYPE=work:ivan@example.com\r\n"
    "ORG:Acme;Sales\r\nTITLE:Boss\r\nCATEGORIES:vip,client\r\nNOTE:line1\\nline2\\, comma\r\n"
    "X-CUSTOM;X-P=1:keep me\r\nitem1.X-ABLabel:label\r\nPHOTO;VALUE=uri:https://x.test/p.jpg\r\n"
    "END:VCARD\r\n"
)


def test_parse_vcard_4() -> None:
    uid, f = parse_vcard(V4)
    assert uid == "abc"
    assert (f.fn, f.family, f.given, f.additional) == ("Иван Петров", "Петров", "Иван", "Сергеевич")
    assert [(p.value, p.types) for p in f.phones] == [
        ("+7-916-123-45-67", ["cell", "voice"]),
        ("8 (916) 123-45-67", ["work"]),
    ]
    assert f.emails == [Email(value="ivan@example.com", types=["work"])]
    assert (f.org, f.title, f.categories) == ("Acme;Sales", "Boss", ["vip", "client"])
    assert f.note == "line1\nline2, comma"


@pytest.mark.parametrize("version", ["3.0", "4.0"])
def test_round_trip_keeps_unknown_properties(version: str) -> None:
    base = V4.replace("VERSION:4.0", f"VERSION:{version}")
    _, fields = parse_vcard(base)
    fields.title = "CEO"
    fields.phones.append(Phone(value="+1 650 253 0000", types=["home"]))
    out = render_vcard(fields, uid="abc", base=base)
    assert f"VERSION:{version}" in out
    for kept in ("X-CUSTOM;X-P=1:keep me", "item1.X-ABLABEL:label", "PHOTO;VALUE=uri:"):
        assert kept in out
    uid, again = parse_vcard(out)
    assert uid == "abc" and again == fields


def test_new_vcard_is_valid_3_0() -> None:
    fields = ContactFields(given="Anna", family="Smith", emails=[Email(value="a@b.test")])
    text = render_vcard(fields, uid="u")
    assert "VERSION:3.0" in text and "FN:Anna Smith" in text and "N:Smith;Anna;;;" in text
    assert parse_vcard(text) == ("u", ContactFields(**{**fields.model_dump(), "fn": "Anna Smith"}))


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("not a vcard", "unparsable"),
        ("BEGIN:VCARD\r\nVERSION:3.0\r\nUID:x\r\nTEL;TYPE=cell\r\nEND:VCARD\r\n", "unparsable"),
        ("BEGIN:VCARD\r\nVERSION:9.9\r\nUID:x\r\nFN:a\r\nEND:VCARD\r\n", "VERSION 9.9"),
        ("BEGIN:VCARD\r\nVERSION:3.0\r\nFN:a\r\nEND:VCARD\r\n", "no UID"),
        ("BEGIN:VCARD\r\nVERSION:3.0\r\nUID:x\r\nEND:VCARD\r\n", "neither FN nor N"),
        ("BEGIN:VCALENDAR\r\nVERSION:2.0\r\nEND:VCALENDAR\r\n", "not a VCARD"),
    ],
)
def test_malformed_vcards_say_why(text: str, reason: str) -> None:
    with pytest.raises(VCardError, match=reason):
        parse_vcard(text)


def test_split_vcards() -> None:
    assert len(split_vcards(V4 + "junk\n" + V4.replace("UID:abc", "UID:def"))) == 2


@pytest.mark.parametrize(
    "raw",
    ["8 (916) 123-45-67", "+7 916 1234567", "89161234567", "+7(916)123-45-67", "007 916 123 45 67"],
)
def test_phones_normalise_to_e164(raw: str) -> None:
    assert normalize_phone(raw, "RU") == "+79161234567"


def test_phone_region_and_garbage() -> None:
    assert normalize_phone("(650) 253-0000", "US") == "+16502530000"
    assert normalize_phone("12", "RU") is None
    assert normalize_phone("call me", "RU") is None


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("Иван Петров", "Ivan Petrov"),
        ("Иван Петров", "ПЕТРОВ иван"),
        ("Петров Иван Сергеевич", "Ivan Petrov"),
        ("Фёдор Хрущёв", "Fyodor Khrushchev"),
        ("Фёдор Хрущёв", "Федор Хрущев"),
        ("Юлия Щукина", "Iuliia Shchukina"),
        ("Александр Цой", "Alexander Tsoy"),
        ("Наталья Ильина", "Natalia Ilina"),
        ("Пётр Ким", "Peter Kim"),
    ],
)
def test_same_names(a: str, b: str) -> None:
    assert name_key(ContactFields(fn=a)) == name_key(ContactFields(fn=b))


@pytest.mark.parametrize(
    ("a", "b"),
    [("Olga Petrova", "Oleg Petrov"), ("Иван Петров", "Иван Сидоров"), ("Anna Smith", "Anna Smit")],
)
def test_different_names(a: str, b: str) -> None:
    assert name_key(ContactFields(fn=a)) != name_key(ContactFields(fn=b))


def test_single_word_names_do_not_match() -> None:
    assert name_key(ContactFields(fn="Иван")) is None


def test_duplicates_say_why_and_group_transitively() -> None:
    contacts = [
        ("a", ContactFields(fn="Иван Петров", phones=[Phone(value="8 (916) 123-45-67")])),
        ("b", ContactFields(fn="I. Petrov", phones=[Phone(value="+7 916 1234567")])),
        ("c", ContactFields(fn="Ivan Petrov", emails=[Email(value="IVAN@x.test")])),
        ("d", ContactFields(fn="Someone Else", emails=[Email(value="ivan@x.test")])),
        ("e", ContactFields(fn="Unrelated Person")),
    ]
    [group] = find_duplicates(contacts, "RU")
    assert group.contact_ids == ["a", "b", "c", "d"]
    assert group.reasons == [
        ("phone", "+79161234567"),
        ("name", "ivan petrov"),
        ("email", "ivan@x.test"),
    ]


def test_merge_keeps_every_distinct_phone_and_email() -> None:
    merged = merge_duplicates(
        [
            ContactFields(fn="Иван Петров", phones=[Phone(value="8 916 123-45-67")], note="a"),
            ContactFields(
                fn="Ivan Petrov",
                org="Acme",
                phones=[Phone(value="+79161234567"), Phone(value="+7 495 000 00 00")],
                emails=[Email(value="i@x.test"), Email(value="I@X.test")],
                note="b",
            ),
        ]
    )
    assert merged.fn == "Иван Петров" and merged.org == "Acme"
    assert [p.value for p in merged.phones] == ["8 916 123-45-67", "+7 495 000 00 00"]
    assert [e.value for e in merged.emails] == ["i@x.test"]
    assert merged.note == "a\n\nb"


def test_three_way_policies() -> None:
    base = ContactFields(fn="A B", title="t0", org="o0", note="n0")
    local = ContactFields(fn="A B", title="t-local", org="o0", note="n-local")
    server = ContactFields(fn="A B", title="t-server", org="o-server", note="n0")
    merged, conflicts = three_way(base, local, server, "server")
    assert (merged.title, merged.org, merged.note) == ("t-server", "o-server", "n-local")
    assert [(c.field, c.resolution) for c in conflicts] == [("title", "server")]
    merged, conflicts = three_way(base, local, server, "client")
    assert merged.title == "t-local" and conflicts[0].resolution == "client"
    with pytest.raises(ValueError):
        three_way(base, local, server, "coin-flip")


def test_digest_auth_answers_the_challenge() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        auth = request.headers.get("Authorization", "")
        seen.append(auth.split(" ")[0])
        if not auth.startswith("Digest "):
            challenge = 'Digest realm="dav", nonce="abc123", qop="auth", algorithm=MD5'
            return httpx.Response(401, headers={"WWW-Authenticate": challenge})
        assert 'username="alice"' in auth and 'realm="dav"' in auth
        return httpx.Response(204)

    client = CardDAVClient(
        "https://dav.test/", "alice", "pw", auth="digest", transport=httpx.MockTransport(handler)
    )
    client.delete("/alice/book/x.vcf")
    assert seen == ["", "Digest"]


def test_status_codes_map_to_errors() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "PUT":
            return httpx.Response(412)
        if request.method == "REPORT":
            body = b'<d:error xmlns:d="DAV:"><d:valid-sync-token/></d:error>'
            return httpx.Response(403, content=body)
        return httpx.Response(503)

    client = CardDAVClient("https://dav.test/", "a", "b", transport=httpx.MockTransport(handler))
    with pytest.raises(PreconditionFailed):
        client.put("/b/x.vcf", "BEGIN:VCARD\r\nEND:VCARD\r\n", etag="1")
    with pytest.raises(SyncTokenInvalid):
        client.sync_collection("https://dav.test/b/", "old-token")
    with pytest.raises(Unreachable):
        client.get("/b/x.vcf")
    assert client.requests == 3


def test_member_href_is_a_safe_path() -> None:
    assert member_href("https://h.test/a/book/", "x/y z") == "/a/book/x-y-z.vcf"


def test_an_edit_writes_phones_and_emails_back_as_the_server_had_them() -> None:
    """A TEL longer than 64 characters was cut to 64 on import and an edit of any other field
    wrote the cut value to the server; an edit also dropped a TEL's group, ``PREF`` and the
    ``tel:`` URI form. Unchanged phones and e-mails now go back as they came."""
    long_tel = "+1 650 253 0000 ext. 1234 (the reception desk for the night shift in block B)"
    base = (
        "BEGIN:VCARD\r\nVERSION:4.0\r\nUID:abc\r\nFN:Anna\r\n"
        f"TEL;TYPE=work:{long_tel}\r\n"
        "item1.TEL;PREF=1;TYPE=cell;VALUE=uri:tel:+7-916-123-45-67\r\n"
        "item1.X-ABLabel:mobile\r\n"
        "EMAIL;PREF=1;TYPE=work:anna@example.com\r\nEND:VCARD\r\n"
    )
    _, fields = parse_vcard(base)
    assert [p.value for p in fields.phones] == [long_tel, "+7-916-123-45-67"]
    fields.title = "CEO"
    fields.phones[1].types = ["cell", "voice"]
    out = render_vcard(fields, uid="abc", base=base)
    unfolded = out.replace("\r\n ", "")
    assert f"TEL;TYPE=work:{long_tel}\r\n" in unfolded
    assert "item1.TEL;PREF=1;TYPE=cell,voice;VALUE=uri:tel:+7-916-123-45-67\r\n" in unfolded
    assert "EMAIL;PREF=1;TYPE=work:anna@example.com\r\n" in unfolded
    _, again = parse_vcard(out)
    assert again == fields


def test_a_phone_the_user_adds_may_be_long_but_not_endless() -> None:
    Phone(value="8" * 256)
    with pytest.raises(ValueError):
        Phone(value="8" * 257)
