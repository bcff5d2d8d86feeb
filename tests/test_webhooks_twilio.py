"""Twilio's webhooks (`gateway.sms.twilio.webhook`) pass the shared security cases
(tests/webhook_security.py), signed with the twilio library's own RequestValidator."""

from __future__ import annotations

from tests.gateway_fixtures import AUTH_TOKEN
from tests.twilio_shaped import ACCOUNT_SID, TwilioShaped


class TestTwilioWebhooks(TwilioShaped):
    sms_section = (
        f"sms:\n  provider: twilio\n  account_sid: {ACCOUNT_SID}\n"
        f"  auth_token: {AUTH_TOKEN}\n  sender: \"31100\"\n"
    )
