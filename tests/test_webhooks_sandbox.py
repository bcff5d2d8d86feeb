"""The sandbox provider's webhooks (Twilio-shaped, signed with the sandbox's own token)
pass the shared security cases (tests/webhook_security.py)."""

from __future__ import annotations

from tests.gateway_fixtures import AUTH_TOKEN
from tests.twilio_shaped import TwilioShaped


class TestSandboxWebhooks(TwilioShaped):
    sms_section = f"sms:\n  provider: sandbox\n  auth_token: {AUTH_TOKEN}\n  sender: \"31100\"\n"
