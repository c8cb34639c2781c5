"""Password hashing with argon2id (pwdlib). Costs ~50-300 ms: call it off the event loop."""

from __future__ import annotations

import secrets

import argon2
from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher

from callannotate.config import AuthSettings

MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 1024


class Passwords:
    """argon2id with the library's default cost unless the settings lower it (tests)."""

    def __init__(self, settings: AuthSettings) -> None:
        lowered = settings.argon2_memory_cost is not None
        hasher = Argon2Hasher(
            time_cost=settings.argon2_time_cost or argon2.DEFAULT_TIME_COST,
            memory_cost=settings.argon2_memory_cost or argon2.DEFAULT_MEMORY_COST,
            parallelism=1 if lowered else argon2.DEFAULT_PARALLELISM,
        )
        self._hash = PasswordHash((hasher,))
        # Verified against when the user does not exist, so both cases cost the same.
        self._dummy = self._hash.hash(secrets.token_urlsafe(16))

    def hash(self, password: str) -> str:
        return self._hash.hash(password)

    def verify(self, password: str, hashed: str | None) -> tuple[bool, str | None]:
        """``(ok, new_hash)``: ``new_hash`` is set when the stored hash should be upgraded.

        With ``hashed=None`` (unknown user) a dummy hash is checked so the time is the same.
        """
        if hashed is None:
            self._hash.verify(password, self._dummy)
            return False, None
        try:
            return self._hash.verify_and_update(password, hashed)
        except Exception:  # a corrupt or foreign hash is a failed login, not a 500
            return False, None


def check_password_policy(password: str) -> None:
    """Raise ``ValueError`` for a password that is too short or too long."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValueError(f"password must have at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise ValueError(f"password must have at most {MAX_PASSWORD_LENGTH} characters")
