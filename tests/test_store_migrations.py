"""The store's schema and its migrations, on both backends: upgrading an empty database,
the schema check, the migrations against gateway/store/schema.py, and migrations 0002 and
0008 on a database that already holds data (and back down). See test_store.py for the
PostgreSQL test server; the constants and helpers are in tests/store_helpers.py.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from gateway.store import DuplicateWebhook, SchemaOutOfDate, SqlStore
from gateway.store.schema import JSONText, UTCDateTime, email_messages, messages, metadata
from gateway.store.sql import alembic_config, head_revision
from tests.store_helpers import PHONE, T0, select_rows


def test_upgrade_from_empty(empty_store: SqlStore) -> None:
    assert empty_store.current_revision() is None
    with pytest.raises(SchemaOutOfDate, match=r"run `sms311 db upgrade`") as err:
        empty_store.check_schema()
    assert err.value.current is None
    assert err.value.head == head_revision()

    empty_store.upgrade()
    assert empty_store.current_revision() == head_revision()
    empty_store.check_schema()
    empty_store.upgrade()  # idempotent
    empty_store.check_schema()
    tables = set(sa.inspect(empty_store.engine).get_table_names())
    assert {"residents", "conversations", "messages", "webhook_log", "outbox"} <= tables
    assert {"email_messages", "processed_emails", "imap_checkpoints"} <= tables


def test_check_schema_on_old_database(store: SqlStore) -> None:
    with store.engine.begin() as conn:
        command.downgrade(alembic_config(conn), "base")
    assert store.current_revision() is None
    assert "outbox" not in sa.inspect(store.engine).get_table_names()
    with pytest.raises(SchemaOutOfDate, match=r"database schema is at .*, this version needs"):
        store.check_schema()
    store.upgrade()
    store.check_schema()


def test_check_schema_on_unknown_revision(store: SqlStore) -> None:
    with store.engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = 'f00dfeed'"))
    with pytest.raises(SchemaOutOfDate, match="does not know") as err:
        store.check_schema()
    assert err.value.current == "f00dfeed"


_TEXT_INDEX_TABLES = frozenset({"messages_fts", "messages_fts_data", "messages_fts_idx",
                                "messages_fts_config"})


def _not_in_schema_module(obj: Any, name: str | None, type_: str, reflected: bool,
                          compare_to: Any) -> bool:
    # Migration 0005's trigram text index is raw DDL, not in schema.py: SQLite's FTS5 table
    # and its shadow tables (its triggers are not compared), PostgreSQL's GIN index.
    # Ignore exactly those.
    if type_ == "table" and reflected:
        return name not in _TEXT_INDEX_TABLES
    return not (type_ == "index" and reflected and name == "ix_messages_body_trgm")


def test_migrations_match_schema_module(store: SqlStore) -> None:
    with store.engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"compare_type": True, "include_object": _not_in_schema_module}
        )
        assert compare_metadata(context, metadata) == []


# --- migration 0002 (replies) on a database with data ---------------------------------------

# The tables as revision 0001 made them (the schema module describes the newest revision).
_V1_RESIDENTS = sa.table(
    "residents",
    sa.column("phone"),
    sa.column("municipality_id"),
    sa.column("language"),
    sa.column("opted_out", sa.Boolean()),
    sa.column("dialogue", JSONText()),
    sa.column("created_at", UTCDateTime()),
    sa.column("updated_at", UTCDateTime()),
)
_V1_CONVERSATIONS = sa.table(
    "conversations",
    sa.column("id"),
    sa.column("token"),
    sa.column("phone"),
    sa.column("municipality_id"),
    sa.column("subject"),
    sa.column("status"),
    sa.column("thread_message_ids", JSONText()),
    sa.column("agent_address"),
    sa.column("created_at", UTCDateTime()),
    sa.column("last_activity_at", UTCDateTime()),
)
_V1_MESSAGES = sa.table(
    "messages",
    sa.column("id"),
    sa.column("phone"),
    sa.column("conversation_id"),
    sa.column("direction"),
    sa.column("body"),
    sa.column("media", JSONText()),
    sa.column("provider_sid"),
    sa.column("held", sa.Boolean()),
    sa.column("received_at", UTCDateTime()),
)
_V1_WEBHOOK_LOG = sa.table(
    "webhook_log", sa.column("sid"), sa.column("response"), sa.column("created_at", UTCDateTime())
)
_V1_OUTBOX = sa.table(
    "outbox",
    sa.column("id"),
    sa.column("kind"),
    sa.column("payload", JSONText()),
    sa.column("status"),
    sa.column("attempts"),
    sa.column("next_attempt_at", UTCDateTime()),
    sa.column("created_at", UTCDateTime()),
    sa.column("updated_at", UTCDateTime()),
)


def _fill_revision_0001(conn: sa.Connection) -> dict[str, int]:
    """Rows as issue 2 wrote them; returns the ids."""
    conn.execute(
        _V1_RESIDENTS.insert().values(
            phone=PHONE,
            municipality_id="ottawa",
            language="fr",
            opted_out=False,
            dialogue={"step": "done", "nom": "Montréal"},
            created_at=T0,
            updated_at=T0,
        )
    )

    def conversation(token: str, status: str, chain: list[str], at: datetime) -> int:
        stmt = _V1_CONVERSATIONS.insert().values(
            token=token,
            phone=PHONE,
            municipality_id="ottawa",
            subject=f"Texto {token}",
            status=status,
            thread_message_ids=chain,
            agent_address=None,
            created_at=at,
            last_activity_at=at + timedelta(minutes=5),
        )
        return int(conn.execute(stmt.returning(_V1_CONVERSATIONS.c.id)).scalar_one())

    old = conversation("tok-old", "closed", ["<old1@gw.example>"], T0)
    live = conversation(
        "tok-live",
        "open",
        ["<a@gw.example>", "<b@gw.example>", "<a@gw.example>"],
        T0 + timedelta(hours=1),
    )
    photo = {"url": "https://api.example/Media/ME1", "content_type": "image/jpeg"}

    def message(conversation_id: int | None, sid: str | None, held: bool, at: datetime) -> int:
        stmt = _V1_MESSAGES.insert().values(
            phone=PHONE,
            conversation_id=conversation_id,
            direction="in",
            body=f"text {sid}",
            media=[photo],
            provider_sid=sid,
            held=held,
            received_at=at,
        )
        return int(conn.execute(stmt.returning(_V1_MESSAGES.c.id)).scalar_one())

    ids = {
        "old": old,
        "live": live,
        "m_old": message(old, "SMold", False, T0),
        "m_live": message(live, "SMlive", False, T0 + timedelta(hours=1)),
        "m_held": message(None, None, True, T0 + timedelta(hours=2)),
    }
    conn.execute(
        _V1_WEBHOOK_LOG.insert().values(sid="SMlive", response="<Response/>", created_at=T0)
    )
    conn.execute(
        _V1_OUTBOX.insert().values(
            kind="email",
            payload={"type": "resident", "n": 1},
            status="pending",
            attempts=2,
            next_attempt_at=T0,
            created_at=T0,
            updated_at=T0,
        )
    )
    return ids


def test_migration_0002_keeps_and_backfills_data(empty_store: SqlStore) -> None:
    store = empty_store
    with store.engine.begin() as conn:
        command.upgrade(alembic_config(conn), "0001")
    assert store.current_revision() == "0001"
    with store.engine.begin() as conn:
        ids = _fill_revision_0001(conn)

    store.upgrade()
    assert store.current_revision() == head_revision()
    store.check_schema()

    with store.transaction() as tx:
        resident = tx.get_resident(PHONE)
        old = tx.get_conversation(ids["old"])
        live = tx.get_conversation(ids["live"])
        assert tx.webhook_response("SMlive") == "<Response/>"
        by_email = tx.conversation_by_email(["<b@gw.example>"])
        by_old_email = tx.conversation_by_email(["<old1@gw.example>"])
        found = tx.message_by_provider_sid("SMlive")
        old_messages = tx.messages_of(ids["old"])
        held = tx.take_held(PHONE)
    assert resident is not None and resident.dialogue == {"step": "done", "nom": "Montréal"}
    assert old is not None and old.status == "closed" and old.closed_at is None
    assert live is not None and live.status == "open" and live.closed_at is None
    assert live.thread_message_ids == ("<a@gw.example>", "<b@gw.example>", "<a@gw.example>")
    assert live.last_activity_at == T0 + timedelta(hours=1, minutes=5)
    assert by_email == live and by_old_email == old
    assert found is not None and found.id == ids["m_live"] and found.conversation_id == live.id
    assert (found.status, found.error_code, found.agent_address) == (None, None, None)
    assert found.media == ({"url": "https://api.example/Media/ME1", "content_type": "image/jpeg"},)
    assert [m.id for m in old_messages] == [ids["m_old"]]
    assert [m.id for m in held] == [ids["m_held"]]
    (item,) = store.list_outbox()
    assert item.payload == {"type": "resident", "n": 1} and item.attempts == 2

    # backfill: each thread email once, "out", at its conversation's created_at
    rows = select_rows(store, sa.select(email_messages).order_by(email_messages.c.message_id))
    assert [
        (r["message_id"], r["conversation_id"], r["direction"], r["created_at"]) for r in rows
    ] == [
        ("<a@gw.example>", live.id, "out", live.created_at),
        ("<b@gw.example>", live.id, "out", live.created_at),
        ("<old1@gw.example>", old.id, "out", old.created_at),
    ]
    # messages.updated_at: the received_at of the rows that existed
    stamps = select_rows(
        store, sa.select(messages.c.id, messages.c.received_at, messages.c.updated_at)
    )
    assert stamps and all(r["updated_at"] == r["received_at"] for r in stamps)

    # the rebuilt messages table kept its constraints and its id sequence
    with pytest.raises(DuplicateWebhook), store.transaction() as tx:
        tx.add_message(PHONE, live.id, "in", "again", [], "SMlive", T0)
    with pytest.raises(sa.exc.IntegrityError), store.engine.begin() as conn:
        conn.execute(
            messages.insert().values(
                phone=PHONE,
                direction="sideways",
                body="",
                media=[],
                held=False,
                received_at=T0,
                updated_at=T0,
            )
        )
    with store.transaction() as tx:
        new = tx.add_message(PHONE, live.id, "out", "Réponse", [], None, T0, status="queued")
        conv = tx.create_conversation(PHONE, "gatineau", "tok-new", "s")
    assert new > max(ids["m_old"], ids["m_live"], ids["m_held"]) and conv.id > live.id
    with store.engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"compare_type": True, "include_object": _not_in_schema_module}
        )
        assert compare_metadata(context, metadata) == []

    # and back down to 0001 without losing what it had (no foreign-key action fires)
    with store.engine.begin() as conn:
        command.downgrade(alembic_config(conn), "0001")
    assert store.current_revision() == "0001"
    tables = set(sa.inspect(store.engine).get_table_names())
    assert "email_messages" not in tables and "imap_checkpoints" not in tables
    links = select_rows(store, sa.select(_V1_MESSAGES.c.id, _V1_MESSAGES.c.conversation_id))
    assert {r["id"]: r["conversation_id"] for r in links}[ids["m_live"]] == live.id
    store.upgrade()
    store.check_schema()


# --- migration 0008 (maybe_sent) on a database with data ------------------------------------


def test_migration_0008_marks_rows_already_tried_as_maybe_sent(empty_store: SqlStore) -> None:
    """Before 0008 every retry was looked up: the rows already tried keep that."""
    store = empty_store
    with store.engine.begin() as conn:
        command.upgrade(alembic_config(conn), "0007")
        for n, (status, attempts) in enumerate((("pending", 2), ("pending", 0), ("sent", 1))):
            conn.execute(_V1_OUTBOX.insert().values(
                kind="sms", payload={"n": n}, status=status, attempts=attempts,
                next_attempt_at=T0, created_at=T0, updated_at=T0,
            ))
    store.upgrade()
    store.check_schema()
    assert [(i.payload["n"], i.maybe_sent) for i in store.list_outbox()] == [
        (0, True), (1, False), (2, False)
    ]
    with store.transaction() as tx:  # new rows: not tried, nothing to look up
        tx.enqueue("sms", {"n": 3}, T0)
    assert store.list_outbox()[-1].maybe_sent is False
    with store.engine.begin() as conn:
        command.downgrade(alembic_config(conn), "0007")
    assert "maybe_sent" not in {c["name"] for c in sa.inspect(store.engine).get_columns("outbox")}
    assert len(select_rows(store, sa.select(_V1_OUTBOX.c.id))) == 4


def test_the_revisions_read_from_the_files_are_alembics() -> None:
    """A running gateway reads the migration history without loading Alembic
    (gateway.store.sql._revisions): the same head and the same revisions as Alembic's."""
    from alembic.script import ScriptDirectory

    from gateway.store.sql import alembic_config, head_revision, known_revisions

    script = ScriptDirectory.from_config(alembic_config())
    assert head_revision() == script.get_current_head()
    assert known_revisions() == frozenset(r.revision for r in script.walk_revisions())
