"""The email drain against real servers on localhost: emails sent on a few reused SMTP
connections, their "sent" marks committed several at once (never before the SMTP
transaction succeeded; a crash in between only sends one again), the emails of one
conversation in order, and the circuit breaker: while the mail server is unreachable the
dispatcher probes it with backoff instead of trying every row."""

from __future__ import annotations

import asyncio
import email
import email.policy
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from gateway.app import Gateway
from gateway.rules.resident_email import ResidentEmail, ResidentText
from gateway.rules.thread import new_message_id, new_token, reply_address, thread_subject
from gateway.run.worker import Dispatcher
from gateway.settings import load_settings
from gateway.store import StoreUnavailable, open_store
from tests.gateway_fixtures import Clock, free_port, write_settings
from tests.tcp_proxy import TcpProxy

T0 = datetime(2026, 11, 22, 15, 0, tzinfo=UTC)


class Mailbox:
    """aiosmtpd handler: keeps each message and the connection it came on."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.peers: set[Any] = set()
        self.lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        with self.lock:
            self.messages.append(message)
            self.peers.add(session.peer)
        return "250 OK"

    def texts(self) -> list[str]:
        with self.lock:
            return [str(m["X-Text"] or _body(m)) for m in self.messages]


def _body(message: EmailMessage) -> str:
    part = message.get_body(("plain",))
    assert part is not None
    return str(part.get_content()).splitlines()[0]


def make_gateway(
    folder: Path, port: int, extra: str = "", environ: dict[str, str] | None = None
) -> Gateway:
    settings = load_settings(
        write_settings(folder, smtp_port=port, extra=extra), environ=environ or {}
    )
    store = open_store(settings.database)
    store.upgrade()
    store.close()
    return Gateway.from_settings(settings)


def resident_email(conversation: int, body: str) -> dict[str, Any]:
    return ResidentEmail(
        conversation_id=conversation,
        from_address="311 Text <sms@gateway.example>",
        to=("311@ottawa.example",),
        reply_to=reply_address("reply+{token}@gateway.example", new_token()),
        subject=thread_subject("Montreal", "(514) 555-0123", "fr", conversation,
                               name_fr="Montréal"),
        message_id=new_message_id("gateway.example"),
        resident_e164="+15145550123",
        resident_national="(514) 555-0123",
        municipality_name="Montréal",
        language="fr",
        texts=(ResidentText(T0, body),),
    ).to_dict()


def enqueue(gateway: Gateway, emails: list[tuple[int, str]]) -> list[int]:
    with gateway.store.transaction() as tx:
        return [tx.enqueue("email", resident_email(c, body)) for c, body in emails]


@pytest.fixture
def mail() -> Iterator[tuple[Mailbox, int]]:
    mailbox = Mailbox()
    port = free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port)
    controller.start()
    yield mailbox, port
    controller.stop()


def count_calls(monkeypatch: pytest.MonkeyPatch, target: Any, name: str) -> list[Any]:
    """Record the arguments of each call of `target.name` (still called)."""
    calls: list[Any] = []
    original = getattr(target, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(target, name, wrapper)
    return calls


def test_a_batch_goes_on_a_few_reused_connections_marked_with_few_commits(
    tmp_path: Path, mail: tuple[Mailbox, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    mailbox, port = mail
    gateway = make_gateway(tmp_path, port, extra="")
    ids = enqueue(gateway, [(n, f"texte {n:02d}") for n in range(20)])
    marks = count_calls(monkeypatch, gateway.store, "mark_sent_many")
    singles = count_calls(monkeypatch, gateway.store, "mark_sent")
    try:
        assert asyncio.run(Dispatcher(gateway, now=Clock()).dispatch_once("email")) == 20
        assert sorted(mailbox.texts()) == [f"texte {n:02d}" for n in range(20)]
        assert len(mailbox.peers) <= gateway.settings.email.smtp.connections == 4
        assert singles == [] and 1 <= len(marks) < 20
        assert sorted(i for (batch,) in marks for i in batch) == ids
        assert {i.id for i in gateway.store.list_outbox("sent")} == set(ids)
    finally:
        gateway.close()


def test_the_emails_of_one_conversation_arrive_in_order(
    tmp_path: Path, mail: tuple[Mailbox, int]
) -> None:
    mailbox, port = mail
    gateway = make_gateway(tmp_path, port, environ={"GATEWAY_EMAIL__SMTP__CONNECTIONS": "3"})
    assert gateway.settings.email.smtp.connections == 3
    rows = [(n % 3, f"conversation {n % 3} texte {n:02d}") for n in range(18)]
    enqueue(gateway, rows)
    try:
        assert asyncio.run(Dispatcher(gateway, now=Clock()).dispatch_once("email")) == 18
        for conversation in range(3):
            mine = [t for t in mailbox.texts() if t.startswith(f"conversation {conversation} ")]
            assert mine == [b for c, b in rows if c == conversation]
    finally:
        gateway.close()


def test_a_crash_between_sending_and_marking_only_sends_again(
    tmp_path: Path, mail: tuple[Mailbox, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The mark never comes before the SMTP transaction, and a mark that is lost (the
    store gone, the worker killed) leaves the row pending: sent again, never lost."""
    mailbox, port = mail
    gateway = make_gateway(tmp_path, port, extra="outbox: {takeover_seconds: 1}\n")
    [row] = enqueue(gateway, [(1, "texte 01")])
    sent_when_marked: list[int] = []

    def store_down(ids: Any) -> None:
        sent_when_marked.append(len(mailbox.messages))
        raise StoreUnavailable("database is locked")

    monkeypatch.setattr(gateway.store, "mark_sent_many", store_down)
    monkeypatch.setattr("gateway.run.worker.asyncio.sleep", _no_sleep)
    clock = Clock()
    try:
        with pytest.raises(StoreUnavailable):
            asyncio.run(Dispatcher(gateway, now=clock).dispatch_once("email"))
        assert sent_when_marked == [1, 1, 1]  # tried three times, each after the send
        [pending] = gateway.store.list_outbox("pending")
        assert pending.id == row and pending.claimed_by is not None
        monkeypatch.undo()
        clock.advance(2)  # its claim lapses: another worker takes it over
        other = Dispatcher(gateway, now=clock, worker_id="other:1:1")
        assert asyncio.run(other.dispatch_once("email")) == 1
        assert mailbox.texts() == ["texte 01", "texte 01"]  # twice, never lost
        assert [i.id for i in gateway.store.list_outbox("sent")] == [row]
    finally:
        gateway.close()


_real_sleep = asyncio.sleep


async def _no_sleep(seconds: float) -> None:
    await _real_sleep(0)


def test_while_the_mail_server_is_down_it_is_probed_with_backoff_then_resumed_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = free_port()  # the mail server, down: the proxy accepts, then hangs up
    down = TcpProxy(target).start()
    gateway = make_gateway(
        tmp_path, down.port,
        extra="outbox: {max_attempts: 100, base_backoff_seconds: 0.1, "
              "max_backoff_seconds: 0.4}\n",
    )  # fmt: skip
    enqueue(gateway, [(n, f"texte {n:02d}") for n in range(30)])
    claims = count_calls(monkeypatch, gateway.store, "claim_due")
    dispatcher = Dispatcher(gateway, poll_interval=0.02)

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(dispatcher.run(stop))
        await asyncio.sleep(2.0)
        # 2 s down: without the breaker, 30 rows each retried every 0.1-0.4 s would make
        # hundreds of connection attempts and claims; with it, about one a probe
        # (0.1, 0.2, 0.4, 0.4… s apart)
        attempts, claimed = down.connections, len([c for c in claims if c[0] == ["email"]])
        assert 3 <= attempts <= 10, attempts
        assert claimed <= attempts + 1, claimed
        rows = gateway.store.list_outbox("pending")
        assert len(rows) == 30 and all(r.attempts >= 1 for r in rows)  # counted, not tried
        assert gateway.store.list_outbox("parked") == []
        # the mail server comes back: the next probe sends everything
        mailbox = Mailbox()
        controller = Controller(mailbox, hostname="127.0.0.1", port=target)
        controller.start()
        try:
            deadline = asyncio.get_running_loop().time() + 5
            while len(mailbox.messages) < 30:
                assert asyncio.get_running_loop().time() < deadline, len(mailbox.messages)
                await asyncio.sleep(0.05)
            while gateway.store.list_outbox("pending"):
                assert asyncio.get_running_loop().time() < deadline
                await asyncio.sleep(0.05)
        finally:
            stop.set()
            await asyncio.wait_for(task, 5)
            controller.stop()
        assert sorted(mailbox.texts()) == [f"texte {n:02d}" for n in range(30)]

    try:
        asyncio.run(scenario())
    finally:
        down.stop()
        gateway.close()
