"""The console's inbox: conversations in scope, the conversation list (filters, keyset
paging, unread marks, search) and its counts, one conversation's timeline.

Contract
    `InboxTx` is the inbox part of `ConsoleTx` (in the caller's transaction). Every query
    that returns conversations, counts, search results, messages or failed replies takes a
    `Scope` and filters in SQL (`in_scope`). The list is newest activity first, keyset-paged
    by an opaque cursor; a search is a phone number (three or more digits) or words, each
    of which must appear in some text of the conversation; it must stay fast at 100,000
    conversations (see `ConsoleTx._page` and `_search`). `reopen_conversation` is here too:
    it changes what the list shows.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from gateway.store import rows
from gateway.store.base import CONVERSATION_STATUSES, Conversation, StoredMessage
from gateway.store.console.common import (
    LIST_FILTERS,
    PAGE_SIZE,
    ConsoleTxBase,
    ConversationPage,
    ConversationRow,
    ListFilter,
    NotTextedReply,
    Scope,
    in_scope,
)
from gateway.store.rows import aware
from gateway.store.schema import (
    conversation_reads,
    conversations,
    failed_emails,
    messages,
    notes,
    residents,
)

PREVIEW_CHARS = 140
MAX_PAGE = 500
MAX_SEARCH_WORDS = 10
_PROBE = 1000  # conversations a search tests one by one before one pass over every text
_MAX_BRANCHES = 40  # (municipality, status) pairs merged by UNION ALL (see ConsoleTx._page)
_PHONE_SEPARATORS = str.maketrans("", "", " \t-().")
_DIGITS = re.compile(r"[0-9]{3,}")
_LIKE_ESCAPE = "\\"
_TRIGRAM = 3  # the shortest word the text index (migration 0005) can find
# migration 0005's text index: SQLite's FTS5 table over messages.body, PostgreSQL's GIN index
_FTS = sa.table("messages_fts", sa.column("rowid"), sa.column("body"))
_FTS_PRESENT = sa.text("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'messages_fts'")
_TRGM_PRESENT = sa.text("SELECT to_regclass('ix_messages_body_trgm') IS NOT NULL")


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


class InboxTx(ConsoleTxBase):
    """The inbox part of `ConsoleTx` (see the module docstring)."""

    def conversation(self, conversation_id: int, scope: Scope) -> Conversation | None:
        """The conversation if it exists AND is in scope, else None (the view answers 404)."""
        stmt = sa.select(conversations).where(conversations.c.id == conversation_id)
        allowed = in_scope(scope, conversations.c.municipality_id)
        if allowed is not None:
            stmt = stmt.where(allowed)
        row = self._exec(stmt).first()
        return None if row is None else rows.conversation(row)

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
            allowed = in_scope(scope, c.municipality_id)
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
        allowed = in_scope(scope, c.municipality_id)
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
        allowed = in_scope(scope, c.municipality_id)
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
        allowed = in_scope(scope, c.municipality_id)
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
        moment = aware(at, "at")
        self.core.require_conversation(conversation_id, lock=True)
        self._exec(
            conversations.update()
            .where(conversations.c.id == conversation_id)
            .values(status="open", closed_at=None)
        )
        self.core.touch(conversation_id, moment)
