"""An agent's reply email to SMS through the real pipeline: ReplyService over a real
SQLite store, the dispatcher, the real twilio client against the fake Twilio API.
(The IMAP and SMTP-ingress transports have their own tests; the end-to-end test runs
the whole chain through Dovecot.)"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from gateway.app import Gateway
from gateway.flows.agent_reply import queue_reply
from gateway.flows.reply_in import is_agent
from gateway.run.worker import Dispatcher
from gateway.web import create_app
from tests.fake_twilio import FakeTwilio
from tests.flow_helpers import (
    AGENT,
    PHONE,
    agent_reply,
    dispatch,
    emails_out,
    handle,
    notices,
    resident_in_ottawa,
    sms_rows,
    text_in,
    twilio_gateway,
    twilio_sms,
)
from tests.gateway_fixtures import Resident, stamp_authenticated


@pytest.fixture
def gateway_options(api: FakeTwilio) -> dict[str, Any]:
    """conftest's `gateway`, sending through the fake Twilio API (conftest's `api`)."""
    return {"sms": twilio_sms(api)}


# -- routing and what is texted ---------------------------------------------------------


def test_agent_reply_is_texted_without_the_quoted_history(
    gateway: Gateway, api: FakeTwilio
) -> None:
    email = resident_in_ottawa(gateway)
    disposition = handle(gateway, agent_reply(email, "A crew will fix it this week."))
    assert disposition.outcome == "processed", disposition
    dispatch(gateway)
    [sent] = api.messages
    assert sent["To"] == PHONE
    assert sent["Body"] == "A crew will fix it this week."
    assert sent["From"] == "31100"
    assert sent["StatusCallback"] == "https://sms.example.ca/sms/status"


def test_a_signature_with_no_dashes_is_not_texted_the_number_in_the_answer_is(
    gateway: Gateway, api: FakeTwilio
) -> None:
    email = resident_in_ottawa(gateway)
    body = (
        "A crew will fix it this week. If it gets worse, call the roads depot at\n"
        "613-555-0100 ext 2.\n\n"
        "Thanks,\nJane Doe\nCustomer Service Agent, 311 Contact Centre\nCity of Ottawa\n"
        "Tel: 613-580-2400 ext. 12345 | jane.doe@ottawa.example\n"
    )
    assert handle(gateway, agent_reply(email, body)).outcome == "processed"
    dispatch(gateway)
    assert [m["Body"] for m in api.messages] == [
        "A crew will fix it this week. If it gets worse, call the roads depot at\n"
        "613-555-0100 ext 2."
    ]


def test_the_same_email_twice_is_texted_once(gateway: Gateway, api: FakeTwilio) -> None:
    raw = agent_reply(resident_in_ottawa(gateway), "Fixed tomorrow.")
    assert handle(gateway, raw).outcome == "processed"
    again = handle(gateway, raw)
    assert again.outcome == "processed" and "already handled" in again.reason
    dispatch(gateway)
    assert len(api.messages) == 1


def test_routed_by_in_reply_to_when_the_token_is_gone(gateway: Gateway, api: FakeTwilio) -> None:
    email = resident_in_ottawa(gateway)
    assert handle(gateway, agent_reply(email, "Noted.", token=False)).outcome == "processed"
    dispatch(gateway)
    assert [m["Body"] for m in api.messages] == ["Noted."]


@pytest.mark.parametrize(
    ("label", "kwargs", "reason"),
    [
        ("not an agent", {"sender": "someone@gmail.example"}, "not an agent"),
        ("agent of another city", {"sender": "bob@montreal.example"}, "not an agent"),
    ],
)
def test_unauthorised_senders_are_failed_never_texted(
    gateway: Gateway, api: FakeTwilio, label: str, kwargs: dict[str, Any], reason: str
) -> None:
    disposition = handle(gateway, agent_reply(resident_in_ottawa(gateway), "Hi", **kwargs))
    assert disposition.outcome == "failed", label
    assert reason in disposition.reason
    assert sms_rows(gateway) == []


def test_unroutable_email_is_failed(gateway: Gateway) -> None:
    message = EmailMessage()
    message["From"] = AGENT
    message["To"] = "311@ottawa.example"
    message["Subject"] = "hello"
    message["In-Reply-To"] = "<unknown@nowhere.example>"
    message.set_content("Who is this?")
    disposition = handle(gateway, stamp_authenticated(bytes(message)))
    assert disposition.outcome == "failed" and "unroutable" in disposition.reason
    assert sms_rows(gateway) == []


@pytest.mark.parametrize(
    ("label", "headers"),
    [
        ("RFC 3834", {"Auto-Submitted": "auto-replied"}),
        ("X-Autoreply", {"X-Autoreply": "yes"}),
        ("Precedence", {"Precedence": "bulk"}),
    ],
)
def test_auto_replies_are_ignored_never_texted(
    gateway: Gateway, label: str, headers: dict[str, str]
) -> None:
    raw = agent_reply(resident_in_ottawa(gateway), "I am out of the office until Monday.",
                      headers=headers)
    disposition = handle(gateway, raw)
    assert disposition.outcome == "ignored", label
    assert sms_rows(gateway) == []


def test_empty_reply_is_failed(gateway: Gateway) -> None:
    disposition = handle(gateway, agent_reply(resident_in_ottawa(gateway), ""))
    assert disposition.outcome == "failed" and "empty" in disposition.reason


def test_is_agent_matches_addresses_and_domains() -> None:
    agents = ("@ottawa.example", "chief@city.example")
    assert is_agent("Jane@Ottawa.Example", agents)
    assert is_agent("chief@city.example", agents)
    assert not is_agent("jane@ottawa.example.evil", agents)
    assert not is_agent("other@city.example", agents)
    assert not is_agent("", agents)


# -- opted out, long replies ----------------------------------------------------------------


def test_reply_to_an_opted_out_resident_is_not_sent_and_the_agent_is_told(
    gateway: Gateway, api: FakeTwilio
) -> None:
    email = resident_in_ottawa(gateway)
    text_in(gateway, "STOP")
    disposition = handle(gateway, agent_reply(email, "We fixed it."))
    assert disposition.outcome == "processed" and "opted out" in disposition.reason
    assert sms_rows(gateway) == []
    [notice] = notices(gateway)
    assert notice.kind == "opted_out" and notice.to == (AGENT,)
    assert notice.in_reply_to == email.message_id  # in the thread
    dispatch(gateway)
    assert api.messages == []


def test_long_reply_is_sent_whole_up_to_1600_characters(gateway: Gateway, api: FakeTwilio) -> None:
    email = resident_in_ottawa(gateway)
    body = ("The crew inspected the road. " * 50).strip()  # ~1,450 characters
    assert handle(gateway, agent_reply(email, body)).outcome == "processed"
    dispatch(gateway)
    assert [m["Body"] for m in api.messages] == [body]
    assert notices(gateway) == []


def test_very_long_reply_is_split_and_if_cut_the_agent_is_told(
    gateway: Gateway, api: FakeTwilio
) -> None:
    email = resident_in_ottawa(gateway)
    body = " ".join(f"word{i}" for i in range(3000))  # ~23,000 characters
    assert handle(gateway, agent_reply(email, body)).outcome == "processed"
    dispatch(gateway)
    assert 1 < len(api.messages) <= 10
    assert all(len(m["Body"]) <= 1600 for m in api.messages)
    assert [n.kind for n in notices(gateway)] == ["shortened"]


# -- sticky conversations --------------------------------------------------------------------


def test_after_an_agent_answers_the_resident_texts_go_to_that_agent(gateway: Gateway) -> None:
    email = resident_in_ottawa(gateway)
    handle(gateway, agent_reply(email, "Can you send a photo?"))
    text_in(gateway, "Here is more detail")
    latest = emails_out(gateway)[-1]
    assert latest.to == (AGENT,)
    assert latest.cc == ("311@ottawa.example",)
    assert latest.subject == email.subject


def test_close_command_ends_the_conversation(gateway: Gateway, api: FakeTwilio) -> None:
    email = resident_in_ottawa(gateway)
    handle(gateway, agent_reply(email, "Repaired today, thank you!\n#close"))
    dispatch(gateway)
    assert [m["Body"] for m in api.messages] == ["Repaired today, thank you!"]
    text_in(gateway, "Another pothole on Elgin")
    latest = emails_out(gateway)[-1]
    assert latest.to == ("311@ottawa.example",)  # not sticky any more
    assert latest.subject != email.subject  # a new thread
    assert latest.in_reply_to is None


def test_idle_conversation_closes_and_a_new_thread_starts(gateway: Gateway) -> None:
    email = resident_in_ottawa(gateway)
    later = datetime.now(UTC) + timedelta(hours=gateway.settings.conversations.idle_close_hours + 1)
    text_in(gateway, "Still there a week later", at=later)
    latest = emails_out(gateway)[-1]
    assert latest.subject != email.subject and latest.in_reply_to is None


# -- the provider side --------------------------------------------------------------------------


def test_429_burst_is_retried_and_sent_once(gateway: Gateway, api: FakeTwilio) -> None:
    email = resident_in_ottawa(gateway)
    handle(gateway, agent_reply(email, "On our way."))
    api.fail_next(3, 429, 20429)
    hours = iter(range(1, 100))
    dispatcher = Dispatcher(gateway, now=lambda: datetime.now(UTC) + timedelta(hours=next(hours)))
    for _ in range(5):  # each pass is an hour later: every backoff has expired
        asyncio.run(dispatcher.dispatch_once("sms"))
    assert [m["Body"] for m in api.messages] == ["On our way."]
    assert len(api.attempts) == 4


def test_opted_out_at_the_provider_marks_the_resident_and_tells_the_agent(
    gateway: Gateway, api: FakeTwilio
) -> None:
    email = resident_in_ottawa(gateway)
    handle(gateway, agent_reply(email, "Fixed."))
    api.fail_next(1, 400, 21610)
    dispatch(gateway)
    assert api.messages == []
    assert [n.kind for n in notices(gateway)] == ["opted_out"]
    with gateway.store.transaction() as tx:
        resident = tx.get_resident(PHONE)
    assert resident is not None and resident.opted_out


def test_failed_delivery_callback_is_reported_to_the_agent(
    gateway: Gateway, api: FakeTwilio
) -> None:
    email = resident_in_ottawa(gateway)
    handle(gateway, agent_reply(email, "We will call you."))
    dispatch(gateway)
    [sent] = api.messages
    client = create_app(gateway).test_client()
    resident = Resident(client, gateway.settings)
    form = {"MessageSid": sent["_sid"], "MessageStatus": "undelivered", "ErrorCode": "30003"}
    assert resident.post(form, path="/sms/status").status_code == 204
    assert resident.post(form, path="/sms/status").status_code == 204  # repeated: one notice
    [notice] = notices(gateway)
    assert notice.kind == "delivery_failed" and notice.details["error_code"] == 30003
    assert notice.to == (AGENT,)


def test_a_send_that_may_have_happened_is_checked_not_repeated(
    gateway: Gateway, api: FakeTwilio
) -> None:
    email = resident_in_ottawa(gateway)
    handle(gateway, agent_reply(email, "We are on it."))
    api.hang_next(1, "close")  # Twilio sends the SMS but the answer never arrives
    hours = iter(range(0, 100))
    dispatcher = Dispatcher(gateway, now=lambda: datetime.now(UTC) + timedelta(hours=next(hours)))
    asyncio.run(dispatcher.dispatch_once("sms"))
    [pending] = [i for i in gateway.store.list_outbox("pending") if i.kind == "sms"]
    assert pending.attempts == 1
    asyncio.run(dispatcher.dispatch_once("sms"))  # the retry looks first: it was sent
    assert [m["Body"] for m in api.messages] == ["We are on it."]
    assert len(api.attempts) == 1
    assert [i for i in gateway.store.list_outbox("pending") if i.kind == "sms"] == []


def test_pacing_is_kept_at_the_provider(tmp_path: Path, api: FakeTwilio) -> None:
    gateway = twilio_gateway(tmp_path, api, rate=8)
    for n in range(20):
        phone = f"+1613555{n:04d}"
        email = resident_in_ottawa(gateway, phone)
        handle(gateway, agent_reply(email, f"Answer number {n}"))
    dispatch(gateway)
    assert len(api.messages) == 20
    assert api.max_in_window() <= 8
    gateway.close()


# -- one reply path for both doors (gateway.flows.agent_reply) --------------------------------------


def test_an_email_reply_is_recorded_as_coming_by_email_and_not_copied(
    gateway: Gateway, api: FakeTwilio
) -> None:
    email = resident_in_ottawa(gateway)
    assert handle(gateway, agent_reply(email, "A crew is on the way.")).outcome == "processed"
    with gateway.store.transaction() as tx:
        conversation = tx.conversation_by_email([email.message_id])
        assert conversation is not None
        [reply] = [m for m in tx.messages_of(conversation.id) if m.direction == "out"]
    assert (reply.via, reply.status, reply.agent_address) == ("email", "queued", AGENT)
    assert notices(gateway) == []  # no "console_reply" copy: the agent's email is the record
    dispatch(gateway)
    assert [m["Body"] for m in api.messages] == ["A crew is on the way."]


def test_a_console_reply_and_an_email_reply_share_the_thread_and_the_pacing(
    tmp_path: Path, api: FakeTwilio
) -> None:
    gateway = twilio_gateway(tmp_path, api, rate=4)
    try:
        for n in range(6):
            phone = f"+1613555{n:04d}"
            email = resident_in_ottawa(gateway, phone)
            if n % 2:
                handle(gateway, agent_reply(email, f"By email {n}"))
                continue
            with gateway.store.transaction() as tx:
                conversation = tx.conversation_by_email([email.message_id])
                assert conversation is not None
                queue_reply(
                    tx, gateway.settings, conversation, agent=AGENT, text=f"By console {n}",
                    now=datetime.now(UTC), via="console", mailbox="311@ottawa.example",
                )  # fmt: skip
        dispatch(gateway)
        assert sorted(m["Body"] for m in api.messages) == sorted(
            [f"By console {n}" for n in (0, 2, 4)] + [f"By email {n}" for n in (1, 3, 5)]
        )
        assert api.max_in_window() <= 4  # one pacing for both doors
        copies = [n for n in notices(gateway) if n.kind == "console_reply"]
        assert len(copies) == 3 and all(c.to == ("311@ottawa.example",) for c in copies)
    finally:
        gateway.close()
