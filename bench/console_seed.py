"""Seed a gateway database with realistic console data, fast; optionally time the console's
list queries on it.

    .venv/bin/python bench/console_seed.py sqlite:////tmp/console.db --conversations 100000
    .venv/bin/python bench/console_seed.py postgresql://postgres@127.0.0.1/console --bench

`seed()` writes straight through the engine (multi-row INSERTs, one transaction per chunk),
not through the store's transactions or group commit: residents, conversations (most of
them closed, the newest ones open, some assigned to an agent), their texts and replies
(`last_activity_at`, `last_inbound_at` consistent with them), and a few console accounts.
The database must already be migrated (`store.upgrade()`). `--bench` then times
`ConsoleTx.list_conversations` (first page, a deep page, word and phone searches) and
`counts()` and prints p50/p99 per query.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import percentile
from gateway.store.console import ConsoleStore, Scope
from gateway.store.schema import conversations as conversations_table
from gateway.store.schema import (
    messages,
    residents,
    user_municipalities,
    users,
)
from gateway.store.sql import SqlStore, open_store

CHUNK = 5000  # conversations per transaction
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
AREA_CODES = ["613", "819", "343", "416", "647", "514", "438", "604", "403", "902", "204"]
STREETS = ["Bank St", "Elgin St", "Rideau St", "King St W", "Queen St E", "Main St",
           "rue Principale", "boul. Saint-Joseph", "Elm Ave", "5th Ave", "Maple Dr",
           "Wellington St", "Carling Ave", "rue Notre-Dame", "Bay St"]
TEXTS = [
    "There is a pothole on {street} near {n}, it is getting bigger every day",
    "Garbage was not picked up on {street} this week ({n} block)",
    "Streetlight out at {street} and {street2} since Monday night",
    "Il y a un nid de poule devant le {n} {street}, c'est dangereux pour les vélos",
    "The recycling bin was damaged by the truck this morning at {n} {street}",
    "Water main break? Lots of water coming up through the road on {street} near the school",
    "Graffiti on the bus shelter at {street} and {street2}",
    "Le déneigement n'a pas été fait sur {street} depuis deux jours",
    "A tree branch fell on the sidewalk in front of {n} {street}",
    "Noise complaint: construction at {n} {street} started at 5am",
    "Dead raccoon on the road at {n} {street}, please send someone",
    "Can I get a new green bin? Mine was stolen from {n} {street}",
]
REPLIES = [
    "Thank you, a crew has been scheduled. Reference #{n}.",
    "Merci, nous avons transmis votre demande à l'équipe des travaux publics.",
    "Thanks for letting us know. Can you send a photo?",
    "We have opened service request {n}. You will get an update within 2 business days.",
    "This has been fixed this morning. Thank you for your patience.",
]


def _chunks(n: int, size: int) -> list[tuple[int, int]]:
    return [(start, min(n, start + size)) for start in range(0, n, size)]


def _next_id(conn: sa.Connection, table: sa.Table) -> int:
    newest = conn.execute(sa.select(sa.func.coalesce(sa.func.max(table.c.id), 0))).scalar_one()
    return int(newest) + 1


def _insert(conn: sa.Connection, table: sa.Table, rows: list[dict[str, Any]]) -> None:
    # SQLite allows 32766 bind parameters per statement: multi-row VALUES in slices.
    per_statement = max(1, 30000 // max(1, len(table.c)))
    for start in range(0, len(rows), per_statement):
        conn.execute(table.insert(), rows[start:start + per_statement])


def seed(
    store: SqlStore,
    conversations: int,
    municipalities: Sequence[str],
    *,
    messages_per_conversation: int = 3,
    seed: int = 1,
) -> None:
    """Bulk-insert `conversations` conversations spread over `municipalities` (a few big
    ones get most of them), with `messages_per_conversation` messages each (texts and
    replies alternating, the first a text), about two conversations per resident, and an
    agent account per municipality plus an admin ("admin@city.example").

    The newest ~8% are open; the rest were closed over the past year. Runs in one
    transaction per `CHUNK` conversations, straight on the engine."""
    if not municipalities:
        raise ValueError("seed needs at least one municipality")
    rng = random.Random(seed)
    cities = list(municipalities)
    weights = [1.0 / (rank + 1) for rank in range(len(cities))]  # Zipf-ish city sizes
    engine = store.engine
    pg = engine.dialect.name == "postgresql"
    span = timedelta(days=365).total_seconds()
    open_share = 0.08
    with engine.begin() as conn:
        first_conversation = _next_id(conn, conversations_table)
        first_message = _next_id(conn, messages)
        known_phones = set(conn.execute(sa.select(residents.c.phone)).scalars())
        _seed_users(conn, cities)
    conversation_id, message_id = first_conversation, first_message
    phones: list[tuple[str, str]] = []  # (phone, city) of the current resident
    for start, end in _chunks(conversations, CHUNK):
        resident_rows: list[dict[str, Any]] = []
        conversation_rows: list[dict[str, Any]] = []
        message_rows: list[dict[str, Any]] = []
        for index in range(start, end):
            if index % 2 == 0 or not phones:  # a new resident every other conversation
                while True:
                    phone = (f"+1{rng.choice(AREA_CODES)}{rng.randint(200, 999)}"
                             f"{rng.randint(0, 9999):04d}")
                    if phone not in known_phones:
                        break
                known_phones.add(phone)
                city = rng.choices(cities, weights)[0]
                phones = [(phone, city)]
                resident_rows.append({
                    "phone": phone, "municipality_id": city,
                    "language": "fr" if rng.random() < 0.25 else "en",
                    "opted_out": rng.random() < 0.02, "dialogue": {},
                    "created_at": NOW - timedelta(days=400), "updated_at": NOW,
                })
            phone, city = phones[0]
            # index order = time order: the last conversations are the newest
            age = span * (1 - (index + rng.random()) / conversations)
            started = NOW - timedelta(seconds=age)
            is_open = index >= conversations * (1 - open_share)
            agent = f"agent{rng.randint(1, 5)}@{city}.example" if rng.random() < 0.6 else None
            at = last_at = started
            last_in = None
            for k in range(messages_per_conversation):
                inbound = k % 2 == 0
                words = {"street": rng.choice(STREETS), "street2": rng.choice(STREETS),
                         "n": rng.randint(10, 9999)}
                body = (rng.choice(TEXTS) if inbound else rng.choice(REPLIES)).format(**words)
                message_rows.append({
                    "id": message_id, "phone": phone, "conversation_id": conversation_id,
                    "direction": "in" if inbound else "out", "body": body, "media": [],
                    "provider_sid": f"SM{message_id:032x}", "held": False, "received_at": at,
                    "status": None if inbound else "delivered", "error_code": None,
                    "agent_address": None if inbound else (agent or f"311@{city}.example"),
                    "updated_at": at, "via": None if inbound else rng.choice(("email", "console")),
                })
                message_id += 1
                last_at = at
                if inbound:
                    last_in = at
                at += timedelta(minutes=rng.randint(1, 600))
            last_activity = last_at
            conversation_rows.append({
                "id": conversation_id, "token": f"{rng.getrandbits(128):032x}", "phone": phone,
                "municipality_id": city, "subject": f"311 text from {phone}",
                "status": "open" if is_open else "closed",
                "thread_message_ids": [f"<{conversation_id}.seed@gateway.example>"],
                "agent_address": agent, "created_at": started,
                "last_activity_at": last_activity,
                "closed_at": None if is_open else last_activity + timedelta(days=7),
                "last_inbound_at": last_in,
            })
            conversation_id += 1
        with engine.begin() as conn:
            _insert(conn, residents, resident_rows)
            _insert(conn, conversations_table, conversation_rows)
            _insert(conn, messages, message_rows)
    if pg:  # explicit ids: move the sequences past them
        with engine.begin() as conn:
            for table in ("conversations", "messages"):
                conn.execute(sa.text(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                    f"(SELECT max(id) FROM {table}))"))
        # what autovacuum would have done by then: statistics, and the visibility map that
        # index-only scans (the counts) need
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text("VACUUM ANALYZE"))


def _seed_users(conn: sa.Connection, cities: Sequence[str]) -> None:
    existing = set(conn.execute(sa.select(users.c.email)).scalars())
    accounts: list[tuple[str, str, str, list[str]]] = [
        ("admin@city.example", "Admin", "admin", [])
    ]
    accounts += [(f"agent1@{city}.example", f"Agent {city}", "agent", [city]) for city in cities]
    for email, name, role, homes in accounts:
        if email in existing:
            continue
        user_id = conn.execute(users.insert().values(
            email=email, name=name, role=role, password_hash="seeded", totp_secret=None,
            disabled=False, must_change_password=True, language=None, created_at=NOW,
            updated_at=NOW).returning(users.c.id)).scalar_one()
        for city in homes:
            conn.execute(user_municipalities.insert().values(user_id=user_id,
                                                             municipality_id=city))


# --- timing ---------------------------------------------------------------------------------


def _time(fn: Callable[[], object], runs: int) -> tuple[float, float]:
    fn()  # warm: statement compilation, page cache
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return percentile(samples, 0.5) * 1000, percentile(samples, 0.99) * 1000


def bench(
    store: SqlStore, municipalities: Sequence[str], runs: int = 50
) -> dict[str, tuple[float, float]]:
    """p50/p99 (ms) of the console's list queries, for an agent of the biggest city and an
    admin."""
    console = ConsoleStore(store)
    city = municipalities[0]
    with console.reading() as tx:
        agent = tx.user_by_email(f"agent1@{city}.example")
        admin = tx.user_by_email("admin@city.example")
    assert agent is not None and admin is not None
    with console.reading() as tx:
        phone = tx.list_conversations(agent.scope, "all", user_id=agent.id,
                                      user_email=agent.email).rows[7].phone
    results: dict[str, tuple[float, float]] = {}
    for who, user in (("agent", agent), ("admin", admin)):
        scope = user.scope

        def page(which: str, query: str = "", depth: int = 0,
                 scope: Scope = scope, user: Any = user) -> Callable[[], object]:
            cursor = None
            with console.reading() as tx:
                for _ in range(depth):
                    cursor = tx.list_conversations(scope, which, user_id=user.id,  # type: ignore[arg-type]
                                                   user_email=user.email, query=query,
                                                   cursor=cursor).next_cursor

            def run() -> object:
                with console.reading() as tx:
                    return tx.list_conversations(scope, which, user_id=user.id,  # type: ignore[arg-type]
                                                 user_email=user.email, query=query,
                                                 cursor=cursor)
            return run

        def counts(scope: Scope = scope, user: Any = user) -> object:
            with console.reading() as tx:
                return tx.counts(scope, user_id=user.id, user_email=user.email)

        cases: dict[str, Callable[[], object]] = {
            "open p1": page("open"),
            "all p1": page("all"),
            "all p100 (cursor)": page("all", depth=100),
            "closed p50 (cursor)": page("closed", depth=50),
            "mine p1": page("mine"),
            "unassigned p1": page("unassigned"),
            "word 'pothole'": page("all", "pothole"),
            "word, rare '#4821'": page("all", "#4821"),  # a reply's reference: ~3 texts
            "words 'raccoon sidewalk'": page("all", "raccoon sidewalk"),
            "word, no match": page("all", "xylophone"),
            "phone (full)": page("all", phone),
            "phone (4 digits)": page("all", phone[-4:]),
            "phone (area code)": page("all", phone[2:5]),
            "counts": counts,
        }
        for name, fn in cases.items():
            results[f"{who}: {name}"] = _time(fn, runs)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("url", help="database URL (migrated first if needed)")
    parser.add_argument("--conversations", type=int, default=100_000)
    parser.add_argument("--messages", type=int, default=3, help="per conversation")
    parser.add_argument("--municipalities", default="ottawa,toronto,montreal,gatineau,calgary,"
                        "vancouver,halifax,winnipeg,edmonton,quebec,laval,mississauga")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--bench", action="store_true", help="time the list queries afterwards")
    parser.add_argument("--no-seed", action="store_true", help="only --bench")
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args(argv)
    cities = [c.strip() for c in args.municipalities.split(",") if c.strip()]
    store = open_store(args.url)
    try:
        store.upgrade()
        if not args.no_seed:
            start = time.perf_counter()
            seed(store, args.conversations, cities, messages_per_conversation=args.messages,
                 seed=args.seed)
            took = time.perf_counter() - start
            print(f"seeded {args.conversations} conversations x {args.messages} messages "
                  f"in {took:.1f} s")
        if args.bench:
            for name, (p50, p99) in bench(store, cities, args.runs).items():
                print(f"{name:34s} p50 {p50:7.2f} ms   p99 {p99:7.2f} ms")
    finally:
        store.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
