"""The SMTP sender against real aiosmtpd servers on localhost (plain, AUTH, STARTTLS,
implicit TLS, refusals, timeouts), and the sandbox mail server."""

from __future__ import annotations

import asyncio
import datetime as dt
import email
import email.policy
import logging
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

from gateway.mail.sandbox import SandboxMailServer, mailbox_folder, mailbox_messages
from gateway.mail.smtp import PermanentSmtpError, TemporarySmtpError, send_email
from gateway.rules.resident_email import Attachment, ResidentEmail, ResidentText, compose
from gateway.rules.thread import new_message_id, new_token, reply_address, thread_subject
from gateway.settings import SmtpSettings
from tests.dovecot import make_certificate

USER, PASSWORD = "gateway", "s3cret-pass"


# -- a throwaway certificate ---------------------------------------------------------------


@dataclass(frozen=True)
class Certificate:
    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, self.key)
        return context

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts this certificate (and checks the host name)."""
        return ssl.create_default_context(cafile=str(self.cert))


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    directory = tmp_path_factory.mktemp("tls")
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    make_certificate(cert_path, key_path)  # the same throwaway certificate Dovecot uses
    return Certificate(cert_path, key_path)


# -- a recording SMTP server on the test's loop ---------------------------------------------


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage
    authenticated: bool
    tls: bool


@dataclass
class Recorder:
    """aiosmtpd handler: records messages; can refuse recipients or data."""

    require_auth: bool = False
    refuse: dict[str, str] = field(default_factory=dict)  # recipient -> reply
    data_reply: str | None = None
    received: list[Received] = field(default_factory=list)

    async def handle_MAIL(
        self, server: SMTP, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if self.require_auth and not session.authenticated:
            return "530 5.7.0 Authentication required"
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if address in self.refuse:
            return self.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Any, envelope: Any) -> str:
        if self.data_reply:
            return self.data_reply
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        self.received.append(
            Received(
                envelope.mail_from,
                list(envelope.rcpt_tos),
                message,
                bool(session.authenticated),
                session.ssl is not None,
            )
        )
        return "250 OK"


def authenticator(
    server: SMTP, session: Any, envelope: Any, mechanism: str, auth_data: Any
) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and (
        auth_data.login.decode(),
        auth_data.password.decode(),
    ) == (USER, PASSWORD)
    return AuthResult(success=ok, handled=False)


@asynccontextmanager
async def smtp_server(
    handler: Recorder, *, implicit_tls: ssl.SSLContext | None = None, **smtp_kwargs: Any
) -> AsyncIterator[int]:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="mx.test", loop=loop, **smtp_kwargs),
        host="127.0.0.1",
        port=0,
        ssl=implicit_tls,
    )
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        await server.wait_closed()


def run(coroutine: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(coroutine(), 30))


def settings(port: int, security: str = "none", **kwargs: Any) -> SmtpSettings:
    return SmtpSettings(host="127.0.0.1", port=port, security=security, timeout=5.0, **kwargs)


def resident_message(with_picture: bool = False) -> EmailMessage:
    resident_email = ResidentEmail(
        conversation_id=7,
        from_address="311 Text <sms@gateway.example.ca>",
        to=("311@ottawa.example",),
        cc=("agent@ottawa.example",),
        reply_to=reply_address("reply+{token}@gateway.example.ca", new_token()),
        subject=thread_subject("Ottawa", "(613) 555-0123", "en"),
        message_id=new_message_id("gateway.example.ca"),
        in_reply_to="<earlier@gateway.example.ca>",
        references=("<earlier@gateway.example.ca>",),
        resident_e164="+16135550123",
        resident_national="(613) 555-0123",
        municipality_name="Ottawa",
        language="en",
        texts=(ResidentText(dt.datetime(2026, 11, 22, 15, 4, tzinfo=dt.UTC), "Pothole — big"),),
    )
    attachments = (
        [Attachment("media-1.jpg", "image/jpeg", b"\xff\xd8" * 5000)] if with_picture else []
    )
    return compose(resident_email, attachments)


def assert_intact(received: Received, sent: EmailMessage) -> None:
    assert received.mail_from == "sms@gateway.example.ca"
    assert received.rcpt_tos == ["311@ottawa.example", "agent@ottawa.example"]
    got = received.message
    for header in ("Subject", "Message-ID", "In-Reply-To", "References", "Reply-To", "Cc"):
        assert got[header] == sent[header], header
    body = got.get_body(("plain",))
    assert body is not None and "Pothole — big" in body.get_content()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- sending ---------------------------------------------------------------------------------


def test_plain_smtp_delivers_the_message_intact() -> None:
    async def scenario() -> None:
        handler = Recorder()
        async with smtp_server(handler) as port:
            sent = resident_message(with_picture=True)
            await send_email(sent, settings(port), local_hostname="gw.test")
        (received,) = handler.received
        assert_intact(received, sent)
        assert not received.authenticated and not received.tls
        (picture,) = received.message.iter_attachments()
        assert picture.get_content() == b"\xff\xd8" * 5000

    run(scenario)


def test_auth_without_tls() -> None:
    async def scenario() -> None:
        handler = Recorder(require_auth=True)
        async with smtp_server(
            handler, authenticator=authenticator, auth_require_tls=False
        ) as port:
            sent = resident_message()
            await send_email(sent, settings(port, username=USER, password=PASSWORD))
            with pytest.raises(TemporarySmtpError, match="login failed") as failed:
                await send_email(sent, settings(port, username=USER, password="wrong"))
            assert failed.value.code == 535
            with pytest.raises(PermanentSmtpError) as refused:  # no AUTH at all: 530
                await send_email(sent, settings(port))
            assert refused.value.code == 530
        (received,) = handler.received
        assert received.authenticated
        assert_intact(received, sent)

    run(scenario)


def test_starttls_with_auth(certificate: Certificate) -> None:
    async def scenario() -> None:
        handler = Recorder(require_auth=True)
        async with smtp_server(
            handler,
            tls_context=certificate.server_context(),
            require_starttls=True,
            authenticator=authenticator,
        ) as port:
            sent = resident_message()
            await send_email(
                sent,
                settings(port, "starttls", username=USER, password=PASSWORD),
                tls_context=certificate.client_context(),
            )
            # An untrusted certificate is refused (and retried later, not parked).
            with pytest.raises(TemporarySmtpError):
                await send_email(sent, settings(port, "starttls", username=USER, password=PASSWORD))
            # …unless certificate checks are turned off (tests only).
            await send_email(
                sent,
                settings(port, "starttls", username=USER, password=PASSWORD),
                verify_certs=False,
            )
        assert len(handler.received) == 2
        for received in handler.received:
            assert received.tls and received.authenticated
            assert_intact(received, sent)

    run(scenario)


def test_implicit_tls(certificate: Certificate) -> None:
    async def scenario() -> None:
        handler = Recorder()
        async with smtp_server(handler, implicit_tls=certificate.server_context()) as port:
            sent = resident_message()
            await send_email(sent, settings(port, "tls"), tls_context=certificate.client_context())
        (received,) = handler.received
        assert_intact(received, sent)

    run(scenario)


def test_starttls_required_but_not_offered() -> None:
    async def scenario() -> None:
        async with smtp_server(Recorder()) as port:
            with pytest.raises(TemporarySmtpError):
                await send_email(resident_message(), settings(port, "starttls"))

    run(scenario)


def test_connection_refused_is_temporary() -> None:
    async def scenario() -> None:
        with pytest.raises(TemporarySmtpError):
            await send_email(resident_message(), settings(free_port()))

    run(scenario)


def test_silent_server_times_out_as_temporary() -> None:
    async def scenario() -> None:
        connections: list[asyncio.StreamWriter] = []

        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            connections.append(writer)  # accept, then say nothing

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = int(server.sockets[0].getsockname()[1])
        try:
            started = asyncio.get_running_loop().time()
            with pytest.raises(TemporarySmtpError):
                await send_email(
                    resident_message(),
                    SmtpSettings(host="127.0.0.1", port=port, security="none", timeout=0.3),
                )
            assert asyncio.get_running_loop().time() - started < 3
        finally:
            server.close()
            for writer in connections:
                writer.close()
            await server.wait_closed()

    run(scenario)


@pytest.mark.parametrize(
    ("refusal", "error", "code"),
    [
        ("550 5.1.1 No such user", PermanentSmtpError, 550),
        ("450 4.2.1 Mailbox busy, try later", TemporarySmtpError, 450),
    ],
)
def test_refused_recipients(refusal: str, error: type[Exception], code: int) -> None:
    async def scenario() -> None:
        handler = Recorder(refuse={"311@ottawa.example": refusal, "agent@ottawa.example": refusal})
        async with smtp_server(handler) as port:
            with pytest.raises(error) as raised:
                await send_email(resident_message(), settings(port))
        assert getattr(raised.value, "code", None) == code
        assert handler.received == []

    run(scenario)


def test_one_refused_recipient_does_not_fail_the_others(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        handler = Recorder(refuse={"agent@ottawa.example": "550 5.1.1 No such user"})
        async with smtp_server(handler) as port:
            await send_email(resident_message(), settings(port))
        (received,) = handler.received
        assert received.rcpt_tos == ["311@ottawa.example"]

    with caplog.at_level(logging.WARNING, logger="gateway.mail.smtp"):
        run(scenario)
    assert "agent@ottawa.example (550)" in caplog.text


def test_rejected_data_is_permanent() -> None:
    async def scenario() -> None:
        async with smtp_server(Recorder(data_reply="554 5.6.0 Message rejected")) as port:
            with pytest.raises(PermanentSmtpError) as raised:
                await send_email(resident_message(), settings(port))
        assert raised.value.code == 554

    run(scenario)


def test_envelope_sender_and_recipients_can_be_given() -> None:
    async def scenario() -> None:
        handler = Recorder()
        async with smtp_server(handler) as port:
            await send_email(
                resident_message(),
                settings(port),
                sender="bounces@gateway.example.ca",
                recipients=["other@ottawa.example"],
            )
        (received,) = handler.received
        assert received.mail_from == "bounces@gateway.example.ca"
        assert received.rcpt_tos == ["other@ottawa.example"]

    run(scenario)


def test_bad_security_setting() -> None:
    with pytest.raises(ValueError, match="security"):
        asyncio.run(send_email(resident_message(), settings(25, "ssl")))


# -- the sandbox mail server ------------------------------------------------------------------


def test_sandbox_server_saves_one_eml_per_recipient_mailbox(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sent = resident_message(with_picture=True)

    async def scenario() -> None:
        async with SandboxMailServer(tmp_path / "mail") as server:
            await send_email(sent, settings(server.port))
            await send_email(sent, settings(server.port), recipients=["311@ottawa.example"])

    with caplog.at_level(logging.INFO, logger="gateway.mail.sandbox"):
        run(scenario)
    city = mailbox_messages(tmp_path / "mail", "311@ottawa.example")
    agent = mailbox_messages(tmp_path / "mail", "Agent@Ottawa.example")
    assert len(city) == 2 and len(agent) == 1
    assert sorted(p.name for p in (tmp_path / "mail").iterdir()) == [
        "311@ottawa.example",
        "agent@ottawa.example",
    ]
    assert city[0].name.endswith(".eml") and city[0] != city[1]
    saved = email.message_from_bytes(agent[0].read_bytes(), policy=email.policy.default)
    assert saved["Delivered-To"] == "agent@ottawa.example"
    assert saved["Return-Path"] == "<sms@gateway.example.ca>"
    assert saved["Message-ID"] == sent["Message-ID"]
    assert saved["Subject"] == sent["Subject"]
    (picture,) = saved.iter_attachments()
    assert picture.get_content() == b"\xff\xd8" * 5000
    # one INFO line per saved copy: mailbox and subject, the number masked, no body
    lines = [r.getMessage() for r in caplog.records if "saved for" in r.getMessage()]
    assert len(lines) == 3
    assert "311@ottawa.example" in lines[0] and "311 text from" in lines[0]
    assert "555-0123" not in caplog.text and "***0123" in lines[0]
    assert "Pothole" not in caplog.text


def test_sandbox_mailbox_folder_names_cannot_escape() -> None:
    assert mailbox_folder("311@Ottawa.example") == "311@ottawa.example"
    assert mailbox_folder("../../etc/passwd") == "_.._etc_passwd"
    assert "/" not in mailbox_folder("a/b@c") and mailbox_folder("..") == "_"
    assert mailbox_folder("") == "_"


def test_sandbox_server_port_and_restart(tmp_path: Path) -> None:
    async def scenario() -> None:
        server = SandboxMailServer(tmp_path)
        with pytest.raises(RuntimeError):
            _ = server.port
        await server.start()
        port = server.port
        assert port > 0
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert (await reader.readline()).startswith(b"220 ")
        await server.stop()  # closes the idle client connection too
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        await writer.wait_closed()
        await server.stop()  # idempotent
        with pytest.raises(TemporarySmtpError):
            await send_email(resident_message(), settings(port))

    run(scenario)
