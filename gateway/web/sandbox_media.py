"""Sandbox only: serves the pictures `sms311 sandbox text --media` attaches, the way
Twilio serves MMS media, so the worker fetches them like real ones."""

from __future__ import annotations

from flask import Blueprint, Response, send_from_directory

from gateway.web.extension import current_gateway

blueprint = Blueprint("sandbox", __name__)


@blueprint.get("/sandbox/media/<name>")
def media(name: str) -> Response:
    gateway = current_gateway()
    return send_from_directory(gateway.settings.state_dir / "media", name)
