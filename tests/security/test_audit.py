"""The audit log on SQLite and PostgreSQL: the hash chain, its verification against rows
edited, deleted and inserted directly in SQL, concurrent writers (threads and processes),
the background writer, the ECS log line, the auth service's events and the CLI."""

from __future__ import annotations

import io
import itertools
import json
import logging
import subprocess
import sys
import threading
from pathlib import Path

import anyio
import pytest
from sqlalchemy import func, select, text

from callannotate.cli import main
from callannotate.config import AuditSettings, Settings
from callannotate.db.engine import Database
from callannotate.db.models import AuditEvent
from callannotate.observability.logging import EcsJsonFormatter
from callannotate.security.audit import (
    GENESIS_HASH,
    AuditEntry,
    AuditLog,
    audit_context,
    chain_hash,
    hashed_fields,
    outcome_for_status,
)
from callannotate.security.audit_store import AuditFilter, AuditStore, verify_chain
from callannotate.security.service import AuthService, InvalidGrant

PASSWORD = "correct horse battery"


def _entry(i: int, **kw: object) -> AuditEntry:
    values: dict[str, object] = {
        "verb": "delete",
        "resource_type": "job",
        "resource_id": f"j-{i}",
        "principal_id": "u1",
        "client_ip": "10.0.0.1",
        "user_agent": "pytest",
        "request_id": f"req-{i}",
        "status": 204,
        "detail": {"n": i, "name": "Иван"},
    }
    values.update(kw)
    return AuditEntry(**values)  # type: ignore[arg-type]


def _fill(db: Database, n: int = 6) -> AuditLog:
    log = AuditLog(db, background=False)
    for i in range(1, n + 1):
        log.record(_entry(i))
    return log


def _count(db: Database) -> int:
    with db.session() as s:
        return int(s.scalar(select(func.count()).select_from(AuditEvent)) or 0)


def _sql(db: Database, statement: str, **params: object) -> None:
    with db.engine.begin() as connection:
        connection.execute(text(statement), params)


# --------------------------------------------------------------------------- the chain


def test_records_are_chained(database: Database) -> None:
    _fill(database, 4)
    store = AuditStore(database)
    rows, total = store.query(AuditFilter(), limit=10)
    assert total == 4 and [r.seq for r in rows] == [4, 3, 2, 1]  # newest first
    oldest = rows[-1]
    assert oldest.prev_hash == GENESIS_HASH
    assert oldest.action == "job.delete" and oldest.detail == {"n": 1, "name": "Иван"}
    assert oldest.time.tzinfo is not None
    for newer, older in itertools.pairwise(rows):
        assert newer.prev_hash == older.hash
    # the stored hash is sha256 over the canonical JSON of the fields and the previous hash
    assert rows[0].hash == chain_hash(
        hashed_fields(4, rows[0], action=rows[0].action), rows[1].hash
    )
    report = verify_chain(store)
    assert report.ok and report.checked == 4 and report.head_seq == 4
    assert report.head_hash == rows[0].hash


def test_empty_chain_verifies(database: Database) -> None:
    report = verify_chain(AuditStore(database))
    assert report.ok and report.checked == 0 and report.head_seq is None


def test_edited_record_is_found(database: Database) -> None:
    _fill(database)
    _sql(database, "UPDATE audit_events SET principal_id = 'someone-else' WHERE seq = 3")
    report = verify_chain(AuditStore(database))
    assert not report.ok and report.broken_seq == 3 and report.checked == 2
    assert "content does not match" in (report.reason or "")


def test_edited_detail_and_outcome_are_found(database: Database) -> None:
    _fill(database)
    _sql(database, "UPDATE audit_events SET outcome = 'ok', status = 200 WHERE seq = 5")
    assert verify_chain(AuditStore(database)).broken_seq == 5


def test_deleted_record_is_found(database: Database) -> None:
    _fill(database)
    _sql(database, "DELETE FROM audit_events WHERE seq = 3")
    report = verify_chain(AuditStore(database))
    assert report.broken_seq == 4 and "record 3 missing" in (report.reason or "")


def test_deleted_and_renumbered_records_are_found(database: Database) -> None:
    """Deleting a record and closing the gap still breaks the chain (seq is hashed)."""
    _fill(database)
    _sql(database, "DELETE FROM audit_events WHERE seq = 3")
    _sql(database, "UPDATE audit_events SET seq = seq + 1000 WHERE seq > 3")
    _sql(database, "UPDATE audit_events SET seq = seq - 1001 WHERE seq > 1000")
    report = verify_chain(AuditStore(database))
    assert report.broken_seq == 3


def test_inserted_record_is_found(database: Database) -> None:
    _fill(database)
    # make room after record 2, then put a forged record 3 linked to record 2's hash
    _sql(database, "UPDATE audit_events SET seq = seq + 1000 WHERE seq >= 3")
    _sql(database, "UPDATE audit_events SET seq = seq - 999 WHERE seq > 1000")
    with database.session() as s:
        second = s.get(AuditEvent, 2)
        assert second is not None
        prev = second.hash
    _sql(
        database,
        "INSERT INTO audit_events (seq, time, action, verb, resource_type, outcome, detail,"
        " prev_hash, hash) VALUES (3, :time, 'job.create', 'create', 'job', 'ok', '{}',"
        " :prev, :hash)",
        time="2026-01-01 00:00:00.000000",
        prev=prev,
        hash="f" * 64,
    )
    report = verify_chain(AuditStore(database))
    assert report.broken_seq == 3 and "content does not match" in (report.reason or "")


def test_appended_forgery_and_truncation_need_an_anchor(database: Database) -> None:
    _fill(database, 3)
    store = AuditStore(database)
    head = store.head()
    assert head is not None
    # a made-up record at the end with a wrong hash is caught by the chain alone
    _sql(
        database,
        "INSERT INTO audit_events (seq, time, action, verb, resource_type, outcome, detail,"
        " prev_hash, hash) VALUES (4, :time, 'x.y', 'y', 'x', 'ok', '{}', :prev, :hash)",
        time="2026-01-01 00:00:00.000000",
        prev=head[1],
        hash="e" * 64,
    )
    assert verify_chain(store).broken_seq == 4
    _sql(database, "DELETE FROM audit_events WHERE seq >= 3")  # cut the end off
    assert verify_chain(store).ok  # a shorter chain is still a valid chain...
    report = verify_chain(store, anchor=head)  # ...but not against a remembered head
    assert report.broken_seq == 3 and "missing" in (report.reason or "")


def test_concurrent_threads_keep_one_chain(database: Database) -> None:
    errors: list[BaseException] = []

    def writer(k: int) -> None:
        db = Database(database.url)
        try:
            log = AuditLog(db, background=False)
            for i in range(25):
                log.record(_entry(i, principal_id=f"writer-{k}"))
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            db.dispose()

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    report = verify_chain(AuditStore(database))
    assert report.ok and report.checked == 100


_PROCESS_WRITER = """
import sys
from callannotate.db.engine import Database
from callannotate.security.audit import AuditEntry, AuditLog
db = Database(sys.argv[1])
log = AuditLog(db)  # background writer, closed at exit
for i in range(40):
    log.record(AuditEntry(verb="create", resource_type="job", resource_id=f"{sys.argv[2]}-{i}"))
log.close()
db.dispose()
"""


def test_concurrent_processes_keep_one_chain(database: Database) -> None:
    procs = [
        subprocess.Popen([sys.executable, "-c", _PROCESS_WRITER, database.url, f"p{k}"])
        for k in range(4)
    ]
    assert [p.wait() for p in procs] == [0, 0, 0, 0]
    report = verify_chain(AuditStore(database))
    assert report.ok and report.checked == 160
    with database.session() as s:
        ids = set(s.scalars(select(AuditEvent.resource_id)).all())
    assert len(ids) == 160


# --------------------------------------------------------------------------- the writer


def test_background_writer_stores_everything_on_close(database: Database) -> None:
    log = AuditLog(database, AuditSettings(queue_size=8, batch_size=5))
    threads = [
        threading.Thread(target=lambda k=k: [log.record(_entry(k * 100 + i)) for i in range(50)])
        for k in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.close()
    assert _count(database) == 200 and log.written == 200 and log.lost == 0
    assert verify_chain(AuditStore(database)).ok
    log.record(_entry(999))  # after close: written inline, not lost
    assert _count(database) == 201


def test_async_records_wait_for_room_instead_of_dropping(database: Database) -> None:
    log = AuditLog(database, AuditSettings(queue_size=1, batch_size=1))

    async def run() -> None:
        async with anyio.create_task_group() as tg:
            for i in range(60):
                tg.start_soon(log.arecord, _entry(i))

    anyio.run(run)
    log.flush()
    assert _count(database) == 60
    log.close()


def test_values_are_cut_to_the_columns_before_hashing(database: Database) -> None:
    log = AuditLog(database, background=False)
    log.record(_entry(1, user_agent="A" * 2000, detail={"blob": "x" * 10_000}))
    rows, _ = AuditStore(database).query(AuditFilter())
    assert len(rows[0].user_agent or "") == 512 and "truncated" in rows[0].detail
    assert verify_chain(AuditStore(database)).ok


def test_nul_characters_are_stored_as_a_stand_in_not_a_failed_batch(database: Database) -> None:
    """PostgreSQL refused a record with NUL (``DELETE /voices/%00`` by any user), and the
    background writer dropped its whole batch: other callers' records were lost too."""
    log = AuditLog(database, background=True)
    log.record(_entry(1, resource_id="\x00", detail={"path": "/voices/\x00", "k\x00": "a\\u0000"}))
    log.record(_entry(2, user_agent="curl\x00", request_id="r\x00"))
    log.record(_entry(3))  # an innocent record written in the same batch
    log.close()
    rows, total = AuditStore(database).query(AuditFilter(), limit=10)
    assert total == 3, "records were dropped"
    by_seq = {r.seq: r for r in rows}
    assert by_seq[1].resource_id == "\ufffd"
    assert by_seq[1].detail == {"path": "/voices/\ufffd", "k\ufffd": "a\\u0000"}
    assert by_seq[2].user_agent == "curl\ufffd" and by_seq[2].request_id == "r\ufffd"
    assert by_seq[3].resource_id == "j-3"
    assert verify_chain(AuditStore(database)).ok


def test_each_record_is_an_ecs_log_line(database: Database) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(EcsJsonFormatter())
    audit_logger = logging.getLogger("callannotate.audit")
    audit_logger.addHandler(handler)
    old_level = audit_logger.level
    audit_logger.setLevel(logging.INFO)
    try:
        AuditLog(database, background=False).record(_entry(7, outcome="denied", status=403))
    finally:
        audit_logger.removeHandler(handler)
        audit_logger.setLevel(old_level)
    line = json.loads(stream.getvalue().strip().splitlines()[-1])
    assert line["event.action"] == "job.delete"
    assert line["event.outcome"] == "failure" and line["event.reason"] == "denied"
    assert line["user.id"] == "u1" and line["client.ip"] == "10.0.0.1"
    assert line["user_agent.original"] == "pytest" and line["http.request.id"] == "req-7"
    assert line["http.response.status_code"] == 403 and line["event.sequence"] == 1
    assert len(line["callannotate.audit.hash"]) == 64


def test_outcome_for_status() -> None:
    assert [outcome_for_status(s) for s in (200, 204, 302, 401, 403, 429, 404, 422, 500)] == [
        "ok",
        "ok",
        "ok",
        "denied",
        "denied",
        "denied",
        "failed",
        "failed",
        "failed",
    ]


# --------------------------------------------------------------------------- auth events


def _actions(db: Database) -> list[tuple[str, str, str | None]]:
    with db.session() as s:
        rows = s.scalars(select(AuditEvent).order_by(AuditEvent.seq)).all()
        return [(r.action, r.outcome, r.principal_id) for r in rows]


def test_auth_service_records_its_events(service: AuthService, database: Database) -> None:
    with audit_context(principal_id="cli:tester", client_ip="192.0.2.7", user_agent="ua"):
        alice = service.create_user("alice", PASSWORD)
    pair = service.login("alice", PASSWORD, "192.0.2.7")
    with pytest.raises(InvalidGrant):
        service.login("alice", "wrong password!", "192.0.2.7")
    assert pair.refresh_token is not None
    newer = service.refresh(pair.refresh_token)
    with pytest.raises(InvalidGrant):
        service.refresh(pair.refresh_token)  # reuse: the family is revoked
    assert newer.refresh_token is not None
    service.logout(newer.refresh_token)
    key, _ = service.create_api_key(alice.id, "ci", None)
    service.revoke_api_key(key.id)
    service.set_password("alice", PASSWORD + "!")
    service.set_disabled("alice", True)
    service.set_disabled("alice", False)
    assert _actions(database) == [
        ("user.create", "ok", "cli:tester"),
        ("auth.login", "ok", alice.id),
        ("auth.login", "failed", None),
        ("auth.refresh", "ok", alice.id),
        ("auth.refresh_reuse", "denied", alice.id),
        ("auth.logout", "ok", alice.id),
        ("apikey.create", "ok", alice.id),
        ("apikey.revoke", "ok", None),
        ("user.set_password", "ok", None),
        ("user.disable", "ok", None),
        ("user.enable", "ok", None),
    ]
    rows, _ = AuditStore(database).query(AuditFilter(action="auth.login", outcome="failed"))
    assert rows[0].detail == {"username": "alice", "reason": "invalid credentials"}
    assert "wrong" not in json.dumps([r.detail for r in rows])  # never the password
    first, _ = AuditStore(database).query(AuditFilter(action="user.create"))
    assert first[0].client_ip == "192.0.2.7" and first[0].user_agent == "ua"
    assert verify_chain(AuditStore(database)).ok


# --------------------------------------------------------------------------- CLI


def test_cli_records_and_verifies(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = str(tmp_path / "data")
    monkeypatch.setenv("CALLANNOTATE_AUTH__ARGON2_TIME_COST", "1")
    monkeypatch.setenv("CALLANNOTATE_AUTH__ARGON2_MEMORY_COST", "1024")
    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
    assert (
        main(["users", "--data-dir", data, "create", "root", "--role", "admin", "--password-stdin"])
        == 0
    )
    assert main(["users", "--data-dir", data, "disable", "root"]) == 0
    capsys.readouterr()
    assert main(["audit", "--data-dir", data, "list"]) == 0
    out = capsys.readouterr().out
    assert "user.create" in out and "user.disable" in out and "cli:" in out
    assert main(["audit", "--data-dir", data, "list", "--json", "--action", "user.disable"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [r["action"] for r in listed] == ["user.disable"]
    assert main(["audit", "--data-dir", data, "verify"]) == 0
    out = capsys.readouterr().out
    assert "intact: 2 records" in out
    head = out.strip().splitlines()[-1].split()[-1]
    assert main(["audit", "--data-dir", data, "verify", "--anchor", head]) == 0
    capsys.readouterr()
    db = Database.from_settings(Settings(data_dir=Path(data)))
    try:
        _sql(db, "UPDATE audit_events SET resource_id = 'x' WHERE seq = 2")
    finally:
        db.dispose()
    assert main(["audit", "--data-dir", data, "verify"]) == 1
    assert "BROKEN at record 2" in capsys.readouterr().out
    assert main(["audit", "--data-dir", data, "verify", "--anchor", "nope"]) == 2


@pytest.mark.parametrize("limit", ["0", "-5", str(10**20), "many"])
def test_cli_list_refuses_a_limit_out_of_range(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], limit: str
) -> None:
    """``--limit 0`` printed "no audit records" over a full log, ``-5`` every record (SQLite's
    LIMIT -5) and ``10**20`` an OverflowError traceback."""
    with pytest.raises(SystemExit) as exit_info:
        main(["audit", "--data-dir", str(tmp_path / "data"), "list", "--limit", limit])
    assert exit_info.value.code == 2
    assert "argument --limit:" in capsys.readouterr().err
