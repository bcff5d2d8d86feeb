"""The webhook's two statements, in plain DBAPI: the resident's routing, and the queued text.

`POST /sms/inbound` runs these for almost every text (`SqlTx.resident_routing` and
`SqlTx.queue_inbound`), so they skip SQLAlchemy's statement execution (measured: about
60 µs of Python per statement through a prebuilt Core statement, about 8 µs through the
driver, whose own cache keeps each statement prepared). They write exactly what the
tables' SQLAlchemy types would (`gateway.store.schema`: `UTCDateTime` as SQLite's text
form or PostgreSQL's timestamptz, `JSONText` as compact sorted JSON); a test reads the
rows back through SQLAlchemy. Driver errors are translated as everywhere in the store:
trouble with the database is `StoreUnavailable`.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from gateway.store.base import StoreUnavailable

_LOCK_PG = "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))"
# the dialogue's stage, read by the database: the column holds `DialogueState.to_dict()`'s
# JSON, always written through `JSONText` (SQLite: a value that is not JSON reads "garbage",
# which sends the text through the dialogue); no stage (a fresh state) is "idle"
_RESIDENT = {
    False: "SELECT municipality_id, CASE WHEN json_valid(dialogue) "
    "THEN json_extract(dialogue, '$.stage') ELSE 'garbage' END "
    "FROM residents WHERE phone = ?",
    True: "SELECT municipality_id, dialogue::json ->> 'stage' FROM residents WHERE phone = %s",
}
_QUEUE = {
    False: "INSERT INTO inbound_texts (sid, phone, to_number, body, media, from_city, "
    "from_state, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (sid) DO NOTHING",
    True: "INSERT INTO inbound_texts (sid, phone, to_number, body, media, from_city, "
    "from_state, received_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) "
    "ON CONFLICT (sid) DO NOTHING",
}
_NOTIFY = "SELECT pg_notify('sms311_outbox', 'inbound')"


@contextmanager
def _driver_errors() -> Iterator[None]:
    try:
        yield
    except sqlite3.OperationalError as exc:
        raise StoreUnavailable(f"database unavailable: OperationalError: {exc}") from exc
    except Exception as exc:
        if type(exc).__module__.startswith("psycopg") and _is_operational(exc):
            raise StoreUnavailable(
                f"database unavailable: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
            ) from exc
        raise


def _is_operational(exc: Exception) -> bool:
    import psycopg

    return isinstance(exc, psycopg.OperationalError)


def resident_routing(raw: Any, postgresql: bool, phone: str) -> tuple[str | None, str] | None:
    """(municipality id, dialogue stage) of `phone`'s resident, None for a stranger. On
    PostgreSQL the number is locked until the transaction ends (as `get_resident` does)."""
    with _driver_errors():
        if postgresql:
            raw.execute(_LOCK_PG, (phone,))
        row = raw.execute(_RESIDENT[postgresql], (phone,)).fetchone()
    if row is None:
        return None
    municipality_id, stage = row
    return municipality_id, "idle" if stage is None else str(stage)


def queue_text(
    raw: Any,
    postgresql: bool,
    values: tuple[str, str, str, str, Sequence[Mapping[str, str]], str | None, str | None],
    received_at: datetime,
) -> bool:
    """Insert one `inbound_texts` row; False when its sid is already queued."""
    sid, phone, to, body, media, from_city, from_state = values
    if received_at.tzinfo is None or received_at.utcoffset() is None:
        raise ValueError(f"naive datetime given to the store (use an aware UTC one): {received_at}")
    moment = received_at.astimezone(UTC)
    media_json = json.dumps(
        [dict(m) for m in media], ensure_ascii=False, separators=(",", ":"), sort_keys=True
    )
    when: Any = moment if postgresql else moment.strftime("%Y-%m-%d %H:%M:%S.%f")
    params = (sid, phone, to, body, media_json, from_city, from_state, when)
    with _driver_errors():
        cursor = raw.execute(_QUEUE[postgresql], params)
        if cursor.rowcount != 1:
            return False
        if postgresql:  # the workers of every instance look at once (at commit)
            raw.execute(_NOTIFY)
    return True
