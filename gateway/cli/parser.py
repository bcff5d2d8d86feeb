"""The `sms311` command line as argparse sees it: every command, its flags, its line in the
command list and the description its own --help prints. The commands themselves are in
`ops` (operation), `users` (console accounts) and `sandbox` (`make run`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from gateway.cli.ops import (
    cmd_check_config,
    cmd_db,
    cmd_directory_build,
    cmd_failed,
    cmd_outbox,
    cmd_privacy,
    cmd_run,
    cmd_web,
    cmd_worker,
)
from gateway.cli.sandbox import (
    SANDBOX_DIR,
    cmd_sandbox_reply,
    cmd_sandbox_run,
    cmd_sandbox_text,
)
from gateway.cli.users import cmd_user
from gateway.sandbox_data import SAMPLE_MEDIA

DESCRIPTION = """`sms311 [--config FILE] <command>`; `python -m gateway` is the same.

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
"""  # `sms311 --help`


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
        prog="sms311", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
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
    failed_show = _command(
        failed_commands, "show", "print one as it arrived (raw email)",
        "Print one kept failed reply as it arrived (RFC 5322), without terminal control "
        "sequences (escape sequences, control characters; bytes that are not UTF-8 shown "
        "as \\xNN). --raw writes its exact bytes instead, to a file or a pipe only.",
    )
    failed_show.add_argument("--raw", action="store_true",
                             help="the exact bytes, control sequences included (not on a "
                                  "terminal: redirect it to a file)")
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
    sandbox_run.add_argument("--ingress-port", type=int,
                             help="the gateway's reply ingress port, which `sandbox reply` "
                             "uses (first run only; default: a free port, kept in the "
                             "settings file)")
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

