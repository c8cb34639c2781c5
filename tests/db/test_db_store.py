"""Store CRUD on SQLite and PostgreSQL: users, API keys, clients, refresh tokens."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from callannotate.db.engine import Database
from callannotate.db.models import ApiKey, OAuthClient, RefreshToken, User
from callannotate.errors import Conflict, NotFound
from callannotate.security.store import AuthStore


def _user(name: str, role: str = "user") -> User:
    return User(id=f"id-{name}", username=name, password_hash="h", role=role, disabled=False)


def _refresh(token_id: str, family: str, user_id: str) -> RefreshToken:
    now = datetime.now(UTC)
    return RefreshToken(
        id=token_id,
        token_hash=f"hash-{token_id}",
        family_id=family,
        user_id=user_id,
        issued_at=now,
        expires_at=now + timedelta(days=1),
        scopes="read",
    )


def test_users(database: Database) -> None:
    store = AuthStore(database)
    alice = store.add_user(_user("alice", "admin"))
    store.add_user(_user("bob"))
    with pytest.raises(Conflict):
        store.add_user(User(id="other", username="alice", password_hash="h", role="user"))
    assert store.count_users() == 2
    assert [u.username for u in store.list_users()] == ["alice", "bob"]
    got = store.get_user(alice.id)
    assert got is not None and got.role == "admin" and got.disabled is False
    assert got.created_at.tzinfo is not None  # UTC-aware on both backends
    before = got.updated_at
    updated = store.update_user(alice.id, disabled=True, password_hash="h2")
    assert updated.disabled and updated.password_hash == "h2" and updated.updated_at >= before
    by_name = store.user_by_name("alice")
    assert by_name is not None and by_name.disabled
    assert store.user_by_name("carol") is None
    with pytest.raises(NotFound):
        store.update_user("missing", disabled=True)
    with pytest.raises(NotFound):
        store.require_user_by_name("carol")


def test_api_keys(database: Database) -> None:
    store = AuthStore(database)
    user = store.add_user(_user("alice"))
    store.add_api_key(
        ApiKey(id="k1", user_id=user.id, name="ci", prefix="aaaaaaaaaaaa", key_hash="x" * 64)
    )
    found = store.api_key_by_prefix("aaaaaaaaaaaa")
    assert found is not None
    key, owner = found
    assert key.id == "k1" and owner.username == "alice" and key.last_used_at is None
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    store.touch_api_key("k1", when)
    got = store.get_api_key("k1")
    assert got is not None and got.last_used_at == when
    assert store.revoke_api_key("k1") is True
    assert store.revoke_api_key("k1") is False  # already revoked
    got = store.get_api_key("k1")
    assert got is not None and got.revoked_at is not None
    assert [k.id for k in store.list_api_keys(user.id)] == ["k1"]
    assert store.list_api_keys("someone-else") == []
    assert store.api_key_by_prefix("bbbbbbbbbbbb") is None


def test_clients(database: Database) -> None:
    store = AuthStore(database)
    user = store.add_user(_user("alice"))
    store.add_client(
        OAuthClient(id="cl_1", user_id=user.id, name="ci", secret_hash="s" * 64, scopes="read")
    )
    found = store.client_with_user("cl_1")
    assert found is not None and found[1].id == user.id and not found[0].disabled
    assert store.set_client_disabled("cl_1", True)
    assert not store.set_client_disabled("cl_missing", True)
    found = store.client_with_user("cl_1")
    assert found is not None and found[0].disabled
    store.touch_client("cl_1")
    assert [c.id for c in store.list_clients()] == ["cl_1"]


def test_refresh_token_rotation_is_atomic(database: Database) -> None:
    store = AuthStore(database)
    user = store.add_user(_user("alice"))
    store.add_refresh_token(_refresh("t1", "fam", user.id))
    assert store.rotate_refresh_token("t1", _refresh("t2", "fam", user.id))
    assert not store.rotate_refresh_token("t1", _refresh("t3", "fam", user.id))  # spent
    assert store.refresh_token_by_hash("hash-t3") is None  # nothing stored on a failed rotate
    t1 = store.refresh_token_by_hash("hash-t1")
    assert t1 is not None and t1.used_at is not None and t1.replaced_by == "t2"
    assert store.revoke_family("fam") == 2
    assert all(t.revoked_at is not None for t in store.family("fam"))
    assert not store.rotate_refresh_token("t2", _refresh("t4", "fam", user.id))  # revoked


def test_deleting_a_user_cascades(database: Database) -> None:
    store = AuthStore(database)
    user = store.add_user(_user("alice"))
    store.add_refresh_token(_refresh("t1", "fam", user.id))
    store.add_api_key(
        ApiKey(id="k1", user_id=user.id, name="ci", prefix="aaaaaaaaaaaa", key_hash="x" * 64)
    )
    with database.session() as s:
        row = s.get(User, user.id)
        assert row is not None
        s.delete(row)
    assert store.list_api_keys() == [] and store.family("fam") == []
