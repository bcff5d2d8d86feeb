"""WSGI apps for the server comparison in bench/bench_webhook.py.

    gunicorn 'bench.wsgi_apps:bare()'        a Flask endpoint that does nothing (the baseline)
    gunicorn 'bench.wsgi_apps:gateway()'     the gateway's web app ($GATEWAY_CONFIG)
"""

from __future__ import annotations

import os
from pathlib import Path

from flask import Flask, Response


def bare() -> Flask:
    """The baseline: Flask, one POST route answering an empty 200, nothing read or stored."""
    app = Flask("bare")

    @app.post("/sms/inbound")
    def inbound() -> Response:
        return Response("", status=200, mimetype="application/xml")

    return app


def gateway() -> Flask:
    """The gateway's web app, exactly as `sms311 web` builds it."""
    from gateway.app import Gateway
    from gateway.logs import setup_logging
    from gateway.settings import load_settings
    from gateway.web import create_app

    settings = load_settings(Path(os.environ["GATEWAY_CONFIG"]), {})
    setup_logging(settings.log_level)
    return create_app(Gateway.from_settings(settings))
