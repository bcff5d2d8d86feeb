"""Group commit for SQLite: the write transactions of one process, committed together.

SQLite has one writer at a time. With a connection per thread, concurrent writers of one
process queue on SQLite's busy handler, which polls with sleeps of 1, 2, 5, 10 … 100 ms:
throughput collapses and latency reaches seconds under load. Every commit also appends
the pages it changed to the WAL, the same few pages again and again.

`GroupCommit.transaction()` instead runs the write transactions of this process one at a
time (a lock, no polling) on ONE connection, each inside its own SAVEPOINT of a shared
`BEGIN IMMEDIATE` transaction:

- a transaction whose block raises is rolled back to its savepoint (the others' work is
  kept) and the error goes to its caller at once;
- when a block finishes and other threads are already waiting to write (and the group
  has fewer than `max_group` members), it hands the open transaction to the next one and
  waits; otherwise it COMMITs the group and wakes every member;
- a member returns only once the COMMIT that holds its work has succeeded: callers
  still answer "done" only after THEIR data is committed. If that COMMIT fails, every
  member of the group gets `StoreUnavailable` (nothing of theirs was committed).

Between processes (`sms311 web` and `sms311 worker` of the systemd layout, the CLI,
several web processes), a group holds an exclusive `flock` on `<database>-writer.lock`
from its BEGIN IMMEDIATE to its COMMIT; a process whose group must wait tries again every
0.2-2 ms (up to `lock_timeout`, then `StoreUnavailable`), while its own writers keep
joining its next group. (SQLite's own busy handler polls with sleeps of 1, 2, 5 … 100 ms: two
processes writing at once had p99 latencies of 0.65-0.85 s; measured in issue 16.) The
busy timeout still covers writers that do not take the file lock (migrations).
Not re-entrant: a thread that opens a write transaction inside its own gets RuntimeError
(with one connection per thread, that deadlocked on the busy timeout).
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa

from gateway.store.base import StoreUnavailable

log = logging.getLogger(__name__)

DEFAULT_MAX_GROUP = 16
_SAVEPOINT = "sms311_member"


class _Group:
    """One open BEGIN IMMEDIATE … COMMIT and the transactions in it."""

    def __init__(self, transaction: sa.RootTransaction) -> None:
        self.transaction = transaction
        self.members = 0
        self.done = threading.Event()
        self.error: BaseException | None = None


class GroupCommit:
    """Write transactions on one shared connection, committed in groups (see module doc)."""

    def __init__(
        self,
        engine: sa.Engine,
        *,
        max_group: int = DEFAULT_MAX_GROUP,
        translate: Callable[[BaseException], BaseException] | None = None,
        lock_timeout: float = 5.0,
    ) -> None:
        if max_group < 1:
            raise ValueError("max_group must be at least 1")
        self._engine = engine
        database = engine.url.database
        self._lock_path = (
            Path(f"{database}-writer.lock")
            if database and database != ":memory:" and not engine.url.query.get("uri")
            else None
        )
        self._lock_fd: int | None = None
        self._lock_timeout = lock_timeout  # as SQLite's busy timeout: then StoreUnavailable
        self.max_group = max_group
        self._translate = translate or (lambda exc: StoreUnavailable(str(exc)))
        self._turn = threading.Lock()  # held by the thread whose block runs now
        self._counter = threading.Lock()
        self._waiting = 0  # threads waiting for their turn
        self._owner: int | None = None
        self._connection: sa.Connection | None = None
        self._group: _Group | None = None
        # what happened, for tests and the benchmark
        self.groups = 0
        self.transactions = 0

    @contextmanager
    def transaction(self) -> Iterator[sa.Connection]:
        """A write transaction; committed (with its group) when the block ends."""
        if self._owner == threading.get_ident():
            raise RuntimeError("a write transaction is already open in this thread")
        with self._counter:
            self._waiting += 1
        self._turn.acquire()
        with self._counter:
            self._waiting -= 1
        self._owner = threading.get_ident()
        handed_over = False
        try:
            group = self._join()
            self._savepoint(group)
            try:
                yield self._require_connection()
            except BaseException:
                self._rollback_to(group)
                if not group.done.is_set():
                    handed_over = self._finish(group, wait=False)
                raise
            try:
                self._driver().execute(f"RELEASE {_SAVEPOINT}")
            except sqlite3.Error as exc:
                self._abort(group, exc)
            handed_over = self._finish(group, wait=True)
            if group.error is not None:
                raise group.error
        finally:
            if not handed_over:
                self._owner = None
                self._turn.release()

    # -- steps (called with the turn held) -----------------------------------------------

    def _require_connection(self) -> sa.Connection:
        if self._connection is None:
            self._connection = self._engine.connect()
        return self._connection

    def _join(self) -> _Group:
        """The open group, or a new one (the file lock, then BEGIN IMMEDIATE)."""
        if self._group is None:
            connection = self._require_connection()
            self._lock_file()
            try:
                self._group = _Group(connection.begin())
            except sa.exc.SQLAlchemyError:
                self._unlock_file()
                self._discard_connection()
                raise
            self.groups += 1
        self._group.members += 1
        self.transactions += 1
        return self._group

    def _driver(self) -> sqlite3.Connection:
        """The sqlite3 connection under the shared one: savepoints are issued on it
        directly (SQLAlchemy's begin_nested() costs as much as two statements)."""
        raw = self._require_connection().connection.driver_connection
        assert isinstance(raw, sqlite3.Connection)
        return raw

    def _savepoint(self, group: _Group) -> None:
        try:
            self._driver().execute(f"SAVEPOINT {_SAVEPOINT}")
        except sqlite3.Error as exc:
            self._abort(group, exc)
            raise group.error or exc from exc

    def _rollback_to(self, group: _Group) -> None:
        """Undo this member's work; if SQLite already rolled back everything (some I/O
        errors do), the whole group fails."""
        if group.done.is_set():
            return
        try:
            raw = self._driver()
            if not raw.in_transaction:
                raise sqlite3.OperationalError("SQLite ended the transaction")
            raw.execute(f"ROLLBACK TO {_SAVEPOINT}")
            raw.execute(f"RELEASE {_SAVEPOINT}")
        except sqlite3.Error as exc:
            self._abort(group, exc)

    def _finish(self, group: _Group, *, wait: bool) -> bool:
        """Hand the open group to a waiting thread, or commit it. Returns True when handed
        over (the turn now belongs to the next thread)."""
        if group.done.is_set():  # aborted
            return False
        with self._counter:
            waiting = self._waiting
        if waiting and group.members < self.max_group:
            self._owner = None
            self._turn.release()
            if wait:
                group.done.wait()
            return True
        self._commit(group)
        return False

    def _commit(self, group: _Group) -> None:
        self._group = None
        try:
            group.transaction.commit()
        except sa.exc.SQLAlchemyError as exc:
            log.error("group commit of %d transactions failed: %s", group.members,
                      type(exc).__name__)
            group.error = self._translate(exc)
            self._discard_connection()
        finally:
            self._unlock_file()
        group.done.set()

    def _abort(self, group: _Group, exc: BaseException) -> None:
        """Roll the whole group back: every member gets the error."""
        if self._group is group:
            self._group = None
        log.error("write transaction group of %d aborted: %s", group.members, type(exc).__name__)
        group.error = self._translate(exc)
        try:
            if group.transaction.is_active:
                group.transaction.rollback()
        except sa.exc.SQLAlchemyError:
            pass
        self._discard_connection()
        self._unlock_file()
        group.done.set()

    def _lock_file(self) -> None:
        """Take the writers' file lock (blocks until no other process holds it). A lock
        file that cannot be opened (a read-only folder) leaves SQLite's own lock alone."""
        if self._lock_path is None:
            return
        if self._lock_fd is None:
            try:
                self._lock_fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
            except OSError as exc:
                log.warning("no writers' lock file %s (%s): SQLite's busy timeout alone "
                            "orders the writers of several processes", self._lock_path, exc)
                self._lock_path = None
                return
        deadline = time.monotonic() + self._lock_timeout
        pause = 0.0002
        while True:
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise self._translate(
                        sqlite3.OperationalError("database is locked (writers' lock file)")
                    ) from None
                time.sleep(pause)  # short and steady: the lock is held for a commit or so
                pause = min(pause * 2, 0.002)

    def _unlock_file(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _discard_connection(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                connection.invalidate()
                connection.close()
            except sa.exc.SQLAlchemyError:
                pass

    def close(self) -> None:
        """Close the shared connection (no transaction may be running)."""
        with self._turn:
            connection, self._connection = self._connection, None
            if connection is not None:
                connection.close()
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None
