"""The store, on both backends: SQLite in tmp_path and a real PostgreSQL server.

Here: opening the store, errors, transactions, residents, messages, conversations, webhook
dedupe, datetimes, outbound message status, processed emails and IMAP checkpoints. The
outbox (claims, leases, retries) is in test_store_outbox.py; the schema and its migrations
in test_store_migrations.py; shared constants and helpers in tests/store_helpers.py.

PostgreSQL: GATEWAY_TEST_POSTGRES_URL (default postgresql://postgres@127.0.0.1:5432/test)
names the server and the role; the database in it is ignored. The session creates a
throwaway database (through the server's "postgres" database, dropped after) and every
test gets its own empty schema in it, first on the connection's search_path.
If the server cannot be reached the PostgreSQL tests fail (they never skip).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from gateway.store import (
    DuplicateEmail,
    DuplicateWebhook,
    Resident,
    SqlStore,
    StoreUnavailable,
    open_store,
)
from gateway.store.engine import normalize_url
from gateway.store.schema import conversations, email_messages, messages, processed_emails
from tests.paths import REPO_ROOT
from tests.store_helpers import LEASE, OTHER, PHONE, T0, in_threads, select_rows

# --- opening the store ----------------------------------------------------------------------


def test_sqlite_connection_settings(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/g.db")
    try:
        store.upgrade()  # (switches foreign keys off while it migrates, then on again)
        with store.engine.connect() as conn:
            raw = conn.connection.driver_connection
            assert raw is not None

            def pragma(name: str) -> Any:
                return raw.execute(f"PRAGMA {name}").fetchone()[0]

            assert pragma("journal_mode") == "wal"
            assert pragma("foreign_keys") == 1
            assert pragma("synchronous") == 2  # FULL: a commit is on stable storage
            assert pragma("busy_timeout") == 5000
    finally:
        store.close()


def test_open_store_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert normalize_url("postgres://u@h/db").drivername == "postgresql+psycopg"
    assert normalize_url("postgresql://u@h/db").drivername == "postgresql+psycopg"
    assert normalize_url("postgresql+psycopg://u@h/db").drivername == "postgresql+psycopg"
    for bad in ("sqlite://", "sqlite:///:memory:", "mysql://u@h/db", "nonsense"):
        with pytest.raises(ValueError):
            open_store(bad)

    monkeypatch.chdir(tmp_path)
    store = open_store("sqlite:///var/lib/gateway.db")  # relative: made absolute, folder created
    try:
        store.upgrade()
        assert (tmp_path / "var" / "lib" / "gateway.db").is_file()
        assert store.engine.url.database == str(tmp_path / "var" / "lib" / "gateway.db")
    finally:
        store.close()


# --- errors ---------------------------------------------------------------------------------


def test_unreachable_postgres_is_unavailable() -> None:
    store = open_store("postgresql://postgres@127.0.0.1:1/nothing")
    try:
        with pytest.raises(StoreUnavailable, match="database unavailable"):
            store.ping()
        with pytest.raises(StoreUnavailable), store.transaction():
            pass
    finally:
        store.close()


def test_locked_sqlite_is_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    store = open_store(f"sqlite:///{path}", busy_timeout=0.1)
    try:
        store.upgrade()
        blocker = sqlite3.connect(path, isolation_level=None)
        try:
            blocker.execute("BEGIN IMMEDIATE")
            start = time.monotonic()
            with pytest.raises(StoreUnavailable, match="locked"), store.transaction() as tx:
                tx.enqueue("sms", {})
            assert time.monotonic() - start < 2
            store.ping()  # WAL: readers are not blocked by the writer
            assert store.outbox_stats()["depth"] == 0
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        with store.transaction() as tx:
            tx.enqueue("sms", {})
        assert store.outbox_stats()["depth"] == 1
    finally:
        store.close()


# --- transactions ---------------------------------------------------------------------------


def test_rollback_on_exception_leaves_nothing(store: SqlStore) -> None:
    class Boom(Exception):
        pass

    with pytest.raises(Boom), store.transaction() as tx:
        tx.save_resident(Resident(PHONE, "ottawa", "fr"))
        tx.hold_message(PHONE, "nid de poule", [], "SM1", T0)
        conv = tx.create_conversation(PHONE, "ottawa", "tok1", "Subject")
        tx.add_message(PHONE, conv.id, "in", "x", [], "SM2", T0)
        tx.enqueue("email", {"x": 1})
        tx.record_webhook("SM1", "<Response/>")
        raise Boom

    with store.transaction() as tx:
        assert tx.get_resident(PHONE) is None
        assert tx.take_held(PHONE) == []
        assert tx.open_conversation(PHONE, "ottawa") is None
        assert tx.webhook_response("SM1") is None
    assert store.list_outbox() == []
    assert select_rows(store, sa.select(messages)) == []


def test_tx_cannot_be_used_after_its_block(store: SqlStore) -> None:
    with store.transaction() as tx:
        pass
    with pytest.raises(RuntimeError, match="ended"):
        tx.get_resident(PHONE)


def test_read_then_write_transactions_do_not_deadlock(store: SqlStore) -> None:
    """Two transactions that read a resident, wait, then write: serialised, neither fails.

    SQLite: BEGIN IMMEDIATE (a deferred BEGIN would fail one with "database is locked");
    PostgreSQL: get_resident's per-number lock (else one update would be lost).
    """
    with store.transaction() as tx:
        tx.save_resident(Resident(PHONE, dialogue={"count": 0}))
    start = threading.Barrier(2)

    def bump(_: int) -> None:
        start.wait()
        with store.transaction() as tx:
            resident = tx.get_resident(PHONE)
            assert resident is not None
            time.sleep(0.1)
            count = resident.dialogue["count"] + 1
            tx.save_resident(Resident(PHONE, dialogue={"count": count}))

    in_threads(2, bump)
    with store.transaction() as tx:
        resident = tx.get_resident(PHONE)
    assert resident is not None and resident.dialogue == {"count": 2}  # no lost update


# --- residents ------------------------------------------------------------------------------


def test_resident_round_trip(store: SqlStore) -> None:
    dialogue = {"step": "ask_city", "attempts": 2, "held": [1, 2], "nom": "Montréal", "x": None}
    with store.transaction() as tx:
        assert tx.get_resident(PHONE) is None
        tx.save_resident(Resident(PHONE, None, "fr", False, dialogue))
    with store.transaction() as tx:
        first = tx.get_resident(PHONE)
    assert first is not None
    assert (first.phone, first.municipality_id, first.language, first.opted_out) == (
        PHONE,
        None,
        "fr",
        False,
    )
    assert first.dialogue == dialogue
    assert first.created_at is not None and first.created_at.tzinfo == UTC

    with store.transaction() as tx:
        tx.save_resident(Resident(PHONE, "montreal", "fr", True, {}))
    with store.transaction() as tx:
        second = tx.get_resident(PHONE)
        assert tx.get_resident(OTHER) is None
    assert second is not None
    assert (second.municipality_id, second.opted_out, second.dialogue) == ("montreal", True, {})
    assert second.created_at == first.created_at
    assert second.updated_at is not None and first.updated_at is not None
    assert second.updated_at >= first.updated_at


# --- messages -------------------------------------------------------------------------------


def test_hold_and_take_held_oldest_first(store: SqlStore) -> None:
    photo = {"url": "https://api.example/Media/ME1", "content_type": "image/jpeg"}
    with store.transaction() as tx:
        late = tx.hold_message(PHONE, "third", [], "SM3", T0 + timedelta(minutes=2))
        early = tx.hold_message(PHONE, "first", [photo], "SM1", T0)
        middle = tx.hold_message(PHONE, "second", [], None, T0 + timedelta(minutes=1))
        tx.hold_message(OTHER, "someone else", [], "SM9", T0)
    with store.transaction() as tx:
        held = tx.take_held(PHONE)
    assert [m.id for m in held] == [early, middle, late]
    assert [m.body for m in held] == ["first", "second", "third"]
    assert held[0].media == (photo,)
    assert held[0].provider_sid == "SM1" and held[1].provider_sid is None
    assert all(m.direction == "in" and not m.held and m.conversation_id is None for m in held)
    assert held[0].received_at == T0

    with store.transaction() as tx:
        assert tx.take_held(PHONE) == []
        assert [m.body for m in tx.take_held(OTHER)] == ["someone else"]


def test_take_held_concurrently_hands_each_text_out_once(store: SqlStore) -> None:
    with store.transaction() as tx:
        for i in range(20):
            tx.hold_message(PHONE, f"text {i}", [], f"SM{i}", T0 + timedelta(seconds=i))
    start = threading.Barrier(3)

    def take(_: int) -> list[int]:
        start.wait()
        with store.transaction() as tx:
            return [m.id for m in tx.take_held(PHONE)]

    results = in_threads(3, take)
    taken = [i for ids in results for i in ids]
    assert len(taken) == 20 and len(set(taken)) == 20


def test_messages_join_a_conversation(store: SqlStore) -> None:
    with store.transaction() as tx:
        a = tx.hold_message(PHONE, "a", [], "SMa", T0)
        b = tx.hold_message(PHONE, "b", [], "SMb", T0 + timedelta(seconds=5))
    with store.transaction() as tx:
        conv = tx.create_conversation(PHONE, "ottawa", "tok-a", "Texto 613-555-0123")
        held = tx.take_held(PHONE)
        tx.attach_messages([m.id for m in held], conv.id)
        later = datetime.now(UTC) + timedelta(hours=1)
        out = tx.add_message(PHONE, conv.id, "out", "Merci", [], "SMout", later)
        with pytest.raises(KeyError):
            tx.attach_messages([a], 424242)
    with pytest.raises(KeyError), store.transaction() as tx:  # foreign keys are enforced
        tx.add_message(PHONE, 424242, "in", "x", [], None, T0)
    with store.transaction() as tx, pytest.raises(ValueError, match="direction"):
        tx.add_message(PHONE, conv.id, "sideways", "x", [], None, T0)  # type: ignore[arg-type]
    rows = select_rows(store, sa.select(messages).order_by(messages.c.id))
    assert [(r["id"], r["conversation_id"], r["direction"], r["held"]) for r in rows] == [
        (a, conv.id, "in", False),
        (b, conv.id, "in", False),
        (out, conv.id, "out", False),
    ]
    with store.transaction() as tx:
        again = tx.open_conversation(PHONE, "ottawa")
    assert again is not None and again.last_activity_at == later


def test_duplicate_provider_sid_on_a_message(store: SqlStore) -> None:
    with store.transaction() as tx:
        tx.hold_message(PHONE, "hello", [], "SMsame", T0)
    with pytest.raises(DuplicateWebhook) as err, store.transaction() as tx:
        tx.enqueue("email", {})
        tx.add_message(PHONE, None, "in", "hello", [], "SMsame", T0)
    assert err.value.sid == "SMsame"
    assert store.list_outbox() == []


# --- conversations --------------------------------------------------------------------------


def test_conversations(store: SqlStore) -> None:
    with store.transaction() as tx:
        assert tx.open_conversation(PHONE, "ottawa") is None
        conv = tx.create_conversation(PHONE, "ottawa", "tok-1", "311 text from 613-555-0123")
        lost = tx.create_conversation(PHONE, None, "tok-2", "311 text (municipality unknown)")
    assert conv.status == "open" and conv.thread_message_ids == () and conv.agent_address is None
    assert conv.created_at.tzinfo == UTC and conv.last_activity_at == conv.created_at

    with store.transaction() as tx:
        tx.record_thread_email(conv.id, "<1@gw.example>")
        tx.record_thread_email(conv.id, "<2@gw.example>")
        tx.record_thread_email(conv.id, "<2@gw.example>")  # already in the chain
        with pytest.raises(KeyError):
            tx.record_thread_email(999999, "<x@gw.example>")
    with store.transaction() as tx:
        found = tx.open_conversation(PHONE, "ottawa")
        assert tx.open_conversation(PHONE, "gatineau") is None
        assert tx.open_conversation(OTHER, "ottawa") is None
        unknown = tx.open_conversation(PHONE, None)
    assert found is not None and found.id == conv.id and found.token == "tok-1"
    assert found.thread_message_ids == ("<1@gw.example>", "<2@gw.example>")
    assert found.subject == "311 text from 613-555-0123"
    assert unknown is not None and unknown.id == lost.id

    # the most recently active open conversation wins; closed ones are never returned
    with store.transaction() as tx:
        newer = tx.create_conversation(PHONE, "ottawa", "tok-3", "s")
        tx.add_message(PHONE, newer.id, "in", "x", [], None, datetime.now(UTC) + timedelta(1))
        assert tx.open_conversation(PHONE, "ottawa") == tx.open_conversation(PHONE, "ottawa")
        current = tx.open_conversation(PHONE, "ottawa")
    assert current is not None and current.id == newer.id
    with store.engine.begin() as conn:
        conn.execute(conversations.update().values(status="closed"))
    with store.transaction() as tx:
        assert tx.open_conversation(PHONE, "ottawa") is None


# --- webhook dedupe -------------------------------------------------------------------------


def test_webhook_dedupe(store: SqlStore) -> None:
    answer = "<Response><Message>Which city?</Message></Response>"
    with store.transaction() as tx:
        assert tx.webhook_response("SM1") is None
        tx.record_webhook("SM1", answer)
    with pytest.raises(DuplicateWebhook) as err, store.transaction() as tx:
        tx.enqueue("email", {"would": "be sent twice"})
        tx.record_webhook("SM1", "<Response/>")
    assert err.value.sid == "SM1"
    with store.transaction() as tx:
        assert tx.webhook_response("SM1") == answer
    assert store.list_outbox() == []


def test_concurrent_duplicate_webhook(store: SqlStore) -> None:
    """Two transactions race on one MessageSid: the second gets DuplicateWebhook."""
    recorded = threading.Event()

    def first() -> None:
        with store.transaction() as tx:
            tx.record_webhook("SMrace", "<Response>first</Response>")
            tx.enqueue("sms", {"n": 1})
            recorded.set()
            time.sleep(0.3)

    def second() -> BaseException | None:
        assert recorded.wait(5)
        try:
            with store.transaction() as tx:  # SQLite: waits in BEGIN IMMEDIATE
                tx.enqueue("sms", {"n": 2})
                tx.record_webhook("SMrace", "<Response>second</Response>")  # PG: waits here
        except DuplicateWebhook as exc:
            return exc
        return None

    with ThreadPoolExecutor(2) as pool:
        f1, f2 = pool.submit(first), pool.submit(second)
        f1.result(timeout=10)
        assert isinstance(f2.result(timeout=10), DuplicateWebhook)
    with store.transaction() as tx:
        assert tx.webhook_response("SMrace") == "<Response>first</Response>"
    assert [item.payload for item in store.list_outbox()] == [{"n": 1}]


# --- datetimes ------------------------------------------------------------------------------


def test_aware_datetimes_round_trip_as_utc(store: SqlStore) -> None:
    eastern = timezone(timedelta(hours=-5))
    local = datetime(2025, 1, 15, 20, 30, 15, 123456, tzinfo=eastern)  # = 01:30:15Z next day
    tokyo = datetime(2025, 1, 16, 10, 0, tzinfo=timezone(timedelta(hours=9)))  # = 01:00Z
    with store.transaction() as tx:
        tx.hold_message(PHONE, "x", [], None, local)
        outbox_id = tx.enqueue("sms", {}, tokyo)
    with store.transaction() as tx:
        (held,) = tx.take_held(PHONE)
    assert held.received_at == local
    assert held.received_at.utcoffset() == timedelta(0)
    assert held.received_at == datetime(2025, 1, 16, 1, 30, 15, 123456, tzinfo=UTC)

    # comparisons in SQL use the instant, whatever the zone of the value compared with
    before = datetime(2025, 1, 15, 19, 59, tzinfo=eastern)  # 00:59Z
    assert store.claim_due(["sms"], 1, before, LEASE, "w") == []
    (item,) = store.claim_due(["sms"], 1, tokyo.astimezone(eastern), LEASE, "w")
    assert item.id == outbox_id and item.next_attempt_at == tokyo
    assert item.next_attempt_at.tzinfo == UTC and item.created_at.tzinfo == UTC

    naive = datetime(2025, 1, 1, 12, 0)
    with pytest.raises(ValueError, match="naive"), store.transaction() as tx:
        tx.hold_message(PHONE, "x", [], None, naive)
    with pytest.raises(ValueError, match="naive"), store.transaction() as tx:
        tx.enqueue("sms", {}, naive)
    with pytest.raises(ValueError, match="naive"):
        store.claim_due(["sms"], 1, naive, LEASE, "w")


# --- conversations: lookups, agent, closing --------------------------------------------------


def test_conversation_lookups(store: SqlStore) -> None:
    with store.transaction() as tx:
        one = tx.create_conversation(PHONE, "ottawa", "tok-one", "s1")
        two = tx.create_conversation(OTHER, "gatineau", "tok-two", "s2")
        tx.record_thread_email(one.id, "<1a@gw.example>")
        tx.record_thread_email(one.id, "<1b@gw.example>")
        tx.record_thread_email(two.id, "<2a@gw.example>")
        tx.record_thread_email(two.id, "<agent-reply@city.example>", "in")
        tx.record_thread_email(two.id, "<1a@gw.example>")  # someone else's id: first record kept
        with pytest.raises(ValueError, match="direction"):
            tx.record_thread_email(one.id, "<x@gw.example>", "sideways")  # type: ignore[arg-type]
        with pytest.raises(KeyError):
            tx.record_thread_email(424242, "<y@gw.example>")

    with store.transaction() as tx:
        assert tx.get_conversation(one.id) == tx.conversation_by_token("tok-one")
        got_one = tx.get_conversation(one.id)
        assert tx.get_conversation(424242) is None
        assert tx.conversation_by_token("tok-nope") is None
        assert tx.conversation_by_token("TOK-ONE") is None  # tokens are exact
        got_two = tx.conversation_by_token("tok-two")
        # the first known id in the caller's order wins
        assert tx.conversation_by_email(["<1b@gw.example>", "<2a@gw.example>"]) == got_one
        assert (
            tx.conversation_by_email(("<unknown@x>", "<2a@gw.example>", "<1b@gw.example>"))
            == got_two
        )
        assert tx.conversation_by_email(["<agent-reply@city.example>"]) == got_two
        assert tx.conversation_by_email(["<1a@gw.example>"]) == got_one
        assert tx.conversation_by_email(["<unknown@x>", "<unknown@x>"]) is None
        assert tx.conversation_by_email([]) is None
        with pytest.raises(TypeError):
            tx.conversation_by_email("<1a@gw.example>")
    assert got_one is not None and got_one.id == one.id and got_one.subject == "s1"
    assert got_two is not None and got_two.id == two.id
    assert got_two.thread_message_ids == (
        "<2a@gw.example>",
        "<agent-reply@city.example>",
        "<1a@gw.example>",
    )
    rows = select_rows(store, sa.select(email_messages).order_by(email_messages.c.message_id))
    assert [(r["message_id"], r["conversation_id"], r["direction"]) for r in rows] == [
        ("<1a@gw.example>", one.id, "out"),
        ("<1b@gw.example>", one.id, "out"),
        ("<2a@gw.example>", two.id, "out"),
        ("<agent-reply@city.example>", two.id, "in"),
    ]
    assert all(r["created_at"].tzinfo == UTC for r in rows)


def test_agent_touch_and_close(store: SqlStore) -> None:
    with store.transaction() as tx:
        conv = tx.create_conversation(PHONE, "ottawa", "tok-1", "s")
    start = conv.last_activity_at
    with store.transaction() as tx:
        tx.set_agent(conv.id, "agent@ottawa.example")
        tx.touch_conversation(conv.id, start + timedelta(minutes=10))
        tx.touch_conversation(conv.id, start - timedelta(days=1))  # never backwards
        with pytest.raises(KeyError):
            tx.set_agent(424242, "a@b.example")
        with pytest.raises(KeyError):
            tx.touch_conversation(424242, start)
        with pytest.raises(KeyError):
            tx.close_conversation(424242, start)
        with pytest.raises(ValueError, match="naive"):
            tx.touch_conversation(conv.id, datetime(2025, 1, 1))
    with store.transaction() as tx:
        got = tx.get_conversation(conv.id)
    assert got is not None and got.agent_address == "agent@ottawa.example"
    assert got.last_activity_at == start + timedelta(minutes=10)
    assert got.status == "open" and got.closed_at is None

    closed_at = start + timedelta(minutes=20)
    with store.transaction() as tx:
        tx.close_conversation(conv.id, closed_at)
        tx.close_conversation(conv.id, closed_at + timedelta(hours=1))  # already closed
        assert tx.open_conversation(PHONE, "ottawa") is None
        tx.set_agent(conv.id, None)
    with store.transaction() as tx:
        got = tx.get_conversation(conv.id)
        assert tx.conversation_by_token("tok-1") == got  # closed ones are still found
    assert got is not None and got.status == "closed" and got.closed_at == closed_at
    assert got.agent_address is None


def test_open_conversation_closes_idle_ones(store: SqlStore) -> None:
    with store.transaction() as tx:
        idle = tx.create_conversation(PHONE, "ottawa", "tok-idle", "s")
        elsewhere = tx.create_conversation(PHONE, "gatineau", "tok-else", "s")
    now = datetime.now(UTC)
    with store.transaction() as tx:
        active = tx.get_conversation(idle.id)
        assert active is not None
        last = active.last_activity_at
        # not idle: returned as usual
        assert tx.open_conversation(PHONE, "ottawa", idle_before=last) == active
        assert (
            tx.open_conversation(PHONE, "ottawa", idle_before=last - timedelta(hours=1)) == active
        )
        # idle since before the cutoff: closed, and not returned
        assert (
            tx.open_conversation(PHONE, "ottawa", idle_before=last + timedelta(seconds=1)) is None
        )
        assert tx.open_conversation(PHONE, "ottawa") is None
        # other municipalities and numbers are left alone
        assert tx.open_conversation(PHONE, "gatineau") == tx.get_conversation(elsewhere.id)
        with pytest.raises(ValueError, match="naive"):
            tx.open_conversation(PHONE, "gatineau", idle_before=datetime(2025, 1, 1))
    with store.transaction() as tx:
        closed = tx.get_conversation(idle.id)
        still = tx.get_conversation(elsewhere.id)
        fresh = tx.create_conversation(PHONE, "ottawa", "tok-fresh", "s")
        assert tx.open_conversation(PHONE, "ottawa", idle_before=now - timedelta(hours=1)) == fresh
    assert closed is not None and closed.status == "closed"
    assert closed.closed_at is not None and closed.closed_at >= now
    assert still is not None and still.status == "open"


# --- outbound messages: status, SID, the conversation's messages ------------------------------


def test_outbound_message_status(store: SqlStore) -> None:
    with store.transaction() as tx:
        conv = tx.create_conversation(PHONE, "ottawa", "tok-1", "s")
        inbound = tx.add_message(PHONE, conv.id, "in", "Nid-de-poule", [], "SMin", T0)
        reply = tx.add_message(
            PHONE,
            conv.id,
            "out",
            "On s'en occupe.",
            [],
            None,
            T0 + timedelta(minutes=5),
            status="queued",
            agent_address="agent@ottawa.example",
        )
        other = tx.add_message(PHONE, conv.id, "out", "x", [], "SMother", T0, status="queued")
        assert tx.message_by_provider_sid("SMnope") is None
        found_in = tx.message_by_provider_sid("SMin")
    assert found_in is not None and found_in.id == inbound and found_in.status is None
    assert found_in.agent_address is None and found_in.error_code is None
    before = select_rows(store, sa.select(messages.c.updated_at).where(messages.c.id == reply))[0]

    with store.transaction() as tx:
        tx.set_message_status(reply, "sent", provider_sid="SMreply")
    with store.transaction() as tx:
        sent = tx.message_by_provider_sid("SMreply")
        tx.set_message_status(reply, "undelivered", 30003)
    assert sent is not None and sent.id == reply and sent.direction == "out"
    assert (sent.status, sent.error_code, sent.agent_address) == (
        "sent",
        None,
        "agent@ottawa.example",
    )
    with store.transaction() as tx:
        failed = tx.message_by_provider_sid("SMreply")  # the SID stays when none is given
    assert failed is not None and (failed.status, failed.error_code) == ("undelivered", 30003)
    after = select_rows(store, sa.select(messages.c.updated_at).where(messages.c.id == reply))[0]
    assert after["updated_at"] >= before["updated_at"]

    with store.transaction() as tx:
        with pytest.raises(KeyError):
            tx.set_message_status(424242, "sent")
        with pytest.raises(ValueError):
            tx.set_message_status(reply, "")
    with pytest.raises(DuplicateWebhook) as err, store.transaction() as tx:
        tx.set_message_status(reply, "sent", provider_sid="SMother")  # another message's SID
    assert err.value.sid == "SMother"

    with store.transaction() as tx:
        tx.set_message_status(reply, "delivered")  # clears the error code
        listed = tx.messages_of(conv.id)
        assert tx.messages_of(424242) == []
    assert [m.id for m in listed] == [inbound, other, reply]  # by received_at, then id
    assert [m.direction for m in listed] == ["in", "out", "out"]
    final = listed[2]
    assert (final.status, final.error_code, final.provider_sid) == ("delivered", None, "SMreply")
    assert final.body == "On s'en occupe." and final.received_at == T0 + timedelta(minutes=5)


# --- processed emails -----------------------------------------------------------------------


def test_processed_emails(store: SqlStore) -> None:
    key = "sha256:" + "ab" * 32
    origin = {"kind": "imap", "mailbox": "INBOX", "uidvalidity": 4294967295, "uid": 7, "peer": None}
    with store.transaction() as tx:
        assert tx.processed_email(key) is None
        tx.record_processed_email(key, "processed", "conversation 1: texted in 1 part(s)", origin)
        tx.record_processed_email("sha256:" + "cd" * 32, "ignored", "automatic: bounce", {})
        with pytest.raises(ValueError, match="outcome"):
            tx.record_processed_email("k", "lost", "", {})  # type: ignore[arg-type]
    with store.transaction() as tx:
        assert tx.processed_email(key) == ("processed", "conversation 1: texted in 1 part(s)")
        assert tx.processed_email("sha256:" + "cd" * 32) == ("ignored", "automatic: bounce")
    (row,) = select_rows(store, sa.select(processed_emails).where(processed_emails.c.key == key))
    assert row["origin"] == origin and row["created_at"].tzinfo == UTC

    with pytest.raises(DuplicateEmail, match="already recorded") as err, store.transaction() as tx:
        tx.enqueue("sms", {"would": "be texted twice"})
        tx.record_processed_email(key, "failed", "again", origin)
    assert err.value.key == key
    assert store.list_outbox() == []  # the transaction rolled back
    with store.transaction() as tx:
        assert tx.processed_email(key) == ("processed", "conversation 1: texted in 1 part(s)")


def test_concurrent_record_processed_email_one_wins(store: SqlStore) -> None:
    """Two transactions record the same email at once: exactly one commits, the other
    gets DuplicateEmail (SQLite: after waiting for the write lock; PostgreSQL: after
    waiting on the key until the winner commits) and its SMS is never queued."""
    key = "sha256:" + "ee" * 32
    start = threading.Barrier(2)

    def handle(n: int) -> str:
        start.wait()
        try:
            with store.transaction() as tx:
                tx.enqueue("sms", {"n": n})
                tx.record_processed_email(key, "processed", f"worker {n}", {"n": n})
                time.sleep(0.2)  # hold the transaction open while the other one tries
        except DuplicateEmail:
            return "duplicate"
        return "won"

    results = in_threads(2, handle)
    assert sorted(results) == ["duplicate", "won"]
    winner = results.index("won")
    with store.transaction() as tx:
        assert tx.processed_email(key) == ("processed", f"worker {winner}")
    assert [item.payload for item in store.list_outbox()] == [{"n": winner}]


# --- IMAP checkpoints -----------------------------------------------------------------------


def test_imap_checkpoints(store: SqlStore) -> None:
    assert store.imap_checkpoint("INBOX") is None
    store.save_imap_checkpoint("INBOX", 1700000000, 41)
    store.save_imap_checkpoint("INBOX/Réponses", 2**32 - 1, 2**32 - 1)  # IMAP's largest
    assert store.imap_checkpoint("INBOX") == (1700000000, 41)
    assert store.imap_checkpoint("INBOX/Réponses") == (2**32 - 1, 2**32 - 1)
    assert store.imap_checkpoint("inbox") is None  # names are exact

    store.save_imap_checkpoint("INBOX", 1700000000, 57)
    assert store.imap_checkpoint("INBOX") == (1700000000, 57)
    store.save_imap_checkpoint("INBOX", 1800000000, 0)  # UIDVALIDITY changed: start over
    assert store.imap_checkpoint("INBOX") == (1800000000, 0)

    for uidvalidity, last_uid in ((-1, 0), (1, -5), (2**63, 0)):
        with pytest.raises(ValueError):
            store.save_imap_checkpoint("INBOX", uidvalidity, last_uid)
    with pytest.raises(TypeError):
        store.save_imap_checkpoint("INBOX", True, 1)
    with pytest.raises(ValueError):
        store.save_imap_checkpoint("", 1, 1)
    assert store.imap_checkpoint("INBOX") == (1800000000, 0)


def test_code_outside_the_store_depends_on_its_protocols_only() -> None:
    """Outside gateway/store/, the store is the `Store` / `Tx` protocols and the public
    functions of gateway/store/: nothing names (casts to, checks for) SqlStore or SqlTx."""
    gateway = REPO_ROOT / "gateway"
    found = [
        f"{path.relative_to(REPO_ROOT)}:{n}: {line.strip()}"
        for path in sorted(gateway.rglob("*.py"))
        if (gateway / "store") not in path.parents
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if "SqlStore" in line or "SqlTx" in line
    ]
    assert found == []
