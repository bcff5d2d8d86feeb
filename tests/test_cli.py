"""The command line contract: check-config's exit codes and output format,
`db upgrade`/`db status`, GATEWAY_CONFIG, the console script equal to -m gateway, a first
`run` on an empty database (the schema is made, by one of several instances starting at
once), an older or newer schema refused with the exact command, and every subcommand's
--help."""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa
from alembic import command

from gateway.cli import build_parser, main, schema_advice
from gateway.store import SchemaOutOfDate, open_store
from gateway.store.sql import _MIGRATION_LOCK as MIGRATION_LOCK
from gateway.store.sql import alembic_config, head_revision
from tests.gateway_fixtures import free_port, write_settings
from tests.loop import MailServer, wait_for
from tests.postgres import connect, throwaway_database


def test_check_config_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_settings(tmp_path)
    assert main(["--config", str(config), "check-config"]) == 0
    assert "OK" in capsys.readouterr().out


def test_check_config_prints_every_problem_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_settings(tmp_path, extra="sms_typo: 1\n")
    (tmp_path / "municipality_map.yaml").write_text(
        "municipalities:\n  - id: a\n    name: A\n    province: ON\n"
        "  - id: a\n    name: B\n    province: ZZ\n    mailbox: b@b.example\n"
    )
    assert main(["--config", str(config), "check-config"]) == 2
    lines = capsys.readouterr().out.splitlines()
    assert any(re.match(rf"{re.escape(str(config))}:\d+: sms_typo: ", line) for line in lines)
    map_file = re.escape(str(tmp_path / "municipality_map.yaml"))
    assert any(re.match(rf"{map_file}:2: municipalities\[0\]\.mailbox: ", ln) for ln in lines)
    assert any(re.match(rf"{map_file}:\d+: municipalities\[1\]\.id: ", ln) for ln in lines)
    assert any(re.match(rf"{map_file}:\d+: municipalities\[1\]\.province: ", ln) for ln in lines)


@pytest.mark.slow  # an `sms311` subprocess
def test_gateway_config_environment_variable(tmp_path: Path) -> None:
    config = write_settings(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "check-config"], capture_output=True, text=True,
        env={"GATEWAY_CONFIG": str(config), "PATH": "/usr/bin:/bin"}, check=False, timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty database: a SQLite file, or a throwaway PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'gateway.db'}"
        return
    with throwaway_database("sms311_cli") as url:
        yield url


def start(config: Path, command: str, **env: str) -> subprocess.Popen[str]:
    """`sms311 --config CONFIG COMMAND` in the background, its output in COMMAND.log
    beside the settings file."""
    log = config.with_name(f"{command}.log")
    with log.open("w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "gateway", "--config", str(config), command],
            stdout=out, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
        )


def healthy(port: int) -> bool:
    try:
        return requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
    except requests.ConnectionError:
        return False


def stop(process: subprocess.Popen[str]) -> int:
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()
        return -9


@pytest.mark.slow
def test_run_creates_the_schema_on_an_empty_database(tmp_path: Path, database: str) -> None:
    mail = MailServer().start()
    web_port = free_port()
    config = write_settings(tmp_path, database=database, smtp_port=mail.port, web_port=web_port)
    process = start(config, "run")
    try:
        wait_for(lambda: healthy(web_port) or process.poll() is not None, "sms311 run to start")
        log = config.with_name("run.log")
        assert process.poll() is None, log.read_text()
        assert "the database is empty: creating the schema" in log.read_text()
    finally:
        assert stop(process) == 0
        mail.stop()
    store = open_store(database)
    try:
        store.check_schema()
    finally:
        store.close()


def sms311(config: Path | None, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    head = ["--config", str(config)] if config is not None else []
    return subprocess.run(
        [sys.executable, "-m", "gateway", *head, *args], capture_output=True, text=True,
        check=False, timeout=60, env={**os.environ, **env},
    )


@pytest.mark.slow
def test_an_older_schema_is_refused_naming_the_command(tmp_path: Path, database: str) -> None:
    config = write_settings(tmp_path, database=database)
    store = open_store(database)
    try:
        with store.engine.begin() as conn:
            command.upgrade(alembic_config(conn), "0003")
    finally:
        store.close()
    for name in ("run", "web", "worker"):
        result = sms311(config, name)
        assert result.returncode == 1, result.stderr
        assert "Traceback" not in result.stderr
        assert (
            f"the database schema is at 0003, this version needs {head_revision()}: "
            f"run `sms311 --config {config} db upgrade`"
        ) in result.stderr
    # GATEWAY_CONFIG instead of --config: the hint names that file all the same.
    result = sms311(None, "run", GATEWAY_CONFIG=str(config))
    assert result.returncode == 1 and f"`sms311 --config {config} db upgrade`" in result.stderr
    # The command it names does the job; then run's schema check passes.
    assert sms311(config, "db", "upgrade").returncode == 0
    assert sms311(config, "db", "status").stdout.strip().endswith(head_revision())


def test_the_hint_names_the_default_settings_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    exc = SchemaOutOfDate("0003", head_revision())
    monkeypatch.delenv("GATEWAY_CONFIG", raising=False)
    assert schema_advice(exc, build_parser().parse_args(["run"])).endswith(
        "run `sms311 --config /etc/sms311/sms311.yaml db upgrade`"
    )
    spaced = build_parser().parse_args(["--config", str(tmp_path / "my settings.yaml"), "run"])
    assert f"--config '{tmp_path}/my settings.yaml' db upgrade" in schema_advice(exc, spaced)


def test_a_newer_schema_is_refused_clearly(tmp_path: Path) -> None:
    config = write_settings(tmp_path)
    assert main(["--config", str(config), "db", "upgrade"]) == 0
    store = open_store(f"sqlite:///{tmp_path / 'gateway.db'}")
    try:
        with store.engine.begin() as conn:
            conn.execute(sa.text("UPDATE alembic_version SET version_num = '0999'"))
    finally:
        store.close()
    for args in (["run"], ["db", "upgrade"]):
        result = sms311(config, *args)
        assert result.returncode == 1, result.stderr
        assert "Traceback" not in result.stderr
        assert "the database schema is at 0999, which this version does not know" in (
            result.stderr
        )
        assert "newer sms311" in result.stderr and "db upgrade" not in result.stderr


@pytest.mark.slow
def test_web_and_worker_create_the_schema_together_on_postgres(tmp_path: Path) -> None:
    """Both start at the same moment on an empty database: the migration lock makes one
    create the schema while the other waits, then finds it made."""
    mail = MailServer().start()
    web_port = free_port()
    with throwaway_database("sms311_cli") as database:
        config = write_settings(tmp_path, database=database, smtp_port=mail.port,
                                web_port=web_port)
        name = database.rpartition("/")[2]
        processes: list[subprocess.Popen[str]] = []
        with connect(name) as holder:
            # Hold the migration lock, so that both are sure to find the database empty
            # and to ask for the lock at the same time.
            holder.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
            try:
                processes = [start(config, "web"), start(config, "worker")]

                def waiting() -> int:
                    row = holder.execute(
                        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                        "AND NOT granted AND database = (SELECT oid FROM pg_database "
                        "WHERE datname = current_database())"
                    ).fetchone()
                    return int(str(row[0])) if row else 0

                wait_for(lambda: waiting() == 2 or any(p.poll() is not None for p in processes),
                         "web and worker to wait for the migration lock", timeout=60)
                assert waiting() == 2
            finally:
                holder.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))
            try:
                web_log, worker_log = (config.with_name(f"{c}.log") for c in ("web", "worker"))
                wait_for(lambda: healthy(web_port) or processes[0].poll() is not None,
                         "the web half to answer /healthz", timeout=60)
                wait_for(lambda: "dispatcher started" in worker_log.read_text()
                         or processes[1].poll() is not None, "the worker to start", timeout=60)
                assert all(p.poll() is None for p in processes), (
                    web_log.read_text() + worker_log.read_text()
                )
                logs = [web_log.read_text(), worker_log.read_text()]
                assert all("the database is empty: creating the schema" in log for log in logs)
                assert sum(log.count("upgraded from nothing") for log in logs) == 1
            finally:
                assert [stop(p) for p in processes] == [0, 0]
                mail.stop()


def test_db_upgrade_then_status(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = str(write_settings(tmp_path))
    assert main(["--config", config, "db", "status"]) == 0
    assert "empty" in capsys.readouterr().out
    assert main(["--config", config, "db", "upgrade"]) == 0
    revision = capsys.readouterr().out.strip().split()[-1]
    assert main(["--config", config, "db", "status"]) == 0
    assert capsys.readouterr().out.strip().endswith(revision)


def subcommands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], str, argparse.ArgumentParser]]:
    """Every subcommand under `parser`, at any depth: (words, its help line, its parser)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            for name, sub in action.choices.items():
                yield (*path, name), helps.get(name, ""), sub
                yield from subcommands(sub, (*path, name))


def test_every_subcommand_has_a_help_line_and_a_description(
    capsys: pytest.CaptureFixture[str]
) -> None:
    found = list(subcommands(build_parser()))
    assert len(found) >= 25 and ("db", "upgrade") in [words for words, _, _ in found]
    for words, help_line, parser in found:
        assert help_line.strip(), f"`sms311 {' '.join(words)}` has no line in the command list"
        description = (parser.description or "").strip()
        assert description, f"`sms311 {' '.join(words)}` has no description"
        with pytest.raises(SystemExit) as exit_:
            main([*words, "--help"])
        assert exit_.value.code == 0
        shown = capsys.readouterr().out
        assert shown.startswith(f"usage: sms311 {' '.join(words)}")
        assert " ".join(description.split()[:4]) in " ".join(shown.split())
    listing = sms311(None, "--help")  # the console script's own command list
    assert listing.returncode == 0
    for words, help_line, _ in found:
        if len(words) == 1:
            assert " ".join(help_line.split()[:3]) in " ".join(listing.stdout.split())
