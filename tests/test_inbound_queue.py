"""The webhook's split (issue 16): a text that needs no answer is stored durably and
answered at once; the worker turns it into the email. Through the real webhook (Flask's
test client, signed requests) over a real SQLite store, and the queue's SQL on PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from flask.testing import FlaskClient

from gateway.app import Gateway
from gateway.rules.resident_email import ResidentEmail
from gateway.run.inbound import BUSY_PER_RESIDENT, MAX_PER_RESIDENT, InboundProcessor
from gateway.store import Resident as ResidentRow
from gateway.store import Store, TextToQueue, open_store
from gateway.store.schema import inbound_texts, messages
from gateway.web import create_app
from tests.gateway_fixtures import TEST_MAP, Resident, twilio_form, twiml_messages

PHONE = "+16135550161"


@pytest.fixture
def client(gateway: Gateway) -> FlaskClient:
    return create_app(gateway).test_client()


@pytest.fixture
def resident(client: FlaskClient, gateway: Gateway) -> Resident:
    """A driver whose worker does NOT run after each text (the queue is looked at)."""
    driver = Resident(client, gateway.settings)
    driver.say(PHONE, "Garbage was not collected", expect="city|town")
    driver.say(PHONE, "K1A 0B1", expect="Ottawa")  # the city is known from here on
    driver.worker = False
    return driver


def queued(gateway: Gateway) -> list[str]:
    engine = sa.create_engine(gateway.settings.database)
    try:
        with engine.connect() as conn:
            query = sa.select(inbound_texts.c.body).order_by(inbound_texts.c.id)
            return [str(body) for body in conn.execute(query).scalars()]
    finally:
        engine.dispose()


def emailed(gateway: Gateway) -> list[tuple[tuple[str, ...], list[str]]]:
    """(To, texts) of each resident email in the outbox, oldest first."""
    out = []
    for item in gateway.store.list_outbox(None):
        if item.kind == "email" and item.payload.get("type", "resident") == "resident":
            email = ResidentEmail.from_dict(item.payload)
            out.append((email.to, [t.body for t in email.texts]))
    return out


def sms_queued(gateway: Gateway) -> list[tuple[str, str]]:
    return [
        (str(i.payload["to"]), str(i.payload["body"]))
        for i in gateway.store.list_outbox(None)
        if i.kind == "sms"
    ]


def test_a_known_residents_text_is_stored_answered_and_emailed_by_the_worker(
    resident: Resident, gateway: Gateway
) -> None:
    before = len(emailed(gateway))
    resident.say(PHONE, "The streetlight on Bank St is out", silent=True)
    assert queued(gateway) == ["The streetlight on Bank St is out"]
    assert len(emailed(gateway)) == before  # nothing emailed by the webhook itself
    assert resident.process_queue() == 1
    assert queued(gateway) == []
    to, texts = emailed(gateway)[-1]
    assert to == ("311@ottawa.example",) and texts == ["The streetlight on Bank St is out"]


def test_a_retried_text_is_stored_and_emailed_once(
    resident: Resident, gateway: Gateway
) -> None:
    form = twilio_form(gateway.settings, PHONE, "Pothole at Elgin and Somerset")
    first = resident.post(form)
    again = resident.post(form)  # the provider retries (a timeout on its side)
    assert (first.status_code, again.status_code) == (200, 200)
    assert twiml_messages(again.data) == []
    assert queued(gateway) == ["Pothole at Elgin and Somerset"]
    resident.process_queue()
    resident.post(form)  # and once more, after it was processed
    resident.process_queue()
    assert [texts for _, texts in emailed(gateway)].count(["Pothole at Elgin and Somerset"]) == 1
    engine = sa.create_engine(gateway.settings.database)
    with engine.connect() as conn:
        count = sa.select(sa.func.count()).where(messages.c.body == "Pothole at Elgin and Somerset")
        assert conn.execute(count).scalar_one() == 1
    engine.dispose()


def test_a_keyword_is_answered_at_once_after_the_queued_texts_are_processed(
    resident: Resident, gateway: Gateway
) -> None:
    resident.say(PHONE, "Noise from the bar again", silent=True)
    resident.say(PHONE, "And again tonight", silent=True)
    assert queued(gateway) == ["Noise from the bar again", "And again tonight"]
    # CITY forgets the municipality and asks again: the two texts before it still go to
    # Ottawa, in order, before the question is asked.
    resident.say(PHONE, "CITY", expect="city|town")
    assert queued(gateway) == []
    assert [texts for _, texts in emailed(gateway)][-2:] == [
        ["Noise from the bar again"], ["And again tonight"],
    ]
    assert all(to == ("311@ottawa.example",) for to, _ in emailed(gateway))
    # and the resident is now asked for their city: their next text waits for the answer
    resident.say(PHONE, "Water main break", expect="city|town")
    assert queued(gateway) == []


def test_help_from_a_known_resident_is_answered_in_the_webhooks_answer(
    resident: Resident,
) -> None:
    resident.say(PHONE, "HELP", expect="311")


def test_a_reply_decided_by_the_worker_goes_out_through_the_providers_api(
    resident: Resident, gateway: Gateway, tmp_path: Path
) -> None:
    resident.say(PHONE, "Broken bench in the park", silent=True)
    # Ottawa leaves the map before the worker gets to the text: it is kept, and the
    # question is asked by SMS (no webhook answer is open any more).
    without_ottawa = TEST_MAP.split("  - id: montreal")[0].split("  - id: ottawa")[0]
    without_ottawa += "  - id: montreal" + TEST_MAP.split("  - id: montreal")[1]
    (tmp_path / "municipality_map.yaml").write_text(without_ottawa, encoding="utf-8")
    gateway.directory.reload()
    resident.process_queue()
    assert queued(gateway) == []
    replies = sms_queued(gateway)
    assert len(replies) == 1 and replies[0][0] == PHONE
    assert "city" in replies[0][1].lower() or "town" in replies[0][1].lower()
    assert len(replies[0][1]) <= 160


def test_texts_are_processed_in_order_in_bounded_rounds(
    resident: Resident, gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(40):
        resident.say(PHONE, f"update {i}", silent=True)
    processor = InboundProcessor(gateway)
    monkeypatch.setattr(processor, "webhook_busy", lambda: False)  # a quiet webhook
    assert MAX_PER_RESIDENT["sqlite"] == 8
    for _ in range(5):  # 8 texts of a resident per transaction on SQLite
        assert processor.process_once() == 8
    assert processor.process_once() == 0
    bodies = [texts[0] for _, texts in emailed(gateway)][-40:]
    assert bodies == [f"update {i}" for i in range(40)]


def test_while_the_webhook_is_busy_the_worker_takes_short_transactions(
    resident: Resident, gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On SQLite the webhook's commits wait for the worker's transaction: while texts are
    arriving, a resident's queued texts are taken BUSY_PER_RESIDENT at a time."""
    for i in range(5):
        resident.say(PHONE, f"busy {i}", silent=True)
    processor = InboundProcessor(gateway)
    monkeypatch.setattr(processor, "webhook_busy", lambda: True)
    assert [processor.process_once() for _ in range(4)] == [BUSY_PER_RESIDENT] * 2 + [1, 0]
    bodies = [texts[0] for _, texts in emailed(gateway)][-5:]
    assert bodies == [f"busy {i}" for i in range(5)]


def test_the_worker_yields_while_the_webhook_is_busy(
    resident: Resident, gateway: Gateway
) -> None:
    assert not gateway.webhook_busy(0.2)
    resident.say(PHONE, "Graffiti on the bridge", silent=True)
    assert gateway.webhook_busy(60.0)  # the queued text marked the webhook busy
    assert not gateway.webhook_busy(0.0)


def test_a_worker_in_another_process_sees_a_busy_webhook_by_the_queue(
    resident: Resident, gateway: Gateway, tmp_path: Path
) -> None:
    """The systemd layout: the worker's process has no web half; the newest queued text's
    arrival says whether a webhook is taking texts."""
    other = Gateway.from_settings(gateway.settings)  # another process's view of the store
    try:
        processor = InboundProcessor(other)
        assert not processor.webhook_busy()  # nothing queued
        resident.say(PHONE, "Broken bench in the park", silent=True)
        assert not other.webhook_busy(60.0)  # its own web half took nothing
        assert processor.webhook_busy()  # but a text arrived just now
        with other.store.transaction() as tx:  # the same text, had it come a minute ago
            tx.execute(sa.update(inbound_texts).values(
                received_at=datetime.now(UTC) - timedelta(minutes=1)))
        assert not processor.webhook_busy()
    finally:
        other.close()


def test_the_worker_is_woken_by_the_web_half_of_its_process(
    resident: Resident, gateway: Gateway
) -> None:
    woken = threading.Event()
    gateway.inbound_listeners.append(woken.set)
    resident.say(PHONE, "Tree down on Main", silent=True)
    assert woken.is_set()


@pytest.fixture(params=["sqlite", "postgresql"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A migrated store on each backend, closed after the test."""
    if request.param == "sqlite":
        store = open_store(f"sqlite:///{tmp_path}/gateway.db")
        store.upgrade()
    else:
        store = open_store(str(request.getfixturevalue("pg_store_url")))
    try:
        yield store
    finally:
        store.close()


def test_the_queue_rows_read_back_as_written(any_store: Store) -> None:
    """The webhook writes its row in plain DBAPI (gateway.store.ingest): SQLAlchemy's
    types read it back exactly (aware UTC time, media JSON), and a repeated sid is refused."""
    store = any_store
    at = datetime(2026, 12, 5, 21, 7, 3, 123456, tzinfo=UTC)
    media = [{"url": "https://api.twilio.com/m/ME1", "content_type": "image/jpeg"}]
    with store.transaction() as tx:
        assert tx.queue_inbound("SM1", PHONE, "31100", "Crème brûlée?", media, at,
                                "OTTAWA", "ON")
        assert not tx.queue_inbound("SM1", PHONE, "31100", "again", [], at)
        assert tx.queue_inbound("SM2", PHONE, "31100", "second", [], at + timedelta(seconds=1))
        assert tx.resident_routing(PHONE) is None
    with store.transaction() as tx:
        tx.save_resident(ResidentRow(PHONE, "ottawa", dialogue={"v": 1, "stage": "asking"}))
        tx.save_resident(ResidentRow("+16135550162", "montreal", dialogue={}))
        tx.save_resident(ResidentRow("+16135550163", None, dialogue={"stage": "idle"}))
    with store.transaction() as tx:
        assert tx.resident_routing(PHONE) == ("ottawa", "asking")
        assert tx.resident_routing("+16135550162") == ("montreal", "idle")  # fresh state
        assert tx.resident_routing("+16135550163") == (None, "idle")
        rows = tx.queued_inbound(PHONE)
        assert [r.sid for r in tx.queued_inbound(PHONE, 1)] == ["SM1"]
    first = rows[0]
    assert (first.sid, first.body, first.to, first.from_city, first.from_state) == (
        "SM1", "Crème brûlée?", "31100", "OTTAWA", "ON",
    )
    assert first.received_at == at and first.received_at.tzinfo is not None
    assert first.media == tuple(media)
    assert [r.sid for r in rows] == ["SM1", "SM2"]
    assert store.queued_phones(10) == [PHONE]
    with store.transaction() as tx:
        tx.unqueue_inbound([r.id for r in rows])
    assert store.queued_phones(10) == []


def test_a_batch_is_read_and_queued_in_one_go(any_store: Store) -> None:
    """The webhook's batch (`residents_routing`, `queue_inbound_many`; one statement each on
    PostgreSQL): strangers left out, a sid already queued or repeated in the batch refused,
    the rows read back as written, a resident's texts in the order given."""
    store = any_store
    at = datetime(2026, 12, 6, 3, 30, 1, 654321, tzinfo=UTC)
    media = [{"url": "https://api.twilio.com/m/ME9", "content_type": "image/png"}]
    with store.transaction() as tx:
        tx.save_resident(ResidentRow(PHONE, "ottawa", dialogue={}))
        tx.save_resident(ResidentRow("+16135550162", "montreal", dialogue={"stage": "asking"}))
        assert tx.queue_inbound("SM0", PHONE, "31100", "queued before", [], at)
    with store.transaction() as tx:
        assert tx.residents_routing([PHONE, "+16135550162", "+16135550199", PHONE]) == {
            PHONE: ("ottawa", "idle"), "+16135550162": ("montreal", "asking")}
        assert tx.residents_routing([]) == {}
        stored = tx.queue_inbound_many([
            TextToQueue("SM1", PHONE, "31100", "Élan 1", media, at, "OTTAWA", "ON"),
            TextToQueue("SM0", PHONE, "31100", "a retry", [], at),
            TextToQueue("SM2", PHONE, "31100", "Élan 2", [], at + timedelta(seconds=1)),
            TextToQueue("SM1", PHONE, "31100", "a retry in the batch", [], at),
        ])  # fmt: skip
        assert stored == [True, False, True, False]
        assert tx.queue_inbound_many([]) == []
    with store.transaction() as tx:
        rows = tx.queued_inbound(PHONE)
    assert [(r.sid, r.body) for r in rows] == [
        ("SM0", "queued before"), ("SM1", "Élan 1"), ("SM2", "Élan 2")]
    assert rows[1].media == tuple(media) and rows[1].received_at == at
    assert (rows[1].from_city, rows[1].from_state) == ("OTTAWA", "ON")


def test_the_sqlite_store_commits_to_stable_storage(gateway: Gateway) -> None:
    """synchronous=FULL (2): an acknowledged text survives a power cut, not only a crash."""
    with gateway.store.transaction() as tx:
        level = tx.execute(sa.text("PRAGMA synchronous")).scalar_one()
    assert level == 2


def test_a_long_conversation_keeps_a_bounded_thread_chain(
    resident: Resident, gateway: Gateway
) -> None:
    """The thread's References are kept incrementally: the stored chain never grows past
    what the next email needs (the first id and the last 20), and each email still
    follows the one before it."""
    resident.worker = True
    for i in range(30):
        resident.say(PHONE, f"still broken, day {i}", silent=True)
    emails = [
        ResidentEmail.from_dict(i.payload) for i in gateway.store.list_outbox(None)
        if i.kind == "email"
    ]
    with gateway.store.transaction() as tx:
        conversation = tx.get_conversation(emails[-1].conversation_id)
    assert conversation is not None
    assert len(conversation.thread_message_ids) == 21
    assert conversation.thread_message_ids[0] == emails[0].message_id
    assert conversation.thread_message_ids[-1] == emails[-1].message_id
    last = emails[-1]
    assert last.in_reply_to == emails[-2].message_id
    assert last.references == (emails[0].message_id, *[e.message_id for e in emails[-21:-1]])


def test_a_postgresql_that_may_lose_commits_is_named(pg_store_url: str, tmp_path: Path) -> None:
    """What survives a power cut: on PostgreSQL the server's settings decide; the gateway
    says so at start when synchronous_commit (or fsync) is off. SQLite: nothing to say."""
    url = sa.make_url(pg_store_url)
    options = f"{url.query.get('options', '')} -csynchronous_commit=off".strip()
    relaxed = open_store(url.update_query_dict({"options": options}).render_as_string(False))
    strict = open_store(pg_store_url)
    lite = open_store(f"sqlite:///{tmp_path}/g.db")
    try:
        (warning,) = [w for w in relaxed.durability_warnings() if "synchronous_commit" in w]
        assert "synchronous_commit is off" in warning and "power cut" in warning
        # (the tests' own throwaway cluster may run with fsync off: that is named too)
        assert not [w for w in strict.durability_warnings() if "synchronous_commit" in w]
        assert lite.durability_warnings() == []
    finally:
        for store in (relaxed, strict, lite):
            store.close()
