"""Contacts cache: CardDAV accounts, address books, contacts, phone index, outbox, conflicts.

Revision ID: 0003_contacts
Revises: 0002_audit_log
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_contacts"
down_revision: str | None = "0002_audit_log"
branch_labels: str | None = None
depends_on: str | None = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "contact_accounts",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("url", sa.String(2000), nullable=False),
        sa.Column("username", sa.String(200), nullable=False),
        sa.Column("auth", sa.String(16), nullable=False),
        sa.Column("password_sealed", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("last_sync_at", TS, nullable=True),
        sa.Column("last_error", sa.String(500), nullable=True),
        sa.Column("reachable", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_contact_accounts")),
    )
    op.create_index("ix_contact_accounts_owner", "contact_accounts", ["owner"])
    op.create_table(
        "contact_books",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("account_id", sa.String(32), nullable=False),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("url", sa.String(2000), nullable=False),
        sa.Column("display_name", sa.String(500), nullable=False),
        sa.Column("sync_token", sa.String(2000), nullable=True),
        sa.Column("supports_sync", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["contact_accounts.id"],
            name=op.f("fk_contact_books_account_id_contact_accounts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_contact_books")),
    )
    op.create_index("ix_contact_books_account_id", "contact_books", ["account_id"])
    op.create_index("ix_contact_books_owner", "contact_books", ["owner"])
    op.create_table(
        "contacts",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("book_id", sa.String(32), nullable=False),
        sa.Column("href", sa.String(2000), nullable=True),
        sa.Column("uid", sa.String(255), nullable=False),
        sa.Column("server_etag", sa.String(255), nullable=True),
        sa.Column("vcard", sa.Text(), nullable=False),
        sa.Column("base_vcard", sa.Text(), nullable=True),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("fn", sa.String(500), nullable=False),
        sa.Column("search", sa.Text(), nullable=False),
        sa.Column("name_key", sa.String(500), nullable=True),
        sa.Column("rev", sa.Integer(), nullable=False),
        sa.Column("pending", sa.Boolean(), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.ForeignKeyConstraint(
            ["book_id"],
            ["contact_books.id"],
            name=op.f("fk_contacts_book_id_contact_books"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_contacts")),
    )
    op.create_index("ix_contacts_owner", "contacts", ["owner"])
    op.create_index("ix_contacts_book_href", "contacts", ["book_id", "href"])
    op.create_index("ix_contacts_owner_fn", "contacts", ["owner", "fn"])
    op.create_table(
        "contact_phones",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("contact_id", sa.String(32), nullable=False),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("e164", sa.String(32), nullable=False),
        sa.ForeignKeyConstraint(
            ["contact_id"],
            ["contacts.id"],
            name=op.f("fk_contact_phones_contact_id_contacts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_contact_phones")),
    )
    op.create_index("ix_contact_phones_contact_id", "contact_phones", ["contact_id"])
    op.create_index("ix_contact_phones_owner_e164", "contact_phones", ["owner", "e164"])
    op.create_table(
        "contact_outbox",
        sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("account_id", sa.String(32), nullable=False),
        sa.Column("contact_id", sa.String(32), nullable=False),
        sa.Column("op", sa.String(8), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.String(500), nullable=True),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["contact_accounts.id"],
            name=op.f("fk_contact_outbox_account_id_contact_accounts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_contact_outbox")),
    )
    op.create_index("ix_contact_outbox_owner", "contact_outbox", ["owner"])
    op.create_index("ix_contact_outbox_account_id", "contact_outbox", ["account_id"])
    op.create_table(
        "contact_conflicts",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("contact_id", sa.String(32), nullable=False),
        sa.Column("field", sa.String(64), nullable=False),
        sa.Column("local_value", sa.Text(), nullable=False),
        sa.Column("server_value", sa.Text(), nullable=False),
        sa.Column("resolution", sa.String(16), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_contact_conflicts")),
    )
    op.create_index("ix_contact_conflicts_owner", "contact_conflicts", ["owner"])


def downgrade() -> None:
    op.drop_table("contact_conflicts")
    op.drop_table("contact_outbox")
    op.drop_table("contact_phones")
    op.drop_table("contacts")
    op.drop_table("contact_books")
    op.drop_table("contact_accounts")
