"""Accounts from the command line, on the data folder's database (no server login needed).

``callannotate users create NAME --role admin|user`` (password from a prompt, or from stdin
with ``--password-stdin``), ``users list|disable|enable|set-password``,
``apikeys create|list|revoke``, ``clients create|list|disable|enable`` (OAuth2 client
credentials) and ``signing-key rotate|list`` (JWT key ring).
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from callannotate.config import Settings
from callannotate.db.cli import settings_from
from callannotate.errors import CallAnnotateError

Handler = Callable[[argparse.Namespace], int]


def _fail(message: str) -> int:
    print(f"callannotate: error: {message}", file=sys.stderr)
    return 2


def _service(settings: Settings) -> Any:
    from callannotate.db.engine import Database
    from callannotate.db.migrate import upgrade_database
    from callannotate.security.service import AuthService

    db = Database.from_settings(settings)
    upgrade_database(db)
    return AuthService(settings, db)


def _guarded(handler: Callable[[argparse.Namespace, Any], int]) -> Handler:
    """Run ``handler(args, service)``; domain errors become a message and exit code 2."""

    def run(args: argparse.Namespace) -> int:
        from callannotate.security.audit import audit_context, cli_actor

        service = _service(settings_from(args))
        try:
            with audit_context(principal_id=cli_actor(), user_agent="callannotate-cli"):
                return handler(args, service)
        except CallAnnotateError as exc:
            return _fail(exc.detail)
        finally:
            service.db.dispose()

    return run


def _read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        line = sys.stdin.readline()
        return line[:-1] if line.endswith("\n") else line
    if not _has_terminal():  # getpass would read stdin after "Warning: ... may be echoed"
        raise _NoPassword()
    try:
        first = getpass.getpass("Password: ")
        repeated = getpass.getpass("Repeat password: ")
    except EOFError:  # the terminal closed (Ctrl-D)
        raise _NoPassword() from None
    if repeated != first:
        raise _Mismatch()
    return first


def _has_terminal() -> bool:
    """A terminal to ask the password on (the controlling one, as getpass opens it)."""
    try:
        fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    except OSError:
        return sys.stdin.isatty()
    os.close(fd)
    return True


class _Mismatch(CallAnnotateError):
    code = "bad_request"

    def __init__(self) -> None:
        super().__init__("passwords do not match")


class _NoPassword(CallAnnotateError):
    code = "bad_request"

    def __init__(self) -> None:
        super().__init__("no password was typed; in a script, pipe it in with --password-stdin")


def _when_or_none(value: Any) -> str | None:
    """A time for ``--json``: ``null`` when not set (never the table's ``-``)."""
    return value.isoformat(timespec="seconds") if value is not None else None


def _when(value: Any) -> str:
    return _when_or_none(value) or "-"


# --------------------------------------------------------------------------- users


def _users_create(args: argparse.Namespace, service: Any) -> int:
    user = service.create_user(args.name, _read_password(args), args.role)
    print(f"created {user.role} {user.username} ({user.id})")
    return 0


def _users_list(args: argparse.Namespace, service: Any) -> int:
    users = service.store.list_users()
    rows = [
        {
            "id": u.id,
            "username": u.username,
            "role": u.role,
            "disabled": u.disabled,
            "created_at": _when(u.created_at),
        }
        for u in users
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no users; create the first admin with: callannotate users create NAME --role admin")
        return 0
    for r in rows:
        state = "disabled" if r["disabled"] else "active"
        print(f"{r['id']}  {r['username']:24}  {r['role']:5}  {state:8}  {r['created_at']}")
    return 0


def _users_disable(args: argparse.Namespace, service: Any) -> int:
    service.set_disabled(args.name, True)
    print(f"disabled {args.name} (its refresh tokens are revoked)")
    return 0


def _users_enable(args: argparse.Namespace, service: Any) -> int:
    service.set_disabled(args.name, False)
    print(f"enabled {args.name}")
    return 0


def _users_set_password(args: argparse.Namespace, service: Any) -> int:
    service.set_password(args.name, _read_password(args))
    print(f"password of {args.name} changed (its refresh tokens are revoked)")
    return 0


# --------------------------------------------------------------------------- API keys


def _apikeys_create(args: argparse.Namespace, service: Any) -> int:
    from callannotate.security.service import normalize_username

    user = service.store.require_user_by_name(normalize_username(args.user))
    row, key = service.create_api_key(user.id, args.name, args.scopes)
    print(f"API key {row.id} ({row.name}) for {user.username}, scopes: {row.scopes}")
    print("store it now, it is not shown again:")
    print(key)
    return 0


def _apikeys_list(args: argparse.Namespace, service: Any) -> int:
    from callannotate.security.service import normalize_username

    owner = None
    if args.user:
        owner = service.store.require_user_by_name(normalize_username(args.user)).id
    names = {u.id: u.username for u in service.store.list_users()}
    rows = [
        {
            "id": k.id,
            "user": names.get(k.user_id, k.user_id),
            "name": k.name,
            "prefix": k.prefix,
            "scopes": k.scopes,
            "created_at": _when(k.created_at),
            "last_used_at": _when_or_none(k.last_used_at),
            "revoked_at": _when_or_none(k.revoked_at),
        }
        for k in service.store.list_api_keys(owner)
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no API keys")
    for r in rows:
        state = "revoked" if r["revoked_at"] is not None else "active"
        print(
            f"{r['id']}  ca_{r['prefix']}_…  {r['user']:16}  {r['name']:20}  {r['scopes']:16}  "
            f"{state:7}  last used {r['last_used_at'] or '-'}"
        )
    return 0


def _apikeys_revoke(args: argparse.Namespace, service: Any) -> int:
    service.revoke_api_key(args.key_id)
    print(f"revoked API key {args.key_id}")
    return 0


# --------------------------------------------------------------------------- clients


def _clients_create(args: argparse.Namespace, service: Any) -> int:
    client, secret = service.create_client(args.user, args.name, args.scopes)
    print(f"client_id:     {client.id}")
    print(f"client_secret: {secret}")
    print(f"scopes:        {client.scopes}   (the secret is not shown again)")
    return 0


def _clients_list(args: argparse.Namespace, service: Any) -> int:
    names = {u.id: u.username for u in service.store.list_users()}
    clients = service.store.list_clients()
    if not clients:
        print("no clients")
    for c in clients:
        state = "disabled" if c.disabled else "active"
        print(f"{c.id}  {names.get(c.user_id, c.user_id):16}  {c.name:20}  {c.scopes:16}  {state}")
    return 0


def _clients_set(disabled: bool) -> Callable[[argparse.Namespace, Any], int]:
    def run(args: argparse.Namespace, service: Any) -> int:
        service.set_client_disabled(args.client_id, disabled)
        print(f"{'disabled' if disabled else 'enabled'} client {args.client_id}")
        return 0

    return run


# --------------------------------------------------------------------------- signing keys


def _signing_rotate(args: argparse.Namespace) -> int:
    from callannotate.security.keyring import key_file_path, rotate_key_file

    settings = settings_from(args)
    if settings.auth.jwt_secret is not None:
        return _fail(
            "auth.jwt_secret is set: rotate by moving it to auth.jwt_previous_secrets "
            "and setting a new one"
        )
    grace = timedelta(seconds=settings.auth.access_token_ttl_s + settings.auth.leeway_s)
    new, dropped = rotate_key_file(key_file_path(settings), grace)
    print(f"new signing key {new.kid}; older keys verify for {int(grace.total_seconds())} s")
    if dropped:
        print(f"dropped expired keys: {', '.join(dropped)}")
    return 0


def _signing_list(args: argparse.Namespace) -> int:
    from callannotate.security.keyring import ensure_key_file, key_file_path

    settings = settings_from(args)
    if settings.auth.jwt_secret is not None:
        print("keys come from auth.jwt_secret / auth.jwt_previous_secrets")
        return 0
    for key in ensure_key_file(key_file_path(settings)):
        state = "current" if key.retired_at is None else f"retired {_when(key.retired_at)}"
        print(f"{key.kid}  created {_when(key.created_at)}  {state}")
    return 0


# --------------------------------------------------------------------------- parser


def _group(subparsers: Any, name: str, help_text: str, commands: str) -> Any:
    parser = subparsers.add_parser(name, help=help_text)
    parser.add_argument("--data-dir", help="data folder holding the database (default: settings)")
    sub = parser.add_subparsers(dest=f"{name}_command", metavar=commands)
    sub.required = True
    return sub


def _password_flag(parser: Any) -> None:
    parser.add_argument(
        "--password-stdin", action="store_true", help="read the password from stdin's first line"
    )


def add_parser(subparsers: Any) -> None:
    """Register ``users``, ``apikeys``, ``clients`` and ``signing-key``."""
    users = _group(
        subparsers, "users", "manage accounts", "{create,list,disable,enable,set-password}"
    )
    create = users.add_parser("create", help="create an account (asks for the password)")
    create.add_argument("name", help="user name (lower-cased)")
    create.add_argument("--role", choices=("admin", "user"), default="user")
    _password_flag(create)
    create.set_defaults(func=_guarded(_users_create))
    lst = users.add_parser("list", help="list accounts")
    lst.add_argument("--json", action="store_true", help="print JSON")
    lst.set_defaults(func=_guarded(_users_list))
    for name, handler, text in (
        ("disable", _users_disable, "refuse the account's logins and tokens"),
        ("enable", _users_enable, "allow a disabled account again"),
    ):
        cmd = users.add_parser(name, help=text)
        cmd.add_argument("name")
        cmd.set_defaults(func=_guarded(handler))
    setpw = users.add_parser("set-password", help="change an account's password")
    setpw.add_argument("name")
    _password_flag(setpw)
    setpw.set_defaults(func=_guarded(_users_set_password))

    keys = _group(subparsers, "apikeys", "personal API keys for scripts", "{create,list,revoke}")
    kc = keys.add_parser("create", help="create a key for a user (printed once)")
    kc.add_argument("--user", required=True, help="the user the key acts for")
    kc.add_argument("--name", required=True, help="what the key is for")
    kc.add_argument("--scopes", help="comma-separated: read,write,admin (default: the role's)")
    kc.set_defaults(func=_guarded(_apikeys_create))
    kl = keys.add_parser("list", help="list keys (never the keys themselves)")
    kl.add_argument("--user", help="only this user's keys")
    kl.add_argument("--json", action="store_true", help="print JSON")
    kl.set_defaults(func=_guarded(_apikeys_list))
    kr = keys.add_parser("revoke", help="revoke a key by id")
    kr.add_argument("key_id")
    kr.set_defaults(func=_guarded(_apikeys_revoke))

    clients = _group(
        subparsers, "clients", "OAuth2 client-credentials clients", "{create,list,disable,enable}"
    )
    cc = clients.add_parser("create", help="create a client acting for a user")
    cc.add_argument("--user", required=True, help="the user the client acts for")
    cc.add_argument("--name", required=True, help="what the client is")
    cc.add_argument("--scopes", help="comma-separated: read,write,admin (default: the role's)")
    cc.set_defaults(func=_guarded(_clients_create))
    clients.add_parser("list", help="list clients").set_defaults(func=_guarded(_clients_list))
    for name, disabled in (("disable", True), ("enable", False)):
        cmd = clients.add_parser(name, help=f"{name} a client")
        cmd.add_argument("client_id")
        cmd.set_defaults(func=_guarded(_clients_set(disabled)))

    signing = _group(subparsers, "signing-key", "JWT signing key ring", "{rotate,list}")
    signing.add_parser("rotate", help="new signing key; old ones verify until tokens expire")
    signing.choices["rotate"].set_defaults(func=_signing_rotate)
    signing.add_parser("list", help="list key ids").set_defaults(func=_signing_list)
