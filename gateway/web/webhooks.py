"""The provider's webhooks: `POST /sms/inbound` (answered in the provider's format) and
`POST /sms/status` (delivery status callbacks). Provider-neutral: what is Twilio's (the
signature, the form fields, TwiML) is behind `gateway.sms.base.Webhooks`.

Checks stack and fail closed: signature (403, nothing read or stored), then the form
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
from gateway.sms.base import DELIVERY_STATES, BadWebhook
from gateway.store import StoreUnavailable
from gateway.web.extension import current_gateway

log = logging.getLogger(__name__)

blueprint = Blueprint("webhooks", __name__)


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
