"""Replies (issue 3): thread-email index, processed emails, IMAP checkpoints, delivery status.

Revision ID: 0002
Revises: 0001
Create Date: 2025-02-01

- `email_messages`: every email of a conversation's thread, so that a reply routes by
  In-Reply-To / References; backfilled from `conversations.thread_message_ids`
  (direction "out", at the conversation's `created_at`).
- `processed_emails`: emails read from the mailbox or the ingress (by content hash).
- `imap_checkpoints`: UIDVALIDITY and last UID per mailbox.
- `messages` + `status`, `error_code`, `agent_address` (nullable) and `updated_at`
  (NOT NULL; existing rows get their `received_at`).
- `conversations` + `closed_at` (nullable; conversations already closed keep NULL).

SQLite: new nullable columns are plain `ADD COLUMN`s; making `messages.updated_at`
NOT NULL rebuilds `messages` (batch mode), which nothing references, so the rebuild
never fires foreign-key actions. `conversations` (referenced by `messages`) is never
rebuilt, in either direction: the downgrade uses `ALTER TABLE ... DROP COLUMN`
(SQLite >= 3.35).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _ts(name: str, nullable: bool = False) -> sa.Column[Any]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


_BACKFILL_SQLITE = """
INSERT OR IGNORE INTO email_messages (message_id, conversation_id, direction, created_at)
SELECT j.value, c.id, 'out', c.created_at
FROM conversations AS c, json_each(c.thread_message_ids) AS j
WHERE j.type = 'text'
ORDER BY c.id, j.key
"""

_BACKFILL_POSTGRESQL = """
INSERT INTO email_messages (message_id, conversation_id, direction, created_at)
SELECT j.value, c.id, 'out', c.created_at
FROM conversations AS c
CROSS JOIN LATERAL json_array_elements_text(c.thread_message_ids::json) WITH ORDINALITY
    AS j(value, n)
ORDER BY c.id, j.n
ON CONFLICT (message_id) DO NOTHING
"""


def upgrade() -> None:
    op.create_table(
        "email_messages",
        sa.Column("message_id", sa.String(998), nullable=False),
        sa.Column("conversation_id", BigId, nullable=False),
        sa.Column("direction", sa.String(8), nullable=False),
        _ts("created_at"),
        sa.PrimaryKeyConstraint("message_id", name=op.f("pk_email_messages")),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["conversations.id"],
            name=op.f("fk_email_messages_conversation_id_conversations"),
            ondelete="CASCADE",
        ),
        sa.CheckConstraint("direction IN ('out', 'in')", name=op.f("ck_email_messages_direction")),
    )
    op.create_index(
        op.f("ix_email_messages_conversation_id"), "email_messages", ["conversation_id"]
    )

    op.create_table(
        "processed_emails",
        sa.Column("key", sa.String(200), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("origin", sa.Text(), nullable=False),
        _ts("created_at"),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_processed_emails")),
        sa.CheckConstraint(
            "outcome IN ('processed', 'ignored', 'failed')",
            name=op.f("ck_processed_emails_outcome"),
        ),
    )
    op.create_index(op.f("ix_processed_emails_created_at"), "processed_emails", ["created_at"])

    op.create_table(
        "imap_checkpoints",
        sa.Column("mailbox", sa.String(1000), nullable=False),
        sa.Column("uidvalidity", sa.BigInteger(), nullable=False),
        sa.Column("last_uid", sa.BigInteger(), nullable=False),
        _ts("updated_at"),
        sa.PrimaryKeyConstraint("mailbox", name=op.f("pk_imap_checkpoints")),
    )

    # Nullable columns without constraints: ALTER TABLE ADD COLUMN on both backends.
    op.add_column("conversations", _ts("closed_at", nullable=True))
    op.add_column("messages", sa.Column("status", sa.String(32), nullable=True))
    op.add_column("messages", sa.Column("error_code", sa.Integer(), nullable=True))
    op.add_column("messages", sa.Column("agent_address", sa.String(320), nullable=True))
    op.add_column("messages", _ts("updated_at", nullable=True))
    op.execute("UPDATE messages SET updated_at = received_at")
    # SQLite cannot add NOT NULL to a column: batch mode rebuilds `messages`.
    with op.batch_alter_table("messages") as batch:
        batch.alter_column("updated_at", existing_type=sa.DateTime(timezone=True), nullable=False)

    dialect = op.get_context().dialect.name
    op.execute(_BACKFILL_POSTGRESQL if dialect == "postgresql" else _BACKFILL_SQLITE)


def downgrade() -> None:
    # Plain DROP COLUMN (no table rebuild): none of these columns is indexed or constrained.
    op.drop_column("conversations", "closed_at")
    for column in ("updated_at", "agent_address", "error_code", "status"):
        op.drop_column("messages", column)
    op.drop_table("imap_checkpoints")
    op.drop_index(op.f("ix_processed_emails_created_at"), table_name="processed_emails")
    op.drop_table("processed_emails")
    op.drop_index(op.f("ix_email_messages_conversation_id"), table_name="email_messages")
    op.drop_table("email_messages")
