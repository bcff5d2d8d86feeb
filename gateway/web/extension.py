"""The `Gateway` a Flask app serves: attached once by `create_app`, read by every view."""

from __future__ import annotations

from flask import Flask, current_app

from gateway.app import Gateway

_KEY = "sms311"


def attach(app: Flask, gateway: Gateway) -> None:
    """Make `gateway` the one `current_gateway()` returns inside `app`."""
    app.extensions[_KEY] = gateway


def current_gateway() -> Gateway:
    """The gateway of the app handling the current request."""
    gateway: Gateway = current_app.extensions[_KEY]
    return gateway
