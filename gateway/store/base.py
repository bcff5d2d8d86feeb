"""The store interface: records, errors, and the `Store` / `Tx` protocols.

Everything the rest of the gateway knows about persistence is here. The one
implementation is `gateway.store.sql.SqlStore` (SQLite or PostgreSQL through
SQLAlchemy Core, its transaction `gateway.store.transaction.SqlTx`); code outside
`gateway/store/` depends on these protocols and on the public functions of
`gateway/store/` that take a `Store` (`ConsoleStore(store)`, `pacer_for(store, rate)`,
`postgres_conninfo(store)`, `purge_texts(store, ...)`, `record_state(store, ...)` and
`read_states(store)` of `service_state`), never on SQLAlchemy, `SqlStore` or `SqlTx`.

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
- Outbox and IMAP-checkpoint methods on `Store` each run in their own short
  transaction.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol, TypedDict

Direction = Literal["in", "out"]
ConversationStatus = Literal["open", "closed"]
OutboxKind = Literal["email", "sms"]
OutboxStatus = Literal["pending", "sent", "parked"]
EmailDirection = Literal["out", "in"]
EmailOutcome = Literal["processed", "ignored", "failed"]  # = gateway.mail.types.Outcome

DIRECTIONS: tuple[Direction, ...] = ("in", "out")
CONVERSATION_STATUSES: tuple[ConversationStatus, ...] = ("open", "closed")
OUTBOX_KINDS: tuple[OutboxKind, ...] = ("email", "sms")
OUTBOX_STATUSES: tuple[OutboxStatus, ...] = ("pending", "sent", "parked")
EMAIL_DIRECTIONS: tuple[EmailDirection, ...] = ("out", "in")
EMAIL_OUTCOMES: tuple[EmailOutcome, ...] = ("processed", "ignored", "failed")


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

    def advice(self, upgrade_command: str, known: Collection[str]) -> str:
        """What the operator should do, naming `upgrade_command` (the exact command line,
        e.g. "sms311 --config /etc/sms311/sms311.yaml db upgrade"). `known` holds every
        revision this version has migrations for: a `current` outside it was written by a
        newer sms311 (a downgrade of the software), which no command of this version fixes.
        """
        if self.current is None:
            return (
                f"the database is empty (no schema yet; this version needs {self.head}): "
                f"run `{upgrade_command}` (`sms311 run`, `web` and `worker` create it "
                "themselves)"
            )
        if self.current not in known:
            return (
                f"the database schema is at {self.current}, which this version does not know "
                f"(written by a newer sms311?); this version needs {self.head}: run the newer "
                "sms311 again, or restore the backup taken before it upgraded the database"
            )
        return (
            f"the database schema is at {self.current}, this version needs {self.head}: "
            f"run `{upgrade_command}`"
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


class DuplicateEmail(StoreError):
    """An email key that is already in the processed-email log was recorded again.

    Raised by `Tx.record_processed_email` when `key` is already recorded, including
    by a concurrent transaction (the primary key decides the winner; the loser gets
    this error, on PostgreSQL once the winner has committed). As with
    `DuplicateWebhook`, the transaction is unusable afterwards: let the error leave
    `Store.transaction()` and read `Tx.processed_email(key)` in a new transaction.
    """

    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(f"email already recorded as handled: {key}")


# --- records --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Resident:
    """One phone number and what the gateway remembers about it.

    `dialogue` is the JSON-safe dict of `gateway.rules.dialogue.DialogueState.to_dict()`.
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
    `closed_at` is when it was closed (None while open, and for conversations
    closed before the schema recorded it).
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
    closed_at: datetime | None = None


@dataclass(frozen=True)
class StoredMessage:
    """One SMS/MMS, in (from the resident) or out (to the resident).

    `media` items are `{"url": ..., "content_type": ...}` dicts. For outbound
    messages (an agent's reply), `status` is the delivery status ("queued",
    "not_sent", then the provider's: "sent", "delivered", "undelivered",
    "failed", ...), `error_code` the provider's error code (e.g. 21610, 30003)
    and `agent_address` the agent who wrote it; `via` how the reply came in
    ("email": answered from a mail client, "console": from the staff console).
    Inbound texts leave them None.
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
    status: str | None = None
    error_code: int | None = None
    agent_address: str | None = None
    via: str | None = None


@dataclass(frozen=True)
class TextToQueue:
    """A text for the inbound queue (`Tx.queue_inbound_many`), as `queue_inbound` takes it."""

    sid: str
    phone: str
    to: str
    body: str
    media: Sequence[Mapping[str, str]]
    received_at: datetime
    from_city: str | None = None
    from_state: str | None = None


@dataclass(frozen=True)
class QueuedText:
    """A text the webhook accepted and stored for the worker (`inbound_texts`): what the
    provider's webhook said, numbers in E.164, `media` items `{"url", "content_type"}`."""

    id: int
    sid: str
    phone: str
    to: str
    body: str
    media: tuple[dict[str, str], ...]
    received_at: datetime
    from_city: str | None = None
    from_state: str | None = None


@dataclass(frozen=True)
class OutboxItem:
    """One queued email or SMS; `payload` is the kind-specific JSON dict.

    `maybe_sent` is True when the last attempt may have reached the far side after all (a
    timeout after the request went out, an unreadable answer, a 5xx, a worker that stopped
    or lost its claim while it held the item): an SMS is then looked up at the provider
    before it is sent again, and only then. (SMTP has no way to ask: emails ignore it.)
    """

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
    maybe_sent: bool = False


@dataclass(frozen=True)
class FailedEmail:
    """One reply email kept in the Failed list (`gateway.store.reply_mail`): it was not texted.
    `raw` is b"" when listed (only `get_failed_email` reads it)."""

    id: int
    key: str
    received_at: datetime
    origin: dict[str, Any]
    reason: str
    why: str | None  # gateway.rules.agent_notice.NOT_TEXTED_WHY, or None (malformed, internal)
    sender: str | None
    subject: str | None
    conversation_id: int | None
    truncated: bool
    resolved_at: datetime | None
    resolution: str | None
    raw: bytes = b""
    size: int = 0


class OutboxStats(TypedDict):
    """What `Store.outbox_stats` returns (for /metrics and /healthz)."""

    depth: int  # pending rows (due or not)
    oldest_age_seconds: float  # age of the oldest pending row (from created_at); 0.0 if none
    parked: int  # parked rows


# --- protocols ------------------------------------------------------------------------------


class Tx(Protocol):
    """The operations of one database transaction (see `Store.transaction`)."""

    def answered_webhooks(self, sids: Collection[str]) -> set[str]:
        """Which of these provider SIDs were already answered (`record_webhook`)."""
        ...

    def queue_inbound(
        self,
        sid: str,
        phone: str,
        to: str,
        body: str,
        media: Sequence[Mapping[str, str]],
        received_at: datetime,
        from_city: str | None = None,
        from_state: str | None = None,
    ) -> bool:
        """Store an accepted text for the worker; False (and nothing stored) when a text
        with this provider SID is already queued (a retry)."""
        ...

    def resident_routing(self, phone: str) -> tuple[str | None, str] | None:
        """What the webhook needs to know of `phone`'s resident: (municipality id, dialogue
        stage), None for a number never seen. PostgreSQL: locks the number, as
        `get_resident` does."""
        ...

    def residents_routing(self, phones: Sequence[str]) -> dict[str, tuple[str | None, str]]:
        """`resident_routing` for several numbers (strangers left out); on PostgreSQL they
        are locked in sorted order, in one round trip."""
        ...

    def queue_inbound_many(self, texts: Sequence[TextToQueue]) -> list[bool]:
        """`queue_inbound` for several texts (one statement on PostgreSQL); for each, False
        when its sid is already queued (before, or earlier in `texts`)."""
        ...

    def queued_inbound(self, phone: str, limit: int | None = None) -> list[QueuedText]:
        """The queued texts of `phone` (the first `limit`), in the order they arrived."""
        ...

    def unqueue_inbound(self, ids: Collection[int]) -> None:
        """Delete processed queued texts."""
        ...

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
        *,
        status: str | None = None,
        agent_address: str | None = None,
        via: str | None = None,
    ) -> int:
        """Store a (not held) message; returns its id.

        If `conversation_id` is given, that conversation's `last_activity_at` is
        moved forward to `received_at` (and, for an inbound text, its
        `last_inbound_at` too; neither ever moves back). `status` / `agent_address`
        / `via` are for outbound replies (see `StoredMessage`). Raises `DuplicateWebhook` if
        `provider_sid` is already stored, `KeyError` if the conversation does not exist.
        """
        ...

    def message_by_provider_sid(self, sid: str) -> StoredMessage | None:
        """The message with this provider SID (e.g. for a status callback), or None."""
        ...

    def set_message_status(
        self,
        message_id: int,
        status: str,
        error_code: int | None = None,
        provider_sid: str | None = None,
    ) -> None:
        """Set a message's delivery `status` and `error_code` (None clears it).

        `provider_sid`, if given, is stored too (the SID the provider gave the
        message when it was sent); None leaves the stored SID alone. The store
        does not judge status order (callbacks can arrive out of order): the
        caller decides. Raises `KeyError` if there is no such message and
        `DuplicateWebhook` if `provider_sid` is already on another message.
        """
        ...

    def messages_of(self, conversation_id: int) -> list[StoredMessage]:
        """Every message of the conversation (both directions), oldest first
        (by `received_at`, then id). Empty if there is no such conversation."""
        ...

    def attach_messages(self, message_ids: Sequence[int], conversation_id: int) -> None:
        """Put these messages into the conversation (e.g. the texts just taken from held).

        Moves the conversation's `last_activity_at` forward to the newest one (and
        its `last_inbound_at` to the newest inbound one). Raises `KeyError` if the
        conversation does not exist.
        """
        ...

    def open_conversation(
        self, phone: str, municipality_id: str | None, idle_before: datetime | None = None
    ) -> Conversation | None:
        """The most recently active open conversation of `phone` with this municipality
        (`None` matches conversations without a municipality), or None.

        With `idle_before`, the open conversations of `phone` with this municipality
        whose `last_activity_at` is before it are closed first (status "closed",
        `closed_at` = the clock) and so never returned: an idle conversation's next
        text starts a new one.
        """
        ...

    def get_conversation(self, id: int) -> Conversation | None:
        """The conversation with this id (open or closed), or None."""
        ...

    def conversation_by_token(self, token: str) -> Conversation | None:
        """The conversation whose reply-address token is `token` (open or closed), or None."""
        ...

    def conversation_by_email(self, message_ids: Sequence[str]) -> Conversation | None:
        """The conversation of the first of `message_ids` that is a recorded thread email.

        `message_ids` are Message-IDs as recorded ("<id@host>"), in the caller's
        priority order (In-Reply-To first, then References newest first). Returns
        None if none of them is known (or the sequence is empty).
        """
        ...

    def set_agent(self, conversation_id: int, address: str | None) -> None:
        """Stick the conversation to this agent (None: to nobody again).

        Raises `KeyError` if the conversation does not exist.
        """
        ...

    def close_conversation(self, conversation_id: int, at: datetime) -> None:
        """Close the conversation: status "closed", `closed_at` = `at`.

        Closing a closed conversation changes nothing (it keeps its first
        `closed_at`). Raises `KeyError` if the conversation does not exist.
        """
        ...

    def touch_conversation(self, conversation_id: int, at: datetime) -> None:
        """Move the conversation's `last_activity_at` forward to `at` (never back).

        Raises `KeyError` if the conversation does not exist.
        """
        ...

    def create_conversation(
        self, phone: str, municipality_id: str | None, token: str, subject: str
    ) -> Conversation:
        """Start a new open conversation; `token` must be unique (the reply-address token)."""
        ...

    def record_thread_email(
        self, conversation_id: int, message_id: str, direction: EmailDirection = "out"
    ) -> None:
        """Record an email of the conversation's thread, for threading and routing.

        Appends `message_id` to the conversation's thread chain (unless already
        in it) and records it in the thread-email index that
        `conversation_by_email` searches, with `direction` ("out": an email the
        gateway sends, the default; "in": one it received, e.g. an agent's reply,
        so a later reply to that one routes too). A Message-ID already recorded
        (for any conversation) keeps its first record. Raises `KeyError` if the
        conversation does not exist.
        """
        ...

    def processed_email(self, key: str) -> tuple[EmailOutcome, str] | None:
        """`(outcome, reason)` recorded for this email key, or None if never handled."""
        ...

    def record_processed_email(
        self, key: str, outcome: EmailOutcome, reason: str, origin: Mapping[str, Any]
    ) -> None:
        """Remember that the email with this `key` ("sha256:<hex>" of its bytes) was
        handled, how (`outcome`, `reason`) and where it came from (`origin`, a
        JSON-serialisable dict such as `dataclasses.asdict(MailOrigin)`).

        Raises `DuplicateEmail` if `key` is already recorded, including by a
        concurrent transaction, and `ValueError` for an unknown outcome.
        """
        ...

    def enqueue(
        self, kind: OutboxKind, payload: Mapping[str, Any], available_at: datetime | None = None
    ) -> int:
        """Queue an email or SMS, due at `available_at` (default: now). Returns its id."""
        ...

    # the Failed list: reply emails that were not texted (gateway.store.reply_mail)

    def keep_failed_email(
        self,
        key: str,
        raw: bytes,
        reason: str,
        origin: Mapping[str, Any],
        *,
        now: datetime,
        sender: str | None = None,
        subject: str | None = None,
        conversation_id: int | None = None,
        why: str | None = None,
        max_bytes: int | None = None,
    ) -> int:
        """Keep `raw` (at most `max_bytes`, never more than `reply_mail.MAX_KEPT_BYTES`, the
        default) as a failed reply; returns its id. The same `key` kept again updates the
        reason (and un-resolves it): one row per email."""
        ...

    def count_failed_emails_from(
        self, sender: str | None, *, since: datetime, whys: Collection[str] | None = None
    ) -> int:
        """How many emails from `sender` (no case; None: kept with no sender) were kept
        since `since`, resolved or not; only those whose `why` is in `whys` when given."""
        ...

    def get_failed_email(self, failed_id: int) -> FailedEmail | None:
        """One kept failed reply with its bytes, or None."""
        ...

    def resolve_failed_email(
        self, failed_id: int, outcome: EmailOutcome, detail: str, *, now: datetime
    ) -> None:
        """Mark a kept failed reply as dealt with by a retry that ended `outcome`
        ("processed": texted, or "ignored"); `resolution` is stored as "<outcome>: <detail>"."""
        ...

    def update_processed_email(self, key: str, outcome: EmailOutcome, reason: str) -> None:
        """Change the recorded outcome of an email already handled (a retried failed reply)."""
        ...

    def reply_seen(self, message_id: str) -> int | None:
        """The conversation of an agent's reply with this Message-ID already recorded in a
        thread (`record_thread_email(..., direction="in")`), or None."""
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

    def queued_phones(self, limit: int) -> list[str]:
        """Up to `limit` phones with texts in the inbound queue, the longest waiting first."""
        ...

    def newest_queued_at(self) -> datetime | None:
        """When the newest text still in the inbound queue arrived (None: the queue is
        empty): a worker in another process than the webhook reads "is it busy?" here."""
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
        get the same item while its lease lasts (a live worker extends it with
        `renew_claims`); a crashed worker's items become claimable again when the
        lease expires. Such an item (still `claimed_by` someone, lease past) is taken
        over: it counts as an attempt that may have been made (attempts + 1,
        `maybe_sent`, `last_error` naming the old claimant), as `release_claims` does.
        """
        ...

    def renew_claims(
        self, ids: Collection[int], worker_id: str, until: datetime
    ) -> set[int]:
        """Extend to `until` the lease of those of `ids` that are pending and still
        claimed by `worker_id` (the worker's heartbeat); returns their ids. An id left
        out was finished or taken over by another worker: its lease is not touched."""
        ...

    def claimants(self) -> list[str]:
        """The workers (distinct `claimed_by`) holding a claim on a pending item."""
        ...

    def release_claims(self, worker_id: str, error: str) -> int:
        """`worker_id` is gone (it crashed): its pending items are claimable at once instead
        of when their lease ends. Each counts as an attempt that may have been made
        (attempts + 1, `maybe_sent`, `last_error` = `error`), so an SMS is looked up at
        the provider before it is sent again. Returns how many items were released."""
        ...

    def mark_sent(self, id: int) -> None:
        """The item was delivered: status `sent`, claim cleared."""
        ...

    def mark_sent_many(self, ids: Collection[int]) -> None:
        """Each of `ids` was delivered: as `mark_sent` for each, in one transaction (the
        dispatcher marks a batch of sent emails with one commit)."""
        ...

    def mark_retry(
        self, id: int, error: str, next_attempt_at: datetime, *, maybe_sent: bool = False
    ) -> None:
        """The attempt failed: attempts + 1, `last_error`, due again at `next_attempt_at`,
        claim cleared; `maybe_sent` as given (True: this failure, or an earlier one not
        yet looked up, may have been sent after all)."""
        ...

    def postpone(self, id: int, next_attempt_at: datetime) -> None:
        """Not attempted, not now (an earlier SMS to the same number waits for its retry):
        due again at `next_attempt_at`, claim cleared, attempts unchanged."""
        ...

    def mark_parked(self, id: int, error: str, *, maybe_sent: bool = False) -> None:
        """The item keeps failing: status `parked` (kept, reported, never retried on its own),
        attempts + 1, `last_error`, claim cleared, `maybe_sent` as given (`requeue` keeps
        it, so a requeued SMS whose last attempt may have gone is looked up first)."""
        ...

    def list_outbox(
        self, status: OutboxStatus | None = None, limit: int = 1000
    ) -> list[OutboxItem]:
        """Outbox items (all, or of one status), oldest first."""
        ...

    def requeue(self, id: int, now: datetime | None = None) -> bool:
        """Put a parked item back to pending, attempts 0 (`maybe_sent` kept), due `now`
        (default: the clock).

        Returns False if there is no parked item with that id.
        """
        ...

    def outbox_stats(self, now: datetime | None = None) -> OutboxStats:
        """Outbox depth, age of the oldest pending item, parked count."""
        ...

    def imap_checkpoint(self, mailbox: str) -> tuple[int, int] | None:
        """`(uidvalidity, last_uid)` saved for this IMAP mailbox, or None."""
        ...

    def save_imap_checkpoint(self, mailbox: str, uidvalidity: int, last_uid: int) -> None:
        """Save (insert or replace) the mailbox's checkpoint: exactly these values.

        Both must be integers in 0..2**63-1 (IMAP's are 32-bit unsigned), else
        `ValueError`.
        """
        ...

    def close(self) -> None:
        """Release every connection. The store cannot be used afterwards."""
        ...
