"""The console's sessions end server-side, and its sign-in limit holds under concurrency
(issue 15, section 3): a copied cookie stops working after sign-out, `user disable` (and
enable) and `user passwd`; a session ends `console.session_max_hours` after its sign-in
however active; N concurrent wrong passwords get exactly the limit checked; strangers'
attempts go to `login_attempts` (pruned), not to the audit log. SQLite and PostgreSQL."""

from __future__ import annotations

import io
import sys
import threading
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyotp
import pytest
from flask import Flask
from flask_login.utils import encode_cookie

from gateway.app import Gateway
from gateway.cli import main
from gateway.store.console import Scope
from gateway.web import create_app
from tests.console_fixtures import PASSWORD, ConsoleClient, add_user
from tests.gateway_fixtures import migrated_gateway

EMAIL = "dana@ottawa.example"
HOME = "/console/conversations"
LONG_AGO = datetime(2000, 1, 1, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgresql"])
def gateway_options(request: pytest.FixtureRequest) -> dict[str, Any]:
    if request.param == "postgresql":
        return {"database": request.getfixturevalue("pg_store_url")}
    return {}


class Clock:
    """The console's clock (`sms311.clock`), moved by the test."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


def app_with_clock(gateway: Gateway) -> tuple[Flask, Clock]:
    app = create_app(gateway)
    clock = Clock()
    app.extensions["sms311.clock"] = clock
    return app, clock


def signed_in(app: Flask) -> ConsoleClient:
    console = ConsoleClient(app.test_client())
    assert console.login(EMAIL).status_code == 302
    assert console.get(HOME).status_code == 200
    return console


def copy_of(app: Flask, console: ConsoleClient) -> ConsoleClient:
    """Another browser holding a copy of `console`'s session cookie."""
    cookie = console.client.get_cookie("sms311_session")
    assert cookie is not None
    thief = ConsoleClient(app.test_client())
    thief.client.set_cookie("sms311_session", cookie.value)
    return thief


def is_signed_in(console: ConsoleClient) -> bool:
    response = console.get(HOME)
    assert response.status_code in (200, 302), response.status_code
    return bool(response.status_code == 200)


def cli(gateway: Gateway, *argv: str) -> int:
    return main(["--config", str(gateway.settings.config_path), "user", *argv])


# -- sessions end server-side ------------------------------------------------------------------


def test_a_copied_cookie_stops_working_after_sign_out(gateway: Gateway) -> None:
    add_user(gateway, EMAIL, "Dana Agent")
    app, _ = app_with_clock(gateway)
    dana = signed_in(app)
    copy = copy_of(app, dana)
    other_device = signed_in(app)
    assert is_signed_in(copy)
    assert dana.post("/console/logout").status_code == 302
    assert not is_signed_in(copy)
    assert not is_signed_in(other_device)  # signing out ends every session of the account
    assert is_signed_in(signed_in(app))  # and signing in again works


def test_user_disable_then_enable_revives_no_cookie(
    gateway: Gateway, capsys: pytest.CaptureFixture[str]
) -> None:
    add_user(gateway, EMAIL, "Dana Agent")
    app, _ = app_with_clock(gateway)
    dana = signed_in(app)
    copy = copy_of(app, dana)
    assert cli(gateway, "disable", EMAIL) == 0
    assert not is_signed_in(copy)
    assert cli(gateway, "enable", EMAIL) == 0
    assert not is_signed_in(copy) and not is_signed_in(dana)
    assert is_signed_in(signed_in(app))


def test_user_passwd_ends_every_session(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    add_user(gateway, EMAIL, "Dana Agent")
    app, _ = app_with_clock(gateway)
    dana = signed_in(app)
    copy = copy_of(app, dana)
    monkeypatch.setattr(sys, "stdin", io.StringIO("Rideau canal skates at dawn\n"))
    assert cli(gateway, "passwd", EMAIL, "--password-stdin") == 0
    assert not is_signed_in(dana) and not is_signed_in(copy)
    again = ConsoleClient(app.test_client())
    assert again.login(EMAIL, "Rideau canal skates at dawn").status_code == 302


def test_a_password_change_in_the_console_ends_the_copies(gateway: Gateway) -> None:
    add_user(gateway, EMAIL, "Dana Agent")
    app, _ = app_with_clock(gateway)
    dana = signed_in(app)
    copy = copy_of(app, dana)
    dana.get("/console/password")
    new = "Rideau canal skates at dawn"
    changed = dana.post("/console/password", current_password=PASSWORD, new_password=new,
                        repeat_password=new)
    assert changed.status_code == 302
    assert is_signed_in(dana)  # the session that changed it follows
    assert not is_signed_in(copy)


def test_a_remember_me_cookie_obeys_the_same_rule(gateway: Gateway) -> None:
    """Flask-Login restores a session from a `remember_token` cookie: signed with the app's
    secret and naming the session id (user and epoch). The console never issues one; one
    made with the right id still signs nobody in (no sign-in time: not a session)."""
    user = add_user(gateway, EMAIL, "Dana Agent")
    app, _ = app_with_clock(gateway)
    with gateway.console.reading() as tx:
        epoch = tx.session_epoch(user.id)
    with app.test_request_context():
        token = encode_cookie(f"{user.id}:{epoch}")
    visitor = ConsoleClient(app.test_client())
    visitor.client.set_cookie("remember_token", token)
    assert not is_signed_in(visitor)


def test_sessions_have_an_absolute_lifetime(gateway: Gateway) -> None:
    add_user(gateway, EMAIL, "Dana Agent")
    app, clock = app_with_clock(gateway)
    dana = signed_in(app)
    max_hours = gateway.settings.console.session_max_hours
    for _ in range(int(max_hours) - 1):  # busy every hour: still in
        clock.now += timedelta(hours=1)
        assert is_signed_in(dana)
    clock.now += timedelta(hours=1, seconds=1)
    assert not is_signed_in(dana)  # however active
    assert is_signed_in(signed_in(app))


def test_epochs_in_the_store(gateway: Gateway) -> None:
    user = add_user(gateway, EMAIL, "Dana Agent")
    now = datetime.now(UTC)
    with gateway.console.transaction() as tx:
        first = tx.session_epoch(user.id)
        tx.set_password(user.id, user.password_hash, must_change_password=False, at=now,
                        end_sessions=False)  # a re-hash at sign-in: sessions go on
        same = tx.session_epoch(user.id)
        tx.set_password(user.id, user.password_hash, must_change_password=False, at=now)
        tx.set_disabled(user.id, True, now)
        tx.set_disabled(user.id, False, now)
        ended = tx.end_sessions(user.id, now)
        assert tx.session_epoch(999_999) is None
        with pytest.raises(KeyError):
            tx.end_sessions(999_999, now)
    assert (first, same, ended) == (0, 0, 4)


# -- the sign-in limit is atomic ----------------------------------------------------------------


def concurrently(n: int, attempt: Callable[[ConsoleClient, int], int], app: Flask) -> Counter[int]:
    """`n` clients, each with its sign-in page (and CSRF token) loaded, then all released at
    once: the status codes they got."""
    clients = [ConsoleClient(app.test_client()) for _ in range(n)]
    for console in clients:
        console.get("/console/login")
    start = threading.Barrier(n)
    codes: list[int] = []
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            start.wait(timeout=30)
            codes.append(attempt(clients[i], i))
        except BaseException as exc:  # reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    return Counter(codes)


def test_concurrent_wrong_passwords_get_exactly_the_limit_checked(gateway: Gateway) -> None:
    add_user(gateway, EMAIL, "Dana Agent")
    app, _ = app_with_clock(gateway)
    limit = gateway.settings.console.login_max_failures

    def wrong(console: ConsoleClient, i: int) -> int:
        response = console.post("/console/login", email=EMAIL, password=f"wrong guess {i}")
        return int(response.status_code)

    assert concurrently(30, wrong, app) == Counter({401: limit, 429: 30 - limit})
    assert ConsoleClient(app.test_client()).login(EMAIL).status_code == 429
    with gateway.console.reading() as tx:
        assert tx.failed_logins(email=EMAIL, remote_addr=None, since=LONG_AGO) == limit
        assert tx.audit_log(Scope(None)) == []


def test_concurrent_guesses_from_one_address_are_limited_exactly(
    gateway_options: dict[str, Any], tmp_path: Path
) -> None:
    gateway: Gateway = migrated_gateway(
        tmp_path, extra="console:\n  login_max_failures: 1\n", **gateway_options
    )
    try:
        app, _ = app_with_clock(gateway)

        def stranger(console: ConsoleClient, i: int) -> int:
            response = console.post("/console/login", email=f"guess{i}@ottawa.example",
                                    password="not it at all")
            return int(response.status_code)

        # ten times the per-account limit from one address, each for another email
        assert concurrently(30, stranger, app) == Counter({401: 10, 429: 20})
    finally:
        gateway.close()


def test_a_right_password_is_forgotten_not_counted(gateway: Gateway) -> None:
    add_user(gateway, EMAIL, "Dana Agent")
    app, _ = app_with_clock(gateway)
    limit = gateway.settings.console.login_max_failures
    console = ConsoleClient(app.test_client())
    for _ in range(limit - 1):
        assert console.login(EMAIL, "not the password").status_code == 401
    for _ in range(limit + 2):  # right every time: never throttled
        assert ConsoleClient(app.test_client()).login(EMAIL).status_code == 302
    assert console.login(EMAIL, "not the password").status_code == 401
    assert console.login(EMAIL, "not the password").status_code == 429


# -- attempts apart from the audit log, pruned ----------------------------------------------------


def test_strangers_attempts_are_not_audited_and_sign_ins_are(gateway: Gateway) -> None:
    user = add_user(gateway, EMAIL, "Dana Agent")
    secret = pyotp.random_base32()
    with gateway.console.transaction() as tx:
        tx.set_totp(user.id, secret, datetime.now(UTC))
    app, _ = app_with_clock(gateway)
    assert ConsoleClient(app.test_client()).login("nobody@ottawa.example").status_code == 401
    assert ConsoleClient(app.test_client()).login(EMAIL, "a wrong password").status_code == 401
    console = ConsoleClient(app.test_client())
    assert console.login(EMAIL).status_code == 302  # the password: right
    console.get("/console/login/code")
    assert console.post("/console/login/code", code="000000").status_code == 401
    with gateway.console.reading() as tx:
        assert tx.audit_log(Scope(None)) == []
        assert tx.failed_logins(email=None, remote_addr="127.0.0.1", since=LONG_AGO) == 3
    assert console.post("/console/login/code", code=pyotp.TOTP(secret).now()).status_code == 302
    with gateway.console.reading() as tx:
        assert [e.action for e in tx.audit_log(Scope(None))] == ["login"]
        assert tx.failed_logins(email=None, remote_addr="127.0.0.1", since=LONG_AGO) == 3


def test_attempts_older_than_the_window_are_pruned(gateway: Gateway) -> None:
    """A steady stream of strangers' attempts (one a minute for hours): the table holds
    about one window of them, not the whole stream."""
    app, clock = app_with_clock(gateway)
    window = gateway.settings.console.login_window_minutes
    console = ConsoleClient(app.test_client())
    for n in range(180):
        clock.now += timedelta(minutes=1)
        response = console.post("/console/login", email=f"guess{n}@ottawa.example",
                                 password="not it at all")
        assert response.status_code == 401
    with gateway.console.reading() as tx:
        kept = tx.failed_logins(email=None, remote_addr="127.0.0.1", since=LONG_AGO)
    assert window <= kept <= window + 1


# -- password strength in the console -----------------------------------------------------------


@pytest.mark.parametrize(("language", "said"), [
    ("en", "The new password is too easy to guess: This is similar to a commonly used password."),
    ("fr", "Le nouveau mot de passe est trop facile à deviner : Il ressemble à un mot de passe "
           "courant."),
])
def test_an_easy_to_guess_password_is_refused_and_says_why(
    gateway: Gateway, language: str, said: str
) -> None:
    user = add_user(gateway, EMAIL, "Dana Agent")
    with gateway.console.transaction() as tx:
        tx.set_language(user.id, language, datetime.now(UTC))
    app, _ = app_with_clock(gateway)
    dana = signed_in(app)
    dana.get("/console/password")
    refused = dana.post("/console/password", current_password=PASSWORD,
                        new_password="superman1234", repeat_password="superman1234")
    assert refused.status_code == 400
    assert said in refused.get_data(as_text=True).replace("&#39;", "'")
    with gateway.console.reading() as tx:
        account = tx.user_by_email(EMAIL)
    assert account is not None and account.password_hash == user.password_hash
