"""The whole loop through `sms311 run`, with real parts: latency and memory.

    .venv/bin/python bench/bench_loop.py [--seconds 10] [--replies 30]

Around one `sms311 run` process: an aiosmtpd mail server (tests/loop.py's MailServer,
timestamping each email), the fake Twilio API (tests/fake_twilio.py, timestamping each
SMS), a real Dovecot (tests/dovecot.py) for IMAP IDLE, and the gateway's SMTP reply
ingress. Measured (every figure next to a baseline measured in the same run):

- text -> email: signed webhooks at 20 texts/s (open loop) from known residents, until
  each email reaches the mail server; baseline: aiosmtplib sending a same-size email
  straight to the same server, at the same rate;
- reply -> SMS: agents' replies APPENDed to Dovecot (IMAP IDLE) or sent to the SMTP
  ingress, until the SMS request reaches the provider; baselines: a raw APPEND -> IDLE
  notification (another IMAP client idling on a mailbox of its own), a direct SMTP send;
- memory: the RSS of the `sms311 run` process (and any children), sampled all along and
  under a wrk burst at 16 connections (texts -> emails flowing); baseline: right after start.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import smtplib
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import REPO, Figure, env, fmt_ms, percentile, rss_bytes
from tests.dovecot import Dovecot
from tests.gateway_fixtures import free_port
from tests.loop import Collector, Loop, agent_reply, body_text, wait_for

TEXT_RATE = 20.0
TARGET_TEXT_P99 = 0.100
TARGET_IMAP_P99 = 1.0
TARGET_INGRESS_P99 = 0.100
TARGET_RSS = 150 * 2**20
MARK = re.compile(r"\[bench (\d+)\]")


class TimedCollector(Collector):
    """The test suite's collector, noting when each email arrived."""

    def __init__(self) -> None:
        super().__init__()
        self.arrivals: dict[int, float] = {}

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        now = time.monotonic()
        found = MARK.findall(envelope.content.decode("utf-8", "replace"))
        answer = await super().handle_DATA(server, session, envelope)
        for mark in found:
            self.arrivals.setdefault(int(mark), now)
        return answer


@dataclass
class Samples:
    latencies: list[float] = field(default_factory=list)
    lost: int = 0

    @property
    def p50(self) -> float:
        return percentile(self.latencies, 0.50)

    @property
    def p99(self) -> float:
        return percentile(self.latencies, 0.99)


class MemoryWatch:
    """Samples the RSS of a process tree every 50 ms in a thread."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, rss_bytes(self.pid))

    def __enter__(self) -> MemoryWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def open_loop(count: int, rate: float, send: Callable[[int], None]) -> dict[int, float]:
    """Call send(i) for i < count at `rate` per second (a pool, so a slow call does not
    delay the schedule); returns when each call started."""
    started: dict[int, float] = {}
    begin = time.monotonic() + 0.05
    with ThreadPoolExecutor(8) as pool:
        futures = []
        for i in range(count):
            delay = begin + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            started[i] = time.monotonic()
            futures.append(pool.submit(send, i))
        for future in futures:
            future.result()
    return started


def latencies(started: dict[int, float], arrived: dict[int, float]) -> Samples:
    samples = Samples()
    for i, at in started.items():
        if i in arrived:
            samples.latencies.append(arrived[i] - at)
        else:
            samples.lost += 1
    return samples


# -- text -> email -----------------------------------------------------------------------


def seed_residents(loop: Loop, count: int) -> list[str]:
    """`count` residents of Ottawa, each through the real dialogue; their numbers."""
    numbers = [f"613-555-{2000 + i:04d}" for i in range(count)]
    for number in numbers:
        loop.text(number, "Pothole on Bank St")
        loop.text(number, "Ottawa")
    wait_for(lambda: len(loop.collector.messages) >= count, "the seeding emails", 60)
    return numbers


def text_to_email(loop: Loop, numbers: list[str], seconds: float, base: int) -> Samples:
    from gateway.run.sandbox import twilio_form
    from gateway.sms.twilio.signature import TwilioSignature

    collector = loop.collector
    assert isinstance(collector, TimedCollector)
    signature = TwilioSignature(loop.settings.sms.auth_token, loop.settings.public_url)
    session = threading.local()
    url = f"http://127.0.0.1:{loop.web_port}/sms/inbound"

    def send(i: int) -> None:
        if not hasattr(session, "s"):
            session.s = requests.Session()
        form = twilio_form(loop.settings, numbers[i % len(numbers)],
                           f"Streetlight out at King and Queen since Monday [bench {base + i}]")
        response = session.s.post(url, data=form, timeout=10, headers={
            "X-Twilio-Signature": signature.sign("/sms/inbound", "", form)})
        response.raise_for_status()

    count = int(seconds * TEXT_RATE)
    started = open_loop(count, TEXT_RATE, send)
    started = {base + i: at for i, at in started.items()}
    wait_for(lambda: all(i in collector.arrivals for i in started), "the emails", 30)
    return latencies(started, collector.arrivals)


def smtp_baseline(loop: Loop, seconds: float, base: int) -> Samples:
    """aiosmtplib straight to the same mail server, a same-size email, same rate."""
    import aiosmtplib

    collector = loop.collector
    assert isinstance(collector, TimedCollector)
    template = collector.messages[-1]
    count = int(seconds * TEXT_RATE)
    started: dict[int, float] = {}

    async def run() -> None:
        begin = time.monotonic() + 0.05
        tasks = []

        async def one(i: int) -> None:
            message = EmailMessage()
            for name in ("From", "To", "Subject", "Reply-To"):
                message[name] = str(template[name])
            message.set_content(body_text(template) + f"\n[bench {base + i}]\n")
            started[base + i] = time.monotonic()
            await aiosmtplib.send(message, hostname="127.0.0.1", port=loop.smtp.port)

        for i in range(count):
            await asyncio.sleep(max(0.0, begin + i / TEXT_RATE - time.monotonic()))
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)

    asyncio.run(run())
    wait_for(lambda: all(i in collector.arrivals for i in started), "the baseline emails", 30)
    return latencies(started, collector.arrivals)


# -- reply -> SMS ------------------------------------------------------------------------


def sms_arrivals(loop: Loop) -> dict[int, float]:
    arrived: dict[int, float] = {}
    for (at, _segments), message in zip(loop.api.arrivals, loop.api.messages, strict=False):
        for mark in MARK.findall(message.get("Body", "")):
            arrived.setdefault(int(mark), at)
    return arrived


def replies_via_imap(loop: Loop, dovecot: Dovecot, emails: list[EmailMessage], count: int,
                     base: int) -> Samples:
    client = dovecot.client()
    started: dict[int, float] = {}
    try:
        for i in range(count):
            raw = agent_reply(emails[i % len(emails)], f"A crew is on the way [bench {base + i}]")
            started[base + i] = time.monotonic()
            typ, _ = client.append("INBOX", "", None, raw)
            assert typ == "OK"
            time.sleep(0.3)
    finally:
        client.logout()
    wait_for(lambda: all(i in sms_arrivals(loop) for i in started), "the SMS (IMAP)", 30)
    return latencies(started, sms_arrivals(loop))


def imap_baseline(dovecot: Dovecot, emails: list[EmailMessage], count: int) -> Samples:
    """APPEND (as above) -> the EXISTS that another client, idling, is told about."""
    watcher = dovecot.client()
    writer = dovecot.client()
    samples = Samples()
    try:
        watcher.create("Bench")
        watcher.select("Bench")
        for i in range(count):
            raw = agent_reply(emails[i % len(emails)], f"baseline {i}")
            tag = watcher._new_tag()  # type: ignore[attr-defined]
            watcher.send(tag + b" IDLE\r\n")
            if not watcher.readline().startswith(b"+"):
                raise RuntimeError("IDLE refused")
            start = time.monotonic()
            writer.append("Bench", "", None, raw)
            while b"EXISTS" not in watcher.readline():
                pass
            samples.latencies.append(time.monotonic() - start)
            watcher.send(b"DONE\r\n")
            while not watcher.readline().startswith(tag):
                pass
            time.sleep(0.05)
    finally:
        with contextlib.suppress(Exception):
            watcher.logout()
        writer.logout()
    return samples


def replies_via_ingress(loop: Loop, port: int, emails: list[EmailMessage], count: int,
                        base: int) -> Samples:
    started: dict[int, float] = {}
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        for i in range(count):
            to = emails[i % len(emails)]
            raw = agent_reply(to, f"Fixed this morning [bench {base + i}]")
            started[base + i] = time.monotonic()
            client.sendmail("jane@ottawa.example", [to["Reply-To"].addresses[0].addr_spec], raw)
            time.sleep(0.1)
    wait_for(lambda: all(i in sms_arrivals(loop) for i in started), "the SMS (SMTP)", 30)
    return latencies(started, sms_arrivals(loop))


def smtp_direct_baseline(loop: Loop, emails: list[EmailMessage], count: int,
                         base: int) -> Samples:
    collector = loop.collector
    assert isinstance(collector, TimedCollector)
    started: dict[int, float] = {}
    with smtplib.SMTP("127.0.0.1", loop.smtp.port, timeout=10) as client:
        for i in range(count):
            to = emails[i % len(emails)]
            raw = agent_reply(to, f"Fixed this morning [bench {base + i}]")
            started[base + i] = time.monotonic()
            client.sendmail("jane@ottawa.example", ["reply@gateway.example"], raw)
            time.sleep(0.1)
    wait_for(lambda: all(i in collector.arrivals for i in started), "the direct SMTP", 30)
    return latencies(started, collector.arrivals)


# -- memory under load -------------------------------------------------------------------


def run(seconds: float, replies: int) -> tuple[list[Figure], str]:
    folder = Path(tempfile.mkdtemp(prefix="sms311-bench-loop-"))
    dovecot = Dovecot(folder).start()
    ingress_port = free_port()
    loop = Loop(folder, dovecot, ingress_port, mail_up=False, start=False, max_per_second=100)
    loop.smtp.collector = loop.collector = TimedCollector()
    loop.smtp.start()
    figures: list[Figure] = []
    notes: list[str] = []
    try:
        loop.start()
        assert loop.process is not None
        pid = loop.process.pid
        time.sleep(1.0)
        idle_rss = rss_bytes(pid)
        with MemoryWatch(pid) as memory:
            numbers = seed_residents(loop, 10)
            emails = list(loop.collector.messages)

            texts = text_to_email(loop, numbers, seconds, base=0)
            direct = smtp_baseline(loop, seconds, base=100_000)
            figures.append(Figure(
                f"text -> email p99 at {TEXT_RATE:g}/s ({len(texts.latencies)} texts)",
                fmt_ms(texts.p99), f"{fmt_ms(direct.p99)} (direct aiosmtplib)",
                f"{texts.p99 / direct.p99:.1f}x", f"< {TARGET_TEXT_P99 * 1000:g} ms",
                texts.p99 < TARGET_TEXT_P99 and texts.lost == 0,
                f"p50 {fmt_ms(texts.p50)}, lost {texts.lost}"))

            imap = replies_via_imap(loop, dovecot, emails, replies, base=200_000)
            raw_idle = imap_baseline(dovecot, emails, replies)
            figures.append(Figure(
                f"reply -> SMS p99, IMAP IDLE ({len(imap.latencies)} replies)",
                fmt_ms(imap.p99), f"{fmt_ms(raw_idle.p99)} (APPEND -> IDLE EXISTS)",
                f"{imap.p99 / raw_idle.p99:.1f}x", f"< {TARGET_IMAP_P99 * 1000:g} ms",
                imap.p99 < TARGET_IMAP_P99 and imap.lost == 0,
                f"p50 {fmt_ms(imap.p50)}, lost {imap.lost}"))

            ingress = replies_via_ingress(loop, ingress_port, emails, replies, base=300_000)
            smtp_direct = smtp_direct_baseline(loop, emails, replies, base=400_000)
            figures.append(Figure(
                f"reply -> SMS p99, SMTP ingress ({len(ingress.latencies)} replies)",
                fmt_ms(ingress.p99), f"{fmt_ms(smtp_direct.p99)} (direct SMTP send)",
                f"{ingress.p99 / smtp_direct.p99:.1f}x",
                f"< {TARGET_INGRESS_P99 * 1000:g} ms",
                ingress.p99 < TARGET_INGRESS_P99 and ingress.lost == 0,
                f"p50 {fmt_ms(ingress.p50)}, lost {ingress.lost}"))

            burst = load_burst(loop, numbers, folder, 5.0)
            drained = wait_drained(loop, 30.0)
        figures.append(Figure(
            "memory: sms311 run RSS, peak under load", f"{memory.peak / 2**20:.0f} MB",
            f"{idle_rss / 2**20:.0f} MB (idle, after start)",
            f"{memory.peak / idle_rss:.2f}x", f"< {TARGET_RSS / 2**20:.0f} MB",
            memory.peak < TARGET_RSS,
            f"incl. a 5 s wrk burst of {burst} texts at 16 connections"
            + ("" if drained else " (outbox not drained in 30 s)")))
    finally:
        output = loop.stop()
        dovecot.close()
    status = loop.process.returncode if loop.process is not None else None
    if status != 0:
        notes.append(f"sms311 run exited {status} on SIGTERM")
    if "Traceback" in output:
        notes.append("the gateway logged a traceback: " + output.split("Traceback", 1)[1][:800])
    return figures, "\n".join(notes)


def load_burst(loop: Loop, numbers: list[str], folder: Path, seconds: float) -> int:
    """wrk, 16 connections, pre-signed texts from the seeded residents; the texts sent."""
    from gateway.rules.phone import normalise_number
    from gateway.run.sandbox import twilio_form
    from gateway.sms.twilio.signature import TwilioSignature

    signature = TwilioSignature(loop.settings.sms.auth_token, loop.settings.public_url)
    path = folder / "burst.tsv"
    with path.open("w", encoding="utf-8") as out:
        for i in range(int(seconds * 1500)):
            number = normalise_number(numbers[i % len(numbers)], "CA")
            form = twilio_form(loop.settings, number, f"Burst text number {i}, please ignore")
            out.write(f"/sms/inbound\t{signature.sign('/sms/inbound', '', form)}\t"
                      f"{urllib.parse.urlencode(form)}\n")
    result = subprocess.run(
        ["wrk", "-t1", "-c16", f"-d{seconds:g}s", "--timeout", "5s",
         "-s", str(REPO / "bench" / "webhook.lua"), f"http://127.0.0.1:{loop.web_port}"],
        env=env(SMS311_REQUESTS=str(path)), capture_output=True, text=True, check=True,
    )
    line = next(x for x in result.stdout.splitlines() if x.startswith("WRKJSON "))
    return int(re.search(r'"requests": (\d+)', line).group(1))  # type: ignore[union-attr]


def wait_drained(loop: Loop, timeout: float) -> bool:
    from gateway.store import open_store

    store = open_store(loop.settings.database)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if store.outbox_stats()["depth"] == 0:
                return True
            time.sleep(0.2)
        return False
    finally:
        store.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=10.0, help="text -> email run")
    parser.add_argument("--replies", type=int, default=30, help="replies per path")
    args = parser.parse_args(argv)
    figures, notes = run(args.seconds, args.replies)
    for f in figures:
        print(f"{f.name:<48} {f.measured:>10} {f.baseline:>34} {f.ratio:>7} {f.target:>9} "
              f"{'yes' if f.met else 'NO'}  {f.note}")
    if notes:
        print(notes)
    return 0 if all(f.met for f in figures) and not notes else 1


if __name__ == "__main__":
    sys.exit(main())
