"""The web half: a Flask app factory with the provider's webhooks, health, metrics and
the staff console."""

from __future__ import annotations

from flask import Flask, redirect, url_for
from werkzeug.wrappers import Response

from gateway.app import Gateway
from gateway.web import health, sandbox_media, webhooks
from gateway.web.extension import attach


def create_app(gateway: Gateway) -> Flask:
    """Build the Flask app over an assembled `Gateway` (no globals)."""
    from gateway.web.console import init_console

    app = Flask("gateway.web", static_folder=None)  # static files: /console/static/
    app.config["MAX_CONTENT_LENGTH"] = 256 * 1024  # a Twilio form is a few KB
    attach(app, gateway)
    # The provider's webhooks are made now: a provider that cannot be set up fails at start,
    # not as a 500 on the first webhook.
    _ = gateway.webhooks
    app.register_blueprint(webhooks.blueprint)
    app.register_blueprint(health.blueprint)
    if gateway.settings.sms.provider == "sandbox":
        app.register_blueprint(sandbox_media.blueprint)
    init_console(app, gateway)
    app.add_url_rule("/", "root", _root)
    proxies = gateway.settings.web.trusted_proxies
    if proxies:
        from werkzeug.middleware.proxy_fix import ProxyFix

        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=proxies, x_proto=proxies, x_host=0
        )
    return app


def _root() -> Response:
    """`/` (the sandbox banner's first link, a browser's guess) is the staff console."""
    return redirect(url_for("console.index"))
