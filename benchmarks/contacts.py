"""Contacts over CardDAV at address-book scale, against a real Radicale started here.

    .venv/bin/python benchmarks/contacts.py [--contacts 5000] [--changes 10] [--lookups 5000]

Generates N contacts (Russian and English names, Russian and US phone numbers, about 3 % of
them near-duplicates of others), uploads them into a fresh Radicale (htpasswd auth, one PUT of
the whole address book), then measures through :class:`ContactsService` on SQLite:

* the first full sync (sync-collection + addressbook-multiget): seconds and HTTP requests;
* an incremental sync after ``--changes`` contacts were edited on the server;
* the same first sync with the ETag-comparison fallback (PROPFIND + multiget);
* phone-number lookup (any notation -> E.164 -> indexed query): median and p99;
* duplicate detection over the whole book: seconds and groups found.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "contacts"))
sys.path.append(
    str(Path(__file__).resolve().parents[1] / "tests")
)  # local_servers, for carddav_servers

import httpx
from carddav_servers import LOCAL_SERVERS, Radicale
from sqlalchemy import text as sql_text

from callannotate.config import ContactsSettings, Settings
from callannotate.contacts.davclient import CardDAVClient, member_href
from callannotate.contacts.schemas import ContactFields, Email, Phone
from callannotate.contacts.service import ContactsService
from callannotate.contacts.vcard import parse_vcard, render_vcard
from callannotate.db.engine import Database
from callannotate.db.migrate import upgrade_database

RU_GIVEN = ["Иван", "Пётр", "Алексей", "Сергей", "Дмитрий", "Андрей", "Михаил", "Николай",
            "Ольга", "Мария", "Анна", "Елена", "Наталья", "Татьяна", "Юлия", "Фёдор"]  # fmt: skip
RU_FAMILY = ["Иванов", "Петров", "Сидоров", "Смирнов", "Кузнецов", "Попов", "Соколов",
             "Лебедев", "Козлов", "Новиков", "Морозов", "Волков", "Хрущёв", "Щукин"]  # fmt: skip
EN_GIVEN = ["John", "Mary", "James", "Linda", "Robert", "Susan", "David", "Karen", "Peter",
            "Emma", "Oliver", "Sophia", "Liam", "Ava"]  # fmt: skip
EN_FAMILY = ["Smith", "Johnson", "Brown", "Taylor", "Anderson", "Thomas", "Jackson", "White",
             "Harris", "Martin", "Thompson", "Garcia", "Clark", "Lewis"]  # fmt: skip
ORGS = ["Acme", "Рога и копыта", "Globex", "Initech", "Umbrella", ""]


def feminine(family: str) -> str:
    return family[:-1] + "а" if family.endswith("в") else family


def generate(n: int, rng: random.Random) -> list[tuple[str, ContactFields]]:
    people: list[tuple[str, ContactFields]] = []
    for i in range(n):
        if i and rng.random() < 0.03:  # a near-duplicate of someone earlier
            _, other = people[rng.randrange(len(people))]
            phones = [Phone(value=p.value.replace("+7 ", "8 ").replace("-", ""), types=["cell"])
                      for p in other.phones[:1]]  # fmt: skip
            people.append((f"p{i:05d}", ContactFields(fn=other.fn.upper(), phones=phones)))
            continue
        if rng.random() < 0.6:
            given = rng.choice(RU_GIVEN)
            family = rng.choice(RU_FAMILY)
            if given[-1] in "аяь" or given in ("Ольга",):
                family = feminine(family)
            digits = [rng.randrange(10, 99), rng.randrange(100, 999), rng.randrange(10, 99)]
            phone = f"+7 9{digits[0]} {digits[1]}-{digits[2]}-{rng.randrange(10, 99)}"
        else:
            given, family = rng.choice(EN_GIVEN), rng.choice(EN_FAMILY)
            area, exchange = rng.randrange(201, 989), rng.randrange(200, 999)
            phone = f"+1 ({area}) {exchange}-{rng.randrange(1000, 9999)}"
        fields = ContactFields(
            fn=f"{given} {family}",
            given=given,
            family=family,
            phones=[Phone(value=phone, types=["cell"])],
            emails=[Email(value=f"user{i}@example.test", types=["work"])],
            org=rng.choice(ORGS),
        )
        people.append((f"p{i:05d}", fields))
    return people


def upload(server: Radicale, people: list[tuple[str, ContactFields]]) -> str:
    book = f"/{server.username}/contacts/"
    body = "".join(render_vcard(fields, uid=uid) for uid, fields in people)
    r = httpx.put(
        server.url.rstrip("/") + book,
        content=body.encode(),
        headers={"Content-Type": "text/vcard"},
        auth=(server.username, server.password),
        timeout=600,
    )
    r.raise_for_status()
    return book


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--contacts", type=int, default=5000)
    parser.add_argument("--changes", type=int, default=10)
    parser.add_argument("--lookups", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    people = generate(args.contacts, rng)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        server = Radicale(root / "radicale")
        server.start()
        try:
            t0 = time.perf_counter()
            book = upload(server, people)
            print(
                f"upload of {len(people)} contacts into Radicale: {time.perf_counter() - t0:.1f} s"
            )
            for mode, use_sync in (("sync-collection", True), ("etag fallback", False)):
                db = Database(f"sqlite:///{root / f'{mode[:4]}.db'}")
                upgrade_database(db)
                settings = Settings(
                    data_dir=root / "data",
                    contacts=ContactsSettings(
                        use_sync_collection=use_sync, timeout_s=300, allowed_hosts=LOCAL_SERVERS
                    ),
                )
                service = ContactsService(settings, db)
                account = service.connect("bench", server.url, server.username, server.password)
                t0 = time.perf_counter()
                first = service.sync("bench", account.id)
                elapsed = time.perf_counter() - t0
                assert first.ok, first.error
                print(
                    f"[{mode}] first full sync: {elapsed:.2f} s, {service.last_requests} HTTP "
                    f"requests, {first.books[0].changed} contacts"
                )
                if use_sync:  # how much of that is the server: the same requests, no storing
                    with CardDAVClient(
                        server.url, server.username, server.password, timeout=300
                    ) as client:
                        t0 = time.perf_counter()
                        listing = client.sync_collection(server.url.rstrip("/") + book, None)
                        client.multiget(
                            server.url.rstrip("/") + book, [h for h, _ in listing.changed]
                        )
                        print(
                            f"  of which Radicale answering sync-collection + multiget: "
                            f"{time.perf_counter() - t0:.2f} s"
                        )
                    with CardDAVClient(server.url, server.username, server.password) as client:
                        for uid, _ in rng.sample(people, args.changes):
                            href = member_href(server.url.rstrip("/") + book, uid)
                            current = client.get(href)
                            assert current.vcard is not None
                            _, fields = parse_vcard(current.vcard)
                            fields.title = "changed"
                            client.put(href, render_vcard(fields, uid=uid, base=current.vcard),
                                       etag=current.etag)  # fmt: skip
                else:
                    with CardDAVClient(server.url, server.username, server.password) as client:
                        for uid, _ in rng.sample(people, args.changes):
                            href = member_href(server.url.rstrip("/") + book, uid)
                            current = client.get(href)
                            assert current.vcard is not None
                            text = current.vcard.replace("END:VCARD", "NOTE:x\r\nEND:VCARD")
                            client.put(href, text, etag=current.etag)
                t0 = time.perf_counter()
                second = service.sync("bench", account.id)
                elapsed = time.perf_counter() - t0
                print(
                    f"[{mode}] incremental sync after {args.changes} changes: {elapsed:.3f} s, "
                    f"{service.last_requests} HTTP requests, {second.books[0].changed} fetched"
                )
                if use_sync:
                    numbers = [f.phones[0].value for _, f in people if f.phones]
                    queries = [rng.choice(numbers) for _ in range(args.lookups)]
                    queries = [q.replace("+7 ", "8 ") if q.startswith("+7") else q for q in queries]
                    times = []
                    hits = 0
                    for q in queries:
                        s = time.perf_counter()
                        hits += bool(service.lookup_phone("bench", q))
                        times.append(time.perf_counter() - s)
                    times.sort()
                    p99 = times[int(len(times) * 0.99) - 1]
                    print(
                        f"phone lookup ({args.lookups} lookups, {hits} hits): median "
                        f"{statistics.median(times) * 1000:.2f} ms, p99 {p99 * 1000:.2f} ms "
                        f"(target < 5 ms)"
                    )
                    floor = []  # the same machine's noise: an empty round trip to SQLite
                    for _ in range(args.lookups):
                        s = time.perf_counter()
                        with db.session() as session:
                            session.execute(sql_text("SELECT 1"))
                        floor.append(time.perf_counter() - s)
                    floor.sort()
                    print(
                        f"  floor (SELECT 1 in a session): median "
                        f"{statistics.median(floor) * 1000:.2f} ms, p99 "
                        f"{floor[int(len(floor) * 0.99) - 1] * 1000:.2f} ms"
                    )
                    t0 = time.perf_counter()
                    groups = service.duplicates("bench")
                    print(
                        f"duplicate detection over {len(people)} contacts: "
                        f"{time.perf_counter() - t0:.2f} s, {len(groups)} groups"
                    )
                db.dispose()
        finally:
            server.stop()


if __name__ == "__main__":
    main()
