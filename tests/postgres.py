"""The PostgreSQL server the tests use: `GATEWAY_TEST_POSTGRES_URL` when set (CI sets it to
the server on 127.0.0.1:5432), otherwise a throwaway cluster started once for the test run
with Debian's initdb/pg_ctl (`make test` installs postgresql when missing) and removed at exit.
Nothing is skipped: no server and no initdb is a loud failure."""

from __future__ import annotations

import atexit
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

_started: str | None = None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise RuntimeError(
            f"{name} not found: install Debian's postgresql (make test does), or set "
            "GATEWAY_TEST_POSTGRES_URL to a server the tests may create databases on"
        )
    return found[-1]


def _throwaway_cluster() -> str:
    root = Path(tempfile.mkdtemp(prefix="sms311-pg-"))
    data, sockets = root / "data", root / "run"
    sockets.mkdir()
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses root: run the cluster as the postgres user
        shutil.chown(root, "postgres")
        shutil.chown(sockets, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    subprocess.run(
        [*as_user, _bin("initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
         "--no-sync", "-E", "UTF8"],
        check=True, capture_output=True, timeout=120,
    )
    subprocess.run(
        [*as_user, _bin("pg_ctl"), "-D", str(data), "-w", "-l", str(root / "log"), "-o",
         f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=off", "start"],
        check=True, capture_output=True, timeout=120,
    )

    def stop() -> None:
        subprocess.run([*as_user, _bin("pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True, timeout=60, check=False)
        shutil.rmtree(root, ignore_errors=True)

    atexit.register(stop)
    return f"postgresql://postgres@127.0.0.1:{port}/postgres"


def server_url() -> str:
    """A URL of a database on the test server (any database: tests create their own)."""
    global _started
    configured = os.environ.get("GATEWAY_TEST_POSTGRES_URL")
    if configured:
        return configured
    if _started is None:
        _started = _throwaway_cluster()
    return _started


def _with_database(url: str, name: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


@contextmanager
def throwaway_database(prefix: str = "sms311_test") -> Iterator[str]:
    """A new, empty database on the test server, dropped afterwards; yields its URL."""
    url = server_url()
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = _with_database(url, "postgres")
    with psycopg.connect(admin, autocommit=True, connect_timeout=10) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield _with_database(url, name)
    finally:
        deadline = time.monotonic() + 10
        with psycopg.connect(admin, autocommit=True, connect_timeout=10) as conn:
            while True:
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = %s AND pid <> pg_backend_pid()", (name,),
                )
                try:
                    conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
                    break
                except psycopg.errors.ObjectInUse:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)


def connect(dbname: str) -> psycopg.Connection[tuple[object, ...]]:
    """An autocommit connection to database `dbname` on the test server (fails loudly)."""
    url = server_url()
    try:
        return psycopg.connect(_with_database(url, dbname), autocommit=True, connect_timeout=5)
    except psycopg.Error as exc:
        problem = " ".join(str(exc).split())
        raise RuntimeError(
            f"PostgreSQL is not reachable ({problem}): start it or set GATEWAY_TEST_POSTGRES_URL"
        ) from exc


def database_url(dbname: str, *, search_path: str | None = None) -> str:
    """The URL of database `dbname` on the test server (optionally with a search_path)."""
    url = _with_database(server_url(), dbname)
    return f"{url}?options=-csearch_path%3D{search_path}" if search_path else url


@contextmanager
def throwaway_database_name(prefix: str = "sms311_test") -> Iterator[str]:
    """Like `throwaway_database`, yielding the database's name."""
    with throwaway_database(prefix) as url:
        yield url.rpartition("/")[2]


@contextmanager
def empty_schema(dbname: str) -> Iterator[str]:
    """A fresh, empty schema in `dbname`; yields a store URL whose search_path puts it first.
    Dropped afterwards."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with connect(dbname) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield database_url(dbname, search_path=schema)
    finally:
        with connect(dbname) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@contextmanager
def migrated_schema(dbname: str) -> Iterator[str]:
    """A fresh schema in `dbname`, migrated to the newest revision; yields a store URL whose
    search_path puts it first. Dropped afterwards. (A schema rather than a database per
    test: CREATE DATABASE costs ~0.2 s.)"""
    from gateway.store import open_store

    schema = f"t_{uuid.uuid4().hex[:12]}"
    with connect(dbname) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    url = database_url(dbname, search_path=schema)
    store = open_store(url)
    try:
        store.upgrade()
    finally:
        store.close()
    try:
        yield url
    finally:
        with connect(dbname) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
