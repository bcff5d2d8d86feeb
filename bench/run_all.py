"""`make bench`: the gateway as operators run it, every figure next to its baseline measured
in the same run, the ratio and the goal of issue 16; one table, also written to
bench/results/latest.md with the machine it ran on.

    .venv/bin/python bench/run_all.py [--quick] [--profile] [--strict]
        [--layouts run,systemd] [--databases sqlite,postgresql] [--conversations short,long]
        [--postgres URL]

What is measured, and how: bench/bench_gateway.py. --quick: 5 s wrk runs and 500 SMS (the
whole matrix in about ten minutes) instead of 15 s and 2,000. --profile: one more
`sms311 run` on SQLite with long conversations, py-spy recording from the start of wrk until
the worker has processed every text: bench/results/profile.svg (flame graph) and the top
functions of the request path and of the worker, printed and in latest.md (its figures are
not in the table: the profiler slows the process).

The machine is shared and noisy: read each figure against its baseline, not across runs.
Exit status 1 when a text was lost or a cell failed (with --strict, also when a goal is
missed).

Other benchmarks run alone: bench/bench_loop.py (text -> email and reply -> SMS latency),
bench/bench_pacing.py, bench/bench_matcher.py, bench/bench_console.py,
bench/compare_reply_parsers.py.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_gateway import (
    CONNECTIONS,
    LONG_RESIDENTS,
    LONG_TEXTS,
    MAX_PER_SECOND,
    POSTGRES,
    RESULTS,
    SHORT_RESIDENTS,
    SMS_THREADS,
    Cell,
    Result,
    cells,
    run,
    run_cell,
)
from bench.common import machine

GOAL_RATIO = 0.5
GOAL_P99 = 0.025
GOAL_WEB_CPU_MS = 1.0
GOAL_DRAIN = 500.0
GOAL_RSS = 150 * 2**20
HEADER = ("figure", "layout · database · conversations", "measured", "baseline (same run)",
          "ratio", "goal", "met?")
NAMES = {"run": "`sms311 run`", "systemd": "web + worker", "sqlite": "SQLite",
         "postgresql": "PostgreSQL", "short": "short", "long": f"{LONG_TEXTS} texts"}


def setup(cell: Cell) -> str:
    return " · ".join(NAMES[x] for x in (cell.layout, cell.database, cell.conversations))


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def met(ok: bool | None) -> str:
    return "-" if ok is None else ("yes" if ok else "**no**")


Row = tuple[str, str, str, str, str, str, str]


def rows(results: list[Result]) -> list[Row]:
    """One row per figure per cell, figure by figure."""
    figures: list[list[Row]] = [[] for _ in range(8)]
    for r in results:
        where = setup(r.cell)
        if r.load is None or r.bare is None:
            figures[0].append(("webhook ingest, texts/s", where, "FAILED", "-", "-", "-",
                               "**no**"))
            continue
        g, b = r.load, r.bare
        ratio = g.rate / b.rate if b.rate else 0.0
        figures[0].append((
            f"webhook ingest, texts/s ({CONNECTIONS} conn.)", where, f"{g.rate:,.0f}/s",
            f"{b.rate:,.0f}/s gunicorn -w 2 bare Flask", f"{ratio:.2f}×",
            f"≥ {GOAL_RATIO:g}×", met(ratio >= GOAL_RATIO)))
        figures[1].append((
            "webhook latency p50 / p99", where, f"{ms(g.p50)} / {ms(g.p99)} ms",
            f"{ms(b.p50)} / {ms(b.p99)} ms bare", f"{g.p99 / b.p99:.1f}× (p99)" if b.p99 else "-",
            f"p99 ≤ {GOAL_P99 * 1000:g} ms", met(g.p99 <= GOAL_P99)))
        web = r.web_cpu_ms
        figures[2].append((
            "CPU per text, request path", where, "-" if web is None else f"{web:.2f} ms",
            f"{r.bare_cpu_ms:.2f} ms bare", "-" if web is None else
            f"{web / r.bare_cpu_ms:.1f}×" if r.bare_cpu_ms else "-",
            f"≤ {GOAL_WEB_CPU_MS:g} ms", met(None if web is None else web <= GOAL_WEB_CPU_MS)))
        worker = "-" if r.worker_cpu_ms is None else f"{r.worker_cpu_ms:.2f} ms CPU"
        figures[3].append((
            "worker: texts processed/s (CPU per text)", where,
            f"{r.processed_rate:,.0f}/s ({worker})", f"{g.rate:,.0f}/s ingest",
            f"{r.processed_rate / g.rate:.2f}×" if g.rate else "-", "-", "-"))
        if r.drain_emails:
            figures[4].append((
                "drain, emails/s (CPU per email)", where,
                f"{r.drain_rate:,.0f}/s ({r.drain_cpu_ms:.2f} ms CPU)",
                f"{r.smtp_rate:,.0f}/s ({r.smtp_cpu_ms:.2f} ms) aiosmtplib, 1 connection",
                f"{r.drain_rate / r.smtp_rate:.2f}×" if r.smtp_rate else "-",
                f"≥ {GOAL_DRAIN:g}/s", met(r.drain_rate >= GOAL_DRAIN)))
        if r.sms_count:
            figures[5].append((
                f"SMS sent/s, max_per_second {MAX_PER_SECOND} (CPU per SMS)", where,
                f"{r.sms_rate:,.0f}/s ({r.sms_cpu_ms:.2f} ms CPU)",
                f"{r.twilio_rate:,.0f}/s ({r.twilio_cpu_ms:.2f} ms) twilio library, "
                f"{SMS_THREADS} threads",
                f"{r.sms_rate / r.twilio_rate:.2f}×" if r.twilio_rate else "-", "-", "-"))
        figures[6].append((
            "RSS peak, all processes", where, f"{r.rss_peak / 2**20:.0f} MB",
            f"{r.bare_rss / 2**20:.0f} MB bare (gunicorn -w 2)",
            f"{r.rss_peak / r.bare_rss:.1f}×" if r.bare_rss else "-",
            f"≤ {GOAL_RSS / 2**20:.0f} MB", met(r.rss_peak <= GOAL_RSS)))
        figures[6].append((
            "PSS peak, all processes (shared pages once)", where,
            f"{r.pss_peak / 2**20:.0f} MB", f"{r.bare_pss / 2**20:.0f} MB bare (gunicorn -w 2)",
            f"{r.pss_peak / r.bare_pss:.1f}×" if r.bare_pss else "-",
            f"≤ {GOAL_RSS / 2**20:.0f} MB", met(r.pss_peak <= GOAL_RSS)))
        lost = "; ".join(r.lost)
        figures[7].append((
            "texts lost (count check)", where,
            f"LOST: {lost}" if lost else f"0 of {g.accepted:,} accepted",
            f"{r.processed:,} stored, {r.drain_emails:,} emails", "-", "0", met(not lost)))
    return [row for figure in figures for row in figure]


def table(found: list[Row]) -> str:
    all_rows = [HEADER, *found]
    widths = [max(len(row[i]) for row in all_rows) for i in range(len(HEADER))]

    def line(row: tuple[str, ...]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"

    return "\n".join([line(HEADER), "|" + "|".join("-" * (w + 2) for w in widths) + "|",
                      *(line(row) for row in found)])


def method(seconds: float, sms_count: int) -> str:
    return (
        f"wrk {seconds:g} s per run, {CONNECTIONS} connections, signed Twilio webhooks; short: "
        f"{SHORT_RESIDENTS:,} residents with a city, one text each before the run; long: "
        f"{LONG_RESIDENTS} residents with {LONG_TEXTS} texts each in one open conversation. "
        "Mail server down during ingest; drain timed from the first email to the last at the "
        f"server. SMS: {sms_count:,} replies queued at once. CPU: utime+stime of the gateway's "
        "processes (request path in `sms311 run`: its web server threads); worker CPU per "
        "text includes one failed SMTP attempt per email (the mail server was down). RSS: "
        "summed VmRSS sampled every 100 ms through the cell."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="5 s runs, 500 SMS (noisier)")
    parser.add_argument("--profile", action="store_true",
                        help="also py-spy `sms311 run` (SQLite, long conversations)")
    parser.add_argument("--strict", action="store_true",
                        help="exit status 1 when a goal is missed too")
    parser.add_argument("--layouts", default="run,systemd")
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--conversations", default="short,long")
    parser.add_argument("--postgres", default=POSTGRES,
                        help="a PostgreSQL server URL; each cell makes its own database there")
    parser.add_argument("--seconds", type=float, help="seconds per wrk run")
    parser.add_argument("--sms", type=int, help="SMS per SMS run")
    parser.add_argument("--output", type=Path, default=RESULTS / "latest.md")
    args = parser.parse_args(argv)
    seconds = args.seconds or (5.0 if args.quick else 15.0)
    sms_count = args.sms or (500 if args.quick else 2000)
    selected = cells(args.layouts.split(","), args.databases.split(","),
                     args.conversations.split(","))
    host = machine()
    if "postgresql" in args.databases:
        host["postgresql"] = postgres_version(args.postgres)
    started = time.monotonic()
    results = run(selected, seconds, sms_count, args.postgres)
    profile = ""
    if args.profile:
        print("== profile: `sms311 run` · SQLite · long, py-spy", flush=True)
        RESULTS.mkdir(parents=True, exist_ok=True)
        svg = RESULTS / "profile.svg"
        profiled = run_cell(Cell("run", "sqlite", "long"), seconds, sms_count, args.postgres,
                            profile_to=svg)
        profile = profiled.profile + "".join(f"\nPROBLEM: {p}" for p in profiled.problems)
        profile = f"flame graph: {svg}\n{profile}"
    found = rows(results)
    elapsed = time.monotonic() - started
    machine_text = "\n".join(f"- {k}: {v}" for k, v in host.items())
    problems = [f"- {r.cell.label}: {p}" for r in results for p in r.lost + r.problems]
    report = "\n".join([
        f"# sms311 benchmark ({'quick' if args.quick else 'full'} run, {elapsed:.0f} s)", "",
        table(found), "", method(seconds, sms_count), "", "Machine:", machine_text,
        *(["", "Problems:", *problems] if problems else []),
        *(["", "Profile (py-spy, GIL-holding samples):", "```", profile, "```"]
          if profile else []),
    ])
    print("\n" + report)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(report + "\n", encoding="utf-8")
    print(f"\n(written to {args.output})")
    if problems:
        print("\nERROR: " + ("texts were LOST" if any(r.lost for r in results)
                             else "a cell failed") + ": see Problems above", file=sys.stderr)
        return 1
    missed = any(row[6] == "**no**" for row in found)
    return 1 if missed and args.strict else 0


def postgres_version(url: str) -> str:
    try:
        import psycopg

        with psycopg.connect(url, autocommit=True) as db:
            version = db.execute("SHOW server_version").fetchone()
            fsync = db.execute("SHOW fsync").fetchone()
            commit = db.execute("SHOW synchronous_commit").fetchone()
        return (f"{version[0] if version else '?'} on {url.rsplit('@', 1)[-1]}, fsync "
                f"{fsync[0] if fsync else '?'}, synchronous_commit {commit[0] if commit else '?'}")
    except Exception as exc:
        return f"unreachable ({exc})"


if __name__ == "__main__":
    sys.exit(main())
