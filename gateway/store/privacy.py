"""Privacy operations on the store: retention, and a resident's access and erasure requests.

- `purge_texts` blanks message texts (and media links) older than the retention period and
  deletes the sent outbox rows and logs that still carry them, keeping every message row so
  the counts (texts in and out per municipality and day) survive; failed reply emails kept
  for the operator (`sms311 failed`) that are as old are deleted.
- `export_resident` gathers everything stored about one phone number, as JSON-safe data,
  except what would let whoever holds the export speak in the resident's conversations:
  the conversations' reply tokens (the `reply+TOKEN@` address) and the emails'
  Message-IDs (a reply that names one in In-Reply-To or References routes into the
  thread). The conversations' `token` and `thread_message_ids`, the thread's `message_id`
  and the queued emails' `reply_to`, `message_id`, `in_reply_to` and `references` are left
  out, and any other text that quotes one of them has it replaced by "[withheld]".
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
    inbound_texts,
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


#: Withheld from an export: the columns and outbox payload keys that carry a reply token or
#: a Message-ID (an SMS part's "message_id" is the stored message's number: kept).
WITHHELD_COLUMNS = {
    "conversations": ("token", "thread_message_ids"),
    "email_messages": ("message_id",),
}
WITHHELD_EMAIL_KEYS = ("reply_to", "message_id", "in_reply_to", "references")
WITHHELD = "[withheld]"


def _routing_secrets(conn: sa.Connection, phone: str, conversation_ids: list[int]) -> set[str]:
    """The reply tokens and Message-IDs of `phone`'s conversations and queued emails (with
    and without their angle brackets)."""
    found: set[str] = set()
    for token, thread in conn.execute(
        sa.select(conversations.c.token, conversations.c.thread_message_ids).where(
            conversations.c.phone == phone
        )
    ):
        found.add(str(token))
        found.update(str(m) for m in thread or ())
    found.update(
        str(m)
        for m in conn.execute(
            sa.select(email_messages.c.message_id).where(
                email_messages.c.conversation_id.in_(conversation_ids)
            )
        ).scalars()
    )
    for (payload,) in conn.execute(sa.select(outbox.c.payload).where(_outbox_of(phone))):
        if isinstance(payload, dict) and payload.get("type") != "reply":
            for key in WITHHELD_EMAIL_KEYS:
                value = payload.get(key)
                found.update(str(v) for v in (value if isinstance(value, list) else [value]) if v)
    found |= {m.strip("<>") for m in found}
    return {s for s in found if len(s) >= 8}  # (never a short string found everywhere)


def _withheld(value: Any, hidden: set[str]) -> Any:
    """`value` (JSON-safe) with every string quoting one of `hidden` rewritten."""
    if isinstance(value, str):
        for secret in sorted(hidden, key=len, reverse=True):
            if secret in value:
                value = value.replace(secret, WITHHELD)
        return value
    if isinstance(value, list):
        return [_withheld(v, hidden) for v in value]
    if isinstance(value, dict):
        return {k: _withheld(v, hidden) for k, v in value.items()}
    return value


def _without(rows: list[dict[str, Any]], keys: tuple[str, ...]) -> list[dict[str, Any]]:
    return [{k: v for k, v in row.items() if k not in keys} for row in rows]


def _outbox_row(row: dict[str, Any]) -> dict[str, Any]:
    payload = row.get("payload")
    if isinstance(payload, dict) and payload.get("type") != "reply":  # an email
        row = {**row, "payload": {k: v for k, v in payload.items()
                                  if k not in WITHHELD_EMAIL_KEYS}}  # fmt: skip
    return row


def export_resident(store: Store, phone: str) -> dict[str, Any]:
    """Everything stored about `phone` (E.164): for an access request. Reply tokens and
    Message-IDs are withheld (see the module's docstring): the export may be sent to an
    address anyone could read, and with them a forged reply would reach the resident."""
    with translated(), as_sql_store(store).engine.connect() as conn:
        conversation_ids = [
            row[0]
            for row in conn.execute(
                sa.select(conversations.c.id).where(conversations.c.phone == phone)
            )
        ]
        hidden = _routing_secrets(conn, phone, conversation_ids)
        export: dict[str, Any] = _withheld(_export(conn, phone, conversation_ids), hidden)
    return export


def _export(conn: sa.Connection, phone: str, conversation_ids: list[int]) -> dict[str, Any]:
    """The export, before `_withheld`."""
    return {
        "phone": phone,
        "exported_at": datetime.now(UTC).isoformat(),
        "resident": _rows(conn, sa.select(residents).where(residents.c.phone == phone)),
        "conversations": _without(
            _rows(conn, sa.select(conversations).where(conversations.c.phone == phone)),
            WITHHELD_COLUMNS["conversations"],
        ),
        "messages": _rows(
            conn,
            sa.select(messages).where(messages.c.phone == phone).order_by(messages.c.id),
        ),
        # texts accepted by the webhook and not yet processed by the worker
        "inbound_texts": _rows(
            conn,
            sa.select(inbound_texts)
            .where(inbound_texts.c.phone == phone)
            .order_by(inbound_texts.c.id),
        ),
        # the thread's emails (direction, when), without their Message-IDs
        "email_messages": _without(
            _rows(
                conn,
                sa.select(email_messages).where(
                    email_messages.c.conversation_id.in_(conversation_ids)
                ),
            ),
            WITHHELD_COLUMNS["email_messages"],
        ),
        "outbox": [
            _outbox_row(row) for row in _rows(conn, sa.select(outbox).where(_outbox_of(phone)))
        ],
        # agents' replies that were not texted, kept for the operator (without bytes)
        "failed_emails": _rows(
            conn,
            sa.select(*LISTED_COLUMNS).where(failed_emails.c.conversation_id.in_(conversation_ids)),
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
            "inbound_texts": conn.execute(
                sa.delete(inbound_texts).where(inbound_texts.c.phone == phone)
            ).rowcount,
            # (and with them, by ON DELETE CASCADE: notes, read marks, presence)
            "conversations": conn.execute(
                sa.delete(conversations).where(conversations.c.phone == phone)
            ).rowcount,
            "resident": conn.execute(
                sa.delete(residents).where(residents.c.phone == phone)
            ).rowcount,
        }
    return {k: int(v) for k, v in counts.items()}
