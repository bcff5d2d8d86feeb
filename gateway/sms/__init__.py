"""SMS providers: the interface (`base`), Twilio (`twilio`), the sandbox (`sandbox`)."""

from __future__ import annotations

from pathlib import Path

from gateway.settings import SmsSettings
from gateway.sms.base import (
    MediaError,
    SmsError,
    SmsPermanentError,
    SmsProvider,
    SmsTemporaryError,
)
from gateway.sms.sandbox import SandboxProvider
from gateway.sms.twilio.client import TwilioProvider

__all__ = [
    "MediaError",
    "SandboxProvider",
    "SmsError",
    "SmsPermanentError",
    "SmsProvider",
    "SmsTemporaryError",
    "TwilioProvider",
    "make_provider",
]


def make_provider(sms: SmsSettings, state_dir: Path) -> SmsProvider:
    """The provider named by `sms.provider`: "twilio" (the real API at
    `sms.api_base_url`) or "sandbox" (records texts to `<state_dir>/sms.jsonl`)."""
    if sms.provider == "twilio":
        return TwilioProvider(sms.account_sid, sms.auth_token, sms.sender, sms.api_base_url)
    if sms.provider == "sandbox":
        return SandboxProvider(state_dir)
    raise ValueError(f"unknown sms.provider {sms.provider!r} (twilio | sandbox)")
