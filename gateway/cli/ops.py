"""The operator's commands: check-config, run / web / worker, db, outbox, failed, privacy,
directory build; and what they share with the other commands (the settings the command
line names, the schema checks and the advice that names the command fixing them).

Each `cmd_*` takes the parsed arguments and returns the exit code; `gateway.cli.main`
turns a `ConfigError`, `SchemaOutOfDate` or `StoreUnavailable` into its one line and code.
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import json
import logging
import os
import shlex
import sys
from pathlib import Path

from gateway.cli.output import printable, printable_bytes, printable_json
from gateway.logs import setup_logging
from gateway.settings import (
    ConfigError,
    Problem,
    Settings,
    check_config,
    config_path_from,
    load_settings,
)
from gateway.store import SchemaOutOfDate

log = logging.getLogger("gateway.cli")  # the name the log lines had before the split


def settings_of(args: argparse.Namespace) -> Settings:
    """The settings the command line names: `--config`, else GATEWAY_CONFIG, else the
    default path (environment overrides applied)."""
    return load_settings(config_path_from(args.config, os.environ), os.environ)


def upgrade_command(args: argparse.Namespace) -> str:
    """The exact `db upgrade` command for the settings file in use (`--config`, else
    GATEWAY_CONFIG, else the default path): "sms311 --config /etc/sms311/sms311.yaml db
    upgrade"."""
    path = str(config_path_from(args.config, os.environ))
    return f"sms311 --config {shlex.quote(path)} db upgrade"


def schema_advice(exc: SchemaOutOfDate, args: argparse.Namespace) -> str:
    """The message for a database whose schema this version cannot use, naming the exact
    command that fixes it (or saying that none does: a schema written by a newer sms311)."""
    from gateway.store.sql import known_revisions

    return exc.advice(upgrade_command(args), known_revisions())


def create_schema_if_empty(settings: Settings) -> None:
    """Create the schema when the database has none yet (never migrated: no revision), so a
    first `sms311 run` just works. Any other revision is left alone: `check_schema` then
    refuses an older or newer one. Two instances starting at once on an empty database are
    safe: `Store.upgrade` serialises (PostgreSQL: an advisory lock; SQLite: the write lock),
    so the second waits and then finds the schema made."""
    from gateway.store import open_store
    from gateway.store.sql import head_revision

    store = open_store(settings.database)
    try:
        if store.current_revision() is None:
            log.info("the database is empty: creating the schema (%s)", head_revision())
            store.upgrade()
    finally:
        store.close()



def cmd_check_config(args: argparse.Namespace) -> int:
    """Every problem (exit 2) and "OK" when there was none, on stdout; the warnings (valid,
    but worth a look: they do not change the exit status) on stderr."""
    path = config_path_from(args.config, os.environ)
    problems = check_config(path, os.environ)
    for problem in problems:
        print(problem)
    for warning in _config_warnings(path):
        print(warning, file=sys.stderr)
    if problems:
        return 2
    print(f"{path}: OK")
    return 0


def _config_warnings(path: Path) -> list[Problem]:
    """The municipality map's warnings (each bare "@domain" agent entry, the default one
    included); none when the settings cannot be loaded (their problems are printed)."""
    from gateway.settings.municipality_map import map_warnings

    try:
        settings = load_settings(path, os.environ)
    except ConfigError:
        return []
    return map_warnings(settings.municipality_map)


def _run(args: argparse.Namespace, *, web: bool, worker: bool) -> int:
    from gateway.app import Gateway
    from gateway.run.server import run_gateway

    settings = settings_of(args)
    setup_logging(settings.log_level, full_detail=settings.privacy.log_full_detail)
    faulthandler.enable()  # a watchdog kill (SIGABRT) leaves every thread's stack in the log
    create_schema_if_empty(settings)
    gateway = Gateway.from_settings(settings)
    try:
        asyncio.run(run_gateway(gateway, web=web, worker=worker))
    finally:
        gateway.close()
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    return _run(args, web=True, worker=True)


def cmd_web(args: argparse.Namespace) -> int:
    return _run(args, web=True, worker=False)


def cmd_worker(args: argparse.Namespace) -> int:
    return _run(args, web=False, worker=True)


def cmd_db(args: argparse.Namespace) -> int:
    from gateway.store import open_store

    store = open_store(settings_of(args).database)
    try:
        if args.db_command == "upgrade":
            from gateway.store.sql import head_revision, known_revisions

            current = store.current_revision()
            if current is not None and current not in known_revisions():
                raise SchemaOutOfDate(current, head_revision())  # newer: never downgraded
            store.upgrade()
            print(f"database schema at {store.current_revision()}")
        else:
            print(f"database schema at {store.current_revision() or 'nothing (empty database)'}")
    finally:
        store.close()
    return 0


def cmd_outbox(args: argparse.Namespace) -> int:
    from gateway.store import open_store

    store = open_store(settings_of(args).database)
    try:
        if args.outbox_command == "retry":
            if not store.requeue(args.id):
                print(f"outbox row {args.id} is not parked", file=sys.stderr)
                return 1
            print(f"outbox row {args.id} queued again")
            return 0
        status = None if args.all else args.status
        for item in store.list_outbox(status):
            print(
                f"{item.id}\t{item.kind}\t{item.status}\tattempts={item.attempts}\t"
                f"created={item.created_at:%Y-%m-%d %H:%M:%S}\t"
                f"{printable(item.last_error or '', one_line=True)}"
            )
        print(json.dumps(store.outbox_stats()), file=sys.stderr)
    finally:
        store.close()
    return 0


def cmd_failed(args: argparse.Namespace) -> int:
    """`sms311 failed list|show|retry|delete`: the reply emails that were not texted."""
    from gateway.store.reply_mail import (
        count_failed_emails,
        delete_failed_email,
        get_failed_email,
        list_failed_emails,
    )

    settings = settings_of(args)
    if args.failed_command == "retry":
        from gateway.app import Gateway

        gateway = Gateway.from_settings(settings)
        try:
            gateway.store.check_schema()
            try:
                disposition = gateway.replies().retry(args.id)
            except KeyError:
                print(f"sms311: no failed email {args.id} (see `sms311 failed list`)",
                      file=sys.stderr)
                return 1
        finally:
            gateway.close()
        reason = printable(disposition.reason, one_line=True)
        print(f"failed email {args.id}: {disposition.outcome} ({reason})")
        return 0 if disposition.outcome != "failed" else 1

    from gateway.store import open_store

    store = open_store(settings.database)
    try:
        store.check_schema()
        with store.transaction() as tx:
            if args.failed_command == "show":
                kept = get_failed_email(tx, args.id)
                if kept is None:
                    print(f"sms311: no failed email {args.id}", file=sys.stderr)
                    return 1
                if args.raw and sys.stdout.isatty():
                    print("sms311: --raw writes the email's bytes as they arrived, control "
                          "sequences included: redirect it to a file", file=sys.stderr)
                    return 2
                # On a terminal, never the email's own control sequences (`printable`).
                shown = kept.raw if args.raw else printable_bytes(kept.raw).encode("utf-8")
                sys.stdout.buffer.write(shown)
                sys.stdout.flush()
                return 0
            if args.failed_command == "delete":
                if not delete_failed_email(tx, args.id):
                    print(f"sms311: no failed email {args.id}", file=sys.stderr)
                    return 1
                print(f"failed email {args.id} deleted")
                return 0
            rows = list_failed_emails(tx, include_resolved=args.all, limit=args.limit)
            unresolved = count_failed_emails(tx)
        for kept in rows:
            state = f"resolved {kept.resolved_at:%Y-%m-%d %H:%M}" if kept.resolved_at else "failed"
            where = printable(str(kept.origin.get("kind", "?")), one_line=True)
            sender = printable(kept.sender or "?", one_line=True)
            print(
                f"{kept.id}\t{kept.received_at:%Y-%m-%d %H:%M:%S}\t{where}\t{state}\t"
                f"from={sender}\tconversation={kept.conversation_id or '-'}\t"
                f"{kept.size} bytes\t{printable(kept.reason, one_line=True)}"
            )
        print(f"{unresolved} failed reply email(s) not resolved", file=sys.stderr)
    finally:
        store.close()
    return 0


def cmd_privacy(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime, timedelta

    from gateway.rules.phone import NotAPhoneNumber, normalise_number
    from gateway.store import open_store
    from gateway.store.privacy import delete_resident, export_resident, purge_texts

    settings = settings_of(args)
    store = open_store(settings.database)
    try:
        if args.privacy_command == "purge":
            days = args.days if args.days is not None else settings.privacy.retention_days
            if days <= 0:
                print("retention is off (privacy.retention_days: 0): nothing purged")
                return 0
            result = purge_texts(store, datetime.now(UTC) - timedelta(days=days))
            print(
                f"texts older than {days} days: {result.texts_blanked} blanked, "
                f"{result.outbox_deleted} sent outbox rows, {result.webhook_log_deleted} webhook "
                f"log rows and {result.processed_emails_deleted} processed-email rows deleted"
            )
            return 0
        try:
            phone = normalise_number(args.number, settings.sms.default_region)
        except NotAPhoneNumber as exc:
            print(f"sms311: {args.number!r}: {exc}", file=sys.stderr)
            return 2
        if args.privacy_command == "export":
            print(printable_json(export_resident(store, phone)))
            return 0
        if not args.yes:
            print(f"this erases everything stored about {phone}; add --yes to do it",
                  file=sys.stderr)
            return 2
        counts = delete_resident(store, phone)
        print(f"erased {phone}: " + ", ".join(f"{n} {what}" for what, n in counts.items()))
        return 0
    finally:
        store.close()


def cmd_directory_build(args: argparse.Namespace) -> int:
    from gateway.settings.directory_build import build_directory_command

    return build_directory_command(args.census, args.output, args.evidence, args.merge)

