"""Twilio-shaped webhooks (Twilio itself, the sandbox, any Twilio-compatible API): the
provider-specific part of the shared security cases (tests/webhook_security.py)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from twilio.request_validator import RequestValidator

from gateway.run.sandbox import twilio_form
from gateway.settings import Settings
from gateway.sms.twilio.signature import signed_url
from tests.webhook_security import Malformed, WebhookSecurityCases

ACCOUNT_SID = "AC" + "0" * 32


class TwilioShaped(WebhookSecurityCases):
    """What every Twilio-shaped provider shares: the X-Twilio-Signature header, the form."""

    body_field = "Body"
    garbage_signatures: ClassVar[list[dict[str, str]]] = [
        {"X-Twilio-Signature": ""},
        {"X-Twilio-Signature": "RSOYDt4T1cUTdK1PDd93/VVr8B8="},
        {"X-Twilio-Signature": "\u00ff\u00fe not base64"},
        {"X-Twilio-Signature": "A" * 10_000},
    ]
    malformed: ClassVar[list[Malformed]] = [
        Malformed("no From", {"From": None}),
        Malformed("empty From", {"From": ""}),
        Malformed("no To", {"To": None}),
        Malformed("no MessageSid", {"MessageSid": None, "SmsMessageSid": None}),
        Malformed("MessageSid too long", {"MessageSid": "SM" + "1" * 100}),
        Malformed("From not a number", {"From": "not-a-number"}),
        Malformed("a NUL in Body", {"Body": "hello\x00"}),
        Malformed("Body far too long", {"Body": "x" * 6000}),
        Malformed("NumMedia not a number", {"NumMedia": "many"}),
        Malformed("NumMedia out of range", {"NumMedia": "11"}),
        Malformed("media URL missing", {"NumMedia": "1"}),
        Malformed("media URL not http", {"NumMedia": "1", "MediaUrl0": "file:///etc/passwd"}),
        Malformed("status without MessageStatus", {"MessageStatus": None}, path="/sms/status"),
    ]

    def sign(self, settings: Settings, path: str, query: str, form: Mapping[str, str],
             token: str | None = None) -> dict[str, str]:
        validator = RequestValidator(token or settings.sms.auth_token)
        url = signed_url(settings.public_url, path, query)
        return {"X-Twilio-Signature": validator.compute_signature(url, dict(form))}

    def inbound_form(self, settings: Settings, number: str, body: str) -> dict[str, str]:
        return twilio_form(settings, number, body)

    def status_form(self, sid: str, state: str) -> dict[str, str]:
        return {"MessageSid": sid, "MessageStatus": state, "AccountSid": ACCOUNT_SID}
