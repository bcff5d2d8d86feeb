"""Durability: the SMS API answering 429/20429, failing with 5xx, then refusing connections
for a while (`sms311 run` end to end; replies handed over by the SMTP reply ingress).

Every reply is texted in the end, exactly once, and the pacing (`sms.max_per_second`
segments in any one-second window) is kept where it matters: at the provider.
"""

from __future__ import annotations

import asyncio
import smtplib
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.app import Gateway
from gateway.mail.types import MailOrigin
from gateway.rules.resident_email import ResidentEmail, compose
from gateway.run.worker import Dispatcher
from gateway.sms.base import InboundText
from gateway.store import open_store
from tests.fake_twilio import FakeTwilio
from tests.gateway_fixtures import free_port, settings_in
from tests.loop import Loop, agent_reply, first_email, wait_for

RATE = 10  # segments per second
RESIDENTS = [f"613-555-02{n:02d}" for n in range(4)]
PER_RESIDENT = 8


@pytest.mark.slow
def test_replies_survive_429s_5xx_and_an_unreachable_api_and_pacing_holds(
    tmp_path: Path,
) -> None:
    ingress_port = free_port()
    loop = Loop(
        tmp_path, None, ingress_port, max_per_second=RATE,
        outbox={"max_attempts": 100, "base_backoff_seconds": 0.2, "max_backoff_seconds": 1},
    )
    try:
        to_city = [
            first_email(loop, number, f"Streetlight out, report {n}", count=n + 1)
            for n, number in enumerate(RESIDENTS)
        ]
        bodies = [f"Reply {k} to resident {n}" for k in range(PER_RESIDENT)
                  for n in range(len(RESIDENTS))]

        def reply(batch: list[str]) -> None:
            """The agent answers (through the SMTP reply ingress, one connection)."""
            with smtplib.SMTP("127.0.0.1", ingress_port, timeout=10) as client:
                for body in batch:
                    email = to_city[int(body.rsplit(" ", 1)[1])]
                    client.sendmail("jane@ottawa.example",
                                    [email["Reply-To"].addresses[0].addr_spec],
                                    agent_reply(email, body))

        def arrived() -> int:
            return len(loop.api.messages)

        # A burst of "slow down" (as when the account's queue is full) on a backlog of 16.
        loop.api.fail_next(6, 429, 20429, retry_after="1")
        reply(bodies[:16])
        wait_for(lambda: arrived() == 16, "the replies after the 429s")
        # Server errors: the request may have gone through (the gateway looks first).
        loop.api.fail_next(4, 500, 20500, "Internal Server Error")
        reply(bodies[16:24])
        wait_for(lambda: arrived() == 24, "the replies after the 5xx")
        # The API unreachable for a while: connections refused.
        loop.api.stop()
        reply(bodies[24:])
        wait_for(lambda: "Twilio API unreachable" in loop.output(), "a refused connection")
        loop.api.start()  # back, same port
        wait_for(lambda: arrived() == len(bodies), "every reply texted", 30)
    finally:
        output = loop.stop()

    texted = Counter(m["Body"] for m in loop.api.messages)
    assert texted == Counter(dict.fromkeys(bodies, 1))  # all of them, none twice
    # Each resident got their replies in the order the agent sent them.
    for n, number in enumerate(RESIDENTS):
        e164 = "+1" + number.replace("-", "")
        mine = [m["Body"] for m in loop.api.messages if m["To"] == e164]
        assert mine == [f"Reply {k} to resident {n}" for k in range(PER_RESIDENT)]
    assert loop.api.max_in_window() <= RATE
    assert len(loop.api.attempts) >= len(bodies) + 10  # the failures did happen
    assert "Twilio API 429 code 20429" in output and "Twilio API 500 code 20500" in output
    assert "PARKED" not in output and "Traceback" not in output


def test_the_parts_of_a_long_reply_arrive_in_order_across_a_failure(tmp_path: Path) -> None:
    """In process: the first part fails (5xx), the second must not overtake it."""
    with FakeTwilio() as api:
        sms = (
            "sms:\n  provider: twilio\n"
            f"  account_sid: {api.account_sid}\n  auth_token: {api.auth_token}\n"
            f'  sender: "31100"\n  api_base_url: {api.base_url}\n  max_per_second: 100\n'
        )
        settings = settings_in(tmp_path, sms=sms, extra=(
            "outbox: {base_backoff_seconds: 0.1, max_backoff_seconds: 0.2}\n"
        ))
        store = open_store(settings.database)
        store.upgrade()
        store.close()
        gateway = Gateway.from_settings(settings)
        try:
            for n, body in enumerate(("Pothole on Bank St", "Kanata")):
                gateway.inbound.handle(InboundText(
                    sid=f"SM{n:032d}", phone="+16135550123", to="31100", body=body,
                    received_at=datetime.now(UTC),
                ))
            [row] = [i for i in gateway.store.list_outbox(None) if i.kind == "email"]
            to_city = compose(ResidentEmail.from_dict(row.payload), [], [])
            long_reply = " ".join(f"Step {n} of the repair is done." for n in range(80))
            origin = MailOrigin(kind="imap", mailbox="INBOX", uidvalidity=1, uid=1)
            gateway.replies().handle(agent_reply(to_city, long_reply), origin)
            parts = [i.payload for i in gateway.store.list_outbox(None) if i.kind == "sms"]
            assert len(parts) == 2
            api.fail_next(1, 500, 20500)  # the first part fails (it may have gone: looked up)

            async def scenario() -> None:
                stop = asyncio.Event()
                task = asyncio.create_task(Dispatcher(gateway, poll_interval=0.02).run(stop))
                deadline = asyncio.get_running_loop().time() + 20
                while len(api.messages) < 2:
                    assert asyncio.get_running_loop().time() < deadline, "parts not sent"
                    await asyncio.sleep(0.02)
                stop.set()
                await asyncio.wait_for(task, 10)

            asyncio.run(scenario())
        finally:
            gateway.close()
        assert [m["Body"] for m in api.messages] == [p["body"] for p in parts]
        assert len(api.attempts) == 3


PHONE = "+16135550123"
BODY = "A crew is on the way."


def _twilio_gateway(folder: Path, api: FakeTwilio) -> Gateway:
    sms = (
        "sms:\n  provider: twilio\n"
        f"  account_sid: {api.account_sid}\n  auth_token: {api.auth_token}\n"
        f'  sender: "31100"\n  api_base_url: {api.base_url}\n  max_per_second: 100\n'
    )
    settings = settings_in(folder, sms=sms)
    store = open_store(settings.database)
    store.upgrade()
    store.close()
    return Gateway.from_settings(settings)


def _claimed_by_a_worker_that_died(gateway: Gateway, sent: bool) -> None:
    """Another worker claimed the row (a 10 s claim), maybe sent it, and died."""
    gateway.store.claim_due(["sms"], 10, datetime.now(UTC), timedelta(seconds=10), "gone:1:1")
    if sent:
        gateway.provider.send(PHONE, BODY)


Arrange = Callable[[FakeTwilio, Gateway], None]
_NOTHING: Arrange = lambda api, gateway: None  # noqa: E731

# (how the first attempts fail, what happens after the first pass, GET Messages.json calls
# (a lookup is 1 when it finds the message, 2 when it does not: dated, then undated list),
# POST Messages.json calls, texts that reached the resident); a refusal for good (4xx) is not
# retried at all (tests/test_reply_flow.py)
LOOKUP_CASES = [
    pytest.param(lambda api, gw: api.fail_next(5, 429, 20429), _NOTHING, 0, 6, 1,
                 id="429-storm-then-success"),
    pytest.param(lambda api, gw: api.fail_next(2, 401, 20003), _NOTHING, 0, 3, 1,
                 id="bad-credentials"),
    pytest.param(lambda api, gw: api.stop(), lambda api, gw: api.start(), 0, 1, 1,
                 id="connection-refused"),
    pytest.param(lambda api, gw: api.fail_next(1, 500, 20500), _NOTHING, 2, 2, 1,
                 id="5xx-may-have-gone"),
    pytest.param(lambda api, gw: api.hang_next(1, "close"), _NOTHING, 1, 1, 1,
                 id="accepted-answer-lost"),
    pytest.param(lambda api, gw: (api.fail_next(1, 500, 20500), api.fail_next(3, 429, 20429)),
                 _NOTHING, 2, 5, 1, id="5xx-then-429s-look-once"),
    pytest.param(lambda api, gw: _claimed_by_a_worker_that_died(gw, sent=True), _NOTHING,
                 1, 1, 1, id="worker-died-after-sending"),
    pytest.param(lambda api, gw: _claimed_by_a_worker_that_died(gw, sent=False), _NOTHING,
                 2, 1, 1, id="worker-died-before-sending"),
]


@pytest.mark.parametrize(("arrange", "after_first", "lookups", "posts", "texted"),
                         LOOKUP_CASES)
def test_a_retry_looks_the_text_up_only_when_the_last_attempt_may_have_gone(
    tmp_path: Path, arrange: Arrange, after_first: Arrange, lookups: int, posts: int,
    texted: int,
) -> None:
    """The real twilio client against the fake API: after a definite "not sent" the retry
    goes straight out (no GET Messages.json: a throttle storm is not made worse); after an
    attempt that may have reached Twilio it looks first, and never texts twice."""
    with FakeTwilio() as api:
        gateway = _twilio_gateway(tmp_path, api)
        try:
            with gateway.store.transaction() as tx:
                tx.enqueue("sms", {"to": PHONE, "body": BODY})
            arrange(api, gateway)
            hours = iter(range(1, 1000))  # each pass an hour later: every backoff is over
            dispatcher = Dispatcher(
                gateway, now=lambda: datetime.now(UTC) + timedelta(hours=next(hours))
            )
            for n in range(10):
                asyncio.run(dispatcher.dispatch_once("sms"))
                if n == 0:
                    after_first(api, gateway)
                if not gateway.store.list_outbox("pending"):
                    break
            assert gateway.store.list_outbox("pending") == []
        finally:
            gateway.close()
        assert len(api.list_requests) == lookups
        assert len(api.attempts) == posts
        assert [m["Body"] for m in api.messages] == [BODY] * texted
