"""Signed links (security/links.py): what a signature binds, expiry, malformed parameters,
and keys retired by a rotation."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import pytest

from callannotate.security.errors import AuthenticationFailed
from callannotate.security.keyring import KeyRing, SigningKey
from callannotate.security.links import LinkClaims, parse_link, sign_link, verify_link

NOW = 1_800_000_000
CLAIMS = LinkClaims("report", "a" * 32, "user-1", NOW + 600)


def ring(*secrets: bytes) -> KeyRing:
    """The first secret signs; the others are retired but still verify."""
    epoch = datetime.fromtimestamp(0, UTC)
    keys = [
        SigningKey(f"k{i}", secret, epoch, None if i == 0 else datetime.now(UTC))
        for i, secret in enumerate(secrets)
    ]
    return KeyRing(keys, timedelta(hours=1))


def test_a_link_verifies_only_for_what_it_was_signed_for() -> None:
    keys = ring(b"s" * 32)
    params = parse_link(sign_link(keys, CLAIMS), now=NOW)
    verify_link(keys, params, "report", "a" * 32, "user-1")
    for purpose, job, owner in (
        ("audio", "a" * 32, "user-1"),  # another route
        ("report", "b" * 32, "user-1"),  # another job
        ("report", "a" * 32, "user-2"),  # the job changed hands
    ):
        with pytest.raises(AuthenticationFailed):
            verify_link(keys, params, purpose, job, owner)


def test_tampered_expiry_or_signature_is_refused() -> None:
    keys = ring(b"s" * 32)
    query = sign_link(keys, CLAIMS)
    later = parse_link({**query, "exp": str(CLAIMS.expires_at + 3600)}, now=NOW)
    with pytest.raises(AuthenticationFailed):
        verify_link(keys, later, "report", "a" * 32, "user-1")
    raw = bytearray(base64.urlsafe_b64decode(query["sig"] + "="))
    raw[0] ^= 1
    forged = base64.urlsafe_b64encode(bytes(raw)).decode().rstrip("=")
    with pytest.raises(AuthenticationFailed):
        verify_link(
            keys, parse_link({**query, "sig": forged}, now=NOW), "report", "a" * 32, "user-1"
        )
    with pytest.raises(AuthenticationFailed):  # signed by another server's key
        verify_link(ring(b"t" * 32), parse_link(query, now=NOW), "report", "a" * 32, "user-1")


def test_expired_and_malformed_links_are_refused() -> None:
    query = sign_link(ring(b"s" * 32), CLAIMS)
    with pytest.raises(AuthenticationFailed) as exc:
        parse_link(query, now=CLAIMS.expires_at)
    assert exc.value.reason == "expired"
    for broken in (
        {k: v for k, v in query.items() if k != "sig"},
        {**query, "exp": "-5"},
        {**query, "exp": "soon"},
        {**query, "sig": "not base64!"},
        {**query, "sig": query["sig"][:-4]},
        {**query, "kid": ""},
        {**query, "kid": "k" * 65},
    ):
        with pytest.raises(AuthenticationFailed):
            parse_link(broken, now=NOW)


def test_a_link_survives_a_rotation_while_its_key_still_verifies() -> None:
    epoch, now = datetime.fromtimestamp(0, UTC), datetime.now(UTC)
    grace = timedelta(hours=1)

    def rotated(retired_at: datetime) -> KeyRing:
        old = SigningKey("k-old", b"s" * 32, epoch, retired_at)
        return KeyRing([old, SigningKey("k-new", b"n" * 32, epoch)], grace)

    signed = KeyRing([SigningKey("k-old", b"s" * 32, epoch)], grace)
    params = parse_link(sign_link(signed, CLAIMS), now=NOW)
    verify_link(rotated(now), params, "report", "a" * 32, "user-1")
    with pytest.raises(AuthenticationFailed):  # past the retired key's grace
        verify_link(rotated(now - 2 * grace), params, "report", "a" * 32, "user-1")
