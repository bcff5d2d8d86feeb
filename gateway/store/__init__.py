"""The gateway's database: one `Store` interface, SQLite (default) or PostgreSQL behind it.

    store = open_store(settings.database)   # "sqlite:///path" or "postgresql://user@host/db"
    store.check_schema()                    # or store.upgrade() (`sms311 db upgrade`)
    with store.transaction() as tx:         # one transaction; commit on exit, rollback on error
        ...

See `gateway.store.base` for the contract (records, errors, protocols).
"""

from gateway.store.base import (
    Conversation,
    ConversationStatus,
    Direction,
    DuplicateEmail,
    DuplicateWebhook,
    EmailDirection,
    EmailOutcome,
    OutboxItem,
    OutboxKind,
    OutboxStats,
    OutboxStatus,
    Resident,
    SchemaOutOfDate,
    Store,
    StoredMessage,
    StoreError,
    StoreUnavailable,
    Tx,
)
from gateway.store.sql import SqlStore, open_store

__all__ = [
    "Conversation",
    "ConversationStatus",
    "Direction",
    "DuplicateEmail",
    "DuplicateWebhook",
    "EmailDirection",
    "EmailOutcome",
    "OutboxItem",
    "OutboxKind",
    "OutboxStats",
    "OutboxStatus",
    "Resident",
    "SchemaOutOfDate",
    "SqlStore",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "StoredMessage",
    "Tx",
    "open_store",
]
