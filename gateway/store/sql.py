"""`SqlStore`: the `Store` on SQLAlchemy Core, for SQLite (default) and PostgreSQL.

    store = open_store("sqlite:///var/lib/sms311/gateway.db")   # or "postgresql://…"
    store.check_schema()                                        # or store.upgrade()
    with store.transaction() as tx:                             # a `SqlTx`
        ...

Contract
    `SqlStore` implements `gateway.store.base.Store` (mypy checks it below) on one engine
    (`gateway.store.engine`: URLs, pragmas, keepalives, error translation). Here: its
    connections, the schema's revision (Alembic, migrations in `migrations/`, applied in
    code: `alembic_config`, `head_revision`, `known_revisions`), transactions (`SqlTx`,
    `gateway.store.transaction`), IMAP checkpoints and `close`; the outbox methods are
    mixed in from `gateway.store.outbox`. `as_sql_store(store)` is how the store's own
    modules (console, privacy, pacing, coordination) reach this implementation behind a
    `Store`: code outside `gateway/store/` never names `SqlStore`.

Connections
    `transaction()` is a write transaction: on SQLite this process's writes share one
    connection and commit in groups (`gateway.store.group`), each under `BEGIN IMMEDIATE`;
    on PostgreSQL a pooled connection. `reading()` is a read-only transaction (SQLite:
    deferred `BEGIN`, which never waits for the write lock). Outbox and checkpoint methods
    each run in their own short transaction. `upgrade()` takes a transaction-level advisory
    lock on PostgreSQL, so instances starting together migrate one at a time.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa

from gateway.store.base import SchemaOutOfDate, Store
from gateway.store.engine import (
    BEGIN_OPTION,
    DEFAULT_BUSY_TIMEOUT,
    create_store_engine,
    translated,
    unavailable,
)
from gateway.store.group import GroupCommit
from gateway.store.outbox import SqlOutbox
from gateway.store.rows import bigint, insert_or, utcnow
from gateway.store.schema import imap_checkpoints, inbound_texts
from gateway.store.transaction import SqlTx

if TYPE_CHECKING:
    from alembic.config import Config

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
_MIGRATION_LOCK = 0x736D73333131  # pg_advisory_xact_lock key: "sms311" in ASCII


# --- alembic --------------------------------------------------------------------------------


def alembic_config(connection: sa.Connection | None = None) -> Config:
    """An Alembic `Config` built in code (no alembic.ini), for the store's migrations.

    With `connection`, env.py migrates through it (inside its transaction). Alembic is
    imported only here and in `upgrade`: a running gateway that finds its schema current
    never loads it (about 10 MB of each process's memory).
    """
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("path_separator", "os")
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


_REVISION_LINE = re.compile(r'^(down_revision|revision): [^=]*= "?([0-9A-Za-z_]+)"?', re.M)


@functools.cache
def _revisions() -> dict[str, str | None]:
    """revision -> down_revision, read from the migration files' own lines (as Alembic
    reads them; a test compares the two)."""
    found: dict[str, str | None] = {}
    for path in sorted((MIGRATIONS_DIR / "versions").glob("*.py")):
        fields = dict(_REVISION_LINE.findall(path.read_text(encoding="utf-8")))
        if "revision" in fields:
            down = fields.get("down_revision")
            found[fields["revision"]] = None if down in (None, "None") else down
    return found


def head_revision() -> str:
    """The newest migration revision of this version of the code."""
    revisions = _revisions()
    heads = set(revisions) - {down for down in revisions.values() if down}
    if len(heads) != 1:  # pragma: no cover - the history is one line
        raise RuntimeError(f"expected one head in {MIGRATIONS_DIR}, found {sorted(heads)}")
    return heads.pop()


def known_revisions() -> frozenset[str]:
    """Every revision of this version's migrations."""
    return frozenset(_revisions())


# --- the store ------------------------------------------------------------------------------


class SqlStore(SqlOutbox):
    """`Store` on a SQLAlchemy engine (see the module docstring). Thread-safe."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self.postgresql = engine.dialect.name == "postgresql"
        self._read_engine = engine.execution_options(**{BEGIN_OPTION: "DEFERRED"})
        # SQLite: this process's writes on one connection, committed in groups (group.py).
        self._group = (
            GroupCommit(engine, translate=unavailable) if engine.dialect.name == "sqlite" else None
        )

    def __repr__(self) -> str:
        return f"SqlStore({self.engine.url.render_as_string(hide_password=True)!r})"

    # connections

    @contextmanager
    def _write(self) -> Iterator[sa.Connection]:
        if self._group is not None:
            with translated(), self._group.transaction() as conn:
                yield conn
            return
        with translated(), self.engine.begin() as conn:
            yield conn

    @contextmanager
    def _read(self) -> Iterator[sa.Connection]:
        with translated(), self._read_engine.begin() as conn:
            yield conn

    # schema

    def upgrade(self) -> None:
        from alembic import command
        from alembic.runtime.migration import MigrationContext

        with translated(), self.engine.connect() as conn:
            sqlite = conn.dialect.name == "sqlite"
            raw = conn.connection.driver_connection
            if sqlite and raw is not None:
                # Table rebuilds (batch migrations) must not fire ON DELETE actions;
                # the pragma only takes effect outside a transaction.
                raw.execute("PRAGMA foreign_keys = OFF")
            try:
                with conn.begin():
                    if self.postgresql:
                        conn.execute(
                            sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK}
                        )
                    before = MigrationContext.configure(conn).get_current_revision()
                    command.upgrade(alembic_config(conn), "head")
                    after = MigrationContext.configure(conn).get_current_revision()
                    if sqlite:
                        problems = conn.exec_driver_sql("PRAGMA foreign_key_check").all()
                        if problems:
                            raise RuntimeError(f"migration broke foreign keys: {problems[:5]}")
            finally:
                if sqlite and raw is not None:
                    raw.execute("PRAGMA foreign_keys = ON")
        if before != after:
            log.info("database schema upgraded from %s to %s", before or "nothing", after)

    def current_revision(self) -> str | None:
        """Alembic's `alembic_version` row, read without loading Alembic."""
        with self._read() as conn:
            if not sa.inspect(conn).has_table("alembic_version"):
                return None
            versions = conn.exec_driver_sql("SELECT version_num FROM alembic_version").all()
        if len(versions) > 1:  # pragma: no cover - the history is one line
            raise SchemaOutOfDate(None, head_revision(), "several schema heads recorded")
        return str(versions[0][0]) if versions else None

    def check_schema(self) -> None:
        current = self.current_revision()
        head = head_revision()
        if current == head:
            return
        if current is not None and current not in known_revisions():
            raise SchemaOutOfDate(
                current,
                head,
                f"database schema is at {current}, which this version does not know "
                f"(written by a newer sms311?); this version needs {head}",
            )
        raise SchemaOutOfDate(current, head)

    def durability_warnings(self) -> list[str]:
        """What would make an acknowledged text vanish in a power cut, in words (empty:
        nothing). SQLite: every COMMIT is synced (synchronous=FULL, set by the engine).
        PostgreSQL: the server's `fsync` and `synchronous_commit` must be on."""
        if not self.postgresql:
            return []
        warnings = []
        with self._read() as conn:
            for name in ("fsync", "synchronous_commit"):
                value = str(conn.exec_driver_sql(f"SHOW {name}").scalar_one())
                if value.lower() in ("off", "false", "0"):
                    warnings.append(
                        f"PostgreSQL {name} is {value}: a text answered 200 can be lost in a "
                        f"power cut or a server crash (set {name} = on)"
                    )
        return warnings

    def ping(self) -> None:
        with self._read() as conn:
            conn.exec_driver_sql("SELECT 1").scalar_one()

    # transactions

    @contextmanager
    def transaction(self) -> Iterator[SqlTx]:
        with self._write() as conn:
            tx = SqlTx(conn)
            try:
                yield tx
            finally:
                tx.end()

    @contextmanager
    def reading(self) -> Iterator[SqlTx]:
        """A read-only transaction (SQLite: deferred, does not wait for the write lock); a
        write in it may fail on SQLite. Commits (nothing) when the block ends."""
        with self._read() as conn:
            tx = SqlTx(conn)
            try:
                yield tx
            finally:
                tx.end()

    # the inbound queue

    def queued_phones(self, limit: int) -> list[str]:
        first = sa.func.min(inbound_texts.c.id)
        stmt = (
            sa.select(inbound_texts.c.phone)
            .group_by(inbound_texts.c.phone)
            .order_by(first)
            .limit(limit)
        )
        with self._read() as conn:
            return [str(phone) for phone in conn.execute(stmt).scalars()]

    def newest_queued_at(self) -> datetime | None:
        stmt = (
            sa.select(inbound_texts.c.received_at).order_by(inbound_texts.c.id.desc()).limit(1)
        )
        with self._read() as conn:
            value = conn.execute(stmt).scalar()
        return value if isinstance(value, datetime) else None

    # IMAP checkpoints

    def imap_checkpoint(self, mailbox: str) -> tuple[int, int] | None:
        stmt = sa.select(imap_checkpoints.c.uidvalidity, imap_checkpoints.c.last_uid).where(
            imap_checkpoints.c.mailbox == mailbox
        )
        with self._read() as conn:
            row = conn.execute(stmt).mappings().first()
        return None if row is None else (int(row["uidvalidity"]), int(row["last_uid"]))

    def save_imap_checkpoint(self, mailbox: str, uidvalidity: int, last_uid: int) -> None:
        if not isinstance(mailbox, str) or not mailbox:
            raise ValueError("an IMAP mailbox name must be a non-empty string")
        values = {
            "mailbox": mailbox,
            "uidvalidity": bigint(uidvalidity, "uidvalidity"),
            "last_uid": bigint(last_uid, "last_uid"),
            "updated_at": utcnow(),
        }
        changes = {k: v for k, v in values.items() if k != "mailbox"}
        key = [imap_checkpoints.c.mailbox]
        stmt = insert_or(self.postgresql, imap_checkpoints, values, key, changes)
        with self._write() as conn:
            conn.execute(stmt)

    def close(self) -> None:
        if self._group is not None:
            self._group.close()
        self.engine.dispose()


def open_store(url: str, *, busy_timeout: float = DEFAULT_BUSY_TIMEOUT) -> SqlStore:
    """Open (not migrate) the store at `url`: "sqlite:///path" or "postgresql://user@host/db".

    Nothing is connected yet; call `check_schema()` (or `upgrade()`) next.
    `busy_timeout` is how long a SQLite writer waits for the write lock before
    `StoreUnavailable`.
    """
    return SqlStore(create_store_engine(url, busy_timeout=busy_timeout))


def as_sql_store(store: Store) -> SqlStore:
    """The `SqlStore` behind `store` (the one implementation of `Store`), for the store's
    own modules that work in SQL beside the protocol; TypeError for another implementation."""
    if not isinstance(store, SqlStore):
        raise TypeError(f"expected the gateway's SqlStore, not {type(store).__name__}")
    return store


# mypy checks here that the implementation satisfies the protocol.
_store_check: type[Store] = SqlStore
