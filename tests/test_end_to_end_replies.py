"""The whole loop, end to end: `sms311 run` as a subprocess; a resident's text becomes an
email (aiosmtpd); the agent's reply is APPENDed to a real Dovecot mailbox (or handed to
the SMTP ingress) and reaches the fake Twilio API as an SMS through the real twilio
client. Bounces and strangers' mail are filed, never texted."""

from __future__ import annotations

import smtplib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.dovecot import Dovecot
from tests.gateway_fixtures import free_port
from tests.loop import Loop, agent_reply, first_email, wait_for
from tests.paths import shared_file

pytestmark = pytest.mark.slow


@pytest.fixture
def dovecot(tmp_path: Path) -> Iterator[Dovecot]:
    with Dovecot(tmp_path) as server:
        yield server


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
    assert loop.process is not None and loop.process.returncode == 0, output
    assert "crew" not in output  # reply bodies stay out of the logs


def test_gateway_restart_catches_up_on_replies_that_arrived_meanwhile(
    tmp_path: Path, dovecot: Dovecot
) -> None:
    loop = Loop(tmp_path, dovecot, None)
    try:
        to_city = first_email(loop)
        assert loop.terminate() == 0
        dovecot.append(agent_reply(to_city, "Reply while the gateway was down."))
        loop.start()
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
