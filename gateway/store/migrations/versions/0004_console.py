"""The staff web console (issue 9): accounts, notes, read marks, presence, audit log.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03

- `users` (email lower-cased and unique, role agent/supervisor/admin, password hash,
  optional TOTP secret) and `user_municipalities` (which cities an account works for).
- `notes`, `conversation_reads` (each user's read mark), `presence` (who has a
  conversation open): all deleted with their conversation (ON DELETE CASCADE).
- `audit_log`: what staff did; no foreign keys, it outlives erased conversations.
- `console_requests` (form submission keys already handled) and `console_settings`
  (the session-signing secret shared by every instance).
- `conversations` + `last_inbound_at` (nullable), backfilled with the newest inbound
  text of each conversation, and the indexes of the console's conversation list.
- `messages` + `via` (nullable): how an agent's reply came in ("email" or "console").

SQLite: the new columns are nullable and unconstrained, so they are plain
`ADD COLUMN`s; no table is rebuilt (conversations and messages are referenced by
other tables). The downgrade drops them with `ALTER TABLE ... DROP COLUMN`
(SQLite >= 3.35) after dropping the indexes that use them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _ts(name: str, nullable: bool = False) -> sa.Column[Any]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


_BACKFILL_LAST_INBOUND = """
UPDATE conversations SET last_inbound_at = (
    SELECT max(m.received_at) FROM messages AS m
    WHERE m.conversation_id = conversations.id AND m.direction = 'in'
)
"""

_CONVERSATION_INDEXES = (
    ("municipality_id", "status", "last_activity_at", "id"),
    ("agent_address", "status", "last_activity_at"),
    ("status", "last_activity_at", "id"),
)


def _index_name(table: str, columns: Sequence[str]) -> Any:
    return op.f(f"ix_{table}_{'_'.join(columns)}")


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("password_hash", sa.Text(), nullable=False),
        sa.Column("totp_secret", sa.String(128), nullable=True),
        sa.Column("disabled", sa.Boolean(), nullable=False),
        sa.Column("must_change_password", sa.Boolean(), nullable=False),
        sa.Column("language", sa.String(8), nullable=True),
        _ts("created_at"),
        _ts("updated_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("email", name=op.f("uq_users_email")),
        sa.CheckConstraint(
            "role IN ('agent', 'supervisor', 'admin')", name=op.f("ck_users_role")
        ),
        sa.CheckConstraint("email = lower(email)", name=op.f("ck_users_email_lower")),
    )

    op.create_table(
        "user_municipalities",
        sa.Column("user_id", BigId, nullable=False),
        sa.Column("municipality_id", sa.String(100), nullable=False),
        sa.PrimaryKeyConstraint("user_id", "municipality_id", name=op.f("pk_user_municipalities")),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_user_municipalities_user_id_users"),
            ondelete="CASCADE",
        ),
    )

    op.create_table(
        "notes",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("conversation_id", BigId, nullable=False),
        sa.Column("user_id", BigId, nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        _ts("created_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notes")),
        sa.ForeignKeyConstraint(
            ["conversation_id"], ["conversations.id"],
            name=op.f("fk_notes_conversation_id_conversations"), ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_notes_user_id_users")),
    )
    op.create_index(op.f("ix_notes_conversation_id"), "notes", ["conversation_id"])

    op.create_table(
        "conversation_reads",
        sa.Column("user_id", BigId, nullable=False),
        sa.Column("conversation_id", BigId, nullable=False),
        _ts("last_read_at"),
        sa.PrimaryKeyConstraint("user_id", "conversation_id", name=op.f("pk_conversation_reads")),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_conversation_reads_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["conversation_id"], ["conversations.id"],
            name=op.f("fk_conversation_reads_conversation_id_conversations"), ondelete="CASCADE",
        ),
    )
    op.create_index(
        op.f("ix_conversation_reads_conversation_id"), "conversation_reads", ["conversation_id"]
    )

    op.create_table(
        "presence",
        sa.Column("conversation_id", BigId, nullable=False),
        sa.Column("user_id", BigId, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        _ts("seen_at"),
        sa.PrimaryKeyConstraint("conversation_id", "user_id", name=op.f("pk_presence")),
        sa.ForeignKeyConstraint(
            ["conversation_id"], ["conversations.id"],
            name=op.f("fk_presence_conversation_id_conversations"), ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_presence_user_id_users"), ondelete="CASCADE",
        ),
        sa.CheckConstraint("state IN ('viewing', 'replying')", name=op.f("ck_presence_state")),
    )

    op.create_table(
        "audit_log",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        _ts("at"),
        sa.Column("user_id", BigId, nullable=True),
        sa.Column("user_email", sa.String(320), nullable=True),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("conversation_id", BigId, nullable=True),
        sa.Column("municipality_id", sa.String(100), nullable=True),
        sa.Column("remote_addr", sa.String(64), nullable=True),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_log")),
    )
    op.create_index(op.f("ix_audit_log_action_at"), "audit_log", ["action", "at"])
    op.create_index(op.f("ix_audit_log_conversation_id"), "audit_log", ["conversation_id"])
    op.create_index(op.f("ix_audit_log_municipality_id_id"), "audit_log", ["municipality_id", "id"])

    op.create_table(
        "console_requests",
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("user_id", BigId, nullable=False),
        _ts("created_at"),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_console_requests")),
    )

    op.create_table(
        "console_settings",
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_console_settings")),
    )

    # Nullable columns without constraints: ALTER TABLE ADD COLUMN on both backends.
    op.add_column("conversations", _ts("last_inbound_at", nullable=True))
    op.add_column("messages", sa.Column("via", sa.String(16), nullable=True))
    op.execute(_BACKFILL_LAST_INBOUND)
    for columns in _CONVERSATION_INDEXES:
        op.create_index(_index_name("conversations", columns), "conversations", list(columns))


def downgrade() -> None:
    for columns in _CONVERSATION_INDEXES:
        op.drop_index(_index_name("conversations", columns), table_name="conversations")
    op.drop_column("messages", "via")
    op.drop_column("conversations", "last_inbound_at")
    op.drop_table("console_settings")
    op.drop_table("console_requests")
    op.drop_index(op.f("ix_audit_log_municipality_id_id"), table_name="audit_log")
    op.drop_index(op.f("ix_audit_log_conversation_id"), table_name="audit_log")
    op.drop_index(op.f("ix_audit_log_action_at"), table_name="audit_log")
    op.drop_table("audit_log")
    op.drop_table("presence")
    op.drop_index(op.f("ix_conversation_reads_conversation_id"), table_name="conversation_reads")
    op.drop_table("conversation_reads")
    op.drop_index(op.f("ix_notes_conversation_id"), table_name="notes")
    op.drop_table("notes")
    op.drop_table("user_municipalities")
    op.drop_table("users")
