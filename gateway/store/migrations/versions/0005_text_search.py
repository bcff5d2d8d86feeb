"""A trigram text index over the messages, for the console's word search.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-10

The console's search looks for each word anywhere in a conversation's texts; for a rare
word that was one LIKE pass over every message body. The index finds the texts holding a
word of three or more characters instead (the query still applies the LIKE conditions,
so the results are those of the LIKE; the index only has to find every candidate):

- SQLite: `messages_fts`, an external-content FTS5 table (`tokenize='trigram'`, which
  folds case) over `messages.body` (rowid = `messages.id`), kept in step by three
  triggers on `messages`: AFTER INSERT, AFTER UPDATE OF body (the privacy purge blanks
  bodies) and AFTER DELETE (erasure), and filled from the existing rows ('rebuild').
  A later migration that rebuilds `messages` (batch mode) must re-create the triggers.
  If this SQLite lacks FTS5 or its trigram tokenizer (before 3.34), the migration logs a
  warning and creates nothing: the search then keeps its LIKE pass.
- PostgreSQL: `CREATE EXTENSION IF NOT EXISTS pg_trgm` and a GIN index
  `ix_messages_body_trgm` on `messages USING gin (body gin_trgm_ops)`, which ILIKE uses.
  Without the privilege to create the extension (pg_trgm is a trusted extension: CREATE
  on the database is enough), the migration logs a warning and succeeds without the
  index; the search keeps its (slower) pass over every text. The index is built in the
  migration's transaction (it locks `messages` against writes meanwhile: about a second
  per 100,000 messages).

The downgrade drops the FTS5 table and its triggers, or the GIN index (the extension is
left installed: other objects may use it).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

log = logging.getLogger("gateway.store.migrations")

FTS_TABLE = "messages_fts"
FTS_TRIGGERS = ("messages_fts_insert", "messages_fts_update", "messages_fts_delete")
TRGM_INDEX = "ix_messages_body_trgm"

_SQLITE_CREATE = (
    "CREATE VIRTUAL TABLE messages_fts USING fts5("
    "body, content='messages', content_rowid='id', tokenize='trigram', columnsize=0)"
)
_SQLITE_TRIGGERS = (
    """CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages BEGIN
    INSERT INTO messages_fts(rowid, body) VALUES (new.id, new.body);
END""",
    """CREATE TRIGGER messages_fts_update AFTER UPDATE OF body ON messages BEGIN
    INSERT INTO messages_fts(messages_fts, rowid, body) VALUES ('delete', old.id, old.body);
    INSERT INTO messages_fts(rowid, body) VALUES (new.id, new.body);
END""",
    """CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages BEGIN
    INSERT INTO messages_fts(messages_fts, rowid, body) VALUES ('delete', old.id, old.body);
END""",
)
_SQLITE_REBUILD = "INSERT INTO messages_fts(messages_fts) VALUES ('rebuild')"


def _upgrade_sqlite(bind: sa.Connection) -> None:
    try:  # (a failed statement leaves a SQLite transaction usable)
        bind.exec_driver_sql(_SQLITE_CREATE)
    except sa.exc.DBAPIError as exc:
        log.warning("no trigram text index (this SQLite has no FTS5 trigram tokenizer: %s); "
                    "the console's word search reads every text", exc.orig)
        return
    for trigger in _SQLITE_TRIGGERS:
        bind.exec_driver_sql(trigger)
    bind.exec_driver_sql(_SQLITE_REBUILD)


def _trgm_schema(bind: sa.Connection) -> str | None:
    found = bind.exec_driver_sql(
        "SELECT quote_ident(n.nspname) FROM pg_extension AS e "
        "JOIN pg_namespace AS n ON n.oid = e.extnamespace WHERE e.extname = 'pg_trgm'"
    ).scalar_one_or_none()
    return None if found is None else str(found)


def _upgrade_postgresql(bind: sa.Connection) -> None:
    schema = _trgm_schema(bind)
    if schema is None:
        try:
            with bind.begin_nested():  # a failure must not abort the migration's transaction
                bind.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        except sa.exc.DBAPIError as exc:
            log.warning("no trigram text index (cannot create the pg_trgm extension: %s); "
                        "the console's word search reads every text",
                        " ".join(str(exc.orig).split()))
            return
        schema = _trgm_schema(bind)
        assert schema is not None
    # (the operator class qualified: the extension may live in another schema than ours)
    bind.exec_driver_sql(
        f"CREATE INDEX {TRGM_INDEX} ON messages USING gin (body {schema}.gin_trgm_ops)"
    )


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        _upgrade_sqlite(bind)
    elif bind.dialect.name == "postgresql":
        _upgrade_postgresql(bind)


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        for trigger in FTS_TRIGGERS:
            bind.exec_driver_sql(f"DROP TRIGGER IF EXISTS {trigger}")
        bind.exec_driver_sql(f"DROP TABLE IF EXISTS {FTS_TABLE}")
    elif bind.dialect.name == "postgresql":
        bind.exec_driver_sql(f"DROP INDEX IF EXISTS {TRGM_INDEX}")
