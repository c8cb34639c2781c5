"""Accounts, keys, clients and refresh tokens in the relational store (synchronous).

Plain data access, no policy: :class:`callannotate.security.service.AuthService` decides.
Rows come back detached (``expire_on_commit=False``) and are safe to read after the call.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from callannotate.db.engine import Database
from callannotate.db.models import ApiKey, OAuthClient, RefreshToken, User
from callannotate.db.types import utcnow
from callannotate.errors import Conflict, NotFound


class AuthStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # ------------------------------------------------------------------ users

    def add_user(self, user: User) -> User:
        try:
            with self.db.session() as s:
                s.add(user)
        except IntegrityError as exc:
            raise Conflict(f"user {user.username} already exists") from exc
        return user

    def get_user(self, user_id: str) -> User | None:
        with self.db.session() as s:
            return s.get(User, user_id)

    def user_by_name(self, username: str) -> User | None:
        with self.db.session() as s:
            return s.scalar(select(User).where(User.username == username))

    def require_user_by_name(self, username: str) -> User:
        user = self.user_by_name(username)
        if user is None:
            raise NotFound(f"user {username} not found")
        return user

    def list_users(self) -> list[User]:
        with self.db.session() as s:
            return list(s.scalars(select(User).order_by(User.username)))

    def count_users(self) -> int:
        with self.db.session() as s:
            return int(s.scalar(select(func.count()).select_from(User)) or 0)

    def update_user(
        self,
        user_id: str,
        *,
        disabled: bool | None = None,
        password_hash: str | None = None,
        role: str | None = None,
        tokens_valid_after: datetime | None = None,
    ) -> User:
        with self.db.session() as s:
            user = s.get(User, user_id)
            if user is None:
                raise NotFound(f"user {user_id} not found")
            if disabled is not None:
                user.disabled = disabled
            if password_hash is not None:
                user.password_hash = password_hash
            if role is not None:
                user.role = role
            if tokens_valid_after is not None:
                user.tokens_valid_after = tokens_valid_after
            user.updated_at = utcnow()
            return user

    # ------------------------------------------------------------------ API keys

    def add_api_key(self, key: ApiKey) -> ApiKey:
        with self.db.session() as s:
            s.add(key)
        return key

    def api_key_by_prefix(self, prefix: str) -> tuple[ApiKey, User] | None:
        with self.db.session() as s:
            row = s.execute(
                select(ApiKey, User)
                .join(User, User.id == ApiKey.user_id)
                .where(ApiKey.prefix == prefix)
            ).first()
            return None if row is None else (row[0], row[1])

    def list_api_keys(self, user_id: str | None = None) -> list[ApiKey]:
        query = select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)
        if user_id is not None:
            query = query.where(ApiKey.user_id == user_id)
        with self.db.session() as s:
            return list(s.scalars(query))

    def get_api_key(self, key_id: str) -> ApiKey | None:
        with self.db.session() as s:
            return s.get(ApiKey, key_id)

    def revoke_api_key(self, key_id: str, when: datetime | None = None) -> bool:
        """Mark the key revoked; ``False`` when it does not exist or already was."""
        with self.db.session() as s:
            result = s.execute(
                update(ApiKey)
                .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
                .values(revoked_at=when or utcnow())
            )
            return bool(result.rowcount)  # type: ignore[attr-defined]

    def touch_api_key(self, key_id: str, when: datetime | None = None) -> None:
        with self.db.session() as s:
            s.execute(
                update(ApiKey).where(ApiKey.id == key_id).values(last_used_at=when or utcnow())
            )

    # ------------------------------------------------------------------ OAuth2 clients

    def add_client(self, client: OAuthClient) -> OAuthClient:
        with self.db.session() as s:
            s.add(client)
        return client

    def client_with_user(self, client_id: str) -> tuple[OAuthClient, User] | None:
        with self.db.session() as s:
            row = s.execute(
                select(OAuthClient, User)
                .join(User, User.id == OAuthClient.user_id)
                .where(OAuthClient.id == client_id)
            ).first()
            return None if row is None else (row[0], row[1])

    def list_clients(self, user_id: str | None = None) -> list[OAuthClient]:
        query = select(OAuthClient).order_by(OAuthClient.created_at, OAuthClient.id)
        if user_id is not None:
            query = query.where(OAuthClient.user_id == user_id)
        with self.db.session() as s:
            return list(s.scalars(query))

    def set_client_disabled(self, client_id: str, disabled: bool) -> bool:
        with self.db.session() as s:
            result = s.execute(
                update(OAuthClient).where(OAuthClient.id == client_id).values(disabled=disabled)
            )
            return bool(result.rowcount)  # type: ignore[attr-defined]

    def touch_client(self, client_id: str, when: datetime | None = None) -> None:
        with self.db.session() as s:
            s.execute(
                update(OAuthClient)
                .where(OAuthClient.id == client_id)
                .values(last_used_at=when or utcnow())
            )

    # ------------------------------------------------------------------ refresh tokens

    def add_refresh_token(self, token: RefreshToken) -> RefreshToken:
        with self.db.session() as s:
            s.add(token)
        return token

    def refresh_token_by_hash(self, token_hash: str) -> RefreshToken | None:
        with self.db.session() as s:
            return s.scalar(select(RefreshToken).where(RefreshToken.token_hash == token_hash))

    def rotate_refresh_token(self, old_id: str, new: RefreshToken) -> bool:
        """Mark ``old_id`` used and replaced by ``new`` and store ``new``, atomically.

        ``False`` (nothing stored) when ``old_id`` was already used or revoked: a reuse.
        """
        with self.db.session() as s:
            result = s.execute(
                update(RefreshToken)
                .where(
                    RefreshToken.id == old_id,
                    RefreshToken.used_at.is_(None),
                    RefreshToken.revoked_at.is_(None),
                )
                .values(used_at=utcnow(), replaced_by=new.id)
            )
            if not result.rowcount:  # type: ignore[attr-defined]
                return False
            s.add(new)
            return True

    def revoke_family(self, family_id: str) -> int:
        with self.db.session() as s:
            result = s.execute(
                update(RefreshToken)
                .where(RefreshToken.family_id == family_id, RefreshToken.revoked_at.is_(None))
                .values(revoked_at=utcnow())
            )
            return int(result.rowcount)  # type: ignore[attr-defined]

    def revoke_user_tokens(self, user_id: str) -> int:
        with self.db.session() as s:
            result = s.execute(
                update(RefreshToken)
                .where(RefreshToken.user_id == user_id, RefreshToken.revoked_at.is_(None))
                .values(revoked_at=utcnow())
            )
            return int(result.rowcount)  # type: ignore[attr-defined]

    def family(self, family_id: str) -> list[RefreshToken]:
        with self.db.session() as s:
            return list(
                s.scalars(
                    select(RefreshToken)
                    .where(RefreshToken.family_id == family_id)
                    .order_by(RefreshToken.issued_at)
                )
            )
