"""Pacing outgoing texts to the sender's throughput (`sms.max_per_second`, in segments): the
waiting, around the rule of `gateway.rules.pacing` (a sliding window and a token bucket).

Contract
    `pacer_for(store, rate)` gives the dispatcher its `Pacer`: `acquire(n)` waits until a
    message of `n` segments may start (and counts it as started), `pause(seconds)` holds
    every start back (a 429's Retry-After).

    - `SegmentPacer`, in process (one machine: SQLite): the rule's `PacingWindow` in
      memory. Waiters are served in order (FIFO: the wait happens under an `asyncio.Lock`),
      so a long message is never starved by short ones. Safe for any number of tasks of one
      event loop (not across threads); used from a later event loop it carries on. The
      clock and sleep are injectable, so tests run on a fake clock.
    - `SharedPacer`, across every instance on one PostgreSQL database: the rule's window
      (`window_wait`) kept in the `sms_starts` table (see its docstring), run through the
      store's public API (`as_sql_store`, `engine.translated`).

Why here and not in `gateway/rules/`: waiting is not a rule. The rule (`PacingWindow`,
`window_wait`) takes times and returns waits; what needs a lock, a clock, a sleep or the
database is here.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

import sqlalchemy as sa

from gateway.rules.pacing import (
    DEFAULT_MARGIN,
    MIN_SLEEP,
    WINDOW,
    PacingWindow,
    check_rate,
    window_wait,
)
from gateway.store.base import Store
from gateway.store.engine import translated
from gateway.store.sql import SqlStore, as_sql_store

__all__ = [
    "PACING_LOCK",
    "Pacer",
    "SegmentPacer",
    "SharedPacer",
    "pacer_for",
]


class Pacer(Protocol):
    """What the dispatcher needs of a pacer (`SegmentPacer`, `SharedPacer`)."""

    def pause(self, seconds: float) -> None: ...

    async def acquire(self, segments: int = 1) -> float: ...


def pacer_for(store: Store, rate_per_second: float) -> Pacer:
    """The pacer for a gateway on `store`: shared through the database on PostgreSQL
    (several instances may run on it), in-process otherwise."""
    if isinstance(store, SqlStore) and store.postgresql:
        return SharedPacer(store, rate_per_second)
    return SegmentPacer(rate_per_second)


class _LoopLock:
    """An `asyncio.Lock` for the running event loop (a new loop, e.g. another `asyncio.run`,
    gets a new lock; the pacing state carries over)."""

    def __init__(self) -> None:
        self._lock: asyncio.Lock | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def __call__(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        if self._lock is None or self._loop is not loop:
            self._lock, self._loop = asyncio.Lock(), loop
        return self._lock


class SegmentPacer:
    """Let at most `rate_per_second` SMS segments start in any 1-second window (in process)."""

    def __init__(
        self,
        rate_per_second: float,
        *,
        burst: float | None = None,
        margin: float = DEFAULT_MARGIN,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        self._rule = PacingWindow(rate_per_second, burst=burst, margin=margin)
        self._clock = clock
        self._sleep = sleep
        self._loop_lock = _LoopLock()

    @property
    def rate(self) -> float:
        return self._rule.rate

    @property
    def burst(self) -> float:
        return self._rule.burst

    @property
    def margin(self) -> float:
        return self._rule.margin

    @property
    def in_window(self) -> int:
        """Segments started during the last second (as of the last acquire)."""
        return self._rule.in_window

    def pause(self, seconds: float) -> None:
        """Start nothing for the next `seconds` (a provider's Retry-After)."""
        if seconds > 0:
            self._rule.pause_until(self._clock() + seconds)

    async def acquire(self, segments: int = 1) -> float:
        """Wait until a message of `segments` segments may start, and count it as started;
        returns the clock time at which it was let go.

        Raises ValueError if `segments` < 1. Cancelling the wait takes nothing.
        """
        if segments < 1:
            raise ValueError(f"segments must be at least 1, not {segments}")
        async with self._loop_lock():
            while True:
                now = self._clock()
                wait = self._rule.wait(segments, now)
                if wait <= 0:
                    return now
                await self._sleep(max(wait, MIN_SLEEP))


# pg_advisory_xact_lock key of the shared window: "sms311p" in ASCII (the migrations use "sms311")
PACING_LOCK = 0x736D7333313170
_KEEP = 10.0  # seconds: rows older than this are deleted ...
_CLEAN_EVERY = 5.0  # ... at most this often (per instance)

_READ_WINDOW = sa.text(
    """
    WITH now AS MATERIALIZED (SELECT clock_timestamp() AS t)
    SELECT s.segments,
           extract(epoch FROM s.started_at + make_interval(secs => :span) - now.t)::float8
    FROM sms_starts AS s, now
    WHERE s.started_at > now.t - make_interval(secs => :span)
    ORDER BY s.started_at, s.id
    """
)
_INSERT_START = sa.text(
    "INSERT INTO sms_starts (started_at, segments) VALUES (clock_timestamp(), :segments) "
    "RETURNING extract(epoch FROM started_at)::float8"
)
_INSERT_PAUSE = sa.text(
    "INSERT INTO sms_starts (started_at, segments) "
    "VALUES (clock_timestamp() + make_interval(secs => :offset), 0)"
)
_CLEAN = sa.text(
    "DELETE FROM sms_starts WHERE started_at < clock_timestamp() - make_interval(secs => :keep)"
)


class SharedPacer:
    """`SegmentPacer`'s sliding-window guarantee across every instance on one PostgreSQL
    database: together they start at most `rate_per_second` segments in any 1-second
    window (plus `margin`).

    The window is the `sms_starts` table. `acquire(n)` runs one short transaction:
    take a transaction-level advisory lock (so the instances decide one at a time), read
    the segments started during the last second plus margin, and if `n` more fit (or
    the window is empty: an oversized message goes alone) record the start and commit.
    Otherwise it sleeps, outside any transaction, until enough of the window has expired,
    and tries again. Times are the database's `clock_timestamp()`, so the instances'
    clocks do not matter. Rows older than a few seconds are deleted now and then.

    `pause(seconds)` (a 429's Retry-After) holds back every instance: it is recorded
    as a row of 0 segments that blocks the window until it expires; it is written by the
    next `acquire` of this instance (which is when it matters).

    Within one instance waiters are served in order (an `asyncio.Lock`); across
    instances the first to look after the window frees up wins, so a long message may
    wait behind other instances' short ones while they keep the window busy. No token
    bucket: the window alone caps every second. `acquire` returns the start's database
    time (epoch seconds). A cancelled `acquire` may still have recorded its start (the
    transaction runs in a worker thread): that errs on the slow side. Database errors
    raise `StoreUnavailable`.
    """

    def __init__(
        self,
        store: Store,
        rate_per_second: float,
        *,
        margin: float = DEFAULT_MARGIN,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        sql = as_sql_store(store)
        if not sql.postgresql:
            raise ValueError("SharedPacer needs a PostgreSQL store (use SegmentPacer on SQLite)")
        check_rate(rate_per_second, margin)
        self.rate = float(rate_per_second)
        self.margin = max(float(margin), 1e-6)
        self._engine = sql.engine
        self._sleep = sleep
        self._loop_lock = _LoopLock()
        self._paused_until = -math.inf  # time.monotonic(): a pause not yet written
        self._cleaned_at = -math.inf  # time.monotonic()

    def pause(self, seconds: float) -> None:
        """Start nothing, on any instance, for the next `seconds` (a provider's Retry-After)."""
        if seconds > 0:
            self._paused_until = max(self._paused_until, time.monotonic() + seconds)

    async def acquire(self, segments: int = 1) -> float:
        """Wait until a message of `segments` segments may start, and record it as started;
        returns the database time (epoch seconds) at which it was let go.

        Raises ValueError if `segments` < 1, StoreUnavailable if the database is.
        """
        if segments < 1:
            raise ValueError(f"segments must be at least 1, not {segments}")
        async with self._loop_lock():
            while True:
                now = time.monotonic()
                pause = self._paused_until - now
                self._paused_until = -math.inf
                clean = now - self._cleaned_at >= _CLEAN_EVERY
                started, wait = await asyncio.to_thread(self._try, segments, pause, clean)
                if clean and started is not None:
                    self._cleaned_at = now
                if started is not None:
                    return started
                await self._sleep(max(wait, MIN_SLEEP))

    def _try(self, segments: int, pause: float, clean: bool) -> tuple[float | None, float]:
        """One transaction: (start time, 0) if `segments` started, else (None, seconds to
        wait before trying again)."""
        span = WINDOW + self.margin
        with translated(), self._engine.begin() as conn:
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(PACING_LOCK)))
            if pause > 0:
                conn.execute(_INSERT_PAUSE, {"offset": pause - span})
            rows = [(int(n), float(left)) for n, left in conn.execute(_READ_WINDOW, {"span": span})]
            wait = max([left for n, left in rows if n == 0], default=0.0)
            if wait > 0:
                return None, wait
            used = sum(n for n, _ in rows)
            window = window_wait(self.rate, rows, used, segments)
            if window is not None:
                return None, window
            started = float(conn.execute(_INSERT_START, {"segments": segments}).scalar_one())
            if clean:
                conn.execute(_CLEAN, {"keep": _KEEP})
            return started, 0.0
