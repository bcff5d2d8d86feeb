"""The web half: a Flask app factory with the provider's webhooks, health, metrics and
the staff console."""

from __future__ import annotations

from flask import Flask, redirect, url_for
from werkzeug.wrappers import Response

from gateway.app import Gateway
from gateway.web import health, sandbox_media, webhooks
from gateway.web.extension import attach


def create_app(gateway: Gateway, *, internal: bool = False) -> Flask:
    """Build the Flask app over an assembled `Gateway` (no globals).

    `internal`: the small app of `web.metrics_listen` instead (/metrics and the detailed
    /healthz only); the public app then has no /metrics."""
    from gateway.web.console import init_console

    if internal:
        return _internal_app(gateway)
    app = Flask("gateway.web", static_folder=None)  # static files: /console/static/
    app.config["MAX_CONTENT_LENGTH"] = 256 * 1024  # a Twilio form is a few KB
    attach(app, gateway)
    # The provider's webhooks are made now: a provider that cannot be set up fails at start,
    # not as a 500 on the first webhook.
    _ = gateway.webhooks
    app.register_blueprint(webhooks.blueprint)
    app.register_blueprint(health.blueprint)
    health.attach_checks(app, gateway)
    if gateway.settings.web.metrics_listen is None:  # else only on the internal listener
        app.register_blueprint(health.metrics_blueprint)
    if gateway.settings.sms.provider == "sandbox":
        app.register_blueprint(sandbox_media.blueprint)
    init_console(app, gateway)
    app.add_url_rule("/", "root", _root)
    # the providers' texts skip Flask's request machinery (same checks: webhooks.py)
    app.wsgi_app = webhooks.InboundFastPath(app.wsgi_app, gateway)  # type: ignore[method-assign]
    proxies = gateway.settings.web.trusted_proxies
    if proxies:
        from werkzeug.middleware.proxy_fix import ProxyFix

        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=proxies, x_proto=proxies, x_host=0
        )
    return app


def _internal_app(gateway: Gateway) -> Flask:
    """/metrics and the detailed /healthz, for `web.metrics_listen` (loopback or a private
    network: it names servers and errors)."""
    app = Flask("gateway.web.internal", static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = 1024
    attach(app, gateway)
    health.attach_checks(app, gateway)
    app.register_blueprint(health.internal_blueprint)
    app.register_blueprint(health.metrics_blueprint)
    return app


def _root() -> Response:
    """`/` (the sandbox banner's first link, a browser's guess) is the staff console."""
    return redirect(url_for("console.index"))
