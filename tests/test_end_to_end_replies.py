"""The whole loop, end to end: `sms311 run` as a subprocess; a resident's text becomes an
email (aiosmtpd); the agent's reply is APPENDed to a real Dovecot mailbox (or handed to
the SMTP ingress) and reaches the fake Twilio API as an SMS through the real twilio
client. Bounces and strangers' mail are filed, never texted."""

from __future__ import annotations

import email
import smtplib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.dovecot import Dovecot
from tests.gateway_fixtures import free_port
from tests.loop import Loop, agent_reply, body_text, first_email, wait_for
from tests.paths import data_file

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
        dovecot.append(data_file("bounces", "flanker", "messages", "bounce",
                                 "gmail-invalid-address.eml").read_bytes())
        dovecot.append(agent_reply(to_city, "I am not an agent", sender="x@evil.example"))
        wait_for(lambda: len(dovecot.messages("Failed")) == 1, "the stranger's mail in Failed")
        wait_for(lambda: len(dovecot.messages("Processed")) == 2, "the bounce filed")
        assert dovecot.messages("INBOX") == []
        # ...and kept in the store's Failed list too (the stranger gets no notice)
        listed = loop.sms311("failed", "list")
        assert listed.returncode == 0, listed.stderr
        [kept] = listed.stdout.splitlines()
        assert "\timap\t" in kept and "from=x@evil.example" in kept and "not an agent" in kept

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


def test_through_the_ingress_nothing_is_lost_and_the_agent_is_told(tmp_path: Path) -> None:
    """Issue 10: mail to the From address is routed by its thread; a reply that is not
    texted is kept (`sms311 failed`) and its agent told why, in the thread; the resident's
    next email answers the agent's reply."""
    ingress_port = free_port()
    loop = Loop(tmp_path, None, ingress_port)
    try:
        to_city = first_email(loop)
        from_address = to_city["From"].addresses[0].addr_spec
        answer = agent_reply(to_city, "Crew booked for Monday.").replace(
            b"To: " + str(to_city["Reply-To"]).encode(), b"To: " + from_address.encode()
        )
        assert b"reply+" not in answer.split(b"\n\n", 1)[0]  # a client that ignored Reply-To
        below = agent_reply(to_city, "-- \nJane Doe\n311 Ottawa\n\nAlso the sidewalk.")
        with smtplib.SMTP("127.0.0.1", ingress_port, timeout=10) as client:
            # answered 250: kept, not lost, and the agent is told
            client.sendmail("jane@ottawa.example", [from_address], below)
            client.sendmail("jane@ottawa.example", [from_address], answer)
        wait_for(lambda: len(loop.api.messages) == 1, "the SMS at the provider")
        assert loop.api.messages[0]["Body"] == "Crew booked for Monday."

        wait_for(lambda: len(loop.collector.messages) == 2, "the notice to the agent")
        notice = loop.collector.messages[1]
        assert notice["To"] == "jane@ottawa.example"
        assert notice["X-SMS311-Notice"] == "not_texted"
        assert notice["In-Reply-To"] == email.message_from_bytes(below)["Message-ID"]
        text = body_text(notice)
        assert "below the signature line" in text and "sous la ligne de signature" in text

        listed = loop.sms311("failed", "list")
        assert listed.returncode == 0, listed.stderr
        assert "below the signature line" in listed.stdout
        assert "from=jane@ottawa.example" in listed.stdout

        # The resident's next text answers the agent's reply in the thread.
        loop.text("613-555-0142", "Thank you")
        wait_for(lambda: len(loop.collector.messages) == 3, "the follow-up email")
        follow_up = loop.collector.messages[2]
        assert follow_up["In-Reply-To"] == email.message_from_bytes(answer)["Message-ID"]
        assert len(loop.api.messages) == 1
    finally:
        output = loop.stop()
    assert "sidewalk" not in output and "Crew booked" not in output
