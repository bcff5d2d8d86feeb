"""Console: a TOTP code is good once (the last time step each account signed in with).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03

- `users.totp_last_step`: the 30-second step of the last accepted TOTP code; a code of that
  step or an earlier one is refused, so a code seen over a shoulder or in a proxy log cannot
  be used again within its window. Reset when the TOTP secret changes.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("users", sa.Column("totp_last_step", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.drop_column("totp_last_step")
