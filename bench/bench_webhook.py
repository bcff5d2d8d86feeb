"""Webhook ingest: signed, validated, committed and acknowledged texts per second.

    .venv/bin/python bench/bench_webhook.py [--seconds 10] [--connections 16]
        [--servers production,waitress-t8,…] [--profile]

For each server: the same wrk load (pre-signed Twilio requests, each with its own
MessageSid and a realistic body, from residents whose municipality is already known, so
each one is a full commit: message, conversation touch, thread header, outbox row) against

- the bare endpoint: a Flask app whose POST /sms/inbound does nothing (the baseline), and
- the gateway's real `POST /sms/inbound` (`sms311 web` for the "production" server),

then checks that every 200 left its row in the outbox. Prints requests/s, p50/p99 and the
ratio gateway/bare. `--profile` runs py-spy (GIL-holding samples) against the gateway during
its run and prints the top frames.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.parse
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (
    PYTHON,
    REPO,
    db_upgrade,
    env,
    rss_bytes,
    stop,
    wait_http,
)
from tests.gateway_fixtures import AUTH_TOKEN, free_port, write_settings

TARGET_RATIO = 0.8
TARGET_P99 = 0.020
CITIES = ["ottawa", "toronto", "montreal", "calgary", "vancouver", "halifax", "gatineau",
          "winnipeg", "edmonton", "quebec", "laval", "mississauga"]
BODIES = [
    "There is a pothole on Bank St at Gladstone, it is getting bigger every day",
    "Garbage was not picked up on our street this week (Elm Ave, 200 block)",
    "Streetlight out at the corner of King and Queen since Monday night",
    "Il y a un nid de poule devant le 123 rue Principale, c'est dangereux pour les vélos",
    "The recycling bin was damaged by the truck this morning. Can I get a new one?",
    "Water main break? Lots of water coming up through the road on 5th Ave near the school.",
    "Graffiti on the bus shelter at Main & 3rd",
    "Le déneigement n'a pas été fait dans notre rue depuis deux jours",
    "Noise complaint: construction starting at 5am every day this week on Oak Street. "
    "It is well before the allowed hours and the whole block is being woken up.",
    "Dead raccoon on the sidewalk in front of 42 Maple Crescent",
    "Thanks for fixing the light so quickly!",
    "Tree branch hanging over the bike path near the river, looks like it could fall",
]


def twilio_form(number: str, body: str, to: str = "31100") -> dict[str, str]:
    """What Twilio really posts for an inbound SMS (every field it sends)."""
    sid = "SM" + uuid.uuid4().hex
    return {
        "ToCountry": "CA", "ToState": "ON", "SmsMessageSid": sid, "NumMedia": "0",
        "ToCity": "", "FromZip": "", "SmsSid": sid, "FromState": "ON",
        "SmsStatus": "received", "FromCity": "OTTAWA", "Body": body, "FromCountry": "CA",
        "To": to, "MessagingServiceSid": "MG" + "1" * 32, "ToZip": "", "NumSegments": "1",
        "ReferralNumMedia": "0", "MessageSid": sid, "AccountSid": "AC" + "0" * 32,
        "From": number, "ApiVersion": "2010-04-01",
    }


@dataclass
class Prepared:
    folder: Path
    config: Path
    database: Path
    port: int
    requests_file: Path
    requests: int
    used: int = 0  # requests already sent to a gateway (never sent twice)


def prepare(folder: Path, requests: int, residents: int = 1000) -> Prepared:
    """Settings, a migrated database with `residents` known residents (each already with an
    open conversation), and a file of `requests` pre-signed webhook requests."""
    from gateway.app import Gateway
    from gateway.settings import load_settings
    from gateway.sms.base import InboundText
    from gateway.sms.twilio.signature import TwilioSignature
    from gateway.store import Resident

    port = free_port()
    map_text = (REPO / "municipality_map.yaml").read_text(encoding="utf-8")
    config = write_settings(
        folder, web_port=port, public_url=f"http://127.0.0.1:{port}",
        municipality_map=map_text, smtp_port=free_port(),
    )
    db_upgrade(config)
    settings = load_settings(config, environ={})
    gateway = Gateway.from_settings(settings)
    rng = random.Random(311)
    numbers = [f"+1613555{i:04d}" for i in range(residents)]
    with gateway.store.transaction() as tx:
        for i, number in enumerate(numbers):
            tx.save_resident(Resident(phone=number, municipality_id=CITIES[i % len(CITIES)]))
    for number in numbers:  # one text each: every resident has an open conversation
        gateway.inbound.handle(InboundText(
            sid="SM" + uuid.uuid4().hex, phone=number, to="31100", body=rng.choice(BODIES),
            received_at=datetime.now(UTC),
        ))
    gateway.close()
    signature = TwilioSignature(AUTH_TOKEN, settings.public_url)
    path = folder / "requests.tsv"
    with path.open("w", encoding="utf-8") as out:
        for i in range(requests):
            form = twilio_form(numbers[i % residents], rng.choice(BODIES))
            out.write(f"/sms/inbound\t{signature.sign('/sms/inbound', '', form)}\t"
                      f"{urllib.parse.urlencode(form)}\n")
    database = Path(settings.database.removeprefix("sqlite:///"))
    return Prepared(folder, config, database, port, path, requests)


@dataclass
class Load:
    requests: int
    seconds: float
    non_2xx: int
    socket_errors: int
    p50: float
    p90: float
    p99: float
    max: float

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


def wrk(port: int, requests_file: Path, seconds: float, connections: int, skip: int = 0) -> Load:
    """A wrk run on the requests of `requests_file` after the first `skip`."""
    result = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "5s",
         "-s", str(REPO / "bench" / "webhook.lua"), f"http://127.0.0.1:{port}"],
        env=env(SMS311_REQUESTS=str(requests_file), SMS311_SKIP=str(skip)),
        capture_output=True, text=True, check=True,
    )
    line = next(x for x in result.stdout.splitlines() if x.startswith("WRKJSON "))
    data = json.loads(line.removeprefix("WRKJSON "))
    return Load(
        requests=data["requests"], seconds=data["duration_us"] / 1e6,
        non_2xx=data["status_errors"],
        socket_errors=data["connect"] + data["read"] + data["write"] + data["timeout"],
        p50=data["p50_us"] / 1e6, p90=data["p90_us"] / 1e6, p99=data["p99_us"] / 1e6,
        max=data["max_us"] / 1e6,
    )


def start_server(server: str, app: str, prepared: Prepared, log: Path) -> subprocess.Popen[bytes]:
    """The app served by `server`; "production" + "gateway" is `sms311 web` itself."""
    with log.open("ab") as out:
        if server == "production" and app == "gateway":
            argv = [PYTHON, "-m", "gateway", "--config", str(prepared.config), "web"]
        else:
            argv = [PYTHON, str(REPO / "bench" / "serve.py"), server, app, str(prepared.port)]
        process = subprocess.Popen(
            argv, cwd=REPO, env=env(GATEWAY_CONFIG=str(prepared.config)),
            stdout=out, stderr=subprocess.STDOUT,
        )
    wait_http(f"http://127.0.0.1:{prepared.port}/sms/inbound", method="POST")
    return process


def outbox_rows(database: Path) -> int:
    with sqlite3.connect(database) as db:
        return int(db.execute("SELECT count(*) FROM outbox").fetchone()[0])


@dataclass
class Result:
    server: str
    bare: Load
    gateway: Load
    committed: int
    rss: int
    profile: str = ""

    @property
    def ratio(self) -> float:
        return self.gateway.rate / self.bare.rate


def profile_summary(raw: Path, top: int = 18) -> str:
    """Top frames of a py-spy raw (collapsed) profile: by own time and by inclusive time."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [_short(f) for f in stack.split(";")]
        frames = [f for f in frames if f]
        if not frames:
            continue
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    lines = [f"py-spy: {total} samples holding the GIL"]
    lines.append("  own time (self):")
    lines += [f"    {n / total:6.1%}  {f}" for f, n in own.most_common(top)]
    lines.append("  inclusive (in the stack):")
    lines += [f"    {n / total:6.1%}  {f}" for f, n in inclusive.most_common(top + 12)]
    return "\n".join(lines)


def _short(frame: str) -> str:
    """'handle (gateway/flows/text_in.py:97)' -> 'handle (gateway/flows/text_in.py)'."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "/lib/python3.11/", str(REPO) + "/"):
        if marker in where:
            where = where.split(marker, 1)[1]
    if name.startswith("process ") or name.startswith("thread "):
        return ""
    return f"{name} ({where})"


def measure(
    server: str, prepared: Prepared, seconds: float, connections: int, profile: bool
) -> Result:
    logs = prepared.folder
    bare_process = start_server(server, "bare", prepared, logs / f"{server}-bare.log")
    try:
        wrk(prepared.port, prepared.requests_file, 1, connections)  # warm-up
        bare = wrk(prepared.port, prepared.requests_file, seconds, connections)
    finally:
        stop(bare_process)
    before = outbox_rows(prepared.database)
    process = start_server(server, "gateway", prepared, logs / f"{server}-gateway.log")
    spy: subprocess.Popen[bytes] | None = None
    raw = logs / f"{server}.pyspy.txt"
    try:
        if profile:
            spy = subprocess.Popen(
                [str(Path(PYTHON).parent / "py-spy"), "record", "--gil", "--subprocesses",
                 "-r", "250", "-f", "raw", "-o", str(raw), "-d", str(int(seconds)),
                 "-p", str(process.pid)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
        load = wrk(prepared.port, prepared.requests_file, seconds, connections, prepared.used)
        prepared.used += load.requests + connections
        rss = rss_bytes(process.pid)
        if spy is not None:
            spy.wait(30)
    finally:
        stop(process)
    committed = outbox_rows(prepared.database) - before
    summary = profile_summary(raw) if profile and raw.exists() else ""
    return Result(server, bare, load, committed, rss, summary)


def check(result: Result, prepared: Prepared, connections: int) -> list[str]:
    """Problems that make the run meaningless (duplicates, lost commits, errors)."""
    problems = []
    load = result.gateway
    ok = load.requests - load.non_2xx
    if load.non_2xx or load.socket_errors:
        problems.append(f"{load.non_2xx} non-2xx answers, {load.socket_errors} socket errors")
    if prepared.used >= prepared.requests:
        problems.append("the run used more requests than were prepared (duplicate sids)")
    if not ok <= result.committed <= ok + connections:
        problems.append(f"{ok} answered 200 but {result.committed} outbox rows were committed")
    return problems


def main(argv: list[str] | None = None) -> int:
    from bench.serve import SERVERS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--servers", default="production",
                        help=f"comma-separated, from: {', '.join(SERVERS)}, or 'all'")
    parser.add_argument("--requests", type=int, default=0,
                        help="pre-signed requests to prepare (default: enough for the run)")
    parser.add_argument("--profile", action="store_true", help="py-spy the gateway")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args(argv)
    servers = list(SERVERS) if args.servers == "all" else args.servers.split(",")
    folder = Path(tempfile.mkdtemp(prefix="sms311-bench-webhook-"))
    try:
        results = run(folder, servers, args.seconds, args.connections, args.requests,
                      args.profile)
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
        else:
            print(f"work folder kept: {folder}")
    return 0 if all(r[1] == [] for r in results) else 1


def run(
    folder: Path, servers: list[str], seconds: float, connections: int, requests: int,
    profile: bool,
) -> list[tuple[Result, list[str]]]:
    started = time.monotonic()
    prepared = prepare(folder, requests or int(4000 * seconds * len(servers)) + 20000)
    print(f"prepared {prepared.requests} signed requests in {time.monotonic() - started:.1f} s")
    header = (f"{'server':<24} {'bare req/s':>10} {'p99':>8} {'gateway req/s':>13} {'p50':>8}"
              f" {'p99':>8} {'ratio':>6} {'RSS MB':>7}")
    print(header)
    results = []
    for server in servers:
        result = measure(server, prepared, seconds, connections, profile)
        problems = check(result, prepared, connections)
        results.append((result, problems))
        g, b = result.gateway, result.bare
        print(f"{server:<24} {b.rate:>10.0f} {b.p99 * 1000:>6.1f}ms {g.rate:>13.0f}"
              f" {g.p50 * 1000:>6.1f}ms {g.p99 * 1000:>6.1f}ms {result.ratio:>6.2f}"
              f" {result.rss / 2**20:>7.0f}" + (f"  INVALID: {'; '.join(problems)}"
                                                 if problems else ""), flush=True)
        if result.profile:
            print(textwrap.indent(result.profile, "    "))
    print(f"targets: ratio >= {TARGET_RATIO}, p99 < {TARGET_P99 * 1000:g} ms "
          f"at {connections} connections")
    return results


if __name__ == "__main__":
    sys.exit(main())
