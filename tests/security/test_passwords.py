"""argon2id through pwdlib: hashing, verification, upgrade of weaker hashes, policy."""

from __future__ import annotations

import pytest

from callannotate.config import AuthSettings
from callannotate.security.passwords import Passwords, check_password_policy

CHEAP = AuthSettings(argon2_time_cost=1, argon2_memory_cost=1024)


def test_hash_and_verify() -> None:
    passwords = Passwords(CHEAP)
    hashed = passwords.hash("correct horse")
    assert hashed.startswith("$argon2id$") and "correct horse" not in hashed
    assert passwords.verify("correct horse", hashed) == (True, None)
    assert passwords.verify("wrong", hashed)[0] is False
    assert passwords.verify("x", None) == (False, None)  # unknown user: still does the work
    assert passwords.verify("x", "not-a-hash") == (False, None)


def test_default_cost_is_the_library_default() -> None:
    strong = Passwords(AuthSettings())
    hashed = strong.hash("pw-123456")
    assert "$m=65536,t=3,p=4$" in hashed
    # A hash made with the cheap test parameters is upgraded on the next successful login.
    cheap = Passwords(CHEAP).hash("pw-123456")
    ok, new_hash = strong.verify("pw-123456", cheap)
    assert ok and new_hash is not None and "$m=65536,t=3,p=4$" in new_hash


def test_policy() -> None:
    check_password_policy("12345678")
    with pytest.raises(ValueError):
        check_password_policy("1234567")
    with pytest.raises(ValueError):
        check_password_policy("x" * 1025)
