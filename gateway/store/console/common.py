"""What the console's parts share: its records, `Scope` (and its SQL condition), and the base
of `ConsoleTx`.

Contract
    The records are frozen dataclasses, as the console's store returns them. `in_scope(scope,
    column)` is the SQL condition every scoped query applies (None: no condition, an admin's
    `Scope(None)`). `ConsoleTxBase` holds `core`, the gateway's own transaction (`SqlTx`) on
    the same connection, and runs the console's statements on it (`_exec`): the parts of
    `ConsoleTx` (`users`, `inbox`, `activity`) stand on it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import sqlalchemy as sa

from gateway.store.base import StoreError
from gateway.store.transaction import SqlTx

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
    last_reply_at: datetime | None  # the agents' last reply (either door) in it
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
class NotTextedReply:
    """A reply email of this conversation that was not texted (kept in `failed_emails`), as
    the console may show it: who sent it, when, why, and whether a retry texted it later.
    Never its bytes, subject or text: it may be a stranger's email."""

    id: int
    conversation_id: int
    received_at: datetime
    why: str | None  # gateway.rules.agent_notice.NOT_TEXTED_WHY, or None (malformed, internal)
    sender: str | None  # the From address, lower-case
    resolved_at: datetime | None  # when `sms311 failed retry` handed it over successfully
    resolution: str | None  # for operators (English): "processed: …", "ignored: …"


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


def in_scope(scope: Scope, column: sa.ColumnElement[Any]) -> sa.ColumnElement[bool] | None:
    """The SQL condition for `column` (a municipality id) being in scope; None: everything."""
    if scope.municipalities is None:
        return None
    if not scope.municipalities:
        return sa.false()
    return column.in_(sorted(scope.municipalities))



class ConsoleTxBase:
    """The base of `ConsoleTx`'s parts: `core` is the gateway's `Tx` (a `SqlTx`) on the same
    connection (so a console reply, its outbox rows and its audit entry commit together)."""

    def __init__(self, core: SqlTx) -> None:
        self.core = core
        self._pg = core.postgresql

    def _exec(
        self, stmt: sa.Executable, params: Mapping[str, Any] | None = None
    ) -> sa.CursorResult[Any]:
        return self.core.execute(stmt, params)
