"""Built-in alerts: the open alerts (``alert_states``), so a restart neither repeats a notice
nor loses a recovery notice.

Revision ID: 0004_alert_states
Revises: 0003_contacts
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_alert_states"
down_revision: str | None = "0003_contacts"
branch_labels: str | None = None
depends_on: str | None = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "alert_states",
        sa.Column("alert", sa.String(100), nullable=False),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("last_notified_at", TS, nullable=False),
        sa.Column("sequence", sa.Integer(), nullable=False),
        sa.Column("seen_at", TS, nullable=False),
        sa.Column("seen_by", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("alert", name=op.f("pk_alert_states")),
    )


def downgrade() -> None:
    op.drop_table("alert_states")
