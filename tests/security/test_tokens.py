"""Access JWTs: every refusal case the issue lists, one test each, and key rotation."""

from __future__ import annotations

import base64
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jwt
import pytest
from pydantic import SecretStr

from callannotate.config import AuthSettings, Settings
from callannotate.security.errors import AuthenticationFailed
from callannotate.security.keyring import (
    KeyRing,
    SigningKey,
    key_file_path,
    read_key_file,
    rotate_key_file,
)
from callannotate.security.service import AuthService
from callannotate.security.tokens import TokenCodec

SCOPES = frozenset({"read"})


@pytest.fixture
def file_settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data")


@pytest.fixture
def codec(file_settings: Settings) -> TokenCodec:
    return TokenCodec(file_settings.auth, KeyRing.from_settings(file_settings))


def _b64(data: dict[str, object]) -> str:
    raw = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _parts(token: str) -> tuple[dict[str, object], dict[str, object], str]:
    head, body, sig = token.split(".")
    pad = lambda s: s + "=" * (-len(s) % 4)  # noqa: E731
    return (
        json.loads(base64.urlsafe_b64decode(pad(head))),
        json.loads(base64.urlsafe_b64decode(pad(body))),
        sig,
    )


def test_round_trip(codec: TokenCodec) -> None:
    token, claims = codec.encode("user-1", SCOPES)
    header, payload, _ = _parts(token)
    assert header["alg"] == "HS256" and header["kid"] == codec.keyring.current.kid
    assert {"iss", "aud", "exp", "nbf", "iat", "jti", "sub"} <= set(payload)
    decoded = codec.decode(token)
    assert decoded.subject == "user-1" and decoded.scopes == SCOPES and decoded.jti == claims.jti


def test_alg_none_is_refused(codec: TokenCodec) -> None:
    token, _ = codec.encode("user-1", SCOPES)
    header, payload, _ = _parts(token)
    forged = f"{_b64({**header, 'alg': 'none'})}.{_b64(payload)}."
    with pytest.raises(AuthenticationFailed):
        codec.decode(forged)
    unsigned = jwt.encode(payload, None, algorithm="none", headers={"kid": header["kid"]})
    with pytest.raises(AuthenticationFailed):
        codec.decode(unsigned)


def test_wrong_key_is_refused(codec: TokenCodec) -> None:
    token, _ = codec.encode("user-1", SCOPES)
    header, payload, _ = _parts(token)
    forged = jwt.encode(payload, b"k" * 32, algorithm="HS256", headers={"kid": header["kid"]})
    with pytest.raises(AuthenticationFailed):
        codec.decode(forged)


def test_tampered_claim_is_refused(codec: TokenCodec) -> None:
    token, _ = codec.encode("user-1", SCOPES)
    header, payload, sig = _parts(token)
    tampered = f"{_b64(header)}.{_b64({**payload, 'scope': 'read write admin'})}.{sig}"
    with pytest.raises(AuthenticationFailed):
        codec.decode(tampered)


def test_expired_token_is_refused(codec: TokenCodec) -> None:
    past = time.time() - 3600
    token, _ = codec.encode("user-1", SCOPES, now=past, ttl_s=60)
    with pytest.raises(AuthenticationFailed):
        codec.decode(token)


def test_remembered_token_is_refused_once_it_expires(
    codec: TokenCodec, monkeypatch: pytest.MonkeyPatch
) -> None:
    token, claims = codec.encode("user-1", SCOPES, ttl_s=60)
    assert codec.decode(token) == claims  # verified and remembered
    assert codec.decode(token) == claims  # answered from memory
    later = time.time() + 60 + codec.settings.leeway_s + 1
    monkeypatch.setattr("callannotate.security.tokens.time.time", lambda: later)
    with pytest.raises(AuthenticationFailed):
        codec.decode(token)


def test_remembered_token_is_refused_once_its_key_stops_verifying(
    codec: TokenCodec, monkeypatch: pytest.MonkeyPatch
) -> None:
    token, _ = codec.encode("user-1", SCOPES)
    codec.decode(token)
    monkeypatch.setattr(codec.keyring, "verification_key", lambda kid: None)
    with pytest.raises(AuthenticationFailed):
        codec.decode(token)


def test_remembered_tokens_are_bounded(codec: TokenCodec, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("callannotate.security.tokens.VERIFIED_CACHE_SIZE", 3)
    tokens = [codec.encode(f"user-{i}", SCOPES)[0] for i in range(5)]
    for token in tokens:
        codec.decode(token)
    assert list(codec._verified) == tokens[-3:]
    assert codec.decode(tokens[0]).subject == "user-0"  # evicted, verified again


def test_unknown_kid_is_refused(codec: TokenCodec) -> None:
    token, _ = codec.encode("user-1", SCOPES)
    _, payload, _ = _parts(token)
    secret = codec.keyring.current.secret
    forged = jwt.encode(payload, secret, algorithm="HS256", headers={"kid": "k-unknown"})
    with pytest.raises(AuthenticationFailed):
        codec.decode(forged)


def test_not_yet_valid_wrong_issuer_wrong_audience_missing_jti(codec: TokenCodec) -> None:
    key = codec.keyring.current
    now = int(time.time())
    good = {
        "iss": "callannotate",
        "aud": "callannotate-api",
        "sub": "u",
        "iat": now,
        "nbf": now,
        "exp": now + 60,
        "jti": "j",
        "typ": "access",
    }
    assert codec.decode(jwt.encode(good, key.secret, "HS256", headers={"kid": key.kid}))
    for change in (
        {"nbf": now + 600},
        {"iss": "someone-else"},
        {"aud": "other-api"},
        {"typ": "refresh"},
    ):
        token = jwt.encode({**good, **change}, key.secret, "HS256", headers={"kid": key.kid})
        with pytest.raises(AuthenticationFailed):
            codec.decode(token)
    missing = {k: v for k, v in good.items() if k != "jti"}
    token = jwt.encode(missing, key.secret, "HS256", headers={"kid": key.kid})
    with pytest.raises(AuthenticationFailed):
        codec.decode(token)


def test_token_of_a_disabled_user_is_refused(service: AuthService) -> None:
    user = service.create_user("alice", "correct horse", "user")
    token, _ = service.codec.encode(user.id, SCOPES)
    assert service.principal_from_jwt(token).id == user.id
    service.set_disabled("alice", True)
    with pytest.raises(AuthenticationFailed):
        service.principal_from_jwt(token)


def test_rotation_old_key_verifies_until_its_tokens_expire(file_settings: Settings) -> None:
    ring = KeyRing.from_settings(file_settings)
    codec = TokenCodec(file_settings.auth, ring)
    old_token, _ = codec.encode("u", SCOPES)
    old_kid = ring.current.kid
    grace = timedelta(seconds=file_settings.auth.access_token_ttl_s + file_settings.auth.leeway_s)
    new, _ = rotate_key_file(key_file_path(file_settings), grace)

    restarted = TokenCodec(file_settings.auth, KeyRing.from_settings(file_settings))
    assert restarted.keyring.current.kid == new.kid != old_kid
    assert restarted.decode(old_token).subject == "u"  # the retired key still verifies
    new_token, _ = restarted.encode("u", SCOPES)
    assert _parts(new_token)[0]["kid"] == new.kid

    # Once the grace has passed, the retired key verifies nothing and the next rotation drops it.
    path = key_file_path(file_settings)
    keys = read_key_file(path)
    long_ago = datetime.now(UTC) - grace - timedelta(seconds=1)
    aged = [
        SigningKey(k.kid, k.secret, k.created_at, long_ago if k.retired_at else None) for k in keys
    ]
    stale = TokenCodec(file_settings.auth, KeyRing(aged, grace))
    with pytest.raises(AuthenticationFailed):
        stale.decode(old_token)


def test_running_server_picks_up_a_rotation(file_settings: Settings) -> None:
    server = TokenCodec(file_settings.auth, KeyRing.from_settings(file_settings))
    cli = TokenCodec(file_settings.auth, KeyRing.from_settings(file_settings))
    rotate_key_file(key_file_path(file_settings), timedelta(minutes=15))
    time.sleep(1.05)  # the ring re-reads the file at most once a second
    cli = TokenCodec(file_settings.auth, KeyRing.from_settings(file_settings))
    token, _ = cli.encode("u", SCOPES)
    assert server.decode(token).subject == "u"


def test_a_running_server_signs_with_the_new_key_after_a_rotation(
    file_settings: Settings,
) -> None:
    """`callannotate signing-key rotate` retires the key (a leak, a schedule): a running server
    kept signing every new token with the retired key until it was restarted."""
    server = TokenCodec(file_settings.auth, KeyRing.from_settings(file_settings))
    old_kid = server.keyring.current.kid
    new, _ = rotate_key_file(key_file_path(file_settings), timedelta(minutes=15))
    time.sleep(1.05)  # the ring re-reads the file at most once a second
    token, _ = server.encode("u", SCOPES)
    assert _parts(token)[0]["kid"] == new.kid != old_kid
    assert server.decode(token).subject == "u"


def test_secret_from_settings_with_previous_secrets(tmp_path: Path) -> None:
    old = Settings(data_dir=tmp_path, auth=AuthSettings(jwt_secret=SecretStr("o" * 32)))
    old_token, _ = TokenCodec(old.auth, KeyRing.from_settings(old)).encode("u", SCOPES)
    rotated = Settings(
        data_dir=tmp_path,
        auth=AuthSettings(
            jwt_secret=SecretStr("n" * 32), jwt_previous_secrets=[SecretStr("o" * 32)]
        ),
    )
    codec = TokenCodec(rotated.auth, KeyRing.from_settings(rotated))
    assert codec.decode(old_token).subject == "u"
    dropped = Settings(data_dir=tmp_path, auth=AuthSettings(jwt_secret=SecretStr("n" * 32)))
    with pytest.raises(AuthenticationFailed):
        TokenCodec(dropped.auth, KeyRing.from_settings(dropped)).decode(old_token)
    assert not (tmp_path / "secrets").exists()  # no key file when the secret is a setting
    with pytest.raises(ValueError):
        KeyRing.from_settings(
            Settings(data_dir=tmp_path, auth=AuthSettings(jwt_secret=SecretStr("short")))
        )


def test_key_file_is_private(file_settings: Settings) -> None:
    KeyRing.from_settings(file_settings)
    path = key_file_path(file_settings)
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
