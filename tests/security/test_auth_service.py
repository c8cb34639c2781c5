"""The authentication policy on SQLite and PostgreSQL: logins, refresh rotation and reuse,
logout, client credentials, API keys, disabled accounts."""

from __future__ import annotations

import time

import pytest
from prometheus_client import REGISTRY

from callannotate.config import Settings
from callannotate.db.engine import Database
from callannotate.errors import BadRequest, Conflict
from callannotate.security.errors import AuthenticationFailed, TooManyAttempts
from callannotate.security.service import (
    AuthService,
    InvalidClient,
    InvalidGrant,
    InvalidScope,
)

PASSWORD = "correct horse battery"


def test_login_issues_access_and_refresh(service: AuthService) -> None:
    user = service.create_user("Alice", PASSWORD, "user")
    assert user.username == "alice"
    pair = service.login("ALICE", PASSWORD, "10.0.0.1")
    assert pair.refresh_token and pair.refresh_token.startswith("rt_")
    assert pair.scopes == {"read", "write"}  # what the role allows
    principal = service.principal_from_jwt(pair.access_token)
    assert principal.id == user.id and principal.name == "alice"
    assert principal.roles == {"user"} and principal.auth_method == "password"
    assert not principal.is_admin


def test_login_with_narrower_scope_and_unknown_scope(service: AuthService) -> None:
    service.create_user("admin1", PASSWORD, "admin")
    assert service.login("admin1", PASSWORD, None, "read").scopes == {"read"}
    assert service.login("admin1", PASSWORD, None).scopes == {"read", "write", "admin"}
    with pytest.raises(InvalidScope):
        service.login("admin1", PASSWORD, None, "root")


def test_no_grantable_scope_is_refused(service: AuthService) -> None:
    """An empty scope list is not "everything"; a login granted nothing is refused."""
    user = service.create_user("carol", PASSWORD, "user")
    with pytest.raises(InvalidScope):
        service.login("carol", PASSWORD, None, "admin")
    for scopes in ("", " , "):
        with pytest.raises(InvalidScope):
            service.create_api_key(user.id, "k", scopes)
        with pytest.raises(InvalidScope):
            service.create_client("carol", "c", scopes)
    assert service.create_api_key(user.id, "k", None)[0].scopes == "read write"


def test_key_and_client_names_are_checked_on_every_backend(service: AuthService) -> None:
    """A name the column cannot hold was a psycopg DataError on PostgreSQL (a traceback from
    ``callannotate apikeys create``) and stored as is on SQLite; a blank one was stored."""
    user = service.create_user("dora", PASSWORD, "user")
    for name in ("x" * 101, "   ", ""):
        with pytest.raises(BadRequest, match="1 to 100 characters"):
            service.create_api_key(user.id, name, None)
        with pytest.raises(BadRequest, match="1 to 100 characters"):
            service.create_client("dora", name, None)
    assert service.create_api_key(user.id, " " + "k" * 100 + " ", None)[0].name == "k" * 100
    assert service.create_client("dora", "  nightly  ", None)[0].name == "nightly"


def test_unknown_user_and_wrong_password_fail_the_same_way(service: AuthService) -> None:
    service.create_user("alice", PASSWORD)
    with pytest.raises(InvalidGrant) as wrong:
        service.login("alice", "not the password", None)
    with pytest.raises(InvalidGrant) as unknown:
        service.login("mallory", "not the password", None)
    assert (wrong.value.status_code, wrong.value.detail) == (
        unknown.value.status_code,
        unknown.value.detail,
    )


def test_disabled_user_cannot_log_in_or_refresh(service: AuthService) -> None:
    service.create_user("alice", PASSWORD)
    pair = service.login("alice", PASSWORD, None)
    service.set_disabled("alice", True)
    with pytest.raises(InvalidGrant):
        service.login("alice", PASSWORD, None)
    assert pair.refresh_token
    with pytest.raises(InvalidGrant):
        service.refresh(pair.refresh_token)
    service.set_disabled("alice", False)
    assert service.login("alice", PASSWORD, None).access_token


def test_refresh_rotates_and_reuse_revokes_the_family(service: AuthService) -> None:
    service.create_user("alice", PASSWORD)
    first = service.login("alice", PASSWORD, None)
    assert first.refresh_token
    second = service.refresh(first.refresh_token)
    assert second.refresh_token and second.refresh_token != first.refresh_token
    assert service.principal_from_jwt(second.access_token).name == "alice"
    third = service.refresh(second.refresh_token)
    assert third.refresh_token

    with pytest.raises(InvalidGrant):  # a stolen, already used token comes back ...
        service.refresh(first.refresh_token)
    with pytest.raises(InvalidGrant):  # ... and the legitimate newest one dies with it
        service.refresh(third.refresh_token)

    other = service.login("alice", PASSWORD, None)  # another login is another family
    assert other.refresh_token and service.refresh(other.refresh_token).refresh_token


def test_logout_revokes_the_login(service: AuthService) -> None:
    service.create_user("alice", PASSWORD)
    pair = service.login("alice", PASSWORD, None)
    assert pair.refresh_token
    rotated = service.refresh(pair.refresh_token)
    assert rotated.refresh_token
    assert service.logout(rotated.refresh_token) is True
    with pytest.raises(InvalidGrant):
        service.refresh(rotated.refresh_token)
    assert service.logout("rt_unknown") is False


def test_password_change_revokes_refresh_tokens(service: AuthService) -> None:
    service.create_user("alice", PASSWORD)
    pair = service.login("alice", PASSWORD, None)
    service.set_password("alice", "a brand new password")
    assert pair.refresh_token
    with pytest.raises(InvalidGrant):
        service.refresh(pair.refresh_token)
    with pytest.raises(InvalidGrant):
        service.login("alice", PASSWORD, None)
    assert service.login("alice", "a brand new password", None).access_token


def test_password_change_ends_the_access_tokens_issued_before_it(
    service: AuthService, settings: Settings, database: Database
) -> None:
    """A stolen access token kept working for up to 15 minutes after the password change
    meant to lock its thief out; now it is refused (in every process: the change is in the
    database, read when the cached user state expires)."""
    user = service.create_user("alice", PASSWORD)
    before, _ = service.codec.encode(user.id, frozenset({"read"}), now=time.time() - 2)
    other = AuthService(settings, database)  # another API process, its cache warm
    assert other.principal_from_jwt(before).id == user.id
    assert service.principal_from_jwt(before).id == user.id

    service.set_password("alice", "a brand new password")
    with pytest.raises(AuthenticationFailed) as refused:
        service.principal_from_jwt(before)
    assert refused.value.reason == "revoked_token"
    with pytest.raises(AuthenticationFailed):
        AuthService(settings, database).principal_from_jwt(before)  # a process started later
    other.invalidate()  # its cached user state expired
    with pytest.raises(AuthenticationFailed):
        other.principal_from_jwt(before)

    after = service.login("alice", "a brand new password", None).access_token
    assert service.principal_from_jwt(after).id == user.id  # the same second counts as after
    assert other.principal_from_jwt(after).id == user.id


def test_account_rules(service: AuthService) -> None:
    service.create_user("alice", PASSWORD)
    with pytest.raises(Conflict):
        service.create_user("ALICE", PASSWORD)
    with pytest.raises(BadRequest):
        service.create_user("bob", "short")
    with pytest.raises(BadRequest):
        service.create_user("<script>", PASSWORD)
    with pytest.raises(BadRequest):
        service.create_user("carol", PASSWORD, "root")


def test_client_credentials(service: AuthService) -> None:
    service.create_user("alice", PASSWORD, "user")
    client, secret = service.create_client("alice", "crm", "read")
    pair = service.client_credentials(client.id, secret, None)
    assert pair.refresh_token is None and pair.scopes == {"read"}
    principal = service.principal_from_jwt(pair.access_token)
    assert principal.auth_method == "client" and principal.credential_id == client.id
    assert principal.name == "alice" and principal.scopes == {"read"}
    with pytest.raises(InvalidScope):
        service.client_credentials(client.id, secret, "write")
    with pytest.raises(InvalidClient):
        service.client_credentials(client.id, "wrong", None)
    with pytest.raises(InvalidClient):
        service.client_credentials("cl_unknown", secret, None)
    with pytest.raises(InvalidScope):  # a user's client cannot get admin
        service.create_client("alice", "x", "admin")
    service.set_client_disabled(client.id, True)
    with pytest.raises(InvalidClient):
        service.client_credentials(client.id, secret, None)
    with pytest.raises(AuthenticationFailed):  # its tokens stop working too
        service.principal_from_jwt(pair.access_token)


def test_api_keys(service: AuthService) -> None:
    user = service.create_user("alice", PASSWORD)
    row, key = service.create_api_key(user.id, "script", "read")
    assert key.startswith(f"ca_{row.prefix}_") and row.key_hash != key
    assert row.scopes == "read"
    principal = service.principal_from_api_key(key)
    assert principal.id == user.id and principal.auth_method == "api_key"
    assert principal.scopes == {"read"} and principal.credential_id == row.id
    stored = service.store.get_api_key(row.id)
    assert stored is not None and stored.last_used_at is not None
    assert service.cached_api_key(key) == principal
    with pytest.raises(AuthenticationFailed):
        service.principal_from_api_key(key[:-2] + "xx")
    with pytest.raises(AuthenticationFailed):
        service.principal_from_api_key("ca_nothex00000_abc")
    service.revoke_api_key(row.id)
    assert service.cached_api_key(key) is None
    with pytest.raises(AuthenticationFailed):
        service.principal_from_api_key(key)


def test_api_key_scopes_cannot_exceed_role_or_caller(service: AuthService) -> None:
    user = service.create_user("alice", PASSWORD)
    with pytest.raises(InvalidScope):
        service.create_api_key(user.id, "x", "admin")
    with pytest.raises(InvalidScope):
        service.create_api_key(user.id, "x", "read write", within=frozenset({"read"}))
    row, _ = service.create_api_key(user.id, "x", None, within=frozenset({"read"}))
    assert row.scopes == "read"


def test_throttle_locks_the_account_even_for_the_right_password(service: AuthService) -> None:
    service.create_user("alice", PASSWORD)
    limit = service.auth.login_max_failures_per_account
    for _ in range(limit):
        with pytest.raises(InvalidGrant):
            service.login("alice", "wrong password", "10.0.0.9")
    with pytest.raises(TooManyAttempts) as locked:
        service.login("alice", PASSWORD, "10.0.0.10")
    assert locked.value.status_code == 429 and int(locked.value.headers["Retry-After"]) > 0
    # Unknown accounts are throttled the same way (no existence leak through 429s).
    for _ in range(limit):
        with pytest.raises(InvalidGrant):
            service.login("mallory", "wrong password", "10.0.0.11")
    with pytest.raises(TooManyAttempts):
        service.login("mallory", "wrong password", "10.0.0.12")


def _failures(reason: str) -> float:
    value = REGISTRY.get_sample_value("callannotate_auth_failures_total", {"reason": reason})
    return value or 0.0


def test_failed_logins_refreshes_and_clients_are_counted(service: AuthService) -> None:
    reasons = ("bad_password", "throttled", "bad_refresh", "refresh_reuse", "bad_client")
    before = {reason: _failures(reason) for reason in reasons}
    service.create_user("alice", PASSWORD)
    for _ in range(2):
        with pytest.raises(InvalidGrant):
            service.login("alice", "wrong password", "10.0.0.20")
    with pytest.raises(InvalidGrant):
        service.login("nobody", "wrong password", "10.0.0.20")  # same reason as a bad password
    pair = service.login("alice", PASSWORD, "10.0.0.20")
    assert pair.refresh_token is not None
    with pytest.raises(InvalidGrant):
        service.refresh("rt_unknown")
    service.refresh(pair.refresh_token)
    with pytest.raises(InvalidGrant):
        service.refresh(pair.refresh_token)  # spent: reuse
    client, _ = service.create_client("alice", "crm", "read")
    with pytest.raises(InvalidClient):
        service.client_credentials(client.id, "wrong secret", None)
    for _ in range(service.auth.login_max_failures_per_account):
        with pytest.raises(InvalidGrant):
            service.login("bob", "wrong password", "10.0.0.21")
    with pytest.raises(TooManyAttempts):
        service.login("bob", "wrong password", "10.0.0.21")
    expected = {
        "bad_password": 3 + service.auth.login_max_failures_per_account,
        "throttled": 1,
        "bad_refresh": 1,
        "refresh_reuse": 1,
        "bad_client": 1,
    }
    assert {r: _failures(r) - before[r] for r in reasons} == expected
