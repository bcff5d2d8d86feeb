"""Twilio webhooks: `POST /sms/inbound` (answers TwiML) and `POST /sms/status`.

Checks stack and fail closed: signature (403, nothing stored), then required
fields (400), then one committed transaction; only then 200. A store that is down
answers 503 so Twilio's fallback URL can act. Nothing here produces a 5xx from
hostile input.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import replace
from datetime import UTC, datetime

import phonenumbers
from flask import Blueprint, Response, current_app, request
from twilio.twiml.messaging_response import MessagingResponse

from gateway.app import Gateway
from gateway.flows.text_in import InboundText
from gateway.flows.thread_mail import enqueue_notice
from gateway.logs import mask_phone
from gateway.rules.emails import MediaRef
from gateway.sms.base import OPTED_OUT
from gateway.sms.twilio.signature import TwilioSignature
from gateway.store import StoreUnavailable

log = logging.getLogger(__name__)

blueprint = Blueprint("webhooks", __name__)

MAX_BODY_CHARS = 5000  # Twilio caps inbound at 1,600; anything far beyond is not Twilio
MAX_MEDIA = 10


class BadRequest(ValueError):
    """The form lacks or garbles a field Twilio always sends."""


def _gateway() -> Gateway:
    gateway: Gateway = current_app.extensions["sms311"]
    return gateway


def _signature_check(gateway: Gateway) -> TwilioSignature:
    """The gateway's signature checker, made once (the validator is reused per request)."""
    check: TwilioSignature | None = current_app.extensions.get("sms311.signature")
    if check is None:
        check = TwilioSignature(gateway.settings.sms.auth_token, gateway.settings.public_url)
        current_app.extensions["sms311.signature"] = check
    return check


def _signature_ok(gateway: Gateway) -> bool:
    check = _signature_check(gateway)
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


_EMPTY_TWIML = str(MessagingResponse())


def _twiml(replies: tuple[str, ...]) -> Response:
    if not replies:  # the usual answer: built once
        return Response(_EMPTY_TWIML, status=200, mimetype="application/xml")
    answer = MessagingResponse()
    for reply in replies:
        answer.message(reply)
    return Response(str(answer), status=200, mimetype="application/xml")


@functools.lru_cache(maxsize=4096)
def normalise_number(raw: str, region: str) -> str:
    """E.164 for a resident's number; BadRequest when it is not a possible number.

    Cached: the same residents text again and again (a BadRequest is not cached)."""
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
    if outcome.emails_queued:
        gateway.outbox_changed()
    kind = "duplicate" if outcome.duplicate else (outcome.keyword or "text")
    metrics = gateway.metrics
    metrics.texts_in.labels(kind).inc()
    if not outcome.duplicate and outcome.keyword is None:
        metrics.dialogue_steps.labels(outcome.step).inc()
        if outcome.step == "delivered" and outcome.municipality_id:
            metrics.texts_by_municipality.labels(outcome.municipality_id).inc()
    gateway.metrics.webhook_seconds.observe(time.perf_counter() - started)
    return _twiml(outcome.replies)


@blueprint.post("/sms/status")
def status() -> Response:
    """Delivery status callbacks: the message's status is kept; a failure is reported to
    the agent by email, in the thread (21610: the resident is marked opted out)."""
    gateway = _gateway()
    if not _signature_ok(gateway):
        return _forbidden(gateway, "signature")
    sid = request.form.get("MessageSid", "").strip()
    state = request.form.get("MessageStatus", "").strip().lower()
    if not sid or not state or len(sid) > 64 or len(state) > 32:
        return _bad_request(gateway, "missing or garbled MessageSid or MessageStatus")
    error_code = request.form.get("ErrorCode", "").strip()
    try:
        code = int(error_code) if error_code else None
    except ValueError:
        return _bad_request(gateway, "ErrorCode is not a number")
    try:
        known = record_delivery_status(gateway, sid, state, code)
    except StoreUnavailable as exc:
        log.error("store unavailable, answering 503 to a status callback: %s", exc)
        return Response("Service Unavailable\n", status=503, mimetype="text/plain")
    if known:
        gateway.outbox_changed()  # a failure may have queued a notice to the agent
    gateway.metrics.delivery_status.labels(state if state in _STATUSES else "other").inc()
    log.info("status callback: %s is %s%s", sid[:12], state, "" if known else " (unknown sid)")
    return Response("", status=204)


_STATUSES = {"queued", "accepted", "sending", "sent", "delivered", "undelivered", "failed",
             "read", "canceled", "scheduled", "receiving", "received"}
FAILED_STATUSES = {"undelivered", "failed"}


def record_delivery_status(gateway: Gateway, sid: str, state: str, code: int | None) -> bool:
    """Keep the status of our message `sid`; on a new failure, tell the agent. False when
    the sid is not one of ours (nothing to do)."""
    with gateway.store.transaction() as tx:
        message = tx.message_by_provider_sid(sid)
        if message is None or message.direction != "out":
            return False
        newly_failed = state in FAILED_STATUSES and message.status not in FAILED_STATUSES
        tx.set_message_status(message.id, state, code)
        if not newly_failed or message.conversation_id is None:
            return True
        conversation = tx.get_conversation(message.conversation_id)
        if conversation is None:
            return True
        resident = tx.get_resident(conversation.phone)
        opted_out = code == OPTED_OUT
        if opted_out and resident is not None:
            tx.save_resident(replace(resident, opted_out=True))
        agent = message.agent_address or conversation.agent_address
        if agent:
            details: dict[str, object] = {"reply_excerpt": message.body[:200]}
            if not opted_out:
                details |= {"status": state, "error_code": code}
            enqueue_notice(
                tx, gateway.settings, conversation, agent,
                "opted_out" if opted_out else "delivery_failed", dict(details),
                language=resident.language if resident else "en",
            )
    return True
