"""Values in and records out: the checks on values going into the database and the records
(`gateway.store.base`) built from the rows coming out, shared by the store's modules.

Contract
    `aware(value, what)` accepts only a timezone-aware datetime and returns it in UTC
    (`TypeError` for anything else, `ValueError` for a naive one); `bigint(value, what)` an
    int in 0..2**63-1; `media_items` the `{"url", "content_type"}` dicts of a message.
    `resident`, `conversation`, `message`, `outbox_item` turn a row (any row holding the
    table's columns) into its frozen record. `insert_or` builds the dialect's
    INSERT ... ON CONFLICT. Nothing here touches a connection.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from gateway.store.base import Conversation, OutboxItem, QueuedText, Resident, StoredMessage

MAX_ERROR_CHARS = 4000  # outbox.last_error is truncated to this
_MAX_BIGINT = 2**63 - 1


def utcnow() -> datetime:
    return datetime.now(UTC)


def aware(value: datetime, what: str) -> datetime:
    """`value` in UTC; raises unless it is a timezone-aware datetime (`what` names it)."""
    if not isinstance(value, datetime):
        raise TypeError(f"{what}: expected a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what}: naive datetime (use an aware UTC one): {value}")
    return value.astimezone(UTC)


def bigint(value: int, what: str) -> int:
    """`value`, unless it is not an int in 0..2**63-1."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{what}: expected an int, got {type(value).__name__}")
    if not 0 <= value <= _MAX_BIGINT:
        raise ValueError(f"{what}: out of range (0..2**63-1): {value}")
    return value


def media_items(media: Sequence[Mapping[str, str]]) -> list[dict[str, str]]:
    """A message's media as stored: each item exactly a string `url` and `content_type`."""
    items = []
    for item in media:
        url, content_type = item.get("url"), item.get("content_type")
        if not isinstance(url, str) or not isinstance(content_type, str):
            raise ValueError("each media item needs a string 'url' and 'content_type'")
        items.append({"url": url, "content_type": content_type})
    return items


def dialect_insert(pg: bool, table: sa.Table) -> Any:
    """INSERT with ON CONFLICT support, PostgreSQL's or SQLite's. (Each dialect is imported
    only when asked for: PostgreSQL's is 2 MB that a process on SQLite does not carry.)"""
    if pg:
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table)
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(table)


def insert_or(
    pg: bool,
    table: sa.Table,
    values: Mapping[str, Any],
    key: Sequence[sa.Column[Any]],
    update: Mapping[str, Any] | None = None,
) -> sa.Executable:
    """INSERT ... ON CONFLICT (key) DO UPDATE SET update (or DO NOTHING without `update`)."""
    stmt = dialect_insert(pg, table).values(dict(values))
    if update is None:
        return stmt.on_conflict_do_nothing(index_elements=list(key))  # type: ignore[no-any-return]
    return stmt.on_conflict_do_update(  # type: ignore[no-any-return]
        index_elements=list(key), set_=dict(update)
    )


# --- row -> record --------------------------------------------------------------------------


def resident(row: sa.Row[Any]) -> Resident:
    m = row._mapping
    return Resident(
        phone=m["phone"],
        municipality_id=m["municipality_id"],
        language=m["language"],
        opted_out=bool(m["opted_out"]),
        dialogue=dict(m["dialogue"]),
        created_at=m["created_at"],
        updated_at=m["updated_at"],
    )


def conversation(row: sa.Row[Any]) -> Conversation:
    m = row._mapping
    return Conversation(
        id=int(m["id"]),
        token=m["token"],
        phone=m["phone"],
        municipality_id=m["municipality_id"],
        subject=m["subject"],
        status=m["status"],
        thread_message_ids=tuple(m["thread_message_ids"]),
        created_at=m["created_at"],
        last_activity_at=m["last_activity_at"],
        agent_address=m["agent_address"],
        closed_at=m["closed_at"],
    )


def message(row: sa.Row[Any]) -> StoredMessage:
    m = row._mapping
    return StoredMessage(
        id=int(m["id"]),
        phone=m["phone"],
        conversation_id=None if m["conversation_id"] is None else int(m["conversation_id"]),
        direction=m["direction"],
        body=m["body"],
        media=tuple(dict(item) for item in m["media"]),
        provider_sid=m["provider_sid"],
        received_at=m["received_at"],
        held=bool(m["held"]),
        status=m["status"],
        error_code=None if m["error_code"] is None else int(m["error_code"]),
        agent_address=m["agent_address"],
        via=m["via"],
    )


def queued_text(row: sa.Row[Any]) -> QueuedText:
    m = row._mapping
    return QueuedText(
        id=int(m["id"]),
        sid=m["sid"],
        phone=m["phone"],
        to=m["to_number"],
        body=m["body"],
        media=tuple(dict(item) for item in m["media"]),
        received_at=m["received_at"],
        from_city=m["from_city"],
        from_state=m["from_state"],
    )


def outbox_item(row: sa.Row[Any]) -> OutboxItem:
    m = row._mapping
    return OutboxItem(
        id=int(m["id"]),
        kind=m["kind"],
        payload=dict(m["payload"]),
        status=m["status"],
        attempts=int(m["attempts"]),
        next_attempt_at=m["next_attempt_at"],
        last_error=m["last_error"],
        created_at=m["created_at"],
        claimed_by=m["claimed_by"],
        claimed_until=m["claimed_until"],
        maybe_sent=bool(m["maybe_sent"]),
    )
