"""The console's store (gateway.store.console) on both backends: users, scope isolation,
the timeline version and failed replies, notes, presence, audit, idempotency keys, the shared
secret; what migration 0004 adds to the gateway's own tables (last_inbound_at, messages.via);
erasure. The conversation list (filters, keyset paging, unread, search and its text index)
is in test_console_store_search.py; the shared helpers in tests/console_store_helpers.py.
"""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa
from alembic import command

from gateway.store import SqlStore, open_store
from gateway.store.console import ConsoleStore, ConsoleTx, Scope, UserExists
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
from tests.console_store_helpers import (
    ALL,
    OTHER,
    OTTAWA,
    PHONE,
    T0,
    listed_ids,
    new_conversation,
    new_user,
)

# The store fixtures (tests/conftest.py): every test here runs on SQLite and on PostgreSQL.


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

    admin = new_user(console, "root@city.example", "admin", ())
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
    new_user(console, "zoe@ottawa.example", name="Zoé")
    new_user(console, "adam@ottawa.example", "supervisor", ("ottawa", "gatineau"), name="Adam")
    new_user(console, "tom@toronto.example", cities=("toronto",), name="Tom")
    new_user(console, "root@city.example", "admin", (), name="Root")
    gone = new_user(console, "gone@ottawa.example", name="Gone")
    with console.transaction() as tx:
        tx.set_disabled(gone.id, True, T0)
    with console.reading() as tx:
        assert [u.name for u in tx.users_of("ottawa")] == ["Adam", "Root", "Zoé"]
        assert [u.name for u in tx.users_of("gatineau")] == ["Adam", "Root"]
        assert [u.name for u in tx.users_of("halifax")] == ["Root"]


# --- scope ----------------------------------------------------------------------------------


def test_scope_isolation(console: ConsoleStore) -> None:
    with console.transaction() as tx:
        ottawa = new_conversation(tx, PHONE, "ottawa", T0, "pothole on Bank")
        toronto = new_conversation(tx, OTHER, "toronto", T0 + timedelta(1), "pothole on Yonge")
        nowhere = new_conversation(tx, "+12045550100", None, T0 + timedelta(2), "pothole somewhere")
    agent = new_user(console, "a@ottawa.example")
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
        assert listed_ids(console, OTTAWA, which, user=agent) == [ottawa]
        assert listed_ids(console, ALL, which, user=agent) == [nowhere, toronto, ottawa]
    assert listed_ids(console, OTTAWA, query="pothole") == [ottawa]
    assert listed_ids(console, OTTAWA, query="514") == []
    assert listed_ids(console, ALL, query="514") == [toronto]
    assert listed_ids(console, Scope(frozenset({"ottawa", "toronto"})), query="pothole") == [
        toronto, ottawa]
    assert listed_ids(console, nobody) == []


# --- counts, timeline version, reopen -------------------------------------------------------


def test_timeline_version_changes(console: ConsoleStore) -> None:
    user = new_user(console, "a@ottawa.example")
    with console.transaction() as tx:
        conv = new_conversation(tx, PHONE, "ottawa", T0)

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
        ottawa = new_conversation(tx, PHONE, "ottawa", T0)
        montreal = new_conversation(tx, OTHER, "montreal", T0)
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
        conv = new_conversation(tx, PHONE, "ottawa", T0)
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
        conv = new_conversation(tx, PHONE, "ottawa", T0)
        other = new_conversation(tx, OTHER, "montreal", T0)

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
    alice = new_user(console, "alice@ottawa.example", name="Alice")
    bob = new_user(console, "bob@ottawa.example", name="Bob")
    with console.transaction() as tx:
        conv = new_conversation(tx, PHONE, "ottawa", T0)
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
    alice = new_user(console, "alice@ottawa.example", name="Alice")
    bob = new_user(console, "bob@ottawa.example", name="Bob")
    carol = new_user(console, "carol@ottawa.example", name="Carol")
    with console.transaction() as tx:
        conv = new_conversation(tx, PHONE, "ottawa", T0)
        other = new_conversation(tx, OTHER, "ottawa", T0)
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
    alice = new_user(console, "alice@ottawa.example")
    with console.transaction() as tx:
        conv = new_conversation(tx, PHONE, "ottawa", T0)
        login = tx.audit(alice.id, "Alice@Ottawa.example", "login", at=T0, remote_addr="10.0.0.1")
        read = tx.audit(alice.id, alice.email, "read", at=T0, conversation_id=conv,
                        municipality_id="ottawa", detail={"n": 1, "what": ["x"]})
        tx.audit(alice.id, alice.email, "assign", at=T0, conversation_id=99,
                 municipality_id="toronto")
        for i, (email, addr) in enumerate([("mallory@x", "10.6.6.6"), ("ALICE@ottawa.example",
                                            "10.6.6.6"), ("alice@ottawa.example", "10.0.0.9")]):
            at = T0 + timedelta(minutes=i)
            assert tx.claim_login_attempt(email=email, remote_addr=addr, at=at,
                                          since=at - timedelta(days=1), max_by_email=9,
                                          max_by_address=9)
        at = T0 - timedelta(hours=2)  # a failed sign-in: in login_attempts, not in the audit log
        assert tx.claim_login_attempt(email="alice@ottawa.example", remote_addr="10.0.0.9",
                                      at=at, since=at, max_by_email=9, max_by_address=9)
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
    assert len(everything) == 3
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
    user = new_user(console, "a@ottawa.example")
    with console.transaction() as tx:
        conv = new_conversation(tx, PHONE, "ottawa", T0)
        kept = new_conversation(tx, OTHER, "ottawa", T0)
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


def test_the_console_needs_the_gateway_store() -> None:
    with pytest.raises(TypeError):
        ConsoleStore(object())  # type: ignore[arg-type]
