"""The SMTP/LMTP reply ingress, driven by real clients (aiosmtplib, smtplib, a raw LMTP
dialogue over a socket)."""

from __future__ import annotations

import asyncio
import re
import smtplib
from collections.abc import Awaitable, Callable

import aiosmtplib
import pytest

from gateway.mail.ingress import ReplyIngress, parse_listen, too_big
from gateway.mail.types import Disposition, MailOrigin

REPLY = re.compile(r"reply\+[a-z0-9]{8,}@gateway\.example", re.IGNORECASE)
GOOD = "reply+abcdefgh23@gateway.example"
OTHER_GOOD = "reply+zyxwvuts45@gateway.example"

RAW = (
    b"From: Agent <agent@ottawa.example>\r\n"
    b"To: " + GOOD.encode() + b"\r\n"
    b"Subject: Re: pothole\r\n"
    b"Message-ID: <r1@ottawa.example>\r\n"
    b"\r\n"
    b"We are on it.\r\n"
    b".leading dot survives\r\n"
)


def accept(address: str) -> bool:
    return bool(REPLY.fullmatch(address))


class RecordingSink:
    def __init__(self, decide: Callable[[int], Disposition] | None = None) -> None:
        self.calls: list[tuple[bytes, MailOrigin]] = []
        self.decide = decide or (lambda n: Disposition("processed", "queued 1 sms"))

    async def __call__(self, raw: bytes, origin: MailOrigin) -> Disposition:
        self.calls.append((raw, origin))
        return self.decide(len(self.calls))


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    async def main() -> None:
        await asyncio.wait_for(scenario(), 30)

    asyncio.run(main())


async def started(sink: RecordingSink, **kwargs: object) -> ReplyIngress:
    ingress = ReplyIngress("127.0.0.1:0", sink, accept=accept, **kwargs)  # type: ignore[arg-type]
    await ingress.start()
    return ingress


def test_parse_listen() -> None:
    assert parse_listen("127.0.0.1:2525") == ("127.0.0.1", 2525)
    assert parse_listen("[::1]:0") == ("::1", 0)
    for bad in ("2525", "host:", ":25", "host:99999", "host:x"):
        with pytest.raises(ValueError):
            parse_listen(bad)


def test_a_reply_address_is_delivered_to_the_sink_once() -> None:
    sink = RecordingSink()

    async def scenario() -> None:
        ingress = await started(sink)
        try:
            errors, response = await aiosmtplib.send(
                RAW,
                sender="agent@ottawa.example",
                recipients=[GOOD],
                hostname="127.0.0.1",
                port=ingress.port,
                timeout=10,
            )
            assert errors == {}
            assert response.startswith("2.0.0 Message accepted")
        finally:
            await ingress.stop()

    run(scenario)
    assert len(sink.calls) == 1
    raw, origin = sink.calls[0]
    assert raw == RAW  # exactly the bytes sent (dot-stuffing undone)
    assert origin.kind == "smtp"
    assert origin.peer is not None and origin.peer.startswith("127.0.0.1:")
    assert origin.mailbox is None and origin.uid is None


def test_other_recipients_are_refused_so_it_is_never_a_relay() -> None:
    sink = RecordingSink()

    async def scenario() -> None:
        ingress = await started(sink)
        try:

            def client() -> None:
                with smtplib.SMTP("127.0.0.1", ingress.port, timeout=10) as smtp:
                    # Mixed: only the reply address is taken.
                    refused = smtp.sendmail(
                        "agent@ottawa.example", [GOOD, "victim@elsewhere.example"], RAW
                    )
                    assert refused == {
                        "victim@elsewhere.example": (
                            550,
                            b"5.1.1 <victim@elsewhere.example>: no such reply address here",
                        )
                    }
                    # Only strangers: nothing is accepted, nothing reaches the sink.
                    for recipients in (
                        ["victim@elsewhere.example"],
                        ["reply+abcdefgh23@elsewhere.example", "postmaster@gateway.example"],
                        ["reply+abcdefgh23@gateway.example.evil.example"],
                    ):
                        with pytest.raises(smtplib.SMTPRecipientsRefused) as caught:
                            smtp.sendmail("spammer@spam.example", recipients, RAW)
                        assert {code for code, _ in caught.value.recipients.values()} == {550}

            await asyncio.to_thread(client)
        finally:
            await ingress.stop()

    run(scenario)
    assert len(sink.calls) == 1


def test_too_big_is_refused_with_552() -> None:
    sink = RecordingSink()
    big = RAW + (b"x" * 70 + b"\r\n") * 30

    async def scenario() -> None:
        ingress = await started(sink, max_size=1000)
        try:

            def client() -> None:
                with smtplib.SMTP("127.0.0.1", ingress.port, timeout=10) as smtp:
                    smtp.ehlo()
                    assert smtp.has_extn("size") and smtp.esmtp_features["size"] == "1000"
                    # A client announcing the size is refused at MAIL FROM...
                    with pytest.raises(smtplib.SMTPSenderRefused) as caught:
                        smtp.sendmail("agent@ottawa.example", [GOOD], big)
                    assert caught.value.smtp_code == 552
                    # the agent's server bounces it with our explanation, naming the limit
                    assert caught.value.smtp_error.decode() == too_big(1000)[4:]
                    assert "1000 bytes" in too_big(1000) and "10 MB" in too_big(10_000_000)
                    smtp.rset()
                    # ...and one that does not, after DATA.
                    assert smtp.mail("agent@ottawa.example")[0] == 250
                    assert smtp.rcpt(GOOD)[0] == 250
                    code, text = smtp.data(big)
                    assert (code, text.decode()) == (552, too_big(1000)[4:])
                    # The connection is still usable for a message of the right size.
                    assert smtp.sendmail("agent@ottawa.example", [GOOD], RAW) == {}

            await asyncio.to_thread(client)
        finally:
            await ingress.stop()

    run(scenario)
    assert [raw for raw, _ in sink.calls] == [RAW]


def test_outcomes_answer_250_and_a_raising_sink_or_an_unkept_failure_answers_451() -> None:
    def decide(n: int) -> Disposition:
        if n == 1:
            return Disposition("failed", "sender is not an agent", kept=True)
        if n == 2:
            return Disposition("ignored", "auto-reply")
        if n == 3:
            raise RuntimeError("database is locked")
        if n == 4:  # failed, and the Failed list could not take it: never accept and lose it
            return Disposition("failed", "internal error: OSError")
        return Disposition("processed", "queued 1 sms")

    sink = RecordingSink(decide)

    async def scenario() -> None:
        ingress = await started(sink)
        try:
            for _ in range(2):  # failed (kept) and ignored are taken: 250
                _errors, response = await aiosmtplib.send(
                    RAW, sender="a@ottawa.example", recipients=[GOOD], port=ingress.port,
                    hostname="127.0.0.1", timeout=10,
                )  # fmt: skip
                assert response.startswith("2.0.0")
            for _ in range(2):  # a raising sink, then a failure that was not kept: 451
                with pytest.raises(aiosmtplib.SMTPDataError) as caught:
                    await aiosmtplib.send(
                        RAW, sender="a@ottawa.example", recipients=[GOOD], port=ingress.port,
                        hostname="127.0.0.1", timeout=10,
                    )  # fmt: skip
                assert caught.value.code == 451
            # The sending server retries later: taken this time.
            _errors, response = await aiosmtplib.send(
                RAW, sender="a@ottawa.example", recipients=[GOOD], port=ingress.port,
                hostname="127.0.0.1", timeout=10,
            )  # fmt: skip
            assert response.startswith("2.0.0")
        finally:
            await ingress.stop()

    run(scenario)
    assert len(sink.calls) == 5


async def lmtp_dialogue(port: int, recipients: list[str], body: bytes) -> dict[str, list[str]]:
    """A raw LMTP client: the server's replies to each RCPT, and after the data."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def reply() -> str:
        while True:
            line = (await reader.readline()).decode().rstrip("\r\n")
            if len(line) < 4 or line[3] != "-":
                return line

    async def send(command: str) -> str:
        writer.write(command.encode() + b"\r\n")
        await writer.drain()
        return await reply()

    replies: dict[str, list[str]] = {"rcpt": [], "data": []}
    try:
        assert (await reply()).startswith("220")
        assert (await send("LHLO client.example")).startswith("250")
        assert (await send("MAIL FROM:<agent@ottawa.example>")).startswith("250")
        for recipient in recipients:
            replies["rcpt"].append(await send(f"RCPT TO:<{recipient}>"))
        assert (await send("DATA")).startswith("354")
        stuffed = b"".join(
            (b"." + line if line.startswith(b".") else line)
            for line in body.splitlines(keepends=True)
        )
        writer.write(stuffed + b".\r\n")
        await writer.drain()
        accepted = sum(1 for line in replies["rcpt"] if line.startswith("250"))
        for _ in range(accepted):  # LMTP: one reply per accepted recipient
            replies["data"].append(await reply())
        assert (await send("QUIT")).startswith("221")  # nothing else was left to read
    finally:
        writer.close()
        await writer.wait_closed()
    return replies


def test_lmtp_answers_once_per_recipient_and_hands_the_message_over_once() -> None:
    sink = RecordingSink()

    async def scenario() -> None:
        ingress = await started(sink, lmtp=True)
        try:
            replies = await lmtp_dialogue(
                ingress.port, [GOOD, "someone@elsewhere.example", OTHER_GOOD], RAW
            )
        finally:
            await ingress.stop()
        assert [line[:9] for line in replies["rcpt"]] == ["250 2.1.5", "550 5.1.1", "250 2.1.5"]
        assert replies["data"] == ["250 2.0.0 Message accepted"] * 2

    run(scenario)
    assert len(sink.calls) == 1
    raw, origin = sink.calls[0]
    assert raw == RAW and origin.kind == "lmtp"


def test_lmtp_answers_451_per_recipient_when_the_sink_raises() -> None:
    def decide(n: int) -> Disposition:
        raise RuntimeError("store unavailable")

    sink = RecordingSink(decide)

    async def scenario() -> None:
        ingress = await started(sink, lmtp=True)
        try:
            replies = await lmtp_dialogue(ingress.port, [GOOD, OTHER_GOOD], RAW)
        finally:
            await ingress.stop()
        assert replies["data"] == ["451 4.3.0 Temporary failure, please try again later"] * 2

    run(scenario)


def test_smtp_greeting_refuses_lhlo_and_lmtp_refuses_ehlo() -> None:
    async def scenario() -> None:
        smtp = await started(RecordingSink())
        lmtp = await started(RecordingSink(), lmtp=True)
        try:

            def client() -> None:
                with smtplib.SMTP("127.0.0.1", lmtp.port, timeout=10) as conn:
                    assert conn.ehlo()[0] == 500
                with smtplib.LMTP("127.0.0.1", lmtp.port, timeout=10) as conn:
                    assert conn.ehlo()[0] == 250  # smtplib.LMTP sends LHLO
                with smtplib.SMTP("127.0.0.1", smtp.port, timeout=10) as conn:
                    assert conn.docmd("LHLO", "x")[0] == 500

            await asyncio.to_thread(client)
        finally:
            await smtp.stop()
            await lmtp.stop()

    run(scenario)


def test_stop_closes_open_connections() -> None:
    async def scenario() -> None:
        ingress = await started(RecordingSink())
        reader, writer = await asyncio.open_connection("127.0.0.1", ingress.port)
        assert (await reader.readline()).startswith(b"220")
        await asyncio.wait_for(ingress.stop(), 2)
        assert await asyncio.wait_for(reader.read(), 2) == b""  # closed by the server
        writer.close()
        await writer.wait_closed()
        with pytest.raises(RuntimeError):
            _ = ingress.port

    run(scenario)


def test_an_async_recipient_check_may_answer_its_own_refusal() -> None:
    """The worker's check looks the token up in the store (a coroutine) and answers its own
    550 (unknown token) or 451 (store down) line: given to the client as is."""
    sink = RecordingSink()

    async def check(address: str) -> bool | str:
        await asyncio.sleep(0)
        if address == GOOD:
            return True
        if address == OTHER_GOOD:
            return "451 4.3.0 Cannot check the reply address now, please try again later"
        return False

    async def scenario() -> None:
        ingress = ReplyIngress("127.0.0.1:0", sink, accept=check)
        await ingress.start()
        try:

            def client() -> None:
                with smtplib.SMTP("127.0.0.1", ingress.port, timeout=10) as smtp:
                    smtp.ehlo()
                    assert smtp.mail("agent@ottawa.example")[0] == 250
                    assert smtp.rcpt(OTHER_GOOD) == (
                        451, b"4.3.0 Cannot check the reply address now, please try again later"
                    )
                    assert smtp.rcpt("x@elsewhere.example")[0] == 550
                    assert smtp.rcpt(GOOD)[0] == 250
                    assert smtp.data(RAW)[0] == 250

            await asyncio.to_thread(client)
        finally:
            await ingress.stop()

    run(scenario)
    assert len(sink.calls) == 1
