"""The webhook as the gateway serves it (issue 16): uvicorn, the ASGI front of
`gateway.web.asgi`, texts committed in batches by the `IngestBatcher`. Through real HTTP on
loopback, signed as Twilio signs, over a real SQLite store: the same answers as the Flask
path (dialogue, keywords, duplicates, refusals, 503), each accepted text stored once and a
resident's texts in the order sent, texts that arrive during a commit sharing the next one."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import requests
import sqlalchemy as sa

from gateway.app import DirectoryHolder, Gateway
from gateway.run.sandbox import twilio_form
from gateway.run.web_server import WebServer
from gateway.sms import make_provider
from gateway.sms.base import MAX_WEBHOOK_BYTES, InboundText
from gateway.store import open_store
from gateway.store.schema import inbound_texts, messages
from gateway.web.asgi import InboundFront, create_asgi_app
from tests.gateway_fixtures import Resident, settings_in, twiml_messages

PHONE = "+16135550171"


@dataclass
class _Answer:
    status_code: int
    data: bytes
    headers: Any


class HttpClient:
    """What the `Resident` driver needs of a client, over real HTTP."""

    def __init__(self, port: int, application: Any) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.application = application  # the Flask app (the driver finds the gateway there)
        self._local = threading.local()

    def post(self, path: str, data: Any = None, headers: dict[str, str] | None = None,
             **kwargs: Any) -> _Answer:
        if not hasattr(self._local, "session"):
            self._local.session = requests.Session()
        answer = self._local.session.post(self.base + path, data=data, headers=headers,
                                          timeout=15, **kwargs)
        return _Answer(answer.status_code, answer.content, answer.headers)


@dataclass
class Front:
    gateway: Gateway
    server: WebServer
    app: InboundFront
    client: HttpClient
    resident: Resident

    def rows(self, table: sa.Table) -> list[Any]:
        engine = sa.create_engine(self.gateway.settings.database)
        try:
            with engine.connect() as db:
                return list(db.execute(sa.select(table).order_by(table.c.id)))
        finally:
            engine.dispose()


def _front(gateway: Gateway) -> Iterator[Front]:
    app = create_asgi_app(gateway)
    assert isinstance(app, InboundFront)
    server = WebServer(app, "127.0.0.1:0")
    server.start()
    client = HttpClient(server.port, app.flask_app)
    try:
        yield Front(gateway, server, app, client, Resident(client, gateway.settings))
    finally:
        server.stop()


@pytest.fixture
def front(gateway: Gateway) -> Iterator[Front]:
    yield from _front(gateway)


def known(front: Front, phone: str) -> None:
    """`phone` answers the city question: from now on its ordinary texts are queued."""
    front.resident.say(phone, "Garbage was not collected", expect="city|town")
    front.resident.say(phone, "K1A 0B1", expect="Ottawa")


def test_a_whole_dialogue_through_the_server(front: Front) -> None:
    known(front, PHONE)
    front.resident.worker = False
    front.resident.say(PHONE, "Pothole on Bank St", silent=True)  # queued, answered at once
    assert [r.body for r in front.rows(inbound_texts)] == ["Pothole on Bank St"]
    front.resident.say(PHONE, "HELP", expect="311")  # a keyword: answered in the TwiML
    # the keyword was processed after the resident's queued text, which is now filed
    assert front.rows(inbound_texts) == []
    bodies = [m.body for m in front.rows(messages)]
    assert bodies[-1] == "Pothole on Bank St"
    assert front.app.batcher.texts >= 2


def test_a_retried_text_is_stored_once(front: Front) -> None:
    known(front, PHONE)
    front.resident.worker = False
    form = twilio_form(front.gateway.settings, PHONE, "Streetlight out")
    assert front.resident.post(form).status_code == 200
    assert front.resident.post(form).status_code == 200  # Twilio's retry: same MessageSid
    assert [r.body for r in front.rows(inbound_texts)] == ["Streetlight out"]


def test_residents_texting_at_once_each_text_stored_once_in_order(front: Front) -> None:
    texting_at_once(front)


def test_residents_texting_at_once_on_postgresql(pg_store_url: str, tmp_path: Path) -> None:
    """The same on PostgreSQL, where a batch locks its residents' numbers (in order)."""
    gateway = Gateway.from_settings(settings_in(tmp_path, database=pg_store_url))
    try:
        for front in _front(gateway):
            texting_at_once(front)
    finally:
        gateway.close()


def texting_at_once(front: Front) -> None:
    phones = [f"+161355502{n:02d}" for n in range(6)]
    for phone in phones:
        known(front, phone)
    front.resident.worker = False
    settings = front.gateway.settings

    def texts_of(phone: str) -> list[int]:
        statuses = []
        for n in range(12):
            form = twilio_form(settings, phone, f"{phone} text {n:02d}")
            answer = front.resident.post(form)
            assert twiml_messages(answer.data) == []
            statuses.append(answer.status_code)
        return statuses

    with ThreadPoolExecutor(len(phones)) as pool:
        statuses = [s for batch in pool.map(texts_of, phones) for s in batch]
    assert statuses == [200] * 72
    rows = front.rows(inbound_texts)
    assert len(rows) == 72
    for phone in phones:
        mine = [r.body for r in rows if r.phone == phone]
        assert mine == [f"{phone} text {n:02d}" for n in range(12)]  # in the order sent
    processed = 0
    while done := front.resident.process_queue():  # the worker's rounds
        processed += done
    assert processed == 72
    filed = [m.body for m in front.rows(messages) if " text " in m.body]
    assert sorted(filed) == sorted(r.body for r in rows)  # each once


def test_texts_that_arrive_during_a_commit_share_the_next_one(front: Front) -> None:
    phones = [f"+161355503{n:02d}" for n in range(10)]
    for phone in phones:
        known(front, phone)
    front.resident.worker = False
    batches_before = front.app.batcher.batches
    forms = [twilio_form(front.gateway.settings, p, "Noise at night") for p in phones]
    with ThreadPoolExecutor(10) as pool:
        with front.gateway.store.transaction():
            # the store is busy (this transaction): the texts wait in the batcher's queue
            answers = [pool.submit(front.resident.post, form) for form in forms]
            threading.Event().wait(1.0)
            assert not any(a.done() for a in answers)  # nothing answered before its commit
        assert [a.result().status_code for a in answers] == [200] * 10
    assert len(front.rows(inbound_texts)) == 10
    assert front.app.batcher.batches - batches_before <= 3  # not one commit a text


def test_a_residents_later_texts_wait_for_one_that_needs_an_answer(front: Front) -> None:
    """`accept_queueable`: a keyword is left for `accept`, and so are the same resident's
    later texts of the batch (their order is kept); a busy resident's texts too."""
    known(front, PHONE)
    known(front, "+16135550172")
    gateway = front.gateway
    now = datetime.now(UTC)

    def text(phone: str, body: str, n: int) -> InboundText:
        return InboundText(sid=f"SM{n:032d}", phone=phone, to="31100", body=body,
                           received_at=now)

    results = gateway.inbound.accept_queueable([
        text(PHONE, "HELP", 1),
        text(PHONE, "Pothole", 2),
        text("+16135550172", "Pothole too", 3),
        text("+16135550199", "A stranger", 4),
    ])  # fmt: skip
    assert results[0] is None and results[1] is None and results[3] is None
    assert results[2] is not None and results[2].step == "queued"
    busy = gateway.inbound.accept_queueable([text("+16135550172", "Again", 5)],
                                            busy_phones={"+16135550172"})
    assert busy == [None]


def _post(front: Front, body: bytes, headers: dict[str, str]) -> _Answer:
    headers = {"Content-Type": "application/x-www-form-urlencoded", **headers}
    return front.client.post("/sms/inbound", data=body, headers=headers)


def _signed(front: Front, form: dict[str, str]) -> dict[str, str]:
    return {"X-Twilio-Signature": front.resident.signature.sign("/sms/inbound", "", form)}


@pytest.mark.parametrize(
    ("label", "status", "expected"),
    [
        ("no signature", 403, b"Forbidden\n"),
        ("wrong signature", 403, b"Forbidden\n"),
        ("too many fields", 413, b"Payload Too Large\n"),
        ("no From", 400, b"Bad Request: "),
        ("body over the limit", 413, b"Payload Too Large\n"),
        ("empty text", 200, b"<Response"),
    ],
)
def test_refusals_match_the_flask_path(
    front: Front, label: str, status: int, expected: bytes
) -> None:
    settings = front.gateway.settings
    form = twilio_form(settings, PHONE, "Pothole")
    headers = _signed(front, form)
    body = urlencode(form).encode()
    if label == "no signature":
        headers = {}
    elif label == "wrong signature":
        headers = _signed(front, {**form, "Body": "Something else"})
    elif label == "too many fields":
        body += b"&x=1" * 120
    elif label == "no From":
        form = {k: v for k, v in form.items() if k != "From"}
        headers, body = _signed(front, form), urlencode(form).encode()
    elif label == "body over the limit":
        body = b"Body=" + b"a" * (MAX_WEBHOOK_BYTES + 1)
    elif label == "empty text":
        form = twilio_form(settings, PHONE, "")
        headers, body = _signed(front, form), urlencode(form).encode()
    answer = _post(front, body, headers)
    assert answer.status_code == status, (label, answer.data)
    assert expected in answer.data
    if label == "body over the limit":
        assert answer.headers.get("connection") == "close"  # the body is not read
    assert front.rows(inbound_texts) == []
    assert front.rows(messages) == []


def test_another_encoding_goes_to_flask_with_the_same_checks(front: Front) -> None:
    form = twilio_form(front.gateway.settings, PHONE, "Pothole")
    files = {k: (None, v) for k, v in form.items()}
    answer = front.client.post("/sms/inbound", files=files, headers=_signed(front, form))
    assert answer.status_code == 200  # multipart: Flask's blueprint, same signature check
    assert twiml_messages(answer.data)  # the city question
    unsigned = front.client.post("/sms/inbound", files=files, headers={})
    assert unsigned.status_code == 403


def test_the_console_and_health_are_served_through_the_bridge(front: Front) -> None:
    health = requests.get(f"{front.client.base}/healthz", timeout=5)
    assert health.status_code == 503  # (no mail server in this test: it says so)
    assert health.headers["content-type"].startswith("application/json")
    login = requests.get(f"{front.client.base}/console/login", timeout=5)
    assert login.status_code == 200 and b"<form" in login.content


def test_a_locked_store_answers_503_then_recovers(tmp_path: Path) -> None:
    settings = settings_in(tmp_path)
    store = open_store(settings.database)
    store.upgrade()
    store.close()
    gateway = Gateway(
        settings=settings, store=open_store(settings.database, busy_timeout=0.5),
        directory=DirectoryHolder(settings.municipality_map),
        provider=make_provider(settings.sms, settings.state_dir),
    )  # fmt: skip
    try:
        for front in _front(gateway):
            known(front, PHONE)
            front.resident.worker = False
            locker = sqlite3.connect(settings.database.removeprefix("sqlite:///"),
                                     isolation_level=None, timeout=10)
            try:
                locker.execute("BEGIN EXCLUSIVE")  # another program holds the write lock
                form = twilio_form(settings, PHONE, "Text during the lock")
                answer = front.resident.post(form)
                assert answer.status_code == 503
                assert answer.data == b"Service Unavailable\n"
            finally:
                locker.rollback()
                locker.close()
            assert front.resident.post(form).status_code == 200  # Twilio's retry
            assert [r.body for r in front.rows(inbound_texts)] == ["Text during the lock"]
    finally:
        gateway.close()
