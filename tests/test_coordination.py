"""Coordination of several instances on PostgreSQL (gateway/store/coordination.py):
the mailbox lease (one IMAP listener per mailbox) and LISTEN/NOTIFY on the outbox.

Against a real PostgreSQL: GATEWAY_TEST_POSTGRES_URL (default
postgresql://postgres@127.0.0.1:5432/test), in a throwaway database dropped after.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.app import Gateway
from gateway.run.worker import Dispatcher, run_worker
from gateway.store.coordination import (
    MailboxLease,
    OutboxListener,
    lease_key,
    postgres_conninfo,
    while_leased,
)
from gateway.store.pacing import SegmentPacer
from gateway.store.sql import SqlStore, open_store
from tests.fake_twilio import FakeTwilio
from tests.gateway_fixtures import free_port, settings_in
from tests.postgres import connect, database_url

_admin = connect  # an autocommit connection to a database of the test server


@pytest.fixture
def conninfo(pg_database: str) -> str:
    return database_url(pg_database)


@pytest.fixture
def pg_store(pg_store_url: str) -> Iterator[SqlStore]:
    store = open_store(pg_store_url)
    try:
        yield store
    finally:
        store.close()


def _terminate(pg_database: str, where: str) -> int:
    """pg_terminate_backend on the backends of `pg_database` matching `where` (SQL)."""
    with _admin(pg_database) as admin:
        rows = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE datname = %s AND pid <> pg_backend_pid() AND {where}",
            (pg_database,),
        ).fetchall()
    return len(rows)


# --- the mailbox lease -----------------------------------------------------------------------


def test_lease_key_is_stable_and_distinct() -> None:
    key = lease_key("imap.example.org", "replies", "INBOX")
    assert key == lease_key("IMAP.example.org", "replies", "INBOX")
    assert 0 <= key < 2**63
    assert key != lease_key("imap.example.org", "replies", "Other")
    assert key != lease_key("imap.example.org", "other", "INBOX")
    assert key != lease_key("imap.example.org", "repliesINBOX", "")


def test_sqlite_lease_is_always_granted() -> None:
    async def main() -> None:
        a = MailboxLease(None, "h", "u", "INBOX")
        b = MailboxLease(None, "h", "u", "INBOX")
        assert await a.acquire(asyncio.Event())
        assert await b.try_acquire()
        assert await a.held()
        await a.release()
        assert not await a.held()

    asyncio.run(main())


def test_sqlite_store_has_no_conninfo(tmp_path: Any) -> None:
    store = open_store(f"sqlite:///{tmp_path}/gateway.db")
    try:
        assert postgres_conninfo(store) is None
    finally:
        store.close()


def test_one_lease_per_mailbox(conninfo: str) -> None:
    async def main() -> None:
        a = MailboxLease(conninfo, "imap.example.org", "replies", "INBOX")
        b = MailboxLease(conninfo, "imap.example.org", "replies", "INBOX")
        other = MailboxLease(conninfo, "imap.example.org", "replies", "Other")
        try:
            assert await a.try_acquire()
            assert await a.try_acquire()  # again: still ours
            assert not await b.try_acquire()
            assert await other.try_acquire()  # another mailbox does not conflict
            assert await a.held() and await other.held() and not await b.held()
            await a.release()
            assert not await a.held()
            assert await b.try_acquire()
            assert not await a.try_acquire()
        finally:
            for lease in (a, b, other):
                await lease.release()

    asyncio.run(main())


def test_killed_holder_is_taken_over_within_seconds(conninfo: str, pg_database: str) -> None:
    async def main() -> None:
        a = MailboxLease(conninfo, "imap.example.org", "replies", "INBOX")
        b = MailboxLease(conninfo, "imap.example.org", "replies", "INBOX", retry_seconds=0.2)
        stop = asyncio.Event()
        try:
            assert await a.try_acquire()
            waiting = asyncio.create_task(b.acquire(stop))
            await asyncio.sleep(0.5)
            assert not waiting.done()
            # the holder's connection dies (its instance was killed, or cut off)
            killed = await asyncio.to_thread(
                _terminate, pg_database, "query LIKE '%%pg_try_advisory_lock%%' AND "
                "pid IN (SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted)",
            )
            assert killed == 1
            started = time.monotonic()
            assert await asyncio.wait_for(waiting, 3.0)
            assert time.monotonic() - started < 3.0
            assert await b.held()
            assert not await a.held()  # the old holder notices
        finally:
            stop.set()
            await a.release()
            await b.release()

    asyncio.run(main())


def test_acquire_gives_up_when_stopped(conninfo: str) -> None:
    async def main() -> None:
        a = MailboxLease(conninfo, "h", "u", "INBOX")
        b = MailboxLease(conninfo, "h", "u", "INBOX", retry_seconds=5.0)
        stop = asyncio.Event()
        try:
            assert await a.try_acquire()
            waiting = asyncio.create_task(b.acquire(stop))
            await asyncio.sleep(0.2)
            stop.set()
            assert not await asyncio.wait_for(waiting, 1.0)
        finally:
            await a.release()
            await b.release()

    asyncio.run(main())


def test_while_leased_runs_one_listener_and_fails_over(conninfo: str, pg_database: str) -> None:
    """Two instances: only one listener runs; when its lease is lost (connection killed),
    that listener is stopped and the other instance's starts within seconds."""

    async def main() -> None:
        running: dict[str, int] = {"a": 0, "b": 0}
        started: dict[str, int] = {"a": 0, "b": 0}

        def listener(name: str) -> Any:
            async def run(inner: asyncio.Event) -> None:
                started[name] += 1
                running[name] += 1
                try:
                    await inner.wait()
                finally:
                    running[name] -= 1

            return run

        stop_a, stop_b = asyncio.Event(), asyncio.Event()
        lease_a = MailboxLease(conninfo, "imap.example.org", "r", "INBOX", retry_seconds=0.2)
        lease_b = MailboxLease(conninfo, "imap.example.org", "r", "INBOX", retry_seconds=0.2)
        a = asyncio.create_task(while_leased(lease_a, listener("a"), stop_a, check_every=0.2))
        await asyncio.sleep(0.5)
        b = asyncio.create_task(while_leased(lease_b, listener("b"), stop_b, check_every=0.2))
        try:
            await asyncio.sleep(0.6)
            assert running == {"a": 1, "b": 0}
            # A's lease connection dies; B's lease was retrying, not holding the lock
            await asyncio.to_thread(
                _terminate, pg_database,
                "pid IN (SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted)",
            )
            deadline = time.monotonic() + 3.0
            while running["b"] == 0 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)  # and A does not come back while B holds it
            assert running == {"a": 0, "b": 1}
            assert started["b"] == 1
            stop_b.set()
            await asyncio.wait_for(b, 3.0)
            assert running["b"] == 0
            deadline = time.monotonic() + 3.0  # A takes it back
            while running["a"] == 0 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert running == {"a": 1, "b": 0}
            stop_a.set()
            await asyncio.wait_for(a, 3.0)
            assert running == {"a": 0, "b": 0}
        finally:
            stop_a.set()
            stop_b.set()
            await asyncio.gather(a, b, return_exceptions=True)

    asyncio.run(main())


# --- LISTEN/NOTIFY ---------------------------------------------------------------------------


class _Wakes:
    def __init__(self) -> None:
        self.kinds: list[str] = []
        self.event = asyncio.Event()

    def __call__(self, kind: str) -> None:
        if kind:  # "" is the look-now on (re)connect
            self.kinds.append(kind)
            self.event.set()

    async def wait(self, timeout: float) -> None:
        await asyncio.wait_for(self.event.wait(), timeout)
        self.event.clear()


def test_enqueue_wakes_a_listener_on_another_connection(pg_store: SqlStore) -> None:
    conninfo = postgres_conninfo(pg_store)
    assert conninfo is not None

    async def main() -> None:
        wakes = _Wakes()
        listener = OutboxListener(conninfo, wakes, check_every=0.2)
        stop = asyncio.Event()
        task = asyncio.create_task(listener.run(stop))
        try:
            await asyncio.wait_for(listener.listening.wait(), 5.0)

            def enqueue() -> None:
                with pg_store.transaction() as tx:
                    tx.enqueue("sms", {"to": "+16135550142", "body": "hi"})

            started = time.monotonic()
            await asyncio.to_thread(enqueue)
            await wakes.wait(1.0)
            assert time.monotonic() - started < 1.0
            assert wakes.kinds == ["sms"]
        finally:
            stop.set()
            await asyncio.wait_for(task, 3.0)

    asyncio.run(main())


def test_no_wake_before_commit_nor_for_a_rollback(pg_store: SqlStore) -> None:
    conninfo = postgres_conninfo(pg_store)
    assert conninfo is not None

    async def main() -> None:
        wakes = _Wakes()
        listener = OutboxListener(conninfo, wakes, check_every=0.2)
        stop = asyncio.Event()
        task = asyncio.create_task(listener.run(stop))
        try:
            await asyncio.wait_for(listener.listening.wait(), 5.0)

            def rolled_back() -> None:
                with pytest.raises(RuntimeError), pg_store.transaction() as tx:
                    tx.enqueue("email", {"x": 1})
                    raise RuntimeError("rolled back")

            await asyncio.to_thread(rolled_back)
            enqueued, commit = threading.Event(), threading.Event()

            def held_open() -> None:
                with pg_store.transaction() as tx:
                    tx.enqueue("email", {"x": 2})
                    enqueued.set()
                    assert commit.wait(5.0)

            thread = asyncio.create_task(asyncio.to_thread(held_open))
            assert await asyncio.to_thread(enqueued.wait, 5.0)
            await asyncio.sleep(0.4)
            assert wakes.kinds == []  # neither the rolled back one nor the uncommitted one
            commit.set()
            await thread
            await wakes.wait(1.0)
            assert wakes.kinds == ["email"]
        finally:
            commit.set()
            stop.set()
            await asyncio.wait_for(task, 3.0)

    asyncio.run(main())


def test_listener_reconnects_after_its_connection_dies(
    pg_store: SqlStore, pg_database: str
) -> None:
    conninfo = postgres_conninfo(pg_store)
    assert conninfo is not None

    async def main() -> None:
        wakes = _Wakes()
        listener = OutboxListener(conninfo, wakes, min_backoff=0.1, check_every=0.2)
        stop = asyncio.Event()
        task = asyncio.create_task(listener.run(stop))
        try:
            await asyncio.wait_for(listener.listening.wait(), 5.0)
            killed = await asyncio.to_thread(
                _terminate, pg_database, "query LIKE 'LISTEN sms311_outbox%%'"
            )
            assert killed == 1
            deadline = time.monotonic() + 3.0
            while listener.listening.is_set() and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            await asyncio.wait_for(listener.listening.wait(), 3.0)

            def enqueue() -> None:
                with pg_store.transaction() as tx:
                    tx.enqueue("sms", {"to": "+16135550142", "body": "again"})

            await asyncio.to_thread(enqueue)
            await wakes.wait(1.0)
            assert wakes.kinds == ["sms"]
        finally:
            stop.set()
            await asyncio.wait_for(task, 3.0)

    asyncio.run(main())


def test_run_worker_on_postgres_sends_at_once_what_another_instance_enqueues(
    tmp_path: Path, pg_store_url: str
) -> None:
    """run_worker listens for the outbox: a row committed by another instance (another
    engine) is sent at once, though the dispatcher would only poll every 30 s."""
    with FakeTwilio() as api:
        sms = (
            "sms:\n  provider: twilio\n"
            f"  account_sid: {api.account_sid}\n  auth_token: {api.auth_token}\n"
            f'  sender: "+16135550000"\n  api_base_url: {api.base_url}\n'
        )
        settings = settings_in(tmp_path, smtp_port=free_port(), sms=sms,
                               database=f'"{pg_store_url}"')
        gateway = Gateway.from_settings(settings)
        other = open_store(pg_store_url)
        try:

            async def main() -> None:
                stop = asyncio.Event()
                dispatcher = Dispatcher(gateway, poll_interval=30.0, pacer=SegmentPacer(100.0))
                task = asyncio.create_task(run_worker(gateway, stop, dispatcher))
                try:
                    await asyncio.sleep(1.0)  # started, polled once, listening

                    def enqueue() -> None:
                        with other.transaction() as tx:
                            tx.enqueue("sms", {"to": "+16135550142", "body": "At once"})

                    await asyncio.to_thread(enqueue)
                    deadline = time.monotonic() + 2.0
                    while not api.messages and time.monotonic() < deadline:
                        await asyncio.sleep(0.02)
                    assert [m["Body"] for m in api.messages] == ["At once"]
                finally:
                    stop.set()
                    await asyncio.wait_for(task, 5.0)

            asyncio.run(main())
        finally:
            other.close()
            gateway.close()
