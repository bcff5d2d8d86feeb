"""`SqlTx`: the `Tx` of `gateway.store.base` on one SQLAlchemy connection, inside its
transaction (SQLite or PostgreSQL).

Contract
    A `SqlTx` is made by `SqlStore.transaction()` (or `SqlStore.reading()`) around the
    connection of one database transaction and ended (`end()`) when that transaction ends;
    any use afterwards raises `RuntimeError`. Every method runs its statements on that one
    connection and commits nothing itself. Errors are those of `gateway.store.base`:
    `StoreUnavailable` for database trouble (`gateway.store.engine.translated`), unique-key
    violations on a provider SID become `DuplicateWebhook`, on a processed-email key
    `DuplicateEmail`; a naive datetime or a value that is not JSON-serialisable raises
    `ValueError` / `TypeError`.

    Row locks do on PostgreSQL what the SQLite write lock (`BEGIN IMMEDIATE`) does:
    `get_resident` takes a transaction-level advisory lock on the phone number, and
    `FOR UPDATE` is used where a transaction reads then changes a row.

    Besides the protocol, the store's own modules (the console, the Failed list) use
    `execute`, `postgresql`, `require_conversation` and `touch`: the same connection, so
    their work commits with the gateway's.
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from gateway.rules.thread import REFERENCES_KEEP_LAST
from gateway.store import ingest, reply_mail, rows
from gateway.store.base import (
    DIRECTIONS,
    EMAIL_DIRECTIONS,
    EMAIL_OUTCOMES,
    OUTBOX_KINDS,
    Conversation,
    Direction,
    DuplicateEmail,
    DuplicateWebhook,
    EmailDirection,
    EmailOutcome,
    FailedEmail,
    OutboxKind,
    QueuedText,
    Resident,
    StoredMessage,
    StoreError,
    TextToQueue,
    Tx,
)
from gateway.store.engine import is_foreign_key_violation, is_unique_violation, reraise
from gateway.store.rows import aware, dialect_insert, insert_or, media_items, utcnow
from gateway.store.schema import (
    UTCDateTime,
    conversations,
    email_messages,
    inbound_texts,
    messages,
    outbox,
    processed_emails,
    residents,
    webhook_log,
)

# --- prebuilt statements for the inbound hot path ----------------------------------------
# Built once with bind parameters: no statement construction and no cache-key traversal
# per call (each still compiles once per dialect, in SQLAlchemy's cache). bench/ measured
# ~140 µs -> ~50 µs per statement.

_P = sa.bindparam
_WEBHOOK_RESPONSE = sa.select(webhook_log.c.response).where(webhook_log.c.sid == _P("sid"))
_INSERT_WEBHOOK = webhook_log.insert()
_RESIDENT = sa.select(residents).where(residents.c.phone == _P("phone"))
_HELD = (
    sa.select(messages)
    .where(messages.c.phone == _P("phone"), messages.c.held.is_(True))
    .order_by(messages.c.received_at, messages.c.id)
)
_INSERT_MESSAGE = messages.insert().returning(messages.c.id)
_INSERT_OUTBOX = outbox.insert().returning(outbox.c.id)
_TOUCH = (
    conversations.update()
    .where(conversations.c.id == _P("cid"), conversations.c.last_activity_at < _P("at"))
    .values(last_activity_at=_P("at"))
)


def _touch_inbound() -> sa.Executable:
    """`_TOUCH` for a resident's text: last_activity_at AND last_inbound_at forward, in one
    UPDATE (the webhook's hot path pays one statement, as before)."""
    at = sa.bindparam("at", type_=UTCDateTime())
    activity, inbound = conversations.c.last_activity_at, conversations.c.last_inbound_at
    inbound_behind = sa.or_(inbound.is_(None), inbound < at)
    return (
        conversations.update()
        .where(conversations.c.id == _P("cid"), sa.or_(activity < at, inbound_behind))
        .values(
            last_activity_at=sa.case((activity < at, at), else_=activity),
            last_inbound_at=sa.case((inbound_behind, at), else_=inbound),
        )
    )


_TOUCH_INBOUND = _touch_inbound()
_CONVERSATION = sa.select(conversations).where(conversations.c.id == _P("cid"))
_CONVERSATION_FOR_UPDATE = _CONVERSATION.with_for_update()
_SET_CHAIN = (
    conversations.update()
    .where(conversations.c.id == _P("cid"))
    .values(thread_message_ids=_P("chain"))
)


@functools.cache
def _email_message(pg: bool) -> Any:
    """INSERT of a Message-ID, nothing if it is there (built once per dialect)."""
    return dialect_insert(pg, email_messages).on_conflict_do_nothing(
        index_elements=[email_messages.c.message_id]
    )

_QUEUED_INBOUND = (
    sa.select(inbound_texts)
    .where(inbound_texts.c.phone == _P("phone"))
    .order_by(inbound_texts.c.id)
)


def _open_conversation_statements(any_city: bool) -> tuple[sa.Executable, sa.Executable]:
    """(close the idle ones, select the newest open one) of a phone and a city (or none)."""
    city = conversations.c.municipality_id
    mine = (
        conversations.c.phone == _P("b_phone"),
        conversations.c.status == "open",
        city.is_(None) if not any_city else city == _P("b_city"),
    )
    close_idle = (
        conversations.update()
        .where(*mine, conversations.c.last_activity_at < _P("cutoff"))
        .values(status="closed", closed_at=_P("b_closed_at"))
    )
    newest = (
        sa.select(conversations)
        .where(*mine)
        .order_by(conversations.c.last_activity_at.desc(), conversations.c.id.desc())
        .limit(1)
    )
    return close_idle, newest


_OPEN_CONVERSATION = {city: _open_conversation_statements(city) for city in (False, True)}


# --- the transaction ------------------------------------------------------------------------


class SqlTx:
    """`Tx` on one SQLAlchemy connection inside its transaction."""

    def __init__(self, conn: sa.Connection) -> None:
        self._connection: sa.Connection | None = conn
        self.postgresql = conn.dialect.name == "postgresql"
        self._notified: set[str] = set()  # outbox kinds notified in this transaction

    def end(self) -> None:
        """The transaction has ended: any further use raises RuntimeError."""
        self._connection = None

    def execute(
        self, stmt: sa.Executable, params: Mapping[str, Any] | None = None
    ) -> sa.CursorResult[Any]:
        """Run one statement in this transaction (errors translated, see the module)."""
        if self._connection is None:
            raise RuntimeError("this transaction has ended")
        try:
            return self._connection.execute(stmt, params)
        except sa.exc.SQLAlchemyError as exc:
            reraise(exc)

    def _insert_unique(
        self,
        stmt: sa.Executable,
        sid: str | None,
        duplicate: StoreError | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> sa.CursorResult[Any]:
        """Run `stmt`; a unique violation raises `duplicate` (default: DuplicateWebhook(sid))."""
        try:
            return self.execute(stmt, params)
        except sa.exc.IntegrityError as exc:
            if is_unique_violation(exc):
                raise (duplicate or DuplicateWebhook(sid)) from exc
            if is_foreign_key_violation(exc):
                raise KeyError("no such conversation") from exc
            raise

    # webhooks

    def webhook_response(self, sid: str) -> str | None:
        response = self.execute(_WEBHOOK_RESPONSE, {"sid": sid}).scalar_one_or_none()
        return None if response is None else str(response)

    def answered_webhooks(self, sids: Collection[str]) -> set[str]:
        stmt = sa.select(webhook_log.c.sid).where(webhook_log.c.sid.in_(list(sids)))
        return {str(sid) for sid in self.execute(stmt).scalars()}

    def record_webhook(self, sid: str, response: str) -> None:
        values = {"sid": sid, "response": response, "created_at": utcnow()}
        self._insert_unique(_INSERT_WEBHOOK, sid, params=values)

    # the inbound queue

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
        values = (sid, phone, to, body, media, from_city, from_state)
        return ingest.queue_text(self._driver(), self.postgresql, values, received_at)

    def resident_routing(self, phone: str) -> tuple[str | None, str] | None:
        return ingest.resident_routing(self._driver(), self.postgresql, phone)

    def residents_routing(self, phones: Sequence[str]) -> dict[str, tuple[str | None, str]]:
        return ingest.residents_routing(self._driver(), self.postgresql, phones)

    def queue_inbound_many(self, texts: Sequence[TextToQueue]) -> list[bool]:
        rows = [
            ((t.sid, t.phone, t.to, t.body, t.media, t.from_city, t.from_state), t.received_at)
            for t in texts
        ]
        return ingest.queue_texts(self._driver(), self.postgresql, rows)

    def _driver(self) -> Any:
        """The DBAPI connection under this transaction's (`gateway.store.ingest`)."""
        if self._connection is None:
            raise RuntimeError("this transaction has ended")
        return self._connection.connection.driver_connection

    def queued_inbound(self, phone: str, limit: int | None = None) -> list[QueuedText]:
        stmt = _QUEUED_INBOUND if limit is None else _QUEUED_INBOUND.limit(limit)
        return [rows.queued_text(row) for row in self.execute(stmt, {"phone": phone})]

    def unqueue_inbound(self, ids: Collection[int]) -> None:
        if ids:
            self.execute(inbound_texts.delete().where(inbound_texts.c.id.in_(list(ids))))

    # residents

    def get_resident(self, phone: str) -> Resident | None:
        if self.postgresql:
            # Hold this phone number until the transaction ends (SQLite: BEGIN IMMEDIATE
            # already holds the whole database), so one number's texts are handled in turn.
            lock = sa.func.pg_advisory_xact_lock(sa.func.hashtextextended(phone, 0))
            self.execute(sa.select(lock))
        row = self.execute(_RESIDENT, {"phone": phone}).first()
        return None if row is None else rows.resident(row)

    def save_resident(self, resident: Resident) -> None:
        if not resident.phone:
            raise ValueError("a resident needs a phone number")
        now = utcnow()
        values = {
            "phone": resident.phone,
            "municipality_id": resident.municipality_id,
            "language": resident.language,
            "opted_out": bool(resident.opted_out),
            "dialogue": dict(resident.dialogue),
            "created_at": now,
            "updated_at": now,
        }
        changes = {k: v for k, v in values.items() if k not in ("phone", "created_at")}
        self.execute(insert_or(self.postgresql, residents, values, [residents.c.phone], changes))

    # messages

    def hold_message(
        self,
        phone: str,
        body: str,
        media: Sequence[Mapping[str, str]],
        provider_sid: str | None,
        received_at: datetime,
    ) -> int:
        return self._insert_message(phone, None, "in", body, media, provider_sid, received_at, True)

    def take_held(self, phone: str) -> list[StoredMessage]:
        stmt = _HELD.with_for_update() if self.postgresql else _HELD
        held = [rows.message(row) for row in self.execute(stmt, {"phone": phone})]
        if held:
            ids = [m.id for m in held]
            self.execute(messages.update().where(messages.c.id.in_(ids)).values(held=False))
        return [replace(m, held=False) for m in held]

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
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, not {direction!r}")
        message_id = self._insert_message(
            phone,
            conversation_id,
            direction,
            body,
            media,
            provider_sid,
            received_at,
            False,
            status=status,
            agent_address=agent_address,
            via=via,
        )
        if conversation_id is not None:
            self.touch(conversation_id, aware(received_at, "received_at"), direction == "in")
        return message_id

    def message_by_provider_sid(self, sid: str) -> StoredMessage | None:
        row = self.execute(sa.select(messages).where(messages.c.provider_sid == sid)).first()
        return None if row is None else rows.message(row)

    def set_message_status(
        self,
        message_id: int,
        status: str,
        error_code: int | None = None,
        provider_sid: str | None = None,
    ) -> None:
        if not isinstance(status, str) or not status:
            raise ValueError("a message status must be a non-empty string")
        if error_code is not None and (
            not isinstance(error_code, int) or isinstance(error_code, bool)
        ):
            raise TypeError(f"error_code: expected an int, got {type(error_code).__name__}")
        values: dict[str, Any] = {
            "status": status,
            "error_code": error_code,
            "updated_at": utcnow(),
        }
        if provider_sid is not None:
            values["provider_sid"] = provider_sid
        stmt = messages.update().where(messages.c.id == message_id).values(values)
        if self._insert_unique(stmt, provider_sid).rowcount != 1:
            raise KeyError(f"no message {message_id}")

    def messages_of(self, conversation_id: int) -> list[StoredMessage]:
        stmt = (
            sa.select(messages)
            .where(messages.c.conversation_id == conversation_id)
            .order_by(messages.c.received_at, messages.c.id)
        )
        return [rows.message(row) for row in self.execute(stmt)]

    def _insert_message(
        self,
        phone: str,
        conversation_id: int | None,
        direction: Direction,
        body: str,
        media: Sequence[Mapping[str, str]],
        provider_sid: str | None,
        received_at: datetime,
        held: bool,
        *,
        status: str | None = None,
        agent_address: str | None = None,
        via: str | None = None,
    ) -> int:
        values = {
            "phone": phone,
            "conversation_id": conversation_id,
            "direction": direction,
            "body": body,
            "media": media_items(media),
            "provider_sid": provider_sid,
            "held": held,
            "received_at": aware(received_at, "received_at"),
            "status": status,
            "error_code": None,
            "agent_address": agent_address,
            "updated_at": utcnow(),
            "via": via,
        }
        return int(self._insert_unique(_INSERT_MESSAGE, provider_sid, params=values).scalar_one())

    def attach_messages(self, message_ids: Sequence[int], conversation_id: int) -> None:
        ids = list(message_ids)
        if not ids:
            return
        self.require_conversation(conversation_id)
        self.execute(
            messages.update()
            .where(messages.c.id.in_(ids))
            .values(conversation_id=conversation_id, held=False)
        )
        newest, newest_in = tuple(self.execute(
            sa.select(
                sa.func.max(messages.c.received_at),
                sa.type_coerce(
                    sa.func.max(sa.case((messages.c.direction == "in", messages.c.received_at))),
                    UTCDateTime(),
                ),
            ).where(messages.c.id.in_(ids))
        ).one())
        if newest_in is not None:
            self.touch(conversation_id, newest_in, True)
        if newest is not None and newest != newest_in:
            self.touch(conversation_id, newest)

    def touch(self, conversation_id: int, at: datetime, inbound: bool = False) -> None:
        """Move last_activity_at (and, for an inbound text, last_inbound_at) forward to `at`."""
        self.execute(_TOUCH_INBOUND if inbound else _TOUCH, {"cid": conversation_id, "at": at})

    def require_conversation(self, conversation_id: int, lock: bool = False) -> sa.Row[Any]:
        """The conversation's row, or KeyError; `lock`: FOR UPDATE (PostgreSQL)."""
        stmt = _CONVERSATION_FOR_UPDATE if lock and self.postgresql else _CONVERSATION
        row = self.execute(stmt, {"cid": conversation_id}).first()
        if row is None:
            raise KeyError(f"no conversation {conversation_id}")
        return row

    # conversations

    def open_conversation(
        self, phone: str, municipality_id: str | None, idle_before: datetime | None = None
    ) -> Conversation | None:
        close_idle, newest = _OPEN_CONVERSATION[municipality_id is not None]
        mine: dict[str, Any] = {"b_phone": phone}
        if municipality_id is not None:
            mine["b_city"] = municipality_id
        if idle_before is not None:
            cutoff = aware(idle_before, "idle_before")
            self.execute(close_idle, {**mine, "cutoff": cutoff, "b_closed_at": utcnow()})
        row = self.execute(newest, mine).first()
        return None if row is None else rows.conversation(row)

    def get_conversation(self, id: int) -> Conversation | None:
        row = self.execute(sa.select(conversations).where(conversations.c.id == id)).first()
        return None if row is None else rows.conversation(row)

    def conversation_by_token(self, token: str) -> Conversation | None:
        row = self.execute(sa.select(conversations).where(conversations.c.token == token)).first()
        return None if row is None else rows.conversation(row)

    def conversation_by_email(self, message_ids: Sequence[str]) -> Conversation | None:
        if isinstance(message_ids, str):  # a str is a Sequence[str] too
            raise TypeError("message_ids: expected a sequence of Message-IDs, not one string")
        wanted = list(dict.fromkeys(message_ids))
        if not wanted:
            return None
        stmt = sa.select(email_messages.c.message_id, email_messages.c.conversation_id).where(
            email_messages.c.message_id.in_(wanted)
        )
        found = {
            str(row["message_id"]): int(row["conversation_id"])
            for row in self.execute(stmt).mappings()
        }
        for message_id in wanted:
            if message_id in found:
                return self.get_conversation(found[message_id])
        return None

    def set_agent(self, conversation_id: int, address: str | None) -> None:
        result = self.execute(
            conversations.update()
            .where(conversations.c.id == conversation_id)
            .values(agent_address=address)
        )
        if result.rowcount != 1:
            raise KeyError(f"no conversation {conversation_id}")

    def close_conversation(self, conversation_id: int, at: datetime) -> None:
        closed_at = aware(at, "at")
        self.require_conversation(conversation_id, lock=True)
        self.execute(
            conversations.update()
            .where(conversations.c.id == conversation_id, conversations.c.status == "open")
            .values(status="closed", closed_at=closed_at)
        )

    def touch_conversation(self, conversation_id: int, at: datetime) -> None:
        moment = aware(at, "at")
        self.require_conversation(conversation_id)
        self.touch(conversation_id, moment)

    def create_conversation(
        self, phone: str, municipality_id: str | None, token: str, subject: str
    ) -> Conversation:
        now = utcnow()
        stmt = (
            conversations.insert()
            .values(
                token=token,
                phone=phone,
                municipality_id=municipality_id,
                subject=subject,
                status="open",
                thread_message_ids=[],
                agent_address=None,
                created_at=now,
                last_activity_at=now,
            )
            .returning(*conversations.c)
        )
        return rows.conversation(self.execute(stmt).one())

    def record_thread_email(
        self, conversation_id: int, message_id: str, direction: EmailDirection = "out"
    ) -> None:
        if direction not in EMAIL_DIRECTIONS:
            raise ValueError(f"direction must be one of {EMAIL_DIRECTIONS}, not {direction!r}")
        if not isinstance(message_id, str) or not message_id:
            raise ValueError("a Message-ID must be a non-empty string")
        row = self.require_conversation(conversation_id, lock=True)
        chain = list(row._mapping["thread_message_ids"])
        if message_id not in chain:
            # Only what the next email's References use is kept (the first id and the
            # last REFERENCES_KEEP_LAST): the work per email stays the same however long
            # the conversation. Every id stays in `email_messages`, for routing replies.
            chain.append(message_id)
            if len(chain) > REFERENCES_KEEP_LAST + 1:
                chain = chain[:1] + chain[-REFERENCES_KEEP_LAST:]
            self.execute(_SET_CHAIN, {"cid": conversation_id, "chain": chain})
        self.execute(
            _email_message(self.postgresql),
            {
                "message_id": message_id,
                "conversation_id": conversation_id,
                "direction": direction,
                "created_at": utcnow(),
            },
        )

    # processed emails

    def processed_email(self, key: str) -> tuple[EmailOutcome, str] | None:
        stmt = sa.select(processed_emails.c.outcome, processed_emails.c.reason).where(
            processed_emails.c.key == key
        )
        row = self.execute(stmt).mappings().first()
        if row is None:
            return None
        outcome: EmailOutcome = row["outcome"]
        return outcome, str(row["reason"])

    def record_processed_email(
        self, key: str, outcome: EmailOutcome, reason: str, origin: Mapping[str, Any]
    ) -> None:
        if outcome not in EMAIL_OUTCOMES:
            raise ValueError(f"outcome must be one of {EMAIL_OUTCOMES}, not {outcome!r}")
        if not isinstance(key, str) or not key:
            raise ValueError("a processed-email key must be a non-empty string")
        stmt = processed_emails.insert().values(
            key=key, outcome=outcome, reason=reason, origin=dict(origin), created_at=utcnow()
        )
        self._insert_unique(stmt, None, DuplicateEmail(key))

    # outbox

    def enqueue(
        self, kind: OutboxKind, payload: Mapping[str, Any], available_at: datetime | None = None
    ) -> int:
        if kind not in OUTBOX_KINDS:
            raise ValueError(f"kind must be one of {OUTBOX_KINDS}, not {kind!r}")
        now = utcnow()
        due = now if available_at is None else aware(available_at, "available_at")
        values = {
            "kind": kind,
            "payload": dict(payload),
            "status": "pending",
            "attempts": 0,
            "next_attempt_at": due,
            "created_at": now,
            "updated_at": now,
        }
        row_id = int(self.execute(_INSERT_OUTBOX, values).scalar_one())
        if self.postgresql and kind not in self._notified:
            # other instances' dispatchers look at once (delivered at commit; PostgreSQL
            # folds repeated notifications of a transaction into one anyway)
            self.execute(sa.text("SELECT pg_notify('sms311_outbox', :kind)"), {"kind": kind})
            self._notified.add(kind)
        return row_id

    # the Failed list (reply emails that were not texted): gateway.store.reply_mail

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
        return reply_mail.keep_failed_email(
            self, key, raw, reason, origin, now=now, sender=sender, subject=subject,
            conversation_id=conversation_id, why=why, max_bytes=max_bytes,
        )  # fmt: skip

    def count_failed_emails_from(
        self, sender: str | None, *, since: datetime, whys: Collection[str] | None = None
    ) -> int:
        return reply_mail.count_failed_emails_from(self, sender, since=since, whys=whys)

    def get_failed_email(self, failed_id: int) -> FailedEmail | None:
        return reply_mail.get_failed_email(self, failed_id)

    def resolve_failed_email(
        self, failed_id: int, outcome: EmailOutcome, detail: str, *, now: datetime
    ) -> None:
        reply_mail.resolve_failed_email(self, failed_id, outcome, detail, now=now)

    def update_processed_email(self, key: str, outcome: EmailOutcome, reason: str) -> None:
        reply_mail.update_processed_email(self, key, outcome, reason)

    def reply_seen(self, message_id: str) -> int | None:
        return reply_mail.reply_seen(self, message_id)


# mypy checks here that the implementation satisfies the protocol.
_tx_check: type[Tx] = SqlTx
