"""Issue 15: "not texted" notices and strangers' mail, through the real reply pipeline
(ReplyService over a real SQLite store, the real SMTP ingress for the answer a sending server
gets).

- a "not_texted" notice goes only to a sender that passed authentication, whatever the why;
- at most `NOT_TEXTED_NOTICES_PER_HOUR` notices go to one address an hour (the replies are
  still kept; an INFO line, address masked, says the notice was withheld);
- a sender who may not answer the conversation gets a notice quoting none of their text;
- a stranger's mail (nobody's agent, or not authenticated; no usable sender: "unknown") is
  kept at most `STRANGER_KEPT_PER_DAY` times a day per sender, cut to `STRANGER_KEPT_BYTES`;
  beyond, it is answered as handled (250) but not kept; an agent's is never dropped;
- a full address in one municipality's `agents` is preferred to another's whole domain.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiosmtplib
import pytest

from gateway.app import Gateway
from gateway.flows.reply_in import (
    NOT_TEXTED_NOTICES_PER_HOUR,
    STRANGER_KEPT_BYTES,
    STRANGER_KEPT_PER_DAY,
    ReplyService,
    agent_match,
)
from gateway.mail.ingress import ReplyIngress
from gateway.mail.types import Disposition
from gateway.rules.agent_notice import NOT_TEXTED_WHY, AgentNotice, compose_notice
from gateway.rules.resident_email import ResidentEmail
from gateway.store.reply_mail import MAX_KEPT_BYTES, get_failed_email, list_failed_emails
from tests.flow_helpers import (
    AGENT,
    ORIGIN,
    agent_reply,
    emails_out,
    notices,
    resident_in_ottawa,
    sms_rows,
    text_in,
    unroutable,
)
from tests.gateway_fixtures import TEST_MAP, migrated_gateway

BELOW_SIGNATURE = "-- \nJane Doe, 311\n\nThe crew comes on Tuesday."
UNREADABLE = "\u00ff\u00feF\u0000i\u0000x\u0000 \u00a4\u00a6\u00a8\u00ac"


class Clock:
    """The reply flow's clock, moved by the test."""

    def __init__(self) -> None:
        self.at = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.at


def service(gateway: Gateway, clock: Clock) -> ReplyService:
    return ReplyService(
        gateway.store, gateway.settings, gateway.directory, gateway.metrics, now=clock,
        dkim_dns=gateway.dkim_dns,
    )  # fmt: skip


def not_texted(gateway: Gateway) -> list[AgentNotice]:
    return [n for n in notices(gateway) if n.kind == "not_texted"]


def kept(gateway: Gateway) -> list[int]:
    with gateway.store.transaction() as tx:
        return [k.id for k in list_failed_emails(tx, include_resolved=True, limit=1000)]




# -- 1a. notices only to a sender that passed authentication, for every why ------------------

Build = Callable[[ResidentEmail, bool], bytes]
BUILDS: dict[str, Build] = {
    "below_signature": lambda e, auth: agent_reply(e, BELOW_SIGNATURE, authenticated=auth),
    "empty": lambda e, auth: agent_reply(e, "", authenticated=auth),
    "not_agent": lambda e, auth: agent_reply(
        e, "We will look.", sender="bob@montreal.example", authenticated=auth
    ),
    "unroutable": lambda e, auth: unroutable(authenticated=auth),
    "unreadable": lambda e, auth: agent_reply(e, UNREADABLE, authenticated=auth),
}


def test_every_why_has_a_case() -> None:
    assert set(BUILDS) == set(NOT_TEXTED_WHY)


@pytest.mark.parametrize("why", NOT_TEXTED_WHY)
@pytest.mark.parametrize("authenticated", [True, False], ids=["authenticated", "forged"])
def test_a_notice_goes_only_to_an_authenticated_sender(
    gateway: Gateway, why: str, authenticated: bool
) -> None:
    raw = BUILDS[why](resident_in_ottawa(gateway), authenticated)
    disposition = gateway.replies().handle(raw, ORIGIN)
    assert disposition.outcome == "failed" and disposition.kept, disposition
    with gateway.store.transaction() as tx:
        [row] = list_failed_emails(tx)
    told = not_texted(gateway)
    if authenticated:
        assert row.why == why
        [notice] = told
        assert notice.details["why"] == why
    else:
        assert row.why == "not_authenticated"
        assert told == [] and notices(gateway) == []  # nothing to a claimed sender


# -- 1b. at most NOT_TEXTED_NOTICES_PER_HOUR notices to one address an hour -------------------


def test_notices_to_one_address_are_rate_limited(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    replies = service(gateway, clock)
    email = resident_in_ottawa(gateway)
    limit = NOT_TEXTED_NOTICES_PER_HOUR
    with caplog.at_level(logging.INFO, logger="gateway.flows.reply_in"):
        for _ in range(limit + 2):
            clock.at += timedelta(minutes=1)
            assert replies.handle(agent_reply(email, ""), ORIGIN).kept
    assert len(not_texted(gateway)) == limit
    assert len(kept(gateway)) == limit + 2  # every reply is still in the Failed list
    withheld = [r.getMessage() for r in caplog.records if "withheld" in r.getMessage()]
    assert len(withheld) == 2 and all(r.levelno == logging.INFO for r in caplog.records
                                      if "withheld" in r.getMessage())
    assert "j***@ottawa.example" in withheld[0]
    assert all(AGENT not in r.getMessage() for r in caplog.records)  # masked
    # Another agent is not limited by Jane's replies.
    replies.handle(agent_reply(email, "", sender="bob@ottawa.example"), ORIGIN)
    assert [n.to for n in not_texted(gateway)][-1] == ("bob@ottawa.example",)
    # An hour after the first ones, Jane is told again.
    clock.at += timedelta(minutes=61)
    replies.handle(agent_reply(email, ""), ORIGIN)
    assert [n.to for n in not_texted(gateway)].count((AGENT,)) == limit + 1


# -- 1c. a stranger's text is never quoted ----------------------------------------------------

STRANGER_WORDS = ("Zanzibar", "quokka", "marmalade", "https://evil.example/pay")


def test_a_not_agent_notice_quotes_none_of_the_senders_text(gateway: Gateway) -> None:
    email = resident_in_ottawa(gateway)
    text = "Zanzibar quokka marmalade: pay the fee at https://evil.example/pay"
    raw = agent_reply(email, text, sender="bob@montreal.example")  # Montréal's agent
    assert gateway.replies().handle(raw, ORIGIN).outcome == "failed"
    [notice] = not_texted(gateway)
    assert notice.to == ("bob@montreal.example",) and notice.details["why"] == "not_agent"
    whole = compose_notice(notice).as_string()
    assert "is not one of the agents who may answer Ottawa" in str(
        compose_notice(notice).get_content()
    )
    for word in STRANGER_WORDS:
        assert word not in whole, word
    assert "reply_excerpt" not in notice.details
    # A nobody (no agent anywhere) gets no notice at all.
    raw = agent_reply(email, text + " again", sender="x@spam.example")
    assert gateway.replies().handle(raw, ORIGIN).outcome == "failed"
    assert len(not_texted(gateway)) == 1


def test_an_agents_unroutable_email_is_quoted_back_to_them(gateway: Gateway) -> None:
    """The other side of the rule: an agent's own email answering no conversation is
    quoted to them (nothing else holds it)."""
    assert gateway.replies().handle(unroutable(body="Zanzibar crew list"), ORIGIN).kept
    [notice] = not_texted(gateway)
    assert notice.to == (AGENT,) and "Zanzibar crew list" in str(
        compose_notice(notice).get_content()
    )


# -- 2. strangers' mail: capped in count per sender and in size; agents' never dropped -------


@dataclass(frozen=True)
class Stranger:
    label: str
    raw: Callable[[ResidentEmail, int], bytes]
    sender: str | None  # as kept (None: "unknown")


def _two_from(email: ResidentEmail, n: int) -> bytes:
    raw = agent_reply(email, f"Pay now {n}", authenticated=False)
    return raw.replace(b"From: Jane Doe <", b"From: a@evil.example, Jane Doe <", 1)


STRANGERS = [
    Stranger("authenticated, nobody's agent",
             lambda e, n: agent_reply(e, f"Hi {n}", sender="x@spam.example"), "x@spam.example"),
    Stranger("not authenticated, an agent's address claimed",
             lambda e, n: agent_reply(e, f"Pay now {n}", authenticated=False), AGENT),
    Stranger("no usable sender (two addresses in From)", _two_from, None),
    Stranger("unroutable from nobody's agent",
             lambda e, n: unroutable("y@spam.example", body=f"Buy {n}"), "y@spam.example"),
]  # fmt: skip


@pytest.mark.parametrize("stranger", STRANGERS, ids=[s.label for s in STRANGERS])
def test_a_strangers_mail_is_kept_at_most_so_many_times_a_day(
    gateway: Gateway, stranger: Stranger
) -> None:
    clock = Clock()
    replies = service(gateway, clock)
    email = resident_in_ottawa(gateway)
    for n in range(STRANGER_KEPT_PER_DAY):
        clock.at += timedelta(minutes=1)
        disposition = replies.handle(stranger.raw(email, n), ORIGIN)
        assert disposition.outcome == "failed" and disposition.kept, disposition
    with gateway.store.transaction() as tx:
        rows = list_failed_emails(tx, limit=1000)
    assert len(rows) == STRANGER_KEPT_PER_DAY
    assert {r.sender for r in rows} == {stranger.sender}
    over = stranger.raw(email, STRANGER_KEPT_PER_DAY)
    dropped = replies.handle(over, ORIGIN)
    # Answered as handled (the ingress says 250, IMAP files it in Failed), but not kept.
    assert dropped.outcome == "failed" and dropped.kept
    assert dropped.reason.endswith(": not kept"), dropped.reason
    assert len(kept(gateway)) == STRANGER_KEPT_PER_DAY
    again = replies.handle(over, ORIGIN)  # the same mail again: already handled
    assert again.kept and "already handled" in again.reason
    assert len(kept(gateway)) == STRANGER_KEPT_PER_DAY
    # Another stranger has their own count.
    other = replies.handle(agent_reply(email, "Hello", sender="z@other.example"), ORIGIN)
    assert other.kept and not other.reason.endswith(": not kept")
    assert len(kept(gateway)) == STRANGER_KEPT_PER_DAY + 1
    # A day later the sender's mail is kept again.
    clock.at += timedelta(days=1, minutes=1)
    later = replies.handle(stranger.raw(email, STRANGER_KEPT_PER_DAY + 1), ORIGIN)
    assert later.kept and not later.reason.endswith(": not kept")
    assert len(kept(gateway)) == STRANGER_KEPT_PER_DAY + 2
    assert sms_rows(gateway) == [] and not_texted(gateway) == []


def test_an_agents_failed_replies_are_never_dropped(gateway: Gateway) -> None:
    clock = Clock()
    replies = service(gateway, clock)
    email = resident_in_ottawa(gateway)
    for _ in range(STRANGER_KEPT_PER_DAY + 5):
        clock.at += timedelta(seconds=10)
        disposition = replies.handle(agent_reply(email, BELOW_SIGNATURE), ORIGIN)
        assert disposition.kept and not disposition.reason.endswith(": not kept")
    assert len(kept(gateway)) == STRANGER_KEPT_PER_DAY + 5


def test_a_strangers_mail_is_kept_smaller_than_an_agents(gateway: Gateway) -> None:
    email = resident_in_ottawa(gateway)
    filler = "\n\n" + "road work schedule " * (STRANGER_KEPT_BYTES // 15)
    agents = agent_reply(email, BELOW_SIGNATURE + filler)
    strangers = agent_reply(email, "Hi" + filler, sender="x@spam.example")
    assert STRANGER_KEPT_BYTES < len(agents) < MAX_KEPT_BYTES
    assert STRANGER_KEPT_BYTES < len(strangers) < MAX_KEPT_BYTES
    for raw in (agents, strangers):
        assert gateway.replies().handle(raw, ORIGIN).kept
    with gateway.store.transaction() as tx:
        stranger_row, agent_row = list_failed_emails(tx)  # newest first
        full_agent = get_failed_email(tx, agent_row.id)
        full_stranger = get_failed_email(tx, stranger_row.id)
    assert full_agent is not None and full_stranger is not None
    assert agent_row.why == "below_signature" and full_agent.raw == agents
    assert not agent_row.truncated
    assert stranger_row.why == "not_agent" and stranger_row.truncated
    assert full_stranger.raw == strangers[:STRANGER_KEPT_BYTES]


def test_the_smtp_ingress_answers_250_to_a_strangers_mail_over_the_cap(
    gateway: Gateway,
) -> None:
    """The sending server is not made to retry for ever: a dropped mail is accepted."""
    clock = Clock()
    replies = service(gateway, clock)
    email = resident_in_ottawa(gateway)
    for n in range(STRANGER_KEPT_PER_DAY):
        replies.handle(agent_reply(email, f"Hi {n}", sender="x@spam.example"), ORIGIN)
    answers: list[Disposition] = []

    async def sink(raw: bytes, origin: object) -> Disposition:
        answers.append(await replies(raw, ORIGIN))
        return answers[-1]

    async def scenario() -> None:
        ingress = ReplyIngress("127.0.0.1:0", sink, accept=lambda address: True)
        await ingress.start()
        try:
            _, response = await aiosmtplib.send(
                agent_reply(email, "Hi again", sender="x@spam.example"),
                sender="x@spam.example", recipients=[email.reply_to],
                hostname="127.0.0.1", port=ingress.port, timeout=10,
            )  # fmt: skip
        finally:
            await ingress.stop()
        assert response.startswith("2.0.0") or "OK" in response, response

    asyncio.run(asyncio.wait_for(scenario(), 30))  # (a 4xx/5xx answer raises)
    [answer] = answers
    assert answer.reason.endswith(": not kept") and answer.kept
    assert len(kept(gateway)) == STRANGER_KEPT_PER_DAY


# -- 3. a full address is preferred to a whole domain -----------------------------------------

SHARED_MAP = TEST_MAP.replace(
    'agents: ["@montreal.example"]', 'agents: ["@montreal.example", "jane.doe@ottawa.example"]'
)


def test_agent_match_says_how() -> None:
    agents = ("@ottawa.example", "lead@city.example")
    assert agent_match("Lead@City.Example", agents) == "address"
    assert agent_match("jane@ottawa.example", agents) == "domain"
    assert agent_match("jane@ottawa.example.evil", agents) is None
    assert agent_match("", agents) is None
    assert agent_match("lead@city.example", ("@city.example", "lead@city.example")) == "address"


def test_a_full_address_elsewhere_beats_a_whole_domain(tmp_path: Path) -> None:
    """Montréal lists jane.doe@ottawa.example by full address; Ottawa only has
    "@ottawa.example": Jane answers Montréal's residents, not Ottawa's."""
    gateway: Gateway = migrated_gateway(tmp_path, municipality_map=SHARED_MAP)
    try:
        email = resident_in_ottawa(gateway)
        refused = gateway.replies().handle(agent_reply(email, "On it."), ORIGIN)
        assert refused.outcome == "failed" and "not an agent" in refused.reason
        [notice] = not_texted(gateway)
        assert notice.details["why"] == "not_agent" and notice.to == (AGENT,)
        # Ottawa's other agents (by domain) still answer.
        other = agent_reply(email, "On it.", sender="bob@ottawa.example")
        assert gateway.replies().handle(other, ORIGIN).outcome == "processed"
        # Jane answers Montréal's residents; told of an unroutable email as Montréal's agent
        # (its languages: French first).
        text_in(gateway, "Nid-de-poule rue Sherbrooke", "+15145550199")
        text_in(gateway, "Montréal", "+15145550199")
        montreal = emails_out(gateway)[-1]
        assert montreal.to == ("311@montreal.example",)
        assert gateway.replies().handle(agent_reply(montreal, "Oui."), ORIGIN).outcome == (
            "processed"
        )
        assert gateway.replies().handle(unroutable(), ORIGIN).kept
        assert not_texted(gateway)[-1].language == "fr"
        assert not_texted(gateway)[-1].details["municipality"] == "Montréal"
    finally:
        gateway.close()


# -- 4. the console says why a forged reply was not texted, in English and French ------------


def test_the_console_shows_a_reply_whose_sender_was_not_authenticated(gateway: Gateway) -> None:
    from gateway.web import create_app
    from tests.console_fixtures import ConsoleClient, add_user

    email = resident_in_ottawa(gateway)
    raw = agent_reply(email, "Zanzibar: pay the fee", authenticated=False)
    assert gateway.replies().handle(raw, ORIGIN).outcome == "failed"
    with gateway.store.transaction() as tx:
        [row] = list_failed_emails(tx)
    assert row.why == "not_authenticated" and row.conversation_id == email.conversation_id
    add_user(gateway, "dana@ottawa.example", "Dana Agent")
    dana = ConsoleClient(create_app(gateway).test_client())
    assert dana.login("dana@ottawa.example").status_code == 302
    path = f"/console/conversations/{email.conversation_id}"
    english = dana.get(path).get_data(as_text=True)
    assert (
        f"Email reply from {AGENT} was not texted: its sender could not be authenticated "
        "(the From address may be forged)"
    ) in english
    french = dana.get(path, headers={"Accept-Language": "fr"}).get_data(as_text=True)
    assert (
        f"Réponse par courriel de {AGENT} non envoyée par texto : son expéditeur n’a pas pu "
        "être authentifié (l’adresse d’expédition est peut-être falsifiée)"
    ) in french
    for page in (english, french):
        assert "Zanzibar" not in page and 'data-why="not_authenticated"' in page
