"""The staff console's data: users, their municipalities, notes, read marks, presence,
the audit log, idempotent form submissions, and the conversation list/search queries.

    console = ConsoleStore(store)                  # over the gateway's Store
    with console.transaction() as tx:              # ONE write transaction (group commit on SQLite)
        tx.core.set_agent(conversation_id, ...)    # the gateway's own `Tx`, same transaction
        tx.audit(user.id, user.email, "assign", conversation_id=..., detail={...}, at=now)
    with console.reading() as tx:                  # a read-only transaction for pages
        page = tx.list_conversations(scope, "open", user_email=user.email, user_id=user.id)

Conventions are those of `gateway.store.base`: datetimes in are aware (naive raises
`ValueError`), out are aware UTC; database trouble raises `StoreUnavailable`.

Scope: `Scope(None)` sees every municipality (admins) and the conversations without a
municipality (the fallback mailbox); `Scope(frozenset({"ottawa"}))` sees exactly those
municipalities' conversations and never the ones without a municipality. Every query
that returns conversations, counts, search results, messages or notes takes a scope and
filters IN SQL, so isolation never depends on the caller remembering to check.
(So does `failed_replies_of`: the reply emails of a conversation that were not texted.)

The parts: `common` (records, `Scope`), `users` (accounts), `inbox` (the conversation list,
search, counts, timeline), `activity` (notes, reads, presence, audit, idempotency, secret).
`ConsoleTx` is all of them in one transaction; import the names from here (`__all__`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from gateway.store.base import Store
from gateway.store.console.activity import ActivityTx
from gateway.store.console.common import (
    LIST_FILTERS,
    PAGE_SIZE,
    ROLES,
    AuditEntry,
    ConversationPage,
    ConversationRow,
    ListFilter,
    Note,
    NotTextedReply,
    Presence,
    PresenceState,
    Role,
    Scope,
    User,
    UserExists,
)
from gateway.store.console.inbox import MAX_PAGE, InboxTx, phone_digits
from gateway.store.console.users import UsersTx
from gateway.store.sql import as_sql_store

__all__ = [
    "LIST_FILTERS",
    "MAX_PAGE",
    "PAGE_SIZE",
    "ROLES",
    "AuditEntry",
    "ConsoleStore",
    "ConsoleTx",
    "ConversationPage",
    "ConversationRow",
    "ListFilter",
    "NotTextedReply",
    "Note",
    "Presence",
    "PresenceState",
    "Role",
    "Scope",
    "User",
    "UserExists",
    "phone_digits",
]


class ConsoleTx(UsersTx, InboxTx, ActivityTx):
    """The console's operations inside one transaction; `core` is the gateway's `Tx` on the
    same connection (so a console reply, its outbox rows and its audit entry commit together)."""


class ConsoleStore:
    """The console's view of the gateway's store (SQLite or PostgreSQL).

    `store` is the gateway's `Store`; the console works in SQL beside the protocol, on the
    one implementation (`gateway.store.sql.as_sql_store`: TypeError for another)."""

    def __init__(self, store: Store) -> None:
        self.store = as_sql_store(store)

    @contextmanager
    def transaction(self) -> Iterator[ConsoleTx]:
        """One write transaction (through the store's group commit on SQLite)."""
        with self.store.transaction() as core:
            yield ConsoleTx(core)

    @contextmanager
    def reading(self) -> Iterator[ConsoleTx]:
        """A read-only transaction (SQLite: deferred, does not wait for the write lock)."""
        with self.store.reading() as core:
            yield ConsoleTx(core)
