"""Initial schema: residents, conversations, messages, webhook_log, outbox.

Revision ID: 0001
Revises:
Create Date: 2025-01-01

Datetimes are `TIMESTAMP WITH TIME ZONE` (PostgreSQL) / UTC text (SQLite);
JSON documents are text. Constraint names follow `schema.NAMING_CONVENTION`
so that later batch migrations on SQLite can refer to them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Integer on SQLite (rowid alias, autoincrement), BIGINT (BIGSERIAL) on PostgreSQL.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _ts(name: str, nullable: bool = False) -> sa.Column[Any]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "residents",
        sa.Column("phone", sa.String(32), nullable=False),
        sa.Column("municipality_id", sa.String(100), nullable=True),
        sa.Column("language", sa.String(8), nullable=False),
        sa.Column("opted_out", sa.Boolean(), nullable=False),
        sa.Column("dialogue", sa.Text(), nullable=False),
        _ts("created_at"),
        _ts("updated_at"),
        sa.PrimaryKeyConstraint("phone", name=op.f("pk_residents")),
    )

    op.create_table(
        "conversations",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("token", sa.String(64), nullable=False),
        sa.Column("phone", sa.String(32), nullable=False),
        sa.Column("municipality_id", sa.String(100), nullable=True),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("thread_message_ids", sa.Text(), nullable=False),
        sa.Column("agent_address", sa.String(320), nullable=True),
        _ts("created_at"),
        _ts("last_activity_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_conversations")),
        sa.UniqueConstraint("token", name=op.f("uq_conversations_token")),
        sa.CheckConstraint("status IN ('open', 'closed')", name=op.f("ck_conversations_status")),
    )
    op.create_index(op.f("ix_conversations_phone_status"), "conversations", ["phone", "status"])

    op.create_table(
        "messages",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("phone", sa.String(32), nullable=False),
        sa.Column("conversation_id", BigId, nullable=True),
        sa.Column("direction", sa.String(8), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("media", sa.Text(), nullable=False),
        sa.Column("provider_sid", sa.String(64), nullable=True),
        sa.Column("held", sa.Boolean(), nullable=False),
        _ts("received_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_messages")),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["conversations.id"],
            name=op.f("fk_messages_conversation_id_conversations"),
            ondelete="SET NULL",
        ),
        sa.UniqueConstraint("provider_sid", name=op.f("uq_messages_provider_sid")),
        sa.CheckConstraint("direction IN ('in', 'out')", name=op.f("ck_messages_direction")),
    )
    op.create_index(op.f("ix_messages_phone_held"), "messages", ["phone", "held"])
    op.create_index(op.f("ix_messages_conversation_id"), "messages", ["conversation_id"])

    op.create_table(
        "webhook_log",
        sa.Column("sid", sa.String(64), nullable=False),
        sa.Column("response", sa.Text(), nullable=False),
        _ts("created_at"),
        sa.PrimaryKeyConstraint("sid", name=op.f("pk_webhook_log")),
    )
    op.create_index(op.f("ix_webhook_log_created_at"), "webhook_log", ["created_at"])

    op.create_table(
        "outbox",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        _ts("next_attempt_at"),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("claimed_by", sa.String(200), nullable=True),
        _ts("claimed_until", nullable=True),
        _ts("created_at"),
        _ts("updated_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox")),
        sa.CheckConstraint("kind IN ('email', 'sms')", name=op.f("ck_outbox_kind")),
        sa.CheckConstraint(
            "status IN ('pending', 'sent', 'parked')", name=op.f("ck_outbox_status")
        ),
    )
    op.create_index(
        op.f("ix_outbox_status_next_attempt_at"), "outbox", ["status", "next_attempt_at"]
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_outbox_status_next_attempt_at"), table_name="outbox")
    op.drop_table("outbox")
    op.drop_index(op.f("ix_webhook_log_created_at"), table_name="webhook_log")
    op.drop_table("webhook_log")
    op.drop_index(op.f("ix_messages_conversation_id"), table_name="messages")
    op.drop_index(op.f("ix_messages_phone_held"), table_name="messages")
    op.drop_table("messages")
    op.drop_index(op.f("ix_conversations_phone_status"), table_name="conversations")
    op.drop_table("conversations")
    op.drop_table("residents")
