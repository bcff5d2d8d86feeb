"""The reply ingress holds against strangers (issue 15): recipients checked against the
store, a cap on connections, an idle timeout, a peer allow-list, SMTP AUTH, and running out
of file descriptors without taking the web half down. Real servers and clients throughout
(the ingress on loopback, smtplib/aiosmtplib, raw sockets, `sms311 run` in a subprocess)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import resource
import smtplib
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import requests

from gateway.app import Gateway
from gateway.mail.ingress import (
    NOT_A_PEER,
    Credentials,
    ReplyIngress,
    auth_needs_tls,
    peer_allowed,
)
from gateway.mail.loopserver import TOO_MANY, Throttled
from gateway.mail.types import Disposition, MailOrigin
from gateway.rules.thread import new_token
from gateway.run.limits import ingress_connection_share, raise_open_files_limit
from gateway.run.sandbox import send_text
from gateway.run.worker import ingress_recipients
from gateway.settings import IngressSettings, check_config, load_settings
from gateway.store import open_store
from tests.dovecot import make_certificate
from tests.gateway_fixtures import free_port, settings_in, write_settings

REPLY = "reply+{token}@gateway.example"
OWN = "sms@gateway.example"  # the test settings' from_address
RAW = (
    b"From: Agent <agent@ottawa.example>\r\n"
    b"Subject: Re: pothole\r\n"
    b"Message-ID: <r1@ottawa.example>\r\n"
    b"\r\n"
    b"We are on it.\r\n"
)


class RecordingSink:
    def __init__(self) -> None:
        self.calls: list[tuple[bytes, MailOrigin]] = []

    async def __call__(self, raw: bytes, origin: MailOrigin) -> Disposition:
        self.calls.append((raw, origin))
        return Disposition("processed", "queued 1 sms")


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    async def main() -> None:
        await asyncio.wait_for(scenario(), 30)

    asyncio.run(main())


def anyone(address: str) -> bool:
    return address.startswith("reply+")


async def started(sink: RecordingSink | None = None, **kwargs: object) -> ReplyIngress:
    options: dict[str, object] = {"accept": anyone, **kwargs}
    ingress = ReplyIngress("127.0.0.1:0", sink or RecordingSink(), **options)  # type: ignore[arg-type]
    await ingress.start()
    return ingress


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, str]:
    """A raw connection and the server's first line."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    line = (await asyncio.wait_for(reader.readline(), 5)).decode().rstrip("\r\n")
    return reader, writer, line


async def closed_by_server(reader: asyncio.StreamReader, timeout: float = 5) -> bool:
    return await asyncio.wait_for(reader.read(), timeout) == b""


async def hang_up(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


async def until(predicate: Callable[[], bool], what: str, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


# --- recipients: the token must exist ---------------------------------------------------------


def conversation_token(gateway: Gateway) -> str:
    token = new_token()
    with gateway.store.transaction() as tx:
        tx.create_conversation("+16135550123", None, token, "Pothole")
    return token


def test_a_reply_address_is_taken_only_when_its_conversation_exists(gateway: Gateway) -> None:
    known = REPLY.format(token=conversation_token(gateway))
    unknown = REPLY.format(token=new_token())  # the right shape, no such conversation
    sink = RecordingSink()

    async def scenario() -> None:
        ingress = await started(sink, accept=ingress_recipients(gateway))
        try:

            def client() -> None:
                with smtplib.SMTP("127.0.0.1", ingress.port, timeout=10) as smtp:
                    smtp.ehlo()
                    assert smtp.mail("agent@ottawa.example")[0] == 250
                    code, text = smtp.rcpt(unknown)
                    assert code == 550
                    assert text.decode().startswith(f"5.1.1 <{unknown}>: no such reply address")
                    assert "erased after the retention period" in text.decode()
                    assert smtp.rcpt(known.upper())[0] == 250  # any case: the same token
                    assert smtp.rcpt(OWN)[0] == 250  # the From address: routed by In-Reply-To
                    assert smtp.rcpt("someone@elsewhere.example")[0] == 550
                    assert smtp.data(RAW)[0] == 250
                    # Only strangers' tokens: refused in the dialogue, nothing reaches the
                    # sink, so nothing can fill the Failed list.
                    with pytest.raises(smtplib.SMTPRecipientsRefused) as caught:
                        smtp.sendmail("spammer@spam.example", [unknown], RAW)
                    assert {code for code, _ in caught.value.recipients.values()} == {550}

            await asyncio.to_thread(client)
        finally:
            await ingress.stop()

    run(scenario)
    assert len(sink.calls) == 1


def test_a_store_that_is_down_answers_451_at_rcpt(tmp_path: Path) -> None:
    settings = settings_in(tmp_path, database="postgresql://postgres@127.0.0.1:1/nothing")
    gateway = Gateway.from_settings(settings, check_schema=False)
    sink = RecordingSink()

    async def scenario() -> None:
        ingress = await started(sink, accept=ingress_recipients(gateway))
        try:

            def client() -> None:
                with smtplib.SMTP("127.0.0.1", ingress.port, timeout=10) as smtp:
                    smtp.ehlo()
                    assert smtp.mail("agent@ottawa.example")[0] == 250
                    code, text = smtp.rcpt(REPLY.format(token=new_token()))
                    assert (code, text.decode()[:5]) == (451, "4.3.0")  # try later, not 550
                    assert smtp.rcpt(OWN)[0] == 250  # needs no lookup
                    assert smtp.rcpt("someone@elsewhere.example")[0] == 550

            await asyncio.to_thread(client)
        finally:
            await ingress.stop()

    try:
        run(scenario)
    finally:
        gateway.close()
    assert sink.calls == []


def test_a_recipient_check_that_raises_answers_451_never_250() -> None:
    def broken(address: str) -> bool:
        raise RuntimeError("bug")

    async def scenario() -> None:
        ingress = await started(accept=broken)
        try:

            def client() -> None:
                with smtplib.SMTP("127.0.0.1", ingress.port, timeout=10) as smtp:
                    smtp.ehlo()
                    smtp.mail("agent@ottawa.example")
                    assert smtp.rcpt(REPLY.format(token=new_token()))[0] == 451

            await asyncio.to_thread(client)
        finally:
            await ingress.stop()

    run(scenario)


# --- connections: a cap and an idle timeout ---------------------------------------------------


def test_beyond_max_connections_a_sender_gets_421_and_is_closed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="gateway.mail.loopserver")

    async def scenario() -> None:
        ingress = await started(max_connections=3)
        held = []
        try:
            for _ in range(3):
                reader, writer, line = await connect(ingress.port)
                assert line.startswith("220 ")
                held.append((reader, writer))
            await until(lambda: ingress.open_connections == 3, "3 open connections")
            for _ in range(10):  # a flood beyond the cap
                reader, writer, line = await connect(ingress.port)
                assert line == TOO_MANY == "421 4.7.0 Too many connections, try again later"
                assert await closed_by_server(reader)
                await hang_up(writer)
            assert ingress.open_connections == 3
            # One ends: there is room again.
            await hang_up(held.pop()[1])
            await until(lambda: ingress.open_connections == 2, "a connection to end")
            reader, writer, line = await connect(ingress.port)
            assert line.startswith("220 ")
            held.append((reader, writer))
        finally:
            for _, writer in held:
                await hang_up(writer)
            await ingress.stop()

    run(scenario)
    refused = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(refused) == 1  # ten refusals, one line: a flood does not flood the log
    assert "3 open already" in refused[0].getMessage()


def test_an_idle_connection_is_closed_after_the_timeout_a_busy_one_is_not() -> None:
    async def scenario() -> None:
        ingress = await started(idle_timeout=0.6)
        try:
            reader, writer, line = await connect(ingress.port)
            assert line.startswith("220 ")
            started_at = time.monotonic()
            assert await closed_by_server(reader, 5)
            assert 0.5 <= time.monotonic() - started_at < 3
            await hang_up(writer)
            await until(lambda: ingress.open_connections == 0, "the slot to be released")
            # A connection that keeps talking stays (bytes reset the timer, also mid-line).
            reader, writer, line = await connect(ingress.port)
            for _ in range(5):
                await asyncio.sleep(0.3)
                writer.write(b"NO")
                await writer.drain()
                await asyncio.sleep(0.3)
                writer.write(b"OP\r\n")
                await writer.drain()
                assert (await asyncio.wait_for(reader.readline(), 5)).startswith(b"250")
            await hang_up(writer)
        finally:
            await ingress.stop()

    run(scenario)


# --- the peer allow-list ----------------------------------------------------------------------


def test_a_peer_not_in_allowed_peers_gets_554_before_the_greeting(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="gateway.mail.ingress")
    sink = RecordingSink()

    async def scenario() -> None:
        closed = await started(sink, allowed_peers=["10.0.0.0/8", "::1"])
        open_ = await started(sink, allowed_peers=["10.0.0.0/8", "127.0.0.1"])
        try:
            for _ in range(3):
                reader, writer, line = await connect(closed.port)
                assert line == NOT_A_PEER
                assert line.startswith("554 5.7.1 ")
                assert await closed_by_server(reader)
                await hang_up(writer)
            assert closed.open_connections == 0
            reader, writer, line = await connect(open_.port)
            assert line.startswith("220 ")
            await hang_up(writer)

            def client() -> None:
                with smtplib.SMTP("127.0.0.1", open_.port, timeout=10) as smtp:
                    assert smtp.sendmail("a@ottawa.example", [REPLY.format(token="x")], RAW) == {}

            await asyncio.to_thread(client)
        finally:
            await closed.stop()
            await open_.stop()

    run(scenario)
    assert len(sink.calls) == 1
    assert len([r for r in caplog.records if "allowed_peers" in r.getMessage()]) == 1


def test_peer_allowed_by_address_or_network() -> None:
    import ipaddress

    networks = [ipaddress.ip_network(n) for n in ("10.0.0.0/8", "::1/128", "192.0.2.7/32")]
    assert peer_allowed(("10.1.2.3", 4321), networks)
    assert peer_allowed(("::ffff:10.1.2.3", 4321, 0, 0), networks)  # dual-stack listener
    assert peer_allowed(("::1", 4321, 0, 0), networks)
    assert peer_allowed(("192.0.2.7", 25), networks)
    assert not peer_allowed(("192.0.2.8", 25), networks)
    assert not peer_allowed(("127.0.0.1", 25), networks)
    assert not peer_allowed(None, networks)


# --- SMTP AUTH --------------------------------------------------------------------------------


def auth_plain(user: str, password: str) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def test_with_credentials_mail_needs_auth_and_only_the_right_password_signs_in(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    sink = RecordingSink()
    token = REPLY.format(token="x")

    async def scenario() -> None:
        ingress = await started(sink, credentials=("relay", "s3cret pass"))
        try:

            def client() -> None:
                with smtplib.SMTP("127.0.0.1", ingress.port, timeout=10) as smtp:
                    smtp.ehlo()
                    # loopback: AUTH is offered without TLS (the connection never leaves
                    # the machine)
                    assert set(smtp.esmtp_features["auth"].split()) == {"LOGIN", "PLAIN"}
                    code, text = smtp.mail("agent@ottawa.example")
                    assert (code, text) == (530, b"5.7.0 Authentication required")
                    code, _ = smtp.docmd("AUTH", "PLAIN " + auth_plain("relay", "hunter2"))
                    assert code == 535
                    code, _ = smtp.docmd("AUTH", "PLAIN " + auth_plain("other", "s3cret pass"))
                    assert code == 535
                    assert smtp.mail("agent@ottawa.example")[0] == 530
                    smtp.user, smtp.password = "relay", "s3cret pass"
                    assert smtp.auth("LOGIN", smtp.auth_login)[0] == 235
                    assert smtp.sendmail("agent@ottawa.example", [token], RAW) == {}
                with smtplib.SMTP("127.0.0.1", ingress.port, timeout=10) as smtp:
                    smtp.login("relay", "s3cret pass")  # PLAIN
                    assert smtp.sendmail("agent@ottawa.example", [token], RAW) == {}
                with smtplib.SMTP("127.0.0.1", ingress.port, timeout=10) as smtp:
                    smtp.ehlo()  # guessing: a few tries per connection, then closed
                    for _ in range(3):
                        assert smtp.docmd("AUTH", "PLAIN " + auth_plain("relay", "x"))[0] == 535
                    assert smtp.docmd("AUTH", "PLAIN " + auth_plain("relay", "y"))[0] == 421

            await asyncio.to_thread(client)
        finally:
            await ingress.stop()

    run(scenario)
    assert len(sink.calls) == 2
    failures = [r for r in caplog.records if "failed (wrong" in r.getMessage()]
    assert len(failures) == 1  # logged once a minute at most
    assert "s3cret" not in caplog.text and "hunter2" not in caplog.text


def test_auth_after_starttls(tmp_path: Path) -> None:
    make_certificate(tmp_path / "cert.pem", tmp_path / "key.pem")
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    sink = RecordingSink()

    async def scenario() -> None:
        ingress = await started(sink, credentials=("relay", "pw"), tls_context=server_tls)
        try:

            def client() -> None:
                client_tls = ssl.create_default_context(cafile=tmp_path / "cert.pem")
                with smtplib.SMTP("127.0.0.1", ingress.port, timeout=10) as smtp:
                    smtp.ehlo()
                    assert smtp.has_extn("starttls")
                    assert smtp.starttls(context=client_tls)[0] == 220
                    smtp.ehlo()
                    assert smtp.has_extn("auth")
                    assert smtp.mail("agent@ottawa.example")[0] == 530
                    smtp.rset()
                    smtp.login("relay", "pw")
                    assert smtp.sendmail("agent@ottawa.example", [REPLY.format(token="x")], RAW) == {}

            await asyncio.to_thread(client)
        finally:
            await ingress.stop()

    run(scenario)
    assert len(sink.calls) == 1


def test_auth_needs_tls_except_from_a_loopback_peer() -> None:
    assert not auth_needs_tls(("127.0.0.1", 4000))
    assert not auth_needs_tls(("127.0.0.53", 4000))
    assert not auth_needs_tls(("::1", 4000, 0, 0))
    assert not auth_needs_tls(("::ffff:127.0.0.1", 4000, 0, 0))
    assert auth_needs_tls(("10.0.0.5", 4000))
    assert auth_needs_tls(("2001:db8::5", 4000, 0, 0))
    assert auth_needs_tls(("::ffff:10.0.0.5", 4000, 0, 0))
    assert auth_needs_tls(None)


def test_credentials_are_compared_whole() -> None:
    credentials = Credentials("relay", "pässword")
    assert credentials.check(b"relay", "pässword".encode())
    assert not credentials.check(b"relay", b"p")
    assert not credentials.check(b"relay", "pässwordx".encode())
    assert not credentials.check(b"Relay", "pässword".encode())
    assert not credentials.check(b"", b"")


def test_lmtp_has_no_auth() -> None:
    with pytest.raises(ValueError, match="LMTP has no AUTH"):
        ReplyIngress("127.0.0.1:0", RecordingSink(), accept=anyone, lmtp=True,
                     credentials=("a", "b"))  # fmt: skip


# --- settings ---------------------------------------------------------------------------------

INGRESS = """\
  ingress:
    listen: "127.0.0.1:2526"
"""


def settings_file(tmp_path: Path, ingress: str) -> Path:
    path = write_settings(tmp_path)
    text = path.read_text().replace("  smtp: {host", ingress + "  smtp: {host")
    path.write_text(text)
    return path


def test_ingress_settings_defaults_and_values(tmp_path: Path) -> None:
    plain = load_settings(settings_file(tmp_path / "a", INGRESS), environ={}).email.ingress
    assert plain is not None
    assert (plain.max_connections, plain.idle_timeout_seconds) == (100, 60.0)
    assert plain.allowed_peers == () and plain.username is None and plain.password is None
    assert plain.tls_certificate is None and plain.tls_key is None
    full = INGRESS + (
        "    max_connections: 20\n"
        "    idle_timeout_seconds: 30\n"
        "    allowed_peers: [127.0.0.1, '::1', 10.0.0.0/8]\n"
        "    username: relay\n"
        "    tls_certificate: certs/ingress.crt\n"
        "    tls_key: certs/ingress.key\n"
    )
    path = settings_file(tmp_path / "b", full)
    ingress = load_settings(path, environ={"GATEWAY_EMAIL__INGRESS__PASSWORD": "pw"}).email.ingress
    assert ingress == IngressSettings(
        listen="127.0.0.1:2526", max_connections=20, idle_timeout_seconds=30.0,
        allowed_peers=("127.0.0.1/32", "::1/128", "10.0.0.0/8"), username="relay",
        password="pw", tls_certificate=path.parent / "certs/ingress.crt",
        tls_key=path.parent / "certs/ingress.key",
    )  # fmt: skip
    assert "pw" not in repr(ingress)


@pytest.mark.parametrize(
    ("line", "key", "message"),
    [
        ("    allowed_peers: [127.0.0.1, 10.0.0.0/33]\n", "email.ingress.allowed_peers",
         "'10.0.0.0/33' is not valid: write an IP address or network"),
        ("    allowed_peers: [10.1.0.0/8]\n", "email.ingress.allowed_peers",
         "'10.1.0.0/8' has host bits set"),
        ("    allowed_peers: [mx.city.example]\n", "email.ingress.allowed_peers",
         "'mx.city.example' is not valid"),
        ("    max_connections: 0\n", "email.ingress.max_connections", "must be at least 1"),
        ("    idle_timeout_seconds: 0.5\n", "email.ingress.idle_timeout_seconds",
         "must be between 1 and 3600 seconds"),
    ],
)  # fmt: skip
def test_ingress_settings_problems_name_file_line_and_key(
    tmp_path: Path, line: str, key: str, message: str
) -> None:
    path = settings_file(tmp_path, INGRESS + line)
    problems = [p for p in check_config(path, environ={}) if p.key == key]
    assert len(problems) == 1, check_config(path, environ={})
    problem = problems[0]
    assert problem.file == str(path)
    assert problem.line == path.read_text().splitlines().index(line.rstrip("\n")) + 1
    assert message in problem.message


def test_from_settings_builds_the_ingress_and_refuses_half_pairs(tmp_path: Path) -> None:
    make_certificate(tmp_path / "cert.pem", tmp_path / "key.pem")
    settings = IngressSettings(
        listen="127.0.0.1:0", max_connections=7, idle_timeout_seconds=9.0,
        allowed_peers=("10.0.0.0/8",), username="relay", password="pw",
        tls_certificate=tmp_path / "cert.pem", tls_key=tmp_path / "key.pem",
    )  # fmt: skip
    ingress = ReplyIngress.from_settings(settings, RecordingSink(), accept=anyone)
    assert (ingress.max_connections, ingress.idle_timeout) == (7, 9.0)
    assert [str(n) for n in ingress.allowed_peers] == ["10.0.0.0/8"]
    assert ingress.credentials is not None and ingress.credentials.check(b"relay", b"pw")
    assert ingress.tls_context is not None
    capped = ReplyIngress.from_settings(
        settings, RecordingSink(), accept=anyone, max_connections=3
    )
    assert capped.max_connections == 3
    for half in (
        {"username": "relay", "password": None},
        {"username": None, "password": "pw"},
        {"tls_certificate": None},
    ):
        options = {**settings.__dict__, **half}
        with pytest.raises(ValueError, match="go together"):
            ReplyIngress.from_settings(IngressSettings(**options), RecordingSink(), accept=anyone)
    missing = {**settings.__dict__, "tls_certificate": tmp_path / "nope.pem"}
    with pytest.raises(OSError):
        ReplyIngress.from_settings(IngressSettings(**missing), RecordingSink(), accept=anyone)


# --- file descriptors -------------------------------------------------------------------------


def test_the_ingress_takes_at_most_half_the_open_files_limit() -> None:
    assert ingress_connection_share(100, limit=1024) == 100
    assert ingress_connection_share(1000, limit=1024) == 512
    assert ingress_connection_share(100, limit=3) == 1


def test_the_soft_open_files_limit_is_raised_to_the_hard_one() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowered = min(soft, 512)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowered, hard))
    try:
        before, after = raise_open_files_limit() or (0, 0)
        now = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        expected = hard if hard != resource.RLIM_INFINITY else now
        assert (before, after, now) == (lowered, expected, expected)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture
def lowered_nofile() -> Iterator[Callable[[], None]]:
    """Calling it sets this process's soft open files limit to its lowest free descriptor:
    every new descriptor fails with EMFILE until the test ends (or it is given back)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)

    def lower() -> None:
        free = os.dup(0)
        os.close(free)
        resource.setrlimit(resource.RLIMIT_NOFILE, (free, hard))

    try:
        yield lower
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_accept_out_of_descriptors_is_logged_once_a_minute_without_traceback(
    caplog: pytest.LogCaptureFixture, lowered_nofile: Callable[[], None]
) -> None:
    caplog.set_level(logging.WARNING)
    limits = resource.getrlimit(resource.RLIMIT_NOFILE)

    async def scenario() -> None:
        ingress = await started()
        try:
            # Connected by the kernel (in the listen backlog), not yet accepted: the loop
            # has not run since.
            clients = [socket.create_connection(("127.0.0.1", ingress.port)) for _ in range(3)]
            lowered_nofile()
            await asyncio.sleep(2.6)  # asyncio retries accept() every second: 3 attempts
            resource.setrlimit(resource.RLIMIT_NOFILE, limits)
            # descriptors again: the waiting connections are taken and greeted
            loop = asyncio.get_running_loop()
            for client in clients:
                client.setblocking(False)
                greeting = await asyncio.wait_for(loop.sock_recv(client, 100), 5)
                assert greeting.startswith(b"220 ")
                client.close()
        finally:
            await ingress.stop()

    run(scenario)
    exhausted = [r for r in caplog.records if "accept" in r.getMessage()]
    assert len(exhausted) == 1, [r.getMessage() for r in caplog.records]
    assert exhausted[0].levelno == logging.WARNING and exhausted[0].exc_info is None
    assert "Too many open files" in exhausted[0].getMessage()
    assert "Traceback" not in caplog.text


@pytest.mark.slow
def test_idle_connections_beyond_the_cap_do_not_take_the_web_half_down(tmp_path: Path) -> None:
    """`sms311 run` with 128 descriptors at most (soft and hard) and the ingress capped at
    20: 200 idle connections to the ingress (more than the process could hold) leave
    /healthz and the webhook answering, and the log says so once."""
    ingress_port, web_port = free_port(), free_port()
    path = write_settings(tmp_path, web_port=web_port, public_url=f"http://127.0.0.1:{web_port}")
    ingress = (
        f'  ingress: {{listen: "127.0.0.1:{ingress_port}", max_connections: 20,'
        " idle_timeout_seconds: 60}\n"
    )
    path.write_text(path.read_text().replace("  smtp: {host", ingress + "  smtp: {host"))
    settings = load_settings(path, environ={})
    store = open_store(settings.database)
    store.upgrade()
    store.close()
    limited = (
        "import os, resource, sys; resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128)); "
        "os.execv(sys.executable, [sys.executable, '-m', 'gateway', *sys.argv[1:]])"
    )
    log_path = tmp_path / "gateway.log"
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("GATEWAY_")}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-c", limited, "--config", str(path), "run"],
            stdout=log, stderr=subprocess.STDOUT, env={**env, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip

    def healthz() -> int:
        with requests.get(f"http://127.0.0.1:{web_port}/healthz", timeout=5,
                          headers={"Connection": "close"}) as response:  # fmt: skip
            return response.status_code

    idle: list[socket.socket] = []
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, log_path.read_text()
            try:
                healthz()
                socket.create_connection(("127.0.0.1", ingress_port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.1)
        greeted = refused = 0
        for _ in range(200):
            client = socket.create_connection(("127.0.0.1", ingress_port), timeout=5)
            first = client.recv(200)
            if first.startswith(b"220 "):
                greeted += 1
                idle.append(client)  # held open, saying nothing
            else:
                assert first.decode().rstrip() == TOO_MANY
                refused += 1
                idle.append(client)  # the server closed it; our end stays open too
        assert (greeted, refused) == (20, 180)
        assert healthz() in (200, 503)  # answers (its verdict is not the point here)
        status, replies = send_text(settings, "613-555-0142", "Pothole on Bank St")
        assert status == 200 and replies  # the webhook works
    finally:
        for client in idle:
            client.close()
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    output = log_path.read_text(errors="replace")
    assert "Traceback" not in output, output
    assert output.count("connection from") == 1, output  # 180 refusals, one line
    assert "at most 20 connections" in output, output


def test_throttled_counts_what_it_left_out(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    throttled = Throttled(logging.getLogger("tests.throttled"), 60.0, clock=lambda: now[0])
    caplog.set_level(logging.WARNING, logger="tests.throttled")
    assert throttled.warning("refused %s", "a")
    for _ in range(4):
        now[0] += 10
        assert not throttled.warning("refused %s", "b")
    now[0] += 21
    assert throttled.warning("refused %s", "c")
    assert [r.getMessage() for r in caplog.records] == [
        "refused a",
        "refused c (and 4 more like it not logged in the last 60 s)",
    ]
