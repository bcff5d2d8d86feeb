"""Failed replies are kept: the raw email of every reply that was not texted.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03

- `failed_emails`: one row per reply email the pipeline filed as failed (unroutable, sender
  not an agent, empty once quotes and signature are cut, unreadable, malformed), whichever
  door it came in by (IMAP or the SMTP/LMTP ingress): its bytes (at most 4 MB kept), the
  reason (and its kind, `why`: one of `gateway.rules.agent_notice.NOT_TEXTED_WHY`, or null for a
  malformed email or an internal error), where it came from, the sender and the
  conversation when known. `sms311 failed
  list|show|retry|delete` work on it; a retried email that is then texted gets
  `resolved_at` and its `resolution`. The conversation is not a foreign key: a failed
  email outlives an erased conversation only until the retention purge, which deletes
  failed emails older than `retention.days` along with the conversations. Indexed on
  `received_at` (the purge) and `conversation_id` (the console shows a conversation's
  failed replies in its timeline).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "failed_emails",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("key", sa.String(200), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("origin", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("why", sa.String(32), nullable=True),
        sa.Column("sender", sa.String(320), nullable=True),
        sa.Column("subject", sa.Text(), nullable=True),
        sa.Column("conversation_id", BigId, nullable=True),
        sa.Column("raw", sa.LargeBinary(), nullable=False),
        sa.Column("truncated", sa.Boolean(), nullable=False),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("resolution", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_failed_emails")),
        sa.UniqueConstraint("key", name=op.f("uq_failed_emails_key")),
    )
    op.create_index(
        op.f("ix_failed_emails_received_at"), "failed_emails", ["received_at"], unique=False
    )
    op.create_index(
        op.f("ix_failed_emails_conversation_id"), "failed_emails", ["conversation_id"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_failed_emails_conversation_id"), table_name="failed_emails")
    op.drop_index(op.f("ix_failed_emails_received_at"), table_name="failed_emails")
    op.drop_table("failed_emails")
