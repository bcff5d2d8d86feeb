"""`make bench`: every performance figure of the gateway next to a baseline measured in the
same run, its target, and whether it is met; one table at the end.

    .venv/bin/python bench/run_all.py [--quick] [--profile]

The figures (each script also runs alone, with more options and detail):

1. webhook ingest (bench/bench_webhook.py): requests/s and p99 at 16 connections, wrk with
   pre-signed requests, vs a bare Flask endpoint on the same server;
2. text -> email, 3. reply -> SMS, 6. memory (bench/bench_loop.py): through `sms311 run`
   with an aiosmtpd server, a real Dovecot, the SMTP ingress and the fake Twilio API;
4. outbound pacing (bench/bench_pacing.py): the pacer alone, and end to end through the
   dispatcher to the fake Twilio API;
5. the matcher on the full census directory (bench/bench_matcher.py);
7. the console's list and conversation pages at 100,000 conversations (bench/bench_console.py),
   p99 next to /healthz on the same server.

The machine is shared and noisy: compare each figure with its baseline, not across runs.
Exit status 0 (with --strict: 1 when a target is missed; the table says which).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import bench_console, bench_loop, bench_matcher, bench_pacing, bench_webhook
from bench.common import REPO, Figure

HEADER = ("figure", "measured", "baseline (same run)", "ratio", "target", "met?")


def webhook(seconds: float, profile: bool) -> list[Figure]:
    folder = Path(tempfile.mkdtemp(prefix="sms311-bench-webhook-"))
    try:
        [(result, problems)] = bench_webhook.run(
            folder, ["production"], seconds, 16, 0, profile
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    g, b = result.gateway, result.bare
    note = "INVALID: " + "; ".join(problems) if problems else (
        f"{result.committed} texts committed, each with its outbox row")
    return [
        Figure("webhook ingest, texts/s at 16 connections", f"{g.rate:.0f}/s",
               f"{b.rate:.0f}/s (bare Flask, same server)", f"{result.ratio:.2f}",
               f">= {bench_webhook.TARGET_RATIO:g}",
               result.ratio >= bench_webhook.TARGET_RATIO and not problems, note),
        Figure("webhook ingest p99 at 16 connections", f"{g.p99 * 1000:.1f} ms",
               f"{b.p99 * 1000:.1f} ms (bare Flask)", f"{g.p99 / b.p99:.1f}x",
               f"< {bench_webhook.TARGET_P99 * 1000:g} ms",
               g.p99 < bench_webhook.TARGET_P99 and not problems,
               f"p50 {g.p50 * 1000:.1f} ms"),
    ]


def pacing(seconds: float) -> list[Figure]:
    rate = 50.0
    figures = []
    granted, _arrived, _ = asyncio.run(
        bench_pacing.run(rate, seconds, 8, [1, 1, 1, 1, 2, 2, 3], None))
    peak = bench_pacing.max_in_window(granted)
    ratio = bench_pacing.sustained_rate(granted) / rate
    figures.append(Figure(
        f"pacing, pacer alone: max segments/1 s window at {rate:g}/s", f"{peak}",
        f"{rate:g} (max_per_second)", f"{peak / rate:.2f}", f"<= {rate:g}", peak <= rate,
        "1-3 segment mix, 8 senders"))
    figures.append(Figure(
        "pacing, pacer alone: sustained rate with a backlog", f"{ratio * rate:.1f}/s",
        f"{rate:g}/s", f"{ratio:.3f}", f">= {bench_pacing.TARGET_RATIO:g}",
        ratio >= bench_pacing.TARGET_RATIO))
    folder = Path(tempfile.mkdtemp(prefix="sms311-bench-pacing-"))
    try:
        peak, ratio, count = bench_pacing.end_to_end(rate, seconds * 1.5, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    figures.append(Figure(
        "pacing e2e at the provider: max segments/1 s window", f"{peak}",
        f"{rate:g} (max_per_second)", f"{peak / rate:.2f}", f"<= {rate:g}", peak <= rate,
        f"{count} replies (1-3 segments) through the dispatcher to FakeTwilio"))
    figures.append(Figure(
        "pacing e2e at the provider: sustained rate", f"{ratio * rate:.1f}/s",
        f"{rate:g}/s", f"{ratio:.3f}", f">= {bench_pacing.TARGET_RATIO:g}",
        ratio >= bench_pacing.TARGET_RATIO))
    return figures


def matcher() -> list[Figure]:
    from tests.paths import data_file

    census = data_file("municipalities", "ocd_division_ids_ca", "derived_csd_with_province.csv")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        worst, baseline = bench_matcher.run(census, REPO / "municipality_map.yaml", rounds=5)
    print(out.getvalue(), end="")
    size = out.getvalue().split("directory: ", 1)[1].split(" ", 1)[0]
    return [Figure(
        f"matcher p99 per lookup, full census ({size} entries)", f"{worst * 1e6:.0f} µs",
        f"{baseline * 1e6:.1f} µs (dict lookup)", f"{worst / baseline:.0f}x",
        f"< {bench_matcher.TARGET_P99_MS * 1000:g} µs", worst * 1000 < bench_matcher.TARGET_P99_MS,
        "worst kind (exact, typo, ambiguous, province, postal, garbage)")]


def table(figures: list[Figure]) -> str:
    rows = [HEADER] + [
        (f.name, f.measured, f.baseline, f.ratio, f.target,
         "-" if f.met is None else ("yes" if f.met else "NO")) for f in figures]
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADER))]

    def line(row: tuple[str, ...]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"

    out = [line(rows[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(row) for row in rows[1:]]
    notes = [f"- {f.name}: {f.note}" for f in figures if f.note]
    return "\n".join([*out, "", *notes])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="shorter runs (noisier)")
    parser.add_argument("--profile", action="store_true", help="py-spy the webhook run")
    parser.add_argument("--strict", action="store_true",
                        help="exit status 1 when a target is missed (default: 0, the table says)")
    args = parser.parse_args(argv)
    seconds = 5.0 if args.quick else 10.0
    started = time.monotonic()
    figures: list[Figure] = []
    sections = [
        ("matcher", matcher),
        ("pacing", lambda: pacing(seconds / 2)),
        ("webhook ingest", lambda: webhook(seconds, args.profile)),
        ("the loop through sms311 run", lambda: loop(seconds)),
        ("the console at 100,000 conversations", lambda: console(args.quick)),
    ]
    for name, section in sections:
        print(f"== {name}", flush=True)
        figures += section()
    print(f"\n== sms311 benchmarks ({time.monotonic() - started:.0f} s, "
          f"{'quick' if args.quick else 'full'} run)\n")
    print(table(figures))
    missed = [f.name for f in figures if f.met is False]
    return 1 if missed and args.strict else 0


def console(quick: bool) -> list[Figure]:
    folder = Path(tempfile.mkdtemp(prefix="sms311-bench-console-"))
    try:
        return bench_console.run(100_000, 50 if quick else 200, None, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def loop(seconds: float) -> list[Figure]:
    figures, notes = bench_loop.run(seconds, 30)
    if notes:
        print(notes)
        figures.append(Figure("sms311 run: clean stop, no traceback", "no", "-", "-", "yes",
                              False, notes[:300]))
    return figures


if __name__ == "__main__":
    sys.exit(main())
