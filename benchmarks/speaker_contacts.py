"""What putting contacts on a finished job's speakers costs (``resolve_result``).

Fills a SQLite contacts cache with ``--contacts`` contacts (no CardDAV server: written with
``push=False``), builds an annotation of ``--words`` words and two speakers (one recognised
and linked to a contact), and times ``resolve_result`` for a job with a caller and a callee
number, ``--runs`` times. Prints median and p99 in milliseconds, and the same for parsing and
re-serialising the annotation alone (the part that does not depend on the contacts).

    .venv/bin/python benchmarks/speaker_contacts.py [--contacts 5000] [--words 5000] [--runs 200]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from callannotate.config import Settings
from callannotate.contacts.schemas import ContactFields, Phone
from callannotate.contacts.service import ContactsService
from callannotate.db.contact_models import ContactAccount, ContactBook
from callannotate.db.engine import Database
from callannotate.db.migrate import upgrade_database
from callannotate.jobs.models import AudioMeta, Job
from callannotate.jobs.speaker_contacts import resolve_result
from callannotate.pipeline.types import (
    Annotation,
    RecordingInfo,
    Speaker,
    Turn,
    VoiceMatch,
    Word,
)


def _fill(service: ContactsService, db: Database, count: int) -> list[str]:
    with db.session() as session:
        session.add(
            ContactAccount(
                id="c" * 32, owner="local", url="http://127.0.0.1:9/", username="u",
                password_sealed=b"-",
            )
        )  # fmt: skip
        session.add(ContactBook(id="b" * 32, account_id="c" * 32, owner="local", url="/b/"))
    ids = []
    for i in range(count):
        row = service.create(
            "local",
            ContactFields(fn=f"Person {i}", org="Acme", phones=[Phone(value=f"+7916{i:07d}")]),
            push=False,
        )
        ids.append(row.id)
    return ids


def _annotation(words: int, contact_id: str) -> Annotation:
    ws = [
        Word(text="слово", start=i * 0.3, end=i * 0.3 + 0.25, probability=0.9, speaker=f"S{i % 2}")
        for i in range(words)
    ]
    turns = [Turn(start=w.start, end=w.end, speaker=w.speaker or "S0") for w in ws]
    voice = VoiceMatch(
        voice_id="v", name="Person 7", contact_id=contact_id, score=0.9, threshold=0.5,
        accepted=True,
    )  # fmt: skip
    return Annotation(
        recording=RecordingInfo(duration=words * 0.3, sample_rate=8000, channels=1),
        speakers=[Speaker(label="S0", voice=voice), Speaker(label="S1")],
        turns=turns,
        exclusive_turns=turns,
        words=ws,
    )


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--contacts", type=int, default=5000)
    parser.add_argument("--words", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp))
        db = Database.from_settings(settings)
        upgrade_database(db)
        service = ContactsService(settings, db)
        started = time.perf_counter()
        ids = _fill(service, db, args.contacts)
        print(f"{args.contacts} contacts written in {time.perf_counter() - started:.1f} s")
        result = _annotation(args.words, ids[7]).model_dump_json().encode()
        meta = AudioMeta(
            filename="c.wav", stored_as="audio.wav", size_bytes=1, format="wav",
            codec="pcm_s16le", sample_rate=8000, channels=1, duration=1.0,
        )  # fmt: skip
        job = Job(id="j", owner="local", audio=meta, caller="+79160000007", callee="+79160000011")
        resolve_result(settings, job, result, service)  # warm up
        full: list[float] = []
        parse: list[float] = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            out = resolve_result(settings, job, result, service)
            full.append((time.perf_counter() - t0) * 1000)
            t0 = time.perf_counter()
            Annotation.model_validate_json(result).model_dump_json()
            parse.append((time.perf_counter() - t0) * 1000)
        check = Annotation.model_validate_json(out)
        assert check.speakers[0].contact is not None and check.call[1].contacts
        print(f"result {len(result) / 1024:.0f} KiB, {args.words} words, {args.runs} runs")
        print(
            f"resolve_result: median {statistics.median(full):.1f} ms, "
            f"p99 {_pct(full, 0.99):.1f} ms"
        )
        print(
            f"parse + serialise alone: median {statistics.median(parse):.1f} ms, "
            f"p99 {_pct(parse, 0.99):.1f} ms"
        )
        db.dispose()


if __name__ == "__main__":
    main()
