"""Privacy operations on the store: retention, and a resident's access and erasure requests.

- `purge_texts` blanks message texts (and media links) older than the retention period and
  deletes the sent outbox rows and logs that still carry them, keeping every message row so
  the counts (texts in and out per municipality and day) survive; failed reply emails kept
  for the operator (`sms311 failed`) that are as old are deleted.
- `export_resident` gathers everything stored about one phone number, as JSON-safe data.
- `delete_resident` erases it. The console's notes, read marks and presence rows of the
  resident's conversations go with the conversations (ON DELETE CASCADE; SQLite connections
  have foreign keys on). The console's audit log is kept: it never holds a phone number or
  a text, only ids, actions and who did them.

Texts that are still held (the resident never named a municipality) are not purged: they
have not reached anyone yet. Parked outbox rows are kept until an operator deals with them.

Each function takes the gateway's `Store` and runs in one transaction of its own (a
connection outside the group commit), errors translated (`StoreUnavailable`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from gateway.store.base import Store
from gateway.store.engine import translated
from gateway.store.reply_mail import LISTED_COLUMNS
from gateway.store.schema import (
    conversations,
    email_messages,
    failed_emails,
    messages,
    notes,
    outbox,
    processed_emails,
    residents,
    webhook_log,
)
from gateway.store.sql import as_sql_store


@dataclass(frozen=True)
class PurgeResult:
    texts_blanked: int
    outbox_deleted: int
    webhook_log_deleted: int
    processed_emails_deleted: int
    failed_emails_deleted: int = 0


def purge_texts(store: Store, older_than: datetime, now: datetime | None = None) -> PurgeResult:
    """Blank texts received before `older_than`; drop sent outbox rows and logs as old."""
    now = now or datetime.now(UTC)
    with translated(), as_sql_store(store).engine.begin() as conn:
        blanked = conn.execute(
            sa.update(messages)
            .where(
                messages.c.received_at < older_than,
                messages.c.held.is_(False),
                sa.or_(messages.c.body != "", messages.c.media != []),
            )
            .values(body="", media=[], updated_at=now)
        ).rowcount
        deleted_outbox = conn.execute(
            sa.delete(outbox).where(outbox.c.status == "sent", outbox.c.updated_at < older_than)
        ).rowcount
        deleted_log = conn.execute(
            sa.delete(webhook_log).where(webhook_log.c.created_at < older_than)
        ).rowcount
        deleted_processed = conn.execute(
            sa.delete(processed_emails).where(processed_emails.c.created_at < older_than)
        ).rowcount
        deleted_failed = conn.execute(  # kept failed replies (`sms311 failed`)
            sa.delete(failed_emails).where(failed_emails.c.received_at < older_than)
        ).rowcount
    return PurgeResult(
        int(blanked), int(deleted_outbox), int(deleted_log), int(deleted_processed),
        int(deleted_failed),
    )  # fmt: skip


def _rows(conn: sa.Connection, statement: sa.Select[Any]) -> list[dict[str, Any]]:
    return [_jsonable(dict(row._mapping)) for row in conn.execute(statement)]


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in row.items()}


def _outbox_of(phone: str) -> sa.ColumnElement[bool]:
    # Payloads are JSON text on both backends; the number appears as a JSON string value.
    needle = json.dumps(phone)
    return sa.cast(outbox.c.payload, sa.Text).contains(needle)


def export_resident(store: Store, phone: str) -> dict[str, Any]:
    """Everything stored about `phone` (E.164): for an access request."""
    with translated(), as_sql_store(store).engine.connect() as conn:
        conversation_ids = [
            row[0]
            for row in conn.execute(
                sa.select(conversations.c.id).where(conversations.c.phone == phone)
            )
        ]
        return {
            "phone": phone,
            "exported_at": datetime.now(UTC).isoformat(),
            "resident": _rows(conn, sa.select(residents).where(residents.c.phone == phone)),
            "conversations": _rows(
                conn, sa.select(conversations).where(conversations.c.phone == phone)
            ),
            "messages": _rows(
                conn,
                sa.select(messages).where(messages.c.phone == phone).order_by(messages.c.id),
            ),
            "email_messages": _rows(
                conn,
                sa.select(email_messages).where(
                    email_messages.c.conversation_id.in_(conversation_ids)
                ),
            ),
            "outbox": _rows(conn, sa.select(outbox).where(_outbox_of(phone))),
            # agents' replies that were not texted, kept for the operator (without bytes)
            "failed_emails": _rows(
                conn,
                sa.select(*LISTED_COLUMNS).where(
                    failed_emails.c.conversation_id.in_(conversation_ids)
                ),
            ),
            # staff's internal notes on the resident's conversations (console)
            "notes": _rows(
                conn,
                sa.select(notes)
                .where(notes.c.conversation_id.in_(conversation_ids))
                .order_by(notes.c.id),
            ),
        }


def delete_resident(store: Store, phone: str) -> dict[str, int]:
    """Erase everything stored about `phone` (E.164): for an erasure request."""
    with translated(), as_sql_store(store).engine.begin() as conn:
        conversation_ids = sa.select(conversations.c.id).where(conversations.c.phone == phone)
        counts = {
            "outbox": conn.execute(sa.delete(outbox).where(_outbox_of(phone))).rowcount,
            "failed_emails": conn.execute(
                sa.delete(failed_emails).where(
                    failed_emails.c.conversation_id.in_(conversation_ids)
                )
            ).rowcount,
            "email_messages": conn.execute(
                sa.delete(email_messages).where(
                    email_messages.c.conversation_id.in_(conversation_ids)
                )
            ).rowcount,
            "messages": conn.execute(sa.delete(messages).where(messages.c.phone == phone)).rowcount,
            # (and with them, by ON DELETE CASCADE: notes, read marks, presence)
            "conversations": conn.execute(
                sa.delete(conversations).where(conversations.c.phone == phone)
            ).rowcount,
            "resident": conn.execute(
                sa.delete(residents).where(residents.c.phone == phone)
            ).rowcount,
        }
    return {k: int(v) for k, v in counts.items()}
