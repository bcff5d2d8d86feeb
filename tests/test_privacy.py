"""Retention (texts blanked, counts kept), and a resident's access and erasure requests,
on both store backends; and the `sms311 privacy` commands."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from gateway.cli import main
from gateway.store import Resident, SqlStore, open_store
from gateway.store.privacy import delete_resident, export_resident, purge_texts
from gateway.store.reply_mail import keep_failed_email, list_failed_emails
from gateway.store.schema import conversations, messages
from tests.gateway_fixtures import write_settings

# The store fixtures (tests/conftest.py): every test here runs on SQLite and on PostgreSQL.

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
OLD = NOW - timedelta(days=400)
PHONE, OTHER = "+16135550123", "+15145550199"


def populate(store: SqlStore, phone: str, at: datetime) -> int:
    with store.transaction() as tx:
        tx.save_resident(Resident(phone=phone, municipality_id="ottawa", language="en",
                                  opted_out=False, dialogue={}))
        conversation = tx.create_conversation(phone, "ottawa", "a" * 32 + phone[-4:], "subject")
        message_id = tx.add_message(phone, conversation.id, "in", f"pothole near {phone}",
                                    [{"url": "https://x/m", "content_type": "image/jpeg"}],
                                    None, at)
        tx.record_thread_email(conversation.id, f"<{phone}@gw.example>")
        tx.enqueue("email", {"type": "resident", "resident_e164": phone, "texts": ["..."]})
        tx.hold_message(phone, "held text", [], None, at)
        tx.queue_inbound(f"SM{phone[1:]}", phone, "31100", "queued text", [], at)
        keep_failed_email(tx, f"sha256:{phone}", b"Subject: re\r\n\r\nagent reply",
                          "empty reply", {"kind": "smtp"}, now=at,
                          conversation_id=conversation.id)
    return message_id


def bodies(store: SqlStore) -> list[tuple[str, str]]:
    with store.engine.connect() as conn:
        return [(r.phone, r.body) for r in conn.execute(
            sa.select(messages.c.phone, messages.c.body).order_by(messages.c.id))]


def test_purge_blanks_old_texts_and_keeps_the_rows(store: SqlStore) -> None:
    populate(store, PHONE, OLD)
    populate(store, OTHER, NOW)
    for item in store.claim_due(["email"], 10, NOW + timedelta(days=1), timedelta(minutes=1), "t"):
        store.mark_sent(item.id)
    result = purge_texts(store, NOW - timedelta(days=365), now=NOW)
    assert result.texts_blanked == 1
    assert result.failed_emails_deleted == 1  # the old failed reply kept for the operator
    with store.transaction() as tx:
        assert [f.key for f in list_failed_emails(tx)] == [f"sha256:{OTHER}"]
    assert bodies(store) == [(PHONE, ""), (PHONE, "held text"),
                             (OTHER, f"pothole near {OTHER}"), (OTHER, "held text")]
    export = export_resident(store, PHONE)
    assert export["messages"][0]["media"] == []
    assert purge_texts(store, NOW - timedelta(days=365), now=NOW).texts_blanked == 0


def test_export_has_everything_about_one_number_and_nothing_else(store: SqlStore) -> None:
    populate(store, PHONE, NOW)
    populate(store, OTHER, NOW)
    export = export_resident(store, PHONE)
    text = json.dumps(export)
    assert OTHER not in text
    assert export["resident"][0]["phone"] == PHONE
    assert len(export["conversations"]) == 1 and len(export["messages"]) == 2
    assert len(export["outbox"]) == 1 and len(export["email_messages"]) == 1
    assert [f["reason"] for f in export["failed_emails"]] == ["empty reply"]
    assert "raw" not in export["failed_emails"][0]


def test_export_leaves_out_reply_tokens_and_message_ids(store: SqlStore) -> None:
    """Whoever holds an export must not be able to route a forged reply into the
    resident's conversation: no reply token (the Reply-To address), no Message-ID."""
    populate(store, PHONE, NOW)
    token = "a" * 32 + PHONE[-4:]
    with store.engine.connect() as conn:
        conversation_id = conn.execute(
            sa.select(conversations.c.id).where(conversations.c.phone == PHONE)
        ).scalar_one()
    sent_id, earlier = "<f00d1234.5678@gw.example>", f"<{PHONE}@gw.example>"
    with store.transaction() as tx:
        tx.record_thread_email(conversation_id, sent_id)
        tx.enqueue("email", {
            "type": "resident", "resident_e164": PHONE, "conversation_id": conversation_id,
            "from_address": "311 Text <sms@gw.example>", "to": ["311@ottawa.example"],
            "reply_to": f"reply+{token}@gw.example", "subject": "Text from 613-555-0123",
            "message_id": sent_id, "in_reply_to": earlier, "references": [earlier],
            "texts": [{"body": "pothole", "received_at": NOW.isoformat(), "media": []}],
            "note": f"answer to reply+{token}@gw.example (In-Reply-To {earlier})",
        })
    export = export_resident(store, PHONE)
    text = json.dumps(export)
    for secret in (token, sent_id, earlier, sent_id.strip("<>"), earlier.strip("<>")):
        assert secret not in text
    (conversation_row,) = export["conversations"]
    assert conversation_row["subject"] == "subject" and "token" not in conversation_row
    assert "thread_message_ids" not in conversation_row
    assert [sorted(e) for e in export["email_messages"]] == [
        ["conversation_id", "created_at", "direction"]] * 2  # the emails, not their ids
    email = next(o["payload"] for o in export["outbox"] if "note" in o["payload"])
    assert email["texts"][0]["body"] == "pothole" and email["to"] == ["311@ottawa.example"]
    assert email["note"] == "answer to [withheld] (In-Reply-To [withheld])"
    assert not {"reply_to", "in_reply_to", "references", "message_id"} & set(email)


def test_delete_erases_one_number_only(store: SqlStore) -> None:
    populate(store, PHONE, NOW)
    populate(store, OTHER, NOW)
    counts = delete_resident(store, PHONE)
    assert counts == {"outbox": 1, "email_messages": 1, "messages": 2, "conversations": 1,
                      "resident": 1, "failed_emails": 1, "inbound_texts": 1}
    after = export_resident(store, PHONE)
    assert not any(
        after[k] for k in ("resident", "conversations", "messages", "outbox", "inbound_texts")
    )
    assert [t["body"] for t in export_resident(store, OTHER)["inbound_texts"]] == ["queued text"]
    assert len(export_resident(store, OTHER)["messages"]) == 2


def test_privacy_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = str(write_settings(tmp_path))
    assert main(["--config", config, "db", "upgrade"]) == 0
    sqlite = open_store(f"sqlite:///{tmp_path / 'gateway.db'}")
    populate(sqlite, PHONE, OLD)
    sqlite.close()
    capsys.readouterr()
    assert main(["--config", config, "privacy", "export", "613-555-0123"]) == 0
    assert json.loads(capsys.readouterr().out)["resident"][0]["phone"] == PHONE
    assert main(["--config", config, "privacy", "purge"]) == 0
    assert "1 blanked" in capsys.readouterr().out
    assert main(["--config", config, "privacy", "delete", "613-555-0123"]) == 2  # needs --yes
    assert main(["--config", config, "privacy", "delete", "613-555-0123", "--yes"]) == 0
    assert "erased +16135550123" in capsys.readouterr().out
    assert main(["--config", config, "privacy", "export", "not a number"]) == 2


def test_the_worker_purges_daily(tmp_path: Path) -> None:
    import asyncio

    from gateway.app import Gateway
    from gateway.run.housekeeping import retention_loop
    from tests.gateway_fixtures import settings_in

    settings = settings_in(tmp_path / "gw", extra="privacy: {retention_days: 30}\n")
    sqlite = open_store(settings.database)
    sqlite.upgrade()
    populate(sqlite, PHONE, datetime.now(UTC) - timedelta(days=31))
    sqlite.close()
    gateway = Gateway.from_settings(settings)

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(retention_loop(gateway, stop, first_after=0, every=3600))
        for _ in range(100):
            await asyncio.sleep(0.02)
            if bodies(gateway.store)[0][1] == "":  # type: ignore[arg-type]
                break
        stop.set()
        await task

    asyncio.run(scenario())
    assert bodies(gateway.store)[0] == (PHONE, "")  # type: ignore[arg-type]
    gateway.close()


def test_the_worker_forgets_old_console_form_keys_even_without_retention(tmp_path: Path) -> None:
    import asyncio

    from gateway.app import Gateway
    from gateway.run.housekeeping import retention_loop
    from tests.console_fixtures import add_user
    from tests.gateway_fixtures import settings_in

    settings = settings_in(tmp_path / "gw", extra="privacy: {retention_days: 0}\n")
    sqlite = open_store(settings.database)
    sqlite.upgrade()
    sqlite.close()
    gateway = Gateway.from_settings(settings)
    user = add_user(gateway, "dana@ottawa.example", "Dana")
    now = datetime.now(UTC)
    with gateway.console.transaction() as tx:
        assert tx.claim_request("old-key", user.id, now - timedelta(days=2))
        assert tx.claim_request("new-key", user.id, now)

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(retention_loop(gateway, stop, first_after=0, every=3600))
        for _ in range(250):
            await asyncio.sleep(0.02)
            if keys() == ["new-key"]:
                break
        stop.set()
        await task

    def keys() -> list[str]:
        from gateway.store.schema import console_requests

        with gateway.store.engine.connect() as conn:  # type: ignore[attr-defined]
            return list(conn.execute(sa.select(console_requests.c.key)).scalars())

    asyncio.run(scenario())
    assert keys() == ["new-key"]
    with gateway.console.transaction() as tx:
        assert tx.claim_request("old-key", user.id, now)  # forgotten: claimable again
        assert not tx.claim_request("new-key", user.id, now)  # still remembered
    gateway.close()
