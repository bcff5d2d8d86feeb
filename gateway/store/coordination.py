"""Coordination of several gateway instances on one PostgreSQL database.

Two pieces, each on its own dedicated connection (psycopg 3, async, autocommit, with the
store's connect arguments and TCP keepalives, `engine.POSTGRES_CONNECT_ARGS`), outside the
store's pool, to the database `postgres_conninfo(store)` names (None on SQLite):

- `MailboxLease`: one IMAP listener per mailbox at a time. A session-level advisory lock
  (`pg_try_advisory_lock`) keyed on "imap:" + host + user + mailbox, held for as long as
  this instance listens. The server releases it when the connection drops (the instance
  died, or was cut off), so another instance, retrying every few seconds, takes over
  within seconds. On SQLite (one machine) the lease is always granted.
- `OutboxListener`: `LISTEN sms311_outbox`; `SqlTx.enqueue` issues
  `pg_notify('sms311_outbox', kind)` in its transaction (delivered at commit, never for a
  rolled-back one), so any instance's dispatcher looks at the outbox at once rather than
  at its next poll. Reconnects with backoff; the poll stays as the fallback. On SQLite:
  nothing to do (the in-process wake-up covers it).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from gateway.store.base import Store
from gateway.store.engine import POSTGRES_CONNECT_ARGS
from gateway.store.sql import SqlStore
from gateway.waiting import sleep_or

if TYPE_CHECKING:  # psycopg is imported at the first connection: a SQLite worker never
    import psycopg  # loads it (10 MB; README, Performance: Memory)

log = logging.getLogger(__name__)

OUTBOX_CHANNEL = "sms311_outbox"


def postgres_conninfo(store: Store) -> str | None:
    """A libpq URL for `store`'s database, or None when it is not PostgreSQL (SQLite: one
    machine, nothing to coordinate)."""
    if not isinstance(store, SqlStore) or not store.postgresql:
        return None
    url = store.engine.url.set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


def lease_key(host: str, user: str, mailbox: str) -> int:
    """A stable, non-negative 63-bit advisory lock key for one mailbox."""
    name = "\0".join(("imap:", host.lower(), user, mailbox))
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


def _driver_error() -> type[Exception]:
    """psycopg's base error (an `except` clause naming it runs only after a connection
    was tried, so psycopg is imported by then)."""
    import psycopg

    return psycopg.Error


async def _connect(conninfo: str) -> psycopg.AsyncConnection[Any]:
    import psycopg

    return await psycopg.AsyncConnection.connect(
        conninfo, autocommit=True, **POSTGRES_CONNECT_ARGS
    )


async def _close_quietly(conn: psycopg.AsyncConnection[Any] | None) -> None:
    if conn is None:
        return
    try:
        await asyncio.wait_for(conn.close(), 5.0)
    except (_driver_error(), OSError, TimeoutError) as exc:
        log.debug("closing a coordination connection: %s", exc)


class MailboxLease:
    """The right to listen to one mailbox (see the module docstring).

    `conninfo` None (SQLite): always granted. Otherwise `acquire` retries every
    `retry_seconds` until it holds the lock; `held` tells whether it still does (the
    connection answers within `check_timeout`); `release` gives it up.
    """

    def __init__(
        self,
        conninfo: str | None,
        host: str,
        user: str,
        mailbox: str,
        *,
        retry_seconds: float = 3.0,
        check_timeout: float = 5.0,
    ) -> None:
        self._conninfo = conninfo
        self.key = lease_key(host, user, mailbox)
        self.name = f"{user}@{host}/{mailbox}"
        self.retry_seconds = retry_seconds
        self.check_timeout = check_timeout
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._granted = False

    async def try_acquire(self) -> bool:
        """One attempt: True when this lease now holds the lock."""
        if self._conninfo is None:
            self._granted = True
            return True
        if self._conn is not None and await self.held():
            return True
        await self._drop()
        conn = await _connect(self._conninfo)
        try:
            cursor = await conn.execute("SELECT pg_try_advisory_lock(%s)", (self.key,))
            row = await cursor.fetchone()
        except BaseException:
            await _close_quietly(conn)
            raise
        if row is None or not row[0]:
            await _close_quietly(conn)
            return False
        self._conn = conn
        return True

    async def acquire(self, stop: asyncio.Event) -> bool:
        """Retry until the lock is held (True) or `stop` is set (False)."""
        waiting_logged = False
        while not stop.is_set():
            try:
                if await self.try_acquire():
                    log.info("mailbox lease %s acquired", self.name)
                    return True
                if not waiting_logged:
                    log.info("mailbox %s is listened to by another instance; waiting", self.name)
                    waiting_logged = True
            except (_driver_error(), OSError) as exc:
                log.warning("mailbox lease %s: database unavailable: %s", self.name, exc)
            await sleep_or(stop, self.retry_seconds)
        return False

    async def held(self) -> bool:
        """True while the lock is held: its connection is alive and answers."""
        if self._conninfo is None:
            return self._granted
        conn = self._conn
        if conn is None or conn.closed:
            return False
        try:
            async with asyncio.timeout(self.check_timeout):
                await conn.execute("SELECT 1")
        except (_driver_error(), OSError, TimeoutError) as exc:
            log.warning("mailbox lease %s lost: %s", self.name, exc)
            await self._drop()
            return False
        return True

    async def release(self) -> None:
        """Give the lock up (closing its connection releases it on the server)."""
        self._granted = False
        if self._conn is not None:
            log.info("mailbox lease %s released", self.name)
        await self._drop()

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        await _close_quietly(conn)


async def while_leased(
    lease: MailboxLease,
    run: Callable[[asyncio.Event], Awaitable[None]],
    stop: asyncio.Event,
    *,
    check_every: float = 2.0,
    stop_timeout: float = 10.0,
) -> None:
    """Until `stop`: acquire `lease`, then `run(inner_stop)` for as long as the lease is
    held (checked every `check_every` seconds); when it is lost, stop that run (setting
    `inner_stop`, cancelling it after `stop_timeout`) and go back to acquiring."""
    while not stop.is_set():
        if not await lease.acquire(stop):
            return
        inner = asyncio.Event()
        task = asyncio.ensure_future(run(inner))
        stopping = asyncio.ensure_future(stop.wait())
        lost = False
        try:
            while not task.done() and not stop.is_set():
                await asyncio.wait({task, stopping}, timeout=check_every,
                                   return_when=asyncio.FIRST_COMPLETED)
                if task.done() or stop.is_set():
                    break
                if not await lease.held():
                    log.warning("mailbox lease %s lost: listener stopped until it is "
                                "acquired again", lease.name)
                    lost = True
                    break
        finally:
            stopping.cancel()
            inner.set()
            try:
                done, _ = await asyncio.wait({task}, timeout=stop_timeout)
                if not done:
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
            finally:
                if not task.done():
                    task.cancel()
                await lease.release()
        error = None if task.cancelled() else task.exception()
        if error is not None:
            raise error
        if not lost and not stop.is_set():
            # the listener returned by itself (it should not): pause before trying again
            await sleep_or(stop, lease.retry_seconds)


class OutboxListener:
    """Calls `on_notify(kind)` for each outbox row committed by any instance (PostgreSQL).

    `listening` is set while the LISTEN is in place (tests wait for it)."""

    def __init__(
        self,
        conninfo: str,
        on_notify: Callable[[str], None],
        *,
        min_backoff: float = 1.0,
        max_backoff: float = 30.0,
        check_every: float = 1.0,
    ) -> None:
        self._conninfo = conninfo
        self._on_notify = on_notify
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.check_every = check_every
        self.listening = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        """Listen until `stop` is set; reconnects on any trouble, never raises for it."""
        delay = self.min_backoff
        while not stop.is_set():
            conn: psycopg.AsyncConnection[Any] | None = None
            try:
                conn = await _connect(self._conninfo)
                await conn.execute(f"LISTEN {OUTBOX_CHANNEL}")
                self.listening.set()
                delay = self.min_backoff
                # a row committed while we were not listening: look now
                self._on_notify("")
                while not stop.is_set():
                    async for notify in conn.notifies(timeout=self.check_every):
                        self._on_notify(notify.payload)
                        if stop.is_set():
                            break
            except (_driver_error(), OSError) as exc:
                log.warning("outbox listener: %s; reconnecting in %.0fs", exc, delay)
            finally:
                self.listening.clear()
                await _close_quietly(conn)
            if not stop.is_set():
                await sleep_or(stop, delay)
                delay = min(self.max_backoff, delay * 2)
