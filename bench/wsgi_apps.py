"""The baseline web app of bench/bench_gateway.py, served by gunicorn -w 2:

    gunicorn -w 2 'bench.wsgi_apps:bare()'

Flask, one POST /sms/inbound that reads nothing, checks nothing, stores nothing and answers
an empty TwiML document: what any Flask webhook costs before it does its work.
"""

from __future__ import annotations

from flask import Flask, Response

EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'


def bare() -> Flask:
    app = Flask("bare")

    @app.post("/sms/inbound")
    def inbound() -> Response:
        return Response(EMPTY_TWIML, status=200, mimetype="application/xml")

    return app
