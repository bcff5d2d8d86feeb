"""What every console request shares: the signed-in user, the gateway, the clock."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import UTC, datetime
from typing import ParamSpec, TypeVar, cast

import flask_login
from flask import current_app, request
from flask_login import UserMixin, current_user

from gateway.app import Gateway
from gateway.store import StoreUnavailable
from gateway.store.console import Scope, User

P = ParamSpec("P")
R = TypeVar("R")


def login_required(view: Callable[P, R]) -> Callable[P, R]:
    """Flask-Login's `login_required`, typed: signed-out requests go to `unauthorized`."""
    return cast(Callable[P, R], flask_login.login_required(view))


class ConsoleUser(UserMixin):  # type: ignore[misc]
    """Flask-Login's view of a console account.

    The session stores `get_id()`: the account id and a fingerprint of its password hash,
    so a new password (or `user passwd`) ends the sessions opened with the old one.
    """

    def __init__(self, account: User) -> None:
        self.account = account

    def get_id(self) -> str:
        return f"{self.account.id}:{fingerprint(self.account.password_hash)}"

    @property
    def is_active(self) -> bool:
        return not self.account.disabled

    @property
    def scope(self) -> Scope:
        return self.account.scope


def fingerprint(password_hash: str) -> str:
    return hashlib.sha256(password_hash.encode()).hexdigest()[:16]


def load_user(gateway: Gateway, session_id: str) -> ConsoleUser | None:
    """Flask-Login's user loader: None (signed out) unless the account exists, is enabled
    and still has the password the session was opened with."""
    ident, _, print_ = session_id.partition(":")
    if not (ident.isascii() and ident.isdigit() and len(ident) <= 18):
        return None
    try:
        with gateway.console.reading() as tx:
            account = tx.get_user(int(ident))
    except StoreUnavailable:
        return None
    if account is None or account.disabled or fingerprint(account.password_hash) != print_:
        return None
    return ConsoleUser(account)


def user() -> User:
    """The signed-in account (only in views behind `login_required`)."""
    who = current_user
    assert isinstance(who, ConsoleUser)
    return who.account


def now() -> datetime:
    clock = current_app.extensions.get("sms311.clock")
    return clock() if clock is not None else datetime.now(UTC)


def remote_addr() -> str | None:
    return request.remote_addr


def is_htmx() -> bool:
    return request.headers.get("HX-Request") == "true"
