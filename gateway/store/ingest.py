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
# a batch's numbers locked in one round trip, in sorted order (two batches of several
# processes lock in the same order: no deadlock)
_LOCK_MANY_PG = (
    "SELECT count(pg_advisory_xact_lock(hashtextextended(phone, 0))) "
    "FROM (SELECT DISTINCT unnest(%s::text[]) AS phone ORDER BY 1) AS numbers"
)
_RESIDENTS_PG = (
    "SELECT phone, municipality_id, dialogue::json ->> 'stage' FROM residents "
    "WHERE phone = ANY(%s)"
)
# a batch's rows in one statement: one array a column
_QUEUE_MANY_PG = (
    "INSERT INTO inbound_texts (sid, phone, to_number, body, media, from_city, from_state, "
    "received_at) SELECT s, p, t, b, m, c, st, r FROM unnest(%s::text[], %s::text[], "
    "%s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::timestamptz[]) "
    "WITH ORDINALITY AS rows(s, p, t, b, m, c, st, r, n) ORDER BY n "  # ids in this order
    "ON CONFLICT (sid) DO NOTHING RETURNING sid"
)


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


def residents_routing(
    raw: Any, postgresql: bool, phones: Sequence[str]
) -> dict[str, tuple[str | None, str]]:
    """`resident_routing` for several numbers at once (strangers are left out). On
    PostgreSQL the numbers are locked, in sorted order, and read in two round trips."""
    if not postgresql:
        found = {}
        for phone in phones:
            routing = resident_routing(raw, False, phone)
            if routing is not None:
                found[phone] = routing
        return found
    numbers = sorted(set(phones))
    if not numbers:
        return {}
    with _driver_errors():
        raw.execute(_LOCK_MANY_PG, (numbers,))
        rows = raw.execute(_RESIDENTS_PG, (numbers,)).fetchall()
    return {
        str(phone): (municipality_id, "idle" if stage is None else str(stage))
        for phone, municipality_id, stage in rows
    }


Values = tuple[str, str, str, str, Sequence[Mapping[str, str]], str | None, str | None]


def queue_texts(
    raw: Any, postgresql: bool, texts: Sequence[tuple[Values, datetime]]
) -> list[bool]:
    """`queue_text` for several texts: one statement on PostgreSQL (one round trip, one
    NOTIFY); for each text, False when its sid was already queued (before, or earlier in
    `texts`)."""
    if not postgresql:
        return [queue_text(raw, False, values, at) for values, at in texts]
    first: dict[str, int] = {}
    rows: list[tuple[Any, ...]] = []
    for i, (values, at) in enumerate(texts):
        if values[0] not in first:
            first[values[0]] = i
            rows.append(_params(values, at, True))
    if not rows:
        return []
    columns = [list(column) for column in zip(*rows, strict=True)]
    with _driver_errors():
        inserted = {str(sid) for (sid,) in raw.execute(_QUEUE_MANY_PG, columns).fetchall()}
        if inserted:  # the workers of every instance look at once (at commit)
            raw.execute(_NOTIFY)
    return [
        values[0] in inserted and first[values[0]] == i
        for i, (values, _) in enumerate(texts)
    ]


def _params(values: Values, received_at: datetime, postgresql: bool) -> tuple[Any, ...]:
    """The row's parameters as the tables' SQLAlchemy types would write them."""
    sid, phone, to, body, media, from_city, from_state = values
    if received_at.tzinfo is None or received_at.utcoffset() is None:
        raise ValueError(f"naive datetime given to the store (use an aware UTC one): {received_at}")
    moment = received_at.astimezone(UTC)
    media_json = json.dumps(
        [dict(m) for m in media], ensure_ascii=False, separators=(",", ":"), sort_keys=True
    )
    when: Any = moment if postgresql else moment.strftime("%Y-%m-%d %H:%M:%S.%f")
    return (sid, phone, to, body, media_json, from_city, from_state, when)


def queue_text(raw: Any, postgresql: bool, values: Values, received_at: datetime) -> bool:
    """Insert one `inbound_texts` row; False when its sid is already queued."""
    params = _params(values, received_at, postgresql)
    with _driver_errors():
        cursor = raw.execute(_QUEUE[postgresql], params)
        if cursor.rowcount != 1:
            return False
        if postgresql:  # the workers of every instance look at once (at commit)
            raw.execute(_NOTIFY)
    return True
