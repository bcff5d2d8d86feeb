"""The console's conversation list (gateway.store.console) on both backends: filters, rows
and order, keyset paging, unread marks, phone and word search, and the trigram text index of
migration 0005 (used, kept up to date, literal, built and dropped, and its absence without
pg_trgm). The shared helpers are in tests/console_store_helpers.py.
"""

from __future__ import annotations

import secrets
from datetime import timedelta

import pytest
import sqlalchemy as sa
from alembic import command

from gateway.store import SqlStore, open_store
from gateway.store.console import ConsoleStore, Scope, User, phone_digits
from gateway.store.console import inbox as console_module
from gateway.store.privacy import delete_resident
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


# --- the list -------------------------------------------------------------------------------


def test_list_filters_rows_and_order(console: ConsoleStore) -> None:
    agent = new_user(console, "a@ottawa.example")
    with console.transaction() as tx:
        mine = new_conversation(tx, PHONE, "ottawa", T0, "mine", agent=agent.email)
        theirs = new_conversation(tx, OTHER, "ottawa", T0 + timedelta(minutes=1), "theirs",
                                  agent="b@ottawa.example")
        free = new_conversation(tx, "+16135550177", "ottawa", T0 + timedelta(minutes=2), "free")
        done = new_conversation(tx, "+16135550188", "ottawa", T0 + timedelta(minutes=3), "done")
        tx.core.close_conversation(done, T0 + timedelta(minutes=4))
        long = "x" * 200
        tx.core.add_message(PHONE, mine, "out", long, [], None, T0 + timedelta(seconds=30),
                            status="queued", agent_address=agent.email, via="console")
    assert listed_ids(console, OTTAWA, "open", user=agent) == [free, theirs, mine]
    assert listed_ids(console, OTTAWA, "closed", user=agent) == [done]
    assert listed_ids(console, OTTAWA, "mine", user=agent) == [mine]
    assert listed_ids(console, OTTAWA, "unassigned", user=agent) == [free]
    assert listed_ids(console, OTTAWA, "all", user=agent) == [done, free, theirs, mine]
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
            ids.append((at, new_conversation(tx, f"+1613555{i:04d}", "ottawa", at)))
    expected = [cid for at, cid in sorted(ids, key=lambda p: (p[0], p[1]), reverse=True)]
    for limit in (1, 2, 3, 5, 22, 23, 50):
        assert listed_ids(console, OTTAWA, "all", limit=limit) == expected
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
            cid = new_conversation(tx, f"+1819555{i:04d}", city, at)
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
                assert listed_ids(console, scope, which, limit=limit) == expected, (scope, which)


def test_unread_follows_new_texts_and_read_marks(console: ConsoleStore) -> None:
    agent = new_user(console, "a@ottawa.example")
    other = new_user(console, "b@ottawa.example")
    with console.transaction() as tx:
        conv = new_conversation(tx, PHONE, "ottawa", T0)
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
        a = new_conversation(tx, PHONE, "ottawa", T0, "Big POTHOLE on Bank St")
        tx.core.add_message(PHONE, a, "in", "near the 100% school", [], None, T0)
        b = new_conversation(tx, "+16135559876", "ottawa", T0 + timedelta(1),
                             "Garbage day_2 missed")
        c = new_conversation(tx, "+447700900456", "ottawa", T0 + timedelta(2), "pot hole")
    for query in ("613-555-0123", "(613) 555 0123", "+1 613 555 0123", "6135550123", "0123",
                  "5550123"):
        assert listed_ids(console, OTTAWA, query=query) == [a], query
    assert listed_ids(console, OTTAWA, query="613555") == [b, a]
    assert listed_ids(console, OTTAWA, query="0123") == [a]
    assert listed_ids(console, OTTAWA, query="900456") == [c]
    assert listed_ids(console, OTTAWA, query="pothole") == [a]
    assert listed_ids(console, OTTAWA, query="pothole school") == [a]  # words in different texts
    assert listed_ids(console, OTTAWA, query="BANK pothole") == [a]
    assert listed_ids(console, OTTAWA, query="pothole garbage") == []
    assert listed_ids(console, OTTAWA, query="pot") == [c, a]
    assert listed_ids(console, OTTAWA, query="100%") == [a]
    assert listed_ids(console, OTTAWA, query="0%") == [a]
    assert listed_ids(console, OTTAWA, query="%") == [a]  # escaped: a literal percent sign
    assert listed_ids(console, OTTAWA, query="_") == [b]
    assert listed_ids(console, OTTAWA, query="y_2") == [b]
    assert listed_ids(console, OTTAWA, query="   ") == [c, b, a]
    assert listed_ids(console, OTTAWA, "closed", query="pothole") == []
    assert listed_ids(console, OTTAWA, "all", query="pot", limit=1) == [c, a]  # paged
    assert listed_ids(console, OTTAWA, "open", query="school near") == [a]
    assert listed_ids(console, Scope(frozenset({"toronto"})), query="pothole") == []
    with console.transaction() as tx:
        d = new_conversation(tx, "+18195550111", "ottawa", T0 + timedelta(3), "Devant l'ÉCOLE Saint-Jean")
    assert listed_ids(console, OTTAWA, query="saint-JEAN cole") == [d]
    # non-ASCII letters: case-insensitive on PostgreSQL; SQLite's LIKE folds ASCII only
    pg = console.store.engine.dialect.name == "postgresql"
    assert listed_ids(console, OTTAWA, query="école") == ([d] if pg else [])
    assert listed_ids(console, OTTAWA, query="ÉCOLE") == [d]


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
        rare = new_conversation(tx, PHONE, "ottawa", T0, "A SINKHOLE opened on Elgin St")
        for i in range(5):
            new_conversation(tx, f"+1613555{i:04d}", "ottawa", T0 + timedelta(i + 1),
                             f"pothole {i}")
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
        assert listed_ids(console, OTTAWA, query=query) == [rare], query
    assert listed_ids(console, OTTAWA, query="sinkhole pothole") == []
    assert listed_ids(console, OTTAWA, query="xylophone") == []
    assert listed_ids(console, OTTAWA, query="pothole", limit=2) == listed_ids(
        console, OTTAWA, query="pothole")[:5]


def test_the_index_follows_new_blanked_and_erased_texts(
    console: ConsoleStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway.store.privacy import purge_texts

    monkeypatch.setattr(console_module, "_PROBE", 1)
    store = console.store
    with console.transaction() as tx:
        old = new_conversation(tx, PHONE, "ottawa", T0, "old text about a sinkhole")
        other = new_conversation(tx, OTHER, "ottawa", T0 + timedelta(1), "nothing here")
    assert listed_ids(console, OTTAWA, query="sinkhole") == [old]
    with console.transaction() as tx:  # a text after the migration: the insert trigger
        tx.core.add_message(OTHER, other, "in", "another sinkhole, and a streetlight", [], None,
                            T0 + timedelta(days=400))
    assert _text_index(store)
    assert listed_ids(console, OTTAWA, query="sinkhole") == [other, old]
    assert listed_ids(console, OTTAWA, query="streetlight") == [other]
    # the privacy purge blanks the old texts (UPDATE of body): the update trigger
    assert purge_texts(store, T0 + timedelta(days=30)).texts_blanked == 2
    assert _text_index(store)
    assert listed_ids(console, OTTAWA, query="sinkhole") == [other]
    assert listed_ids(console, OTTAWA, query="nothing") == []
    if not _pg(store):
        assert len(_indexed(store, "sinkhole")) == 1 and _indexed(store, "nothing") == []
    # erasure deletes the resident's texts: the delete trigger
    delete_resident(store, OTHER)
    assert _text_index(store)
    assert listed_ids(console, OTTAWA, query="sinkhole") == []
    assert listed_ids(console, OTTAWA, query="streetlight") == []
    if not _pg(store):
        assert _indexed(store, "sinkhole") == [] and _indexed(store, "streetlight") == []


@pytest.mark.parametrize("probe", [1000, 1])
def test_fts_syntax_in_a_word_is_literal(console: ConsoleStore, probe: int,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(console_module, "_PROBE", probe)
    texts = ['she said "hi there" twice', "a*b*c stars", "NEAR(the school)", "this OR that",
             "co-op housing", "col:umn ^caret {brace} AND NOT", 'one " quote']
    with console.transaction() as tx:
        ids = [new_conversation(tx, f"+1613555{i:04d}", "ottawa", T0 + timedelta(i), text)
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
        assert listed_ids(console, OTTAWA, query=query) == sorted(expected, reverse=True), query


def test_migration_builds_the_index_from_existing_texts_and_downgrades(
    empty_store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(console_module, "_PROBE", 1)
    with empty_store.engine.begin() as conn:
        command.upgrade(alembic_config(conn), "0004")
    assert not _text_index(empty_store)
    console = ConsoleStore(empty_store)
    with console.transaction() as tx:  # (at 0004 the tables are schema.py's)
        before = new_conversation(tx, PHONE, "ottawa", T0, "a sinkhole before the index")
    assert listed_ids(console, OTTAWA, query="sinkhole") == [before]  # the LIKE pass
    empty_store.upgrade()
    assert _text_index(empty_store)
    if not _pg(empty_store):
        assert len(_indexed(empty_store, "sinkhole")) == 1  # backfilled
    assert listed_ids(console, OTTAWA, query="sinkhole") == [before]
    with console.transaction() as tx:
        after = new_conversation(tx, OTHER, "ottawa", T0 + timedelta(1), "a sinkhole after it")
    assert listed_ids(console, OTTAWA, query="sinkhole") == [after, before]
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
    assert listed_ids(console, OTTAWA, query="sinkhole") == [after, before]
    assert listed_ids(console, OTTAWA, query="streetlight") == [before]
    empty_store.upgrade()
    assert _text_index(empty_store)
    assert listed_ids(console, OTTAWA, query="streetlight") == [before]


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
                    a = new_conversation(tx, PHONE, "ottawa", T0, "A SINKHOLE on Bank St")
                assert listed_ids(console, OTTAWA, query="sinkhole") == [a]
                assert listed_ids(console, OTTAWA, query="sinkhole bank") == [a]
                assert listed_ids(console, OTTAWA, query="xylophone") == []
            finally:
                store.close()
        finally:
            with connect(dbname) as conn:
                conn.execute("DROP SCHEMA app CASCADE")
                conn.execute(f'DROP ROLE "{role}"')
