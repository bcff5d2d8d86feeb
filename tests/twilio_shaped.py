"""Twilio-shaped webhooks (Twilio itself, the sandbox, any Twilio-compatible API): the
provider-specific part of the shared security cases (tests/webhook_security.py)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from flask.testing import FlaskClient
from twilio.request_validator import RequestValidator

from gateway.app import Gateway
from gateway.run.sandbox import twilio_form
from gateway.settings import Settings
from gateway.sms.twilio.signature import signed_url
from tests.webhook_security import INBOUND, NUMBER, Malformed, WebhookSecurityCases

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
        Malformed("MessageSid not in Twilio's shape", {"MessageSid": "SM123", "SmsMessageSid": None}),
        Malformed("MessageSid of another resource", {"MessageSid": "AC" + "1" * 32,
                                                      "SmsMessageSid": None}),
        Malformed("MessageSid with NumMedia glued on (a re-split signed form)",
                  {"MessageSid": "SM" + "a" * 32 + "NumMedia0", "SmsMessageSid": None,
                   "NumMedia": None}),
        Malformed("SmsMessageSid differs from MessageSid", {"SmsMessageSid": "SM" + "b" * 32}),
        Malformed("no NumMedia", {"NumMedia": None}),
        Malformed("From not a number", {"From": "not-a-number"}),
        Malformed("a NUL in Body", {"Body": "hello\x00"}),
        Malformed("Body far too long", {"Body": "x" * 6000}),
        Malformed("NumMedia not a number", {"NumMedia": "many"}),
        Malformed("NumMedia out of range", {"NumMedia": "11"}),
        Malformed("media URL missing", {"NumMedia": "1"}),
        Malformed("media URL not http", {"NumMedia": "1", "MediaUrl0": "file:///etc/passwd"}),
        Malformed("status without MessageStatus", {"MessageStatus": None}, path="/sms/status"),
        Malformed("status of a MessageSid not in Twilio's shape",
                  {"MessageStatus": "delivered", "MessageSid": "SM1"}, path="/sms/status"),
    ]

    def test_a_captured_form_re_split_is_refused(
        self, client: FlaskClient, gateway: Gateway
    ) -> None:
        """The signature concatenates names and values without separators: the captured
        form re-split as `MessageSid=<sid>NumMedia0` (no NumMedia) still verifies, but is
        refused, so it cannot pass the dedupe as a new message and send a second email."""
        form = self.inbound_form(gateway.settings, NUMBER, "Pothole on Bank St")
        headers = self.sign(gateway.settings, INBOUND, "", form)
        assert client.post(INBOUND, data=form, headers=headers).status_code == 200
        outbox = gateway.store.list_outbox(None)
        resplit = {k: v for k, v in form.items() if k != "NumMedia"}
        resplit["MessageSid"] = form["MessageSid"] + "NumMedia" + form["NumMedia"]
        assert self.sign(gateway.settings, INBOUND, "", resplit) == headers  # still signed
        assert client.post(INBOUND, data=resplit, headers=headers).status_code == 400
        assert gateway.store.list_outbox(None) == outbox

    def sign(self, settings: Settings, path: str, query: str, form: Mapping[str, str],
             token: str | None = None) -> dict[str, str]:
        validator = RequestValidator(token or settings.sms.auth_token)
        url = signed_url(settings.public_url, path, query)
        return {"X-Twilio-Signature": validator.compute_signature(url, dict(form))}

    def inbound_form(self, settings: Settings, number: str, body: str) -> dict[str, str]:
        return twilio_form(settings, number, body)

    def media_fields(self, count: int) -> dict[str, str]:
        message = "MM" + "1" * 32
        fields = {"NumMedia": str(count)}
        for i in range(count):
            fields[f"MediaUrl{i}"] = (f"https://api.twilio.com/2010-04-01/Accounts/{ACCOUNT_SID}"
                                      f"/Messages/{message}/Media/ME{i:032x}")
            fields[f"MediaContentType{i}"] = "image/jpeg"
        return fields

    def status_form(self, sid: str, state: str) -> dict[str, str]:
        return {"MessageSid": sid, "MessageStatus": state, "AccountSid": ACCOUNT_SID}
