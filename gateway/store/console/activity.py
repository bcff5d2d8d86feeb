"""The console's activity around conversations: internal notes, read marks, presence, the
audit log, login throttling, idempotent form submissions, housekeeping and the shared
session secret.

Contract
    `ActivityTx` is that part of `ConsoleTx` (in the caller's transaction). Notes, read marks
    and presence raise `KeyError` for a conversation (or user) that does not exist, checked
    before writing (a failed statement would abort a PostgreSQL transaction). Read marks
    never move back. The audit log is append-only and holds no phone number and no text
    (it is kept when a resident is erased); sign-in attempts are kept apart from it
    (`login_attempts`), counted and recorded atomically (`claim_login_attempt`) and
    pruned after their window. `claim_request` never aborts the transaction
    (ON CONFLICT DO NOTHING). `prune` forgets what only matters for minutes.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from gateway.store.console.common import (
    AuditEntry,
    ConsoleTxBase,
    Note,
    Presence,
    PresenceState,
    Scope,
    in_scope,
)
from gateway.store.engine import is_foreign_key_violation
from gateway.store.rows import aware, dialect_insert
from gateway.store.schema import (
    audit_log,
    console_requests,
    console_settings,
    conversation_reads,
    login_attempts,
    notes,
    presence,
    users,
)

_SECRET_KEY = "session_secret"  # noqa: S105 - the settings row's name, not a secret
_PRUNE_LOCK = 0x736D733331316C  # pg_advisory_xact_lock key: "sms311l" in ASCII


def _lock_key(kind: str, value: str) -> int:
    """A signed 64-bit advisory lock key for one email or address of the sign-in limit."""
    digest = hashlib.sha256(f"sms311 login {kind}:{value}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _attempt_email(email: str | None) -> str | None:
    if email is None or not email.strip():
        return None
    return email.strip().lower()[:320]


def _attempt_addr(remote_addr: str | None) -> str | None:
    return None if not remote_addr else remote_addr[:64]


def _attempts_of(email: str | None, address: str | None) -> sa.ColumnElement[bool] | None:
    who: list[sa.ColumnElement[bool]] = []
    if email is not None:
        who.append(login_attempts.c.email == email)
    if address is not None:
        who.append(login_attempts.c.remote_addr == address)
    return sa.or_(*who) if who else None


class ActivityTx(ConsoleTxBase):
    """Notes, reads, presence, audit, throttling, idempotency, secret (see the module)."""

    def add_note(self, conversation_id: int, user_id: int, body: str, at: datetime) -> int:
        """Store an internal note; returns its id. KeyError if the conversation (or the
        user) does not exist, ValueError for an empty body."""
        if not isinstance(body, str) or not body.strip():
            raise ValueError("a note needs some text")
        moment = aware(at, "at")
        self.core.require_conversation(conversation_id)
        stmt = (
            notes.insert()
            .values(conversation_id=conversation_id, user_id=user_id, body=body, created_at=moment)
            .returning(notes.c.id)
        )
        try:
            return int(self._exec(stmt).scalar_one())
        except sa.exc.IntegrityError as exc:
            if is_foreign_key_violation(exc):
                raise KeyError(f"no user {user_id}") from exc
            raise

    def notes_of(self, conversation_id: int) -> list[Note]:
        """Oldest first."""
        stmt = (
            sa.select(notes, users.c.name.label("user_name"))
            .join(users, users.c.id == notes.c.user_id)
            .where(notes.c.conversation_id == conversation_id)
            .order_by(notes.c.created_at, notes.c.id)
        )
        return [
            Note(
                id=int(m["id"]),
                conversation_id=int(m["conversation_id"]),
                user_id=int(m["user_id"]),
                user_name=m["user_name"],
                body=m["body"],
                created_at=m["created_at"],
            )
            for m in self._exec(stmt).mappings()
        ]

    def _upsert(
        self,
        table: sa.Table,
        values: Mapping[str, Any],
        key: Sequence[sa.Column[Any]],
        changes: Sequence[str],
        only_if: Any = None,
    ) -> None:
        insert = dialect_insert(self._pg, table).values(dict(values))
        stmt = insert.on_conflict_do_update(
            index_elements=list(key),
            set_={name: insert.excluded[name] for name in changes},
            where=None if only_if is None else only_if(insert.excluded),
        )
        try:
            self._exec(stmt)
        except sa.exc.IntegrityError as exc:
            if is_foreign_key_violation(exc):
                raise KeyError("no such conversation or user") from exc
            raise

    def mark_read(self, user_id: int, conversation_id: int, at: datetime) -> None:
        """Upsert this user's read mark (never moves back). KeyError if the conversation or
        the user does not exist."""
        reads = conversation_reads
        moment = aware(at, "at")
        # checked first: on PostgreSQL a failed statement would abort the whole transaction
        self.core.require_conversation(conversation_id)
        self._upsert(
            reads,
            {"user_id": user_id, "conversation_id": conversation_id, "last_read_at": moment},
            [reads.c.user_id, reads.c.conversation_id],
            ["last_read_at"],
            only_if=lambda excluded: reads.c.last_read_at < excluded.last_read_at,
        )

    def touch_presence(
        self, user_id: int, conversation_id: int, state: PresenceState, at: datetime
    ) -> None:
        """Upsert (user, conversation) -> state, seen_at. KeyError if the conversation does
        not exist."""
        if state not in ("viewing", "replying"):
            raise ValueError(f"state must be 'viewing' or 'replying', not {state!r}")
        moment = aware(at, "at")
        self.core.require_conversation(conversation_id)
        self._upsert(
            presence,
            {"user_id": user_id, "conversation_id": conversation_id, "state": state,
             "seen_at": moment},
            [presence.c.conversation_id, presence.c.user_id],
            ["state", "seen_at"],
        )

    def presence(
        self, conversation_id: int, *, since: datetime, excluding_user: int | None = None
    ) -> list[Presence]:
        """Who else has the conversation open (seen since `since`), by name."""
        stmt = (
            sa.select(presence, users.c.name)
            .join(users, users.c.id == presence.c.user_id)
            .where(
                presence.c.conversation_id == conversation_id,
                presence.c.seen_at >= aware(since, "since"),
            )
            .order_by(users.c.name, users.c.id)
        )
        if excluding_user is not None:
            stmt = stmt.where(presence.c.user_id != excluding_user)
        return [
            Presence(
                user_id=int(m["user_id"]), user_name=m["name"], state=m["state"],
                seen_at=m["seen_at"],
            )
            for m in self._exec(stmt).mappings()
        ]

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
    ) -> int:
        """Append to the audit log; returns the entry's id. `user_email` is lower-cased.
        `detail` must be JSON-serialisable (TypeError otherwise) and, like the rest of the
        entry, hold no phone number and no text: the log is kept when a resident is erased."""
        if not isinstance(action, str) or not 0 < len(action) <= 32:
            raise ValueError(f"an audit action is 1..32 characters: {action!r}")
        email = None if user_email is None else user_email.strip().lower()
        stmt = (
            audit_log.insert()
            .values(
                at=aware(at, "at"),
                user_id=user_id,
                user_email=email,
                action=action,
                conversation_id=conversation_id,
                municipality_id=municipality_id,
                remote_addr=None if remote_addr is None else remote_addr[:64],
                detail=dict(detail or {}),
            )
            .returning(audit_log.c.id)
        )
        return int(self._exec(stmt).scalar_one())

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
        a = audit_log.c
        stmt = sa.select(audit_log).order_by(a.id.desc()).limit(max(0, limit))
        allowed = in_scope(scope, a.municipality_id)
        if allowed is not None:
            stmt = stmt.where(allowed)
        if conversation_id is not None:
            stmt = stmt.where(a.conversation_id == conversation_id)
        if before_id is not None:
            stmt = stmt.where(a.id < before_id)
        return [
            AuditEntry(
                id=int(m["id"]),
                at=m["at"],
                user_id=None if m["user_id"] is None else int(m["user_id"]),
                user_email=m["user_email"],
                action=m["action"],
                conversation_id=None if m["conversation_id"] is None else int(m["conversation_id"]),
                municipality_id=m["municipality_id"],
                remote_addr=m["remote_addr"],
                detail=dict(m["detail"]),
            )
            for m in self._exec(stmt).mappings()
        ]

    def failed_logins(self, *, email: str | None, remote_addr: str | None, since: datetime) -> int:
        """How many sign-in attempts (`login_attempts`: failed, or still being checked)
        since `since` for this email OR this address."""
        who = _attempts_of(_attempt_email(email), _attempt_addr(remote_addr))
        if who is None:
            return 0
        stmt = sa.select(sa.func.count()).where(
            login_attempts.c.at >= aware(since, "since"), who
        )
        return int(self._exec(stmt).scalar_one())

    def claim_login_attempt(
        self,
        *,
        email: str | None,
        remote_addr: str | None,
        at: datetime,
        since: datetime,
        max_by_email: int,
        max_by_address: int,
    ) -> int | None:
        """Count and record one sign-in attempt in one atomic step, BEFORE the password is
        checked: None (refused, nothing recorded) when this email already has
        `max_by_email` attempts since `since`, or this address `max_by_address`; else the
        new attempt's id. The attempt counts as a failure until `forget_login_attempt(id)`
        (the password or code was right). Attempts older than `since` go in passing.

        Make it in `ConsoleStore.transaction()`: on SQLite that transaction holds the write
        lock from its start (BEGIN IMMEDIATE), so two attempts never both count before
        either is recorded; on PostgreSQL it takes transaction-level advisory locks on the
        email, then on the address, which serialise the attempts sharing either."""
        address, who_email = _attempt_addr(remote_addr), _attempt_email(email)
        moment, start = aware(at, "at"), aware(since, "since")
        if self._pg:
            for kind, value in (("email", who_email), ("addr", address)):
                if value is not None:
                    self._exec(sa.select(sa.func.pg_advisory_xact_lock(_lock_key(kind, value))))
        self._prune_login_attempts(start)
        counts = []
        if who_email is not None:
            counts.append((login_attempts.c.email == who_email, max_by_email))
        if address is not None:
            counts.append((login_attempts.c.remote_addr == address, max_by_address))
        for who, limit in counts:
            count = sa.select(sa.func.count()).where(login_attempts.c.at >= start, who)
            if int(self._exec(count).scalar_one()) >= limit:
                return None
        insert = (
            login_attempts.insert()
            .values(at=moment, email=who_email, remote_addr=address)
            .returning(login_attempts.c.id)
        )
        return int(self._exec(insert).scalar_one())

    def forget_login_attempt(self, attempt_id: int) -> None:
        """The attempt succeeded: it no longer counts against the limit."""
        self._exec(login_attempts.delete().where(login_attempts.c.id == attempt_id))

    def _prune_login_attempts(self, before: datetime) -> None:
        """Delete the attempts older than the window. On PostgreSQL only one transaction
        prunes at a time (a try-lock: the others skip it, no waiting, no deadlock)."""
        if self._pg:
            took = self._exec(sa.select(sa.func.pg_try_advisory_xact_lock(_PRUNE_LOCK)))
            if not took.scalar_one():
                return
        self._exec(login_attempts.delete().where(login_attempts.c.at < before))

    def claim_request(self, key: str, user_id: int, at: datetime) -> bool:
        """Record a form submission key; False when it was already recorded (a double
        submit: do nothing again). Keys are at most 64 characters (ValueError otherwise).
        Never aborts the transaction (ON CONFLICT DO NOTHING); on PostgreSQL a concurrent
        claim of the same key waits for the other transaction and gets False if it commits."""
        if not isinstance(key, str) or not 0 < len(key) <= 64:
            raise ValueError("a request key is 1..64 characters")
        stmt = (
            dialect_insert(self._pg, console_requests)
            .values(key=key, user_id=user_id, created_at=aware(at, "at"))
            .on_conflict_do_nothing(index_elements=[console_requests.c.key])
            .returning(console_requests.c.key)
        )
        return self._exec(stmt).first() is not None

    def prune(self, before: datetime) -> int:
        """Forget what only matters for minutes: form-submission keys and presence marks
        older than `before` (the worker does it daily). Returns how many rows went."""
        moment = aware(before, "before")
        gone = self._exec(console_requests.delete().where(
            console_requests.c.created_at < moment)).rowcount
        gone += self._exec(presence.delete().where(presence.c.seen_at < moment)).rowcount
        return int(gone)

    def console_secret(self) -> str:
        """The session-signing secret shared by every instance: created (64 random hex
        characters) the first time and kept in the database. The first call writes: make
        it in `ConsoleStore.transaction()` (on SQLite a `reading()` transaction may fail to
        take the write lock)."""
        select = sa.select(console_settings.c.value).where(console_settings.c.key == _SECRET_KEY)
        value = self._exec(select).scalar_one_or_none()
        if value is None:
            self._exec(
                dialect_insert(self._pg, console_settings)
                .values(key=_SECRET_KEY, value=secrets.token_hex(32))
                .on_conflict_do_nothing(index_elements=[console_settings.c.key])
            )
            value = self._exec(select).scalar_one()
        return str(value)
