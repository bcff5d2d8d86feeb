"""`sms311 [--config FILE] <command>`; `python -m gateway` is the same.

Commands: check-config, run, web, worker, db upgrade|status, outbox [list|retry ID],
privacy purge|export|delete, directory build, sandbox run|text|reply, and the staff
console's accounts:

    user add EMAIL --name NAME --role agent|supervisor|admin [--municipality ID …]
             [--password-stdin] [--language en|fr]
    user list [--json]
    user disable EMAIL | user enable EMAIL
    user passwd EMAIL [--password-stdin]
    user totp EMAIL --enable|--disable
    user set EMAIL [--name NAME] [--role ROLE] [--municipality ID …] [--language en|fr|auto]

Without --password-stdin, `user add` and `user passwd` print a one-time password (shown
once) and the user chooses a new one at their first sign-in.

Exit codes: 0 done; 1 refused (a duplicate or unknown account, an older or newer database
schema, the database or the sandbox gateway unreachable); 2 a usage or configuration problem.
`run`, `web` and `worker` create the schema on an empty database. `sms311 COMMAND --help`
describes each command.
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import faulthandler
import getpass
import json
import logging
import os
import shlex
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from gateway.logs import setup_logging
from gateway.sandbox_data import SAMPLE_MEDIA
from gateway.settings import (
    ConfigError,
    Problem,
    Settings,
    check_config,
    check_email_address,
    config_path_from,
    load_municipality_map,
    load_settings,
)
from gateway.store import SchemaOutOfDate, StoreUnavailable

if TYPE_CHECKING:
    from gateway.store.console import ConsoleStore, ConsoleTx, Role, User

SANDBOX_DIR = Path("var/sandbox")  # where `make run` keeps the sandbox (relative to the repo)
NAME_MAX_CHARS = 200  # an account's name (the users table's limit)

log = logging.getLogger(__name__)


def _settings(args: argparse.Namespace) -> Settings:
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
    path = config_path_from(args.config, os.environ)
    problems = check_config(path, os.environ)
    for problem in problems:
        print(problem)
    if problems:
        return 2
    print(f"{path}: OK")
    return 0


def _run(args: argparse.Namespace, *, web: bool, worker: bool) -> int:
    from gateway.app import Gateway
    from gateway.run.server import run_gateway

    settings = _settings(args)
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

    store = open_store(_settings(args).database)
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


def cmd_failed(args: argparse.Namespace) -> int:
    """`sms311 failed list|show|retry|delete`: the reply emails that were not texted."""
    from gateway.store.reply_mail import (
        count_failed_emails,
        delete_failed_email,
        get_failed_email,
        list_failed_emails,
    )

    settings = _settings(args)
    if args.failed_command == "retry":
        from gateway.app import Gateway
        from gateway.flows.reply_in import ReplyService

        gateway = Gateway.from_settings(settings)
        try:
            gateway.store.check_schema()
            try:
                disposition = ReplyService(gateway).retry(args.id)
            except KeyError:
                print(f"sms311: no failed email {args.id} (see `sms311 failed list`)",
                      file=sys.stderr)
                return 1
        finally:
            gateway.close()
        print(f"failed email {args.id}: {disposition.outcome} ({disposition.reason})")
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
                sys.stdout.buffer.write(kept.raw)
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
            where = kept.origin.get("kind", "?")
            print(
                f"{kept.id}\t{kept.received_at:%Y-%m-%d %H:%M:%S}\t{where}\t{state}\t"
                f"from={kept.sender or '?'}\tconversation={kept.conversation_id or '-'}\t"
                f"{kept.size} bytes\t{kept.reason}"
            )
        print(f"{unresolved} failed reply email(s) not resolved", file=sys.stderr)
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
    from gateway.settings.directory_build import build_directory_command

    return build_directory_command(args.census, args.output, args.evidence, args.merge)


def cmd_sandbox_run(args: argparse.Namespace) -> int:
    from gateway.run.sandbox import run_sandbox

    setup_logging("INFO")
    return run_sandbox(args.dir, args.map, args.port, args.smtp_port)


def _sandbox_settings(args: argparse.Namespace) -> Settings:
    """The settings of the sandbox the `sandbox text`/`reply` commands talk to."""
    config = Path(args.config) if args.config else SANDBOX_DIR / "sms311.yaml"
    if not config.exists():
        raise ConfigError([Problem(str(config), None, "", "no such file: start the sandbox "
                                   "first (`make run`), or name its settings with --config")])
    return load_settings(config, os.environ)


def cmd_sandbox_text(args: argparse.Namespace) -> int:
    from gateway.run.sandbox import SandboxError, media_file, send_text

    settings = _sandbox_settings(args)
    try:
        status, replies = send_text(
            settings,
            args.number,
            args.text,
            media=[media_file(m) for m in args.media],
            from_city=args.city,
            from_state=args.state,
        )
    except SandboxError as exc:
        print(f"sms311: {exc}", file=sys.stderr)
        return exc.code
    if status != 200:
        print(f"sms311: the gateway answered HTTP {status}", file=sys.stderr)
        return 1
    for reply in replies:
        print("<< " + reply.replace("\n", "\n   "))
    if not replies:
        print("(no reply: the text was emailed)")
    return 0


def cmd_sandbox_reply(args: argparse.Namespace) -> int:
    from gateway.run.sandbox import SandboxError, reply_as_agent

    settings = _sandbox_settings(args)
    try:
        sent = reply_as_agent(settings, args.mailbox, args.text, sender=args.sender)
    except SandboxError as exc:
        print(f"sms311: {exc}", file=sys.stderr)
        return exc.code
    for record in sent:
        print(f">> to {record['to']}: {record['body']}")
    if not sent:
        print("(nothing texted: see the gateway's log for why)")
    return 0


# --------------------------------------------------------------------------------------------
# user …: the console's accounts


class _Failure(Exception):
    """Print `sms311: message` and exit with `code` (1 refused, 2 usage/configuration)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


@contextmanager
def _console_store(settings: Settings) -> Iterator[ConsoleStore]:
    from gateway.store import open_store
    from gateway.store.console import ConsoleStore

    store = open_store(settings.database)
    try:
        store.check_schema()
        yield ConsoleStore(store)
    finally:
        store.close()


def _municipality_ids(settings: Settings, given: Sequence[str]) -> list[str]:
    """The ids named by `--municipality` (repeated, or comma-separated), each in the map."""
    from gateway.rules.municipalities import Directory, Match

    municipalities = load_municipality_map(settings.municipality_map)
    known = {m.id for m in municipalities}
    wanted = [part.strip() for value in given for part in value.split(",") if part.strip()]
    result: list[str] = []
    for raw in wanted:
        ident = raw.lower()
        if ident in known:
            result.append(ident)
            continue
        close = difflib.get_close_matches(ident, sorted(known), n=1, cutoff=0.6)
        guess = close[0] if close else None
        if guess is None:
            found = Directory(municipalities).match(raw)
            guess = found.municipality.id if isinstance(found, Match) else None
        hint = f" (did you mean {guess!r}?)" if guess else ""
        raise _Failure(
            2, f"unknown municipality {raw!r}{hint}: not an id in {settings.municipality_map}"
        )
    return sorted(dict.fromkeys(result))


def _read_password(email: str, name: str) -> str:
    """The password given on stdin (one line; a terminal asks twice), policy checked."""
    from gateway.rules.accounts import check_password_policy

    if sys.stdin is not None and sys.stdin.isatty():
        password = getpass.getpass(f"new password for {email}: ")
        if getpass.getpass("again: ") != password:
            raise _Failure(2, "the two passwords differ")
    else:
        password = sys.stdin.read() if sys.stdin is not None else ""
        if password.endswith("\n"):
            password = password[:-1]
        if password.endswith("\r"):
            password = password[:-1]
        if not password:
            raise _Failure(2, "--password-stdin: no password on standard input")
        if "\n" in password or "\r" in password:
            raise _Failure(2, "--password-stdin: standard input must hold one line, the password")
    reason = check_password_policy(password, email=email, name=name)
    if reason is not None:
        raise _Failure(2, f"password refused: it {reason}")
    return password


def _password_for(args: argparse.Namespace, email: str, name: str) -> tuple[str, str | None]:
    """(hash, one-time password or None) for `--password-stdin` or a generated password."""
    from gateway.rules.accounts import hash_password, new_one_time_password

    if args.password_stdin:
        return hash_password(_read_password(email, name)), None
    one_time = new_one_time_password()
    return hash_password(one_time), one_time


def _print_one_time(user_name: str, one_time: str) -> None:
    print(f"one-time password: {one_time}")
    print(f"(shown only this once: {user_name} chooses a new password at the first sign-in)")


def _needs_municipality(role: str, municipalities: Sequence[str]) -> None:
    if role != "admin" and not municipalities:
        article = "an" if role[:1] in "aeiou" else "a"
        raise _Failure(
            2, f"{article} {role} needs at least one --municipality (only an admin sees them all)"
        )


def _find_user(tx: ConsoleTx, email: str) -> User:
    user = tx.user_by_email(email.strip())
    if user is None:
        raise _Failure(1, f"no account for {email.strip()} (see `sms311 user list`)")
    return user


def _where(user: User) -> str:
    return "every municipality" if user.role == "admin" else ", ".join(user.municipalities)


def _user_add(args: argparse.Namespace, settings: Settings) -> int:
    from gateway.store.console import UserExists

    try:
        email = check_email_address(args.email).lower()
    except ValueError as exc:
        raise _Failure(2, f"{args.email!r} {exc}") from None
    name = _checked_name(args.name)
    role = cast("Role", args.role)
    municipalities = _municipality_ids(settings, args.municipalities)
    _needs_municipality(role, municipalities)
    if role == "admin" and municipalities:
        print("note: an admin sees every municipality; --municipality is kept for the record",
              file=sys.stderr)
    with _console_store(settings) as console:
        with console.reading() as tx:
            if tx.user_by_email(email) is not None:
                raise _Failure(1, f"there is already an account for {email}")
        password_hash, one_time = _password_for(args, email, name)
        now = datetime.now(UTC)
        try:
            with console.transaction() as tx:
                user = tx.add_user(
                    email, name, role, municipalities, password_hash,
                    must_change_password=one_time is not None, at=now,
                )
                if args.language:
                    tx.set_language(user.id, args.language, now)
                tx.audit(None, None, "user_add", at=now, detail={
                    "via": "cli", "email": user.email, "role": role,
                    "municipalities": list(municipalities),
                })
        except UserExists:
            raise _Failure(1, f"there is already an account for {email}") from None
    print(f"added {role} {user.email} ({name}): {_where(user)}")
    if one_time is not None:
        _print_one_time(name, one_time)
    return 0


def _user_list(args: argparse.Namespace, settings: Settings) -> int:
    with _console_store(settings) as console, console.reading() as tx:
        users = tx.list_users()
    if args.json:
        print(json.dumps([_user_json(user) for user in users], indent=2, ensure_ascii=False))
        return 0
    header = ("EMAIL", "NAME", "ROLE", "MUNICIPALITIES", "DISABLED", "TOTP")
    rows = [header] + [
        (
            user.email,
            user.name,
            user.role,
            "(all)" if user.role == "admin" else ",".join(user.municipalities) or "-",
            "yes" if user.disabled else "no",
            "on" if user.totp_secret else "off",
        )
        for user in users
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        print("  ".join(cells).rstrip())
    if not users:
        print("no accounts yet: add one with `sms311 user add EMAIL --name NAME --role admin`",
              file=sys.stderr)
    return 0


def _user_json(user: User) -> dict[str, Any]:
    """An account as `user list --json` shows it (never the password hash or TOTP secret)."""
    return {
        "email": user.email,
        "name": user.name,
        "role": user.role,
        "municipalities": list(user.municipalities),
        "disabled": user.disabled,
        "totp": user.totp_secret is not None,
        "must_change_password": user.must_change_password,
        "language": user.language,
        "created_at": user.created_at.isoformat(),
        "updated_at": user.updated_at.isoformat(),
    }


def _user_disable(args: argparse.Namespace, settings: Settings, disabled: bool) -> int:
    now = datetime.now(UTC)
    with _console_store(settings) as console, console.transaction() as tx:
        user = _find_user(tx, args.email)
        if user.disabled == disabled:
            print(f"{user.email} is already {'disabled' if disabled else 'enabled'}")
            return 0
        tx.set_disabled(user.id, disabled, now)
        action = "user_disable" if disabled else "user_enable"
        tx.audit(None, None, action, at=now, detail={"via": "cli", "email": user.email})
    if disabled:
        print(f"disabled {user.email}: they can no longer sign in")
    else:
        print(f"enabled {user.email}: they can sign in again")
    return 0


def _user_passwd(args: argparse.Namespace, settings: Settings) -> int:
    with _console_store(settings) as console:
        with console.reading() as tx:
            user = _find_user(tx, args.email)
        password_hash, one_time = _password_for(args, user.email, user.name)
        now = datetime.now(UTC)
        with console.transaction() as tx:
            tx.set_password(
                user.id, password_hash, must_change_password=one_time is not None, at=now
            )
            tx.audit(None, None, "user_passwd", at=now, detail={
                "via": "cli", "email": user.email, "one_time": one_time is not None,
            })
    print(f"new password set for {user.email}")
    if one_time is not None:
        _print_one_time(user.name, one_time)
    return 0


def _user_totp(args: argparse.Namespace, settings: Settings) -> int:
    from gateway.rules.accounts import new_totp_secret, totp_uri

    now = datetime.now(UTC)
    secret = new_totp_secret() if args.enable else None
    with _console_store(settings) as console, console.transaction() as tx:
        user = _find_user(tx, args.email)
        had = user.totp_secret is not None
        if secret is None and not had:
            print(f"two-factor sign-in is already off for {user.email}")
            return 0
        tx.set_totp(user.id, secret, now)
        tx.audit(None, None, "user_totp", at=now, detail={
            "via": "cli", "email": user.email, "totp": secret is not None,
        })
    if secret is None:
        print(f"two-factor sign-in is off for {user.email}")
        return 0
    if had:
        print("(this replaces the previous authenticator: the old codes no longer work)")
    print(f"two-factor sign-in is on for {user.email}; add this to an authenticator app")
    print("(scan the URI as a QR code, or type in the secret):")
    print(totp_uri(user.email, secret))
    print(f"secret: {secret}")
    return 0


def _user_set(args: argparse.Namespace, settings: Settings) -> int:
    if args.name is None and args.role is None and args.municipalities is None and (
        args.language is None
    ):
        raise _Failure(2, "nothing to change: give --name, --role, --municipality or --language")
    name = _checked_name(args.name) if args.name is not None else None
    municipalities = (
        _municipality_ids(settings, args.municipalities)
        if args.municipalities is not None
        else None
    )
    now = datetime.now(UTC)
    changes: dict[str, Any] = {}
    with _console_store(settings) as console, console.transaction() as tx:
        user = _find_user(tx, args.email)
        role = cast("Role", args.role or user.role)
        _needs_municipality(role, user.municipalities if municipalities is None else municipalities)
        if name is not None and name != user.name:
            tx.set_name(user.id, name, now)
            changes["name"] = name
        if role != user.role:
            tx.set_role(user.id, role, now)
            changes["role"] = role
        if municipalities is not None and tuple(municipalities) != user.municipalities:
            tx.set_municipalities(user.id, municipalities, now)
            changes["municipalities"] = municipalities
        if args.language is not None:
            language = None if args.language == "auto" else args.language
            if language != user.language:
                tx.set_language(user.id, language, now)
                changes["language"] = language
        if changes:
            tx.audit(None, None, "user_set", at=now,
                     detail={"via": "cli", "email": user.email, **changes})
    if not changes:
        print(f"{user.email}: nothing changed")
        return 0
    shown = ", ".join(
        f"{key} {', '.join(value) if isinstance(value, list) else value or 'auto'}"
        for key, value in changes.items()
    )
    print(f"updated {user.email}: {shown}")
    return 0


def _checked_name(value: str) -> str:
    name = value.strip()
    if not name:
        raise _Failure(2, "--name must not be empty")
    if len(name) > NAME_MAX_CHARS:
        raise _Failure(2, f"--name must be at most {NAME_MAX_CHARS} characters")
    return name


def cmd_user(args: argparse.Namespace) -> int:
    settings = _settings(args)
    commands: dict[str, Callable[[], int]] = {
        "add": lambda: _user_add(args, settings),
        "list": lambda: _user_list(args, settings),
        "disable": lambda: _user_disable(args, settings, True),
        "enable": lambda: _user_disable(args, settings, False),
        "passwd": lambda: _user_passwd(args, settings),
        "totp": lambda: _user_totp(args, settings),
        "set": lambda: _user_set(args, settings),
    }
    try:
        return commands[args.user_command]()
    except _Failure as exc:
        print(f"sms311: {exc}", file=sys.stderr)
        return exc.code


def _command(
    commands: Any, name: str, summary: str, description: str | None = None
) -> argparse.ArgumentParser:
    """Add the subcommand `name`: `summary` is its line in the command list, `description`
    (default: the summary as a sentence) what its own --help says."""
    parser: argparse.ArgumentParser = commands.add_parser(
        name, help=summary, description=description or summary[:1].upper() + summary[1:] + "."
    )
    return parser


def _add_user_parser(commands: Any) -> None:
    roles = ("agent", "supervisor", "admin")
    user = _command(
        commands, "user", "staff console accounts",
        "Accounts of the staff web console (/console/). Exit 1 when refused "
        "(duplicate or unknown account), 2 for a usage or configuration problem.",
    )
    user_commands = user.add_subparsers(dest="user_command", required=True, metavar="COMMAND")

    def municipality_option(target: argparse.ArgumentParser, what: str) -> None:
        target.add_argument(
            "--municipality", dest="municipalities", action="append", metavar="ID",
            default=None if what == "set" else [],
            help="a municipality id of the map (repeat it, or separate ids with commas); "
            + ("replaces the list" if what == "set" else "agents and supervisors need one"),
        )

    def password_option(target: argparse.ArgumentParser) -> None:
        target.add_argument(
            "--password-stdin", action="store_true",
            help="read the password from standard input (one line; a terminal asks twice); "
            "without it a one-time password is printed and must be changed at first sign-in",
        )

    def email_argument(target: argparse.ArgumentParser) -> None:
        target.add_argument("email", help="the account's email address")

    add = _command(
        user_commands, "add", "create an account",
        "Create a console account for EMAIL with a role and the municipalities it serves. "
        "Without --password-stdin it prints a one-time password, shown once.",
    )
    email_argument(add)
    add.add_argument("--name", required=True, help="the name colleagues see")
    add.add_argument("--role", required=True, choices=roles,
                     help="agent, supervisor (also the audit log and exports) or admin "
                     "(every municipality)")
    municipality_option(add, "add")
    password_option(add)
    add.add_argument("--language", choices=("en", "fr"),
                     help="the console's language (default: the browser's)")

    listing = _command(user_commands, "list", "every account",
                       "List every console account: email, name, role, municipalities, "
                       "disabled, two-factor sign-in.")
    listing.add_argument("--json", action="store_true", help="JSON instead of a table")

    for name, summary, description in (
        ("disable", "stop an account from signing in",
         "Disable the account: it can no longer sign in (its sessions end at once)."),
        ("enable", "let a disabled account sign in again",
         "Enable a disabled account: it can sign in again."),
    ):
        email_argument(_command(user_commands, name, summary, description))

    passwd = _command(
        user_commands, "passwd", "set a new password",
        "Set a new password for the account (its sessions end). Without --password-stdin "
        "it prints a one-time password that must be changed at the next sign-in.",
    )
    email_argument(passwd)
    password_option(passwd)

    totp = _command(
        user_commands, "totp", "two-factor sign-in (authenticator app codes)",
        "Turn two-factor sign-in on (a new secret: prints the otpauth:// URI and the secret "
        "for an authenticator app) or off for the account.",
    )
    email_argument(totp)
    switch = totp.add_mutually_exclusive_group(required=True)
    switch.add_argument("--enable", action="store_true",
                        help="new secret: prints the otpauth:// URI and the secret")
    switch.add_argument("--disable", action="store_true", help="sign in with the password only")

    change = _command(
        user_commands, "set", "change name, role, municipalities, language",
        "Change the account's name, role, municipalities or console language; what is not "
        "given stays as it is.",
    )
    email_argument(change)
    change.add_argument("--name", help="the name colleagues see")
    change.add_argument("--role", choices=roles, help="the new role")
    municipality_option(change, "set")
    change.add_argument("--language", choices=("en", "fr", "auto"),
                        help="auto: follow the browser")
    user.set_defaults(func=cmd_user)


def build_parser() -> argparse.ArgumentParser:
    """The `sms311` command line: every subcommand has a line in the command list and a
    description in its own --help."""
    parser = argparse.ArgumentParser(
        prog="sms311", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", help="settings file (default: $GATEWAY_CONFIG or "
                        "/etc/sms311/sms311.yaml)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _command(
        commands, "check-config", "validate settings and the municipality map",
        "Check the settings file and the municipality map: print every problem as "
        "file:line: key: message and exit 2, or print OK and exit 0.",
    ).set_defaults(func=cmd_check_config)
    on_empty = (" On an empty database it first creates the schema; an older (or newer) "
                "schema is refused with the command that fixes it.")
    _command(commands, "run", "web and worker in one process",
             "Run the whole gateway in one process: the web half (webhooks, console, "
             "/healthz, /metrics) and the worker (outbox, mail listeners)." + on_empty
             ).set_defaults(func=cmd_run)
    _command(commands, "web", "the webhooks, console, health and metrics",
             "Run the web half only: Twilio webhooks, the staff console, /healthz and "
             "/metrics." + on_empty).set_defaults(func=cmd_web)
    _command(commands, "worker", "the outbox dispatcher (and mail listeners)",
             "Run the worker only: the outbox dispatcher (emails, paced SMS) and the mail "
             "listeners (IMAP, SMTP/LMTP ingress)." + on_empty).set_defaults(func=cmd_worker)

    db = _command(commands, "db", "database schema",
                  "The database schema: create or migrate it, or show its revision.")
    db_commands = db.add_subparsers(dest="db_command", required=True, metavar="COMMAND")
    _command(db_commands, "upgrade", "create or migrate the schema to this version's",
             "Create the schema on an empty database or migrate an older one to this "
             "version's revision (idempotent; concurrent upgrades on PostgreSQL wait for "
             "each other). A schema written by a newer sms311 is refused.")
    _command(db_commands, "status", "print the schema revision the database is at")
    db.set_defaults(func=cmd_db)

    outbox = _command(
        commands, "outbox", "list outbox rows (parked by default), retry one",
        "List the outbox's emails and SMS (the parked ones by default: those that kept "
        "failing), or queue a parked row again. Prints the outbox counts on stderr.",
    )
    outbox_commands = outbox.add_subparsers(dest="outbox_command", metavar="COMMAND")
    listing = _command(outbox_commands, "list", "list outbox rows (the default)",
                       "List outbox rows: id, kind, status, attempts, created, last error.")
    for target in (outbox, listing):
        target.add_argument("--status", default="parked", choices=["pending", "sent", "parked"],
                            help="the rows of this status (default: parked)")
        target.add_argument("--all", action="store_true", help="every row, whatever its status")
    retry = _command(outbox_commands, "retry", "queue a parked row again",
                     "Queue a parked row again (attempts reset), once its cause is fixed.")
    retry.add_argument("id", type=int, help="the row's id (first column of `outbox list`)")
    outbox.set_defaults(func=cmd_outbox)

    failed = _command(
        commands, "failed", "reply emails that were not texted: list, show, retry, delete",
        "Agents' reply emails that were not texted (unroutable, sender not an agent, empty "
        "once quotes and signature are cut, unreadable, malformed), kept whole whichever "
        "door they came in by (IMAP or the SMTP/LMTP ingress). List them (the unresolved "
        "ones by default), print one as it arrived, hand one to the reply pipeline again "
        "once its cause is fixed, or delete one.",
    )
    failed_commands = failed.add_subparsers(dest="failed_command", metavar="COMMAND")
    failed_list = _command(
        failed_commands, "list", "list the kept failed replies (the default)",
        "List kept failed replies, newest first: id, received, door, state, sender, "
        "conversation, size, reason. Prints how many are unresolved on stderr.",
    )
    for target in (failed, failed_list):
        target.add_argument("--all", action="store_true",
                            help="also the resolved ones (texted after a retry)")
        target.add_argument("--limit", type=int, default=100,
                            help="at most this many (default: 100)")
    failed_show = _command(failed_commands, "show", "print one as it arrived (raw email)",
                           "Print one kept failed reply exactly as it arrived (RFC 5322).")
    failed_retry = _command(
        failed_commands, "retry", "hand one to the reply pipeline again",
        "Hand one kept failed reply to the reply pipeline again, as if it had just arrived "
        "(once its cause is fixed: the sender added to the municipality map, …). Exit 0 "
        "when it is now texted (or ignored), 1 when it failed again (the reason is printed; "
        "the agent is not told a second time).",
    )
    failed_delete = _command(failed_commands, "delete", "delete one",
                             "Delete one kept failed reply (the IMAP Failed mailbox's copy, "
                             "if any, is left alone).")
    for target in (failed_show, failed_retry, failed_delete):
        target.add_argument("id", type=int, help="its id (first column of `failed list`)")
    failed.set_defaults(func=cmd_failed, failed_command="list")

    privacy = _command(commands, "privacy", "retention, access and erasure requests",
                       "Privacy: blank old texts, export or erase what is stored about one "
                       "phone number.")
    privacy_commands = privacy.add_subparsers(
        dest="privacy_command", required=True, metavar="COMMAND"
    )
    purge = _command(
        privacy_commands, "purge",
        "blank texts older than privacy.retention_days (the worker does it daily)",
    )
    purge.add_argument("--days", type=int, help="override privacy.retention_days")
    export = _command(privacy_commands, "export",
                      "everything stored about one number (JSON)",
                      "Print everything stored about one phone number as JSON (an access "
                      "request).")
    export.add_argument("number", help="the phone number, e.g. 613-555-0123")
    erase = _command(privacy_commands, "delete", "erase everything stored about one number",
                     "Erase everything stored about one phone number (an erasure request); "
                     "needs --yes.")
    erase.add_argument("number", help="the phone number, e.g. 613-555-0123")
    erase.add_argument("--yes", action="store_true", help="really erase")
    privacy.set_defaults(func=cmd_privacy)

    directory = _command(commands, "directory", "municipality directory tools")
    directory_commands = directory.add_subparsers(
        dest="directory_command", required=True, metavar="COMMAND"
    )
    build = _command(
        directory_commands, "build",
        "build a directory of every census subdivision (a national short code)",
        "Write a municipality map with one entry per census subdivision (example "
        "mailboxes), optionally merged with a hand-curated map whose entries win.",
    )
    build.add_argument("--census", type=Path, required=True,
                       help="derived_csd_with_province.csv (census subdivisions)")
    build.add_argument("--output", type=Path, required=True, help="the YAML file to write")
    build.add_argument("--evidence", type=Path, help="canada_311_evidence.json (optional)")
    build.add_argument("--merge", type=Path, help="a hand-curated map whose entries win")
    build.set_defaults(func=cmd_directory_build)

    sandbox = _command(commands, "sandbox", "the embedded sandbox (make run)",
                       "The embedded sandbox behind `make run`: SQLite, a sandbox SMS "
                       "provider and a mail server saving .eml files; play resident and agent.")
    sandbox_commands = sandbox.add_subparsers(
        dest="sandbox_command", required=True, metavar="COMMAND"
    )
    sandbox_run = _command(
        sandbox_commands, "run", "start the sandbox gateway",
        "Start the sandbox gateway (what `make run` does): writes its settings under --dir "
        "on the first run, creates the database, prints where to look.",
    )
    sandbox_run.add_argument("--dir", type=Path, default=SANDBOX_DIR,
                             help=f"where the sandbox keeps everything (default {SANDBOX_DIR})")
    sandbox_run.add_argument("--map", type=Path, default=Path("municipality_map.yaml"),
                             help="the municipality map (default municipality_map.yaml)")
    sandbox_run.add_argument("--port", type=int, default=8311, help="web port (first run only)")
    sandbox_run.add_argument("--smtp-port", type=int, default=8025,
                             help="sandbox mail server port (first run only)")
    sandbox_run.set_defaults(func=cmd_sandbox_run)
    text = _command(
        sandbox_commands, "text", "text the sandbox gateway as a resident",
        "Text the running sandbox gateway as a resident (a webhook signed as Twilio signs "
        "it) and print what it texts back. Exit 1 when the gateway does not answer, 2 for "
        "a bad number or file.",
    )
    text.add_argument("number", help="the resident's number, e.g. 613-555-0123")
    text.add_argument("text", help="the text message")
    text.add_argument("--media", action="append", default=[], metavar="FILE",
                      help=f"a file to attach (MMS); `{SAMPLE_MEDIA}`: the sandbox's sample "
                      "picture (repeat for several)")
    text.add_argument("--city", help="Twilio's FromCity")
    text.add_argument("--state", help="Twilio's FromState")
    text.set_defaults(func=cmd_sandbox_text)
    reply = _command(
        sandbox_commands, "reply",
        "answer the latest email in a sandbox mailbox, as the city's agent",
        "Answer the latest email in a sandbox mailbox as the city's agent would (quoted "
        "history below), through the gateway's SMTP reply ingress, and print what the "
        "gateway then texts.",
    )
    reply.add_argument("mailbox", help="e.g. 311@ottawa.example")
    reply.add_argument("text", help="the agent's answer")
    reply.add_argument("--sender", help="the agent's address (default agent@<mailbox domain>)")
    reply.set_defaults(func=cmd_sandbox_reply)

    _add_user_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result: int = args.func(args)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    except SchemaOutOfDate as exc:
        print(f"sms311: {schema_advice(exc, args)}", file=sys.stderr)
        return 1
    except StoreUnavailable as exc:
        print(f"sms311: {exc}", file=sys.stderr)
        return 1
    return result
