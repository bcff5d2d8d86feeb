"""`sms311 user add | list | disable | enable | passwd | totp | set`: the staff console's
accounts. Exit 1 when refused (a duplicate or unknown account), 2 for a usage or
configuration problem; every change is in the audit log (`via: cli`)."""

from __future__ import annotations

import argparse
import difflib
import getpass
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

from gateway.cli.ops import settings_of
from gateway.cli.output import printable, printable_json
from gateway.settings import Settings, check_email_address, load_municipality_map

if TYPE_CHECKING:
    from gateway.store.console import ConsoleStore, ConsoleTx, Role, User

NAME_MAX_CHARS = 200  # an account's name (the users table's limit)


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
        print(printable_json([_user_json(user) for user in users]))
        return 0
    header = ("EMAIL", "NAME", "ROLE", "MUNICIPALITIES", "DISABLED", "TOTP")
    rows = [header] + [
        tuple(printable(cell, one_line=True) for cell in (  # names come from the console
            user.email,
            user.name,
            user.role,
            "(all)" if user.role == "admin" else ",".join(user.municipalities) or "-",
            "yes" if user.disabled else "no",
            "on" if user.totp_secret else "off",
        ))
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
    settings = settings_of(args)
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

