"""The outbox dispatcher against a real aiosmtpd server and the real twilio client
talking to the fake Twilio API: MMS media attached, retries with capped backoff while
the mail server is down, parking (never dropping), `sms311 outbox retry`."""

from __future__ import annotations

import asyncio
import email
import email.policy
import random
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from gateway.app import Gateway
from gateway.cli import main as sms311
from gateway.rules.resident_email import MediaRef
from gateway.run.worker import Dispatcher, backoff_seconds
from gateway.sms.base import InboundText
from gateway.store import open_store
from gateway.web import create_app
from tests.fake_twilio import FakeTwilio
from tests.gateway_fixtures import Clock, Resident, free_port, settings_in

T0 = datetime(2026, 11, 22, 15, 0, tzinfo=UTC)
JPEG = b"\xff\xd8\xff\xe0" + b"picture-bytes" * 100


class Mailbox:
    """aiosmtpd handler that keeps messages, or refuses them with a scripted reply."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.refuse_rcpt: str | None = None

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        if self.refuse_rcpt:
            return self.refuse_rcpt
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        self.messages.append(message)
        return "250 OK"


@pytest.fixture
def fake_twilio() -> Iterator[FakeTwilio]:
    with FakeTwilio() as api:
        yield api


def make_gateway(folder: Path, smtp_port: int, api: FakeTwilio, extra: str = "") -> Gateway:
    sms = (
        "sms:\n  provider: twilio\n"
        f"  account_sid: {api.account_sid}\n  auth_token: {api.auth_token}\n"
        f'  sender: "+16135550000"\n  api_base_url: {api.base_url}\n'
    )
    settings = settings_in(folder, smtp_port=smtp_port, sms=sms, extra=extra)
    store = open_store(settings.database)
    store.upgrade()
    store.close()
    return Gateway.from_settings(settings)


def text(sid: str, body: str, media: tuple[MediaRef, ...] = ()) -> InboundText:
    return InboundText(sid=sid, phone="+16135550123", to="+16135550000", body=body,
                       received_at=T0, media=media)


def resident_in_ottawa(gateway: Gateway, body: str = "Pothole on Bank St",
                       media: tuple[MediaRef, ...] = ()) -> None:
    """A resident's first text (held), the answer, then a text with media."""
    gateway.inbound.handle(text("SM1", "Hello"))
    gateway.inbound.handle(text("SM2", "Ottawa"))
    if media or body != "Hello":
        gateway.inbound.handle(text("SM3", body, media))


def dispatch(dispatcher: Dispatcher) -> int:
    return asyncio.run(dispatcher.dispatch_once())


@pytest.fixture
def smtp() -> Iterator[tuple[Mailbox, int]]:
    mailbox = Mailbox()
    port = free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port)
    controller.start()
    yield mailbox, port
    controller.stop()


def test_mms_media_are_fetched_with_credentials_and_attached(
    tmp_path: Path, smtp: tuple[Mailbox, int], fake_twilio: FakeTwilio
) -> None:
    mailbox, port = smtp
    gateway = make_gateway(tmp_path, port, fake_twilio)
    url = fake_twilio.add_media("image/jpeg", JPEG)
    resident_in_ottawa(gateway, "See the photo", (MediaRef(url, "image/jpeg"),))
    dispatcher = Dispatcher(gateway, now=Clock())
    assert dispatch(dispatcher) == 2
    first, second = mailbox.messages
    assert "Hello" in first.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    [attachment] = list(second.iter_attachments())
    assert attachment.get_content_type() == "image/jpeg"
    assert attachment.get_content() == JPEG
    assert second["In-Reply-To"] == first["Message-ID"]
    assert all(item.status == "sent" for item in gateway.store.list_outbox(None))
    gateway.close()


def test_media_that_is_gone_is_listed_not_attached(
    tmp_path: Path, smtp: tuple[Mailbox, int], fake_twilio: FakeTwilio
) -> None:
    mailbox, port = smtp
    gateway = make_gateway(tmp_path, port, fake_twilio)
    missing = f"{fake_twilio.base_url}/2010-04-01/Accounts/{fake_twilio.account_sid}" \
              "/Messages/MMx/Media/MEgone"
    resident_in_ottawa(gateway, "Photo attached", (MediaRef(missing, "image/png"),))
    dispatch(Dispatcher(gateway, now=Clock()))
    last = mailbox.messages[-1]
    assert list(last.iter_attachments()) == []
    assert "MEgone" in last.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    gateway.close()


def test_a_signed_media_url_off_the_provider_hosts_is_listed_never_fetched(
    tmp_path: Path, smtp: tuple[Mailbox, int], fake_twilio: FakeTwilio
) -> None:
    """Seen: a signed MediaUrl0 pointing at /metrics on loopback was fetched and attached.
    Only the API's host (here the fake's) and the provider's media CDN are asked."""
    mailbox, port = smtp
    gateway = make_gateway(tmp_path, port, fake_twilio)
    asked: list[str] = []

    class Metrics(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", "24")
            self.end_headers()
            self.wfile.write(b"sms311_texts_in_total 42\n")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Metrics)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        metrics = f"http://127.0.0.1:{server.server_address[1]}/metrics"
        good = fake_twilio.add_media("image/jpeg", JPEG)
        bounced = fake_twilio.add_media("image/png", b"png", redirect_to=metrics)
        resident = Resident(create_app(gateway).test_client(), gateway.settings)
        resident.say("+16135550123", "Hello")
        resident.say("+16135550123", "Ottawa")
        resident.say("+16135550123", "See the photos", media_urls=[
            (metrics, "image/png"), (good, "image/jpeg"), (bounced, "image/png")])
        dispatch(Dispatcher(gateway, now=Clock()))
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
        gateway.close()
    assert asked == []  # neither directly nor through a redirect
    last = mailbox.messages[-1]
    [attachment] = list(last.iter_attachments())
    assert attachment.get_content() == JPEG
    body = last.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert metrics in body and bounced in body
    assert "sms311_texts_in_total" not in last.as_string()


def test_mail_server_down_then_back_every_text_is_emailed(
    tmp_path: Path, fake_twilio: FakeTwilio
) -> None:
    port = free_port()  # nothing listens here yet
    gateway = make_gateway(tmp_path, port, fake_twilio)
    resident_in_ottawa(gateway)
    clock = Clock()
    dispatcher = Dispatcher(gateway, now=clock)
    for _ in range(3):
        assert dispatch(dispatcher) == 2  # both emails tried, both failed
        pending = gateway.store.list_outbox("pending")
        assert len(pending) == 2
        assert dispatch(dispatcher) == 0  # not due again before the backoff
        clock.advance(gateway.settings.outbox.max_backoff_seconds * 1.2 + 1)
    assert all(item.attempts == 3 and item.last_error for item in pending)

    mailbox = Mailbox()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        assert dispatch(dispatcher) == 2
        assert len(mailbox.messages) == 2
        assert gateway.store.list_outbox("pending") == []
        assert gateway.store.list_outbox("parked") == []
    finally:
        controller.stop()
        gateway.close()


def test_a_refused_email_is_parked_reported_and_can_be_retried(
    tmp_path: Path, smtp: tuple[Mailbox, int], fake_twilio: FakeTwilio,
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture,
) -> None:
    mailbox, port = smtp
    gateway = make_gateway(tmp_path, port, fake_twilio)
    gateway.inbound.handle(text("SM1", "Ottawa"))  # the first text is the answer
    gateway.inbound.handle(text("SM2", "Streetlight out"))
    mailbox.refuse_rcpt = "550 5.1.1 mailbox unavailable"
    dispatch(Dispatcher(gateway, now=Clock()))
    [parked] = gateway.store.list_outbox("parked")
    assert "550" in (parked.last_error or "")
    assert "PARKED" in caplog.text

    config = str(gateway.settings.config_path)
    assert sms311(["--config", config, "outbox"]) == 0
    assert f"{parked.id}\temail\tparked" in capsys.readouterr().out
    mailbox.refuse_rcpt = None
    assert sms311(["--config", config, "outbox", "retry", str(parked.id)]) == 0
    dispatch(Dispatcher(gateway, now=Clock()))
    assert len(mailbox.messages) == 1
    assert gateway.store.list_outbox("parked") == []
    gateway.close()


def test_a_message_that_keeps_failing_is_parked_after_max_attempts(
    tmp_path: Path, fake_twilio: FakeTwilio
) -> None:
    gateway = make_gateway(tmp_path, free_port(), fake_twilio, extra="outbox: {max_attempts: 3}\n")
    gateway.inbound.handle(text("SM1", "Ottawa"))
    gateway.inbound.handle(text("SM2", "Tree down"))
    clock = Clock()
    dispatcher = Dispatcher(gateway, now=clock)
    for _ in range(3):
        dispatch(dispatcher)
        clock.advance(3600)
    [parked] = gateway.store.list_outbox("parked")
    assert parked.attempts == 3
    assert "gave up after 3 attempts" in (parked.last_error or "")
    assert gateway.store.list_outbox("pending") == []
    gateway.close()


@pytest.mark.parametrize("seed", range(5))
def test_backoff_grows_and_is_capped(seed: int) -> None:
    rand = random.Random(seed).random
    delays = [backoff_seconds(n, 1.0, 300.0, rand) for n in range(20)]
    assert all(0.8 * min(300, 2**n) <= d <= 1.2 * min(300, 2**n) for n, d in enumerate(delays))
    assert max(delays) <= 360
    assert delays[8] >= 0.8 * 256


def test_run_loop_stops_promptly(tmp_path: Path, fake_twilio: FakeTwilio) -> None:
    gateway = make_gateway(tmp_path, free_port(), fake_twilio)

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(Dispatcher(gateway, poll_interval=10).run(stop))
        await asyncio.sleep(0.05)
        stop.set()
        await asyncio.wait_for(task, timeout=2)

    asyncio.run(scenario())
    gateway.close()
