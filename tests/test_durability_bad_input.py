"""Durability: bad input in the reply mailbox (`sms311 run` end to end, Dovecot).

Garbage APPENDed to the mailbox (truncated, wrongly encoded, binary, 10 MB, not an email at
all), every piece of it addressed to a real conversation by an agent, so that only the
reader stands between it and the resident's phone: the listener keeps running, files it in
Failed with the reason logged, texts nothing of it, and still texts the good replies among
and after it (a mislabelled charset and a 10 MB attachment are no reason not to).
"""

from __future__ import annotations

import base64
import random
from collections.abc import Iterator
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path

import pytest

from gateway.app import Gateway
from gateway.mail.types import MailOrigin
from gateway.rules.resident_email import ResidentEmail, compose
from gateway.sms.base import InboundText
from tests.dovecot import Dovecot
from tests.gateway_fixtures import stamp_authenticated
from tests.loop import Loop, agent_reply, first_email, wait_for

pytestmark = pytest.mark.slow

PHONE = "613-555-0155"
MB = 1024 * 1024


@pytest.fixture
def dovecot(tmp_path: Path) -> Iterator[Dovecot]:
    with Dovecot(tmp_path) as server:
        yield server


def headers(to_city: EmailMessage, extra: str = "") -> bytes:
    """An agent's reply headers, routed to the conversation (token and In-Reply-To)."""
    return (
        "Authentication-Results: test.mx; dmarc=pass header.from=ottawa.example\r\n"
        f"From: Jane Doe <jane@ottawa.example>\r\n"
        f"To: {to_city['Reply-To']}\r\n"
        f"Subject: Re: {to_city['Subject']}\r\n"
        f"Message-ID: {make_msgid(domain='ottawa.example')}\r\n"
        f"In-Reply-To: {to_city['Message-ID']}\r\n"
        f"MIME-Version: 1.0\r\n{extra}"
    ).encode()


def garbage(to_city: EmailMessage) -> dict[str, bytes]:
    """Messages that must never be texted, by name."""
    rng = random.Random(311)

    def noise(size: int) -> bytes:
        return bytes(rng.getrandbits(8) for _ in range(size))

    good = agent_reply(to_city, "This reply was cut short by a broken server.")
    boundary = "----=_Part_1"
    return {
        "truncated in its headers": good[:160],
        "truncated multipart": headers(
            to_city, f'Content-Type: multipart/alternative; boundary="{boundary}"\r\n\r\n'
        ) + f"--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n".encode(),
        "base64 that is not base64": headers(
            to_city, "Content-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        ) + b"!!!!####$$$$%%%%****\r\n",
        "binary labelled text": headers(to_city, "Content-Type: text/plain\r\n\r\n")
        + noise(3000),
        "control characters": headers(to_city, "Content-Type: text/plain\r\n\r\n")
        + bytes(rng.randrange(1, 32) for _ in range(2000)),
        "binary attachment only": headers(
            to_city, "Content-Type: application/octet-stream\r\n"
            "Content-Transfer-Encoding: base64\r\n\r\n"
        ) + base64.encodebytes(noise(4000)),
        "utf-16 labelled utf-8": headers(to_city, "Content-Type: text/plain; charset=utf-8\r\n"
                                         "Content-Transfer-Encoding: 8bit\r\n\r\n")
        + "We will fix it tomorrow.".encode("utf-16"),
        "10 MB of binary labelled text": headers(to_city, "Content-Type: text/plain\r\n\r\n")
        + noise(10 * MB),
        "not an email at all": noise(3000),
    }


def mislabelled(to_city: EmailMessage) -> bytes:
    """A good reply whose charset is wrong (Latin-1 bytes declared UTF-8): texted right."""
    return headers(to_city, "Content-Type: text/plain; charset=utf-8\r\n"
                   "Content-Transfer-Encoding: 8bit\r\n\r\n") + "Réparé demain matin.\r\n".encode(
        "latin-1")


def with_big_attachment(to_city: EmailMessage) -> bytes:
    """A good reply with a 10 MB photo attached: the reply is texted, not the photo."""
    reply = EmailMessage()
    reply["From"] = "Jane Doe <jane@ottawa.example>"
    reply["To"] = to_city["Reply-To"]
    reply["Subject"] = "Re: " + to_city["Subject"]
    reply["Message-ID"] = make_msgid(domain="ottawa.example")
    reply["In-Reply-To"] = to_city["Message-ID"]
    reply.set_content("Photo of the repair attached.\n")
    reply.add_attachment(random.Random(7).randbytes(10 * MB), maintype="image",
                         subtype="jpeg", filename="repair.jpg")
    return stamp_authenticated(bytes(reply))


def test_garbage_in_the_mailbox_is_filed_never_texted_and_the_listener_keeps_going(
    tmp_path: Path, dovecot: Dovecot
) -> None:
    loop = Loop(tmp_path, dovecot, max_per_second=50)
    try:
        to_city = first_email(loop, PHONE)
        bad = garbage(to_city)
        names = list(bad)
        for name in names[:4]:
            dovecot.append(bad[name])
        dovecot.append(mislabelled(to_city))
        for name in names[4:]:
            dovecot.append(bad[name])
        dovecot.append(with_big_attachment(to_city))
        dovecot.append(agent_reply(to_city, "All fixed, thanks for your patience."))

        texted = ["Réparé demain matin.", "Photo of the repair attached.",
                  "All fixed, thanks for your patience."]
        wait_for(lambda: len(loop.api.messages) >= len(texted), "the good replies texted", 60)
        wait_for(lambda: dovecot.messages("INBOX") == [], "every message filed", 30)
        assert [m["Body"] for m in loop.api.messages] == texted  # and nothing else
        assert len(dovecot.messages("Failed")) == len(bad)
        assert len(dovecot.messages("Processed")) == len(texted)
        assert loop.running
        # Still listening: one more reply after all that.
        dovecot.append(agent_reply(to_city, "One more thing: the road is open."))
        wait_for(lambda: len(loop.api.messages) == len(texted) + 1, "a reply after the garbage")
    finally:
        output = loop.stop()
    failed = [line for line in output.splitlines() if "-> Failed" in line]
    assert len(failed) == len(bad), "\n".join(failed)
    reasons = "\n".join(failed)
    assert "empty reply" in reasons and "unreadable" in reasons and "malformed" in reasons
    assert "Traceback" not in output and "unexpected error" not in output


# -- what the reader makes of damaged encodings (in process: fast) -----------------------------


def queued_sms(gateway: Gateway) -> list[str]:
    return [str(i.payload["body"]) for i in gateway.store.list_outbox(None) if i.kind == "sms"]


def a_conversation(gateway: Gateway) -> EmailMessage:
    """A resident of Ottawa with one email to the city (as the agent's mail client sees it)."""
    for n, body in enumerate(("Pothole on Bank St", "Kanata")):
        gateway.inbound.handle(InboundText(
            sid=f"SM{n:032d}", phone="+16135550155", to="31100", body=body,
            received_at=datetime.now(UTC),
        ))
    [row] = [i for i in gateway.store.list_outbox(None) if i.kind == "email"]
    return compose(ResidentEmail.from_dict(row.payload), [], [])


ORIGIN = MailOrigin(kind="imap", mailbox="INBOX", uidvalidity=1, uid=1)


def test_utf16_mislabelled_as_utf8_is_never_texted_as_mojibake(gateway: Gateway) -> None:
    to_city = a_conversation(gateway)
    raw = headers(to_city, "Content-Type: text/plain; charset=utf-8\r\n\r\n") + (
        "We will fix it tomorrow.".encode("utf-16")
    )
    disposition = gateway.replies().handle(raw, ORIGIN)
    # Either read right (the byte-order mark says UTF-16) or not at all; never "ÿþW e  w i l l".
    assert queued_sms(gateway) in ([], ["We will fix it tomorrow."]), disposition


def test_a_truncated_base64_reply_is_never_texted_as_base64(gateway: Gateway) -> None:
    to_city = a_conversation(gateway)
    encoded = base64.b64encode(b"A crew is on the way to fix the pothole today.")
    raw = headers(
        to_city, "Content-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: base64\r\n\r\n"
    ) + encoded[:41]  # cut short: 41 characters, not a multiple of 4
    gateway.replies().handle(raw, ORIGIN)
    for body in queued_sms(gateway):
        assert encoded[:12].decode() not in body, f"texted undecoded base64: {body!r}"

