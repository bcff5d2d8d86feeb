"""Shared by the console store's test modules (test_console_store.py,
test_console_store_search.py): a clock, two scopes and two numbers, and helpers that add a
user, add a conversation with a text, and list a scope's conversation ids through every
page. The `console` fixture (a ConsoleStore over the `store` fixture, each backend) is in
tests/conftest.py.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

from gateway.store.console import ConsoleStore, ConsoleTx, Scope, User
from gateway.store.schema import conversations

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
ALL = Scope(None)
OTTAWA = Scope(frozenset({"ottawa"}))
PHONE, OTHER = "+16135550123", "+15145550199"


def new_user(console: ConsoleStore, email: str, role: str = "agent",
             cities: tuple[str, ...] = ("ottawa",), name: str | None = None) -> User:
    """A console user (password hash "argon2$hash", created at T0)."""
    with console.transaction() as tx:
        return tx.add_user(email, name or email.split("@")[0].title(), role,  # type: ignore[arg-type]
                           cities, "argon2$hash", must_change_password=False, at=T0)


def new_conversation(tx: ConsoleTx, phone: str, city: str | None, at: datetime,
                     text: str = "hello", agent: str | None = None) -> int:
    """A conversation of `phone` (its resident made if new) with one text in at `at`, last
    active at `at`; its id."""
    core = tx.core
    if core.get_resident(phone) is None:
        from gateway.store import Resident
        core.save_resident(Resident(phone=phone, municipality_id=city, language="fr",
                                    opted_out=False, dialogue={}))
    conv = core.create_conversation(phone, city, secrets.token_hex(16), "subject")
    core.add_message(phone, conv.id, "in", text, [], None, at)
    if agent is not None:
        core.set_agent(conv.id, agent)
    # last_activity_at exactly `at` (create_conversation starts it at the wall clock)
    core.execute(conversations.update().where(conversations.c.id == conv.id)
               .values(last_activity_at=at, created_at=at))
    return conv.id


def listed_ids(console: ConsoleStore, scope: Scope, which: str = "all", query: str = "",
               user: User | None = None, limit: int = 50) -> list[int]:
    """Every page of the list, following the cursors."""
    out: list[int] = []
    cursor = None
    with console.reading() as tx:
        while True:
            page = tx.list_conversations(scope, which, user_id=user.id if user else 0,  # type: ignore[arg-type]
                                         user_email=user.email if user else "nobody@x",
                                         query=query, cursor=cursor, limit=limit)
            assert len(page.rows) <= limit
            out += [row.id for row in page.rows]
            if page.next_cursor is None:
                return out
            cursor = page.next_cursor
