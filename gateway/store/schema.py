"""SQLAlchemy Core table definitions (the schema at the newest migration).

The migrations in `migrations/versions/` are the source of truth for the
database; these tables must describe the same thing (a test compares them).
Two column types make both backends behave the same:

- `UTCDateTime`: timezone-aware in, aware UTC out. PostgreSQL stores
  `timestamptz`; SQLite stores the UTC wall time as text (the same fixed-width
  format everywhere, so comparisons in SQL are correct) and we put the UTC back
  on the way out.
- `JSONText`: a JSON document stored as text on both backends.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware datetime, normalised to UTC. Naive datetimes are refused."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"expected a datetime, got {type(value).__name__}")
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime given to the store (use an aware UTC one): {value}")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime):  # pragma: no cover - drivers return datetimes
            raise TypeError(f"expected a datetime from the database, got {type(value).__name__}")
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class JSONText(TypeDecorator[Any]):
    """Any JSON-serialisable value, stored as compact JSON text."""

    impl = sa.Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        if value is None:
            return None
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True)

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        return json.loads(value)


# Integer on SQLite (so the key is the rowid alias and autoincrements), BIGINT elsewhere.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

residents = sa.Table(
    "residents",
    metadata,
    sa.Column("phone", sa.String(32), primary_key=True),  # E.164
    sa.Column("municipality_id", sa.String(100), nullable=True),
    sa.Column("language", sa.String(8), nullable=False),
    sa.Column("opted_out", sa.Boolean(), nullable=False),
    sa.Column("dialogue", JSONText(), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
)

conversations = sa.Table(
    "conversations",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("token", sa.String(64), nullable=False),
    sa.Column("phone", sa.String(32), nullable=False),
    sa.Column("municipality_id", sa.String(100), nullable=True),
    sa.Column("subject", sa.Text(), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("thread_message_ids", JSONText(), nullable=False),
    sa.Column("agent_address", sa.String(320), nullable=True),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("last_activity_at", UTCDateTime(), nullable=False),
    sa.Column("closed_at", UTCDateTime(), nullable=True),
    # the resident's newest text in the conversation (the console's "unread"), kept by the store
    sa.Column("last_inbound_at", UTCDateTime(), nullable=True),
    sa.UniqueConstraint("token"),
    sa.CheckConstraint("status IN ('open', 'closed')", name="status"),
    sa.Index(None, "phone", "status"),
    # the console's conversation list (newest activity first), per scope and filter
    sa.Index(None, "municipality_id", "status", "last_activity_at", "id"),
    sa.Index(None, "agent_address", "status", "last_activity_at"),
    sa.Index(None, "status", "last_activity_at", "id"),
)

messages = sa.Table(
    "messages",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("phone", sa.String(32), nullable=False),
    sa.Column(
        "conversation_id",
        BigId,
        sa.ForeignKey("conversations.id", ondelete="SET NULL"),
        nullable=True,
    ),
    sa.Column("direction", sa.String(8), nullable=False),
    sa.Column("body", sa.Text(), nullable=False),
    sa.Column("media", JSONText(), nullable=False),
    sa.Column("provider_sid", sa.String(64), nullable=True),
    sa.Column("held", sa.Boolean(), nullable=False),
    sa.Column("received_at", UTCDateTime(), nullable=False),
    sa.Column("status", sa.String(32), nullable=True),  # outbound: queued, sent, delivered, ...
    sa.Column("error_code", sa.Integer(), nullable=True),  # provider error code (e.g. 30003)
    sa.Column("agent_address", sa.String(320), nullable=True),  # outbound: who wrote it
    sa.Column("updated_at", UTCDateTime(), nullable=False),
    sa.Column("via", sa.String(16), nullable=True),  # outbound: "email" | "console"
    sa.UniqueConstraint("provider_sid"),
    sa.CheckConstraint("direction IN ('in', 'out')", name="direction"),
    sa.Index(None, "phone", "held"),
    sa.Index(None, "conversation_id"),
)

webhook_log = sa.Table(
    "webhook_log",
    metadata,
    sa.Column("sid", sa.String(64), primary_key=True),
    sa.Column("response", sa.Text(), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Index(None, "created_at"),
)

# Texts the webhook accepted and stored, not yet processed (the dialogue, threading and the
# email run in the worker): one row per text, deleted in the transaction that processes it.
# `sid` is unique: a provider's retry of a queued text is recognised (dedupe).
inbound_texts = sa.Table(
    "inbound_texts",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("sid", sa.String(64), nullable=False),
    sa.Column("phone", sa.String(32), nullable=False),  # E.164
    sa.Column("to_number", sa.String(32), nullable=False),
    sa.Column("body", sa.Text(), nullable=False),
    sa.Column("media", JSONText(), nullable=False),
    sa.Column("from_city", sa.String(100), nullable=True),
    sa.Column("from_state", sa.String(100), nullable=True),
    sa.Column("received_at", UTCDateTime(), nullable=False),
    sa.UniqueConstraint("sid"),
    sa.Index(None, "phone", "id"),
)

outbox = sa.Table(
    "outbox",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("payload", JSONText(), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer(), nullable=False),
    # the last attempt may have reached the far side: look an SMS up before sending it again
    sa.Column("maybe_sent", sa.Boolean(), nullable=False, server_default=sa.false()),
    sa.Column("next_attempt_at", UTCDateTime(), nullable=False),
    sa.Column("last_error", sa.Text(), nullable=True),
    sa.Column("claimed_by", sa.String(200), nullable=True),
    sa.Column("claimed_until", UTCDateTime(), nullable=True),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
    sa.CheckConstraint("kind IN ('email', 'sms')", name="kind"),
    sa.CheckConstraint("status IN ('pending', 'sent', 'parked')", name="status"),
    sa.Index(None, "status", "next_attempt_at"),
)

# Every email of a conversation's thread (sent by the gateway: "out"; received: "in"),
# so that a reply routes by In-Reply-To / References.
email_messages = sa.Table(
    "email_messages",
    metadata,
    sa.Column("message_id", sa.String(998), primary_key=True),  # "<id@host>", as recorded
    sa.Column(
        "conversation_id",
        BigId,
        sa.ForeignKey("conversations.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("direction", sa.String(8), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.CheckConstraint("direction IN ('out', 'in')", name="direction"),
    sa.Index(None, "conversation_id"),
)

# Emails read from the mailbox / ingress, keyed by the hash of their bytes: never handled twice.
processed_emails = sa.Table(
    "processed_emails",
    metadata,
    sa.Column("key", sa.String(200), primary_key=True),  # "sha256:<hex>"
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("reason", sa.Text(), nullable=False),
    sa.Column("origin", JSONText(), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.CheckConstraint("outcome IN ('processed', 'ignored', 'failed')", name="outcome"),
    sa.Index(None, "created_at"),
)

# Reply emails that were not texted, kept whole (both doors) so the operator can list and
# retry them (`sms311 failed ...`). No foreign key: see migration 0007.
failed_emails = sa.Table(
    "failed_emails",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("key", sa.String(200), nullable=False, unique=True),  # as processed_emails.key
    sa.Column("received_at", UTCDateTime(), nullable=False),
    sa.Column("origin", JSONText(), nullable=False),
    sa.Column("reason", sa.Text(), nullable=False),
    sa.Column("why", sa.String(32), nullable=True),  # gateway.rules.agent_notice.NOT_TEXTED_WHY
    sa.Column("sender", sa.String(320), nullable=True),
    sa.Column("subject", sa.Text(), nullable=True),
    sa.Column("conversation_id", BigId, nullable=True),
    sa.Column("raw", sa.LargeBinary(), nullable=False),
    sa.Column("truncated", sa.Boolean(), nullable=False),
    sa.Column("resolved_at", UTCDateTime(), nullable=True),
    sa.Column("resolution", sa.Text(), nullable=True),
    sa.Index(None, "received_at"),
    sa.Index(None, "conversation_id"),  # the console's timeline of one conversation
)

# Where the IMAP listener got to in each mailbox.
imap_checkpoints = sa.Table(
    "imap_checkpoints",
    metadata,
    sa.Column("mailbox", sa.String(1000), primary_key=True),
    sa.Column("uidvalidity", sa.BigInteger(), nullable=False),
    sa.Column("last_uid", sa.BigInteger(), nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
)

# Texts let go by the shared pacer (PostgreSQL, several instances): the database's clock
# and the segments; 0 segments = a pause until the row leaves the window (see gateway.store.pacing).
sms_starts = sa.Table(
    "sms_starts",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("started_at", UTCDateTime(), nullable=False),
    sa.Column("segments", sa.Integer(), nullable=False),
    sa.CheckConstraint("segments >= 0", name="segments"),
    sa.Index(None, "started_at"),
)


# --- the staff console (issue 9) ---------------------------------------------------------

# Console accounts; `email` is stored lower-cased (and unique as such).
users = sa.Table(
    "users",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("email", sa.String(320), nullable=False),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("password_hash", sa.Text(), nullable=False),
    sa.Column("totp_secret", sa.String(128), nullable=True),
    sa.Column("totp_last_step", sa.BigInteger(), nullable=True),  # last accepted code's step
    sa.Column("disabled", sa.Boolean(), nullable=False),
    sa.Column("must_change_password", sa.Boolean(), nullable=False),
    sa.Column("language", sa.String(8), nullable=True),
    # in every session cookie; raised on sign-out, disable and password change (ends sessions)
    sa.Column("session_epoch", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
    sa.UniqueConstraint("email"),
    sa.CheckConstraint("role IN ('agent', 'supervisor', 'admin')", name="role"),
    sa.CheckConstraint("email = lower(email)", name="email_lower"),
)

# Failed console sign-in attempts (the rate limit), pruned after the window.
login_attempts = sa.Table(
    "login_attempts",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("at", UTCDateTime(), nullable=False),
    sa.Column("email", sa.String(320), nullable=True),
    sa.Column("remote_addr", sa.String(64), nullable=True),
    sa.Index(None, "at"),
    sa.Index(None, "email"),
    sa.Index(None, "remote_addr"),
)

# The last known state of each background service (`imap`, `ingress`): read by /healthz.
service_state = sa.Table(
    "service_state",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("ok", sa.Boolean(), nullable=False),
    sa.Column("detail", sa.Text(), nullable=True),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
)

# Which municipalities an agent or supervisor works for (admins see all of them anyway).
user_municipalities = sa.Table(
    "user_municipalities",
    metadata,
    sa.Column(
        "user_id", BigId, sa.ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    ),
    sa.Column("municipality_id", sa.String(100), primary_key=True),
)

# Internal notes on a conversation (never texted).
notes = sa.Table(
    "notes",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column(
        "conversation_id",
        BigId,
        sa.ForeignKey("conversations.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("user_id", BigId, sa.ForeignKey("users.id"), nullable=False),
    sa.Column("body", sa.Text(), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Index(None, "conversation_id"),
)

# Each user's read mark per conversation (unread = a resident text newer than it).
conversation_reads = sa.Table(
    "conversation_reads",
    metadata,
    sa.Column(
        "user_id", BigId, sa.ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    ),
    sa.Column(
        "conversation_id",
        BigId,
        sa.ForeignKey("conversations.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("last_read_at", UTCDateTime(), nullable=False),
    sa.Index(None, "conversation_id"),
)

# Who has a conversation open right now (viewing, or typing a reply); keyed by conversation
# first, which is how it is read.
presence = sa.Table(
    "presence",
    metadata,
    sa.Column(
        "conversation_id",
        BigId,
        sa.ForeignKey("conversations.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column(
        "user_id", BigId, sa.ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    ),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("seen_at", UTCDateTime(), nullable=False),
    sa.CheckConstraint("state IN ('viewing', 'replying')", name="state"),
)

# What staff did. No foreign keys: the log outlives erased conversations (and it never
# holds a phone number or a text, so an erasure leaves nothing personal in it).
audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("at", UTCDateTime(), nullable=False),
    sa.Column("user_id", BigId, nullable=True),
    sa.Column("user_email", sa.String(320), nullable=True),
    sa.Column("action", sa.String(32), nullable=False),
    sa.Column("conversation_id", BigId, nullable=True),
    sa.Column("municipality_id", sa.String(100), nullable=True),
    sa.Column("remote_addr", sa.String(64), nullable=True),
    sa.Column("detail", JSONText(), nullable=False),
    sa.Index(None, "action", "at"),
    sa.Index(None, "conversation_id"),
    sa.Index(None, "municipality_id", "id"),
)

# Form submission keys already handled (a double submit does nothing twice).
console_requests = sa.Table(
    "console_requests",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("user_id", BigId, nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
)

# Settings every console instance shares (the session-signing secret).
console_settings = sa.Table(
    "console_settings",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text(), nullable=False),
)
