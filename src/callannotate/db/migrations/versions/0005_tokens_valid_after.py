"""Users: ``tokens_valid_after``, so a password change ends the access tokens issued before
it (their ``iat`` is older) instead of leaving them valid until they expire.

Revision ID: 0005_tokens_valid_after
Revises: 0004_alert_states
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_tokens_valid_after"
down_revision: str | None = "0004_alert_states"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("tokens_valid_after", sa.DateTime(timezone=True)))


def downgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.drop_column("tokens_valid_after")
