"""Master keys for encryption at rest (they wrap per-file data keys; they never encrypt data).

Keys come from, in order:

* ``encryption.master_key`` (+ ``encryption.previous_master_keys``), base64 of 32 bytes, given
  as secret settings; the id of each is a digest of the key, so it is stable across restarts;
* otherwise the key ring file ``encryption.key_file`` (default
  ``data_dir/secrets/master-keys.json``, mode 0600), created with one key on first use.
  ``callannotate keys rotate`` appends a new current key; old keys stay in the file because
  files wrapped under them (or backups of such files) still need them.

A process re-reads the key file when it meets an unknown key id, so a rotation made by the CLI
is picked up by a running server without a restart.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import secrets
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from filelock import FileLock

from callannotate.config import Settings
from callannotate.errors import CallAnnotateError
from callannotate.jobs.fsutil import private_dir

KEY_BYTES = 32
MAX_KID_BYTES = 32
RELOAD_INTERVAL_S = 1.0


class MasterKeyError(CallAnnotateError):
    """A master key is missing, malformed or unknown."""

    status_code = 500
    code = "master_key_unavailable"


@dataclass(frozen=True)
class MasterKey:
    kid: str
    key: bytes
    created_at: datetime
    current: bool


def key_file_path(settings: Settings) -> Path:
    return settings.encryption.key_file or settings.data_dir / "secrets" / "master-keys.json"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def decode_key(text: str, what: str) -> bytes:
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise MasterKeyError(f"{what}: not valid base64") from None
    if len(key) != KEY_BYTES:
        raise MasterKeyError(f"{what}: must decode to {KEY_BYTES} bytes, got {len(key)}")
    return key


def kid_for(key: bytes) -> str:
    return "s-" + hashlib.sha256(b"callannotate-master-key-id\x00" + key).hexdigest()[:16]


def _read_file(path: Path) -> list[MasterKey]:
    try:
        data = json.loads(path.read_text("utf-8"))
        keys = [
            MasterKey(
                kid=str(item["kid"]),
                key=decode_key(item["key"], f"{path.name}: key {item['kid']}"),
                created_at=datetime.fromisoformat(item["created_at"]),
                current=bool(item.get("current", False)),
            )
            for item in data["keys"]
        ]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise MasterKeyError(f"cannot read master key file {path}: {exc}") from None
    if sum(k.current for k in keys) != 1:
        raise MasterKeyError(f"{path}: exactly one master key must be current")
    return keys


def _write_file(path: Path, keys: list[MasterKey]) -> None:
    private_dir(path.parent)
    payload = {
        "comment": (
            "CallAnnotate master keys. Back this file up separately from the data folder: "
            "without it encrypted recordings cannot be read."
        ),
        "keys": [
            {
                "kid": k.kid,
                "key": _b64(k.key),
                "created_at": k.created_at.isoformat(),
                "current": k.current,
            }
            for k in keys
        ],
    }
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # created 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(payload, fh, indent=2)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _new_key() -> MasterKey:
    return MasterKey(
        kid="k-" + secrets.token_hex(8),
        key=secrets.token_bytes(KEY_BYTES),
        created_at=datetime.now(UTC),
        current=True,
    )


def ensure_key_file(path: Path) -> list[MasterKey]:
    """The keys in ``path``, creating it (mode 0600) with one fresh key when it is missing."""
    if path.exists():
        return _read_file(path)
    private_dir(path.parent)  # 0700, and so are the parents it creates (the data folder)
    with FileLock(f"{path}.lock", mode=0o600):
        if not path.exists():
            _write_file(path, [_new_key()])
        return _read_file(path)


def rotate_key_file(path: Path) -> MasterKey:
    """Append a new current key to the ring; the older keys stay (they still unwrap)."""
    private_dir(path.parent)
    with FileLock(f"{path}.lock", mode=0o600):
        keys = _read_file(path) if path.exists() else []
        old = [MasterKey(k.kid, k.key, k.created_at, False) for k in keys]
        new = _new_key()
        _write_file(path, [*old, new])
        return new


class MasterKeyRing:
    """The current master key (wraps new data keys) and every key that still unwraps."""

    def __init__(self, keys: list[MasterKey], path: Path | None = None) -> None:
        self._lock = threading.Lock()
        self._path = path
        self._mtime = path.stat().st_mtime_ns if path is not None and path.exists() else 0
        self._checked = time.monotonic()
        self._set(keys)

    def _set(self, keys: list[MasterKey]) -> None:
        for k in keys:
            if len(k.kid.encode("utf-8")) > MAX_KID_BYTES:
                raise MasterKeyError(f"master key id too long: {k.kid!r}")
        self._keys = {k.kid: k for k in keys}
        self._current = next(k for k in keys if k.current)

    @classmethod
    def from_settings(cls, settings: Settings) -> MasterKeyRing:
        enc = settings.encryption
        if enc.master_key is not None:
            keys = []
            for i, value in enumerate([enc.master_key, *enc.previous_master_keys]):
                what = "encryption.master_key" if i == 0 else "encryption.previous_master_keys"
                key = decode_key(value.get_secret_value(), what)
                keys.append(MasterKey(kid_for(key), key, datetime.fromtimestamp(0, UTC), i == 0))
            return cls(keys)
        path = key_file_path(settings)
        return cls(ensure_key_file(path), path)

    @property
    def path(self) -> Path | None:
        return self._path

    @property
    def current(self) -> MasterKey:
        """The key new data keys are wrapped with (a rotation by the CLI is seen within 1 s)."""
        if time.monotonic() - self._checked >= RELOAD_INTERVAL_S:
            self.reload()
        return self._current

    def all_keys(self) -> list[MasterKey]:
        return list(self._keys.values())

    def get(self, kid: str) -> MasterKey:
        key = self._keys.get(kid)
        if key is None and self.reload():
            key = self._keys.get(kid)
        if key is None:
            raise MasterKeyError(
                f"master key {kid!r} is not available (restore the key file it was written with)"
            )
        return key

    def reload(self) -> bool:
        """Re-read the key file when it changed on disk; True when keys were replaced."""
        if self._path is None:
            return False
        with self._lock:
            self._checked = time.monotonic()
            try:
                mtime = self._path.stat().st_mtime_ns
                if mtime == self._mtime:
                    return False
                self._set(_read_file(self._path))
                self._mtime = mtime
            except (OSError, MasterKeyError):
                return False
            return True


def read_key_file(path: Path) -> list[MasterKey]:
    """The keys in ``path`` (``MasterKeyError`` when it is missing or malformed)."""
    return _read_file(path)
