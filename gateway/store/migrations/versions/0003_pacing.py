"""Pacing across instances (issue 6): the log of recent SMS starts.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22

- `sms_starts`: one row per text let go by `gateway.store.pacing.SharedPacer` (the
  database's `clock_timestamp()` and its segments), so that several instances on one
  PostgreSQL database share one sliding window; a row of 0 segments is a pause (a
  provider's Retry-After): nothing starts until it leaves the window. Rows older
  than a few seconds are deleted by the pacer. Created on SQLite too (same schema on
  both backends), where the in-process pacer is used and the table stays empty.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "sms_starts",
        sa.Column("id", BigId, nullable=False, autoincrement=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("segments", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sms_starts")),
        sa.CheckConstraint("segments >= 0", name=op.f("ck_sms_starts_segments")),
    )
    op.create_index(op.f("ix_sms_starts_started_at"), "sms_starts", ["started_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_sms_starts_started_at"), table_name="sms_starts")
    op.drop_table("sms_starts")
