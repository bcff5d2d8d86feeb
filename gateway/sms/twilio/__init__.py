"""Twilio, and every Twilio-compatible API (SignalWire, a local fake): `client` (the REST
API through the real `twilio` client), `webhook` (signature, forms, TwiML), `signature`
(X-Twilio-Signature), `errors` (Twilio's error codes and what they mean)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from gateway.sms.base import ProviderKind
from gateway.sms.twilio import errors
from gateway.sms.twilio.client import TwilioProvider
from gateway.sms.twilio.webhook import TwilioWebhooks

if TYPE_CHECKING:
    from gateway.settings import SmsSettings

__all__ = ["PROVIDER", "TwilioProvider", "TwilioWebhooks", "errors"]


def _client(sms: SmsSettings, state_dir: Path, public_url: str) -> TwilioProvider:
    return TwilioProvider(sms.account_sid, sms.auth_token, sms.sender, sms.api_base_url)


def _webhooks(sms: SmsSettings, public_url: str) -> TwilioWebhooks:
    return TwilioWebhooks(sms.auth_token, public_url)


PROVIDER = ProviderKind(client=_client, webhooks=_webhooks, describe_error=errors.describe)
