"""Helpers for API tests that run with authentication on (the default).

:func:`auth_settings` builds settings whose ``auth`` section is explicit, so the root
conftest's ``CALLANNOTATE_AUTH__ENABLED=false`` does not apply to them. :class:`Accounts`
holds three users of one store (``alice`` and ``bob`` with role ``user``, ``root`` with role
``admin``), their access tokens, and mints API keys and short-lived tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI

from callannotate.config import ApiSettings, AuthSettings, DatabaseSettings, Settings
from callannotate.db.engine import Database
from callannotate.db.migrate import upgrade_database
from callannotate.security.scopes import parse_scopes
from callannotate.security.service import AuthService

PASSWORD = "correct horse battery"
SECRET = "isolation-test-secret-0123456789abcdef"


def auth_settings(data_dir: Path, database: Path, **api: object) -> Settings:
    """Settings with auth on, a cheap argon2, a fixed HS256 secret and a given SQLite file."""
    return Settings(
        data_dir=data_dir,
        api=ApiSettings(embedded_workers=False, max_upload_bytes=256 * 1024, **api),  # type: ignore[arg-type]
        database=DatabaseSettings(url=f"sqlite:///{database}"),
        auth=AuthSettings(
            enabled=True,
            argon2_time_cost=1,
            argon2_memory_cost=1024,
            jwt_secret=SECRET,  # type: ignore[arg-type]
        ),
    )


@dataclass
class Accounts:
    service: AuthService
    ids: dict[str, str] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)

    @classmethod
    def create(cls, settings: Settings) -> Accounts:
        db = Database.from_settings(settings)
        upgrade_database(db)
        accounts = cls(AuthService(settings, db))
        for name, role in (("alice", "user"), ("bob", "user"), ("root", "admin")):
            accounts.ids[name] = accounts.service.create_user(name, PASSWORD, role).id
            accounts.tokens[name] = accounts.service.login(name, PASSWORD, None).access_token
        return accounts

    def log_in_again(self) -> None:
        """New access tokens for everyone (after ``POST /auth/logout-all`` ended theirs)."""
        for name in self.ids:
            self.tokens[name] = self.service.login(name, PASSWORD, None).access_token

    def headers(self, name: str | None) -> dict[str, str]:
        """``Authorization`` for ``name``'s access token (none for ``None``: anonymous)."""
        return {} if name is None else {"Authorization": f"Bearer {self.tokens[name]}"}

    def api_key(self, name: str, scopes: str) -> tuple[str, str]:
        """A new API key of ``name`` with ``scopes``: ``(key id, key)``."""
        row, key = self.service.create_api_key(self.ids[name], f"{name}-{scopes}", scopes)
        return row.id, key

    def short_token(self, name: str, ttl_s: int, scopes: str = "read write") -> str:
        """An access JWT of ``name`` that expires in ``ttl_s`` seconds."""
        token, _ = self.service.codec.encode(self.ids[name], parse_scopes(scopes), ttl_s=ttl_s)
        return token

    def attach(self, app: FastAPI) -> FastAPI:
        """Let ``app`` use this store's service (no second migration, shared caches)."""
        app.state.auth_service = self.service
        return app
