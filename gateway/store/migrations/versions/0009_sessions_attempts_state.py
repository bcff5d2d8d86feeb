"""Console sessions that can be ended, sign-in attempts apart from the audit log, and the
last known state of each background service.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05

- `users.session_epoch`: a counter carried in every console session cookie; signing out,
  `sms311 user disable` and `sms311 user passwd` (and a password change in the console)
  increase it, so every cookie issued before is refused server-side (a copied cookie stops
  working). Existing accounts start at 0.
- `login_attempts`: one row per sign-in attempt that failed (a wrong password, an unknown
  email, a wrong code), counted for the rate limit and pruned after the window; the audit
  log no longer grows with strangers' attempts. Indexed on `at` (the pruning and the
  window), `email` and `remote_addr` (the two counts).
- `service_state`: one row per background service (`imap`, `ingress`, …): whether it
  worked at its last try, a short detail, and when. `/healthz` reads it instead of signing in
  to the mailbox on every request.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.add_column(
        "users",
        sa.Column("session_epoch", sa.Integer(), nullable=False, server_default="0"),
    )
    op.create_table(
        "login_attempts",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("email", sa.String(320), nullable=True),
        sa.Column("remote_addr", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_login_attempts")),
    )
    op.create_index(op.f("ix_login_attempts_at"), "login_attempts", ["at"], unique=False)
    op.create_index(op.f("ix_login_attempts_email"), "login_attempts", ["email"], unique=False)
    op.create_index(
        op.f("ix_login_attempts_remote_addr"), "login_attempts", ["remote_addr"], unique=False
    )
    op.create_table(
        "service_state",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("ok", sa.Boolean(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_service_state")),
    )


def downgrade() -> None:
    op.drop_table("service_state")
    op.drop_index(op.f("ix_login_attempts_remote_addr"), table_name="login_attempts")
    op.drop_index(op.f("ix_login_attempts_email"), table_name="login_attempts")
    op.drop_index(op.f("ix_login_attempts_at"), table_name="login_attempts")
    op.drop_table("login_attempts")
    op.drop_column("users", "session_epoch")
