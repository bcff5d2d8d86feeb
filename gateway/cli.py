"""`sms311 [--config FILE] <command>`; `python -m gateway` is the same.

Commands: check-config, run, web, worker, db upgrade|status, outbox [list|retry ID],
directory build, sandbox run|text.
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from gateway.config import ConfigError, Settings, check_config, config_path_from, load_settings
from gateway.logs import setup_logging
from gateway.store import SchemaOutOfDate, StoreUnavailable

SANDBOX_DIR = Path("var/sandbox")  # where `make run` keeps the sandbox (relative to the repo)


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(config_path_from(args.config, os.environ), os.environ)


def cmd_check_config(args: argparse.Namespace) -> int:
    path = config_path_from(args.config, os.environ)
    problems = check_config(path, os.environ)
    for problem in problems:
        print(problem)
    if problems:
        return 2
    print(f"{path}: OK")
    return 0


def _run(args: argparse.Namespace, *, web: bool, worker: bool) -> int:
    from gateway.server import run_gateway
    from gateway.services import Gateway

    settings = _settings(args)
    setup_logging(settings.log_level, full_detail=settings.privacy.log_full_detail)
    faulthandler.enable()  # a watchdog kill (SIGABRT) leaves every thread's stack in the log
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

    store = open_store(_settings(args).database)
    try:
        if args.db_command == "upgrade":
            store.upgrade()
            print(f"database schema at {store.current_revision()}")
        else:
            print(f"database schema at {store.current_revision() or 'nothing (empty database)'}")
    finally:
        store.close()
    return 0


def cmd_outbox(args: argparse.Namespace) -> int:
    from gateway.store import open_store

    store = open_store(_settings(args).database)
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
                f"created={item.created_at:%Y-%m-%d %H:%M:%S}\t{item.last_error or ''}"
            )
        print(json.dumps(store.outbox_stats()), file=sys.stderr)
    finally:
        store.close()
    return 0


def cmd_privacy(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime, timedelta

    from gateway.store import open_store
    from gateway.store.privacy import delete_resident, export_resident, purge_texts
    from gateway.web.webhooks import BadRequest, normalise_number

    settings = _settings(args)
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
        except BadRequest as exc:
            print(f"sms311: {args.number!r}: {exc}", file=sys.stderr)
            return 2
        if args.privacy_command == "export":
            print(json.dumps(export_resident(store, phone), indent=2, ensure_ascii=False))
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
    from gateway.directory_build import build_directory_command

    return build_directory_command(args.census, args.output, args.evidence, args.merge)


def cmd_sandbox_run(args: argparse.Namespace) -> int:
    from gateway.sandbox import run_sandbox

    setup_logging("INFO")
    return run_sandbox(args.dir, args.map, args.port, args.smtp_port)


def cmd_sandbox_text(args: argparse.Namespace) -> int:
    from gateway.sandbox import send_text

    config = Path(args.config) if args.config else SANDBOX_DIR / "sms311.yaml"
    settings = load_settings(config, os.environ)
    status, replies = send_text(
        settings,
        args.number,
        args.text,
        media=[Path(m) for m in args.media],
        from_city=args.city,
        from_state=args.state,
    )
    if status != 200:
        print(f"the gateway answered HTTP {status}", file=sys.stderr)
        return 1
    for reply in replies:
        print(f"<< {reply}")
    if not replies:
        print("(no reply: the text went to the city's mailbox)")
    return 0


def cmd_sandbox_reply(args: argparse.Namespace) -> int:
    from gateway.sandbox import reply_as_agent

    config = Path(args.config) if args.config else SANDBOX_DIR / "sms311.yaml"
    settings = load_settings(config, os.environ)
    try:
        sent = reply_as_agent(settings, args.mailbox, args.text, sender=args.sender)
    except (ValueError, OSError) as exc:
        print(f"sms311: {exc}", file=sys.stderr)
        return 1
    for record in sent:
        print(f">> to {record['to']}: {record['body']}")
    if not sent:
        print("(nothing texted: see the gateway's log for why)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sms311", description=__doc__)
    parser.add_argument("--config", help="settings file (default: $GATEWAY_CONFIG or "
                        "/etc/sms311/sms311.yaml)")
    commands = parser.add_subparsers(dest="command", required=True)

    commands.add_parser("check-config", help="validate settings and the municipality map"
                        ).set_defaults(func=cmd_check_config)
    commands.add_parser("run", help="web and worker in one process").set_defaults(func=cmd_run)
    commands.add_parser("web", help="the webhooks, health and metrics").set_defaults(func=cmd_web)
    commands.add_parser("worker", help="the outbox dispatcher (and mail listeners)"
                        ).set_defaults(func=cmd_worker)

    db = commands.add_parser("db", help="database schema")
    db.add_argument("db_command", choices=["upgrade", "status"])
    db.set_defaults(func=cmd_db)

    outbox = commands.add_parser("outbox", help="list outbox rows (parked by default), retry one")
    outbox_commands = outbox.add_subparsers(dest="outbox_command")
    listing = outbox_commands.add_parser("list")
    for target in (outbox, listing):
        target.add_argument("--status", default="parked", choices=["pending", "sent", "parked"])
        target.add_argument("--all", action="store_true", help="every row, whatever its status")
    retry = outbox_commands.add_parser("retry", help="queue a parked row again")
    retry.add_argument("id", type=int)
    outbox.set_defaults(func=cmd_outbox)

    privacy = commands.add_parser("privacy", help="retention, access and erasure requests")
    privacy_commands = privacy.add_subparsers(dest="privacy_command", required=True)
    purge = privacy_commands.add_parser(
        "purge", help="blank texts older than privacy.retention_days (the worker does it daily)"
    )
    purge.add_argument("--days", type=int, help="override privacy.retention_days")
    export = privacy_commands.add_parser("export", help="everything stored about one number (JSON)")
    export.add_argument("number")
    erase = privacy_commands.add_parser("delete", help="erase everything stored about one number")
    erase.add_argument("number")
    erase.add_argument("--yes", action="store_true", help="really erase")
    privacy.set_defaults(func=cmd_privacy)

    directory = commands.add_parser("directory", help="municipality directory tools")
    directory_commands = directory.add_subparsers(dest="directory_command", required=True)
    build = directory_commands.add_parser(
        "build", help="build a directory of every census subdivision (a national short code)"
    )
    build.add_argument("--census", type=Path, required=True,
                       help="derived_csd_with_province.csv (census subdivisions)")
    build.add_argument("--output", type=Path, required=True)
    build.add_argument("--evidence", type=Path, help="canada_311_evidence.json (optional)")
    build.add_argument("--merge", type=Path, help="a hand-curated map whose entries win")
    build.set_defaults(func=cmd_directory_build)

    sandbox = commands.add_parser("sandbox", help="the embedded sandbox (make run)")
    sandbox_commands = sandbox.add_subparsers(dest="sandbox_command", required=True)
    sandbox_run = sandbox_commands.add_parser("run", help="start the sandbox gateway")
    sandbox_run.add_argument("--dir", type=Path, default=SANDBOX_DIR)
    sandbox_run.add_argument("--map", type=Path, default=Path("municipality_map.yaml"))
    sandbox_run.add_argument("--port", type=int, default=8311, help="web port (first run only)")
    sandbox_run.add_argument("--smtp-port", type=int, default=8025,
                             help="sandbox mail server port (first run only)")
    sandbox_run.set_defaults(func=cmd_sandbox_run)
    text = sandbox_commands.add_parser("text", help="text the sandbox gateway as a resident")
    text.add_argument("number", help="the resident's number, e.g. 613-555-0123")
    text.add_argument("text")
    text.add_argument("--media", action="append", default=[], help="a file to attach (MMS)")
    text.add_argument("--city", help="Twilio's FromCity")
    text.add_argument("--state", help="Twilio's FromState")
    text.set_defaults(func=cmd_sandbox_text)
    reply = sandbox_commands.add_parser(
        "reply", help="answer the latest email in a sandbox mailbox, as the city's agent"
    )
    reply.add_argument("mailbox", help="e.g. 311@ottawa.example")
    reply.add_argument("text")
    reply.add_argument("--sender", help="the agent's address (default agent@<mailbox domain>)")
    reply.set_defaults(func=cmd_sandbox_reply)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result: int = args.func(args)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    except (SchemaOutOfDate, StoreUnavailable) as exc:
        print(f"sms311: {exc}", file=sys.stderr)
        return 1
    return result
