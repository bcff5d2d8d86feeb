"""Signing in and out: `/console/login` (email + password, then a TOTP code for accounts that
have one), `/console/logout`, `/console/password` (forced after a one-time password).

Sign-in attempts are rate-limited per account and per client address, in the database (so
the limit holds across instances) but apart from the audit log (`login_attempts`, pruned
after the window): after `console.login_max_failures` failures for one email, or ten
times as many from one address, within `console.login_window_minutes`, sign-in answers
429 until the window has passed (behind a reverse proxy, set `web.trusted_proxies` so the
address is the client's, not the proxy's). The limit is atomic: each attempt is counted
and recorded in one write transaction BEFORE its password (or code) is checked, and
forgotten again when it was right, so N concurrent guesses get exactly the limit checked.
Unknown emails, wrong passwords and wrong codes go to `login_attempts` only; the audit log
keeps sign-ins, sign-outs and account actions.
An unknown email costs the same argon2 work as a wrong password (no account probing).

Sessions end server-side: the cookie carries the account's session epoch
(`context.ConsoleUser`), which signing out, a new password and disabling raise; and the
sign-in time, after which (`console.session_max_hours`) the user signs in again however
active (`console.session_hours` is the idle timeout).
"""

from __future__ import annotations

import functools
import logging
import threading
import unicodedata
from datetime import timedelta
from urllib.parse import urlsplit

from flask import Response, flash, redirect, render_template, request, session, url_for
from flask.typing import ResponseReturnValue
from flask_babel import get_locale
from flask_babel import gettext as _
from flask_login import current_user, login_user, logout_user

from gateway.rules import accounts
from gateway.store.console import User
from gateway.web.console import display
from gateway.web.console.context import (
    SIGNED_IN_AT,
    ConsoleUser,
    is_htmx,
    now,
    remote_addr,
)
from gateway.web.extension import current_gateway as gateway

log = logging.getLogger(__name__)

ADDRESS_FACTOR = 10  # one address (an office behind NAT) may fail for several accounts
# Unicode categories a `next` must not hold: controls, format characters, surrogates,
# private use, unassigned, line and paragraph separators.
_CONTROL_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
_PENDING = "sms311_pending_totp"  # the account id between the password and the code


# Each Argon2id hash or check takes 64 MiB (the RFC 9106 profile) for ~50 ms: one at a time
# in this process, so a flood of sign-ins costs time (and meets the rate limit), never
# 64 MiB per server thread.
_ONE_AT_A_TIME = threading.Lock()


def _hash(password: str) -> str:
    with _ONE_AT_A_TIME:
        return accounts.hash_password(password)


def _verify(password_hash: str, password: str) -> bool:
    with _ONE_AT_A_TIME:
        return accounts.verify_password(password_hash, password)


@functools.cache
def _dummy_hash() -> str:
    """A real argon2 hash to check an unknown email's password against (the same cost as
    a real account: no probing for accounts); made at the first such sign-in, not at
    start (a hash takes 64 MiB for a moment)."""
    return _hash("not-a-real-password-dummy")


def unauthorized() -> Response:
    """Not signed in: htmx requests get 401 and a redirect header, pages a redirect."""
    target = url_for("console.login", next=_safe_next(request.full_path))
    if is_htmx():
        response = Response(status=401)
        response.headers["HX-Redirect"] = target
        return response
    return redirect(target)  # type: ignore[return-value]


def _safe_next(value: str | None) -> str | None:
    """Only a path inside the console (no scheme, no host): no open redirect. A value with a
    control character (CR/LF, tab, NUL, DEL, an invisible format character, a line
    separator) is refused: it could not go into a `Location` header (header splitting)."""
    if not value:
        return None
    if any(unicodedata.category(char) in _CONTROL_CATEGORIES for char in value):
        return None
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or not parts.path.startswith("/console/"):
        return None
    if parts.path.startswith("/console/login"):
        return None
    return value.rstrip("?")


def _claim_attempt(email: str) -> int | None:
    """Count and record this sign-in attempt (one atomic step): None when the limit is
    reached for this email or this address (answer 429), else the attempt's id, which
    counts as a failure until `_forget_attempt` (it was right)."""
    settings = gateway().settings.console
    at = now()
    with gateway().console.transaction() as tx:
        return tx.claim_login_attempt(
            email=email or None,
            remote_addr=remote_addr(),
            at=at,
            since=at - timedelta(minutes=settings.login_window_minutes),
            max_by_email=settings.login_max_failures,
            max_by_address=settings.login_max_failures * ADDRESS_FACTOR,
        )


def _forget_attempt(attempt: int) -> None:
    with gateway().console.transaction() as tx:
        tx.forget_login_attempt(attempt)


def _throttled_error(minutes: bool) -> str:
    if not minutes:
        return str(_("Too many failed sign-in attempts. Try again later."))
    return str(_("Too many failed sign-in attempts. Try again in %(minutes)d minutes.",
             minutes=int(gateway().settings.console.login_window_minutes)))


def _start_session(account: User, attempt: int) -> Response:
    """The password (and code) were right: forget the attempt, audit the sign-in, and open
    a new session carrying the account's session epoch and the sign-in time."""
    at = now()
    with gateway().console.transaction() as tx:
        tx.forget_login_attempt(attempt)
        epoch = tx.session_epoch(account.id)
        tx.audit(account.id, account.email, "login", at=at, remote_addr=remote_addr())
    if epoch is None:  # deleted meanwhile
        return redirect(url_for("console.login"))  # type: ignore[return-value]
    session.clear()  # a new session id for the new privilege level (no fixation)
    session.permanent = True
    session[SIGNED_IN_AT] = at.timestamp()
    login_user(ConsoleUser(account, epoch))
    log.info("console: sign-in by user %d", account.id)
    if account.must_change_password:
        return redirect(url_for("console.password"))  # type: ignore[return-value]
    return redirect(_safe_next(request.args.get("next")) or url_for("console.conversations"))  # type: ignore[return-value]


def login() -> ResponseReturnValue:
    if isinstance(current_user, ConsoleUser) and request.method == "GET":
        return redirect(url_for("console.conversations"))
    error: str | None = None
    status = 200
    email = ""
    if request.method == "POST":
        email = display.clean(request.form.get("email") or "", limit=320).lower()
        password = request.form.get("password") or ""
        attempt = _claim_attempt(email)
        if attempt is None:
            error, status = _throttled_error(minutes=True), 429
        else:
            with gateway().console.reading() as tx:
                account = tx.user_by_email(email) if email else None
            good = _verify(
                account.password_hash if account else _dummy_hash(), password
            )
            if account is None or not good or account.disabled:
                # the attempt stays recorded (login_attempts): a failure, not audited
                error = _("Wrong email or password.")
                status = 401
            else:
                if accounts.needs_rehash(account.password_hash):
                    with gateway().console.transaction() as wtx:
                        wtx.set_password(account.id, _hash(password),
                                         must_change_password=account.must_change_password,
                                         at=now(), end_sessions=False)
                        account = wtx.get_user(account.id) or account
                if account.totp_secret:
                    _forget_attempt(attempt)  # the password was right; the code counts next
                    session.clear()
                    session[_PENDING] = account.id
                    return redirect(
                        url_for("console.login_code", next=request.args.get("next"))
                    )
                return _start_session(account, attempt)
    return render_template("console/login.html", error=error, email=email), status


def login_code() -> ResponseReturnValue:
    pending = session.get(_PENDING)
    if not isinstance(pending, int):
        return redirect(url_for("console.login"))
    with gateway().console.reading() as tx:
        account = tx.get_user(pending)
    if account is None or account.disabled or not account.totp_secret:
        session.pop(_PENDING, None)
        return redirect(url_for("console.login"))
    error: str | None = None
    status = 200
    if request.method == "POST":
        attempt = _claim_attempt(account.email)
        if attempt is None:
            error, status = _throttled_error(minutes=False), 429
        elif _code_accepted(account, request.form.get("code") or ""):
            return _start_session(account, attempt)
        else:
            error = _("That code is not valid. Enter the current code from your app.")
            status = 401
    return render_template("console/login_code.html", error=error), status


def _code_accepted(account: User, code: str) -> bool:
    """A valid code, not used before (a code is good once, even within its window)."""
    assert account.totp_secret is not None
    step = accounts.totp_step(account.totp_secret, code, now())
    if step is None:
        return False
    with gateway().console.transaction() as tx:
        return tx.claim_totp_step(account.id, step)


def logout() -> Response:
    who = current_user
    if isinstance(who, ConsoleUser):
        account = who.account
        with gateway().console.transaction() as tx:
            tx.end_sessions(account.id, now())  # this cookie, and every copy, is over
            tx.audit(account.id, account.email, "logout", at=now(), remote_addr=remote_addr())
    logout_user()
    session.clear()
    flash(_("You are signed out."), "info")
    return redirect(url_for("console.login"))  # type: ignore[return-value]


def password() -> ResponseReturnValue:
    who = current_user
    assert isinstance(who, ConsoleUser)
    account = who.account
    error: str | None = None
    status = 200
    if request.method == "POST":
        current = request.form.get("current_password") or ""
        new = request.form.get("new_password") or ""
        repeat = request.form.get("repeat_password") or ""
        problem = accounts.check_password_policy(
            new, email=account.email, name=account.name, language=str(get_locale())
        )
        if not _verify(account.password_hash, current):
            error, status = _("Your current password is not right."), 400
        elif new != repeat:
            error, status = _("The two new passwords differ."), 400
        elif problem is not None:
            error, status = _("The new password %(reason)s.", reason=problem), 400
        else:
            with gateway().console.transaction() as tx:
                tx.set_password(account.id, _hash(new),
                                must_change_password=False, at=now())
                tx.audit(account.id, account.email, "password_changed", at=now(),
                         remote_addr=remote_addr())
                updated = tx.get_user(account.id)
                epoch = tx.session_epoch(account.id)
            assert updated is not None and epoch is not None
            # every other session ended (the epoch went up); this one follows
            login_user(ConsoleUser(updated, epoch))
            flash(_("Your password is changed."), "info")
            return redirect(url_for("console.conversations"))
    return render_template("console/password.html", error=error,
                           forced=account.must_change_password), status


def language() -> Response:
    """Switch the interface language: saved on the account, and in a cookie for sign-in."""
    chosen = request.form.get("language")
    if chosen not in ("en", "fr"):
        chosen = "en"
    who = current_user
    if isinstance(who, ConsoleUser):
        with gateway().console.transaction() as tx:
            tx.set_language(who.account.id, chosen, at=now())
    target = _safe_next(request.form.get("next")) or url_for("console.conversations")
    response = redirect(target)
    response.set_cookie("sms311_lang", chosen, max_age=365 * 86400, samesite="Lax",
                        httponly=True, secure=request.is_secure, path="/console")
    return response  # type: ignore[return-value]
