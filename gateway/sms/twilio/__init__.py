"""Twilio, and every Twilio-compatible API (SignalWire, a local fake): `client` (the REST
API through the real `twilio` client), `webhook` (signature, forms, TwiML), `signature`
(X-Twilio-Signature), `errors` (Twilio's error codes and what they mean)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from gateway.sms.base import ProviderKind
from gateway.sms.twilio import errors
from gateway.sms.twilio.webhook import TwilioWebhooks

if TYPE_CHECKING:
    from gateway.settings import SmsSettings
    from gateway.sms.twilio.client import TwilioProvider

__all__ = ["PROVIDER", "TwilioProvider", "TwilioWebhooks", "errors"]


def __getattr__(name: str) -> object:
    # The REST client (the twilio library's, with requests: about 16 MB) is loaded when the
    # provider is first used to send or to fetch a picture, not by a web process that only
    # checks webhooks.
    if name == "TwilioProvider":
        from gateway.sms.twilio.client import TwilioProvider

        return TwilioProvider
    raise AttributeError(name)


def _client(sms: SmsSettings, state_dir: Path, public_url: str) -> TwilioProvider:
    from gateway.sms.twilio.client import TwilioProvider

    return TwilioProvider(sms.account_sid, sms.auth_token, sms.sender, sms.api_base_url)


def _webhooks(sms: SmsSettings, public_url: str) -> TwilioWebhooks:
    return TwilioWebhooks(sms.auth_token, public_url)


PROVIDER = ProviderKind(client=_client, webhooks=_webhooks, describe_error=errors.describe)
