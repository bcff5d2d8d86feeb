"""SMS providers: the neutral interface (`base`), and one folder or module per provider —
Twilio and Twilio-compatible APIs (`twilio/`), the sandbox (`sandbox`).

Adding a provider: a folder `gateway/sms/<name>/` whose `PROVIDER` (a `ProviderKind`)
builds its client and its webhooks, one line in `PROVIDERS` below, its name in the
`sms.provider` choices (`gateway.settings`), and one test module that inherits the shared
webhook security cases (`tests/webhook_security.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from gateway.settings import SmsSettings
from gateway.sms import sandbox, twilio
from gateway.sms.base import (
    MediaError,
    ProviderKind,
    SmsError,
    SmsPermanentError,
    SmsProvider,
    SmsTemporaryError,
    Webhooks,
)

__all__ = [
    "PROVIDERS",
    "MediaError",
    "SmsError",
    "SmsPermanentError",
    "SmsProvider",
    "SmsTemporaryError",
    "Webhooks",
    "error_descriptions",
    "make_provider",
    "make_webhooks",
]

#: Every provider, by its `sms.provider` name.
PROVIDERS: Mapping[str, ProviderKind] = {
    "twilio": twilio.PROVIDER,
    "sandbox": sandbox.PROVIDER,
}


def _kind(sms: SmsSettings) -> ProviderKind:
    try:
        return PROVIDERS[sms.provider]
    except KeyError:
        names = " | ".join(PROVIDERS)
        raise ValueError(f"unknown sms.provider {sms.provider!r} ({names})") from None


def make_provider(sms: SmsSettings, state_dir: Path, public_url: str = "") -> SmsProvider:
    """The client of the provider named by `sms.provider`: "twilio" (the real API at
    `sms.api_base_url`) or "sandbox" (records texts to `<state_dir>/sms.jsonl`; fetches
    media only from `public_url`, the gateway's own, and its own files)."""
    return _kind(sms).client(sms, state_dir, public_url)


def error_descriptions(sms: SmsSettings) -> Callable[[int], tuple[str, str] | None]:
    """What the provider named by `sms.provider` says its error codes mean to an agent."""
    return _kind(sms).describe_error


def make_webhooks(sms: SmsSettings, public_url: str) -> Webhooks:
    """The webhooks of the provider named by `sms.provider`, checked against
    `public_url` (the base URL the provider calls)."""
    return _kind(sms).webhooks(sms, public_url)
