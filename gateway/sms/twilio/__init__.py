"""Twilio, and every Twilio-compatible API (SignalWire, a local fake): `client` (the REST
API through the real `twilio` client), `webhook` (signature, forms, TwiML), `signature`
(X-Twilio-Signature), `errors` (Twilio's error codes and what they mean)."""

from __future__ import annotations

import threading
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.sms.base import ProviderKind
from gateway.sms.twilio import errors

if TYPE_CHECKING:
    from gateway.settings import SmsSettings
    from gateway.sms.twilio.client import TwilioProvider
    from gateway.sms.twilio.webhook import TwilioWebhooks

__all__ = ["PROVIDER", "LazyTwilioProvider", "TwilioProvider", "TwilioWebhooks", "errors"]


def __getattr__(name: str) -> object:
    # The REST client (the twilio library's, with requests) is loaded when the provider is
    # first used to send or to fetch a picture, not by a web process that only checks
    # webhooks; the webhooks (werkzeug, TwiML) only by a process that serves them.
    if name == "TwilioProvider":
        from gateway.sms.twilio.client import TwilioProvider

        return TwilioProvider
    if name == "TwilioWebhooks":
        from gateway.sms.twilio.webhook import TwilioWebhooks

        return TwilioWebhooks
    raise AttributeError(name)


def check_credentials(account_sid: str, auth_token: str, sender: str) -> None:
    """Raise ValueError naming the setting that a Twilio client cannot do without."""
    if not account_sid or not auth_token:
        raise ValueError("sms.account_sid and sms.auth_token are required for Twilio")
    if not sender:
        raise ValueError("sms.sender is required for Twilio")


class LazyTwilioProvider:
    """`TwilioProvider`, built at its first use (a send, a lookup, a picture fetched).

    The twilio library's REST client and requests are about 5 MB of a process's memory
    that the web half, which only checks webhooks and answers in TwiML, never needs; the
    settings are checked at once all the same. The worker builds it as it starts
    (`prepare`), so that no send waits for it between the pacer's grant and the request.
    Thread-safe: one client is built."""

    name = "twilio"

    def __init__(self, sms: SmsSettings) -> None:
        check_credentials(sms.account_sid, sms.auth_token, sms.sender)
        self._sms = sms
        self._lock = threading.Lock()
        self._real: TwilioProvider | None = None

    def __repr__(self) -> str:
        return f"LazyTwilioProvider(api={self._sms.api_base_url!r})"

    @property
    def real(self) -> TwilioProvider:
        """The REST client (built now if it was not yet)."""
        if self._real is None:
            with self._lock:
                if self._real is None:
                    from gateway.sms.twilio.client import TwilioProvider

                    sms = self._sms
                    self._real = TwilioProvider(
                        sms.account_sid, sms.auth_token, sms.sender, sms.api_base_url
                    )
        return self._real

    def prepare(self) -> None:
        """Build the client now (the worker does, before its first send is paced)."""
        self.real  # noqa: B018 - built on access

    def send(self, to: str, body: str, status_callback: str | None = None) -> str:
        return self.real.send(to, body, status_callback)

    def find_sent(self, to: str, body: str, since: datetime) -> str | None:
        return self.real.find_sent(to, body, since)

    def fetch_media(self, url: str) -> tuple[str, bytes]:
        return self.real.fetch_media(url)


def _client(sms: SmsSettings, state_dir: Path, public_url: str) -> LazyTwilioProvider:
    return LazyTwilioProvider(sms)


def _webhooks(sms: SmsSettings, public_url: str) -> TwilioWebhooks:
    from gateway.sms.twilio.webhook import TwilioWebhooks

    return TwilioWebhooks(sms.auth_token, public_url)


PROVIDER = ProviderKind(client=_client, webhooks=_webhooks, describe_error=errors.describe)
