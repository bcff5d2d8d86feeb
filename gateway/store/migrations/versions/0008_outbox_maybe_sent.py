"""Outbox: remember whether the last attempt may have reached the provider.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04

- `outbox.maybe_sent`: True when the last attempt at a row may have been made after all (an
  SMS request that timed out after it went out, an unreadable answer, a 5xx; a worker that
  stopped, or stopped renewing its claim, while it held the row). The dispatcher looks such
  an SMS up at the provider before sending it again, and only such an SMS: after a definite
  "not sent" (429/20429, connection refused, a refusal) the retry goes straight out, so a
  throttle storm is not made worse by lookups.

Rows pending at the upgrade that were already tried (`attempts > 0`) get True: the version
before this one looked up after any failure, and which kind the last one was is not known.
Only a column is added (`messages`, with migration 0005's FTS5 triggers, is not touched).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "outbox",
        sa.Column("maybe_sent", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    outbox = sa.table(
        "outbox",
        sa.column("maybe_sent", sa.Boolean()),
        sa.column("status", sa.String()),
        sa.column("attempts", sa.Integer()),
    )
    op.execute(
        outbox.update()
        .where(outbox.c.status == "pending", outbox.c.attempts > 0)
        .values(maybe_sent=True)
    )


def downgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.drop_column("maybe_sent")
