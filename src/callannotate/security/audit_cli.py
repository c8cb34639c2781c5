"""``callannotate audit verify | list``: check the audit chain, print recent records.

``audit verify`` walks the whole chain and exits 1 naming the first broken record (edited,
deleted before it, inserted); with ``--anchor SEQ:HASH`` (a head printed by an earlier verify,
or the ``callannotate.audit.hash`` of a log line) it also catches a chain rewritten from some
point on, or records cut off its end. ``audit list`` prints the newest records.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from typing import Any

from callannotate.cli import int_in_range
from callannotate.db.cli import settings_from


def _store(args: argparse.Namespace) -> Any:
    from callannotate.db.engine import Database
    from callannotate.db.migrate import upgrade_database
    from callannotate.security.audit_store import AuditStore

    db = Database.from_settings(settings_from(args))
    upgrade_database(db)
    return AuditStore(db)


def _anchor(value: str | None) -> tuple[int, str] | None:
    if not value:
        return None
    seq, sep, digest = value.partition(":")
    if not sep or not seq.isdigit() or len(digest) != 64:
        raise argparse.ArgumentTypeError("--anchor takes SEQ:HASH (a 64-hex-digit sha256)")
    return int(seq), digest.lower()


def _cmd_verify(args: argparse.Namespace) -> int:
    from callannotate.security.audit_store import verify_chain

    try:
        anchor = _anchor(args.anchor)
    except argparse.ArgumentTypeError as exc:
        print(f"callannotate: error: {exc}", file=sys.stderr)
        return 2
    store = _store(args)
    try:
        report = verify_chain(store, anchor=anchor)
    finally:
        store.db.dispose()
    if report.ok:
        if report.head_seq is None:
            print("audit log is empty")
        else:
            print(f"audit chain intact: {report.checked} records")
            print(f"head: {report.head_seq}:{report.head_hash}")
        return 0
    print(
        f"audit chain BROKEN at record {report.broken_seq}: {report.reason} "
        f"({report.checked} records before it are intact)"
    )
    return 1


def _when(value: datetime) -> str:
    return value.isoformat(timespec="seconds")


def _cmd_list(args: argparse.Namespace) -> int:
    from callannotate.security.audit_store import AuditFilter

    store = _store(args)
    where = AuditFilter(
        principal_id=args.principal,
        action=args.action,
        resource_id=args.resource,
        outcome=args.outcome,
    )
    try:
        rows, total = store.query(where, limit=args.limit)
    finally:
        store.db.dispose()
    if args.json:
        out = [
            {
                "seq": r.seq,
                "time": r.time.isoformat(),
                "principal_id": r.principal_id,
                "client_ip": r.client_ip,
                "user_agent": r.user_agent,
                "request_id": r.request_id,
                "action": r.action,
                "resource_id": r.resource_id,
                "outcome": r.outcome,
                "status": r.status,
                "detail": r.detail,
                "hash": r.hash,
            }
            for r in rows
        ]
        print(json.dumps(out, indent=2, ensure_ascii=False))
        return 0
    if not rows:
        print("no audit records")
        return 0
    for r in reversed(rows):  # oldest of the page first, like a log
        status = "" if r.status is None else str(r.status)
        print(
            f"{r.seq:>7}  {_when(r.time)}  {r.principal_id or '-':20}  {r.client_ip or '-':15}  "
            f"{r.action:22}  {r.resource_id or '-':24}  {r.outcome:6}  {status}"
        )
    if total > len(rows):
        print(f"({len(rows)} of {total} records; --limit for more)")
    return 0


#: Most records ``audit list`` prints.
MAX_LIMIT = 1_000_000


def add_parser(subparsers: Any) -> None:
    """Register ``audit`` with ``verify`` and ``list``."""
    audit = subparsers.add_parser("audit", help="audit log: verify the hash chain, list records")
    audit.add_argument("--data-dir", help="data folder holding the database (default: settings)")
    sub = audit.add_subparsers(dest="audit_command", metavar="{verify,list}")
    sub.required = True
    verify = sub.add_parser("verify", help="check the whole chain; exit 1 at the first bad record")
    verify.add_argument(
        "--anchor", help="SEQ:HASH that record must still have (from an earlier verify or log)"
    )
    verify.set_defaults(func=_cmd_verify)
    lst = sub.add_parser("list", help="print recent records (newest last)")
    lst.add_argument(
        "--limit",
        type=int_in_range(1, MAX_LIMIT),
        default=50,
        help=f"how many (default 50, at most {MAX_LIMIT})",
    )
    lst.add_argument("--principal", help="only this principal (user id)")
    lst.add_argument("--action", help="only this action, e.g. job.delete or 'auth.*'")
    lst.add_argument("--resource", help="only this resource id")
    lst.add_argument("--outcome", choices=("ok", "denied", "failed"))
    lst.add_argument("--json", action="store_true", help="print JSON")
    lst.set_defaults(func=_cmd_list)
