"""The inbound queue: texts the webhook accepted, waiting for the worker.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05

- `inbound_texts`: the webhook of a resident whose municipality is known and who is not in
  a dialogue records the text here (durably) and answers at once; the worker processes it
  (threading, the email) and deletes the row in the same transaction. `sid` is unique (a
  provider's retry of a queued text is recognised); `(phone, id)` is indexed: texts are
  processed per resident in the order they arrived.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "inbound_texts",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("sid", sa.String(64), nullable=False),
        sa.Column("phone", sa.String(32), nullable=False),
        sa.Column("to_number", sa.String(32), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("media", sa.Text(), nullable=False),
        sa.Column("from_city", sa.String(100), nullable=True),
        sa.Column("from_state", sa.String(100), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_inbound_texts")),
        sa.UniqueConstraint("sid", name=op.f("uq_inbound_texts_sid")),
    )
    op.create_index(
        op.f("ix_inbound_texts_phone_id"), "inbound_texts", ["phone", "id"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_inbound_texts_phone_id"), table_name="inbound_texts")
    op.drop_table("inbound_texts")
