"""``callannotate contacts connect|sync|list|import FILE.vcf|export``, on the server's database.

The commands act for ``--owner`` (a principal id; default ``local``, the user of a server
running without authentication) on the same database as the server (``CALLANNOTATE_DATA_DIR``
or ``--data-dir``; ``CALLANNOTATE_DATABASE__URL`` for PostgreSQL).
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from pathlib import Path
from typing import Any

from callannotate.cli import int_in_range, printable
from callannotate.config import Settings
from callannotate.errors import BadRequest, CallAnnotateError
from callannotate.security.principal import LOCAL_USER_ID

PASSWORD_ENV = "CALLANNOTATE_CARDDAV_PASSWORD"


def _service(args: argparse.Namespace) -> Any:
    from callannotate.contacts.routes import build_contacts_service

    settings = Settings()
    if getattr(args, "data_dir", None):
        settings = settings.model_copy(update={"data_dir": Path(args.data_dir)})
    return build_contacts_service(settings)


def _password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n")
    if os.environ.get(PASSWORD_ENV):
        return os.environ[PASSWORD_ENV]
    try:
        return getpass.getpass(f"password for {args.username}: ")
    except EOFError:  # no terminal and nothing on stdin (a script, cron, CI)
        raise BadRequest(
            f"no password was typed; in a script, pipe it in with --password-stdin or set "
            f"{PASSWORD_ENV}"
        ) from None


def _cmd_connect(args: argparse.Namespace) -> int:
    service = _service(args)
    account = service.connect(
        args.owner, args.url, args.username, _password(args), args.auth, args.name or ""
    )
    result = service.sync(args.owner, account.id)
    books = service.books(args.owner, account.id)
    print(f"connected {account.id}: {len(books)} address book(s)")
    for book, count in books:
        print(f"  {book.id}  {printable(book.display_name or book.url)}  {count} contact(s)")
    if not result.ok:
        print(f"first sync failed: {printable(result.error or '')}", file=sys.stderr)
        return 1
    return 0


def _cmd_sync(args: argparse.Namespace) -> int:
    service = _service(args)
    failed = 0
    for result in service.sync_all(args.owner):
        print(json.dumps(result.model_dump(), ensure_ascii=False))
        failed += not result.ok
    return 1 if failed else 0


def _cmd_list(args: argparse.Namespace) -> int:
    service = _service(args)
    rows, total = service.search(
        args.owner, q=args.query or "", phone=args.phone or "", limit=args.limit
    )
    for row in rows:
        phones = ", ".join(p["value"] for p in row.data.get("phones", []))
        org = f"  [{row.data['org']}]" if row.data.get("org") else ""
        print(printable(f"{row.id}  {row.fn}{org}  {phones}"))
    print(
        f"{len(rows)} of {total} contact(s)"
        + ("  (cached: server unreachable)" if service.is_stale(args.owner) else "")
    )
    return 0


def _cmd_import(args: argparse.Namespace) -> int:
    from callannotate.contacts.vcard import VCardError, parse_vcard, split_vcards, with_uid

    service = _service(args)
    path = Path(args.file)
    if not path.is_file():
        print(f"callannotate: error: no such file: {path}", file=sys.stderr)
        return 2
    cards = split_vcards(path.read_text(encoding="utf-8", errors="replace"))
    if not cards:
        print(
            f"callannotate: error: no vCard (BEGIN:VCARD ... END:VCARD) in {path}", file=sys.stderr
        )
        return 2
    imported = skipped = 0
    for index, card in enumerate(cards, 1):
        text = with_uid(card)
        try:
            _uid, fields = parse_vcard(text)
        except VCardError as exc:
            print(f"skipped card {index}: {printable(str(exc))}", file=sys.stderr)
            skipped += 1
            continue
        service.create(args.owner, fields, args.book, vcard=text, push=False)
        imported += 1
    for account in service.accounts(args.owner):
        service.sync(args.owner, account.id)
    print(f"imported {imported} contact(s), skipped {skipped}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    text = _service(args).export(args.owner)
    if args.output and args.output != "-":
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


def _run(func: Any) -> Any:
    def wrapped(args: argparse.Namespace) -> int:
        try:
            code: int = func(args)
            return code
        except CallAnnotateError as exc:
            print(f"callannotate: error: {exc.detail}", file=sys.stderr)
            return 2

    return wrapped


def add_parser(subparsers: Any) -> None:
    contacts = subparsers.add_parser("contacts", help="address books over CardDAV")
    contacts.add_argument("--data-dir", help="data folder of the server (default: settings)")
    contacts.add_argument("--owner", default=LOCAL_USER_ID, help="principal id acted for")
    sub = contacts.add_subparsers(
        dest="contacts_command", metavar="{connect,sync,list,import,export}"
    )
    sub.required = True

    connect = sub.add_parser("connect", help="connect a CardDAV account and sync it")
    connect.add_argument("url", help="server or address-book URL")
    connect.add_argument("--username", required=True)
    connect.add_argument(
        "--password-stdin",
        action="store_true",
        help=f"read the password from stdin (or ${PASSWORD_ENV})",
    )
    connect.add_argument("--auth", choices=("basic", "digest"), default="basic")
    connect.add_argument("--name", help="a label for the account")
    connect.set_defaults(func=_run(_cmd_connect))

    sync = sub.add_parser("sync", help="replay queued writes and sync every account")
    sync.set_defaults(func=_run(_cmd_sync))

    lst = sub.add_parser("list", help="list cached contacts")
    lst.add_argument("query", nargs="?", help="name, organisation or e-mail")
    lst.add_argument("--phone", help="phone number in any notation")
    lst.add_argument("--limit", type=int_in_range(1, 1_000_000), default=100)
    lst.set_defaults(func=_run(_cmd_list))

    imp = sub.add_parser("import", help="add the contacts of a .vcf file")
    imp.add_argument("file")
    imp.add_argument("--book", help="address book id (default: the first one)")
    imp.set_defaults(func=_run(_cmd_import))

    exp = sub.add_parser("export", help="write every cached contact as one .vcf")
    exp.add_argument("output", nargs="?", default="-", help="file (default: stdout)")
    exp.set_defaults(func=_run(_cmd_export))
