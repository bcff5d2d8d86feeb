"""The web half: a Flask app factory with the Twilio webhooks, health, metrics and the
staff console."""

from __future__ import annotations

from flask import Flask

from gateway.app import Gateway
from gateway.sms.twilio.signature import TwilioSignature
from gateway.web import health, sandbox_media, webhooks


def create_app(gateway: Gateway) -> Flask:
    """Build the Flask app over an assembled `Gateway` (no globals)."""
    from gateway.web.console import init_console

    app = Flask("gateway.web", static_folder=None)  # static files: /console/static/
    app.config["MAX_CONTENT_LENGTH"] = 256 * 1024  # a Twilio form is a few KB
    app.extensions["sms311"] = gateway
    # One signature checker for every request (not one RequestValidator per request).
    app.extensions["sms311.signature"] = TwilioSignature(
        gateway.settings.sms.auth_token, gateway.settings.public_url
    )
    app.register_blueprint(webhooks.blueprint)
    app.register_blueprint(health.blueprint)
    if gateway.settings.sms.provider == "sandbox":
        app.register_blueprint(sandbox_media.blueprint)
    init_console(app, gateway)
    proxies = gateway.settings.web.trusted_proxies
    if proxies:
        from werkzeug.middleware.proxy_fix import ProxyFix

        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=proxies, x_proto=proxies, x_host=0
        )
    return app
