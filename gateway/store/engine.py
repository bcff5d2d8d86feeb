"""Engines and errors: database URLs, SQLAlchemy engines for SQLite and PostgreSQL, and the
translation of driver errors into the store's own.

Contract
    `normalize_url(url)` parses a database URL the way the gateway understands it;
    `create_store_engine(url)` makes the engine every store connection comes from;
    `POSTGRES_CONNECT_ARGS` are the connect/keepalive arguments of every PostgreSQL
    connection the gateway opens (the engine's pool here, and the dedicated connections of
    `gateway.store.coordination`): the one home for them. `translated()` (and `reraise`)
    turn SQLAlchemy errors into `StoreUnavailable` (or the `ValueError` / `TypeError` a
    column type refused), and `is_unique_violation` / `is_foreign_key_violation` tell an
    `IntegrityError` apart on either backend. No statements are built or run here.

SQLite
    One file, WAL journal, foreign keys on, `synchronous=FULL` (every COMMIT is on
    stable storage before it returns: a text answered 200 survives a power cut or a kernel
    crash; with NORMAL the last commits before one could vanish, and the provider never
    resends a text it got a 200 for), a busy timeout (5 s by default). Group commit
    (`gateway.store.group`) makes one fsync serve every write of a group. pysqlite's own
    transaction handling is switched off (`isolation_level = None`) and SQLAlchemy's
    "begin" event emits the BEGIN itself, as documented by SQLAlchemy: `BEGIN IMMEDIATE`
    for every write transaction, so writers queue on the busy timeout instead of failing with
    "database is locked" when a read would turn into a write; plain (deferred) `BEGIN`
    for connections with the `BEGIN_OPTION` execution option set to "DEFERRED" (reads,
    which WAL never blocks).

PostgreSQL
    `postgresql://` and `postgres://` URLs use psycopg 3 (`postgresql+psycopg`);
    pooled connections checked before use (`pool_pre_ping`), TCP keepalives and a user
    timeout (`POSTGRES_CONNECT_ARGS`).

Errors
    Driver `OperationalError`s (locked past the timeout, disk full, server gone,
    connection refused) and pool timeouts become `StoreUnavailable`. Statement
    parameters never appear in error messages (`hide_parameters`): they hold phone
    numbers and message bodies.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import MappingProxyType
from typing import Any, NoReturn

import sqlalchemy as sa

from gateway.store.base import StoreUnavailable

DEFAULT_BUSY_TIMEOUT = 5.0  # seconds a SQLite writer waits for the lock
BEGIN_OPTION = "sms311_sqlite_begin"  # execution option: "IMMEDIATE" (default) or "DEFERRED"

#: libpq connect arguments of every PostgreSQL connection: TCP keepalives and a user timeout,
#: so that a server that vanishes without a word (a partition) becomes an error within ~30 s
#: instead of blocking web threads (or a coordination connection) for ever.
POSTGRES_CONNECT_ARGS: MappingProxyType[str, Any] = MappingProxyType({
    "connect_timeout": 10,
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
    "tcp_user_timeout": 30000,
})


# --- URLs and engines -----------------------------------------------------------------------


def normalize_url(url: str) -> sa.URL:
    """Parse a database URL the way the gateway understands it.

    `postgres://` / `postgresql://` get the psycopg 3 driver. A SQLite path is
    made absolute (relative to the working directory) and its folder created.
    In-memory SQLite is refused: every pooled connection would see its own
    empty database.
    """
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError as exc:
        raise ValueError(f"not a database URL: {url!r}") from exc
    backend = parsed.get_backend_name()
    if parsed.drivername in ("postgres", "postgresql"):
        return parsed.set(drivername="postgresql+psycopg")
    if backend == "postgres":
        return parsed.set(drivername="postgresql" + parsed.drivername[len("postgres") :])
    if backend == "postgresql":
        return parsed
    if backend == "sqlite":
        database = parsed.database or ""
        if database in ("", ":memory:") or parsed.query.get("mode") == "memory":
            raise ValueError(f"SQLite needs a file, not an in-memory database: {url!r}")
        if parsed.query.get("uri"):
            return parsed
        path = Path(database).expanduser().resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        return parsed.set(database=str(path))
    raise ValueError(f"unsupported database (use sqlite:/// or postgresql://): {url!r}")


def create_store_engine(url: str, *, busy_timeout: float = DEFAULT_BUSY_TIMEOUT) -> sa.Engine:
    """An engine configured as described in the module docstring."""
    parsed = normalize_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(parsed, busy_timeout)
    return sa.create_engine(
        parsed,
        pool_pre_ping=True,
        pool_size=5,
        max_overflow=10,
        pool_timeout=10,
        hide_parameters=True,
        connect_args=dict(POSTGRES_CONNECT_ARGS),
    )


def _sqlite_engine(url: sa.URL, busy_timeout: float) -> sa.Engine:
    engine = sa.create_engine(
        url,
        hide_parameters=True,
        connect_args={"timeout": busy_timeout, "check_same_thread": False},
    )
    busy_ms = max(0, int(busy_timeout * 1000))

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, connection_record: Any) -> None:
        # Take BEGIN away from pysqlite; the "begin" listener below emits it.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {busy_ms}")
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA foreign_keys = ON")
            cursor.execute("PRAGMA synchronous = FULL")
        finally:
            cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        mode = conn.get_execution_options().get(BEGIN_OPTION, "IMMEDIATE")
        conn.exec_driver_sql("BEGIN DEFERRED" if mode == "DEFERRED" else "BEGIN IMMEDIATE")

    return engine


# --- error translation ----------------------------------------------------------------------


def unavailable(exc: BaseException) -> StoreUnavailable:
    """The `StoreUnavailable` for a driver error (its type and first 300 characters)."""
    orig = getattr(exc, "orig", None) or exc
    text = " ".join(str(orig).split())[:300]
    return StoreUnavailable(f"database unavailable: {type(orig).__name__}: {text}")


def is_unavailable(exc: BaseException) -> bool:
    if isinstance(exc, sa.exc.OperationalError | sa.exc.TimeoutError):
        return True
    return isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated


def is_unique_violation(exc: sa.exc.IntegrityError) -> bool:
    orig = exc.orig
    if getattr(orig, "sqlstate", None) == "23505":  # psycopg: unique_violation
        return True
    name = getattr(orig, "sqlite_errorname", "")
    return name in ("SQLITE_CONSTRAINT_UNIQUE", "SQLITE_CONSTRAINT_PRIMARYKEY")


def is_foreign_key_violation(exc: sa.exc.IntegrityError) -> bool:
    orig = exc.orig
    if getattr(orig, "sqlstate", None) == "23503":  # psycopg: foreign_key_violation
        return True
    return getattr(orig, "sqlite_errorname", "") == "SQLITE_CONSTRAINT_FOREIGNKEY"


def reraise(exc: sa.exc.SQLAlchemyError) -> NoReturn:
    """Raise the store's version of a SQLAlchemy error (or the error itself)."""
    if is_unavailable(exc):
        raise unavailable(exc) from exc
    if (
        isinstance(exc, sa.exc.StatementError)
        and not isinstance(exc, sa.exc.DBAPIError)
        and isinstance(exc.orig, ValueError | TypeError)
    ):
        # a bind value refused by our column types (naive datetime, not JSON)
        raise exc.orig from None
    raise exc


@contextmanager
def translated() -> Iterator[None]:
    """SQLAlchemy errors raised in the block leave it as `reraise` makes them."""
    try:
        yield
    except sa.exc.SQLAlchemyError as exc:
        reraise(exc)
