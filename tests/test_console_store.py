"""The console's store (gateway.store.console) on both backends: users, scope isolation, the
conversation list (filters, keyset paging, unread, search), counts, notes, presence, audit,
idempotency keys, the shared secret; and what migration 0004 adds to the gateway's own
tables (last_inbound_at, messages.via)."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from alembic import command

from gateway.store import SqlStore, open_store
from gateway.store.console import (
    ConsoleStore,
    ConsoleTx,
    Scope,
    User,
    UserExists,
    phone_digits,
)
from gateway.store.console import inbox as console_module
from gateway.store.privacy import delete_resident, export_resident
from gateway.store.reply_mail import keep_failed_email, resolve_failed_email
from gateway.store.schema import (
    audit_log,
    conversation_reads,
    conversations,
    messages,
    notes,
    presence,
    residents,
)
from gateway.store.sql import alembic_config

# The store fixtures (tests/conftest.py): every test here runs on SQLite and on PostgreSQL.

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
ALL = Scope(None)
OTTAWA = Scope(frozenset({"ottawa"}))
PHONE, OTHER = "+16135550123", "+15145550199"


@pytest.fixture
def console(store: SqlStore) -> ConsoleStore:
    return ConsoleStore(store)


def _user(console: ConsoleStore, email: str, role: str = "agent",
          cities: tuple[str, ...] = ("ottawa",), name: str | None = None) -> User:
    with console.transaction() as tx:
        return tx.add_user(email, name or email.split("@")[0].title(), role,  # type: ignore[arg-type]
                           cities, "argon2$hash", must_change_password=False, at=T0)


def _conversation(tx: ConsoleTx, phone: str, city: str | None, at: datetime,
                  text: str = "hello", agent: str | None = None) -> int:
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


def _ids(console: ConsoleStore, scope: Scope, which: str = "all", query: str = "",
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


# --- users ----------------------------------------------------------------------------------


def test_users_crud_and_case_insensitive_email(console: ConsoleStore) -> None:
    with console.transaction() as tx:
        alice = tx.add_user("  Alice@Ottawa.Example ", "Alice", "agent", ["ottawa", "gatineau"],
                            "h1", must_change_password=True, at=T0)
    assert alice.email == "alice@ottawa.example"
    assert alice.municipalities == ("gatineau", "ottawa")
    assert alice.must_change_password and not alice.disabled and alice.totp_secret is None
    assert alice.created_at == T0 and alice.created_at.tzinfo is not None
    assert alice.scope == Scope(frozenset({"gatineau", "ottawa"}))

    with pytest.raises(UserExists), console.transaction() as tx:
        tx.add_user("ALICE@ottawa.example", "Other", "agent", [], "h", must_change_password=False,
                    at=T0)
    with pytest.raises(ValueError), console.transaction() as tx:
        tx.add_user("bob@x.example", "Bob", "root", [], "h",  # type: ignore[arg-type]
                    must_change_password=False, at=T0)

    admin = _user(console, "root@city.example", "admin", ())
    assert admin.scope == ALL
    later = T0 + timedelta(hours=1)
    with console.transaction() as tx:
        assert tx.user_by_email("ALICE@OTTAWA.EXAMPLE") == alice
        assert tx.get_user(alice.id) == alice
        assert tx.get_user(9999) is None and tx.user_by_email("nobody@x") is None
        tx.set_password(alice.id, "h2", must_change_password=False, at=later)
        tx.set_totp(alice.id, "JBSWY3DPEHPK3PXP", later)
        tx.set_language(alice.id, "fr", later)
        tx.set_municipalities(alice.id, ["toronto"], later)
        tx.set_role(alice.id, "supervisor", later)
        tx.set_disabled(alice.id, True, later)
        with pytest.raises(KeyError):
            tx.set_disabled(9999, True, later)
        with pytest.raises(ValueError):
            tx.set_role(alice.id, "boss", later)  # type: ignore[arg-type]
    with console.reading() as tx:
        changed = tx.get_user(alice.id)
        assert [u.email for u in tx.list_users()] == ["alice@ottawa.example", "root@city.example"]
    assert changed is not None
    assert (changed.password_hash, changed.must_change_password, changed.totp_secret) == (
        "h2", False, "JBSWY3DPEHPK3PXP")
    assert (changed.language, changed.municipalities, changed.role, changed.disabled) == (
        "fr", ("toronto",), "supervisor", True)
    assert changed.updated_at == later and changed.created_at == T0


def test_users_of_a_municipality(console: ConsoleStore) -> None:
    _user(console, "zoe@ottawa.example", name="Zoé")
    _user(console, "adam@ottawa.example", "supervisor", ("ottawa", "gatineau"), name="Adam")
    _user(console, "tom@toronto.example", cities=("toronto",), name="Tom")
    _user(console, "root@city.example", "admin", (), name="Root")
    gone = _user(console, "gone@ottawa.example", name="Gone")
    with console.transaction() as tx:
        tx.set_disabled(gone.id, True, T0)
    with console.reading() as tx:
        assert [u.name for u in tx.users_of("ottawa")] == ["Adam", "Root", "Zoé"]
        assert [u.name for u in tx.users_of("gatineau")] == ["Adam", "Root"]
        assert [u.name for u in tx.users_of("halifax")] == ["Root"]


# --- scope ----------------------------------------------------------------------------------


def test_scope_isolation(console: ConsoleStore) -> None:
    with console.transaction() as tx:
        ottawa = _conversation(tx, PHONE, "ottawa", T0, "pothole on Bank")
        toronto = _conversation(tx, OTHER, "toronto", T0 + timedelta(1), "pothole on Yonge")
        nowhere = _conversation(tx, "+12045550100", None, T0 + timedelta(2), "pothole somewhere")
    agent = _user(console, "a@ottawa.example")
    nobody = Scope(frozenset())
    with console.reading() as tx:
        assert tx.conversation(ottawa, OTTAWA) is not None
        assert tx.conversation(toronto, OTTAWA) is None
        assert tx.conversation(nowhere, OTTAWA) is None
        assert tx.conversation(nowhere, ALL) is not None
        assert tx.conversation(ottawa, nobody) is None
        assert tx.conversation(424242, ALL) is None
        assert tx.counts(OTTAWA, user_id=agent.id, user_email=agent.email) == {
            "open": 1, "closed": 0, "mine": 0, "unassigned": 1, "unread": 1}
        assert tx.counts(ALL, user_id=agent.id, user_email=agent.email)["open"] == 3
        assert tx.counts(nobody, user_id=agent.id, user_email=agent.email)["open"] == 0
    for which in ("open", "unassigned", "all"):
        assert _ids(console, OTTAWA, which, user=agent) == [ottawa]
        assert _ids(console, ALL, which, user=agent) == [nowhere, toronto, ottawa]
    assert _ids(console, OTTAWA, query="pothole") == [ottawa]
    assert _ids(console, OTTAWA, query="514") == []
    assert _ids(console, ALL, query="514") == [toronto]
    assert _ids(console, Scope(frozenset({"ottawa", "toronto"})), query="pothole") == [
        toronto, ottawa]
    assert _ids(console, nobody) == []


# --- the list -------------------------------------------------------------------------------


def test_list_filters_rows_and_order(console: ConsoleStore) -> None:
    agent = _user(console, "a@ottawa.example")
    with console.transaction() as tx:
        mine = _conversation(tx, PHONE, "ottawa", T0, "mine", agent=agent.email)
        theirs = _conversation(tx, OTHER, "ottawa", T0 + timedelta(minutes=1), "theirs",
                               agent="b@ottawa.example")
        free = _conversation(tx, "+16135550177", "ottawa", T0 + timedelta(minutes=2), "free")
        done = _conversation(tx, "+16135550188", "ottawa", T0 + timedelta(minutes=3), "done")
        tx.core.close_conversation(done, T0 + timedelta(minutes=4))
        long = "x" * 200
        tx.core.add_message(PHONE, mine, "out", long, [], None, T0 + timedelta(seconds=30),
                            status="queued", agent_address=agent.email, via="console")
    assert _ids(console, OTTAWA, "open", user=agent) == [free, theirs, mine]
    assert _ids(console, OTTAWA, "closed", user=agent) == [done]
    assert _ids(console, OTTAWA, "mine", user=agent) == [mine]
    assert _ids(console, OTTAWA, "unassigned", user=agent) == [free]
    assert _ids(console, OTTAWA, "all", user=agent) == [done, free, theirs, mine]
    with console.reading() as tx:
        page = tx.list_conversations(OTTAWA, "mine", user_id=agent.id, user_email="A@Ottawa.example")
        assert tx.counts(OTTAWA, user_id=agent.id, user_email=agent.email) == {
            "open": 3, "closed": 1, "mine": 1, "unassigned": 1, "unread": 3}
        with pytest.raises(ValueError):
            tx.list_conversations(OTTAWA, "everything", user_id=1, user_email="x")  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            tx.list_conversations(OTTAWA, "all", user_id=1, user_email="x", cursor="garbage!")
    (row,) = page.rows
    assert page.next_cursor is None
    assert row.id == mine and row.phone == PHONE and row.municipality_id == "ottawa"
    assert row.status == "open" and row.agent_address == agent.email
    assert row.preview == "x" * 140  # the newest message (the reply), truncated
    assert row.last_activity_at == T0 + timedelta(seconds=30) and row.created_at == T0
    assert row.last_inbound_at == T0
    assert row.unread and row.language == "fr" and not row.opted_out


def test_keyset_paging_with_equal_timestamps(console: ConsoleStore) -> None:
    ids = []
    with console.transaction() as tx:
        for i in range(23):
            # groups of equal last_activity_at, not in id order
            at = T0 + timedelta(minutes=(i * 7) % 5)
            ids.append((at, _conversation(tx, f"+1613555{i:04d}", "ottawa", at)))
    expected = [cid for at, cid in sorted(ids, key=lambda p: (p[0], p[1]), reverse=True)]
    for limit in (1, 2, 3, 5, 22, 23, 50):
        assert _ids(console, OTTAWA, "all", limit=limit) == expected
    # a conversation moving to the top between pages is neither duplicated nor lost
    # among the rest
    with console.reading() as tx:
        first = tx.list_conversations(OTTAWA, "all", user_id=0, user_email="x", limit=10)
    with console.transaction() as tx:
        tx.core.add_message("+16135550000", expected[15], "in", "again", [], None,
                            T0 + timedelta(hours=1))
    rest = []
    cursor = first.next_cursor
    with console.reading() as tx:
        while cursor is not None:
            page = tx.list_conversations(OTTAWA, "all", user_id=0, user_email="x",
                                         cursor=cursor, limit=10)
            rest += [row.id for row in page.rows]
            cursor = page.next_cursor
    seen = [row.id for row in first.rows] + rest
    assert len(seen) == len(set(seen))
    assert set(seen) | {expected[15]} == set(expected)


@pytest.mark.parametrize("branches", [40, 1])
def test_paging_across_municipalities_and_statuses(
    console: ConsoleStore, branches: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 40: one UNION ALL branch per (municipality, status); 1: a single sorted query
    monkeypatch.setattr(console_module, "_MAX_BRANCHES", branches)
    made = []
    with console.transaction() as tx:
        for i in range(30):
            city = ("ottawa", "gatineau", "toronto", None)[i % 4]
            at = T0 + timedelta(minutes=(i * 11) % 7)
            cid = _conversation(tx, f"+1819555{i:04d}", city, at)
            if i % 3 == 0:
                tx.core.close_conversation(cid, at)
            made.append((at, cid, city, "closed" if i % 3 == 0 else "open"))
    newest_first = sorted(made, key=lambda m: (m[0], m[1]), reverse=True)
    two = Scope(frozenset({"ottawa", "gatineau"}))
    for scope in (two, ALL, OTTAWA):
        for which in ("all", "open", "closed", "unassigned"):
            expected = [cid for at, cid, city, status in newest_first
                        if scope.allows(city) and (which in ("all", "unassigned")
                                                   or status == which)
                        and (which != "unassigned" or status == "open")]
            for limit in (1, 4, 50):
                assert _ids(console, scope, which, limit=limit) == expected, (scope, which)


def test_unread_follows_new_texts_and_read_marks(console: ConsoleStore) -> None:
    agent = _user(console, "a@ottawa.example")
    other = _user(console, "b@ottawa.example")
    with console.transaction() as tx:
        conv = _conversation(tx, PHONE, "ottawa", T0)
        quiet = tx.core.create_conversation(OTHER, "ottawa", "q" * 32, "s")  # no text yet

    def unread(user: User) -> dict[int, bool]:
        with console.reading() as tx:
            page = tx.list_conversations(OTTAWA, "open", user_id=user.id, user_email=user.email)
            count = tx.counts(OTTAWA, user_id=user.id, user_email=user.email)["unread"]
        flags = {row.id: row.unread for row in page.rows}
        assert count == sum(flags.values())
        return flags

    assert unread(agent) == {conv: True, quiet.id: False}
    with console.transaction() as tx:
        tx.mark_read(agent.id, conv, T0 + timedelta(minutes=1))
        tx.mark_read(agent.id, conv, T0)  # never moves back
    assert unread(agent) == {conv: False, quiet.id: False}
    assert unread(other)[conv] is True
    with console.transaction() as tx:  # the agent's own reply does not make it unread
        tx.core.add_message(PHONE, conv, "out", "ok", [], None, T0 + timedelta(minutes=2))
    assert unread(agent)[conv] is False
    with console.transaction() as tx:
        tx.core.add_message(PHONE, conv, "in", "and another thing", [], None,
                            T0 + timedelta(minutes=3))
    assert unread(agent)[conv] is True
    with console.transaction() as tx:
        tx.mark_read(agent.id, conv, T0 + timedelta(minutes=3))
        with pytest.raises(KeyError):
            tx.mark_read(agent.id, 424242, T0)
    assert unread(agent)[conv] is False


def test_phone_search() -> None:
    assert phone_digits("+1 (613) 555-0123") == "16135550123"
    assert phone_digits("613.555.0123") == "6135550123"
    assert phone_digits(" 0123 ") == "0123"
    assert phone_digits("12") is None and phone_digits("613 main") is None
    assert phone_digits("1+613") is None and phone_digits("") is None


@pytest.mark.parametrize("probe", [1000, 2, 1])
def test_phone_and_word_search(console: ConsoleStore, probe: int,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    # probe 1000: every conversation is tested one by one; 1 and 2: the one-pass fallback
    monkeypatch.setattr(console_module, "_PROBE", probe)
    with console.transaction() as tx:
        a = _conversation(tx, PHONE, "ottawa", T0, "Big POTHOLE on Bank St")
        tx.core.add_message(PHONE, a, "in", "near the 100% school", [], None, T0)
        b = _conversation(tx, "+16135559876", "ottawa", T0 + timedelta(1), "Garbage day_2 missed")
        c = _conversation(tx, "+447700900456", "ottawa", T0 + timedelta(2), "pot hole")
    for query in ("613-555-0123", "(613) 555 0123", "+1 613 555 0123", "6135550123", "0123",
                  "5550123"):
        assert _ids(console, OTTAWA, query=query) == [a], query
    assert _ids(console, OTTAWA, query="613555") == [b, a]
    assert _ids(console, OTTAWA, query="0123") == [a]
    assert _ids(console, OTTAWA, query="900456") == [c]
    assert _ids(console, OTTAWA, query="pothole") == [a]
    assert _ids(console, OTTAWA, query="pothole school") == [a]  # words in different texts
    assert _ids(console, OTTAWA, query="BANK pothole") == [a]
    assert _ids(console, OTTAWA, query="pothole garbage") == []
    assert _ids(console, OTTAWA, query="pot") == [c, a]
    assert _ids(console, OTTAWA, query="100%") == [a]
    assert _ids(console, OTTAWA, query="0%") == [a]
    assert _ids(console, OTTAWA, query="%") == [a]  # escaped: a literal percent sign
    assert _ids(console, OTTAWA, query="_") == [b]
    assert _ids(console, OTTAWA, query="y_2") == [b]
    assert _ids(console, OTTAWA, query="   ") == [c, b, a]
    assert _ids(console, OTTAWA, "closed", query="pothole") == []
    assert _ids(console, OTTAWA, "all", query="pot", limit=1) == [c, a]  # paged
    assert _ids(console, OTTAWA, "open", query="school near") == [a]
    assert _ids(console, Scope(frozenset({"toronto"})), query="pothole") == []
    with console.transaction() as tx:
        d = _conversation(tx, "+18195550111", "ottawa", T0 + timedelta(3), "Devant l'ÉCOLE Saint-Jean")
    assert _ids(console, OTTAWA, query="saint-JEAN cole") == [d]
    # non-ASCII letters: case-insensitive on PostgreSQL; SQLite's LIKE folds ASCII only
    pg = console.store.engine.dialect.name == "postgresql"
    assert _ids(console, OTTAWA, query="école") == ([d] if pg else [])
    assert _ids(console, OTTAWA, query="ÉCOLE") == [d]


# --- counts, timeline version, reopen -------------------------------------------------------


def test_timeline_version_changes(console: ConsoleStore) -> None:
    user = _user(console, "a@ottawa.example")
    with console.transaction() as tx:
        conv = _conversation(tx, PHONE, "ottawa", T0)

    def version() -> str:
        with console.reading() as tx:
            return tx.timeline_version(conv)

    seen = {version()}
    assert version() in seen  # stable

    def changed() -> None:
        now = version()
        assert now not in seen
        seen.add(now)

    with console.transaction() as tx:
        reply = tx.core.add_message(PHONE, conv, "out", "ok", [], None, T0, status="queued")
    changed()
    with console.transaction() as tx:
        tx.core.set_message_status(reply, "delivered")
    changed()
    with console.transaction() as tx:
        tx.add_note(conv, user.id, "called them back", T0)
    changed()
    with console.transaction() as tx:
        tx.core.set_agent(conv, user.email)
    changed()
    with console.transaction() as tx:
        tx.core.close_conversation(conv, T0 + timedelta(1))
    changed()
    with console.transaction() as tx:
        tx.touch_presence(user.id, conv, "viewing", T0)
        tx.mark_read(user.id, conv, T0)
    assert version() in seen  # presence and reads are not the timeline
    with console.transaction() as tx:
        tx.reopen_conversation(conv, T0 + timedelta(2))
        assert tx.conversation(conv, OTTAWA) is not None
        with pytest.raises(KeyError):
            tx.reopen_conversation(424242, T0)
    changed()
    with console.reading() as tx:
        reopened = tx.conversation(conv, OTTAWA)
        assert tx.timeline_version(424242) != version()
    assert reopened is not None and reopened.status == "open" and reopened.closed_at is None
    assert reopened.last_activity_at == T0 + timedelta(2)


def _keep_failed(tx: ConsoleTx, key: str, conversation_id: int | None, at: datetime,
                 why: str | None = "not_agent", sender: str | None = "x@spam.example") -> int:
    return keep_failed_email(tx.core, key, b"Subject: hi\r\n\r\nSecret body", "not an agent",
                             {"kind": "imap"}, now=at, sender=sender,
                             conversation_id=conversation_id, why=why)


def test_failed_replies_of_a_conversation_in_scope(console: ConsoleStore) -> None:
    with console.transaction() as tx:
        ottawa = _conversation(tx, PHONE, "ottawa", T0)
        montreal = _conversation(tx, OTHER, "montreal", T0)
        later = _keep_failed(tx, "sha256:b", ottawa, T0 + timedelta(minutes=5), why="empty",
                             sender="jane@ottawa.example")
        first = _keep_failed(tx, "sha256:a", ottawa, T0 + timedelta(minutes=1), why=None,
                             sender=None)
        _keep_failed(tx, "sha256:c", montreal, T0)
        _keep_failed(tx, "sha256:d", None, T0, why="unroutable")  # no conversation
    with console.reading() as tx:
        mine = tx.failed_replies_of(ottawa, OTTAWA)
        assert tx.failed_replies_of(ottawa, Scope(frozenset({"montreal"}))) == []
        assert tx.failed_replies_of(montreal, OTTAWA) == []  # filtered in SQL, whatever the id
        assert tx.failed_replies_of(ottawa, Scope(frozenset())) == []
        assert [f.id for f in tx.failed_replies_of(ottawa, ALL)] == [first, later]
        assert len(tx.failed_replies_of(montreal, ALL)) == 1
        assert tx.failed_replies_of(424242, ALL) == []
    assert [f.id for f in mine] == [first, later]  # received order
    assert (mine[0].why, mine[0].sender, mine[0].received_at) == (
        None, None, T0 + timedelta(minutes=1))
    assert (mine[1].why, mine[1].sender, mine[1].conversation_id) == (
        "empty", "jane@ottawa.example", ottawa)
    assert mine[1].resolved_at is None and mine[1].resolution is None
    assert "Secret body" not in repr(mine)  # never the email itself


def test_failed_replies_are_read_through_their_index(console: ConsoleStore) -> None:
    """One query by conversation id: the index on failed_emails.conversation_id (0007)."""
    with console.transaction() as tx:
        conv = _conversation(tx, PHONE, "ottawa", T0)
    engine = console.store.engine
    with engine.connect() as conn:
        names = {i["name"] for i in sa.inspect(conn).get_indexes("failed_emails")}
    assert "ix_failed_emails_conversation_id" in names
    if engine.dialect.name == "sqlite":
        with engine.connect() as conn:
            plan = " ".join(str(row[-1]) for row in conn.execute(sa.text(
                "EXPLAIN QUERY PLAN SELECT id FROM failed_emails WHERE conversation_id = :c"
            ), {"c": conv}))
        assert "ix_failed_emails_conversation_id" in plan, plan


def test_timeline_version_changes_with_failed_replies(console: ConsoleStore) -> None:
    with console.transaction() as tx:
        conv = _conversation(tx, PHONE, "ottawa", T0)
        other = _conversation(tx, OTHER, "montreal", T0)

    def version() -> str:
        with console.reading() as tx:
            return tx.timeline_version(conv)

    seen = {version()}

    def changed() -> None:
        now = version()
        assert now not in seen
        seen.add(now)

    with console.transaction() as tx:
        kept = _keep_failed(tx, "sha256:a", conv, T0)
    changed()
    with console.transaction() as tx:
        _keep_failed(tx, "sha256:b", other, T0)
    assert version() in seen  # another conversation's
    with console.transaction() as tx:
        resolve_failed_email(tx.core, kept, "processed", "texted", now=T0 + timedelta(1))
    changed()
    resolved = version()
    with console.transaction() as tx:  # kept again (a retry that failed): unresolved again
        _keep_failed(tx, "sha256:a", conv, T0)
    assert version() != resolved


# --- notes, presence ------------------------------------------------------------------------


def test_notes(console: ConsoleStore) -> None:
    alice = _user(console, "alice@ottawa.example", name="Alice")
    bob = _user(console, "bob@ottawa.example", name="Bob")
    with console.transaction() as tx:
        conv = _conversation(tx, PHONE, "ottawa", T0)
        second = tx.add_note(conv, bob.id, "second", T0 + timedelta(minutes=1))
        first = tx.add_note(conv, alice.id, "first", T0)
        with pytest.raises(ValueError):
            tx.add_note(conv, alice.id, "  ", T0)
    with pytest.raises(KeyError), console.transaction() as tx:
        tx.add_note(424242, alice.id, "x", T0)
    with pytest.raises(KeyError), console.transaction() as tx:
        tx.add_note(conv, 424242, "x", T0)
    with console.reading() as tx:
        found = tx.notes_of(conv)
        assert tx.notes_of(424242) == []
    assert [(n.id, n.user_name, n.body) for n in found] == [
        (first, "Alice", "first"), (second, "Bob", "second")]
    assert found[0].created_at == T0 and found[0].conversation_id == conv
    assert found[0].user_id == alice.id


def test_presence_since_and_excluding(console: ConsoleStore) -> None:
    alice = _user(console, "alice@ottawa.example", name="Alice")
    bob = _user(console, "bob@ottawa.example", name="Bob")
    carol = _user(console, "carol@ottawa.example", name="Carol")
    with console.transaction() as tx:
        conv = _conversation(tx, PHONE, "ottawa", T0)
        other = _conversation(tx, OTHER, "ottawa", T0)
        tx.touch_presence(bob.id, conv, "viewing", T0 + timedelta(seconds=10))
        tx.touch_presence(bob.id, conv, "replying", T0 + timedelta(seconds=20))  # upsert
        tx.touch_presence(alice.id, conv, "viewing", T0 + timedelta(seconds=15))
        tx.touch_presence(carol.id, conv, "viewing", T0)  # stale
        tx.touch_presence(carol.id, other, "viewing", T0 + timedelta(seconds=20))
        with pytest.raises(ValueError):
            tx.touch_presence(carol.id, other, "typing", T0)  # type: ignore[arg-type]
    since = T0 + timedelta(seconds=5)
    with console.reading() as tx:
        everyone = tx.presence(conv, since=since)
        others = tx.presence(conv, since=since, excluding_user=alice.id)
    assert [(p.user_name, p.state) for p in everyone] == [("Alice", "viewing"), ("Bob", "replying")]
    assert [(p.user_id, p.seen_at) for p in others] == [(bob.id, T0 + timedelta(seconds=20))]


# --- audit, logins, idempotency, secret -----------------------------------------------------


def test_audit_log_scope_paging_and_failed_logins(console: ConsoleStore) -> None:
    alice = _user(console, "alice@ottawa.example")
    with console.transaction() as tx:
        conv = _conversation(tx, PHONE, "ottawa", T0)
        login = tx.audit(alice.id, "Alice@Ottawa.example", "login", at=T0, remote_addr="10.0.0.1")
        read = tx.audit(alice.id, alice.email, "read", at=T0, conversation_id=conv,
                        municipality_id="ottawa", detail={"n": 1, "what": ["x"]})
        tx.audit(alice.id, alice.email, "assign", at=T0, conversation_id=99,
                 municipality_id="toronto")
        for i, (email, addr) in enumerate([("mallory@x", "10.6.6.6"), ("ALICE@ottawa.example",
                                            "10.6.6.6"), ("alice@ottawa.example", "10.0.0.9")]):
            tx.audit(None, email, "login_failed", at=T0 + timedelta(minutes=i), remote_addr=addr)
        tx.audit(None, "alice@ottawa.example", "login_failed", at=T0 - timedelta(hours=2),
                 remote_addr="10.0.0.9")
        with pytest.raises(TypeError):
            tx.audit(None, None, "x", at=T0, detail={"bad": object()})
    with console.reading() as tx:
        everything = tx.audit_log(ALL)
        mine = tx.audit_log(OTTAWA)
        about = tx.audit_log(ALL, conversation_id=conv)
        older = tx.audit_log(ALL, before_id=read, limit=10)
        newest_two = tx.audit_log(ALL, limit=2)
        fails = {
            "email": tx.failed_logins(email="alice@OTTAWA.example", remote_addr=None, since=T0),
            "addr": tx.failed_logins(email=None, remote_addr="10.6.6.6", since=T0),
            "either": tx.failed_logins(email="alice@ottawa.example", remote_addr="10.6.6.6",
                                       since=T0),
            "window": tx.failed_logins(email="alice@ottawa.example", remote_addr=None,
                                       since=T0 + timedelta(minutes=2)),
            "older": tx.failed_logins(email="alice@ottawa.example", remote_addr=None,
                                      since=T0 - timedelta(days=1)),
            "none": tx.failed_logins(email=None, remote_addr=None, since=T0),
        }
    assert [e.id for e in everything] == sorted((e.id for e in everything), reverse=True)
    assert len(everything) == 7
    assert [e.action for e in mine] == ["read"]
    assert [e.id for e in about] == [read]
    assert [e.id for e in older] == [login]
    assert len(newest_two) == 2 and newest_two[0].id == everything[0].id
    entry = about[0]
    assert entry.detail == {"n": 1, "what": ["x"]} and entry.at == T0
    assert (entry.user_id, entry.user_email, entry.municipality_id) == (
        alice.id, alice.email, "ottawa")
    assert everything[-1].user_email == "alice@ottawa.example"
    assert everything[-1].remote_addr == "10.0.0.1" and everything[-1].detail == {}
    assert fails == {"email": 2, "addr": 2, "either": 3, "window": 1, "older": 3, "none": 0}


def test_claim_request_once(console: ConsoleStore) -> None:
    key = secrets.token_urlsafe(32)
    with console.transaction() as tx:
        assert tx.claim_request(key, 1, T0) is True
        assert tx.claim_request(key, 1, T0) is False
        assert tx.claim_request("other", 1, T0) is True
        tx.audit(1, None, "still usable", at=T0)  # the transaction was not aborted
    with console.transaction() as tx:
        assert tx.claim_request(key, 2, T0) is False
        with pytest.raises(ValueError):
            tx.claim_request("k" * 65, 1, T0)


def test_console_secret_is_shared(console: ConsoleStore, db_url: str) -> None:
    with console.transaction() as tx:
        secret = tx.console_secret()
        assert tx.console_secret() == secret
    assert len(secret) == 64 and int(secret, 16) >= 0
    other = open_store(db_url)
    try:
        with ConsoleStore(other).reading() as tx:
            assert tx.console_secret() == secret
    finally:
        other.close()


# --- the gateway's tables -------------------------------------------------------------------


def _last_inbound(store: SqlStore, conversation_id: int) -> datetime | None:
    with store.engine.connect() as conn:
        value: datetime | None = conn.execute(
            sa.select(conversations.c.last_inbound_at).where(conversations.c.id == conversation_id)
        ).scalar_one()
        return value


def test_last_inbound_at_and_via(store: SqlStore) -> None:
    with store.transaction() as tx:
        conv = tx.create_conversation(PHONE, "ottawa", "t" * 32, "s")
        tx.execute(conversations.update().values(last_activity_at=T0 - timedelta(days=7)))
    assert _last_inbound(store, conv.id) is None
    with store.transaction() as tx:
        tx.add_message(PHONE, conv.id, "out", "reply", [], None, T0 + timedelta(hours=1),
                       status="queued", agent_address="a@ottawa.example", via="email")
    assert _last_inbound(store, conv.id) is None  # replies are not the resident's
    with store.transaction() as tx:
        tx.add_message(PHONE, conv.id, "in", "one", [], None, T0)
    assert _last_inbound(store, conv.id) == T0  # even though last_activity_at is later
    with store.transaction() as tx:
        tx.add_message(PHONE, conv.id, "in", "late delivery", [], None, T0 - timedelta(1))
    assert _last_inbound(store, conv.id) == T0  # never moves back
    with store.transaction() as tx:
        held = [tx.hold_message(PHONE, f"held {i}", [], None, T0 + timedelta(minutes=i))
                for i in (5, 3)]
        tx.take_held(PHONE)
        tx.attach_messages(held, conv.id)
    assert _last_inbound(store, conv.id) == T0 + timedelta(minutes=5)
    with store.transaction() as tx:
        old = tx.hold_message(PHONE, "old", [], None, T0 - timedelta(1))
        tx.attach_messages([old], conv.id)
        tx.add_message(PHONE, conv.id, "in", "newest", [], None, T0 + timedelta(hours=2))
        current = tx.get_conversation(conv.id)
        assert current is not None and current.last_activity_at == T0 + timedelta(hours=2)
        vias = [(m.direction, m.via) for m in tx.messages_of(conv.id)]
    assert _last_inbound(store, conv.id) == T0 + timedelta(hours=2)
    assert ("out", "email") in vias and all(v is None for d, v in vias if d == "in")
    with store.transaction() as tx:
        tx.add_message(PHONE, conv.id, "out", "c", [], None, T0, via="console")
        assert [m.via for m in tx.messages_of(conv.id) if m.body == "c"] == ["console"]


def test_migration_backfills_last_inbound_at(empty_store: SqlStore) -> None:
    with empty_store.engine.begin() as conn:
        command.upgrade(alembic_config(conn), "0003")
    old = sa.MetaData()
    old_conversations = sa.Table("conversations", old, *[
        sa.Column(c.name, c.type) for c in conversations.c
        if c.name != "last_inbound_at"])
    old_messages = sa.Table("messages", old, *[
        sa.Column(c.name, c.type) for c in messages.c if c.name != "via"])
    with empty_store.engine.begin() as conn:
        for cid in (1, 2, 3):
            conn.execute(old_conversations.insert().values(
                id=cid, token=f"tok{cid}", phone=PHONE, municipality_id="ottawa", subject="s",
                status="open", thread_message_ids=[], created_at=T0, last_activity_at=T0))
        rows: list[tuple[int | None, str, datetime]] = [
            (1, "in", T0), (1, "in", T0 + timedelta(hours=3)), (1, "out", T0 + timedelta(5)),
            (2, "out", T0), (None, "in", T0 + timedelta(9))]
        for i, (conversation, direction, at) in enumerate(rows):
            conn.execute(old_messages.insert().values(
                id=i + 1, phone=PHONE, conversation_id=conversation, direction=direction,
                body="b", media=[], provider_sid=None, held=conversation is None, received_at=at,
                updated_at=at))
    empty_store.upgrade()
    assert _last_inbound(empty_store, 1) == T0 + timedelta(hours=3)
    assert _last_inbound(empty_store, 2) is None
    assert _last_inbound(empty_store, 3) is None
    with empty_store.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).where(messages.c.via.is_not(None))
                            ).scalar_one() == 0
    # and back down: 0004 downgrades cleanly
    with empty_store.engine.begin() as conn:
        command.downgrade(alembic_config(conn), "0003")
    assert "users" not in sa.inspect(empty_store.engine).get_table_names()
    empty_store.upgrade()
    assert _last_inbound(empty_store, 1) == T0 + timedelta(hours=3)


# --- privacy --------------------------------------------------------------------------------


def test_erasure_takes_the_console_rows_and_keeps_the_audit_log(
    console: ConsoleStore, store: SqlStore
) -> None:
    user = _user(console, "a@ottawa.example")
    with console.transaction() as tx:
        conv = _conversation(tx, PHONE, "ottawa", T0)
        kept = _conversation(tx, OTHER, "ottawa", T0)
        for cid in (conv, kept):
            tx.add_note(cid, user.id, f"note on {cid}", T0)
            tx.mark_read(user.id, cid, T0)
            tx.touch_presence(user.id, cid, "viewing", T0)
            tx.audit(user.id, user.email, "read", at=T0, conversation_id=cid,
                     municipality_id="ottawa")
    export = export_resident(store, PHONE)
    assert [n["body"] for n in export["notes"]] == [f"note on {conv}"]
    delete_resident(store, PHONE)
    with store.engine.connect() as conn:
        for table in (notes, conversation_reads, presence):
            remaining = conn.execute(sa.select(table.c.conversation_id)).scalars().all()
            assert remaining == [kept], table.name
        audited = conn.execute(sa.select(audit_log.c.conversation_id)).scalars().all()
        assert sorted(audited) == sorted([conv, kept])
        assert conn.execute(sa.select(residents.c.phone)).scalars().all() == [OTHER]


# --- the trigram text index (migration 0005) ------------------------------------------------


def _pg(store: SqlStore) -> bool:
    return store.engine.dialect.name == "postgresql"


def _text_index(store: SqlStore) -> bool:
    """Whether the text index exists; on SQLite, also that it agrees with the messages
    (FTS5's integrity-check compares an external-content index with its table)."""
    with store.engine.begin() as conn:
        if _pg(store):
            return bool(conn.execute(
                sa.text("SELECT to_regclass('ix_messages_body_trgm') IS NOT NULL")).scalar())
        if not conn.execute(sa.text(
                "SELECT 1 FROM sqlite_master WHERE name = 'messages_fts'")).scalar():
            return False
        conn.execute(sa.text("INSERT INTO messages_fts(messages_fts) VALUES ('integrity-check')"))
        return True


def _indexed(store: SqlStore, word: str) -> list[int]:
    """The message ids the SQLite index lists for `word` (not checked against the texts)."""
    with store.engine.connect() as conn:
        return sorted(conn.execute(
            sa.text("SELECT rowid FROM messages_fts WHERE messages_fts MATCH :q"),
            {"q": console_module._fts_phrase(word)}).scalars())


def _word_pass_sql(console: ConsoleStore, word: str) -> str:
    with console.reading() as tx:
        return str(tx._word_pass(word).compile(console.store.engine))


def test_rare_word_is_found_through_the_index(console: ConsoleStore,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(console_module, "_PROBE", 1)  # straight to the one pass
    store = console.store
    assert _text_index(store)
    with console.transaction() as tx:
        rare = _conversation(tx, PHONE, "ottawa", T0, "A SINKHOLE opened on Elgin St")
        for i in range(5):
            _conversation(tx, f"+1613555{i:04d}", "ottawa", T0 + timedelta(i + 1), f"pothole {i}")
    sql = _word_pass_sql(console, "sinkhole")
    if _pg(store):
        assert "ILIKE" in sql.upper() and "COLLATE" not in sql.upper()  # the index's collation
        with store.engine.begin() as conn:  # (a tiny table: forbid the sequential scan)
            conn.execute(sa.text("SET LOCAL enable_seqscan = off"))
            plan = "\n".join(conn.execute(sa.text(
                "EXPLAIN SELECT conversation_id FROM messages WHERE body ILIKE '%sinkhole%'"
            )).scalars())
        assert "ix_messages_body_trgm" in plan
    else:
        assert "MATCH" in sql and "LIKE" not in sql.upper()
        assert len(_indexed(store, "SINKhole")) == 1  # (trigram folds case)
    assert "LIKE" in _word_pass_sql(console, "st").upper()  # two letters: no trigram
    for query in ("sinkhole", "SinkHole", "inkho", "sinkhole elgin", "elgin sinkhole"):
        assert _ids(console, OTTAWA, query=query) == [rare], query
    assert _ids(console, OTTAWA, query="sinkhole pothole") == []
    assert _ids(console, OTTAWA, query="xylophone") == []
    assert _ids(console, OTTAWA, query="pothole", limit=2) == _ids(console, OTTAWA,
                                                                   query="pothole")[:5]


def test_the_index_follows_new_blanked_and_erased_texts(
    console: ConsoleStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway.store.privacy import purge_texts

    monkeypatch.setattr(console_module, "_PROBE", 1)
    store = console.store
    with console.transaction() as tx:
        old = _conversation(tx, PHONE, "ottawa", T0, "old text about a sinkhole")
        other = _conversation(tx, OTHER, "ottawa", T0 + timedelta(1), "nothing here")
    assert _ids(console, OTTAWA, query="sinkhole") == [old]
    with console.transaction() as tx:  # a text after the migration: the insert trigger
        tx.core.add_message(OTHER, other, "in", "another sinkhole, and a streetlight", [], None,
                            T0 + timedelta(days=400))
    assert _text_index(store)
    assert _ids(console, OTTAWA, query="sinkhole") == [other, old]
    assert _ids(console, OTTAWA, query="streetlight") == [other]
    # the privacy purge blanks the old texts (UPDATE of body): the update trigger
    assert purge_texts(store, T0 + timedelta(days=30)).texts_blanked == 2
    assert _text_index(store)
    assert _ids(console, OTTAWA, query="sinkhole") == [other]
    assert _ids(console, OTTAWA, query="nothing") == []
    if not _pg(store):
        assert len(_indexed(store, "sinkhole")) == 1 and _indexed(store, "nothing") == []
    # erasure deletes the resident's texts: the delete trigger
    delete_resident(store, OTHER)
    assert _text_index(store)
    assert _ids(console, OTTAWA, query="sinkhole") == []
    assert _ids(console, OTTAWA, query="streetlight") == []
    if not _pg(store):
        assert _indexed(store, "sinkhole") == [] and _indexed(store, "streetlight") == []


@pytest.mark.parametrize("probe", [1000, 1])
def test_fts_syntax_in_a_word_is_literal(console: ConsoleStore, probe: int,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(console_module, "_PROBE", probe)
    texts = ['she said "hi there" twice', "a*b*c stars", "NEAR(the school)", "this OR that",
             "co-op housing", "col:umn ^caret {brace} AND NOT", 'one " quote']
    with console.transaction() as tx:
        ids = [_conversation(tx, f"+1613555{i:04d}", "ottawa", T0 + timedelta(i), text)
               for i, text in enumerate(texts)]
    hi, star, near, either, coop, syntax, quote = ids
    cases = {
        '"hi': [hi], '"hi there"': [hi], 'said "hi': [hi], 'twice"': [], '""': [],
        "a*b*c": [star], "a*b": [star], "*b*": [star], "***": [],
        "NEAR": [near], "near(the": [near], "NEAR(": [near], "school)": [near],
        "OR": [either], "this OR": [either], " OR that ": [either], "OR-": [],
        "co-op": [coop], "-op": [coop], "-": [coop], "--": [], "co-": [coop],
        "col:umn": [syntax], "^caret": [syntax], "{brace}": [syntax], "AND NOT": [syntax],
        '" quote': [quote], '"': [hi, quote][::-1],
    }
    for query, expected in cases.items():
        assert _ids(console, OTTAWA, query=query) == sorted(expected, reverse=True), query


def test_migration_builds_the_index_from_existing_texts_and_downgrades(
    empty_store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(console_module, "_PROBE", 1)
    with empty_store.engine.begin() as conn:
        command.upgrade(alembic_config(conn), "0004")
    assert not _text_index(empty_store)
    console = ConsoleStore(empty_store)
    with console.transaction() as tx:  # (at 0004 the tables are schema.py's)
        before = _conversation(tx, PHONE, "ottawa", T0, "a sinkhole before the index")
    assert _ids(console, OTTAWA, query="sinkhole") == [before]  # the LIKE pass
    empty_store.upgrade()
    assert _text_index(empty_store)
    if not _pg(empty_store):
        assert len(_indexed(empty_store, "sinkhole")) == 1  # backfilled
    assert _ids(console, OTTAWA, query="sinkhole") == [before]
    with console.transaction() as tx:
        after = _conversation(tx, OTHER, "ottawa", T0 + timedelta(1), "a sinkhole after it")
    assert _ids(console, OTTAWA, query="sinkhole") == [after, before]
    # and back down: 0005 drops the index (and the triggers); the search still works
    with empty_store.engine.begin() as conn:
        command.downgrade(alembic_config(conn), "0004")
    assert not _text_index(empty_store)
    if not _pg(empty_store):
        with empty_store.engine.connect() as conn:
            assert conn.execute(sa.text(
                "SELECT name FROM sqlite_master WHERE name LIKE 'messages_fts%'")).all() == []
    with console.transaction() as tx:
        tx.core.add_message(PHONE, before, "in", "streetlight out", [], None, T0)
    assert _ids(console, OTTAWA, query="sinkhole") == [after, before]
    assert _ids(console, OTTAWA, query="streetlight") == [before]
    empty_store.upgrade()
    assert _text_index(empty_store)
    assert _ids(console, OTTAWA, query="streetlight") == [before]


def test_postgres_without_pg_trgm_migrates_and_searches(monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    """A role that may not create the extension (no CREATE on the database): the migration
    succeeds without the index (and says so), the search reads every text."""
    from tests.postgres import connect, server_url, throwaway_database_name

    monkeypatch.setattr(console_module, "_PROBE", 1)
    role = f"sms311_noext_{secrets.token_hex(4)}"
    with throwaway_database_name() as dbname:
        with connect(dbname) as conn:
            conn.execute(f'CREATE ROLE "{role}" LOGIN')
            conn.execute(f'REVOKE CREATE ON DATABASE "{dbname}" FROM PUBLIC')
            conn.execute(f'CREATE SCHEMA app AUTHORIZATION "{role}"')
        try:
            url = sa.make_url(server_url()).set(
                username=role, database=dbname, query={"options": "-csearch_path=app"})
            store = open_store(url.render_as_string(hide_password=False))
            try:
                with caplog.at_level("WARNING"):
                    store.upgrade()
                assert "pg_trgm" in caplog.text
                assert not _text_index(store)
                console = ConsoleStore(store)
                with console.transaction() as tx:
                    a = _conversation(tx, PHONE, "ottawa", T0, "A SINKHOLE on Bank St")
                assert _ids(console, OTTAWA, query="sinkhole") == [a]
                assert _ids(console, OTTAWA, query="sinkhole bank") == [a]
                assert _ids(console, OTTAWA, query="xylophone") == []
            finally:
                store.close()
        finally:
            with connect(dbname) as conn:
                conn.execute("DROP SCHEMA app CASCADE")
                conn.execute(f'DROP ROLE "{role}"')


def test_the_console_needs_the_gateway_store() -> None:
    with pytest.raises(TypeError):
        ConsoleStore(object())  # type: ignore[arg-type]
