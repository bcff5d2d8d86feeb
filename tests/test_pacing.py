"""SegmentPacer (gateway.store.pacing, around the rule of gateway.rules.pacing) on a fake clock:
deterministic, no real waiting."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Sequence

import pytest

from gateway.rules.pacing import DEFAULT_MARGIN, PacingWindow, window_wait
from gateway.store.pacing import SegmentPacer


class FakeClock:
    """A monotonic clock that only moves when someone sleeps on it.

    The pacer sleeps with its lock held, so at most one task sleeps at a time and
    moving the clock by the sleep is exact."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += max(0.0, seconds)
        await asyncio.sleep(0)

M = DEFAULT_MARGIN  # the window's margin, in seconds


def pacer(rate: float, clock: FakeClock, **kwargs: float) -> SegmentPacer:
    return SegmentPacer(rate, clock=clock, sleep=clock.sleep, **kwargs)


def max_in_window(starts: Sequence[tuple[float, int]], window: float = 1.0) -> int:
    """The most segments started within any half-open window [t, t + window)."""
    events = sorted(starts)
    best = total = 0
    first = 0
    for time, segments in events:
        total += segments
        while events[first][0] <= time - window:
            total -= events[first][1]
            first += 1
        best = max(best, total)
    return best


def run_burst(p: SegmentPacer, sizes: Sequence[int]) -> list[tuple[float, int]]:
    """Acquire for every size at once (one task each); the (start, segments) granted."""

    async def main() -> list[tuple[float, int]]:
        async def one(segments: int) -> tuple[float, int]:
            return await p.acquire(segments), segments

        return list(await asyncio.gather(*(one(s) for s in sizes)))

    return asyncio.run(main())


def test_the_window_checker_itself() -> None:
    assert max_in_window([(0.0, 1), (0.5, 1), (0.999, 1), (1.0, 1)]) == 3
    assert max_in_window([(0.0, 3), (1.0, 3)]) == 3
    assert max_in_window([(0.0, 2), (0.9, 2), (1.5, 2)]) == 4


def test_burst_of_1000_at_rate_10_never_exceeds_and_keeps_the_rate() -> None:
    clock = FakeClock()
    starts = run_burst(pacer(10, clock), [1] * 1000)
    assert max_in_window(starts) <= 10
    times = [t for t, _ in starts]
    assert times == sorted(times)  # first come, first served
    first = times[0]
    assert first == 1000.0  # an idle pacer lets the first go at once
    in_50_seconds = sum(1 for t in times if t < first + 50)
    assert 0.95 * 10 * 50 <= in_50_seconds <= 10 * 50
    span = times[-1] - first + 1.0
    assert 1000 / span >= 0.95 * 10


def test_a_full_second_goes_at_once_then_the_next_second() -> None:
    clock = FakeClock(0.0)
    starts = run_burst(pacer(5, clock), [1] * 12)
    times = [round(t, 3) for t, _ in starts]
    assert times[:5] == [0.0] * 5
    assert times[5:10] == [round(1 + M, 3)] * 5  # one window (+ the margin) later
    assert times[10:] == [round(2 + 2 * M, 3)] * 2


@pytest.mark.parametrize(
    ("rate", "mix", "at_least"),
    [
        (10, [1, 1, 1, 1, 2, 2, 3], 0.9),  # typical replies
        (50, [1, 1, 1, 2, 3, 4, 7], 0.9),
        # many long messages at a low rate: whole messages do not fill every window
        (10, [1, 1, 1, 2, 3, 4, 7], 0.75),
    ],
)
def test_multi_segment_messages_mixed(rate: int, mix: list[int], at_least: float) -> None:
    clock = FakeClock()
    rng = random.Random(311)
    sizes = [rng.choice(mix) for _ in range(1000)]
    starts = run_burst(pacer(rate, clock), sizes)
    assert max_in_window(starts) <= rate
    assert [s for _, s in starts] == sizes  # in order
    span = starts[-1][0] - starts[0][0] + 1.0
    assert sum(sizes) / span >= at_least * rate


def test_a_message_bigger_than_the_rate_goes_alone_and_pays_for_it() -> None:
    clock = FakeClock(0.0)
    starts = run_burst(pacer(5, clock), [2, 8, 1, 1])
    (t0, _), (t1, _), (t2, _), (t3, _) = starts
    assert t0 == 0.0
    assert t1 == pytest.approx(1 + M)  # waited for the window to empty: alone
    # the 8 segments are paid back at 5/s before anything else starts
    assert t2 >= t1 + 8 / 5 - 1 - 1e-9 and t2 >= t1 + 1.0
    assert t3 >= t2
    long_run = sum(s for _, s in starts) / (t3 - t0 + 1)
    assert long_run <= 5


def test_long_messages_are_not_starved_by_short_ones() -> None:
    clock = FakeClock(0.0)
    p = pacer(4, clock)

    async def main() -> list[str]:
        order: list[str] = []

        async def send(name: str, segments: int, delay: int) -> None:
            for _ in range(delay):
                await asyncio.sleep(0)
            await p.acquire(segments)
            order.append(name)

        await asyncio.gather(
            send("a", 1, 0), send("b", 1, 0), send("big", 4, 1),
            *(send(f"s{i}", 1, 2) for i in range(6)),
        )  # fmt: skip
        return order

    order = asyncio.run(main())
    assert order.index("big") == 2


def test_smooth_pacing_with_a_small_burst() -> None:
    clock = FakeClock(0.0)
    starts = run_burst(pacer(10, clock, burst=1), [1] * 30)
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(starts)]
    assert all(g == pytest.approx(0.1, abs=1e-6) or g > 0.1 for g in gaps)
    assert max_in_window(starts) <= 10
    assert starts[-1][0] <= 3.1


def test_fractional_and_slow_rates() -> None:
    clock = FakeClock(0.0)
    starts = run_burst(pacer(0.5, clock), [1, 1, 1])
    assert [round(t, 6) for t, _ in starts] == [0.0, 2.0, 4.0]
    clock = FakeClock(0.0)
    starts = run_burst(pacer(1, clock), [1, 3, 1])  # the config default: 1 per second
    assert starts[0][0] == 0.0 and starts[1][0] == pytest.approx(1 + M)
    assert starts[2][0] >= starts[1][0] + 3 - 1e-9


def test_pause_holds_everything_back() -> None:
    clock = FakeClock(0.0)
    p = pacer(100, clock)

    async def main() -> list[float]:
        first = await p.acquire(1)
        p.pause(2.5)
        second = await p.acquire(1)
        p.pause(0)  # nothing
        return [first, second, await p.acquire(1)]

    first, second, third = asyncio.run(main())
    assert first == 0.0 and second == pytest.approx(2.5) and third == second


def test_cancelled_waiter_takes_nothing() -> None:
    clock = FakeClock(0.0)
    p = pacer(2, clock)

    async def main() -> float:
        await p.acquire(2)  # the window is full
        waiter = asyncio.ensure_future(p.acquire(2))
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        return await p.acquire(2)

    started = asyncio.run(main())
    assert started >= 1.0
    assert p.in_window == 2


def test_idle_pacer_does_not_sleep() -> None:
    clock = FakeClock()
    p = pacer(100, clock)

    async def main() -> None:
        for _ in range(100):
            await p.acquire(1)

    asyncio.run(main())
    assert clock.sleeps == []


def test_real_clock_short_run() -> None:
    p = SegmentPacer(200, margin=0.005)

    async def main() -> list[tuple[float, int]]:
        return [(await p.acquire(1), 1) for _ in range(260)]

    starts = asyncio.run(main())
    assert max_in_window(starts) <= 200
    assert starts[-1][0] - starts[0][0] >= 1.0


@pytest.mark.parametrize(
    ("rate", "kwargs"),
    [(0, {}), (-1, {}), (float("nan"), {}), (float("inf"), {}), (5, {"burst": 0}),
     (5, {"margin": -1})],
)  # fmt: skip
def test_bad_arguments(rate: float, kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        SegmentPacer(rate, **kwargs)  # type: ignore[arg-type]


def test_zero_segments_is_an_error() -> None:
    with pytest.raises(ValueError):
        asyncio.run(SegmentPacer(5).acquire(0))


def test_usable_from_one_event_loop_after_another() -> None:
    clock = FakeClock(0.0)
    p = pacer(2, clock)
    first = run_burst(p, [1, 1, 1])  # contended: the lock was used by that loop
    second = run_burst(p, [1, 1, 1])  # a new asyncio.run: same pacing state
    starts = first + second
    assert max_in_window(starts) <= 2
    assert [round(t, 2) for t, _ in starts] == [0.0, 0.0, round(1 + M, 2), round(1 + M, 2), round(2 + 2 * M, 2), round(2 + 2 * M, 2)]


# --- the rule itself (gateway.rules.pacing): values in, waits out ------------------------------


def test_window_wait_fits_waits_for_the_oldest_or_goes_alone() -> None:
    assert window_wait(5, [], 0, 9) is None  # empty: even an oversized message goes
    assert window_wait(5, [(2, 0.4), (2, 0.7)], 4, 1) is None  # 4 + 1 <= 5
    assert window_wait(5, [(2, 0.4), (2, 0.7)], 4, 3) == 0.4  # once the first 2 have left
    assert window_wait(5, [(2, 0.4), (2, 0.7)], 4, 5) == 0.7  # only when the window is empty
    assert window_wait(5, [(2, 0.4), (2, 0.7)], 4, 9) == 0.7  # oversized: alone


def test_pacing_window_counts_starts_and_refills() -> None:
    rule = PacingWindow(2, margin=0.0)
    assert rule.wait(1, 10.0) == 0.0
    assert rule.wait(1, 10.0) == 0.0
    assert rule.in_window == 2
    wait = rule.wait(1, 10.0)  # the window is full until the first start leaves it
    assert wait == pytest.approx(1.0 + 1e-6)
    assert rule.wait(1, 10.0 + wait) == 0.0
    rule.pause_until(20.0)
    assert rule.wait(1, 15.0) == pytest.approx(5.0)
