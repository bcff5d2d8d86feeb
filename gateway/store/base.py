"""The store interface: records, errors, and the `Store` / `Tx` protocols.

Everything the rest of the gateway knows about persistence is here. The one
implementation is `gateway.store.sql.SqlStore` (SQLite or PostgreSQL through
SQLAlchemy Core); code outside `gateway/store/` should depend on these
protocols, never on SQLAlchemy.

Conventions shared by every method:

- Every datetime going in must be timezone-aware (a naive one raises
  `ValueError`); every datetime coming out is aware and in UTC.
- JSON-ish values (`Resident.dialogue`, `OutboxItem.payload`, message media)
  must be JSON-serialisable; they come back as plain dicts/lists.
- Any failure to reach the database (locked past the busy timeout, disk full,
  server gone, connection refused) raises `StoreUnavailable`; the webhook
  answers 503 on it so that Twilio retries.
- `Tx` methods only run inside `Store.transaction()`: all of them share that
  one database transaction, which commits when the `with` block ends and rolls
  back if it raises.
- Outbox methods on `Store` each run in their own short transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol, TypedDict

Direction = Literal["in", "out"]
ConversationStatus = Literal["open", "closed"]
OutboxKind = Literal["email", "sms"]
OutboxStatus = Literal["pending", "sent", "parked"]

DIRECTIONS: tuple[Direction, ...] = ("in", "out")
CONVERSATION_STATUSES: tuple[ConversationStatus, ...] = ("open", "closed")
OUTBOX_KINDS: tuple[OutboxKind, ...] = ("email", "sms")
OUTBOX_STATUSES: tuple[OutboxStatus, ...] = ("pending", "sent", "parked")


# --- errors ---------------------------------------------------------------------------------


class StoreError(Exception):
    """Base class of every error the store raises on purpose."""


class StoreUnavailable(StoreError):
    """The database cannot be used right now (locked, disk full, server gone).

    Transient by nature: the caller should answer 503 / retry later. The
    original driver exception is chained as `__cause__`.
    """


class SchemaOutOfDate(StoreError):
    """The database schema is not at the revision this version of the code needs."""

    def __init__(self, current: str | None, head: str, message: str | None = None) -> None:
        self.current = current
        self.head = head
        super().__init__(
            message
            or f"database schema is at {current or 'nothing (empty database)'}, "
            f"this version needs {head}: run `sms311 db upgrade`"
        )


class DuplicateWebhook(StoreError):
    """A provider message SID that is already stored was stored again.

    Raised by `Tx.record_webhook` when `sid` is already in the webhook log, and
    by `Tx.hold_message` / `Tx.add_message` when `provider_sid` is already on a
    stored message. Either way the same delivery was seen twice, possibly by
    two transactions racing (the database's unique key decides the winner; the
    loser gets this error, on PostgreSQL once the winner has committed).

    The transaction it happened in is unusable afterwards (PostgreSQL aborts
    it): let the error leave `Store.transaction()` (which rolls back) and then
    answer with `Tx.webhook_response(sid)` read in a new transaction.
    """

    def __init__(self, sid: str | None) -> None:
        self.sid = sid
        super().__init__(f"provider SID already recorded: {sid}")


# --- records --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Resident:
    """One phone number and what the gateway remembers about it.

    `dialogue` is the JSON-safe dict of `gateway.dialogue.DialogueState.to_dict()`.
    `created_at` / `updated_at` are filled in by the store (ignored by `save_resident`).
    """

    phone: str  # E.164
    municipality_id: str | None = None
    language: str = "en"
    opted_out: bool = False
    dialogue: dict[str, Any] = field(default_factory=dict)
    created_at: datetime | None = None
    updated_at: datetime | None = None


@dataclass(frozen=True)
class Conversation:
    """One email thread between a resident and a municipality.

    `thread_message_ids` is the Message-ID chain of the emails sent in the
    thread, oldest first (for `In-Reply-To` / `References`). `agent_address` is
    the agent the conversation sticks to once one has answered (issue 3).
    """

    id: int
    token: str
    phone: str
    municipality_id: str | None
    subject: str
    status: ConversationStatus
    thread_message_ids: tuple[str, ...]
    created_at: datetime
    last_activity_at: datetime
    agent_address: str | None = None


@dataclass(frozen=True)
class StoredMessage:
    """One SMS/MMS, in (from the resident) or out (to the resident).

    `media` items are `{"url": ..., "content_type": ...}` dicts.
    """

    id: int
    phone: str
    conversation_id: int | None
    direction: Direction
    body: str
    media: tuple[dict[str, str], ...]
    provider_sid: str | None
    received_at: datetime
    held: bool = False


@dataclass(frozen=True)
class OutboxItem:
    """One queued email or SMS; `payload` is the kind-specific JSON dict."""

    id: int
    kind: OutboxKind
    payload: dict[str, Any]
    status: OutboxStatus
    attempts: int
    next_attempt_at: datetime
    last_error: str | None
    created_at: datetime
    claimed_by: str | None = None
    claimed_until: datetime | None = None


class OutboxStats(TypedDict):
    """What `Store.outbox_stats` returns (for /metrics and /healthz)."""

    depth: int  # pending rows (due or not)
    oldest_age_seconds: float  # age of the oldest pending row (from created_at); 0.0 if none
    parked: int  # parked rows


# --- protocols ------------------------------------------------------------------------------


class Tx(Protocol):
    """The operations of one database transaction (see `Store.transaction`)."""

    def webhook_response(self, sid: str) -> str | None:
        """The answer recorded for this provider MessageSid, or None if never seen."""
        ...

    def record_webhook(self, sid: str, response: str) -> None:
        """Remember `sid` and the answer given to it.

        Raises `DuplicateWebhook` if `sid` is already recorded, including by a
        concurrent transaction (the primary key makes a double record impossible).
        Intended use by the webhook, all in one transaction: `webhook_response`
        first (answer it again if found), then the work, then `record_webhook`.
        """
        ...

    def get_resident(self, phone: str) -> Resident | None:
        """The resident with this E.164 number, or None.

        It also claims the number for the rest of the transaction: a concurrent
        transaction that reads the same resident waits until this one ends, so a
        number's texts are handled one after another (the dialogue state, held texts
        and open conversation are never raced). On SQLite every transaction is
        serial anyway; on PostgreSQL this is a transaction-scoped advisory lock.
        Read the resident first in a transaction to keep lock order consistent.
        """
        ...

    def save_resident(self, resident: Resident) -> None:
        """Insert or update the resident (keyed by phone); maintains created_at/updated_at."""
        ...

    def hold_message(
        self,
        phone: str,
        body: str,
        media: Sequence[Mapping[str, str]],
        provider_sid: str | None,
        received_at: datetime,
    ) -> int:
        """Store an inbound text whose municipality is not known yet; returns its id.

        Raises `DuplicateWebhook` if `provider_sid` is already stored.
        """
        ...

    def take_held(self, phone: str) -> list[StoredMessage]:
        """The held texts of `phone`, oldest first; they are no longer held afterwards.

        The returned records show `held=False`. Two transactions taking the held
        texts of the same phone never both get the same text.
        """
        ...

    def add_message(
        self,
        phone: str,
        conversation_id: int | None,
        direction: Direction,
        body: str,
        media: Sequence[Mapping[str, str]],
        provider_sid: str | None,
        received_at: datetime,
    ) -> int:
        """Store a (not held) message; returns its id.

        If `conversation_id` is given, that conversation's `last_activity_at` is
        moved forward to `received_at`. Raises `DuplicateWebhook` if
        `provider_sid` is already stored, `KeyError` if the conversation does not exist.
        """
        ...

    def attach_messages(self, message_ids: Sequence[int], conversation_id: int) -> None:
        """Put these messages into the conversation (e.g. the texts just taken from held).

        Moves the conversation's `last_activity_at` forward to the newest one.
        Raises `KeyError` if the conversation does not exist.
        """
        ...

    def open_conversation(self, phone: str, municipality_id: str | None) -> Conversation | None:
        """The most recently active open conversation of `phone` with this municipality
        (`None` matches conversations without a municipality), or None."""
        ...

    def create_conversation(
        self, phone: str, municipality_id: str | None, token: str, subject: str
    ) -> Conversation:
        """Start a new open conversation; `token` must be unique (the reply-address token)."""
        ...

    def record_thread_email(self, conversation_id: int, message_id: str) -> None:
        """Append an email's Message-ID to the conversation's thread chain.

        Raises `KeyError` if the conversation does not exist.
        """
        ...

    def enqueue(
        self, kind: OutboxKind, payload: Mapping[str, Any], available_at: datetime | None = None
    ) -> int:
        """Queue an email or SMS, due at `available_at` (default: now). Returns its id."""
        ...


class Store(Protocol):
    """The gateway's database. Safe to share between threads."""

    def upgrade(self) -> None:
        """Migrate the schema to the newest revision (`sms311 db upgrade`). Idempotent."""
        ...

    def check_schema(self) -> None:
        """Raise `SchemaOutOfDate` unless the schema is at the newest revision."""
        ...

    def current_revision(self) -> str | None:
        """The schema revision the database is at (None: never migrated)."""
        ...

    def ping(self) -> None:
        """A trivial round trip; raises `StoreUnavailable` if the database cannot be used."""
        ...

    def transaction(self) -> AbstractContextManager[Tx]:
        """One database transaction: commits when the block ends, rolls back if it raises.

        On SQLite it takes the write lock up front (`BEGIN IMMEDIATE`), so
        transactions are serialised and never fail upgrading from read to write.
        """
        ...

    def claim_due(
        self,
        kinds: Iterable[OutboxKind],
        limit: int,
        now: datetime,
        lease: timedelta,
        worker_id: str,
    ) -> list[OutboxItem]:
        """Claim up to `limit` pending items of these kinds that are due at `now`.

        An item is claimable when `next_attempt_at <= now` and it has no live
        lease (`claimed_until` null or `< now`). Claimed items get
        `claimed_by=worker_id`, `claimed_until=now + lease` and are returned
        oldest due first. Concurrent claimers (threads, processes, hosts) never
        get the same item while its lease lasts; a crashed worker's items become
        claimable again when the lease expires.
        """
        ...

    def mark_sent(self, id: int) -> None:
        """The item was delivered: status `sent`, claim cleared."""
        ...

    def mark_retry(self, id: int, error: str, next_attempt_at: datetime) -> None:
        """The attempt failed: attempts + 1, `last_error`, due again at `next_attempt_at`,
        claim cleared."""
        ...

    def mark_parked(self, id: int, error: str) -> None:
        """The item keeps failing: status `parked` (kept, reported, never retried on its own),
        attempts + 1, `last_error`, claim cleared."""
        ...

    def list_outbox(
        self, status: OutboxStatus | None = None, limit: int = 1000
    ) -> list[OutboxItem]:
        """Outbox items (all, or of one status), oldest first."""
        ...

    def requeue(self, id: int, now: datetime | None = None) -> bool:
        """Put a parked item back to pending, attempts 0, due `now` (default: the clock).

        Returns False if there is no parked item with that id.
        """
        ...

    def outbox_stats(self, now: datetime | None = None) -> OutboxStats:
        """Outbox depth, age of the oldest pending item, parked count."""
        ...

    def close(self) -> None:
        """Release every connection. The store cannot be used afterwards."""
        ...
