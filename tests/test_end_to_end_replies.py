"""The whole loop, end to end: `sms311 run` as a subprocess; a resident's text becomes an
email (aiosmtpd); the agent's reply is APPENDed to a real Dovecot mailbox (or handed to
the SMTP ingress) and reaches the fake Twilio API as an SMS through the real twilio
client. Bounces and strangers' mail are filed, never texted."""

from __future__ import annotations

import email
import email.policy
import os
import signal
import smtplib
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from typing import Any

import pytest
import requests
from aiosmtpd.controller import Controller

from gateway.config import load_settings
from gateway.sandbox import send_text
from tests.dovecot import Dovecot
from tests.fake_twilio import FakeTwilio
from tests.gateway_fixtures import free_port, write_settings
from tests.paths import shared_file

pytestmark = pytest.mark.slow


class Collector:
    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        self.messages.append(message)
        return "250 OK"


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def agent_reply(to: EmailMessage, body: str, sender: str = "jane@ottawa.example") -> bytes:
    reply = EmailMessage()
    reply["From"] = f"Jane Doe <{sender}>"
    reply["To"] = to["Reply-To"]
    reply["Subject"] = "Re: " + to["Subject"]
    reply["Message-ID"] = make_msgid(domain="ottawa.example")
    reply["In-Reply-To"] = to["Message-ID"]
    reply["References"] = to["Message-ID"]
    quoted = "\n".join("> " + line for line in to.get_body(("plain",)).get_content().splitlines())  # type: ignore[union-attr]
    reply.set_content(f"{body}\n\nOn Sun, Nov 22, 2026, 311 Text wrote:\n{quoted}\n")
    return bytes(reply)


class Loop:
    """A running gateway with its mail server, mailbox and SMS API."""

    def __init__(self, tmp_path: Path, dovecot: Dovecot | None, ingress_port: int | None) -> None:
        self.collector = Collector()
        smtp_port, self.web_port = free_port(), free_port()
        self.smtp = Controller(self.collector, hostname="127.0.0.1", port=smtp_port)
        self.smtp.start()
        self.api = FakeTwilio().start()
        self.dovecot = dovecot
        sms = (
            "sms:\n  provider: twilio\n"
            f"  account_sid: {self.api.account_sid}\n  auth_token: {self.api.auth_token}\n"
            f'  sender: "31100"\n  api_base_url: {self.api.base_url}\n'
        )
        email_extra = ""
        if dovecot is not None:
            email_extra += (
                f"  imap: {{host: 127.0.0.1, port: {dovecot.port}, username: {dovecot.user},"
                " security: none}\n"
            )
        if ingress_port is not None:
            email_extra += f'  ingress: {{listen: "127.0.0.1:{ingress_port}"}}\n'
        self.config = write_settings(
            tmp_path, smtp_port=smtp_port, web_port=self.web_port, sms=sms,
            public_url=f"http://127.0.0.1:{self.web_port}",
        )
        text = self.config.read_text().replace(
            "  smtp: {host", email_extra + "  smtp: {host"
        )
        self.config.write_text(text)
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if dovecot is not None:
            self.env["GATEWAY_EMAIL__IMAP__PASSWORD"] = dovecot.password
        upgrade = subprocess.run(
            [sys.executable, "-m", "gateway", "--config", str(self.config), "db", "upgrade"],
            capture_output=True, text=True, timeout=60, check=False, env=self.env,
        )
        assert upgrade.returncode == 0, upgrade.stdout + upgrade.stderr
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "--config", str(self.config), "run"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=self.env,
        )
        self.settings = load_settings(self.config, environ=self.env)

        def healthy() -> bool:
            assert self.process.poll() is None, self.stop()
            try:
                return requests.get(f"http://127.0.0.1:{self.web_port}/healthz", timeout=1).ok
            except requests.ConnectionError:
                return False

        wait_for(healthy, "the gateway to be healthy")

    def text(self, number: str, body: str) -> list[str]:
        status, replies = send_text(self.settings, number, body)
        assert status == 200
        return replies

    def stop(self) -> str:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            output, _ = self.process.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            output, _ = self.process.communicate()
        self.api.stop()
        self.smtp.stop()
        return output


@pytest.fixture
def dovecot(tmp_path: Path) -> Iterator[Dovecot]:
    with Dovecot(tmp_path) as server:
        yield server


def first_email(loop: Loop) -> EmailMessage:
    assert "city" in loop.text("613-555-0142", "Pothole on Bank St")[0].lower()
    assert "Ottawa" in loop.text("613-555-0142", "Kanata")[0]
    wait_for(lambda: len(loop.collector.messages) == 1, "the resident's email")
    return loop.collector.messages[0]


def test_agent_reply_in_the_mailbox_reaches_the_resident(tmp_path: Path, dovecot: Dovecot) -> None:
    loop = Loop(tmp_path, dovecot, None)
    try:
        to_city = first_email(loop)
        assert to_city["To"] == "311@ottawa.example"

        dovecot.append(agent_reply(to_city, "Thanks, a crew is on the way."))
        wait_for(lambda: len(loop.api.messages) == 1, "the SMS at the provider")
        [sms] = loop.api.messages
        assert (sms["To"], sms["Body"]) == ("+16135550142", "Thanks, a crew is on the way.")
        wait_for(lambda: len(dovecot.messages("Processed")) == 1, "the reply filed in Processed")

        # Never texted: a bounce, and a stranger's mail to the reply address.
        dovecot.append(shared_file("bounces", "flanker", "messages", "bounce",
                                   "gmail-invalid-address.eml").read_bytes())
        dovecot.append(agent_reply(to_city, "I am not an agent", sender="x@evil.example"))
        wait_for(lambda: len(dovecot.messages("Failed")) == 1, "the stranger's mail in Failed")
        wait_for(lambda: len(dovecot.messages("Processed")) == 2, "the bounce filed")
        assert dovecot.messages("INBOX") == []

        # Sticky: the resident's next text goes to the agent, the city in copy.
        loop.text("613-555-0142", "It is a big one")
        wait_for(lambda: len(loop.collector.messages) == 2, "the follow-up email")
        follow_up = loop.collector.messages[1]
        assert follow_up["To"] == "jane@ottawa.example"
        assert follow_up["Cc"] == "311@ottawa.example"
        assert follow_up["Subject"] == to_city["Subject"]
        assert len(loop.api.messages) == 1  # nothing else was texted
    finally:
        output = loop.stop()
    assert loop.process.returncode == 0, output
    assert "crew" not in output  # reply bodies stay out of the logs


def test_gateway_restart_catches_up_on_replies_that_arrived_meanwhile(
    tmp_path: Path, dovecot: Dovecot
) -> None:
    loop = Loop(tmp_path, dovecot, None)
    to_city = first_email(loop)
    loop.process.send_signal(signal.SIGTERM)
    loop.process.communicate(timeout=15)
    dovecot.append(agent_reply(to_city, "Reply while the gateway was down."))
    loop.process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "--config", str(loop.config), "run"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=loop.env,
    )
    try:
        wait_for(lambda: len(loop.api.messages) == 1, "the caught-up SMS")
        assert loop.api.messages[0]["Body"] == "Reply while the gateway was down."
    finally:
        loop.stop()


def test_reply_through_the_smtp_ingress(tmp_path: Path) -> None:
    ingress_port = free_port()
    loop = Loop(tmp_path, None, ingress_port)
    try:
        to_city = first_email(loop)
        with smtplib.SMTP("127.0.0.1", ingress_port, timeout=10) as client:
            client.sendmail("jane@ottawa.example", [to_city["Reply-To"].addresses[0].addr_spec],
                            agent_reply(to_city, "Through the ingress."))
            with pytest.raises(smtplib.SMTPRecipientsRefused):  # never an open relay
                client.sendmail("jane@ottawa.example", ["anyone@elsewhere.example"], b"x")
        wait_for(lambda: len(loop.api.messages) == 1, "the SMS at the provider")
        assert loop.api.messages[0]["Body"] == "Through the ingress."
    finally:
        loop.stop()
