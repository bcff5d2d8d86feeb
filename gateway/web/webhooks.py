"""The provider's webhooks: `POST /sms/inbound` (answered in the provider's format) and
`POST /sms/status` (delivery status callbacks). Provider-neutral: what is Twilio's (the
signature, the form fields, TwiML) is behind `gateway.sms.base.Webhooks`.

Checks stack and fail closed: size (a body over `MAX_WEBHOOK_BYTES` or a form of more than
`MAX_WEBHOOK_FIELDS` fields: 413, refused before the form is parsed or the signature
computed), then signature (403, nothing read or stored), then the form
(400), then one committed transaction (the text queued for the worker, or processed at
once when it needs an answer: `gateway.flows.text_in`); only then 200. A store that is
down answers 503 so the provider retries or its fallback URL acts. Nothing here produces a 5xx from
hostile input.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import unquote_plus

from flask import Blueprint, Response, request
from werkzeug.datastructures import EnvironHeaders, Headers
from werkzeug.utils import get_content_type

from gateway.app import Gateway
from gateway.flows.delivery import record_delivery_report
from gateway.flows.text_in import Outcome
from gateway.logs import mask_phone
from gateway.sms.base import (
    DELIVERY_STATES,
    MAX_WEBHOOK_BYTES,
    MAX_WEBHOOK_FIELDS,
    BadWebhook,
    InboundText,
)
from gateway.store import StoreUnavailable
from gateway.web.extension import current_gateway

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

log = logging.getLogger(__name__)

blueprint = Blueprint("webhooks", __name__)


class Answer(NamedTuple):
    """An answer to a webhook, framework-free: the WSGI status line, type and body."""

    status: str
    content_type: str
    body: str


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
    return _flask(_refuse_too_large(gateway, request.path, reason))


def _refuse_too_large(gateway: Gateway, path: str, reason: str) -> Answer:
    gateway.metrics.webhook_rejected.labels("too_large").inc()
    log.info("webhook %s refused: too large: %s", path, reason)
    return Answer("413 Payload Too Large", "text/plain", "Payload Too Large\n")


def _authentic(gateway: Gateway) -> bool:
    query = request.query_string.decode("utf-8", "replace")
    return gateway.webhooks.authentic(request.path, query, request.form, request.headers)


def _forbidden(gateway: Gateway, reason: str) -> Response:
    return _flask(_refuse(gateway, request.path, reason))


def _refuse(gateway: Gateway, path: str, reason: str) -> Answer:
    gateway.metrics.webhook_rejected.labels(reason).inc()
    log.info("webhook %s refused: %s", path, reason)
    return Answer("403 Forbidden", "text/plain", "Forbidden\n")


def _bad_request(gateway: Gateway, reason: str) -> Response:
    return _flask(_refuse_bad_request(gateway, request.path, reason))


def _refuse_bad_request(gateway: Gateway, path: str, reason: str) -> Answer:
    gateway.metrics.webhook_rejected.labels("bad_request").inc()
    log.info("webhook %s: bad request: %s", path, reason)
    return Answer("400 Bad Request", "text/plain", f"Bad Request: {reason}\n")


_UNAVAILABLE = Answer("503 Service Unavailable", "text/plain", "Service Unavailable\n")


def _unavailable() -> Response:
    return _flask(_UNAVAILABLE)


def _flask(answer: Answer) -> Response:
    return Response(answer.body, status=answer.status, mimetype=answer.content_type)


@blueprint.post("/sms/inbound")
def inbound() -> Response:
    """`POST /sms/inbound` when Flask serves it (a form that is not urlencoded); the usual
    request takes `InboundFastPath` and never gets here. Both run `receive_text`."""
    query = request.query_string.decode("utf-8", "replace")
    answer = receive_text(current_gateway(), request.path, query, request.form, request.headers)
    return _flask(answer)


def receive_text(
    gateway: Gateway,
    path: str,
    query: str,
    form: Mapping[str, str],
    headers: Mapping[str, str] | Headers,
) -> Answer:
    """The inbound webhook after the size checks: signature (403), form (400), then the
    text accepted in one committed transaction (`InboundService.accept`), answered in the
    provider's format; 503 when the store is down."""
    started = time.perf_counter()
    checked = check_text(gateway, path, query, form, headers)
    if isinstance(checked, Answer):
        return checked
    try:
        outcome = gateway.inbound.accept(checked)
    except StoreUnavailable as exc:
        return store_down(checked, exc)
    return answer_text(gateway, outcome, started)


def check_text(
    gateway: Gateway,
    path: str,
    query: str,
    form: Mapping[str, str],
    headers: Mapping[str, str] | Headers,
) -> InboundText | Answer:
    """The webhook's checks before the store: the signature (403), the form (400); an
    empty text is answered at once (nothing to forward or answer). The text, or the answer."""
    if not gateway.webhooks.authentic(path, query, form, headers):
        return _refuse(gateway, path, "signature")
    try:
        text = gateway.webhooks.inbound(form, gateway.settings.sms.default_region)
    except BadWebhook as exc:
        return _refuse_bad_request(gateway, path, str(exc))
    if not text.body and not text.media:
        gateway.metrics.texts_in.labels("empty").inc()
        return _provider_answer(gateway, ())
    return text


def store_down(text: InboundText, exc: StoreUnavailable) -> Answer:
    """503: the provider retries (or its fallback URL acts); nothing was stored."""
    log.error("store unavailable, answering 503 to %s: %s", mask_phone(text.phone), exc)
    return _UNAVAILABLE


def answer_text(gateway: Gateway, outcome: Outcome, started: float) -> Answer:
    """After the text's transaction committed: wake the worker, count, answer."""
    if outcome.emails_queued:
        gateway.outbox_changed()
    kind = "duplicate" if outcome.duplicate else (outcome.keyword or "text")
    metrics = gateway.metrics
    _labelled(metrics.texts_in, kind).inc()
    if not outcome.duplicate and outcome.keyword is None:
        if outcome.step == "queued":
            gateway.inbound_changed()
        _labelled(metrics.dialogue_steps, outcome.step).inc()
        if outcome.step in ("delivered", "queued") and outcome.municipality_id:
            _labelled(metrics.texts_by_municipality, outcome.municipality_id).inc()
    metrics.webhook_seconds.observe(time.perf_counter() - started)
    return _provider_answer(gateway, outcome.replies)


_CHILDREN: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()


def _labelled(metric: Any, value: str) -> Any:
    """`metric.labels(value)`, kept (prometheus_client validates and locks on every
    `labels()` call; a text counts three). Values are bounded: kinds, steps, municipality
    ids of the map."""
    children = _CHILDREN.get(metric)
    if children is None:
        children = _CHILDREN.setdefault(metric, {})
    child = children.get(value)
    if child is None:
        child = children[value] = metric.labels(value)
    return child


def _provider_answer(gateway: Gateway, replies: tuple[str, ...]) -> Answer:
    answer = gateway.webhooks.answer(replies)
    return Answer("200 OK", answer.content_type, answer.body)


class Form(dict[str, str]):
    """A urlencoded form: each field's first value, as werkzeug's MultiDict reads it, in a
    plain dict (a missing field costs no exception: MultiDict raises and catches a
    BadRequestKeyError for each, measured in issue 16), and every value of a field through
    `getall`/`getlist` (what twilio's RequestValidator reads)."""

    def __init__(self, pairs: Iterable[tuple[str, str]]) -> None:
        super().__init__()
        self._all: dict[str, list[str]] = {}
        for name, value in pairs:
            values = self._all.get(name)
            if values is None:
                self._all[name] = [value]
                self[name] = value
            else:
                values.append(value)

    def getall(self, name: str) -> list[str]:
        return self._all[name]

    def getlist(self, name: str) -> list[str]:
        return list(self._all.get(name, ()))


def urlencoded_form(gateway: Gateway, path: str, data: bytes) -> Form | Answer:
    """A urlencoded body (at most `MAX_WEBHOOK_BYTES`, checked by the caller) as a form;
    413 for more than `MAX_WEBHOOK_FIELDS` fields, refused before it is parsed."""
    if data.count(b"&") >= MAX_WEBHOOK_FIELDS:
        return _refuse_too_large(gateway, path, "too many fields")
    return Form(parse_form(data.decode("utf-8", "replace")))


def parse_form(text: str) -> list[tuple[str, str]]:
    """The fields of a urlencoded form, in order: what
    `urllib.parse.parse_qsl(text, keep_blank_values=True)` returns (fields split on "&" only,
    a field without "=" has an empty value, empty fields skipped, "+" and %XX decoded as
    UTF-8 with replacement), without its per-field overhead: measured on Twilio's inbound
    form (21 fields), 16 µs against 27 µs, and the form was 13 % of the webhook's CPU.
    Only a name or value holding "%" or "+" goes through `unquote_plus`."""
    fields = []
    for field in text.split("&"):
        if not field:
            continue
        name, _, value = field.partition("=")
        if "%" in name or "+" in name:
            name = unquote_plus(name)
        if "%" in value or "+" in value:
            value = unquote_plus(value)
        fields.append((name, value))
    return fields


def refuse_too_large(gateway: Gateway, path: str, reason: str) -> Answer:
    """413, counted and logged (a body over `MAX_WEBHOOK_BYTES`)."""
    return _refuse_too_large(gateway, path, reason)


def refuse_bad_request(gateway: Gateway, path: str, reason: str) -> Answer:
    """400, counted and logged."""
    return _refuse_bad_request(gateway, path, reason)


class InboundFastPath:
    """`POST /sms/inbound` with a urlencoded form (what providers send) in plain WSGI,
    in front of the Flask app: the same checks in the same order as the blueprint's
    (size 413, signature 403, form 400, 503), through `receive_text`, without Flask's
    request and response objects (measured: about 0.1 ms of the ~0.4 ms a text costs the
    web process). Every other request goes to the Flask app unchanged."""

    def __init__(self, app: WSGIApplication, gateway: Gateway) -> None:
        self._app = app
        self._gateway = gateway

    def __call__(
        self, environ: WSGIEnvironment, start_response: StartResponse
    ) -> Iterable[bytes]:
        if (
            environ.get("PATH_INFO") != "/sms/inbound"
            or environ.get("REQUEST_METHOD") != "POST"
            or environ.get("CONTENT_TYPE", "").partition(";")[0].strip().lower()
            != "application/x-www-form-urlencoded"
            or "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        ):
            return self._app(environ, start_response)
        answer = self._answer(environ)
        body = answer.body.encode("utf-8")
        start_response(answer.status, [
            ("Content-Type", get_content_type(answer.content_type, "utf-8")),
            ("Content-Length", str(len(body))),
        ])  # fmt: skip
        return [body]

    def _answer(self, environ: WSGIEnvironment) -> Answer:
        gateway, path = self._gateway, "/sms/inbound"
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return _refuse_bad_request(gateway, path, "bad Content-Length")
        if length > MAX_WEBHOOK_BYTES:
            return _refuse_too_large(gateway, path, f"{length} bytes")
        data = environ["wsgi.input"].read(length) if length > 0 else b""
        form = urlencoded_form(gateway, path, data)
        if isinstance(form, Answer):
            return form
        query = environ.get("QUERY_STRING", "")
        if isinstance(query, bytes):  # pragma: no cover - WSGI gives str
            query = query.decode("latin-1")
        query = query.encode("latin-1").decode("utf-8", "replace")
        try:
            return receive_text(gateway, path, query, form, EnvironHeaders(environ))
        except Exception:
            log.exception("webhook %s failed", path)
            return Answer("500 Internal Server Error", "text/plain", "Internal Server Error\n")


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
