"""Twilio webhooks: `POST /sms/inbound` (answers TwiML) and `POST /sms/status`.

Checks stack and fail closed: signature (403, nothing stored), then required
fields (400), then one committed transaction; only then 200. A store that is down
answers 503 so Twilio's fallback URL can act. Nothing here produces a 5xx from
hostile input.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime

import phonenumbers
from flask import Blueprint, Response, current_app, request
from twilio.twiml.messaging_response import MessagingResponse

from gateway.emails import MediaRef
from gateway.inbound import InboundText
from gateway.logs import mask_phone
from gateway.services import Gateway
from gateway.store import StoreUnavailable
from gateway.web.signature import TwilioSignature

log = logging.getLogger(__name__)

blueprint = Blueprint("webhooks", __name__)

MAX_BODY_CHARS = 5000  # Twilio caps inbound at 1,600; anything far beyond is not Twilio
MAX_MEDIA = 10


class BadRequest(ValueError):
    """The form lacks or garbles a field Twilio always sends."""


def _gateway() -> Gateway:
    gateway: Gateway = current_app.extensions["sms311"]
    return gateway


def _signature_ok(gateway: Gateway) -> bool:
    check = TwilioSignature(gateway.settings.sms.auth_token, gateway.settings.public_url)
    query = request.query_string.decode("utf-8", "replace")
    return check.is_valid(request.path, query, request.form, request.headers)


def _forbidden(gateway: Gateway, reason: str) -> Response:
    gateway.metrics.webhook_rejected.labels(reason).inc()
    log.info("webhook %s refused: %s", request.path, reason)
    return Response("Forbidden\n", status=403, mimetype="text/plain")


def _bad_request(gateway: Gateway, reason: str) -> Response:
    gateway.metrics.webhook_rejected.labels("bad_request").inc()
    log.info("webhook %s: bad request: %s", request.path, reason)
    return Response(f"Bad Request: {reason}\n", status=400, mimetype="text/plain")


def _twiml(replies: tuple[str, ...]) -> Response:
    answer = MessagingResponse()
    for reply in replies:
        answer.message(reply)
    return Response(str(answer), status=200, mimetype="application/xml")


def normalise_number(raw: str, region: str) -> str:
    """E.164 for a resident's number; BadRequest when it is not a possible number."""
    try:
        number = phonenumbers.parse(raw, region)
    except phonenumbers.NumberParseException as exc:
        raise BadRequest(f"From is not a phone number ({exc.error_type})") from exc
    if not phonenumbers.is_possible_number(number):
        raise BadRequest("From is not a possible phone number")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def _field(name: str, *, required: bool = False) -> str:
    value = request.form.get(name, "")
    if "\x00" in value:
        raise BadRequest(f"{name} contains a NUL character")
    if required and not value.strip():
        raise BadRequest(f"missing {name}")
    return value


def parse_inbound(region: str) -> InboundText:
    """Read Twilio's inbound-message form into an `InboundText`."""
    sid = _field("MessageSid") or _field("SmsMessageSid") or _field("SmsSid")
    if not sid.strip():
        raise BadRequest("missing MessageSid")
    if len(sid) > 64:
        raise BadRequest("MessageSid too long")
    phone = normalise_number(_field("From", required=True), region)
    to = _field("To", required=True)
    body = _field("Body")
    if len(body) > MAX_BODY_CHARS:
        raise BadRequest("Body too long")
    try:
        num_media = int(_field("NumMedia") or "0")
    except ValueError as exc:
        raise BadRequest("NumMedia is not a number") from exc
    if not 0 <= num_media <= MAX_MEDIA:
        raise BadRequest("NumMedia out of range")
    media = []
    for i in range(num_media):
        url = _field(f"MediaUrl{i}", required=True)
        if not url.startswith(("https://", "http://")):
            raise BadRequest(f"MediaUrl{i} is not an http(s) URL")
        content_type = _field(f"MediaContentType{i}") or "application/octet-stream"
        media.append(MediaRef(url=url, content_type=content_type))
    return InboundText(
        sid=sid.strip(),
        phone=phone,
        to=to,
        body=body.strip(),
        received_at=datetime.now(UTC),
        media=tuple(media),
        from_city=_field("FromCity") or None,
        from_state=_field("FromState") or None,
    )


@blueprint.post("/sms/inbound")
def inbound() -> Response:
    gateway = _gateway()
    started = time.perf_counter()
    if not _signature_ok(gateway):
        return _forbidden(gateway, "signature")
    try:
        text = parse_inbound(gateway.settings.sms.default_region)
    except BadRequest as exc:
        return _bad_request(gateway, str(exc))
    if not text.body and not text.media:
        gateway.metrics.texts_in.labels("empty").inc()
        return _twiml(())  # an empty text: nothing to forward, nothing to answer
    try:
        outcome = gateway.inbound.handle(text)
    except StoreUnavailable as exc:
        log.error("store unavailable, answering 503 to %s: %s", mask_phone(text.phone), exc)
        return Response("Service Unavailable\n", status=503, mimetype="text/plain")
    kind = "duplicate" if outcome.duplicate else (outcome.keyword or "text")
    gateway.metrics.texts_in.labels(kind).inc()
    gateway.metrics.webhook_seconds.observe(time.perf_counter() - started)
    return _twiml(outcome.replies)


@blueprint.post("/sms/status")
def status() -> Response:
    """Delivery status callbacks. Issue 3 acts on failures; for now they are checked and logged."""
    gateway = _gateway()
    if not _signature_ok(gateway):
        return _forbidden(gateway, "signature")
    sid = request.form.get("MessageSid", "")
    state = request.form.get("MessageStatus", "")
    if not sid or not state:
        return _bad_request(gateway, "missing MessageSid or MessageStatus")
    log.info("status callback: %s is %s", sid[:40], state[:20])
    return Response("", status=204)
