"""Twilio's webhooks: the signature, the inbound-message and status-callback forms, and
the TwiML answer (`TwilioWebhooks`, the `gateway.sms.base.Webhooks` of Twilio and of
every Twilio-compatible API, the sandbox included).

Forms are read defensively: a field with a NUL, an oversized body, a media count out of
range or a media URL that is not http(s) is a `BadWebhook`, never a crash.

Twilio's signature covers the fields' names and values concatenated without separators,
so a captured signed form can be re-split (`MessageSid=<sid>NumMedia0`, no `NumMedia`)
and still verify. Hence a message SID is accepted only in a fixed shape (`SID_SHAPE`:
Twilio's "SM"/"MM" + 32 hex, or the UUID of a compatible API such as SignalWire) and
`NumMedia`, which Twilio always sends, is required: a re-split form is a `BadWebhook`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime

from twilio.twiml.messaging_response import MessagingResponse
from werkzeug.datastructures import Headers

from gateway.rules.phone import NotAPhoneNumber, normalise_number
from gateway.rules.resident_email import MediaRef
from gateway.sms.base import (
    MAX_BODY_CHARS,
    MAX_MEDIA,
    BadWebhook,
    DeliveryReport,
    InboundText,
    WebhookAnswer,
)
from gateway.sms.twilio.errors import permanent_reason
from gateway.sms.twilio.signature import TwilioSignature

TWIML = "application/xml"
_EMPTY_TWIML = WebhookAnswer(str(MessagingResponse()), TWIML)  # the usual answer: built once


#: A message SID: Twilio's ("SM" or "MM" and 32 hex digits), or a UUID (SignalWire).
SID_SHAPE = re.compile(
    r"(?:SM|MM)[0-9a-fA-F]{32}"
    r"|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)


def _sid(value: str, name: str) -> str:
    if SID_SHAPE.fullmatch(value) is None:
        raise BadWebhook(f"{name} is not a message SID")
    return value


def _field(form: Mapping[str, str], name: str, *, required: bool = False) -> str:
    value = form.get(name, "")
    if "\x00" in value:
        raise BadWebhook(f"{name} contains a NUL character")
    if required and not value.strip():
        raise BadWebhook(f"missing {name}")
    return value


class TwilioWebhooks:
    """Twilio-shaped webhooks signed with `auth_token` for URLs under `public_url`."""

    def __init__(self, auth_token: str, public_url: str) -> None:
        self.signature = TwilioSignature(auth_token, public_url)

    def authentic(
        self, path: str, query: str, form: Mapping[str, str], headers: Mapping[str, str] | Headers
    ) -> bool:
        return self.signature.is_valid(path, query, form, headers)

    def inbound(self, form: Mapping[str, str], region: str) -> InboundText:
        sid = _field(form, "MessageSid") or _field(form, "SmsMessageSid") or _field(form, "SmsSid")
        if not sid.strip():
            raise BadWebhook("missing MessageSid")
        _sid(sid, "MessageSid")
        for alias in ("SmsMessageSid", "SmsSid"):  # when sent, the same SID
            if form.get(alias, sid) != sid:
                raise BadWebhook(f"{alias} differs from MessageSid")
        try:
            phone = normalise_number(_field(form, "From", required=True), region)
        except NotAPhoneNumber as exc:
            raise BadWebhook(str(exc)) from exc
        to = _field(form, "To", required=True)
        body = _field(form, "Body")
        if len(body) > MAX_BODY_CHARS:
            raise BadWebhook("Body too long")
        try:
            num_media = int(_field(form, "NumMedia", required=True))
        except ValueError as exc:
            raise BadWebhook("NumMedia is not a number") from exc
        if not 0 <= num_media <= MAX_MEDIA:
            raise BadWebhook("NumMedia out of range")
        media = []
        for i in range(num_media):
            url = _field(form, f"MediaUrl{i}", required=True)
            if not url.startswith(("https://", "http://")):
                raise BadWebhook(f"MediaUrl{i} is not an http(s) URL")
            content_type = _field(form, f"MediaContentType{i}") or "application/octet-stream"
            media.append(MediaRef(url=url, content_type=content_type))
        return InboundText(
            sid=sid,
            phone=phone,
            to=to,
            body=body.strip(),
            received_at=datetime.now(UTC),
            media=tuple(media),
            from_city=_field(form, "FromCity") or None,
            from_state=_field(form, "FromState") or None,
        )

    def status(self, form: Mapping[str, str]) -> DeliveryReport:
        sid = form.get("MessageSid", "").strip()
        state = form.get("MessageStatus", "").strip().lower()
        if not sid or not state or SID_SHAPE.fullmatch(sid) is None or len(state) > 32:
            raise BadWebhook("missing or garbled MessageSid or MessageStatus")
        error_code = form.get("ErrorCode", "").strip()
        try:
            code = int(error_code) if error_code else None
        except ValueError as exc:
            raise BadWebhook("ErrorCode is not a number") from exc
        report = DeliveryReport(sid=sid, state=state, code=code)
        if report.failed:
            report = DeliveryReport(sid=sid, state=state, code=code, reason=permanent_reason(code))
        return report

    def answer(self, replies: tuple[str, ...]) -> WebhookAnswer:
        if not replies:
            return _EMPTY_TWIML
        twiml = MessagingResponse()
        for reply in replies:
            twiml.message(reply)
        return WebhookAnswer(str(twiml), TWIML)
