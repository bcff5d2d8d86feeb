"""SegmentPacer with the real clock: never above the rate, and close to it.

    .venv/bin/python bench/bench_pacing.py [--rate 50] [--seconds 5] [--senders 8] [--burst B]

Several sender tasks share one pacer, each with an endless backlog, for `--seconds`:
one run with one-segment texts, one with a realistic mix of 1–3 segment replies.
After each acquire a sender "sends" (sleeps 0–3 ms, like a request on its way to the
API) and records when its message would arrive. Printed per run:

- max/window: the most segments granted in any sliding 1-second window (must not
  exceed the rate), and the same for the arrival times (jitter included);
- throughput: the sustained rate, as a ratio to the rate (target >= 0.95): the slope
  of a least-squares line through (grant time, segments granted so far), which does
  not depend on where the run's start and end fall in the pacer's 1-second cycle.

Exit status 0 when every run meets both targets, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.store.pacing import SegmentPacer
from tests.fake_twilio import max_in_window  # the same window count the tests use

TARGET_RATIO = 0.95


def sustained_rate(events: Sequence[tuple[float, int]]) -> float:
    """Segments per second: the slope of cumulative segments over time."""
    times: list[float] = []
    totals: list[float] = []
    total = 0
    for moment, segments in sorted(events):
        total += segments
        times.append(moment)
        totals.append(total - segments / 2)  # the middle of this message's segments
    return statistics.linear_regression(times, totals).slope


async def run(
    rate: float, seconds: float, senders: int, mix: Sequence[int], burst: float | None
) -> tuple[list[tuple[float, int]], list[tuple[float, int]], float]:
    pacer = SegmentPacer(rate, burst=burst)
    granted: list[tuple[float, int]] = []
    arrived: list[tuple[float, int]] = []
    rng = random.Random(311)
    start = time.monotonic()
    end = start + seconds

    async def sender() -> None:
        while True:
            segments = rng.choice(mix)
            at = await pacer.acquire(segments)
            if at >= end:
                return
            granted.append((at, segments))
            await asyncio.sleep(rng.uniform(0, 0.003))
            arrived.append((time.monotonic(), segments))

    await asyncio.gather(*(sender() for _ in range(senders)))
    return granted, arrived, start


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--senders", type=int, default=8)
    parser.add_argument("--burst", type=float, default=None)
    args = parser.parse_args(argv)
    if args.seconds < 2:
        parser.error("--seconds must be at least 2")

    ok = True
    print(f"rate {args.rate:g} segments/s, {args.seconds:g} s, {args.senders} senders")
    runs = {"1-segment texts": [1], "mixed replies (1-3)": [1, 1, 1, 1, 2, 2, 3]}
    for name, mix in runs.items():
        granted, arrived, _ = asyncio.run(
            run(args.rate, args.seconds, args.senders, mix, args.burst)
        )
        peak = max_in_window(granted)
        peak_arrived = max_in_window(arrived)
        ratio = sustained_rate(granted) / args.rate
        good = peak <= args.rate and ratio >= TARGET_RATIO
        ok = ok and good
        print(
            f"  {name:<22} max/window {peak:>5} (arrivals {peak_arrived:>5}) "
            f"throughput {ratio:.3f} of the rate  {'OK' if good else 'FAIL'}"
        )
    print(f"target: max/window <= rate, throughput >= {TARGET_RATIO}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())


# -- end to end: the dispatcher of `sms311 run` against the fake Twilio API ---------------

SEGMENT_BODIES = {
    1: "Your request was received; a crew will be there this week.",
    2: "Thanks for your message. " + "The crew has scheduled the repair for Thursday. " * 4,
    3: "Update on your request: " + "the contractor will close the lane while working. " * 7,
}


def end_to_end(rate: float, seconds: float, folder: Path) -> tuple[int, float, int]:
    """A backlog of `rate * seconds` segments (1-3 segment replies to distinct residents)
    queued in the outbox, then `sms311 run` started with `sms.max_per_second: rate`,
    sending to tests/fake_twilio.py's FakeTwilio. Returns (most segments that arrived in
    any 1-second window, sustained rate / `rate`, messages)."""
    from datetime import UTC, datetime

    from gateway.rules.segments import count_segments
    from gateway.store import open_store
    from tests.loop import Loop, wait_for

    loop = Loop(folder, max_per_second=rate, start=False)
    try:
        rng = random.Random(311)
        store = open_store(loop.settings.database)
        total = count = 0
        with store.transaction() as tx:
            while total < rate * seconds:
                body = SEGMENT_BODIES[rng.choice([1, 1, 1, 1, 2, 2, 3])]
                tx.enqueue("sms", {"to": f"+1613555{count:04d}", "body": body, "part": 1,
                                   "parts": 1, "queued_at": datetime.now(UTC).isoformat()})
                total += count_segments(body)
                count += 1
        store.close()
        loop.start()
        wait_for(lambda: len(loop.api.messages) >= count, "the backlog at the provider",
                 seconds * 3 + 30)
        arrivals = loop.api.arrivals
    finally:
        loop.stop()
    return loop.api.max_in_window(), sustained_rate(arrivals) / rate, count
