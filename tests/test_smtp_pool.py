"""The SMTP connection pool (`gateway.mail.smtp.SmtpPool`) against real aiosmtpd servers on
localhost: connections reused, several messages in flight, a refused transaction reset
(RSET) without poisoning the next, reconnection after a 421, a server that closed an idle
connection, a time-out; idle connections closed; everything QUIT on close."""

from __future__ import annotations

import asyncio
import email
import email.policy
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP

from gateway.mail.smtp import PermanentSmtpError, SmtpPool, TemporarySmtpError, send_email
from gateway.rules.mime_fast import RawEmail
from gateway.settings import SmtpSettings
from tests.test_smtp import free_port, resident_message, run


@dataclass
class Server:
    """aiosmtpd handler that records what it sees: connections, commands, messages."""

    connections: int = 0
    open_now: int = 0
    most_open: int = 0
    quits: int = 0
    resets: int = 0
    in_data: int = 0
    most_in_data: int = 0
    mail_reply: list[str] = field(default_factory=list)  # scripted MAIL answers, in order
    data_reply: list[str] = field(default_factory=list)  # scripted DATA answers, in order
    data_delay: float = 0.0
    messages: list[EmailMessage] = field(default_factory=list)
    peers: list[Any] = field(default_factory=list)  # one per message: its connection

    async def handle_MAIL(
        self, server: SMTP, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if self.mail_reply:
            reply = self.mail_reply.pop(0)
            if reply.startswith("421"):
                await server.push(reply)
                server.transport.close()
                return "421 closed"  # not sent: the connection is gone
            return reply
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RSET(self, server: SMTP, session: Any, envelope: Any) -> str:
        self.resets += 1
        return "250 OK"

    async def handle_QUIT(self, server: SMTP, session: Any, envelope: Any) -> str:
        self.quits += 1
        return "221 Bye"

    async def handle_DATA(self, server: SMTP, session: Any, envelope: Any) -> str:
        self.in_data += 1
        self.most_in_data = max(self.most_in_data, self.in_data)
        try:
            if self.data_delay:
                await asyncio.sleep(self.data_delay)
        finally:
            self.in_data -= 1
        if self.data_reply:
            return self.data_reply.pop(0)
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        self.messages.append(message)
        self.peers.append(session.peer)
        return "250 OK"


class CountingSMTP(SMTP):
    def __init__(self, recorder: Server, **kwargs: Any) -> None:
        super().__init__(recorder, **kwargs)
        self.recorder = recorder

    def connection_made(self, transport: Any) -> None:
        self.recorder.connections += 1
        self.recorder.open_now += 1
        self.recorder.most_open = max(self.recorder.most_open, self.recorder.open_now)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        self.recorder.open_now -= 1
        super().connection_lost(error)


@asynccontextmanager
async def smtp_server(recorder: Server, **smtp_kwargs: Any) -> AsyncIterator[int]:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: CountingSMTP(recorder, hostname="mx.test", loop=loop, **smtp_kwargs),
        host="127.0.0.1", port=0,
    )
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        await server.wait_closed()


def settings(port: int, connections: int = 4, timeout: float = 5.0) -> SmtpSettings:
    return SmtpSettings(
        host="127.0.0.1", port=port, security="none", timeout=timeout, connections=connections
    )


async def settle(condition: Any, seconds: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "never happened"
        await asyncio.sleep(0.01)


def test_one_connection_carries_many_messages_and_is_quit_on_close() -> None:
    async def scenario() -> None:
        recorder = Server()
        async with smtp_server(recorder) as port:
            pool = SmtpPool(settings(port))
            for _ in range(10):
                await pool.send(resident_message())
            assert pool.opened == 1 and pool.idle == 1
            await pool.close()
            await settle(lambda: recorder.open_now == 0)
        assert recorder.connections == 1 and recorder.quits == 1
        assert len(recorder.messages) == 10

    run(scenario)


def test_messages_in_flight_at_once_up_to_the_pool_size() -> None:
    async def scenario() -> None:
        recorder = Server(data_delay=0.1)
        async with (
            smtp_server(recorder) as port,
            SmtpPool(settings(port, connections=3)) as pool,
        ):
            started = asyncio.get_running_loop().time()
            await asyncio.gather(*(pool.send(resident_message()) for _ in range(9)))
            elapsed = asyncio.get_running_loop().time() - started
            assert pool.opened == 3
        assert len(recorder.messages) == 9
        assert recorder.most_in_data == 3 and recorder.most_open == 3
        assert elapsed < 0.9 * 9 * 0.1  # three at a time, not one after the other

    run(scenario)


def test_a_refused_transaction_is_reset_and_the_connection_reused() -> None:
    async def scenario() -> None:
        recorder = Server(
            mail_reply=["451 4.3.0 try later"],
            data_reply=["554 5.6.0 rejected"],
        )
        async with (
            smtp_server(recorder) as port,
            SmtpPool(settings(port, connections=1)) as pool,
        ):
            with pytest.raises(TemporarySmtpError) as temporary:
                await pool.send(resident_message())
            assert temporary.value.code == 451 and not temporary.value.connection
            with pytest.raises(PermanentSmtpError) as permanent:
                await pool.send(resident_message())
            assert permanent.value.code == 554 and not permanent.value.connection
            sent = resident_message()
            await pool.send(sent)
            assert pool.opened == 1
        assert recorder.connections == 1 and recorder.resets == 2
        (received,) = recorder.messages  # the next message is whole, with its own envelope
        assert received["Message-ID"] == sent["Message-ID"]

    run(scenario)


def test_after_a_421_the_next_message_goes_on_a_new_connection() -> None:
    async def scenario() -> None:
        recorder = Server()
        async with (
            smtp_server(recorder) as port,
            SmtpPool(settings(port, connections=1)) as pool,
        ):
            await pool.send(resident_message())  # a connection is open and idle
            recorder.mail_reply = ["421 4.3.2 shutting down", "421 4.3.2 shutting down"]
            # the reused connection answers 421: replaced at once, once; the new one
            # answers 421 too: a temporary, connection-level failure
            with pytest.raises(TemporarySmtpError) as raised:
                await pool.send(resident_message())
            assert raised.value.code == 421 and raised.value.connection
            await pool.send(resident_message())
            assert pool.opened == 3
        assert len(recorder.messages) == 2 and recorder.connections == 3

    run(scenario)


def test_a_connection_the_server_closed_while_idle_is_replaced() -> None:
    async def scenario() -> None:
        recorder = Server()
        async with (
            smtp_server(recorder, timeout=0.2) as port,  # the server's idle time-out
            SmtpPool(settings(port, connections=1), idle_seconds=60) as pool,
        ):
            await pool.send(resident_message())
            await settle(lambda: recorder.open_now == 0)  # the server hung up
            await pool.send(resident_message())
            assert pool.opened == 2
        assert len(recorder.messages) == 2

    run(scenario)


def test_a_time_out_drops_the_connection_and_the_next_message_reconnects() -> None:
    async def scenario() -> None:
        recorder = Server(data_delay=1.0)
        async with (
            smtp_server(recorder) as port,
            SmtpPool(settings(port, connections=1, timeout=0.3)) as pool,
        ):
            with pytest.raises(TemporarySmtpError) as raised:
                await pool.send(resident_message())
            assert raised.value.connection and pool.idle == 0
            recorder.data_delay = 0
            await pool.send(resident_message())
            assert pool.opened == 2

    run(scenario)


def test_idle_connections_are_closed_after_idle_seconds() -> None:
    async def scenario() -> None:
        recorder = Server()
        async with (
            smtp_server(recorder) as port,
            SmtpPool(settings(port), idle_seconds=0.2) as pool,
        ):
            await asyncio.gather(*(pool.send(resident_message()) for _ in range(3)))
            assert pool.idle == 3 and recorder.open_now == 3
            await settle(lambda: recorder.open_now == 0, 3)
            assert pool.idle == 0 and recorder.quits == 3
            await pool.send(resident_message())  # and opened again when needed
            assert pool.opened == 4

    run(scenario)


def test_connection_refused_is_a_connection_level_temporary_error() -> None:
    async def scenario() -> None:
        async with SmtpPool(settings(free_port())) as pool:
            with pytest.raises(TemporarySmtpError) as raised:
                await pool.send(resident_message())
        assert raised.value.connection

    run(scenario)


def test_a_raw_email_and_the_composed_one_arrive_alike() -> None:
    """`send_email` takes the directly written bytes (`RawEmail`) as well: same envelope,
    same headers and body at the server."""
    composed = resident_message(with_picture=True)

    async def scenario() -> None:
        recorder = Server()
        async with smtp_server(recorder) as port:
            raw = RawEmail.from_message(composed)
            await send_email(raw, settings(port))
            await send_email(composed, settings(port))
        first, second = recorder.messages
        for header in ("From", "To", "Cc", "Subject", "Message-ID", "References", "Date"):
            assert first[header] == second[header] == composed[header], header
        assert first.as_bytes() == second.as_bytes()

    run(scenario)
