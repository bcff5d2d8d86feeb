"""One reply path for both doors (gateway.flows.agent_reply): a console reply and an email reply
queue the same SMS rows over a real SQLite store; a console reply is also copied into
the conversation's email thread (a "console_reply" notice, composed by gateway.rules.agent_notice)."""

from __future__ import annotations

import email
import email.policy
import json
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import make_msgid
from typing import Any

import pytest

from gateway.app import Gateway
from gateway.flows.agent_reply import QueuedReply, prepare_text, queue_reply
from gateway.mail.types import MailOrigin
from gateway.rules import segments
from gateway.rules.agent_notice import AgentNotice, compose_notice
from gateway.rules.reading import parse_reply
from gateway.rules.resident_email import ResidentEmail
from gateway.sms.base import InboundText
from gateway.store import Conversation, StoredMessage
from tests.gateway_fixtures import stamp_authenticated

PHONE = "+16135550123"
MAILBOX = "311@ottawa.example"
CONSOLE_AGENT = "sam.tremblay@ottawa.example"
CONSOLE_NAME = "Sam Tremblay"
EMAIL_AGENT = "jane.doe@ottawa.example"
NOW = datetime(2026, 11, 22, 15, 4, tzinfo=UTC)
ORIGIN = MailOrigin(kind="imap", mailbox="INBOX", uidvalidity=1, uid=1)


_sids = iter(range(10_000))


def text_in(gateway: Gateway, body: str, phone: str = PHONE) -> None:
    gateway.inbound.handle(
        InboundText(
            sid=f"SM{next(_sids):032d}", phone=phone, to="31100", body=body,
            received_at=datetime.now(UTC),
        )
    )  # fmt: skip


def resident_emails(gateway: Gateway) -> list[ResidentEmail]:
    return [
        ResidentEmail.from_dict(i.payload)
        for i in gateway.store.list_outbox(None)
        if i.kind == "email" and i.payload.get("type", "resident") == "resident"
    ]


def notice_payloads(gateway: Gateway) -> list[dict[str, Any]]:
    return [
        i.payload
        for i in gateway.store.list_outbox(None)
        if i.kind == "email" and i.payload.get("type") == "notice"
    ]


def notices(gateway: Gateway) -> list[AgentNotice]:
    return [AgentNotice.from_dict(p) for p in notice_payloads(gateway)]


def sms_rows(gateway: Gateway) -> list[dict[str, Any]]:
    return [i.payload for i in gateway.store.list_outbox(None) if i.kind == "sms"]


def conversation_of(gateway: Gateway, resident_email: ResidentEmail) -> Conversation:
    with gateway.store.transaction() as tx:
        conversation = tx.conversation_by_email([resident_email.message_id])
    assert conversation is not None
    return conversation


def start(gateway: Gateway, phone: str = PHONE) -> tuple[ResidentEmail, Conversation]:
    """A resident in Ottawa texts; their first email goes to the mailbox."""
    text_in(gateway, "Pothole on Bank St at Gladstone", phone)
    text_in(gateway, "Ottawa", phone)
    first = resident_emails(gateway)[-1]
    return first, conversation_of(gateway, first)


def messages(gateway: Gateway, conversation: Conversation) -> list[StoredMessage]:
    with gateway.store.transaction() as tx:
        return tx.messages_of(conversation.id)


def console_reply(
    gateway: Gateway,
    conversation: Conversation,
    text: str,
    *,
    agent: str = CONSOLE_AGENT,
    agent_name: str | None = CONSOLE_NAME,
    mailbox: str | None = MAILBOX,
) -> QueuedReply:
    with gateway.store.transaction() as tx:
        return queue_reply(
            tx, gateway.settings, conversation, agent=agent, text=text, now=NOW,
            via="console", agent_name=agent_name, mailbox=mailbox,
        )  # fmt: skip


def email_reply(gateway: Gateway, conversation: Conversation, text: str) -> QueuedReply:
    with gateway.store.transaction() as tx:
        return queue_reply(
            tx, gateway.settings, conversation, agent=EMAIL_AGENT, text=text, now=NOW,
            via="email",
        )  # fmt: skip


def set_agent(gateway: Gateway, conversation: Conversation, agent: str | None) -> None:
    with gateway.store.transaction() as tx:
        tx.set_agent(conversation.id, agent)


def visible(notice: AgentNotice) -> tuple[EmailMessage, str, str]:
    """The copy as the mailbox receives it: headers, body, and the body on one line."""
    raw = compose_notice(notice).as_bytes()
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    part = parsed.get_body(("plain",))
    assert part is not None
    body = str(part.get_content()).replace("\r\n", "\n")
    return parsed, body, " ".join(body.split())


def mail_client_reply(to: AgentNotice | ResidentEmail, body: str, sender: str) -> bytes:
    """What a mailbox user's mail client sends on Reply: quoted history below."""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to.reply_to
    message["Subject"] = "RE: " + to.subject
    message["Message-ID"] = make_msgid(domain="ottawa.example")
    message["In-Reply-To"] = to.message_id
    message["References"] = " ".join((*to.references, to.message_id))
    message.set_content(f"{body}\n\nOn Sun, Nov 22, 2026 at 10:04 AM 311 Text wrote:\n> …\n")
    return stamp_authenticated(bytes(message))


# -- the console door -----------------------------------------------------------------------


def test_console_reply_is_queued_as_sms_like_an_email_reply(gateway: Gateway) -> None:
    _, conversation = start(gateway)
    queued = console_reply(gateway, conversation, "A crew will fix it this week.")
    [message] = [m for m in messages(gateway, conversation) if m.direction == "out"]
    assert queued == QueuedReply(
        message_id=message.id, parts=1, shortened=False, opted_out=False,
        reason=f"texted in 1 part(s); copy to {MAILBOX}",
    )  # fmt: skip
    assert message.body == "A crew will fix it this week."
    assert message.status == "queued"
    assert message.agent_address == CONSOLE_AGENT
    assert message.via == "console"
    [sms] = sms_rows(gateway)
    assert sms == {
        "type": "reply",
        "to": PHONE,
        "body": "A crew will fix it this week.",
        "message_id": message.id,
        "conversation_id": conversation.id,
        "part": 1,
        "parts": 1,
        "agent": CONSOLE_AGENT,
        "queued_at": NOW.isoformat(),
    }


def test_the_copy_goes_into_the_thread_to_the_mailbox(gateway: Gateway) -> None:
    first, conversation = start(gateway)
    console_reply(gateway, conversation, "A crew will fix it this week.")
    [payload] = notice_payloads(gateway)
    copy = AgentNotice.from_dict(json.loads(json.dumps(payload)))
    assert copy.to_dict() == payload  # the outbox payload round-trips
    assert copy.kind == "console_reply"
    assert copy.details == {
        "agent_name": CONSOLE_NAME,
        "agent_email": CONSOLE_AGENT,
        "text": "A crew will fix it this week.",
        "outcome": "texted",
        "parts": 1,
        "shortened": False,
    }
    assert copy.to == (MAILBOX,)
    assert copy.cc == ()  # nobody has answered yet: no sticky agent
    assert copy.subject == conversation.subject == first.subject
    assert copy.reply_to == first.reply_to  # answering the copy texts the resident
    assert copy.in_reply_to == first.message_id  # the previous email of the thread
    assert copy.references == (first.message_id,)
    assert copy.conversation_id == conversation.id
    assert copy.language == "en"
    with gateway.store.transaction() as tx:
        assert tx.conversation_by_email([copy.message_id]) == tx.get_conversation(conversation.id)
        again = tx.get_conversation(conversation.id)
    assert again is not None and again.thread_message_ids[-1] == copy.message_id


def test_the_sticky_agent_is_in_cc_when_it_is_another_address(gateway: Gateway) -> None:
    _, conversation = start(gateway)
    set_agent(gateway, conversation, EMAIL_AGENT)
    # `conversation` was read before set_agent: queue_reply reads the sticky agent itself
    console_reply(gateway, conversation, "First answer.")
    set_agent(gateway, conversation, "311@Ottawa.Example")  # the mailbox itself
    console_reply(gateway, conversation, "Second answer.")
    first, second = notices(gateway)
    assert (first.to, first.cc) == ((MAILBOX,), (EMAIL_AGENT,))
    assert (second.to, second.cc) == ((MAILBOX,), ())
    assert second.in_reply_to == first.message_id  # chained: copy after copy
    parsed, _, _ = visible(first)
    assert parsed["To"] == MAILBOX and parsed["Cc"] == EMAIL_AGENT


def test_the_copy_reads_in_english_and_french(gateway: Gateway) -> None:
    _, conversation = start(gateway)
    console_reply(gateway, conversation, "A crew will fix it this week.\n\nThank you!")
    [copy] = notices(gateway)
    parsed, body, text = visible(copy)
    assert parsed["Subject"] == "Re: " + conversation.subject
    assert parsed["X-SMS311-Notice"] == "console_reply"
    assert parsed["Auto-Submitted"] == "auto-generated"
    assert parsed["Reply-To"] == copy.reply_to
    assert parsed["Message-ID"] == copy.message_id
    english = (
        "Sam Tremblay (sam.tremblay@ottawa.example) answered from the 311 web console. "
        "The reply was texted to the resident."
    )
    french = (
        "Sam Tremblay (sam.tremblay@ottawa.example) a répondu depuis la console web 311. "
        "La réponse a été envoyée par texto à la personne."
    )
    assert english in text and french in text
    assert text.index(english) < text.index(french)  # an English resident: English first
    assert "Reply / Réponse :\n> A crew will fix it this week.\n>\n> Thank you!\n" in body
    assert "\n-- \nAutomatic copy from the 311 text gateway" in body
    assert "répondez à ce courriel pour répondre par texto" in body


def test_a_french_residents_copy_reads_in_french_first(gateway: Gateway) -> None:
    phone = "+15145550199"
    text_in(gateway, "Bonjour, il y a un nid-de-poule sur la rue Sherbrooke", phone)
    text_in(gateway, "Montréal", phone)
    with gateway.store.transaction() as tx:
        resident = tx.get_resident(phone)
    assert resident is not None and resident.language == "fr"
    conversation = conversation_of(gateway, resident_emails(gateway)[-1])
    console_reply(
        gateway, conversation, "Une équipe passera demain.", agent="luc@montreal.example",
        agent_name=None, mailbox="311@montreal.example",
    )  # fmt: skip
    [copy] = notices(gateway)
    assert copy.language == "fr" and copy.to == ("311@montreal.example",)
    _, body, text = visible(copy)
    french = (
        "luc@montreal.example a répondu depuis la console web 311. "
        "La réponse a été envoyée par texto à la personne."
    )
    english = (
        "luc@montreal.example answered from the 311 web console. "
        "The reply was texted to the resident."
    )
    assert text.index(french) < text.index(english)
    assert "Réponse / Reply:\n> Une équipe passera demain.\n" in body
    assert "\n-- \nCopie automatique de la passerelle texto 311" in body


def test_a_long_console_reply_is_split_and_the_agent_told(gateway: Gateway) -> None:
    _, conversation = start(gateway)
    text = " ".join(f"word{i}" for i in range(3000))  # ~23,000 characters
    queued = console_reply(gateway, conversation, text)
    assert (queued.parts, queued.shortened, queued.opted_out) == (5, True, False)
    assert queued.reason == f"texted in 5 part(s), shortened (agent told); copy to {MAILBOX}"
    rows = sms_rows(gateway)
    assert [r["part"] for r in rows] == [1, 2, 3, 4, 5]
    assert all(r["parts"] == 5 and r["message_id"] == queued.message_id for r in rows)
    assert rows[0]["body"].startswith("(1/5) word0 word1")
    assert rows[-1]["body"].endswith("...")
    assert all(len(r["body"]) <= 1600 for r in rows)
    copy, shortened = notices(gateway)
    assert copy.kind == "console_reply" and shortened.kind == "shortened"
    assert copy.details["parts"] == 5 and copy.details["shortened"] is True
    assert copy.details["text"] == text  # the whole reply, not what fitted
    assert shortened.to == (CONSOLE_AGENT,)
    assert shortened.details["original_chars"] == len(text)
    assert shortened.in_reply_to == copy.message_id  # the notice follows the copy
    _, _, shown = visible(copy)
    assert "texted to the resident in 5 messages (shortened: it was too long)." in shown
    assert (
        "envoyée par texto à la personne en 5 textos (raccourcie : elle était trop longue)."
        in shown
    )


def test_opted_out_resident_gets_nothing_and_the_copy_says_so(gateway: Gateway) -> None:
    first, conversation = start(gateway)
    text_in(gateway, "STOP")
    outbox_before = len(gateway.store.list_outbox(None))
    queued = console_reply(gateway, conversation, "We fixed it.")
    assert queued.opted_out and queued.parts == 0 and not queued.shortened
    assert queued.reason == f"not texted: the resident opted out (copy to {MAILBOX} says so)"
    assert sms_rows(gateway) == []
    [message] = [m for m in messages(gateway, conversation) if m.direction == "out"]
    assert (message.id, message.status, message.via) == (queued.message_id, "not_sent", "console")
    assert message.agent_address == CONSOLE_AGENT and message.body == "We fixed it."
    # one email only: the copy, no separate "opted_out" notice
    assert len(gateway.store.list_outbox(None)) == outbox_before + 1
    [copy] = notices(gateway)
    assert copy.kind == "console_reply" and copy.to == (MAILBOX,)
    assert copy.details["outcome"] == "opted_out" and copy.details["parts"] == 0
    assert copy.in_reply_to == first.message_id
    _, body, text = visible(copy)
    assert (
        "answered from the 311 web console. The reply was NOT texted: the resident has opted "
        "out of text messages (they texted STOP)." in text
    )
    assert "La réponse n'a PAS été envoyée par texto : la personne s'est désabonnée" in text
    assert "texted to the resident" not in text
    assert "> We fixed it." in body


@pytest.mark.parametrize("text", ["", "   ", "\n\t\r\n", "\u200b\u00a0\u2060", "\r\n \u2028 "])
def test_an_empty_console_reply_is_refused_before_anything_is_written(
    gateway: Gateway, text: str
) -> None:
    _, conversation = start(gateway)
    outbox_before = gateway.store.list_outbox(None)
    with pytest.raises(ValueError, match="empty"):
        console_reply(gateway, conversation, text)
    assert gateway.store.list_outbox(None) == outbox_before
    assert [m for m in messages(gateway, conversation) if m.direction == "out"] == []


def test_an_empty_email_reply_is_refused_too(gateway: Gateway) -> None:
    _, conversation = start(gateway)
    with pytest.raises(ValueError, match="empty"):
        email_reply(gateway, conversation, " \n ")


def test_unknown_door_and_nowhere_to_copy_are_refused(gateway: Gateway) -> None:
    _, conversation = start(gateway)
    with pytest.raises(ValueError, match="unknown reply door"), gateway.store.transaction() as tx:
        queue_reply(
            tx, gateway.settings, conversation, agent=CONSOLE_AGENT, text="Hi", now=NOW,
            via="fax",  # type: ignore[arg-type]
        )  # fmt: skip
    with pytest.raises(ValueError, match="no mailbox"):
        console_reply(gateway, conversation, "Hi", mailbox=None)
    assert sms_rows(gateway) == [] and notices(gateway) == []
    # without a mailbox, the copy goes to the sticky agent
    set_agent(gateway, conversation, EMAIL_AGENT)
    console_reply(gateway, conversation, "Hi", mailbox="  ")
    [copy] = notices(gateway)
    assert (copy.to, copy.cc) == ((EMAIL_AGENT,), ())


def test_console_text_is_prepared_like_an_email_replys_text(gateway: Gateway) -> None:
    typed = (
        "\r\n  Bonjour,\u00a0\r\n\r\n\r\n\r\nL\u2019équipe « passera » demain\u200b \u2014 "
        "merci\u2026\t\r\n---\r\n"
    )
    # what the reply reader makes of the same words in an email
    message = EmailMessage()
    message["From"] = EMAIL_AGENT
    message["To"] = "reply@gateway.example"
    message["Subject"] = "Re: x"
    message.set_content(typed)
    from_email = parse_reply(bytes(message), reply_address="reply+{token}@gateway.example").text
    assert prepare_text(typed) == from_email
    assert from_email == "Bonjour,\n\nL\u2019équipe « passera » demain \u2014 merci\u2026"

    _, conversation = start(gateway)
    console_reply(gateway, conversation, typed)
    [message_row] = [m for m in messages(gateway, conversation) if m.direction == "out"]
    assert message_row.body == from_email  # stored as prepared
    [sms] = sms_rows(gateway)
    assert sms["body"] == 'Bonjour,\n\nL\'équipe "passera" demain - merci...'  # GSM-7
    assert [sms["body"]] == segments.split_for_sms(from_email)[0]


# -- the email door: exactly as before ------------------------------------------------------


def test_email_door_queues_the_same_sms_and_no_copy(gateway: Gateway) -> None:
    _, conversation = start(gateway)
    queued = email_reply(gateway, conversation, "A crew will fix it this week.")
    assert (queued.parts, queued.shortened, queued.opted_out) == (1, False, False)
    assert queued.reason == "texted in 1 part(s)"
    [message] = [m for m in messages(gateway, conversation) if m.direction == "out"]
    assert (message.status, message.via, message.agent_address) == (
        "queued", "email", EMAIL_AGENT,
    )  # fmt: skip
    [sms] = sms_rows(gateway)
    assert sms["body"] == "A crew will fix it this week." and sms["agent"] == EMAIL_AGENT
    assert notices(gateway) == []  # the agent's own email is already in the thread


def test_email_door_opted_out_tells_the_agent_with_the_opted_out_notice(
    gateway: Gateway,
) -> None:
    first, conversation = start(gateway)
    text_in(gateway, "STOP")
    queued = email_reply(gateway, conversation, "We fixed it.")
    assert queued.opted_out and queued.parts == 0
    assert queued.reason == "not texted: the resident opted out (agent told)"
    assert sms_rows(gateway) == []
    [notice] = notices(gateway)
    assert notice.kind == "opted_out" and notice.to == (EMAIL_AGENT,) and notice.cc == ()
    assert notice.details == {"reply_excerpt": "We fixed it."}
    assert notice.in_reply_to == first.message_id
    [message] = [m for m in messages(gateway, conversation) if m.direction == "out"]
    assert (message.status, message.via) == ("not_sent", "email")


def test_email_door_long_reply_has_only_the_shortened_notice(gateway: Gateway) -> None:
    _, conversation = start(gateway)
    text = " ".join(f"word{i}" for i in range(3000))
    queued = email_reply(gateway, conversation, text)
    assert queued.reason == "texted in 5 part(s), shortened (agent told)"
    assert len(sms_rows(gateway)) == 5
    assert [n.kind for n in notices(gateway)] == ["shortened"]


def test_both_doors_give_the_resident_the_same_texts(gateway: Gateway) -> None:
    reply = "L’équipe passera demain — merci « beaucoup » !\n\n" + "Détails. " * 300
    _, by_console = start(gateway, "+16135550100")
    _, by_email = start(gateway, "+16135550101")
    console_reply(gateway, by_console, reply)
    email_reply(gateway, by_email, prepare_text(reply))
    rows = sms_rows(gateway)
    console_bodies = [r["body"] for r in rows if r["conversation_id"] == by_console.id]
    email_bodies = [r["body"] for r in rows if r["conversation_id"] == by_email.id]
    assert console_bodies == email_bodies and len(console_bodies) == 2


def test_reply_service_records_the_email_door(gateway: Gateway) -> None:
    first, conversation = start(gateway)
    raw = mail_client_reply(first, "On our way.", EMAIL_AGENT)
    assert gateway.replies().handle(raw, ORIGIN).outcome == "processed"
    [message] = [m for m in messages(gateway, conversation) if m.direction == "out"]
    assert (message.via, message.agent_address, message.body) == (
        "email", EMAIL_AGENT, "On our way.",
    )  # fmt: skip


def test_a_mailbox_user_answering_the_copy_texts_the_resident(gateway: Gateway) -> None:
    _, conversation = start(gateway)
    console_reply(gateway, conversation, "Can you send a photo?")
    [copy] = notices(gateway)
    raw = mail_client_reply(copy, "No photo needed after all.", EMAIL_AGENT)
    disposition = gateway.replies().handle(raw, ORIGIN)
    assert disposition.outcome == "processed", disposition
    assert f"conversation {conversation.id}" in disposition.reason
    assert [r["body"] for r in sms_rows(gateway)] == [
        "Can you send a photo?", "No photo needed after all.",
    ]  # fmt: skip
    # routed by In-Reply-To alone too (a client that dropped the token): the copy's
    # Message-ID is in the thread index
    routing = email.message_from_bytes(raw, policy=email.policy.default)
    del routing["To"]
    routing["To"] = MAILBOX
    del routing["Message-ID"]
    routing["Message-ID"] = make_msgid(domain="ottawa.example")
    assert gateway.replies().handle(bytes(routing), ORIGIN).outcome == "processed"
    assert len(sms_rows(gateway)) == 3
