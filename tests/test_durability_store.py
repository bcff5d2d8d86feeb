"""Durability: the store fails under the webhook (SQLite locked past the busy timeout, disk
full; PostgreSQL gone). The webhook answers 503, never 500 (so Twilio's fallback URL acts),
says so clearly in the log, keeps nothing half-done, and once the store is back the next
webhook is 200 and the dispatcher sends again.

SQLite cases run the web app (Flask test client, signed webhooks) and the dispatcher in this
process, so that the busy timeout can be short and the disk can be "full" (`PRAGMA
max_page_count` on the gateway's own connections); PostgreSQL runs `sms311 run` behind a
TCP proxy that is cut.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from psycopg import sql

from gateway.app import DirectoryHolder, Gateway
from gateway.run.sandbox import twilio_form
from gateway.run.worker import Dispatcher
from gateway.sms import make_provider
from gateway.store import SqlStore, open_store
from gateway.web import create_app
from tests.dovecot import Dovecot
from tests.gateway_fixtures import Resident, settings_in
from tests.loop import Loop, MailServer, agent_reply, first_email, wait_for
from tests.postgres import server_url
from tests.tcp_proxy import TcpProxy

PHONE = "+16135550166"
PG_URL = server_url()  # GATEWAY_TEST_POSTGRES_URL, or a throwaway cluster (tests/postgres.py)


class InProcessGateway:
    """The web app (test client) and the dispatcher (a thread with its own event loop) on
    one SQLite store, emailing to an aiosmtpd server."""

    def __init__(
        self,
        tmp_path: Path,
        *,
        busy_timeout: float = 5.0,
        prepare: Callable[[SqlStore], None] | None = None,
    ) -> None:
        """`prepare` is called with the store before anything uses it."""
        self.mail = MailServer().start()
        self.settings = settings_in(tmp_path, smtp_port=self.mail.port)
        store = open_store(self.settings.database)
        store.upgrade()
        store.close()
        self.store = open_store(self.settings.database, busy_timeout=busy_timeout)
        if prepare is not None:
            prepare(self.store)
        self.gateway = Gateway(
            settings=self.settings,
            store=self.store,
            directory=DirectoryHolder(self.settings.municipality_map),
            provider=make_provider(self.settings.sms, self.settings.state_dir),
        )
        self.resident = Resident(create_app(self.gateway).test_client(), self.settings)
        self.statuses: list[int] = []
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._dispatch, name="dispatcher", daemon=True)
        self._thread.start()
        assert self._started.wait(10)

    @property
    def database_path(self) -> str:
        return str(sa.make_url(self.settings.database).database)

    def _dispatch(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            self._started.set()
            await Dispatcher(self.gateway, poll_interval=0.05).run(self._stop)

        asyncio.run(main())

    def text(self, body: str) -> Any:
        """One signed inbound text through the web app; the response (status recorded)."""
        response = self.resident.post(twilio_form(self.settings, PHONE, body))
        self.statuses.append(response.status_code)
        return response

    def emailed(self, pattern: str) -> set[str]:
        return {m for body in self.mail.collector.bodies() for m in re.findall(pattern, body)}

    def __enter__(self) -> InProcessGateway:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
        assert not self._thread.is_alive(), "the dispatcher did not stop"
        self.gateway.close()
        self.mail.stop()


class PageLimit:
    """A full disk, for the gateway's SQLite database: `set(1)` caps the database at its
    current size on every connection the store has or opens (`PRAGMA max_page_count`, a
    per-connection setting), so a transaction that needs one more page fails with
    SQLITE_FULL, as on a full disk; `set(default)` lifts the cap."""

    def __init__(self) -> None:
        with contextlib.closing(sqlite3.connect(":memory:")) as probe:
            self.default = int(probe.execute("PRAGMA max_page_count").fetchone()[0])
        self.pages = self.default
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    def watch(self, store: SqlStore) -> None:
        sa.event.listen(store.engine, "connect", self._connected)

    def _connected(self, connection: sqlite3.Connection, _record: Any) -> None:
        with self._lock:
            self._connections.append(connection)
            connection.execute(f"PRAGMA max_page_count = {self.pages}")

    def set(self, pages: int) -> None:
        with self._lock:
            self.pages = pages
            for connection in self._connections:
                with contextlib.suppress(sqlite3.ProgrammingError):  # closed since
                    connection.execute(f"PRAGMA max_page_count = {pages}")


def resident_of_ottawa(gw: InProcessGateway) -> None:
    assert gw.text("Pothole on Bank St").status_code == 200
    assert gw.text("Kanata").status_code == 200
    wait_for(lambda: gw.emailed(r"Pothole on Bank St"), "the first email")


def test_sqlite_locked_beyond_the_busy_timeout_answers_503_then_recovers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    with InProcessGateway(tmp_path, busy_timeout=0.5) as gw:
        resident_of_ottawa(gw)
        locker = sqlite3.connect(gw.database_path, isolation_level=None, timeout=10)
        try:
            locker.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
            response = gw.text("Text during the lock")
            assert response.status_code == 503, response.data
            assert response.data == b"Service Unavailable\n"
            wait_for(lambda: "store unavailable: database unavailable: OperationalError: "
                     "database is locked" in caplog.text, "the dispatcher to notice the lock")
        finally:
            locker.rollback()
            locker.close()
        assert gw.text("Text after the lock").status_code == 200
        wait_for(lambda: gw.emailed(r"Text after the lock"), "the dispatcher to send again")
        assert gw.emailed(r"Text \w+ the lock") == {"Text after the lock"}  # nothing half-done
    assert gw.statuses == [200, 200, 503, 200]
    assert ("store unavailable, answering 503 to +1613***0166: database unavailable: "
            "OperationalError: database is locked") in caplog.text
    assert "Traceback" not in caplog.text


def test_sqlite_disk_full_answers_503_then_recovers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    limit = PageLimit()
    with InProcessGateway(tmp_path, prepare=limit.watch) as gw:
        resident_of_ottawa(gw)
        limit.set(1)  # no new page: the file may not grow (SQLITE_FULL)
        padding = " ".join(["The water is still running down the street."] * 60)
        full_at = None
        for n in range(100):
            if gw.text(f"Big text {n:02d} {padding}").status_code == 503:
                full_at = n
                break
        assert full_at is not None, "the database never filled up"
        accepted = {f"Big text {n:02d}" for n in range(full_at)}
        assert gw.text(f"Big text {full_at + 1:02d} {padding}").status_code in (200, 503)
        if gw.statuses[-1] == 200:
            accepted.add(f"Big text {full_at + 1:02d}")

        limit.set(limit.default)  # space again
        assert gw.text("Text after the disk was freed").status_code == 200
        wait_for(lambda: gw.emailed(r"Text after the disk was freed"),
                 "the dispatcher to send again")
        wait_for(lambda: gw.emailed(r"Big text \d\d") == accepted,
                 "every accepted text emailed (and no refused one)")
    assert set(gw.statuses) == {200, 503}
    assert ("store unavailable, answering 503 to +1613***0166: database unavailable: "
            "OperationalError: database or disk is full") in caplog.text
    assert "Traceback" not in caplog.text


# -- PostgreSQL --------------------------------------------------------------------------------


def _pg_admin() -> psycopg.Connection[Any]:
    args = sa.make_url(PG_URL).translate_connect_args(username="user", database="dbname")
    args["dbname"] = "postgres"
    return psycopg.connect(**args, autocommit=True, connect_timeout=5)


@pytest.fixture
def own_pg_database() -> Iterator[str]:
    """A throwaway database for this test alone (not conftest's shared `pg_database`),
    dropped after it."""
    name = f"sms311_durability_{secrets.token_hex(6)}"
    with _pg_admin() as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield name
    finally:
        with _pg_admin() as admin:
            admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def dovecot(tmp_path: Path) -> Iterator[Dovecot]:
    with Dovecot(tmp_path) as server:
        yield server


@pytest.mark.slow
def test_postgresql_gone_answers_503_then_recovers(
    tmp_path: Path, own_pg_database: str, dovecot: Dovecot
) -> None:
    url = sa.make_url(PG_URL)
    with TcpProxy(url.port or 5432, url.host or "127.0.0.1") as proxy:
        through = url.set(host="127.0.0.1", port=proxy.port, database=own_pg_database)
        loop = Loop(tmp_path, dovecot, database=through.render_as_string(hide_password=False))
        try:
            to_city = first_email(loop, PHONE, "Pothole on Bank St")
            proxy.cut()  # the database server is gone: connections reset, new ones refused
            assert loop.post_text(PHONE, "Text during the outage") == 503
            # An agent's reply meanwhile stays in the mailbox until the store is back.
            dovecot.append(agent_reply(to_city, "Reply during the outage."))
            wait_for(lambda: "the reply pipeline failed" in loop.output(),
                     "the listener to find the store down")
            wait_for(lambda: loop.output().count("/INBOX: ") >= 3,  # and again, reconnected
                     "the listener to try again while the store is down")
            status, health = loop.health()
            assert status == 503 and health["failing"] == ["store"]
            assert dovecot.messages("INBOX") != []
            wait_for(lambda: "dispatcher (email): store unavailable" in loop.output(),
                     "the dispatcher to notice")
            proxy.restore()
            assert loop.post_text(PHONE, "Text after the outage") == 200
            wait_for(lambda: any("Text after the outage" in b for b in loop.collector.bodies()),
                     "the dispatcher to send again")
            assert not any("during the outage" in b for b in loop.collector.bodies())
            wait_for(lambda: [m["Body"] for m in loop.api.messages]
                     == ["Reply during the outage."], "the reply texted after the outage", 30)
            assert loop.running
        finally:
            output = loop.stop()
    assert re.search(r"ERROR gateway\.web\.webhooks: store unavailable, answering 503 to "
                     r"\+1613\*\*\*0166: database unavailable: OperationalError: ", output), output
    assert "Traceback" not in output and "unexpected error" not in output
