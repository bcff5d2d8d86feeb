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
(So does `failed_replies_of`: the reply emails of a conversation that were not texted.)
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect

from gateway.store.base import (
    CONVERSATION_STATUSES,
    Conversation,
    StoredMessage,
    StoreError,
)
from gateway.store.schema import (
    audit_log,
    console_requests,
    console_settings,
    conversation_reads,
    conversations,
    failed_emails,
    messages,
    notes,
    presence,
    residents,
    user_municipalities,
    users,
)
from gateway.store.sql import (
    SqlStore,
    SqlTx,
    _aware,
    _conversation,
    _is_foreign_key_violation,
    _is_unique_violation,
)

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
    why: str | None  # one of gateway.rules.emails.NOT_TEXTED_WHY, or None (malformed, internal)
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


# --- helpers --------------------------------------------------------------------------------

PREVIEW_CHARS = 140
MAX_PAGE = 500
MAX_SEARCH_WORDS = 10
_PROBE = 1000  # conversations a search tests one by one before one pass over every text
_MAX_BRANCHES = 40  # (municipality, status) pairs merged by UNION ALL (see ConsoleTx._page)
_SECRET_KEY = "session_secret"  # noqa: S105 - the settings row's name, not a secret
_PHONE_SEPARATORS = str.maketrans("", "", " \t-().")
_DIGITS = re.compile(r"[0-9]{3,}")
_LIKE_ESCAPE = "\\"
_TRIGRAM = 3  # the shortest word the text index (migration 0005) can find
# migration 0005's text index: SQLite's FTS5 table over messages.body, PostgreSQL's GIN index
_FTS = sa.table("messages_fts", sa.column("rowid"), sa.column("body"))
_FTS_PRESENT = sa.text("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'messages_fts'")
_TRGM_PRESENT = sa.text("SELECT to_regclass('ix_messages_body_trgm') IS NOT NULL")


def _email(email: str) -> str:
    if not isinstance(email, str) or not email.strip():
        raise ValueError("an account needs an email address")
    return email.strip().lower()


def _role(role: str) -> Role:
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, not {role!r}")
    return role


def _municipality_ids(municipalities: Sequence[str]) -> list[str]:
    if isinstance(municipalities, str):  # a str is a Sequence[str] too
        raise TypeError("municipalities: expected a sequence of ids, not one string")
    ids = sorted({m.strip() for m in municipalities})
    if any(not m for m in ids):
        raise ValueError("a municipality id must be a non-empty string")
    return ids


def _in_scope(scope: Scope, column: sa.ColumnElement[Any]) -> sa.ColumnElement[bool] | None:
    """The SQL condition for `column` (a municipality id) being in scope; None: everything."""
    if scope.municipalities is None:
        return None
    if not scope.municipalities:
        return sa.false()
    return column.in_(sorted(scope.municipalities))


def phone_digits(query: str) -> str | None:
    """The digits of `query` if it is a phone search: at least three digits once spaces,
    dashes, parentheses, dots and a leading + are removed, and nothing else. Else None."""
    text = query.strip()
    text = text.removeprefix("+").translate(_PHONE_SEPARATORS)
    return text if _DIGITS.fullmatch(text) else None


def _like_pattern(word: str) -> str:
    escaped = (
        word.replace(_LIKE_ESCAPE, _LIKE_ESCAPE * 2).replace("%", "\\%").replace("_", "\\_")
    )
    return f"%{escaped}%"


def _fts_phrase(word: str) -> str:
    """`word` as an FTS5 string (a phrase: with the trigram tokenizer, the texts that hold
    it anywhere); everything in it is literal ("", *, NEAR, OR, -, ...)."""
    return '"' + word.replace('"', '""') + '"'


def _encode_cursor(at: datetime, conversation_id: int) -> str:
    raw = f"{at.astimezone(UTC).isoformat()}|{conversation_id}".encode()
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, int]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
        at_text, _, id_text = raw.partition("|")
        at = datetime.fromisoformat(at_text)
        conversation_id = int(id_text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"not a conversation-list cursor: {cursor!r}") from exc
    if at.tzinfo is None:
        raise ValueError(f"not a conversation-list cursor: {cursor!r}")
    return at.astimezone(UTC), conversation_id


def _user(row: sa.RowMapping, municipalities: Sequence[str]) -> User:
    return User(
        id=int(row["id"]),
        email=row["email"],
        name=row["name"],
        role=row["role"],
        municipalities=tuple(sorted(municipalities)),
        password_hash=row["password_hash"],
        totp_secret=row["totp_secret"],
        disabled=bool(row["disabled"]),
        must_change_password=bool(row["must_change_password"]),
        language=row["language"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _dialect_insert(pg: bool, table: sa.Table) -> Any:
    """INSERT with ON CONFLICT support (PostgreSQL's or SQLite's)."""
    return pg_dialect.insert(table) if pg else sqlite_dialect.insert(table)


@dataclass(frozen=True)
class _Search:
    """A list search: `conditions` on one conversation (correlated to `conversations`),
    and `matching`, the ids of (at least) every conversation that matches, in one pass."""

    conditions: list[sa.ColumnElement[bool]]
    matching: sa.Select[Any] | None  # None: `ConsoleTx._word_pass(word)` (after the probe)
    probe: bool = True  # test the newest `_PROBE` conversations first
    word: str = ""  # the word of the one pass (the longest)


_CUSTOM_PLANS = sa.text("SET LOCAL plan_cache_mode = force_custom_plan")

# The newest message's text of the (outer query's) conversation, truncated.
_PREVIEW = (
    sa.select(sa.func.substr(messages.c.body, 1, PREVIEW_CHARS))
    .where(messages.c.conversation_id == conversations.c.id)
    .order_by(messages.c.received_at.desc(), messages.c.id.desc())
    .limit(1)
    .correlate(conversations)
    .scalar_subquery()
)

# When an agent last answered (either door) in the outer query's conversation.
_LAST_REPLY = (
    sa.select(sa.func.max(messages.c.received_at))
    .where(messages.c.conversation_id == conversations.c.id, messages.c.direction == "out")
    .correlate(conversations)
    .scalar_subquery()
)


class ConsoleTx:
    """The console's operations inside one transaction; `core` is the gateway's `Tx` on the
    same connection (so a console reply, its outbox rows and its audit entry commit together)."""

    def __init__(self, core: SqlTx) -> None:
        self.core = core
        self._pg = core._pg

    def _exec(
        self, stmt: sa.Executable, params: Mapping[str, Any] | None = None
    ) -> sa.CursorResult[Any]:
        return self.core._exec(stmt, params)

    # -- users ---------------------------------------------------------------------------

    def _users(self, *where: sa.ColumnElement[bool], by: str = "email") -> list[User]:
        order = (users.c.name, users.c.email) if by == "name" else (users.c.email,)
        rows = self._exec(sa.select(users).where(*where).order_by(*order)).mappings().all()
        if not rows:
            return []
        ids = [int(row["id"]) for row in rows]
        stmt = sa.select(user_municipalities.c.user_id, user_municipalities.c.municipality_id)
        if len(ids) <= 500:
            stmt = stmt.where(user_municipalities.c.user_id.in_(ids))
        cities: dict[int, list[str]] = {}
        for link in self._exec(stmt).mappings():
            cities.setdefault(int(link["user_id"]), []).append(str(link["municipality_id"]))
        return [_user(row, cities.get(int(row["id"]), [])) for row in rows]

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
        `ValueError` for an unknown role (or an empty email or name).

        A `UserExists` raised by the database (a concurrent `add_user` of the same email
        won) leaves the transaction unusable, like `DuplicateWebhook`."""
        address = _email(email)
        role = _role(role)
        cities = _municipality_ids(municipalities)
        if not isinstance(name, str) or not name.strip():
            raise ValueError("an account needs a name")
        moment = _aware(at, "at")
        if self.user_by_email(address) is not None:
            raise UserExists(address)
        stmt = (
            users.insert()
            .values(
                email=address,
                name=name.strip(),
                role=role,
                password_hash=password_hash,
                totp_secret=None,
                disabled=False,
                must_change_password=bool(must_change_password),
                language=None,
                created_at=moment,
                updated_at=moment,
            )
            .returning(users.c.id)
        )
        try:
            user_id = int(self._exec(stmt).scalar_one())
        except sa.exc.IntegrityError as exc:
            if _is_unique_violation(exc):
                raise UserExists(address) from exc
            raise
        self._insert_municipalities(user_id, cities)
        user = self.get_user(user_id)
        assert user is not None
        return user

    def _insert_municipalities(self, user_id: int, cities: Sequence[str]) -> None:
        if cities:
            self._exec(
                user_municipalities.insert(),
                [{"user_id": user_id, "municipality_id": city} for city in cities],  # type: ignore[arg-type]
            )

    def get_user(self, user_id: int) -> User | None:
        found = self._users(users.c.id == user_id)
        return found[0] if found else None

    def user_by_email(self, email: str) -> User | None:
        """Case-insensitive."""
        if not isinstance(email, str) or not email.strip():
            return None
        found = self._users(users.c.email == email.strip().lower())
        return found[0] if found else None

    def list_users(self) -> list[User]:
        """Every account, by email."""
        return self._users()

    def users_of(self, municipality_id: str) -> list[User]:
        """Enabled accounts that can see this municipality (its agents and supervisors, and
        every admin), by name: the "assign to" choices."""
        works_there = (
            sa.select(user_municipalities.c.user_id)
            .where(
                user_municipalities.c.user_id == users.c.id,
                user_municipalities.c.municipality_id == municipality_id,
            )
            .exists()
        )
        return self._users(
            users.c.disabled.is_(False), sa.or_(users.c.role == "admin", works_there), by="name"
        )

    def _update_user(self, user_id: int, at: datetime, **values: Any) -> None:
        moment = _aware(at, "at")
        result = self._exec(
            users.update().where(users.c.id == user_id).values(updated_at=moment, **values)
        )
        if result.rowcount != 1:
            raise KeyError(f"no user {user_id}")

    def set_password(
        self, user_id: int, password_hash: str, *, must_change_password: bool, at: datetime
    ) -> None:
        """Raises KeyError if there is no such user (as do the other setters)."""
        self._update_user(
            user_id,
            at,
            password_hash=password_hash,
            must_change_password=bool(must_change_password),
        )

    def set_name(self, user_id: int, name: str, at: datetime) -> None:
        name = name.strip()
        if not name:
            raise ValueError("a user's name cannot be empty")
        self._update_user(user_id, at, name=name)

    def set_disabled(self, user_id: int, disabled: bool, at: datetime) -> None:
        self._update_user(user_id, at, disabled=bool(disabled))

    def set_totp(self, user_id: int, secret: str | None, at: datetime) -> None:
        self._update_user(user_id, at, totp_secret=secret, totp_last_step=None)

    def claim_totp_step(self, user_id: int, step: int) -> bool:
        """Accept a TOTP code of time step `step` for this account, once: True (and the step
        remembered) unless a code of this step or a later one was accepted already."""
        u = users.c
        result = self._exec(
            users.update()
            .where(u.id == user_id, sa.or_(u.totp_last_step.is_(None), u.totp_last_step < step))
            .values(totp_last_step=step)
        )
        return bool(result.rowcount == 1)

    def set_language(self, user_id: int, language: str | None, at: datetime) -> None:
        """`language`: "en", "fr", or None (follow the browser)."""
        if language is not None and (not isinstance(language, str) or not 0 < len(language) <= 8):
            raise ValueError(f"not a language code: {language!r}")
        self._update_user(user_id, at, language=language)

    def set_municipalities(self, user_id: int, municipalities: Sequence[str], at: datetime) -> None:
        cities = _municipality_ids(municipalities)
        self._update_user(user_id, at)
        self._exec(user_municipalities.delete().where(user_municipalities.c.user_id == user_id))
        self._insert_municipalities(user_id, cities)

    def set_role(self, user_id: int, role: Role, at: datetime) -> None:
        self._update_user(user_id, at, role=_role(role))

    # -- conversations, in scope -----------------------------------------------------------

    def conversation(self, conversation_id: int, scope: Scope) -> Conversation | None:
        """The conversation if it exists AND is in scope, else None (the view answers 404)."""
        stmt = sa.select(conversations).where(conversations.c.id == conversation_id)
        allowed = _in_scope(scope, conversations.c.municipality_id)
        if allowed is not None:
            stmt = stmt.where(allowed)
        row = self._exec(stmt).first()
        return None if row is None else _conversation(row)

    def _word_match(self, word: str) -> sa.ColumnElement[bool]:
        """`messages.body` contains `word`, case-insensitively (SQLite: ASCII letters only)."""
        pattern = _like_pattern(word)
        body = messages.c.body
        if not self._pg:
            return body.like(pattern, escape=_LIKE_ESCAPE)  # SQLite's LIKE ignores ASCII case
        if word.isascii():
            # ILIKE folds case through the locale (~2 µs a row); for an ASCII word the "C"
            # collation's ASCII folding finds the same texts, 2-3 times faster.
            return body.collate("C").ilike(pattern, escape=_LIKE_ESCAPE)
        return body.ilike(pattern, escape=_LIKE_ESCAPE)

    def _list_conditions(
        self, which: ListFilter, user_email: str, query: str
    ) -> tuple[tuple[str, ...], list[sa.ColumnElement[bool]], _Search | None]:
        """(the statuses `which` covers, its other conditions, the search if any)."""
        c = conversations.c
        where: list[sa.ColumnElement[bool]] = []
        if which == "open":
            statuses: tuple[str, ...] = ("open",)
        elif which == "closed":
            statuses = ("closed",)
        elif which == "mine":
            statuses = ("open",)
            where.append(c.agent_address == user_email.strip().lower())
        elif which == "unassigned":
            statuses = ("open",)
            where.append(c.agent_address.is_(None))
        elif which == "all":
            statuses = CONVERSATION_STATUSES
        else:
            raise ValueError(f"which must be one of {LIST_FILTERS}, not {which!r}")
        digits = phone_digits(query)
        if digits is not None:
            phone = c.phone.like(f"%{digits}%")
            # (no probe: a scan of the numbers costs about what testing 1,000 candidates does)
            return statuses, where, _Search([], sa.select(c.id).where(phone), probe=False)
        words = query.split()[:MAX_SEARCH_WORDS]
        if not words:
            return statuses, where, None
        matches = [self._word_match(word) for word in words]
        m = messages.c
        per_conversation: list[sa.ColumnElement[bool]] = [
            sa.select(m.id).where(m.conversation_id == c.id, match).exists() for match in matches
        ]
        # one pass over the texts for the longest word (likely the rarest); the other words
        # are then tested on those conversations only (the conditions go with it)
        longest = max(words, key=len)
        return statuses, where, _Search(per_conversation, None, word=longest)

    def _text_index(self) -> bool:
        """Whether migration 0005 made the trigram text index (it may not have: an SQLite
        without FTS5's trigram tokenizer, no privilege to create PostgreSQL's pg_trgm)."""
        return bool(self._exec(_TRGM_PRESENT if self._pg else _FTS_PRESENT).scalar())

    def _word_pass(self, word: str) -> sa.Select[Any]:
        """The ids of (at least) every conversation with a text holding `word` (a superset
        is enough: the search's conditions then test each word by LIKE). Through the
        trigram index for a word of three or more characters, else one LIKE pass."""
        m = messages.c
        if len(word) < _TRIGRAM or not self._text_index():
            return sa.select(m.conversation_id).where(self._word_match(word))
        if self._pg:
            # ILIKE in the database's collation (the index's): it folds at least the ASCII
            # letters the condition's "C" collation does, so it finds at least those texts
            return sa.select(m.conversation_id).where(
                m.body.ilike(_like_pattern(word), escape=_LIKE_ESCAPE)
            )
        # FTS5's trigram tokenizer folds case (Unicode), more than SQLite's LIKE (ASCII)
        found = sa.select(_FTS.c.rowid).where(_FTS.c.body.match(_fts_phrase(word)))
        return sa.select(m.conversation_id).where(m.id.in_(found))

    @staticmethod
    def _page(
        scope: Scope,
        statuses: Sequence[str],
        where: Sequence[sa.ColumnElement[bool]],
        size: int,
        by_agent: bool,
    ) -> sa.Subquery:
        """The ids (and sort keys) of one page: the newest `size` conversations.

        An ORDER BY ... LIMIT reads an index backwards and stops early only with equality on
        every column before last_activity_at in (municipality_id, status, last_activity_at,
        id) or (status, last_activity_at, id). So "all" (two statuses) and a scope of several
        municipalities become a UNION ALL of one such branch per (municipality, status),
        each limited, then merged: a few hundred index entries instead of sorting every
        conversation in scope. ("mine" reads (agent_address, status, last_activity_at).)"""
        c = conversations.c
        order = (c.last_activity_at.desc(), c.id.desc())
        cities: list[str | None] = [None]
        if scope.municipalities is not None:
            cities = list(sorted(scope.municipalities))
        branches = [(city, status) for city in cities for status in statuses]
        if by_agent or len(branches) == 1 or len(branches) > _MAX_BRANCHES:
            stmt = sa.select(c.id, c.last_activity_at).where(*where)
            allowed = _in_scope(scope, c.municipality_id)
            if allowed is not None:
                stmt = stmt.where(allowed)
            stmt = stmt.where(
                c.status == statuses[0] if len(statuses) == 1 else c.status.in_(statuses)
            )
            return stmt.order_by(*order).limit(size).subquery("page")
        selects = []
        for city, status in branches:
            branch = sa.select(c.id, c.last_activity_at).where(c.status == status, *where)
            if city is not None:
                branch = branch.where(c.municipality_id == city)
            inner = branch.order_by(*order).limit(size).subquery()
            selects.append(sa.select(inner.c.id, inner.c.last_activity_at))
        merged = sa.union_all(*selects).subquery("branches")
        return (
            sa.select(merged.c.id, merged.c.last_activity_at)
            .order_by(merged.c.last_activity_at.desc(), merged.c.id.desc())
            .limit(size)
            .subquery("page")
        )

    def _ids(self, page: sa.Subquery) -> list[int]:
        """The ids of a `_page`, newest first."""
        stmt = sa.select(page.c.id).order_by(page.c.last_activity_at.desc(), page.c.id.desc())
        return [int(i) for i in self._exec(stmt).scalars()]

    def _search(
        self,
        scope: Scope,
        statuses: Sequence[str],
        where: Sequence[sa.ColumnElement[bool]],
        search: _Search,
        size: int,
        by_agent: bool,
    ) -> list[int]:
        """The ids of one page of search results, newest first.

        Words: first the newest `_PROBE` conversations of the list are tested one by one
        (through the index, each text looked up by conversation): a common word fills the
        page from them. If it does not (and there were more), one pass over the texts
        finds the conversations with the longest word, the other words are tested on
        those, and those in the list are sorted. That pass goes through the trigram text
        index (migration 0005: FTS5 on SQLite, pg_trgm's GIN on PostgreSQL) for a word of
        three or more characters; for a shorter word, or without the index, it reads every
        message (see bench/console_seed.py). Numbers: straight to one pass over the
        conversations' numbers (about the price of the probe)."""
        c = conversations.c
        if self._pg:
            # psycopg prepares a statement run 5 times, and PostgreSQL then switches to a
            # generic plan, blind to the pattern: for `phone LIKE $1` in one municipality it
            # reads the whole municipality (3x slower, measured). Plan each search afresh.
            self._exec(_CUSTOM_PLANS)
        if search.probe:
            ids = self._probe(scope, statuses, where, search, size, by_agent)
            if ids is not None:
                return ids
        matching = search.matching
        if matching is None:
            matching = self._word_pass(search.word)
        stmt = sa.select(c.id).where(c.id.in_(matching), *search.conditions, *where)
        allowed = _in_scope(scope, c.municipality_id)
        if allowed is not None:
            stmt = stmt.where(allowed)
        stmt = stmt.where(c.status.in_(statuses))
        stmt = stmt.order_by(c.last_activity_at.desc(), c.id.desc()).limit(size)
        return [int(i) for i in self._exec(stmt).scalars()]

    def _probe(
        self,
        scope: Scope,
        statuses: Sequence[str],
        where: Sequence[sa.ColumnElement[bool]],
        search: _Search,
        size: int,
        by_agent: bool,
    ) -> list[int] | None:
        """The page from the newest `_PROBE` conversations of the list, or None if they do
        not decide it (fewer matches than a page, and more conversations after them)."""
        candidates = self._page(scope, statuses, where, _PROBE, by_agent)
        c = conversations.c
        probe = (
            sa.select(c.id)
            .select_from(candidates.join(conversations, c.id == candidates.c.id))
            .where(*search.conditions)
            .order_by(candidates.c.last_activity_at.desc(), candidates.c.id.desc())
            .limit(size)
        )
        ids = [int(i) for i in self._exec(probe).scalars()]
        if len(ids) == size:
            return ids
        examined = self._exec(sa.select(sa.func.count()).select_from(candidates)).scalar_one()
        return ids if examined < _PROBE else None  # (fewer: that was the whole list)

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
        keyset-paged (`cursor` is opaque; a string this method did not produce raises
        `ValueError`). `which`: open | closed | mine (open, agent_address = user_email) |
        unassigned (open, no agent) | all.
        `query`: three or more digits (spaces, dashes, parentheses, dots and a leading +
        ignored) match anywhere in the E.164 number (so "613 555-0123" finds +16135550123);
        anything else is words, each of which must appear in some message text of the
        conversation (case-insensitive; on SQLite only for ASCII letters). Must stay fast
        at 100,000 conversations (indexed on municipality_id, status, last_activity_at)."""
        if not 1 <= limit <= MAX_PAGE:
            raise ValueError(f"limit must be in 1..{MAX_PAGE}, not {limit}")
        c = conversations.c
        statuses, where, search = self._list_conditions(which, user_email, query)
        if cursor is not None:
            at, last_id = _decode_cursor(cursor)
            # (last_activity_at, id) < (at, last_id), written so that an index range applies
            where += [c.last_activity_at <= at, sa.or_(c.last_activity_at < at, c.id < last_id)]
        if scope.municipalities is not None and not scope.municipalities:
            return ConversationPage(rows=(), next_cursor=None)
        by_agent = which == "mine"
        if search is None:
            ids = self._ids(self._page(scope, statuses, where, limit + 1, by_agent))
        else:
            ids = self._search(scope, statuses, where, search, limit + 1, by_agent)
        if not ids:
            return ConversationPage(rows=(), next_cursor=None)
        reads = conversation_reads
        stmt = (
            sa.select(
                conversations,
                _PREVIEW.label("preview"),
                _LAST_REPLY.label("last_reply_at"),
                residents.c.language.label("resident_language"),
                residents.c.opted_out.label("resident_opted_out"),
                reads.c.last_read_at,
            )
            .select_from(
                conversations.outerjoin(residents, residents.c.phone == c.phone).outerjoin(
                    reads, sa.and_(reads.c.user_id == user_id, reads.c.conversation_id == c.id)
                )
            )
            .where(c.id.in_(ids))
        )
        rank = {conversation_id: n for n, conversation_id in enumerate(ids)}
        rows = sorted(self._exec(stmt).mappings().all(), key=lambda m: rank[int(m["id"])])
        more = len(rows) > limit
        out: list[ConversationRow] = []
        for m in rows[:limit]:
            inbound, read = m["last_inbound_at"], m["last_read_at"]
            out.append(
                ConversationRow(
                    id=int(m["id"]),
                    phone=m["phone"],
                    municipality_id=m["municipality_id"],
                    status=m["status"],
                    agent_address=m["agent_address"],
                    created_at=m["created_at"],
                    last_activity_at=m["last_activity_at"],
                    last_inbound_at=inbound,
                    last_reply_at=m["last_reply_at"],
                    preview=m["preview"] or "",
                    unread=inbound is not None and (read is None or inbound > read),
                    language=m["resident_language"] or "en",
                    opted_out=bool(m["resident_opted_out"]),
                )
            )
        next_cursor = _encode_cursor(out[-1].last_activity_at, out[-1].id) if more else None
        return ConversationPage(rows=tuple(out), next_cursor=next_cursor)

    def counts(self, scope: Scope, *, user_id: int, user_email: str) -> dict[str, int]:
        """{"open": n, "closed": n, "mine": n, "unassigned": n, "unread": n} in scope, where
        mine / unassigned are as in `list_conversations` and unread counts the OPEN
        conversations with a resident text newer than this user's read mark (or never read)."""
        c, reads = conversations.c, conversation_reads
        allowed = _in_scope(scope, c.municipality_id)
        scoped = [] if allowed is None else [allowed]

        def total(condition: sa.ColumnElement[bool]) -> sa.ColumnElement[Any]:
            return sa.func.coalesce(sa.func.sum(sa.case((condition, 1), else_=0)), 0)

        unread = sa.and_(
            c.last_inbound_at.is_not(None),
            sa.or_(reads.c.last_read_at.is_(None), c.last_inbound_at > reads.c.last_read_at),
        )
        open_row = tuple(self._exec(
            sa.select(
                sa.func.count(),
                total(c.agent_address == user_email.strip().lower()),
                total(c.agent_address.is_(None)),
                total(unread),
            )
            .select_from(
                conversations.outerjoin(
                    reads, sa.and_(reads.c.user_id == user_id, reads.c.conversation_id == c.id)
                )
            )
            .where(c.status == "open", *scoped)
        ).one())
        closed = self._exec(
            sa.select(sa.func.count())
            .select_from(conversations)
            .where(c.status == "closed", *scoped)
        ).scalar_one()
        return {
            "open": int(open_row[0]),
            "closed": int(closed),
            "mine": int(open_row[1]),
            "unassigned": int(open_row[2]),
            "unread": int(open_row[3]),
        }

    def timeline_version(self, conversation_id: int) -> str:
        """A short string that changes whenever the conversation's messages (new ones, a
        delivery status), notes, failed reply emails (a new one kept, one resolved or kept
        again), status or agent change: live refresh answers 204 when equal.
        (A hash of the messages' count, newest id and newest `updated_at`, the notes' count
        and newest id, the failed emails' count, newest id, resolved count and newest
        `resolved_at`, and the conversation's status, agent, closed_at, last activity.)"""
        m, n, f, c = messages.c, notes.c, failed_emails.c, conversations.c

        def of_messages(value: sa.ColumnElement[Any]) -> sa.ScalarSelect[Any]:
            return sa.select(value).where(m.conversation_id == c.id).scalar_subquery()

        def of_notes(value: sa.ColumnElement[Any]) -> sa.ScalarSelect[Any]:
            return sa.select(value).where(n.conversation_id == c.id).scalar_subquery()

        def of_failed(value: sa.ColumnElement[Any]) -> sa.ScalarSelect[Any]:
            return sa.select(value).where(f.conversation_id == c.id).scalar_subquery()

        row = self._exec(
            sa.select(
                c.status,
                c.agent_address,
                c.closed_at,
                c.last_activity_at,
                of_messages(sa.func.count()),
                of_messages(sa.func.max(m.id)),
                of_messages(sa.func.max(m.updated_at)),
                of_notes(sa.func.count()),
                of_notes(sa.func.max(n.id)),
                of_failed(sa.func.count()),
                of_failed(sa.func.max(f.id)),
                of_failed(sa.func.count(f.resolved_at)),
                of_failed(sa.func.max(f.resolved_at)),
            ).where(c.id == conversation_id)
        ).first()
        text = repr(None if row is None else tuple(row))
        return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()

    def messages(self, conversation_id: int) -> list[StoredMessage]:
        """Every message of the conversation, oldest first (= core.messages_of)."""
        return self.core.messages_of(conversation_id)

    def failed_replies_of(self, conversation_id: int, scope: Scope) -> list[NotTextedReply]:
        """The reply emails of this conversation that were not texted (`failed_emails`),
        oldest first; none when the conversation is not in `scope` (filtered in SQL). One
        query through the index on `failed_emails.conversation_id`; the emails' bytes are
        not read."""
        f, c = failed_emails.c, conversations.c
        stmt = (
            sa.select(f.id, f.conversation_id, f.received_at, f.why, f.sender, f.resolved_at,
                      f.resolution)
            .join(conversations, c.id == f.conversation_id)
            .where(f.conversation_id == conversation_id)
            .order_by(f.received_at, f.id)
        )
        allowed = _in_scope(scope, c.municipality_id)
        if allowed is not None:
            stmt = stmt.where(allowed)
        return [
            NotTextedReply(
                id=int(m["id"]),
                conversation_id=int(m["conversation_id"]),
                received_at=m["received_at"],
                why=m["why"],
                sender=m["sender"],
                resolved_at=m["resolved_at"],
                resolution=m["resolution"],
            )
            for m in self._exec(stmt).mappings()
        ]

    def reopen_conversation(self, conversation_id: int, at: datetime) -> None:
        """status open, closed_at NULL, last_activity_at moved forward to `at` (never back).
        KeyError if missing."""
        moment = _aware(at, "at")
        self.core._require_conversation(conversation_id, lock=True)
        self._exec(
            conversations.update()
            .where(conversations.c.id == conversation_id)
            .values(status="open", closed_at=None)
        )
        self.core._touch(conversation_id, moment)

    # -- notes, reads, presence --------------------------------------------------------------

    def add_note(self, conversation_id: int, user_id: int, body: str, at: datetime) -> int:
        """Store an internal note; returns its id. KeyError if the conversation (or the
        user) does not exist, ValueError for an empty body."""
        if not isinstance(body, str) or not body.strip():
            raise ValueError("a note needs some text")
        moment = _aware(at, "at")
        self.core._require_conversation(conversation_id)
        stmt = (
            notes.insert()
            .values(conversation_id=conversation_id, user_id=user_id, body=body, created_at=moment)
            .returning(notes.c.id)
        )
        try:
            return int(self._exec(stmt).scalar_one())
        except sa.exc.IntegrityError as exc:
            if _is_foreign_key_violation(exc):
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
        insert = _dialect_insert(self._pg, table).values(dict(values))
        stmt = insert.on_conflict_do_update(
            index_elements=list(key),
            set_={name: insert.excluded[name] for name in changes},
            where=None if only_if is None else only_if(insert.excluded),
        )
        try:
            self._exec(stmt)
        except sa.exc.IntegrityError as exc:
            if _is_foreign_key_violation(exc):
                raise KeyError("no such conversation or user") from exc
            raise

    def mark_read(self, user_id: int, conversation_id: int, at: datetime) -> None:
        """Upsert this user's read mark (never moves back). KeyError if the conversation or
        the user does not exist."""
        reads = conversation_reads
        moment = _aware(at, "at")
        # checked first: on PostgreSQL a failed statement would abort the whole transaction
        self.core._require_conversation(conversation_id)
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
        moment = _aware(at, "at")
        self.core._require_conversation(conversation_id)
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
                presence.c.seen_at >= _aware(since, "since"),
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
                at=_aware(at, "at"),
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
        allowed = _in_scope(scope, a.municipality_id)
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
        """How many login_failed entries since `since` for this email OR this address."""
        a = audit_log.c
        who: list[sa.ColumnElement[bool]] = []
        if email is not None and email.strip():
            who.append(a.user_email == email.strip().lower())
        if remote_addr is not None:
            who.append(a.remote_addr == remote_addr[:64])
        moment = _aware(since, "since")
        if not who:
            return 0
        stmt = sa.select(sa.func.count()).where(
            a.action == "login_failed", a.at >= moment, sa.or_(*who)
        )
        return int(self._exec(stmt).scalar_one())

    def claim_request(self, key: str, user_id: int, at: datetime) -> bool:
        """Record a form submission key; False when it was already recorded (a double
        submit: do nothing again). Keys are at most 64 characters (ValueError otherwise).
        Never aborts the transaction (ON CONFLICT DO NOTHING); on PostgreSQL a concurrent
        claim of the same key waits for the other transaction and gets False if it commits."""
        if not isinstance(key, str) or not 0 < len(key) <= 64:
            raise ValueError("a request key is 1..64 characters")
        stmt = (
            _dialect_insert(self._pg, console_requests)
            .values(key=key, user_id=user_id, created_at=_aware(at, "at"))
            .on_conflict_do_nothing(index_elements=[console_requests.c.key])
            .returning(console_requests.c.key)
        )
        return self._exec(stmt).first() is not None

    def prune(self, before: datetime) -> int:
        """Forget what only matters for minutes: form-submission keys and presence marks
        older than `before` (the worker does it daily). Returns how many rows went."""
        moment = _aware(before, "before")
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
                _dialect_insert(self._pg, console_settings)
                .values(key=_SECRET_KEY, value=secrets.token_hex(32))
                .on_conflict_do_nothing(index_elements=[console_settings.c.key])
            )
            value = self._exec(select).scalar_one()
        return str(value)


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
        with self.store._read() as conn:
            core = SqlTx(conn)
            try:
                yield ConsoleTx(core)
            finally:
                core._close()
