"""Pacing outgoing texts to the sender's throughput (`sms.max_per_second`, in segments).

A sender (short code, long code, Messaging Service) may start at most so many
*segments* per second; what goes faster is queued by Twilio, then failed (30001
queue overflow). `SegmentPacer.acquire(n)` waits until a message of `n` segments may
start.

Why not a plain token bucket: a bucket holding one second's worth (capacity = rate)
lets a full bucket go at once and then refills during the same second, so up to twice
the rate can start within one second. The pacer therefore combines:

- a sliding-window log, the hard guarantee: the segments started during the last
  second (plus `margin`, 30 ms by default, so that the milliseconds a request
  takes to reach the provider cannot bunch two windows together) are remembered,
  and a message starts only if they and its own stay within the rate, so in ANY
  1-second window at most `rate` segments start. A message of more segments than
  the rate waits until the window is empty and goes alone;
- a token bucket (refilled at `rate`, holding at most `burst`, default one second's
  worth), for the long run: a message takes its segments from it and may drive it
  below zero (an oversized message), so that the average never exceeds the rate. A
  smaller `burst` spreads the starts more evenly.

Messages start whole, so a window can be left partly unused when the next message
does not fit in what remains (up to its size minus one segment). With the margin,
the sustained rate measured by bench/bench_pacing.py is ~99% of the rate for
one-segment texts, ~98% at 50–100/s for 1–3 segment replies, 85–90% at 10/s.

Waiters are served in order (FIFO: the wait happens under an `asyncio.Lock`), so a
long message is never starved by short ones. Safe for any number of tasks of one event
loop (not across threads); used from a later event loop it carries on.
`pause(seconds)` holds every start back, e.g. after a 429 with Retry-After.
The clock and sleep are injectable, so tests run on a fake clock.

Several instances on one PostgreSQL database share one window: `SharedPacer` keeps
the log in the `sms_starts` table instead of in memory (see its docstring), and
`pacer_for(store, rate)` picks it for a PostgreSQL store (SQLite is one machine: the
in-process `SegmentPacer`).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Protocol

import sqlalchemy as sa

from gateway.store.base import Store
from gateway.store.sql import SqlStore, _translated

WINDOW = 1.0  # seconds
DEFAULT_MARGIN = 0.03  # seconds added to the window: absorbs jitter on the way to the API
_MIN_SLEEP = 1e-6  # never spin on a wait that rounds to nothing


class Pacer(Protocol):
    """What the dispatcher needs of a pacer (`SegmentPacer`, `SharedPacer`)."""

    def pause(self, seconds: float) -> None: ...

    async def acquire(self, segments: int = 1) -> float: ...


def pacer_for(store: Store, rate_per_second: float) -> Pacer:
    """The pacer for a gateway on `store`: shared through the database on PostgreSQL
    (several instances may run on it), in-process otherwise."""
    if isinstance(store, SqlStore) and store.engine.dialect.name == "postgresql":
        return SharedPacer(store, rate_per_second)
    return SegmentPacer(rate_per_second)


class SegmentPacer:
    """Let at most `rate_per_second` SMS segments start in any 1-second window."""

    def __init__(
        self,
        rate_per_second: float,
        *,
        burst: float | None = None,
        margin: float = DEFAULT_MARGIN,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        if not math.isfinite(rate_per_second) or rate_per_second <= 0:
            raise ValueError(f"rate_per_second must be positive, not {rate_per_second!r}")
        if burst is not None and (not math.isfinite(burst) or burst <= 0):
            raise ValueError(f"burst must be positive, not {burst!r}")
        if not math.isfinite(margin) or margin < 0:
            raise ValueError(f"margin must be >= 0, not {margin!r}")
        self.rate = float(rate_per_second)
        self.margin = max(float(margin), 1e-6)  # at least clear of float rounding
        self.burst = float(burst) if burst is not None else self.rate
        self._clock = clock
        self._sleep = sleep
        self._lock: asyncio.Lock | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._window: deque[tuple[float, int]] = deque()  # (expires at, segments)
        self._in_window = 0
        self._tokens = self.burst
        self._filled_at: float | None = None
        self._paused_until = -math.inf

    @property
    def in_window(self) -> int:
        """Segments started during the last second (as of the last acquire)."""
        return self._in_window

    def pause(self, seconds: float) -> None:
        """Start nothing for the next `seconds` (a provider's Retry-After)."""
        if seconds > 0:
            self._paused_until = max(self._paused_until, self._clock() + seconds)

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
                wait = self._wait(segments, now)
                if wait <= 0:
                    return now
                await self._sleep(max(wait, _MIN_SLEEP))

    def _loop_lock(self) -> asyncio.Lock:
        """The lock for the running event loop (a new loop, e.g. another `asyncio.run`,
        gets a new lock; the pacing state carries over)."""
        loop = asyncio.get_running_loop()
        if self._lock is None or self._loop is not loop:
            self._lock, self._loop = asyncio.Lock(), loop
        return self._lock

    def _wait(self, segments: int, now: float) -> float:
        """Seconds to wait before `segments` may start at `now`; 0 = started now."""
        self._expire(now)
        self._refill(now)
        waits = [self._paused_until - now]
        # the window: room for these segments, or empty for an oversized message
        if self._in_window + segments > self.rate and self._in_window > 0:
            room = self.rate - segments  # what may remain in the window
            left = self._in_window
            for expires, count in self._window:
                left -= count
                if left <= room or left == 0:
                    waits.append(expires - now)
                    break
        # the bucket: these segments (at most a full bucket's worth) must be there
        need = min(float(segments), self.burst)
        if self._tokens + 1e-9 < need:
            waits.append((need - self._tokens) / self.rate)
        wait = max(waits)
        if wait > 0:
            return wait
        self._window.append((now + WINDOW + self.margin, segments))
        self._in_window += segments
        self._tokens -= segments
        return 0.0

    def _expire(self, now: float) -> None:
        while self._window and self._window[0][0] <= now:
            self._in_window -= self._window.popleft()[1]

    def _refill(self, now: float) -> None:
        if self._filled_at is not None and now > self._filled_at:
            self._tokens = min(self.burst, self._tokens + (now - self._filled_at) * self.rate)
        if self._filled_at is None or now > self._filled_at:
            self._filled_at = now


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
        store: SqlStore,
        rate_per_second: float,
        *,
        margin: float = DEFAULT_MARGIN,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        if store.engine.dialect.name != "postgresql":
            raise ValueError("SharedPacer needs a PostgreSQL store (use SegmentPacer on SQLite)")
        if not math.isfinite(rate_per_second) or rate_per_second <= 0:
            raise ValueError(f"rate_per_second must be positive, not {rate_per_second!r}")
        if not math.isfinite(margin) or margin < 0:
            raise ValueError(f"margin must be >= 0, not {margin!r}")
        self.rate = float(rate_per_second)
        self.margin = max(float(margin), 1e-6)
        self._store = store
        self._sleep = sleep
        self._lock: asyncio.Lock | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
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
                await self._sleep(max(wait, _MIN_SLEEP))

    def _loop_lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        if self._lock is None or self._loop is not loop:
            self._lock, self._loop = asyncio.Lock(), loop
        return self._lock

    def _try(self, segments: int, pause: float, clean: bool) -> tuple[float | None, float]:
        """One transaction: (start time, 0) if `segments` started, else (None, seconds to
        wait before trying again)."""
        span = WINDOW + self.margin
        with _translated(), self._store.engine.begin() as conn:
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(PACING_LOCK)))
            if pause > 0:
                conn.execute(_INSERT_PAUSE, {"offset": pause - span})
            rows = [(int(n), float(left)) for n, left in conn.execute(_READ_WINDOW, {"span": span})]
            wait = max([left for n, left in rows if n == 0], default=0.0)
            if wait > 0:
                return None, wait
            used = sum(n for n, _ in rows)
            if used + segments > self.rate and used > 0:
                room = self.rate - segments  # what may remain in the window
                left = used
                for count, expires_in in rows:
                    left -= count
                    if left <= room or left == 0:
                        return None, expires_in
                return None, _MIN_SLEEP  # pragma: no cover - the loop always ends it
            started = float(conn.execute(_INSERT_START, {"segments": segments}).scalar_one())
            if clean:
                conn.execute(_CLEAN, {"keep": _KEEP})
            return started, 0.0
