"""The IMAP listener against a real Dovecot (tests/dovecot.py).

Every test starts its own Dovecot; the sink is a small recording class (the reply pipeline
is tested elsewhere); checkpoints live in a real SqlStore or a tiny in-memory class.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.mail.imap import (
    ImapListener,
    LoginFailed,
    encode_mailbox,
    parse_fetch,
    parse_search,
)
from gateway.mail.types import Disposition, MailOrigin
from gateway.settings import ImapSettings
from gateway.store import open_store
from tests.dovecot import Dovecot
from tests.gateway_fixtures import free_port

pytestmark = pytest.mark.slow  # a real Dovecot per test

FAST: dict[str, Any] = {
    "idle_timeout": 5.0,
    "command_timeout": 2.0,
    "min_backoff": 0.02,
    "max_backoff": 0.2,
}


# --------------------------------------------------------------------------------------------
# helpers


def message(n: int, subject: str = "Re: pothole") -> bytes:
    return (
        f"From: Agent <agent@ottawa.example>\r\n"
        f"To: reply+abc@gateway.example\r\n"
        f"Subject: {subject} {n}\r\n"
        f"Message-ID: <msg-{n}@ottawa.example>\r\n"
        f"\r\n"
        f"Reply number {n} (call 613-555-0123)\r\n"
    ).encode()


def ids(raws: list[bytes]) -> list[int]:
    """The n of message(n) for each raw message."""
    out = []
    for raw in raws:
        match = re.search(rb"Message-ID: <msg-(\d+)@", raw)
        assert match, raw[:200]
        out.append(int(match.group(1)))
    return out


class MemoryCheckpoints:
    """The two store methods the listener uses, in memory."""

    def __init__(self) -> None:
        self.checkpoints: dict[str, tuple[int, int]] = {}
        self.saves: list[tuple[str, int, int]] = []

    def imap_checkpoint(self, mailbox: str) -> tuple[int, int] | None:
        return self.checkpoints.get(mailbox)

    def save_imap_checkpoint(self, mailbox: str, uidvalidity: int, last_uid: int) -> None:
        self.saves.append((mailbox, uidvalidity, last_uid))
        self.checkpoints[mailbox] = (uidvalidity, last_uid)


Decide = Callable[[bytes, MailOrigin], Disposition | Awaitable[Disposition]]


class RecordingSink:
    """A ReplySink that records each call; `decide` gives the disposition (or raises)."""

    def __init__(self, decide: Decide | None = None) -> None:
        self.calls: list[tuple[bytes, MailOrigin]] = []
        self.decide = decide

    async def __call__(self, raw: bytes, origin: MailOrigin) -> Disposition:
        self.calls.append((raw, origin))
        if self.decide is None:
            return Disposition("processed", "queued 1 sms")
        result = self.decide(raw, origin)
        if isinstance(result, Disposition):
            return result
        return await result

    @property
    def ids(self) -> list[int]:
        return ids([raw for raw, _origin in self.calls])


async def until(predicate: Callable[[], bool], timeout: float = 5.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        await asyncio.sleep(0.01)


def has_calls(sink: RecordingSink, n: int) -> Callable[[], bool]:
    return lambda: len(sink.calls) == n


@contextlib.asynccontextmanager
async def running(listener: ImapListener) -> AsyncIterator[asyncio.Task[None]]:
    """Run the listener; on exit set stop and check run() returns within 2 s."""
    stop = asyncio.Event()
    task = asyncio.create_task(listener.run(stop))
    try:
        yield task
    finally:
        stop.set()
        started = time.monotonic()
        await asyncio.wait_for(task, 10)
        assert time.monotonic() - started < 2.0, "run() did not return promptly after stop"


def run(coroutine: Callable[[], Awaitable[None]], timeout: float = 30) -> None:
    async def main() -> None:
        await asyncio.wait_for(coroutine(), timeout)

    asyncio.run(main())


def imap_settings(server: Dovecot, **changes: Any) -> ImapSettings:
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": server.port,
        "username": server.user,
        "password": server.password,
        "security": "none",
    }
    values.update(changes)
    return ImapSettings(**values)


async def messages(server: Dovecot, mailbox: str = "INBOX") -> list[bytes]:
    return await asyncio.to_thread(server.messages, mailbox)


async def append(server: Dovecot, raw: bytes, mailbox: str = "INBOX") -> int:
    return await asyncio.to_thread(server.append, raw, mailbox)


@pytest.fixture
def dovecot(tmp_path: Path) -> Iterator[Dovecot]:
    server = Dovecot(tmp_path).start()
    try:
        yield server
    finally:
        server.close()


# --------------------------------------------------------------------------------------------
# pure helpers


def test_encode_mailbox_quotes_and_uses_modified_utf7() -> None:
    assert encode_mailbox("INBOX") == '"INBOX"'
    assert encode_mailbox("Réponses & co") == '"R&AOk-ponses &- co"'
    assert encode_mailbox('a "b" \\c') == '"a \\"b\\" \\\\c"'
    assert encode_mailbox("日本語") == '"&ZeVnLIqe-"'


def test_parse_search_and_fetch() -> None:
    assert parse_search([b"3 1 2", b"Search completed (0.001 + 0.000 secs)."]) == [1, 2, 3]
    assert parse_search([b"", b"Search completed."]) == []
    lines = [
        b"2 FETCH (FLAGS (\\Seen))",  # a push about another message
        b"1 FETCH (UID 7 BODY[] {5}",
        bytearray(b"hello"),
        b")",
        b"Fetch completed.",
    ]
    assert parse_fetch(lines, 7) == b"hello"
    assert parse_fetch(lines, 8) is None
    assert parse_fetch([b"Fetch completed."], 7) is None


# --------------------------------------------------------------------------------------------
# catching up


def test_catch_up_delivers_each_waiting_message_once_then_moves_it(
    dovecot: Dovecot, tmp_path: Path
) -> None:
    store = open_store(f"sqlite:///{tmp_path}/db.sqlite")
    store.upgrade()
    for n in (1, 2, 3):
        dovecot.append(message(n))
    uidvalidity = dovecot.uidvalidity()
    sink = RecordingSink()

    async def scenario() -> None:
        listener = ImapListener(imap_settings(dovecot), sink, store, **FAST)
        async with running(listener):
            await asyncio.wait_for(listener.caught_up.wait(), 5)
        assert sink.ids == [1, 2, 3]
        assert [o.uid for _r, o in sink.calls] == [1, 2, 3]
        assert all(
            o == MailOrigin(kind="imap", mailbox="INBOX", uidvalidity=uidvalidity, uid=o.uid)
            for _r, o in sink.calls
        )
        assert sink.calls[0][0] == message(1)  # the exact bytes
        assert await messages(dovecot) == []
        assert ids(await messages(dovecot, "Processed")) == [1, 2, 3]
        assert store.imap_checkpoint("INBOX") == (uidvalidity, 3)

        # A second start finds nothing new and calls the sink for nothing.
        listener = ImapListener(imap_settings(dovecot), sink, store, **FAST)
        async with running(listener):
            await asyncio.wait_for(listener.caught_up.wait(), 5)
        assert len(sink.calls) == 3

    try:
        run(scenario)
    finally:
        store.close()


def test_checkpoint_skips_messages_already_handled(dovecot: Dovecot) -> None:
    """Messages at or below the checkpoint's UID are not offered again (same UIDVALIDITY)."""
    for n in (1, 2, 3):
        dovecot.append(message(n))
    store = MemoryCheckpoints()
    store.checkpoints["INBOX"] = (dovecot.uidvalidity(), 2)
    sink = RecordingSink()

    async def scenario() -> None:
        listener = ImapListener(imap_settings(dovecot), sink, store, **FAST)
        async with running(listener):
            await asyncio.wait_for(listener.caught_up.wait(), 5)
        assert sink.ids == [3]
        assert ids(await messages(dovecot)) == [1, 2]  # left alone
        assert ids(await messages(dovecot, "Processed")) == [3]

    run(scenario)


def test_new_mail_is_pushed_by_idle_within_a_second(dovecot: Dovecot) -> None:
    sink = RecordingSink()
    store = MemoryCheckpoints()

    async def scenario() -> None:
        listener = ImapListener(imap_settings(dovecot), sink, store, idle_timeout=600)
        async with running(listener):
            await asyncio.wait_for(listener.caught_up.wait(), 5)
            await asyncio.sleep(0.1)  # well inside IDLE
            for n in (1, 2):
                started = time.monotonic()
                await append(dovecot, message(n))
                await until(has_calls(sink, n), 5, "the pushed message")
                assert time.monotonic() - started < 1.5
            await until(lambda: store.checkpoints["INBOX"][1] == 2, 5, "the checkpoint")
        assert sink.ids == [1, 2]
        assert ids(await messages(dovecot, "Processed")) == [1, 2]
        assert await messages(dovecot) == []

    run(scenario)


def test_outcomes_choose_the_mailbox_and_one_line_is_logged(
    dovecot: Dovecot, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.mail.imap")
    outcomes = {1: "processed", 2: "failed", 3: "ignored"}
    reasons = {1: "queued 1 sms", 2: "sender is not an agent", 3: "auto-reply"}

    def decide(raw: bytes, origin: MailOrigin) -> Disposition:
        n = ids([raw])[0]
        return Disposition(outcomes[n], reasons[n])  # type: ignore[arg-type]

    for n in (1, 2, 3):
        dovecot.append(message(n))
    sink = RecordingSink(decide)

    async def scenario() -> None:
        listener = ImapListener(imap_settings(dovecot), sink, MemoryCheckpoints(), **FAST)
        async with running(listener):
            await asyncio.wait_for(listener.caught_up.wait(), 5)
        assert ids(await messages(dovecot, "Processed")) == [1, 3]
        assert ids(await messages(dovecot, "Failed")) == [2]
        assert await messages(dovecot) == []

    run(scenario)
    lines = [r.getMessage() for r in caplog.records if " uid " in r.getMessage()]
    assert len(lines) == 3
    assert "uid 2: failed (sender is not an agent) -> Failed" in lines[1]
    assert "uid 3: ignored (auto-reply) -> Processed" in lines[2]
    text = caplog.text
    assert (
        "Reply number" not in text and "613-555-0123" not in text and dovecot.password not in text
    )


def test_sink_raising_leaves_the_message_and_it_is_retried_after_reconnecting(
    dovecot: Dovecot, caplog: pytest.LogCaptureFixture
) -> None:
    seen_in_inbox: list[list[int]] = []

    async def decide(raw: bytes, origin: MailOrigin) -> Disposition:
        seen_in_inbox.append(ids(await messages(dovecot)))
        if len(seen_in_inbox) == 1:
            raise RuntimeError("database is locked")
        return Disposition("processed", "queued 1 sms")

    dovecot.append(message(1))
    sink = RecordingSink(decide)
    store = MemoryCheckpoints()

    async def scenario() -> None:
        listener = ImapListener(imap_settings(dovecot), sink, store, **FAST)
        async with running(listener):
            await asyncio.wait_for(listener.caught_up.wait(), 5)
        assert sink.ids == [1, 1]
        assert seen_in_inbox == [[1], [1]]  # still in INBOX when offered again
        assert ids(await messages(dovecot, "Processed")) == [1]
        assert await messages(dovecot) == []

    run(scenario)
    assert (
        "INBOX: uid 1: the reply pipeline failed: RuntimeError: database is locked" in caplog.text
    )
    assert "reconnecting in" in caplog.text


def test_messages_moved_or_deleted_by_another_client_meanwhile(dovecot: Dovecot) -> None:
    """While message 1 is in the sink, another client deletes 2 and moves 1 itself: the
    listener shrugs (nothing to fetch, nothing to move) and goes on with 3."""

    async def decide(raw: bytes, origin: MailOrigin) -> Disposition:
        if origin.uid == 1:

            def meddle() -> None:
                client = dovecot.client()
                try:
                    client.select("INBOX")
                    client.uid("STORE", "2", "+FLAGS.SILENT", "(\\Deleted)")
                    client.expunge()
                    client.uid("MOVE", "1", "Failed")
                finally:
                    client.logout()

            await asyncio.to_thread(meddle)
        return Disposition("processed", "queued 1 sms")

    for n in (1, 2, 3):
        dovecot.append(message(n))
    sink = RecordingSink(decide)
    store = MemoryCheckpoints()

    async def scenario() -> None:
        listener = ImapListener(imap_settings(dovecot), sink, store, **FAST)
        async with running(listener):
            await asyncio.wait_for(listener.caught_up.wait(), 5)
        assert sink.ids == [1, 3]
        assert ids(await messages(dovecot, "Failed")) == [1]  # where the other client put it
        assert ids(await messages(dovecot, "Processed")) == [3]
        assert await messages(dovecot) == []
        assert store.checkpoints["INBOX"][1] == 3

    run(scenario)


# --------------------------------------------------------------------------------------------
# connections that go away


def test_dropped_connection_reconnects_and_catches_up(
    dovecot: Dovecot, caplog: pytest.LogCaptureFixture
) -> None:
    sink = RecordingSink()

    async def scenario() -> None:
        listener = ImapListener(imap_settings(dovecot), sink, MemoryCheckpoints(), **FAST)
        async with running(listener):
            await asyncio.wait_for(listener.caught_up.wait(), 5)
            for round_ in (1, 2):
                await asyncio.to_thread(dovecot.drop_connections)
                await append(dovecot, message(round_))
                await until(has_calls(sink, round_), 5, "the message")
                await asyncio.wait_for(listener.caught_up.wait(), 5)
        assert sink.ids == [1, 2]
        assert ids(await messages(dovecot, "Processed")) == [1, 2]

    run(scenario)
    assert "INBOX: the server closed the connection; reconnecting" in caplog.text


def test_server_restart_reconnects_and_catches_up(dovecot: Dovecot) -> None:
    sink = RecordingSink()

    async def scenario() -> None:
        listener = ImapListener(imap_settings(dovecot), sink, MemoryCheckpoints(), **FAST)
        async with running(listener):
            await asyncio.wait_for(listener.caught_up.wait(), 5)
            await append(dovecot, message(1))
            await until(lambda: len(sink.calls) == 1, 5, "message 1")
            await asyncio.to_thread(dovecot.restart)  # graceful: "* BYE", then closed
            await append(dovecot, message(2))  # probably before the listener is back
            await until(lambda: len(sink.calls) == 2, 10, "message 2")
            await asyncio.to_thread(dovecot.restart, graceful=False)  # a crash
            await append(dovecot, message(3))
            await until(lambda: len(sink.calls) == 3, 10, "message 3")
        assert sink.ids == [1, 2, 3]
        assert ids(await messages(dovecot, "Processed")) == [1, 2, 3]

    run(scenario)


class FreezingProxy:
    """A TCP relay to Dovecot that can go silent: `freeze()` stops relaying on the current
    connections without closing them, like a NAT or firewall that forgot them. New
    connections are relayed normally."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._links: list[dict[str, Any]] = []

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def freeze(self) -> None:
        for link in self._links:
            link["frozen"] = True

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        link: dict[str, Any] = {"frozen": False, "writers": [writer, up_writer]}
        self._links.append(link)
        link["tasks"] = [
            asyncio.create_task(self._pipe(reader, up_writer, link)),
            asyncio.create_task(self._pipe(up_reader, writer, link)),
        ]

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link: dict[str, Any]
    ) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                if not link["frozen"]:
                    writer.write(data)
                    await writer.drain()
        if not link["frozen"]:
            writer.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in self._links:
            for task in link["tasks"]:
                task.cancel()
            for writer in link["writers"]:
                writer.close()
            for task in link["tasks"]:
                with contextlib.suppress(asyncio.CancelledError, OSError):
                    await task
            for writer in link["writers"]:
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
        if self._server is not None:
            await self._server.wait_closed()


def test_silently_dead_connection_is_noticed_by_the_idle_restart(
    dovecot: Dovecot, caplog: pytest.LogCaptureFixture
) -> None:
    sink = RecordingSink()

    async def scenario() -> None:
        proxy = FreezingProxy(dovecot.port)
        await proxy.start()
        try:
            settings = imap_settings(dovecot, port=proxy.port)
            listener = ImapListener(
                settings,
                sink,
                MemoryCheckpoints(),
                idle_timeout=0.5,
                command_timeout=0.5,
                min_backoff=0.02,
            )
            async with running(listener):
                await asyncio.wait_for(listener.caught_up.wait(), 5)
                proxy.freeze()
                await append(dovecot, message(1))  # its EXISTS push is swallowed
                await until(lambda: len(sink.calls) == 1, 5, "the message after reconnecting")
            assert ids(await messages(dovecot, "Processed")) == [1]
        finally:
            await proxy.stop()

    run(scenario)
    assert "timed out; reconnecting" in caplog.text


def test_uidvalidity_change_rescans_without_moving_twice_or_losing(dovecot: Dovecot) -> None:
    store = MemoryCheckpoints()
    sink = RecordingSink()
    settings = imap_settings(dovecot)

    async def scenario() -> None:
        for n in (1, 2):
            await append(dovecot, message(n))
        listener = ImapListener(settings, sink, store, **FAST)
        async with running(listener):
            await asyncio.wait_for(listener.caught_up.wait(), 5)
        old = store.checkpoints["INBOX"]
        assert old[1] == 2

        # While the listener is away: two new messages, then the server renumbers INBOX
        # (UIDVALIDITY + 1, UIDs from 1 again: both now *below* the old checkpoint).
        for n in (3, 4):
            await append(dovecot, message(n))
        new_uidvalidity = await asyncio.to_thread(dovecot.set_uidvalidity, "INBOX")
        assert new_uidvalidity != old[0]
        assert [uid for uid, _raw in dovecot.uid_messages()] == [1, 2]

        listener = ImapListener(settings, sink, store, **FAST)
        async with running(listener):
            await asyncio.wait_for(listener.caught_up.wait(), 5)
        assert sink.ids == [1, 2, 3, 4]  # each offered once, none lost
        assert [o.uidvalidity for _r, o in sink.calls[2:]] == [new_uidvalidity] * 2
        assert sorted(ids(await messages(dovecot, "Processed"))) == [1, 2, 3, 4]  # no copies
        assert await messages(dovecot) == []
        assert store.checkpoints["INBOX"] == (new_uidvalidity, 2)

    run(scenario)


def test_uidvalidity_change_while_connected(dovecot: Dovecot) -> None:
    """The server is renumbered under a running listener: it reconnects, notices, rescans.
    A message the sink kept refusing before the change is offered again after it."""
    store = MemoryCheckpoints()
    refuse = {"on": True}

    def decide(raw: bytes, origin: MailOrigin) -> Disposition:
        if ids([raw])[0] == 1 and refuse["on"]:
            raise RuntimeError("store unavailable")
        return Disposition("processed", "queued 1 sms")

    sink = RecordingSink(decide)

    async def scenario() -> None:
        await append(dovecot, message(1))
        listener = ImapListener(imap_settings(dovecot), sink, store, **FAST)
        async with running(listener):
            await until(lambda: len(sink.calls) >= 2, 5, "two refused attempts")
            refuse["on"] = False
            new_uidvalidity = await asyncio.to_thread(dovecot.set_uidvalidity, "INBOX")
            await append(dovecot, message(2))
            await until(lambda: 2 in sink.ids, 10, "message 2")
            await until(lambda: store.checkpoints["INBOX"] == (new_uidvalidity, 2), 5)
        # (which of the two got UID 1 after the renumbering is the server's business)
        assert sorted(ids(await messages(dovecot, "Processed"))) == [1, 2]
        assert await messages(dovecot) == []
        assert sink.ids.count(2) == 1

    run(scenario)


# --------------------------------------------------------------------------------------------
# servers and settings


def test_copy_and_expunge_when_move_is_not_used(dovecot: Dovecot) -> None:
    def decide(raw: bytes, origin: MailOrigin) -> Disposition:
        return Disposition("failed" if ids([raw])[0] == 2 else "processed", "test")

    for n in (1, 2, 3):
        dovecot.append(message(n))
    sink = RecordingSink(decide)

    async def scenario() -> None:
        listener = ImapListener(
            imap_settings(dovecot), sink, MemoryCheckpoints(), use_move=False, **FAST
        )
        async with running(listener):
            await asyncio.wait_for(listener.caught_up.wait(), 5)
            await append(dovecot, message(4))
            await until(lambda: len(sink.calls) == 4, 5, "message 4")
            await until(lambda: len(dovecot.messages("Processed")) == 3, 5, "the last move")
        assert ids(await messages(dovecot, "Processed")) == [1, 3, 4]
        assert ids(await messages(dovecot, "Failed")) == [2]
        assert await messages(dovecot) == []  # expunged, not just flagged

    run(scenario)


def test_missing_processed_and_failed_mailboxes_are_created(dovecot: Dovecot) -> None:
    def decide(raw: bytes, origin: MailOrigin) -> Disposition:
        return Disposition("failed" if ids([raw])[0] == 2 else "processed", "test")

    for n in (1, 2):
        dovecot.append(message(n))
    sink = RecordingSink(decide)
    settings = imap_settings(dovecot, processed_mailbox="Traitées", failed_mailbox="Échecs/2026")

    async def scenario() -> None:
        listener = ImapListener(settings, sink, MemoryCheckpoints(), **FAST)
        async with running(listener):
            await asyncio.wait_for(listener.caught_up.wait(), 5)
        assert ids(await messages(dovecot, encode_mailbox("Traitées")[1:-1])) == [1]
        assert ids(await messages(dovecot, encode_mailbox("Échecs/2026")[1:-1])) == [2]

    run(scenario)


@pytest.mark.parametrize(("security", "port"), [("tls", "tls_port"), ("starttls", "port")])
def test_tls_and_starttls(dovecot: Dovecot, security: str, port: str) -> None:
    dovecot.append(message(1))
    sink = RecordingSink()
    settings = imap_settings(dovecot, security=security, port=getattr(dovecot, port))

    async def scenario() -> None:
        listener = ImapListener(
            settings, sink, MemoryCheckpoints(), ssl_context=dovecot.ssl_context(), **FAST
        )
        await listener.check()
        async with running(listener):
            await asyncio.wait_for(listener.caught_up.wait(), 5)
        assert sink.ids == [1]

        # The throwaway certificate is not trusted by default: refused, never ignored.
        untrusting = ImapListener(settings, sink, MemoryCheckpoints(), **FAST)
        with pytest.raises(ssl.SSLCertVerificationError):
            await untrusting.check()

    run(scenario)
    log = dovecot.log()
    assert "TLS" in log and "Login: user=<" in log


def test_check_reports_problems(dovecot: Dovecot) -> None:
    async def scenario() -> None:
        good = ImapListener(imap_settings(dovecot), RecordingSink(), MemoryCheckpoints())
        await good.check()
        wrong = ImapListener(
            imap_settings(dovecot, password="nope"), RecordingSink(), MemoryCheckpoints()
        )
        with pytest.raises(LoginFailed):
            await wrong.check()
        closed = ImapListener(
            imap_settings(dovecot, port=free_port()), RecordingSink(), MemoryCheckpoints()
        )
        with pytest.raises(OSError):
            await closed.check()

    run(scenario)


def test_wrong_password_backs_off_and_keeps_going_until_stopped(
    dovecot: Dovecot, caplog: pytest.LogCaptureFixture
) -> None:
    delays: list[float] = []

    async def scenario() -> None:
        released = asyncio.Event()

        async def fake_sleep(seconds: float) -> None:
            delays.append(seconds)
            if len(delays) == 1:
                await released.wait()  # hold the first pause while the server goes away
            await asyncio.sleep(0)

        listener = ImapListener(
            imap_settings(dovecot, password="wrong password"),
            RecordingSink(),
            MemoryCheckpoints(),
            min_backoff=1.0,
            max_backoff=8.0,
            sleep=fake_sleep,
        )
        async with running(listener):
            await until(lambda: len(delays) == 1, 5, "the first backoff")
            # Later attempts are refused at once (no server), so the pauses can be seen growing.
            await asyncio.to_thread(dovecot.stop, graceful=False)
            released.set()
            await until(lambda: len(delays) >= 6, 5, "more backoffs")
        steps = [1, 2, 4, 8, 8, 8]
        for delay, step in zip(delays, steps, strict=False):
            assert step / 2 <= delay <= step

    run(scenario)
    assert "login refused" in caplog.text
    assert "wrong password" not in caplog.text


def test_stop_during_idle_returns_promptly(dovecot: Dovecot) -> None:
    async def scenario() -> None:
        listener = ImapListener(imap_settings(dovecot), RecordingSink(), MemoryCheckpoints())
        async with running(listener):  # asserts run() returns within 2 s
            await asyncio.wait_for(listener.caught_up.wait(), 5)
            await asyncio.sleep(0.2)

    run(scenario)
    assert "Logged out" in dovecot.log()  # it said goodbye (DONE, LOGOUT)
