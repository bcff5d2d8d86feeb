"""The provider's webhooks: `POST /sms/inbound` (answered in the provider's format) and
`POST /sms/status` (delivery status callbacks). Provider-neutral: what is Twilio's (the
signature, the form fields, TwiML) is behind `gateway.sms.base.Webhooks`.

Checks stack and fail closed: size (a body over `MAX_WEBHOOK_BYTES` or a form of more than
`MAX_WEBHOOK_FIELDS` fields: 413, refused before the form is parsed or the signature
computed), then signature (403, nothing read or stored), then the form
(400), then one committed transaction; only then 200. A store that is down answers 503
so the provider retries or its fallback URL acts. Nothing here produces a 5xx from
hostile input.
"""

from __future__ import annotations

import logging
import time

from flask import Blueprint, Response, request

from gateway.app import Gateway
from gateway.flows.delivery import record_delivery_report
from gateway.logs import mask_phone
from gateway.sms.base import (
    DELIVERY_STATES,
    MAX_WEBHOOK_BYTES,
    MAX_WEBHOOK_FIELDS,
    BadWebhook,
)
from gateway.store import StoreUnavailable
from gateway.web.extension import current_gateway

log = logging.getLogger(__name__)

blueprint = Blueprint("webhooks", __name__)


@blueprint.before_request
def _small_enough() -> Response | None:
    """Refuse (413) a body over `MAX_WEBHOOK_BYTES` or a form of more than
    `MAX_WEBHOOK_FIELDS` fields before anything else reads it: the signature covers every
    field, so a big unsigned form would otherwise cost its parsing and an HMAC over it."""
    request.max_content_length = MAX_WEBHOOK_BYTES  # a chunked body: cut while read (413)
    request.max_form_parts = MAX_WEBHOOK_FIELDS  # multipart/form-data (413 while parsed)
    length = request.content_length
    if length is not None and length > MAX_WEBHOOK_BYTES:
        return _too_large(current_gateway(), f"{length} bytes")
    if request.mimetype == "application/x-www-form-urlencoded":
        data = request.get_data(cache=True)  # at most MAX_WEBHOOK_BYTES; parsed from the cache
        if data.count(b"&") >= MAX_WEBHOOK_FIELDS:
            return _too_large(current_gateway(), "too many fields")
    return None


def _too_large(gateway: Gateway, reason: str) -> Response:
    gateway.metrics.webhook_rejected.labels("too_large").inc()
    log.info("webhook %s refused: too large: %s", request.path, reason)
    return Response("Payload Too Large\n", status=413, mimetype="text/plain")


def _authentic(gateway: Gateway) -> bool:
    query = request.query_string.decode("utf-8", "replace")
    return gateway.webhooks.authentic(request.path, query, request.form, request.headers)


def _forbidden(gateway: Gateway, reason: str) -> Response:
    gateway.metrics.webhook_rejected.labels(reason).inc()
    log.info("webhook %s refused: %s", request.path, reason)
    return Response("Forbidden\n", status=403, mimetype="text/plain")


def _bad_request(gateway: Gateway, reason: str) -> Response:
    gateway.metrics.webhook_rejected.labels("bad_request").inc()
    log.info("webhook %s: bad request: %s", request.path, reason)
    return Response(f"Bad Request: {reason}\n", status=400, mimetype="text/plain")


def _unavailable() -> Response:
    return Response("Service Unavailable\n", status=503, mimetype="text/plain")


def _answer(gateway: Gateway, replies: tuple[str, ...]) -> Response:
    answer = gateway.webhooks.answer(replies)
    return Response(answer.body, status=200, mimetype=answer.content_type)


@blueprint.post("/sms/inbound")
def inbound() -> Response:
    gateway = current_gateway()
    started = time.perf_counter()
    if not _authentic(gateway):
        return _forbidden(gateway, "signature")
    try:
        text = gateway.webhooks.inbound(request.form, gateway.settings.sms.default_region)
    except BadWebhook as exc:
        return _bad_request(gateway, str(exc))
    if not text.body and not text.media:
        gateway.metrics.texts_in.labels("empty").inc()
        return _answer(gateway, ())  # an empty text: nothing to forward, nothing to answer
    try:
        outcome = gateway.inbound.handle(text)
    except StoreUnavailable as exc:
        log.error("store unavailable, answering 503 to %s: %s", mask_phone(text.phone), exc)
        return _unavailable()
    if outcome.emails_queued:
        gateway.outbox_changed()
    kind = "duplicate" if outcome.duplicate else (outcome.keyword or "text")
    metrics = gateway.metrics
    metrics.texts_in.labels(kind).inc()
    if not outcome.duplicate and outcome.keyword is None:
        metrics.dialogue_steps.labels(outcome.step).inc()
        if outcome.step == "delivered" and outcome.municipality_id:
            metrics.texts_by_municipality.labels(outcome.municipality_id).inc()
    metrics.webhook_seconds.observe(time.perf_counter() - started)
    return _answer(gateway, outcome.replies)


@blueprint.post("/sms/status")
def status() -> Response:
    """Delivery status callbacks: the message's status is kept; a failure is reported to
    the agent by email, in the thread (`gateway.flows.delivery`)."""
    gateway = current_gateway()
    if not _authentic(gateway):
        return _forbidden(gateway, "signature")
    try:
        report = gateway.webhooks.status(request.form)
    except BadWebhook as exc:
        return _bad_request(gateway, str(exc))
    try:
        known = record_delivery_report(gateway.store, gateway.settings, report)
    except StoreUnavailable as exc:
        log.error("store unavailable, answering 503 to a status callback: %s", exc)
        return _unavailable()
    if known:
        gateway.outbox_changed()  # a failure may have queued a notice to the agent
    state = report.state if report.state in DELIVERY_STATES else "other"
    gateway.metrics.delivery_status.labels(state).inc()
    log.info("status callback: %s is %s%s", report.sid[:12], report.state,
             "" if known else " (unknown sid)")
    return Response("", status=204)
