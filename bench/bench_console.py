"""The console's list and conversation pages at 100,000 conversations.

    .venv/bin/python bench/bench_console.py [--conversations 100000] [--requests 200]
                                            [--postgres]

Seeds a database (bench/console_seed.py: conversations spread over the map's
municipalities, 3 messages each), starts `sms311 web` on it, signs in an agent of one
municipality and an admin (every municipality), and times, one request after another,
each page an agent uses — the open list (page 1 and a page deep down, by cursor), a word
search, a number search, a word no text has (the worst case: every text is read), the
live-refresh poll of the list, a conversation and its poll —
next to `GET /healthz` in the same run (the baseline: the same server, the same
connection, a request that touches the database once). Prints p50/p99 and the ratio of
each p99 to /healthz's.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import requests

from bench.common import Figure, db_upgrade, percentile, running, sms311, wait_http
from bench.console_seed import seed
from gateway.rules import accounts
from gateway.settings import load_municipality_map, load_settings
from gateway.store import open_store
from gateway.store.console import ConsoleStore
from tests.gateway_fixtures import free_port, write_settings
from tests.loop import MailServer

REPO = Path(__file__).resolve().parents[1]
PASSWORD = "bench passphrase 1234"
TARGET_P99 = 0.25  # seconds: a page an agent waits for
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def sign_in(base: str, email: str) -> requests.Session:
    session = requests.Session()
    page = session.get(f"{base}/console/login", timeout=30).text
    token = _CSRF.search(page)
    assert token, "no CSRF token on the login page"
    response = session.post(f"{base}/console/login", timeout=30, allow_redirects=False,
                            data={"email": email, "password": PASSWORD,
                                  "csrf_token": token.group(1)})
    assert response.status_code == 302, (response.status_code, response.text[:300])
    return session


def timed(get: Callable[[], requests.Response], n: int) -> list[float]:
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        response = get()
        samples.append(time.perf_counter() - started)
        assert response.status_code in (200, 204), (response.status_code, response.text[:300])
    return samples


def run(conversations: int, n: int, database: str | None, folder: Path) -> list[Figure]:
    mail = MailServer().start()  # /healthz (the baseline) checks that SMTP answers
    try:
        return _run(conversations, n, database, folder, mail.port)
    finally:
        mail.stop()


def _run(conversations: int, n: int, database: str | None, folder: Path,
         smtp_port: int) -> list[Figure]:
    port = free_port()
    config = write_settings(folder, web_port=port, public_url=f"http://127.0.0.1:{port}",
                            smtp_port=smtp_port,
                            municipality_map=(REPO / "municipality_map.yaml").read_text(),
                            database=database)
    settings = load_settings(config, environ={})
    municipalities = [m.id for m in load_municipality_map(settings.municipality_map)]
    db_upgrade(config)
    store = open_store(settings.database)
    started = time.monotonic()
    seed(store, conversations, municipalities)
    print(f"seeded {conversations:,} conversations over {len(municipalities)} municipalities "
          f"in {time.monotonic() - started:.1f} s", flush=True)
    console = ConsoleStore(store)
    now = datetime.now(UTC)
    with console.transaction() as tx:
        agent = tx.add_user("agent@bench.example", "Agent", "agent", [municipalities[0]],
                            accounts.hash_password(PASSWORD), must_change_password=False,
                            at=now)
        tx.add_user("admin@bench.example", "Admin", "admin", [],
                    accounts.hash_password(PASSWORD), must_change_password=False, at=now)
        page = tx.list_conversations(agent.scope, "open", user_id=agent.id,
                                     user_email=agent.email)
        word = "pothole"
    assert page.rows, "the seeded municipality has no open conversation"
    conversation_id = page.rows[0].id
    phone_digits = page.rows[0].phone[-7:]
    store.close()

    base = f"http://127.0.0.1:{port}"
    figures: list[Figure] = []
    with running(sms311(config, "web", log=folder / "web.log")):
        wait_http(f"{base}/healthz", 60)
        for who in ("agent@bench.example", "admin@bench.example"):
            session = sign_in(base, who)
            deep = session.get(f"{base}/console/conversations", timeout=30).text
            cursor = None
            for _ in range(20):  # 20 pages down
                found = re.search(r'cursor=([^"&]+)"', deep)
                if not found:
                    break
                cursor = found.group(1)
                deep = session.get(f"{base}/console/conversations?cursor={cursor}",
                                   timeout=30).text
            pages: list[tuple[str, str]] = [
                ("/healthz (baseline)", "/healthz"),
                ("list: open, page 1", "/console/conversations"),
                ("list: 20 pages deep" if cursor else "list: page 2",
                 f"/console/conversations?cursor={cursor or ''}"),
                ("list: word search", f"/console/conversations?filter=all&q={word}"),
                ("list: number search", f"/console/conversations?filter=all&q={phone_digits}"),
                ("list: word found nowhere", "/console/conversations?filter=all&q=xylophone"),
                ("list: live poll", "/console/conversations/live?v=x"),
                ("conversation page", f"/console/conversations/{conversation_id}"),
                ("conversation: live poll", f"/console/conversations/{conversation_id}/live"),
            ]
            results: dict[str, list[float]] = {}
            for name, path in pages:
                def get(path: str = path, session: requests.Session = session) -> Any:
                    return session.get(base + path, timeout=30)

                timed(get, 5)  # warm up
                results[name] = timed(get, n)
            baseline = percentile(results["/healthz (baseline)"], 0.99)
            role = "agent (1 municipality)" if who.startswith("agent") else "admin (all)"
            print(f"\n{role}, {conversations:,} conversations, {n} requests each:")
            for name, samples in results.items():
                p50, p99 = percentile(samples, 0.5), percentile(samples, 0.99)
                print(f"  {name:28} p50 {p50 * 1000:7.1f} ms  p99 {p99 * 1000:7.1f} ms  "
                      f"p99/healthz {p99 / baseline:5.1f}x")
                if name.startswith("/healthz"):
                    continue
                figures.append(Figure(
                    f"console {name}, {role}, {conversations:,} conversations",
                    f"{p99 * 1000:.1f} ms p99", f"{baseline * 1000:.1f} ms (/healthz p99)",
                    f"{p99 / baseline:.1f}x", f"< {TARGET_P99 * 1000:g} ms", p99 < TARGET_P99,
                    f"p50 {p50 * 1000:.1f} ms"))
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--conversations", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--postgres", action="store_true",
                        help="a throwaway database on the test PostgreSQL server "
                        "(GATEWAY_TEST_POSTGRES_URL, as the tests use) instead of SQLite")
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="sms311-bench-console-"))
    try:
        if args.postgres:
            from tests.postgres import throwaway_database

            with throwaway_database("sms311_bench") as url:
                run(args.conversations, args.requests, url, folder)
        else:
            run(args.conversations, args.requests, None, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
