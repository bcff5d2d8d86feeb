"""Sandbox only: serves the pictures `sms311 sandbox text --media` attaches, the way
Twilio serves MMS media, so the worker fetches them like real ones.

The route is on the console's origin, so it serves like the console does
(`gateway.web.media`): raster images inline, anything else as a sandboxed
`application/octet-stream` download."""

from __future__ import annotations

from flask import Blueprint, Response, send_from_directory

from gateway.web.extension import current_gateway
from gateway.web.media import harden

blueprint = Blueprint("sandbox", __name__)


@blueprint.get("/sandbox/media/<name>")
def media(name: str) -> Response:
    gateway = current_gateway()
    response = send_from_directory(gateway.settings.state_dir / "media", name)
    return harden(response, response.mimetype, name)
