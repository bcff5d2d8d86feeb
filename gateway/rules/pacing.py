"""The pacing rule: when may a text of `n` SMS segments start, at most `rate` segments a second.

No I/O, no clock, no waiting: times come in as numbers (seconds, on any monotonic clock) and
waits go out as numbers. The waiting itself (an asyncio lock, a sleep, the clock; or the
shared window in the database) is `gateway.store.pacing`'s.

A sender (short code, long code, Messaging Service) may start at most so many
*segments* per second; what goes faster is queued by Twilio, then failed (30001
queue overflow).

Why not a plain token bucket: a bucket holding one second's worth (capacity = rate)
lets a full bucket go at once and then refills during the same second, so up to twice
the rate can start within one second. `PacingWindow` therefore combines:

- a sliding-window log, the hard guarantee: the segments started during the last
  second (plus `margin`, 30 ms by default, so that the milliseconds a request
  takes to reach the provider cannot bunch two windows together) are remembered,
  and a message starts only if they and its own stay within the rate, so in ANY
  1-second window at most `rate` segments start. A message of more segments than
  the rate waits until the window is empty and goes alone (`window_wait`, which the
  database-backed window of several instances applies too);
- a token bucket (refilled at `rate`, holding at most `burst`, default one second's
  worth), for the long run: a message takes its segments from it and may drive it
  below zero (an oversized message), so that the average never exceeds the rate. A
  smaller `burst` spreads the starts more evenly.

Messages start whole, so a window can be left partly unused when the next message
does not fit in what remains (up to its size minus one segment). With the margin,
the sustained rate measured by bench/bench_pacing.py is ~99% of the rate for
one-segment texts, ~98% at 50–100/s for 1–3 segment replies, 85–90% at 10/s.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable

WINDOW = 1.0  # seconds
DEFAULT_MARGIN = 0.03  # seconds added to the window: absorbs jitter on the way to the API
MIN_SLEEP = 1e-6  # never spin on a wait that rounds to nothing


def check_rate(rate_per_second: float, margin: float) -> None:
    """ValueError unless the rate is positive and finite and the margin is >= 0."""
    if not math.isfinite(rate_per_second) or rate_per_second <= 0:
        raise ValueError(f"rate_per_second must be positive, not {rate_per_second!r}")
    if not math.isfinite(margin) or margin < 0:
        raise ValueError(f"margin must be >= 0, not {margin!r}")


def window_wait(
    rate: float, starts: Iterable[tuple[int, float]], used: int, segments: int
) -> float | None:
    """Seconds until `segments` more fit in the sliding window, or None when they fit now.

    `starts` are the starts still in the window, oldest first, as (segments, seconds until
    it leaves the window); `used` is their total. They fit when `used + segments <= rate`,
    or when the window is empty (an oversized message goes alone); otherwise the wait is
    until enough of the oldest starts have left for them to fit (or all have)."""
    if used + segments <= rate or used <= 0:
        return None
    room = rate - segments  # what may remain in the window
    left = used
    for count, leaves_in in starts:
        left -= count
        if left <= room or left == 0:
            return leaves_in
    return MIN_SLEEP  # pragma: no cover - `used` is the starts' total: the loop ends it


class PacingWindow:
    """The sliding window and token bucket of one sender (see the module docstring).

    `wait(segments, now)` is 0.0 when a message of `segments` segments may start at `now`
    (and counts it as started), else the seconds to wait before asking again. Times are
    on any one monotonic clock; `now` should not go back."""

    def __init__(
        self, rate_per_second: float, *, burst: float | None = None, margin: float = DEFAULT_MARGIN
    ) -> None:
        if not math.isfinite(rate_per_second) or rate_per_second <= 0:
            raise ValueError(f"rate_per_second must be positive, not {rate_per_second!r}")
        if burst is not None and (not math.isfinite(burst) or burst <= 0):
            raise ValueError(f"burst must be positive, not {burst!r}")
        check_rate(rate_per_second, margin)
        self.rate = float(rate_per_second)
        self.margin = max(float(margin), 1e-6)  # at least clear of float rounding
        self.burst = float(burst) if burst is not None else self.rate
        self._window: deque[tuple[float, int]] = deque()  # (expires at, segments)
        self._in_window = 0
        self._tokens = self.burst
        self._filled_at: float | None = None
        self._paused_until = -math.inf

    @property
    def in_window(self) -> int:
        """Segments started during the last second (as of the last `wait`)."""
        return self._in_window

    def pause_until(self, until: float) -> None:
        """Start nothing before `until` (a provider's Retry-After)."""
        self._paused_until = max(self._paused_until, until)

    def wait(self, segments: int, now: float) -> float:
        """Seconds to wait before `segments` may start at `now`; 0 = started now."""
        self._expire(now)
        self._refill(now)
        waits = [self._paused_until - now]
        # the window: room for these segments, or empty for an oversized message
        window = window_wait(
            self.rate,
            ((count, expires - now) for expires, count in self._window),
            self._in_window,
            segments,
        )
        if window is not None:
            waits.append(window)
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
