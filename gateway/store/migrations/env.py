"""Alembic environment for the gateway's store.

Run programmatically by `SqlStore.upgrade()` (no alembic.ini): the store puts
an open `Connection` (already in a transaction) in
`config.attributes["connection"]`, so migrations run through the store's own
engine, with its SQLite pragmas and locking. Without one (plain `alembic`
command line with `-x url=...` or `sqlalchemy.url` set), an engine is built
from the URL. Logging is left alone: the application configures it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from gateway.store.engine import create_store_engine
from gateway.store.schema import metadata

config = context.config


def _configure(connection: sa.Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )


def run_migrations_offline() -> None:
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option(
        "sqlalchemy.url"
    )
    context.configure(
        url=url,
        target_metadata=metadata,
        literal_binds=True,
        render_as_batch=bool(url and url.startswith("sqlite")),
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option(
        "sqlalchemy.url"
    )
    if not url:
        raise RuntimeError("no database: pass -x url=... or set sqlalchemy.url")
    engine = create_store_engine(url)
    try:
        with engine.begin() as conn:
            _configure(conn)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
