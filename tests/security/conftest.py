"""Security test fixtures: settings with a cheap argon2 and the auth service on ``database``
(the root conftest's relational store: SQLite, and PostgreSQL when it answers)."""

from __future__ import annotations

from pathlib import Path

import pytest

from callannotate.config import AuthSettings, Settings
from callannotate.db.engine import Database
from callannotate.security.service import AuthService


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings on a temporary data folder with a cheap argon2 (tests only)."""
    return Settings(
        data_dir=tmp_path / "data",
        auth=AuthSettings(argon2_time_cost=1, argon2_memory_cost=1024),
    )


@pytest.fixture
def service(settings: Settings, database: Database) -> AuthService:
    return AuthService(settings, database)
