"""Durability: the IMAP server restarted, its sessions killed, and the connection silently
dropped; the listener notices, reconnects, catches up, and the replies that arrived
meanwhile are texted.

Crashes, restarts and killed sessions run against the whole gateway (`sms311 run`). (A
graceful Dovecot restart keeps the current sessions up to 10 s, then says BYE: the same as a
killed session, 10 s later; tests/test_imap.py covers it on the listener alone.) A silently dropped
connection (a frozen TCP proxy between the listener and Dovecot: nothing more goes through
and nothing says so) is noticed when IDLE is restarted and DONE gets no answer; the gateway
restarts IDLE every 25 minutes and has no setting to change it, so that case runs the worker's
own parts in process (ImapListener -> ReplyService -> outbox -> Dispatcher -> FakeTwilio)
with a one-second IDLE restart.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.app import Gateway
from gateway.mail.imap import ImapListener
from gateway.run.worker import Dispatcher
from gateway.settings import ImapSettings
from gateway.sms.base import InboundText
from gateway.store import open_store
from tests.dovecot import Dovecot
from tests.fake_twilio import FakeTwilio
from tests.gateway_fixtures import settings_in
from tests.loop import Loop, MailServer, agent_reply, first_email, wait_for
from tests.tcp_proxy import TcpProxy

pytestmark = pytest.mark.slow

PHONE = "613-555-0199"


@pytest.fixture
def dovecot(tmp_path: Path) -> Iterator[Dovecot]:
    with Dovecot(tmp_path) as server:
        yield server


def test_imap_server_restarted_or_sessions_killed_the_gateway_catches_up(
    tmp_path: Path, dovecot: Dovecot
) -> None:
    loop = Loop(tmp_path, dovecot, max_per_second=50)
    try:
        to_city = first_email(loop, PHONE)

        def texted() -> list[str]:
            return [m["Body"] for m in loop.api.messages]

        dovecot.append(agent_reply(to_city, "Before anything happens."))
        wait_for(lambda: texted() == ["Before anything happens."], "the first reply")

        dovecot.stop(graceful=False)  # a crash, and down for a while
        wait_for(lambda: "Connect call failed" in loop.output(),
                 "the listener to fail to reconnect")
        dovecot.start()
        dovecot.append(agent_reply(to_city, "After a crash."))
        wait_for(lambda: len(texted()) == 2, "the reply appended after a crash")

        dovecot.drop_connections()  # sessions killed, server up
        dovecot.append(agent_reply(to_city, "After the session was killed."))
        wait_for(lambda: len(texted()) == 3, "the reply appended after the session died")

        dovecot.restart(graceful=False)  # a quick restart
        dovecot.append(agent_reply(to_city, "After a restart."))
        wait_for(lambda: len(texted()) == 4, "the reply appended after a restart")

        assert texted() == ["Before anything happens.", "After a crash.",
                            "After the session was killed.", "After a restart."]
        wait_for(lambda: len(dovecot.messages("Processed")) == 4, "every reply filed")
        assert dovecot.messages("INBOX") == [] and dovecot.messages("Failed") == []
        assert loop.running
    finally:
        output = loop.stop()
    assert output.count("the server closed the connection; reconnecting") >= 3
    assert "Traceback" not in output


def test_silently_dropped_connection_is_noticed_and_replies_meanwhile_are_texted(
    tmp_path: Path, dovecot: Dovecot, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    with FakeTwilio() as api, TcpProxy(dovecot.port) as proxy:
        mail = MailServer().start()
        sms = (
            "sms:\n  provider: twilio\n"
            f"  account_sid: {api.account_sid}\n  auth_token: {api.auth_token}\n"
            f'  sender: "31100"\n  api_base_url: {api.base_url}\n  max_per_second: 50\n'
        )
        settings = settings_in(tmp_path, sms=sms, smtp_port=mail.port)
        assert settings.email.imap is None  # the listener is given its settings below
        store = open_store(settings.database)
        store.upgrade()
        store.close()
        gateway = Gateway.from_settings(settings)
        imap = ImapSettings(  # through the proxy that will freeze
            host="127.0.0.1", port=proxy.port, username=dovecot.user,
            password=dovecot.password, security="none",
        )
        try:
            for body in ("Water main leaking on Elgin", "Kanata"):
                gateway.inbound.handle(InboundText(
                    sid=f"SM{len(body):032d}", phone="+16135550199", to="31100", body=body,
                    received_at=datetime.now(UTC),
                ))

            async def scenario() -> None:
                stop = asyncio.Event()
                dispatcher = Dispatcher(gateway, poll_interval=0.05)
                listener = ImapListener(
                    imap, gateway.replies(on_queued=dispatcher.wake), gateway.store,
                    idle_timeout=1.0, command_timeout=1.0, min_backoff=0.05, max_backoff=0.5,
                )
                tasks = [asyncio.create_task(dispatcher.run(stop)),
                         asyncio.create_task(listener.run(stop))]
                try:
                    await _until(lambda: mail.collector.messages, "the email to the city")
                    to_city = mail.collector.messages[0]
                    await asyncio.wait_for(listener.caught_up.wait(), 10)
                    await asyncio.to_thread(
                        dovecot.append, agent_reply(to_city, "Before the network hiccup.")
                    )
                    await _until(lambda: len(api.messages) == 1, "the first reply texted")

                    proxy.freeze()  # the connection is dead, nobody says so
                    await asyncio.to_thread(
                        dovecot.append, agent_reply(to_city, "During the network hiccup.")
                    )
                    await _until(lambda: len(api.messages) == 2,
                                 "the reply appended while the connection was dead", 20)
                    assert proxy.connections == 2  # it reconnected (once)
                finally:
                    stop.set()
                    await asyncio.wait_for(asyncio.gather(*tasks), 10)

            asyncio.run(scenario())
        finally:
            gateway.close()
            mail.stop()
        assert [m["Body"] for m in api.messages] == [
            "Before the network hiccup.", "During the network hiccup."
        ]
    assert ": timed out; reconnecting in" in caplog.text  # DONE got no answer
    assert [r.levelname for r in caplog.records if r.name == "gateway.mail.imap"
            and r.levelno >= logging.ERROR] == []


async def _until(predicate: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, f"timed out after {timeout} s waiting for {what}"
        await asyncio.sleep(0.02)
