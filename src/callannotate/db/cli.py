"""``callannotate db upgrade | current``: the relational store's schema."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from callannotate.config import Settings


def settings_from(args: argparse.Namespace) -> Settings:
    settings = Settings()
    if getattr(args, "data_dir", None):
        settings = settings.model_copy(update={"data_dir": Path(args.data_dir)})
    return settings


def _cmd_upgrade(args: argparse.Namespace) -> int:
    from callannotate.db.engine import Database, describe_url
    from callannotate.db.migrate import upgrade_database

    db = Database.from_settings(settings_from(args))
    try:
        revision = upgrade_database(db, args.revision)
    except Exception as exc:  # a driver error: say what and where, without a traceback
        print(f"callannotate: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    finally:
        db.dispose()
    print(f"{describe_url(db.url)} at revision {revision}")
    return 0


def _cmd_current(args: argparse.Namespace) -> int:
    from callannotate.db.engine import Database, describe_url
    from callannotate.db.migrate import current_revision, head_revision

    db = Database.from_settings(settings_from(args))
    try:
        current = current_revision(db)
    finally:
        db.dispose()
    head = head_revision()
    state = "up to date" if current == head else f"needs upgrade to {head}"
    print(f"{describe_url(db.url)} at revision {current or '(empty)'}: {state}")
    return 0 if current == head else 1


def add_parser(subparsers: Any) -> None:
    """Register ``db`` with ``upgrade`` and ``current``."""
    db = subparsers.add_parser("db", help="relational store: migrate the schema")
    db.add_argument("--data-dir", help="data folder (default: settings); SQLite lives there")
    sub = db.add_subparsers(dest="db_command", metavar="{upgrade,current}")
    sub.required = True
    up = sub.add_parser("upgrade", help="apply migrations (the server also does on start)")
    up.add_argument("--revision", default="head", help="target revision (default head)")
    up.set_defaults(func=_cmd_upgrade)
    cur = sub.add_parser("current", help="print the schema revision; exit 1 when behind")
    cur.set_defaults(func=_cmd_current)
