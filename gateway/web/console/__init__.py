"""The staff web console (`/console/…`): agents and supervisors work SMS conversations in a
browser, the same conversations the email side carries.

`init_console(app, gateway)` wires it into the gateway's Flask app:

- sessions (Flask-Login): a signed cookie `sms311_session`, HttpOnly, SameSite=Lax, Secure when
  `public_url` is https; it ends after `console.session_hours` without a request (idle) and
  `console.session_max_hours` after the sign-in (absolute); the session names the user AND
  their session epoch, which signing out, a new password and disabling raise, so each of them
  ends every session of that user on every instance (a copied cookie included);
- the signing secret: `console.secret_key`, else one generated once and kept in the database
  (so every instance behind a load balancer shares it);
- CSRF (Flask-WTF) on every form and every htmx request (the `X-CSRFToken` header), but not on
  the Twilio webhooks, which are signature-checked instead;
- a strict Content-Security-Policy on console pages: no inline script, no eval, nothing
  from another origin (htmx is vendored into `gateway/web/static/`);
- English and French (Flask-Babel): the user's saved choice, else the browser's.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path

from flask import Flask, Response, request
from flask.globals import request_ctx
from flask_babel import Babel
from flask_login import LoginManager, current_user
from flask_wtf.csrf import CSRFProtect

from gateway.app import Gateway
from gateway.store import StoreUnavailable
from gateway.web.console import auth, views
from gateway.web.console.context import ConsoleUser, load_user

log = logging.getLogger(__name__)

LANGUAGES = ("en", "fr")
TRANSLATIONS = Path(__file__).resolve().parents[1] / "translations"

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    )
)


def init_console(app: Flask, gateway: Gateway) -> None:
    """Register the console blueprint and everything it needs on `app`."""
    settings = gateway.settings
    app.config.update(
        SESSION_COOKIE_NAME="sms311_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=settings.public_url.startswith("https://"),
        SESSION_COOKIE_PATH="/",
        PERMANENT_SESSION_LIFETIME=timedelta(hours=settings.console.session_hours),
        SESSION_REFRESH_EACH_REQUEST=True,
        WTF_CSRF_TIME_LIMIT=None,  # the token lives as long as the session
        WTF_CSRF_HEADERS=["X-CSRFToken"],
        BABEL_TRANSLATION_DIRECTORIES=str(TRANSLATIONS),
        REMEMBER_COOKIE_HTTPONLY=True,
    )
    _load_secret(app, gateway)

    csrf = CSRFProtect(app)
    for name, blueprint in app.blueprints.items():
        if name != views.blueprint.name:
            csrf.exempt(blueprint)  # webhooks (signed), health, sandbox: no forms

    login = LoginManager(app)
    login.login_view = "console.login"
    login.session_protection = "basic"
    login.user_loader(lambda user_id: load_user(gateway, user_id))
    login.unauthorized_handler(auth.unauthorized)

    Babel(app, locale_selector=_locale, default_locale="en", default_timezone="UTC")

    app.before_request(lambda: _ensure_secret(app, gateway))
    app.register_blueprint(views.blueprint)
    app.after_request(_security_headers)


def _load_secret(app: Flask, gateway: Gateway) -> bool:
    configured = gateway.settings.console.secret_key
    if configured:
        app.secret_key = configured
        return True
    try:
        with gateway.console.transaction() as tx:
            app.secret_key = tx.console_secret()
        return True
    except StoreUnavailable:
        log.warning("console: the database is unavailable; the session secret loads later")
        return False


def _ensure_secret(app: Flask, gateway: Gateway) -> Response | None:
    """The database was down when the app started: load the secret now, then open the
    session this request could not open without it."""
    if app.secret_key or request.blueprint != views.blueprint.name:
        return None
    if not _load_secret(app, gateway):
        return Response("The console is starting; try again in a moment.", 503)
    request_ctx.session = app.session_interface.open_session(  # type: ignore[misc,assignment]
        app, request
    )
    return None


def _locale() -> str:
    user = current_user
    if isinstance(user, ConsoleUser) and user.account.language in LANGUAGES:
        return user.account.language
    chosen = request.cookies.get("sms311_lang")
    if chosen in LANGUAGES:
        return chosen
    return request.accept_languages.best_match(LANGUAGES) or "en"


def _security_headers(response: Response) -> Response:
    if request.path.startswith("/console"):
        # A media response keeps its own, stricter policy (gateway.web.media).
        response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Referrer-Policy"] = "same-origin"
        if not request.path.startswith("/console/static/"):
            response.headers["Cache-Control"] = "no-store"
            response.vary.add("Cookie")
    return response


__all__ = ["CONTENT_SECURITY_POLICY", "init_console"]
