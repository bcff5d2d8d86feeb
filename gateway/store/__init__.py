"""The gateway's database: one `Store` interface, SQLite (default) or PostgreSQL behind it.

    store = open_store(settings.database)   # "sqlite:///path" or "postgresql://user@host/db"
    store.check_schema()                    # or store.upgrade() (`sms311 db upgrade`)
    with store.transaction() as tx:         # one transaction; commit on exit, rollback on error
        ...

See `gateway.store.base` for the contract (records, errors, protocols). The modules:

    base          the contract: records, errors, the `Store` and `Tx` protocols
    engine        URLs, engines (SQLite pragmas, PostgreSQL keepalives), error translation
    sql           `SqlStore` (the one `Store`): connections, schema revisions, checkpoints
    transaction   `SqlTx` (the one `Tx`): residents, messages, conversations, thread emails
    outbox        `SqlStore`'s outbox methods: claims, leases, outcomes
    rows          value checks in, records out
    group         SQLite group commit
    schema        the tables; migrations/ the Alembic revisions
    reply_mail    the Failed list (reply emails not texted)
    console/      the staff console's data: users, inbox, activity
    privacy       retention purge, a resident's export and erasure
    pacing        the pacers (in process, or shared through PostgreSQL)
    coordination  instances on one PostgreSQL: mailbox lease, outbox notifications

Code outside `gateway/store/` uses the protocols and these modules' public functions, never
`SqlStore` / `SqlTx` themselves.
"""

from gateway.store.base import (
    Conversation,
    ConversationStatus,
    Direction,
    DuplicateEmail,
    DuplicateWebhook,
    EmailDirection,
    EmailOutcome,
    FailedEmail,
    OutboxItem,
    OutboxKind,
    OutboxStats,
    OutboxStatus,
    QueuedText,
    Resident,
    SchemaOutOfDate,
    Store,
    StoredMessage,
    StoreError,
    StoreUnavailable,
    TextToQueue,
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
    "FailedEmail",
    "OutboxItem",
    "OutboxKind",
    "OutboxStats",
    "OutboxStatus",
    "QueuedText",
    "Resident",
    "SchemaOutOfDate",
    "SqlStore",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "StoredMessage",
    "TextToQueue",
    "Tx",
    "open_store",
]
