"""No reply goes astray silently (issue 10, items 1-4), through the real pipeline:
ReplyService over a real SQLite store, the dispatcher, the real twilio client against the
fake Twilio API.

- a reply that is not texted is kept in the Failed list, and its sender, when they are an
  agent, gets a bilingual "not_texted" notice saying why (strangers get nothing);
- `ReplyService.retry` hands a kept reply over again once its cause is fixed;
- mail to the From address is routed by In-Reply-To/References, with the sender check;
- a second copy of a reply (same Message-ID, other bytes) is not texted again;
- the resident's next email answers the agent's reply (In-Reply-To/References).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from gateway.app import Gateway
from gateway.rules.agent_notice import AgentNotice, compose_notice
from gateway.rules.resident_email import ResidentEmail
from gateway.run.worker import ingress_recipients
from gateway.settings import load_settings
from gateway.store.reply_mail import get_failed_email, list_failed_emails
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
    unroutable,
)


@pytest.fixture
def gateway_options(api: FakeTwilio) -> dict[str, Any]:
    """conftest's `gateway`, sending through the fake Twilio API (conftest's `api`)."""
    return {"sms": twilio_sms(api)}




def notice_text(notice: AgentNotice) -> str:
    return str(compose_notice(notice).get_content())


@dataclass(frozen=True)
class Case:
    label: str
    raw: Callable[[ResidentEmail], bytes]
    reason: str  # in the Disposition and the Failed list
    told: str | None  # who gets the notice (None: nobody)
    why: str | None = None
    says: tuple[str, ...] = field(default_factory=tuple)  # in the notice, EN and FR


CASES = [
    Case(
        "answer below the signature line",
        lambda e: agent_reply(e, "-- \nJane Doe, 311\n\nThe crew comes on Tuesday."),
        "below the signature line", AGENT, "below_signature",
        ("below the signature line", "sous la ligne de signature"),
    ),
    Case(
        "nothing written above the quote",
        lambda e: agent_reply(e, ""),
        "empty reply", AGENT, "empty",
        ("nothing was left to text", "il ne restait rien"),
    ),
    Case(
        "agent of another city",
        lambda e: agent_reply(e, "We will look.", sender="bob@montreal.example"),
        "not an agent", "bob@montreal.example", "not_agent",
        ("bob@montreal.example is not one of the agents who may answer Ottawa",
         "ne fait pas partie des agents"),
    ),
    Case(
        "stranger",
        lambda e: agent_reply(e, "Hi", sender="someone@gmail.example"),
        "not an agent", None,
    ),
    Case(
        "unreadable",
        lambda e: agent_reply(e, "\u00ff\u00feF\u0000i\u0000x\u0000 \u00a4\u00a6\u00a8\u00ac"),
        "unreadable", AGENT, "unreadable",
        ("cannot be read", "illisible"),
    ),
    Case(
        "unroutable, from an agent",
        lambda e: unroutable(),
        "unroutable", AGENT, "unroutable",
        ("does not answer any conversation", "ne répond à aucune conversation"),
    ),
    Case("unroutable, from a stranger", lambda e: unroutable("x@spam.example"), "unroutable",
         None),
]


@pytest.mark.parametrize("case", CASES, ids=[c.label for c in CASES])
def test_a_reply_not_texted_is_kept_and_an_agent_is_told_why(
    gateway: Gateway, api: FakeTwilio, case: Case
) -> None:
    email = resident_in_ottawa(gateway)
    raw = case.raw(email)
    disposition = handle(gateway, raw)
    assert disposition.outcome == "failed" and case.reason in disposition.reason
    assert disposition.kept
    assert sms_rows(gateway) == []
    # kept whole, with its reason, for `sms311 failed list/show/retry`
    with gateway.store.transaction() as tx:
        [kept] = list_failed_emails(tx)
        full = get_failed_email(tx, kept.id)
    assert full is not None and full.raw == raw and case.reason in kept.reason
    assert kept.size == len(raw) and not kept.truncated
    assert kept.why == (case.why or ("not_agent" if "agent" in case.reason else "unroutable"))
    told = [n for n in notices(gateway) if n.kind == "not_texted"]
    if case.told is None:
        assert told == []  # no backscatter to strangers
        return
    [notice] = told
    assert notice.to == (case.told,) and notice.details["why"] == case.why
    body = notice_text(notice)
    for phrase in case.says:
        assert phrase in body, (phrase, body)
    agent_message_id = EmailMessageOf(raw)["Message-ID"]
    assert notice.in_reply_to == agent_message_id  # it answers the agent's own email
    if case.why == "unroutable":
        assert notice.conversation_id is None
        assert notice.subject == "pothole list"
        assert "X-SMS311-Conversation" not in compose_notice(notice)
    else:
        assert notice.conversation_id is not None
        assert notice.reply_to == email.reply_to  # replying to the notice answers the resident
    # A second copy of the same email is neither kept twice nor told twice.
    again = handle(gateway, raw)
    assert again.outcome == "failed" and "already handled" in again.reason
    assert again.kept  # so the ingress answers 250 to a second delivery too
    assert len([n for n in notices(gateway) if n.kind == "not_texted"]) == 1


def EmailMessageOf(raw: bytes) -> EmailMessage:
    from email import policy
    from email.parser import BytesParser

    message = BytesParser(policy=policy.default).parsebytes(raw)
    assert isinstance(message, EmailMessage)
    return message


def test_a_kept_reply_is_texted_on_retry_once_its_cause_is_fixed(
    tmp_path: Path, api: FakeTwilio
) -> None:
    gateway = twilio_gateway(tmp_path, api)
    try:
        email = resident_in_ottawa(gateway)
        raw = agent_reply(email, "Fixed on Monday.", sender="contractor@roads.example")
        assert handle(gateway, raw).outcome == "failed"
        with gateway.store.transaction() as tx:
            [kept] = list_failed_emails(tx)
        # Not fixed yet: still failed, no second notice (nobody was told: a stranger).
        still = gateway.replies().retry(kept.id)
        assert still.outcome == "failed" and still.kept
        with gateway.store.transaction() as tx:
            assert [k.id for k in list_failed_emails(tx)] == [kept.id]
    finally:
        gateway.close()
    # The operator adds the contractor to Ottawa's agents.
    map_path = tmp_path / "municipality_map.yaml"
    map_path.write_text(
        map_path.read_text().replace('agents: ["@ottawa.example"]',
                                     'agents: ["@ottawa.example", "contractor@roads.example"]'),
        encoding="utf-8",
    )
    gateway = Gateway.from_settings(load_settings(tmp_path / "sms311.yaml", environ={}))
    try:
        done = gateway.replies().retry(kept.id)
        assert done.outcome == "processed", done
        dispatch(gateway)
        assert [m["Body"] for m in api.messages] == ["Fixed on Monday."]
        with gateway.store.transaction() as tx:
            assert list_failed_emails(tx) == []
            [resolved] = list_failed_emails(tx, include_resolved=True)
        assert resolved.resolved_at is not None and "processed" in (resolved.resolution or "")
        # The email itself arriving again later is not texted twice.
        assert "already handled" in handle(gateway, raw).reason
        again = gateway.replies().retry(kept.id)
        assert "already handled" in again.reason
        dispatch(gateway)
        assert len(api.messages) == 1
        with pytest.raises(KeyError):
            gateway.replies().retry(kept.id + 100)
    finally:
        gateway.close()


def test_a_reply_to_the_from_address_is_routed_by_its_thread(
    gateway: Gateway, api: FakeTwilio
) -> None:
    email = resident_in_ottawa(gateway)
    check = ingress_recipients(gateway)

    def accept(address: str) -> bool | str:
        return asyncio.run(check(address))

    assert accept("sms@gateway.example") is True and accept("SMS@Gateway.Example") is True
    assert accept(email.reply_to) is True
    assert accept("postmaster@gateway.example") is False
    assert accept("sms@elsewhere.example") is False
    unknown = accept(email.reply_to.replace("+", "+x"))
    assert isinstance(unknown, str) and unknown.startswith("550")
    raw = agent_reply(email, "On our list.", token=False, headers={})
    raw = raw.replace(b"To: 311@ottawa.example", b"To: 311 Text <sms@gateway.example>")
    assert b"sms@gateway.example" in raw
    assert handle(gateway, raw).outcome == "processed"
    # ...with the same sender check
    stranger = agent_reply(email, "Hi", token=False, sender="x@spam.example")
    assert handle(gateway, stranger).outcome == "failed"
    dispatch(gateway)
    assert [m["Body"] for m in api.messages] == ["On our list."]


def test_a_second_copy_of_a_reply_with_other_bytes_is_not_texted_again(
    gateway: Gateway, api: FakeTwilio
) -> None:
    """One copy per recipient (Reply-All to the reply address and the From address, or
    IMAP and the ingress both): other headers, same Message-ID."""
    raw = agent_reply(resident_in_ottawa(gateway), "Crew sent.")
    assert handle(gateway, raw).outcome == "processed"
    copy = b"Delivered-To: sms@gateway.example\r\n" + raw
    second = handle(gateway, copy)
    assert second.outcome == "ignored" and "same Message-ID" in second.reason
    dispatch(gateway)
    assert [m["Body"] for m in api.messages] == ["Crew sent."]


def test_the_residents_next_email_answers_the_agents_reply(
    gateway: Gateway, api: FakeTwilio
) -> None:
    first = resident_in_ottawa(gateway)
    raw = agent_reply(first, "Which corner exactly?")
    agent_id = EmailMessageOf(raw)["Message-ID"]
    assert handle(gateway, raw).outcome == "processed"
    text_in(gateway, "Bank and Gladstone, north-east corner")
    following = emails_out(gateway)[-1]
    assert following.in_reply_to == agent_id
    assert following.references[-1] == agent_id
    assert first.message_id in following.references
    # and an agent answering THAT email (whose token a client dropped) is routed by it
    reply_to_it = agent_reply(following, "Thanks, noted.", token=False)
    assert handle(gateway, reply_to_it).outcome == "processed"
    dispatch(gateway)
    assert [m["Body"] for m in api.messages] == ["Which corner exactly?", "Thanks, noted."]
    assert [m["To"] for m in api.messages] == [PHONE, PHONE]


def test_the_failed_commands_list_show_retry_and_delete(
    tmp_path: Path, api: FakeTwilio, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    from gateway.cli import main

    gateway = twilio_gateway(tmp_path, api)
    try:
        email = resident_in_ottawa(gateway)
        raw = agent_reply(email, "Soon.", sender="temp@contractor.example")
        stranger = unroutable("x@spam.example")
        assert handle(gateway, raw).outcome == "failed"
        assert handle(gateway, stranger).outcome == "failed"
    finally:
        gateway.close()
    config = str(tmp_path / "sms311.yaml")
    capsysbinary.readouterr()

    assert main(["--config", config, "failed"]) == 0  # `list` is the default
    out, err = capsysbinary.readouterr()
    lines = out.decode().splitlines()
    assert len(lines) == 2 and b"2 failed reply email(s) not resolved" in err
    newest, oldest = (line.split("\t") for line in lines)
    assert "unroutable" in newest[-1] and "from=x@spam.example" in newest
    assert "not an agent" in oldest[-1] and "conversation=1" in oldest
    first, second = int(oldest[0]), int(newest[0])

    assert main(["--config", config, "failed", "show", str(first)]) == 0
    assert capsysbinary.readouterr().out == raw  # byte for byte

    # still refused: exit 1 and the reason
    assert main(["--config", config, "failed", "retry", str(first)]) == 1
    assert b"not an agent" in capsysbinary.readouterr().out

    assert main(["--config", config, "failed", "delete", str(second)]) == 0
    assert main(["--config", config, "failed", "delete", str(second)]) == 1
    assert main(["--config", config, "failed", "show", "999"]) == 1
    assert main(["--config", config, "failed", "retry", "999"]) == 1
    capsysbinary.readouterr()
    assert main(["--config", config, "failed", "list", "--all"]) == 0
    assert len(capsysbinary.readouterr().out.splitlines()) == 1
