"""Fixtures shared by the whole suite.

Where things live
- Fixtures used by more than one module are here: `gateway` (a `Gateway` over a freshly
  migrated SQLite store in `tmp_path`; a module changes its settings by overriding
  `gateway_options`), `api` (the fake Twilio REST API), `conversation` (the dialogue driver
  of tests/conversation.py over the real inbound flow), the PostgreSQL ones
  (`pg_database`, `pg_url`: an empty schema, `pg_store_url`: a migrated schema), the
  store on both backends (`db_url`, `empty_store`, `store`: parametrised sqlite/postgresql),
  and the console's store over it (`console`).
- Plain helpers are in modules that are not test modules, imported explicitly:
  gateway_fixtures.py (settings files, the signed-webhook `Resident`, free ports),
  flow_helpers.py (text in, reply by email, dispatch, what the outbox holds),
  console_fixtures.py, conversation.py, fake_twilio.py, dovecot.py, postgres.py, loop.py,
  browser.py, paths.py (the test data in tests/data/, with its licences), and those shared by
  the modules of one topic: store_helpers.py (test_store*.py), console_store_helpers.py
  (test_console_store*.py), config_helpers.py (test_config*.py), reply_helpers.py
  (test_replies*.py). A test module never imports another test module.
- A fixture that differs in a way that matters stays in its module, with a docstring saying
  how (e.g. test_console_browser's running `sms311` subprocess).

Fast and slow
Tests that start subprocesses (`sms311`, Dovecot, PostgreSQL clusters, Chromium) are marked
`slow`. `make test` runs everything; while working, run only the fast ones with

    .venv/bin/python -m pytest -m "not slow"
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from gateway.app import Gateway
from gateway.rules.municipalities import Directory
from gateway.store import SqlStore, open_store
from gateway.store.console import ConsoleStore
from tests.conversation import Conversation
from tests.fake_twilio import FakeTwilio
from tests.gateway_fixtures import migrated_gateway
from tests.postgres import empty_schema, migrated_schema, throwaway_database_name

# Property tests draw the same cases every run (the suite must be deterministic in CI); a
# case hypothesis once found is kept as an explicit test.
settings.register_profile("sms311", derandomize=True)
settings.load_profile("sms311")

# -- the gateway, in process --------------------------------------------------------------------


@pytest.fixture
def gateway_options() -> dict[str, Any]:
    """Keyword arguments of `write_settings` for the `gateway` fixture. A module overrides
    this fixture to change them (another SMS provider, another store, extra settings)."""
    return {}


@pytest.fixture
def gateway(tmp_path: Path, gateway_options: dict[str, Any]) -> Iterator[Gateway]:
    """A `Gateway` over a freshly migrated SQLite store in `tmp_path` (sandbox SMS provider,
    the test map of gateway_fixtures.py), closed after the test."""
    gw: Gateway = migrated_gateway(tmp_path, **gateway_options)
    try:
        yield gw
    finally:
        gw.close()


@pytest.fixture
def api() -> Iterator[FakeTwilio]:
    """The fake Twilio REST API on a free loopback port (default credentials)."""
    with FakeTwilio() as fake:
        yield fake


@pytest.fixture
def conversation(tmp_path: Path) -> Iterator[Callable[[Directory], Conversation]]:
    """Makes `Conversation` drivers: `conversation(directory)` plays residents against the
    real inbound flow of a `Gateway` (temporary SQLite store) whose municipalities are
    `directory`. Each is closed after the test."""
    opened: list[Conversation] = []

    def make(directory: Directory) -> Conversation:
        convo = Conversation.open(tmp_path / f"conversation-{len(opened)}", directory)
        opened.append(convo)
        return convo

    try:
        yield make
    finally:
        for convo in opened:
            convo.close()


# -- PostgreSQL ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A throwaway database on the test server (tests/postgres.py) for the session; tests
    use a schema of their own in it."""
    with throwaway_database_name("sms311_test") as name:
        yield name


@pytest.fixture
def pg_url(pg_database: str) -> Iterator[str]:
    """A store URL on a fresh, EMPTY schema (not migrated), dropped after the test."""
    with empty_schema(pg_database) as url:
        yield url


@pytest.fixture
def pg_store_url(pg_database: str) -> Iterator[str]:
    """A store URL on a fresh schema migrated to the newest revision, dropped after."""
    with migrated_schema(pg_database) as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A store URL on each backend: a new SQLite file, then an empty PostgreSQL schema."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/state/gateway.db"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def empty_store(db_url: str) -> Iterator[SqlStore]:
    """An open store on `db_url`, not migrated; closed after the test."""
    store = open_store(db_url)
    try:
        yield store
    finally:
        store.close()


@pytest.fixture
def store(empty_store: SqlStore) -> SqlStore:
    """The store on each backend, migrated to the newest revision."""
    empty_store.upgrade()
    return empty_store


# -- the console's store ------------------------------------------------------------------------


@pytest.fixture
def console(store: SqlStore) -> ConsoleStore:
    """The console's store (gateway.store.console) over `store`: on each backend."""
    return ConsoleStore(store)
