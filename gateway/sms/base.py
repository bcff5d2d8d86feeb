"""The SMS provider interface and its errors.

A provider is synchronous (the twilio client is): the asyncio worker calls it through
`asyncio.to_thread`. Errors say whether trying again may help:

- `SmsTemporaryError`: network trouble, throttling, 5xx, bad credentials (the operator
  must fix them; the message itself is fine). `maybe_sent` is True when the request may
  have reached the provider (a read timeout, a 5xx): resending could text twice.
- `SmsPermanentError`: this message to this number will never go (opted out, invalid
  number, …); `code` is the provider's own error code (kept for the agent and the logs),
  `reason` the provider-neutral classification the rest of the gateway acts on — each
  provider maps its codes to reasons (Twilio's: `gateway.sms.twilio.errors`).

This module is provider-neutral: no provider's codes, field names or formats. A provider
is one folder under `gateway/sms/` with a client (`SmsProvider`) and its webhooks
(`Webhooks`), registered in `gateway.sms.PROVIDERS`.

After a `maybe_sent` failure, `SmsProvider.find_sent` tells whether the provider has
the message after all, so a retry never texts a resident twice.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

from gateway.rules.resident_email import MediaRef

if TYPE_CHECKING:
    from werkzeug.datastructures import Headers

    from gateway.settings import SmsSettings

MAX_MEDIA_BYTES = 5 * 1024 * 1024
MAX_BODY_CHARS = 5000  # inbound: providers cap a text at 1,600; anything far beyond is no provider
MAX_MEDIA = 10  # media per inbound message
MAX_SID_CHARS = 64
#: A webhook request's body: a provider's form is a few KB (a 1,600-character text of
#: 4-byte characters is under 20 KB URL-encoded); anything larger is refused (413) before
#: the signature is computed, so an unsigned flood stays cheap to refuse.
MAX_WEBHOOK_BYTES = 32 * 1024
#: Fields of a webhook form (Twilio's inbound form with 10 media has about 50).
MAX_WEBHOOK_FIELDS = 100

PermanentReason = Literal[
    "opted_out", "invalid_number", "unreachable", "filtered", "too_long", "sender", "rejected"
]

#: Delivery states a provider reports; a report of another state is kept as "other".
DELIVERY_STATES = frozenset({
    "queued", "accepted", "sending", "sent", "delivered", "undelivered", "failed", "read",
    "canceled", "scheduled", "receiving", "received",
})
#: The delivery states that mean "it did not arrive" (the agent is told).
FAILED_STATES = frozenset({"undelivered", "failed"})


@dataclass(frozen=True)
class InboundText:
    """One validated inbound SMS/MMS, numbers already in E.164 (what any provider's
    webhook becomes)."""

    sid: str
    phone: str
    to: str
    body: str
    received_at: datetime
    media: tuple[MediaRef, ...] = ()
    from_city: str | None = None
    from_state: str | None = None


@dataclass(frozen=True)
class DeliveryReport:
    """A provider's delivery status callback: our message `sid` is now in `state`
    (lower case); `code` is the provider's error code, `reason` its neutral meaning
    when the state is a failure (None otherwise)."""

    sid: str
    state: str
    code: int | None = None
    reason: PermanentReason | None = None

    @property
    def failed(self) -> bool:
        return self.state in FAILED_STATES


class BadWebhook(ValueError):
    """A webhook whose signature held but whose form lacks or garbles a field the
    provider always sends (answered 400; nothing is stored)."""

class SmsError(Exception):
    """Sending or fetching failed."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class SmsTemporaryError(SmsError):
    """Try again later. `retry_after` (seconds) is the provider's hint when it gave one;
    `maybe_sent` is True if the provider may have accepted the message anyway."""

    def __init__(
        self,
        message: str,
        code: int | None = None,
        *,
        retry_after: float | None = None,
        maybe_sent: bool = False,
    ) -> None:
        super().__init__(message, code)
        self.retry_after = retry_after
        self.maybe_sent = maybe_sent


class SmsPermanentError(SmsError):
    """This message will never be accepted as it is; `reason` says why, `code` is the
    provider's own error code."""

    def __init__(self, message: str, code: int | None = None, *, reason: PermanentReason) -> None:
        super().__init__(message, code)
        self.reason: PermanentReason = reason

    @property
    def opted_out(self) -> bool:
        """The resident texted STOP to this sender: nothing goes until START."""
        return self.reason == "opted_out"

    @property
    def invalid_number(self) -> bool:
        """The number cannot receive texts at all."""
        return self.reason == "invalid_number"


class MediaError(SmsError):
    """A media could not be fetched; the email then lists its URL instead.

    `temporary` is True when a later try may work (network trouble, 429, 5xx) and
    False when it will not (404, too big, not a media URL)."""

    def __init__(self, message: str, code: int | None = None, *, temporary: bool = False) -> None:
        super().__init__(message, code)
        self.temporary = temporary


@runtime_checkable
class SmsProvider(Protocol):
    """Sends texts and fetches the media of received MMS."""

    @property
    def name(self) -> str:
        """ "twilio", "sandbox", …"""
        ...

    def send(self, to: str, body: str, status_callback: str | None = None) -> str:
        """Send `body` to `to` (E.164); returns the provider's message id (SID).

        `status_callback` is the URL the provider calls with delivery updates.
        Raises SmsTemporaryError or SmsPermanentError.
        """
        ...

    def find_sent(self, to: str, body: str, since: datetime) -> str | None:
        """The SID of a message with this `body` already sent to `to` at or after `since`
        (timezone-aware; naive means UTC), or None if the provider surely has none.

        Called before retrying a send that failed with `maybe_sent`. Raises
        SmsTemporaryError when the provider cannot be asked (then do not resend yet).
        """
        ...

    def fetch_media(self, url: str) -> tuple[str, bytes]:
        """Download a received media: (content type, data). Raises MediaError."""
        ...


@dataclass(frozen=True)
class WebhookAnswer:
    """What the inbound webhook answers: the body and its content type."""

    body: str
    content_type: str


@runtime_checkable
class Webhooks(Protocol):
    """A provider's side of `POST /sms/inbound` and `POST /sms/status`.

    `gateway.web.webhooks` stacks the checks in this order and fails closed: `authentic`
    (else 403, nothing read), then `inbound`/`status` (BadWebhook: 400), then the flow."""

    def authentic(
        self, path: str, query: str, form: Mapping[str, str], headers: Mapping[str, str] | Headers
    ) -> bool:
        """True only when the request is signed by the provider for this URL and form
        (`path` relative to the application root, `query` without "?")."""
        ...

    def inbound(self, form: Mapping[str, str], region: str) -> InboundText:
        """The inbound message in `form` (numbers normalised with `region`); raises
        BadWebhook."""
        ...

    def status(self, form: Mapping[str, str]) -> DeliveryReport:
        """The delivery report in `form`; raises BadWebhook."""
        ...

    def answer(self, replies: tuple[str, ...]) -> WebhookAnswer:
        """The inbound webhook's answer texting `replies` back to the sender."""
        ...


@dataclass(frozen=True)
class ProviderKind:
    """What a provider folder registers in `gateway.sms.PROVIDERS` under its
    `sms.provider` name: how to build its client (from the `sms` settings, the state
    directory and `public_url`) and its webhooks (from the `sms` settings and
    `public_url`)."""

    client: Callable[[SmsSettings, Path, str], SmsProvider]
    webhooks: Callable[[SmsSettings, str], Webhooks]
    #: What one of the provider's error codes means to an agent: (English, French) or None.
    describe_error: Callable[[int], tuple[str, str] | None] = lambda code: None
