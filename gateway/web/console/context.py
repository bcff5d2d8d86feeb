"""What every console request shares: the signed-in user, the gateway, the clock."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import ParamSpec, TypeVar, cast

import flask_login
from flask import current_app, request, session
from flask_login import UserMixin, current_user

from gateway.app import Gateway
from gateway.store import StoreUnavailable
from gateway.store.console import Scope, User

P = ParamSpec("P")
R = TypeVar("R")


def login_required(view: Callable[P, R]) -> Callable[P, R]:
    """Flask-Login's `login_required`, typed: signed-out requests go to `unauthorized`."""
    return cast(Callable[P, R], flask_login.login_required(view))


SIGNED_IN_AT = "sms311_signed_in"  # session key: when the user signed in (POSIX seconds)
CLOCK_SKEW_SECONDS = 300.0  # a sign-in time this far in the future is not believed


class ConsoleUser(UserMixin):  # type: ignore[misc]
    """Flask-Login's view of a console account.

    The session stores `get_id()`: the account id and its session epoch
    (`users.session_epoch`). Signing out, a new password (in the console or
    `sms311 user passwd`) and `sms311 user disable`/`enable` raise the epoch, so every
    session opened before (a copied cookie too, or a "remember me" cookie) is refused on
    every instance.
    """

    def __init__(self, account: User, epoch: int) -> None:
        self.account = account
        self.epoch = epoch

    def get_id(self) -> str:
        return f"{self.account.id}:{self.epoch}"

    @property
    def is_active(self) -> bool:
        return not self.account.disabled

    @property
    def scope(self) -> Scope:
        return self.account.scope


def _number(text: str) -> int | None:
    if not (text.isascii() and text.isdigit() and len(text) <= 18):
        return None
    return int(text)


def load_user(gateway: Gateway, session_id: str) -> ConsoleUser | None:
    """Flask-Login's user loader: None (signed out) unless the session's sign-in time is
    within `console.session_max_hours`, and the account exists, is enabled and still has
    the session epoch the session was opened with."""
    ident, _, epoch_text = session_id.partition(":")
    user_id, epoch = _number(ident), _number(epoch_text)
    if user_id is None or epoch is None or not _within_lifetime(gateway):
        return None
    try:
        with gateway.console.reading() as tx:
            account = tx.get_user(user_id)
            current = tx.session_epoch(user_id)
    except StoreUnavailable:
        return None
    if account is None or account.disabled or current != epoch:
        return None
    return ConsoleUser(account, epoch)


def _within_lifetime(gateway: Gateway) -> bool:
    """The session's sign-in time is known and less than `console.session_max_hours` ago
    (a session without one, e.g. restored from a remember-me cookie, is not signed in)."""
    signed_in = session.get(SIGNED_IN_AT)
    if isinstance(signed_in, bool) or not isinstance(signed_in, int | float):
        return False
    age = now().timestamp() - float(signed_in)
    limit = gateway.settings.console.session_max_hours * 3600.0
    return -CLOCK_SKEW_SECONDS <= age < limit


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
