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
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable

WINDOW = 1.0  # seconds
DEFAULT_MARGIN = 0.03  # seconds added to the window: absorbs jitter on the way to the API
_MIN_SLEEP = 1e-6  # never spin on a wait that rounds to nothing


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
