"""The last known state of each background service (`service_state`), read by /healthz.

    record_state(store, "imap", True)                          # it works (a heartbeat too)
    record_state(store, "imap", False, "connection refused")   # it does not, and why
    states = read_states(store)     # {"imap": ServiceState(name, ok, detail, updated_at)}

One row per service name (`imap`: the IMAP listener; `ingress`: the SMTP/LMTP reply
ingress): whether it worked at its last try, a short detail (at most `MAX_DETAIL`
characters; never a secret or a message's content: callers pass a summary of the error),
and when it was written. The writer records on every change and, while nothing changes,
every so often (a heartbeat), so a reader can tell a state that stopped being updated
(the process died, the listener hangs) by its age. Several instances on one PostgreSQL
share the rows: the one that holds the mailbox lease writes `imap`.

These are functions over a `Store` (like `purge_texts` or `postgres_conninfo`): each runs
in its own short transaction. Conventions are those of `gateway.store.base`: datetimes in
are aware, out aware UTC; a database that cannot be reached raises `StoreUnavailable`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from gateway.store.base import Store
from gateway.store.rows import aware, insert_or, utcnow
from gateway.store.schema import service_state
from gateway.store.sql import as_sql_store

MAX_NAME = 64
MAX_DETAIL = 300


@dataclass(frozen=True)
class ServiceState:
    """One service's last recorded state."""

    name: str
    ok: bool
    detail: str | None
    updated_at: datetime  # aware, UTC


def record_state(
    store: Store, name: str, ok: bool, detail: str | None = None, *, now: datetime | None = None
) -> None:
    """Write (insert or replace) the state of service `name`, stamped `now` (default: the
    clock). `detail` is cut to `MAX_DETAIL` characters; control characters and runs of
    spaces become one space."""
    if not isinstance(name, str) or not name or len(name) > MAX_NAME:
        raise ValueError(f"a service name must be a non-empty string of at most {MAX_NAME}")
    sql = as_sql_store(store)
    values = {
        "name": name,
        "ok": bool(ok),
        "detail": _clean(detail),
        "updated_at": utcnow() if now is None else aware(now, "now"),
    }
    changes = {k: v for k, v in values.items() if k != "name"}
    stmt = insert_or(sql.postgresql, service_state, values, [service_state.c.name], changes)
    with sql._write() as conn:
        conn.execute(stmt)


def read_states(store: Store) -> dict[str, ServiceState]:
    """Every recorded state, by service name."""
    sql = as_sql_store(store)
    with sql._read() as conn:
        rows = conn.execute(sa.select(service_state)).mappings().all()
    return {
        row["name"]: ServiceState(
            name=row["name"],
            ok=bool(row["ok"]),
            detail=row["detail"],
            updated_at=aware(row["updated_at"], "updated_at"),
        )
        for row in rows
    }


def _clean(detail: str | None) -> str | None:
    if detail is None:
        return None
    text = " ".join("".join(ch if ch.isprintable() else " " for ch in str(detail)).split())
    return text[:MAX_DETAIL] or None
