"""Shared by the store's test modules (test_store.py, test_store_outbox.py,
test_store_migrations.py): the phone numbers, clock and lease they use, and two small helpers.
The fixtures `db_url`, `empty_store` and `store` (each test on SQLite and on PostgreSQL) are in
tests/conftest.py.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from gateway.store import SqlStore

PHONE = "+16135550123"
OTHER = "+15145550199"
T0 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
LEASE = timedelta(seconds=60)


def select_rows(store: SqlStore, stmt: sa.Select[Any]) -> list[sa.RowMapping]:
    """The rows of `stmt`, read straight from the database (not through the store's API)."""
    with store.engine.connect() as conn:
        return list(conn.execute(stmt).mappings())


def in_threads(n: int, fn: Callable[[int], Any]) -> list[Any]:
    """`fn(0)` … `fn(n - 1)`, each in a thread of its own, at once; their results in order."""
    with ThreadPoolExecutor(n) as pool:
        return [f.result(timeout=30) for f in [pool.submit(fn, i) for i in range(n)]]
