"""The shared pacer (issue 6): several instances on one PostgreSQL database together start
at most `sms.max_per_second` segments in any 1-second window.

Each "instance" is its own `SqlStore` (its own connection pool) driven from its own thread
and event loop, on a real PostgreSQL server (GATEWAY_TEST_POSTGRES_URL, or the throwaway cluster of
tests/postgres.py), in a throwaway database and schema.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from gateway.rules.pacing import DEFAULT_MARGIN, WINDOW
from gateway.store import StoreUnavailable
from gateway.store.pacing import SegmentPacer, SharedPacer, pacer_for
from gateway.store.sql import SqlStore, open_store

SPAN = WINDOW + DEFAULT_MARGIN


@pytest.fixture
def instances(pg_store_url: str) -> Iterator[tuple[SqlStore, SqlStore]]:
    """Two stores on one database: two instances' connection pools."""
    a, b = open_store(pg_store_url), open_store(pg_store_url)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def _starts(store: SqlStore) -> list[tuple[float, int]]:
    """(database time in epoch seconds, segments) of the starts recorded (not the pauses)."""
    with store.engine.connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT extract(epoch FROM started_at)::float8, segments FROM sms_starts "
            "WHERE segments > 0 ORDER BY started_at"
        ))
        return [(float(t), int(n)) for t, n in rows]


def _busiest_second(starts: list[tuple[float, int]]) -> int:
    """The most segments started in any closed 1-second window."""
    starts = sorted(starts)
    return max(
        (sum(n for u, n in starts if t <= u <= t + WINDOW) for t, _ in starts), default=0
    )


def _hammer(pacer: SharedPacer, seconds: float, seed: int, sizes: tuple[int, ...]) -> list[
        tuple[float, int]]:
    """In a new event loop: 4 tasks acquire for `seconds`; the (grant time, segments)."""
    rand = random.Random(seed)
    grants: list[tuple[float, int]] = []

    async def task(deadline: float) -> None:
        while time.monotonic() < deadline:
            n = rand.choice(sizes)
            grants.append((await pacer.acquire(n), n))

    async def main() -> None:
        deadline = time.monotonic() + seconds
        await asyncio.gather(*(task(deadline) for _ in range(4)))

    asyncio.run(main())
    return grants


def _in_threads(*jobs: Any) -> list[Any]:
    results: list[Any] = [None] * len(jobs)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            results[i] = jobs[i]()
        except BaseException as exc:  # reported in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    if errors:
        raise errors[0]
    return results


@pytest.mark.parametrize("sizes", [(1,), (1, 2, 3)], ids=["1-segment", "1-3-segments"])
def test_two_instances_together_never_exceed_the_rate(
    instances: tuple[SqlStore, SqlStore], sizes: tuple[int, ...]
) -> None:
    rate, seconds = 20, 3.0
    a, b = (SharedPacer(store, rate) for store in instances)
    grants_a, grants_b = _in_threads(
        lambda: _hammer(a, seconds, 1, sizes), lambda: _hammer(b, seconds, 2, sizes)
    )
    assert grants_a and grants_b  # both instances sent
    grants = grants_a + grants_b
    recorded = _starts(instances[0])
    assert sorted(recorded) == sorted(grants)  # every grant is recorded, nothing else
    assert _busiest_second(grants) <= rate
    # what they achieved together during the run (from the first start)
    first = min(t for t, _ in grants)
    achieved = sum(n for t, n in grants if t < first + seconds) / seconds
    assert achieved >= 0.85 * rate, achieved


def test_an_oversized_message_goes_alone(instances: tuple[SqlStore, SqlStore]) -> None:
    a, b = (SharedPacer(store, 5) for store in instances)

    async def main() -> tuple[float, float, float]:
        first = await a.acquire(3)
        big = await b.acquire(8)  # waits until the window is empty, then goes alone
        after = await a.acquire(1)  # waits until the big one has left the window
        return first, big, after

    first, big, after = asyncio.run(main())
    assert big - first >= SPAN
    assert after - big >= SPAN
    assert after - big < SPAN + 0.5


def test_pause_holds_back_every_instance(instances: tuple[SqlStore, SqlStore]) -> None:
    a, b = (SharedPacer(store, 50) for store in instances)

    async def main() -> tuple[float, float]:
        await a.acquire(1)
        a.pause(0.6)  # a 429 with Retry-After on instance a
        paused = asyncio.create_task(a.acquire(1))  # writes the pause, then waits for it
        await asyncio.sleep(0.1)
        other = await b.acquire(1)  # instance b waits for a's pause too
        return await paused, other

    started_a, started_b = asyncio.run(main())
    with instances[0].engine.connect() as conn:
        pause_ends = conn.execute(sa.text(
            "SELECT extract(epoch FROM started_at)::float8 + :span FROM sms_starts "
            "WHERE segments = 0"
        ), {"span": SPAN}).scalar_one()
    assert started_a >= pause_ends
    assert started_b >= pause_ends


def test_old_starts_are_deleted(instances: tuple[SqlStore, SqlStore]) -> None:
    store = instances[0]
    with store.engine.begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO sms_starts (started_at, segments) "
            "VALUES (clock_timestamp() - interval '1 minute', 1)"
        ))
    pacer = SharedPacer(store, 10)
    started = asyncio.run(pacer.acquire(2))
    assert _starts(store) == [(started, 2)]


def test_acquire_refuses_nothing_to_start(instances: tuple[SqlStore, SqlStore]) -> None:
    pacer = SharedPacer(instances[0], 10)
    with pytest.raises(ValueError, match="at least 1"):
        asyncio.run(pacer.acquire(0))
    with pytest.raises(ValueError, match="positive"):
        SharedPacer(instances[0], 0)


def test_unreachable_database_is_unavailable() -> None:
    store = open_store("postgresql://postgres@127.0.0.1:1/nothing")
    try:
        with pytest.raises(StoreUnavailable):
            asyncio.run(SharedPacer(store, 10).acquire(1))
    finally:
        store.close()


def test_pacer_for_picks_the_shared_pacer_on_postgresql(
    instances: tuple[SqlStore, SqlStore], tmp_path: Path
) -> None:
    assert isinstance(pacer_for(instances[0], 10), SharedPacer)
    lite = open_store(f"sqlite:///{tmp_path}/g.db")
    try:
        assert isinstance(pacer_for(lite, 10), SegmentPacer)
        with pytest.raises(ValueError, match="PostgreSQL"):
            SharedPacer(lite, 10)
    finally:
        lite.close()
