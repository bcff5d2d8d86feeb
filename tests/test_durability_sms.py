"""Durability: the SMS API answering 429/20429, failing with 5xx, then refusing connections
for a while (`sms311 run` end to end; replies handed over by the SMTP reply ingress).

Every reply is texted in the end, exactly once, and the pacing (`sms.max_per_second`
segments in any one-second window) is kept where it matters: at the provider.
"""

from __future__ import annotations

import asyncio
import smtplib
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.emails import ResidentEmail, compose
from gateway.inbound import InboundText
from gateway.mail.types import MailOrigin
from gateway.reply_service import ReplyService
from gateway.services import Gateway
from gateway.store import open_store
from gateway.worker import Dispatcher
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
            ReplyService(gateway).handle(agent_reply(to_city, long_reply), origin)
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
