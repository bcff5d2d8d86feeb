"""The staff console's data: users, their municipalities, notes, read marks, presence,
the audit log, idempotent form submissions, and the conversation list/search queries.

    console = ConsoleStore(store)                  # over the gateway's SqlStore
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
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from gateway.store.base import Conversation, StoreError, StoredMessage
from gateway.store.sql import SqlStore, SqlTx

Role = Literal["agent", "supervisor", "admin"]
ROLES: tuple[Role, ...] = ("agent", "supervisor", "admin")
ListFilter = Literal["open", "closed", "mine", "unassigned", "all"]
LIST_FILTERS: tuple[ListFilter, ...] = ("open", "closed", "mine", "unassigned", "all")
PresenceState = Literal["viewing", "replying"]
PAGE_SIZE = 50


class UserExists(StoreError):
    """`add_user` with an email that already has an account (emails are case-insensitive)."""


@dataclass(frozen=True)
class Scope:
    """Which municipalities a user may see; `municipalities=None` means all (admins)."""

    municipalities: frozenset[str] | None

    def allows(self, municipality_id: str | None) -> bool:
        if self.municipalities is None:
            return True
        return municipality_id is not None and municipality_id in self.municipalities


@dataclass(frozen=True)
class User:
    """A console account. `email` is stored lower-cased; `municipalities` sorted."""

    id: int
    email: str
    name: str
    role: Role
    municipalities: tuple[str, ...]
    password_hash: str
    totp_secret: str | None
    disabled: bool
    must_change_password: bool
    language: str | None  # "en" | "fr" | None (follow the browser)
    created_at: datetime
    updated_at: datetime

    @property
    def scope(self) -> Scope:
        if self.role == "admin":
            return Scope(None)
        return Scope(frozenset(self.municipalities))


@dataclass(frozen=True)
class ConversationRow:
    """One line of the conversation list."""

    id: int
    phone: str  # E.164
    municipality_id: str | None
    status: str  # open | closed
    agent_address: str | None  # the sticky agent (lower-case email) or None
    created_at: datetime
    last_activity_at: datetime
    last_inbound_at: datetime | None  # the resident's last text in this conversation
    preview: str  # the newest message's text, at most 140 characters ("" if none)
    unread: bool  # a resident text newer than this user's read mark (or never read)
    language: str  # the resident's
    opted_out: bool  # the resident's


@dataclass(frozen=True)
class ConversationPage:
    rows: tuple[ConversationRow, ...]
    next_cursor: str | None  # pass as `cursor` for the next page; None on the last page


@dataclass(frozen=True)
class Note:
    id: int
    conversation_id: int
    user_id: int
    user_name: str
    body: str
    created_at: datetime


@dataclass(frozen=True)
class Presence:
    user_id: int
    user_name: str
    state: PresenceState
    seen_at: datetime


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: datetime
    user_id: int | None
    user_email: str | None
    action: str  # login, login_failed, logout, read, reply, note, assign, close, reopen, export…
    conversation_id: int | None
    municipality_id: str | None
    remote_addr: str | None
    detail: dict[str, Any]


class ConsoleTx:
    """The console's operations inside one transaction; `core` is the gateway's `Tx` on the
    same connection (so a console reply, its outbox rows and its audit entry commit together)."""

    def __init__(self, core: SqlTx) -> None:
        self.core = core

    # -- users ---------------------------------------------------------------------------

    def add_user(
        self,
        email: str,
        name: str,
        role: Role,
        municipalities: Sequence[str],
        password_hash: str,
        *,
        must_change_password: bool,
        at: datetime,
    ) -> User:
        """Create an account (email lower-cased and stripped). Raises `UserExists`, and
        `ValueError` for an unknown role."""
        raise NotImplementedError

    def get_user(self, user_id: int) -> User | None: ...
    def user_by_email(self, email: str) -> User | None:
        """Case-insensitive."""
        ...
    def list_users(self) -> list[User]:
        """Every account, by email."""
        ...
    def users_of(self, municipality_id: str) -> list[User]:
        """Enabled accounts that can see this municipality (its agents and supervisors, and
        every admin), by name: the "assign to" choices."""
        ...
    def set_password(
        self, user_id: int, password_hash: str, *, must_change_password: bool, at: datetime
    ) -> None:
        """Raises KeyError if there is no such user (as do the other setters)."""
        ...
    def set_disabled(self, user_id: int, disabled: bool, at: datetime) -> None: ...
    def set_totp(self, user_id: int, secret: str | None, at: datetime) -> None: ...
    def set_language(self, user_id: int, language: str | None, at: datetime) -> None: ...
    def set_municipalities(self, user_id: int, municipalities: Sequence[str], at: datetime) -> None: ...
    def set_role(self, user_id: int, role: Role, at: datetime) -> None: ...

    # -- conversations, in scope -----------------------------------------------------------

    def conversation(self, conversation_id: int, scope: Scope) -> Conversation | None:
        """The conversation if it exists AND is in scope, else None (the view answers 404)."""
        ...

    def list_conversations(
        self,
        scope: Scope,
        which: ListFilter,
        *,
        user_id: int,
        user_email: str,
        query: str = "",
        cursor: str | None = None,
        limit: int = PAGE_SIZE,
    ) -> ConversationPage:
        """Conversations in scope, newest activity first (last_activity_at DESC, id DESC),
        keyset-paged (`cursor` is opaque). `which`: open | closed | mine (open, agent_address =
        user_email) | unassigned (open, no agent) | all.
        `query`: several digits (spaces, dashes, parentheses and a leading + ignored) match
        the phone number; anything else matches conversations having a message whose text
        contains every word (case-insensitive). Must stay fast at 100,000 conversations
        (indexed on municipality_id, status, last_activity_at)."""
        ...

    def counts(self, scope: Scope, *, user_id: int, user_email: str) -> dict[str, int]:
        """{"open": n, "closed": n, "mine": n, "unassigned": n, "unread": n} in scope."""
        ...

    def timeline_version(self, conversation_id: int) -> str:
        """A short string that changes whenever the conversation's messages (new ones, a
        delivery status), notes, status or agent change: live refresh answers 204 when equal."""
        ...

    def messages(self, conversation_id: int) -> list[StoredMessage]:
        """Every message of the conversation, oldest first (= core.messages_of)."""
        ...

    def reopen_conversation(self, conversation_id: int, at: datetime) -> None:
        """status open, closed_at NULL, last_activity_at moved to `at`. KeyError if missing."""
        ...

    # -- notes, reads, presence --------------------------------------------------------------

    def add_note(self, conversation_id: int, user_id: int, body: str, at: datetime) -> int: ...
    def notes_of(self, conversation_id: int) -> list[Note]:
        """Oldest first."""
        ...
    def mark_read(self, user_id: int, conversation_id: int, at: datetime) -> None:
        """Upsert this user's read mark (never moves back)."""
        ...
    def touch_presence(
        self, user_id: int, conversation_id: int, state: PresenceState, at: datetime
    ) -> None:
        """Upsert (user, conversation) -> state, seen_at."""
        ...
    def presence(
        self, conversation_id: int, *, since: datetime, excluding_user: int | None = None
    ) -> list[Presence]:
        """Who else has the conversation open (seen since `since`), by name."""
        ...

    # -- audit, login throttling, idempotency, secret --------------------------------------

    def audit(
        self,
        user_id: int | None,
        user_email: str | None,
        action: str,
        *,
        at: datetime,
        conversation_id: int | None = None,
        municipality_id: str | None = None,
        remote_addr: str | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> int: ...
    def audit_log(
        self,
        scope: Scope,
        *,
        conversation_id: int | None = None,
        before_id: int | None = None,
        limit: int = 100,
    ) -> list[AuditEntry]:
        """Newest first. With a limited scope, only entries about conversations in scope
        (municipality_id in scope)."""
        ...
    def failed_logins(self, *, email: str | None, remote_addr: str | None, since: datetime) -> int:
        """How many login_failed entries since `since` for this email OR this address."""
        ...
    def claim_request(self, key: str, user_id: int, at: datetime) -> bool:
        """Record a form submission key; False when it was already recorded (a double
        submit: do nothing again). Keys are at most 64 characters."""
        ...
    def console_secret(self) -> str:
        """The session-signing secret shared by every instance: created (64 random hex
        characters) the first time and kept in the database."""
        ...


class ConsoleStore:
    """The console's view of the gateway's `SqlStore` (SQLite or PostgreSQL)."""

    def __init__(self, store: SqlStore) -> None:
        self.store = store

    @contextmanager
    def transaction(self) -> Iterator[ConsoleTx]:
        """One write transaction (through the store's group commit on SQLite)."""
        with self.store.transaction() as core:
            yield ConsoleTx(core)

    @contextmanager
    def reading(self) -> Iterator[ConsoleTx]:
        """A read-only transaction (SQLite: deferred, does not wait for the write lock)."""
        raise NotImplementedError
        yield  # pragma: no cover
