"""``callannotate keys list|rotate|rewrap|encrypt-existing``: encryption at rest.

``rotate`` adds a new current master key to the key file and re-wraps every encrypted file's
data key under it (only each file's 128-byte header is rewritten; the audio is not
re-encrypted). ``rewrap`` does the second half alone, e.g. after changing
``encryption.master_key`` (move the old value to ``encryption.previous_master_keys``).
``encrypt-existing`` encrypts the plaintext files stored before encryption was on.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from callannotate.config import Settings


def _settings(args: argparse.Namespace) -> Settings:
    settings = Settings()
    if getattr(args, "data_dir", None):
        settings = settings.model_copy(update={"data_dir": Path(args.data_dir)})
    return settings


def _fail(message: str) -> int:
    print(f"callannotate: error: {message}", file=sys.stderr)
    return 2


def _file_kids(settings: Settings) -> Counter[str]:
    """How many encrypted files under the data folder each master key wraps."""
    from callannotate.security.atrest import _walk
    from callannotate.security.envelope import HEADER_SIZE, DecryptionError, Header
    from callannotate.security.masterkeys import key_file_path

    counts: Counter[str] = Counter()
    skip = key_file_path(settings).parent.resolve()
    for path in _walk(settings.data_dir, skip=skip):
        try:
            with open(path, "rb") as fh:
                counts[Header.parse(fh.read(HEADER_SIZE)).kid] += 1
        except (OSError, DecryptionError):
            continue
    return counts


def _cmd_list(args: argparse.Namespace) -> int:
    from callannotate.security.atrest import vault_for
    from callannotate.security.masterkeys import MasterKeyError, key_file_path

    settings = _settings(args)
    try:
        ring = vault_for(settings).ring
    except MasterKeyError as exc:
        return _fail(str(exc))
    source = (
        "settings (encryption.master_key)"
        if settings.encryption.master_key is not None
        else str(key_file_path(settings))
    )
    print(
        f"master keys from {source}; encryption of new files: "
        f"{'on' if settings.encryption.enabled else 'off'}"
    )
    counts = _file_kids(settings) if args.files else Counter()
    for key in ring.all_keys():
        state = "current" if key.kid == ring.current.kid else "old"
        line = f"{key.kid}  created {key.created_at.isoformat(timespec='seconds')}  {state}"
        if args.files:
            line += f"  files {counts.pop(key.kid, 0)}"
        print(line)
    for kid, n in sorted(counts.items()):
        print(f"{kid}  MISSING from the key ring  files {n}")
    return 0


def _rewrap(settings: Settings) -> int:
    from callannotate.security.atrest import vault_for

    vault = vault_for(settings)
    report = vault.rewrap_tree(settings.data_dir)
    print(
        f"re-wrapped {len(report.rewrapped)} file(s) under {vault.ring.current.kid}; "
        f"{report.already_current} already current, {report.plaintext} not encrypted"
    )
    for path, reason in report.failed:
        print(f"  FAILED {path}: {reason}", file=sys.stderr)
    return 1 if report.failed else 0


def _cmd_rotate(args: argparse.Namespace) -> int:
    from callannotate.security.atrest import vault_for
    from callannotate.security.masterkeys import key_file_path, rotate_key_file

    settings = _settings(args)
    if settings.encryption.master_key is not None:
        return _fail(
            "encryption.master_key is set: rotate by moving it to "
            "encryption.previous_master_keys, setting a new one, then `callannotate keys rewrap`"
        )
    path = key_file_path(settings)
    vault_for(settings).ring  # noqa: B018 - creates the key file when missing
    new = rotate_key_file(path)
    vault_for(settings).ring.reload()
    print(f"new master key {new.kid} in {path} (back this file up)")
    if args.no_rewrap:
        return 0
    return _rewrap(settings)


def _cmd_rewrap(args: argparse.Namespace) -> int:
    return _rewrap(_settings(args))


def _cmd_encrypt_existing(args: argparse.Namespace) -> int:
    from callannotate.security.atrest import encrypt_existing
    from callannotate.security.masterkeys import MasterKeyError

    try:
        report = encrypt_existing(_settings(args))
    except MasterKeyError as exc:
        return _fail(str(exc))
    print(
        f"encrypted {len(report.encrypted)} file(s); {report.already_encrypted} already "
        f"encrypted; {len(report.changed_meanwhile)} changed meanwhile (run again)"
    )
    for path in report.changed_meanwhile:
        print(f"  CHANGED {path}", file=sys.stderr)
    for path, reason in report.failed:
        print(f"  FAILED {path}: {reason}", file=sys.stderr)
    return 1 if report.failed or report.changed_meanwhile else 0


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("keys", help="master keys of encryption at rest")
    parser.add_argument("--data-dir", help="data folder (default: settings)")
    sub = parser.add_subparsers(
        dest="keys_command", metavar="{list,rotate,rewrap,encrypt-existing}"
    )
    sub.required = True
    lst = sub.add_parser("list", help="list master key ids (never the keys)")
    lst.add_argument("--files", action="store_true", help="count the files wrapped by each key")
    lst.set_defaults(func=_cmd_list)
    rot = sub.add_parser("rotate", help="new master key, then re-wrap every file's data key")
    rot.add_argument(
        "--no-rewrap", action="store_true", help="only add the key; re-wrap later with `rewrap`"
    )
    rot.set_defaults(func=_cmd_rotate)
    rew = sub.add_parser("rewrap", help="re-wrap every file's data key under the current key")
    rew.set_defaults(func=_cmd_rewrap)
    enc = sub.add_parser(
        "encrypt-existing",
        help="encrypt recordings, results, voiceprints stored before encryption was on",
    )
    enc.set_defaults(func=_cmd_encrypt_existing)
