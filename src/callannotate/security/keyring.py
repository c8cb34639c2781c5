"""JWT signing keys (HS256, 256-bit) with ids, for rotation without logging everyone out.

The *current* key signs; *retired* keys keep verifying tokens until the longest access token
they could have signed has expired, then they are dropped. Keys come from:

* ``auth.jwt_secret`` (+ ``auth.jwt_previous_secrets``): the id is a digest of the secret;
  previous secrets verify until you remove them from the settings;
* otherwise the key ring file ``auth.jwt_key_file`` (default
  ``data_dir/secrets/jwt-keys.json``, mode 0600), created on first use and rotated with
  ``callannotate signing-key rotate``. A running server re-reads the file when it meets an
  unknown ``kid``, so a rotation made by the CLI is picked up without a restart.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from filelock import FileLock

from callannotate.config import Settings

KEY_BYTES = 32
MIN_SECRET_BYTES = 32
RELOAD_INTERVAL_S = 1.0


@dataclass(frozen=True)
class SigningKey:
    kid: str
    secret: bytes
    created_at: datetime
    retired_at: datetime | None = None

    def verifies_at(self, now: datetime, grace: timedelta) -> bool:
        return self.retired_at is None or now < self.retired_at + grace


def _kid_for(secret: bytes) -> str:
    return "s-" + hashlib.sha256(secret).hexdigest()[:16]


def key_file_path(settings: Settings) -> Path:
    return settings.auth.jwt_key_file or settings.data_dir / "secrets" / "jwt-keys.json"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _read_file(path: Path) -> list[SigningKey]:
    data = json.loads(path.read_text("utf-8"))
    keys = []
    for item in data["keys"]:
        retired = item.get("retired_at")
        keys.append(
            SigningKey(
                kid=str(item["kid"]),
                secret=_unb64(item["secret"]),
                created_at=datetime.fromisoformat(item["created_at"]),
                retired_at=datetime.fromisoformat(retired) if retired else None,
            )
        )
    if sum(k.retired_at is None for k in keys) != 1:
        raise ValueError(f"{path.name}: exactly one key must be current (not retired)")
    return keys


def _write_file(path: Path, keys: list[SigningKey]) -> None:
    path.parent.mkdir(parents=True, mode=0o700, exist_ok=True)
    payload = {
        "keys": [
            {
                "kid": k.kid,
                "secret": _b64(k.secret),
                "created_at": k.created_at.isoformat(),
                "retired_at": k.retired_at.isoformat() if k.retired_at else None,
            }
            for k in keys
        ]
    }
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # created 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(payload, fh, indent=2)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _new_key(now: datetime) -> SigningKey:
    secret = secrets.token_bytes(KEY_BYTES)
    return SigningKey(kid="k-" + secrets.token_hex(8), secret=secret, created_at=now)


class KeyRing:
    """The signing key and the keys that still verify; thread-safe."""

    def __init__(self, keys: list[SigningKey], grace: timedelta, path: Path | None = None):
        self._lock = threading.Lock()
        self._grace = grace
        self._path = path
        self._mtime = path.stat().st_mtime_ns if path is not None and path.exists() else 0
        self._checked = time.monotonic()
        self._set(keys)

    def _set(self, keys: list[SigningKey]) -> None:
        self._keys = {k.kid: k for k in keys}
        self._current = next(k for k in keys if k.retired_at is None)

    @classmethod
    def from_settings(cls, settings: Settings) -> KeyRing:
        auth = settings.auth
        grace = timedelta(seconds=auth.access_token_ttl_s + auth.leeway_s)
        if auth.jwt_secret is not None:
            return cls(cls._keys_from_secrets(settings), grace)
        path = key_file_path(settings)
        return cls(ensure_key_file(path), grace, path)

    @staticmethod
    def _keys_from_secrets(settings: Settings) -> list[SigningKey]:
        auth = settings.auth
        assert auth.jwt_secret is not None
        epoch = datetime.fromtimestamp(0, UTC)
        keys = []
        for i, value in enumerate([auth.jwt_secret, *auth.jwt_previous_secrets]):
            secret = value.get_secret_value().encode("utf-8")
            if len(secret) < MIN_SECRET_BYTES:
                raise ValueError(f"auth.jwt_secret: use at least {MIN_SECRET_BYTES} bytes")
            far = datetime.max.replace(tzinfo=UTC) - timedelta(days=1) if i else None
            keys.append(SigningKey(_kid_for(secret), secret, epoch, far))
        return keys

    @property
    def current(self) -> SigningKey:
        """The signing key; a rotation by the CLI (`signing-key rotate`) is seen within 1 s."""
        if self._path is not None and time.monotonic() - self._checked >= RELOAD_INTERVAL_S:
            self._maybe_reload()
        return self._current

    def kids(self) -> list[str]:
        return list(self._keys)

    def verification_key(self, kid: str) -> bytes | None:
        """The secret for ``kid`` when it still verifies; re-reads the file on a miss."""
        key = self._keys.get(kid)
        if key is None and self._maybe_reload():
            key = self._keys.get(kid)
        if key is None:
            return None
        # the clock is read only for retired keys (the hot path verifies with the current one)
        if key.retired_at is not None and not key.verifies_at(datetime.now(UTC), self._grace):
            return None
        return key.secret

    def _maybe_reload(self) -> bool:
        if self._path is None:
            return False
        with self._lock:
            now = time.monotonic()
            if now - self._checked < RELOAD_INTERVAL_S:
                return False
            self._checked = now
            try:
                mtime = self._path.stat().st_mtime_ns
                if mtime == self._mtime:
                    return False
                self._set(_read_file(self._path))
                self._mtime = mtime
            except (OSError, ValueError, KeyError):
                return False
            return True


def ensure_key_file(path: Path) -> list[SigningKey]:
    """The keys in ``path``, creating the file with one fresh key when it is missing."""
    path.parent.mkdir(parents=True, mode=0o700, exist_ok=True)
    with FileLock(f"{path}.lock", mode=0o600):
        if not path.exists():
            _write_file(path, [_new_key(datetime.now(UTC))])
        return _read_file(path)


def rotate_key_file(path: Path, grace: timedelta) -> tuple[SigningKey, list[str]]:
    """Retire the current key, add a new current one, drop keys past their grace.

    Returns the new key and the ids dropped.
    """
    path.parent.mkdir(parents=True, mode=0o700, exist_ok=True)
    with FileLock(f"{path}.lock", mode=0o600):
        now = datetime.now(UTC)
        keys = _read_file(path) if path.exists() else []
        kept: list[SigningKey] = []
        dropped: list[str] = []
        for key in keys:
            if key.retired_at is None:
                key = SigningKey(key.kid, key.secret, key.created_at, now)
            if key.verifies_at(now, grace):
                kept.append(key)
            else:
                dropped.append(key.kid)
        new = _new_key(now)
        _write_file(path, [*kept, new])
        return new, dropped


def read_key_file(path: Path) -> list[SigningKey]:
    return _read_file(path)
