"""The SMS provider interface and its errors.

A provider is synchronous (the twilio client is): the asyncio worker calls it through
`asyncio.to_thread`. Errors say whether trying again may help:

- `SmsTemporaryError`: network trouble, 429/20429, 5xx, bad credentials (the operator
  must fix them; the message itself is fine). `maybe_sent` is True when the request may
  have reached the provider (a read timeout, a 5xx): resending could text twice.
- `SmsPermanentError`: this message to this number will never go (opted out, invalid
  number, …); `code` is the provider's error code (Twilio codes below), `reason` a
  short classification of it (`permanent_reason`).

After a `maybe_sent` failure, `SmsProvider.find_sent` tells whether the provider has
the message after all, so a retry never texts a resident twice.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal, Protocol, runtime_checkable

# Twilio error codes (https://www.twilio.com/docs/api/errors)
AUTHENTICATION_FAILED = 20003
NOT_FOUND = 20404
TOO_MANY_REQUESTS = 20429
HTTP_TOO_MANY_REQUESTS = 429
INVALID_FROM = 21212
INVALID_TO = 21211
NOT_A_MOBILE_NUMBER = 21614
REGION_NOT_ENABLED = 21408
OPTED_OUT = 21610  # the recipient texted STOP to this sender
NOT_REACHABLE_BY_SMS = 21612
BODY_TOO_LONG = 21617  # more than 1,600 characters
NOT_A_VALID_NUMBER = 21614  # "To" is not a valid mobile number
MESSAGING_SERVICE_NO_SENDERS = 21703
# delivery error codes (status callbacks: ErrorCode of an undelivered/failed message)
QUEUE_OVERFLOW = 30001
ACCOUNT_SUSPENDED = 30002
UNREACHABLE_HANDSET = 30003
MESSAGE_BLOCKED = 30004
UNKNOWN_HANDSET = 30005
LANDLINE_OR_UNREACHABLE_CARRIER = 30006
CARRIER_VIOLATION = 30007  # filtered as spam
UNKNOWN_DELIVERY_ERROR = 30008
MISSING_SEGMENT = 30009

#: Codes for which sending again later may work.
TEMPORARY_CODES = frozenset(
    {AUTHENTICATION_FAILED, TOO_MANY_REQUESTS, HTTP_TOO_MANY_REQUESTS, QUEUE_OVERFLOW}
)
#: Delivery codes meaning "this number will not get texts from us" (do not retry).
UNDELIVERABLE_CODES = frozenset(
    {
        OPTED_OUT,
        INVALID_TO,
        NOT_A_MOBILE_NUMBER,
        NOT_REACHABLE_BY_SMS,
        UNKNOWN_HANDSET,
        LANDLINE_OR_UNREACHABLE_CARRIER,
    }
)

MAX_MEDIA_BYTES = 5 * 1024 * 1024

PermanentReason = Literal[
    "opted_out", "invalid_number", "unreachable", "filtered", "too_long", "sender", "rejected"
]

_REASONS: dict[int, PermanentReason] = {
    OPTED_OUT: "opted_out",
    INVALID_TO: "invalid_number",
    NOT_A_MOBILE_NUMBER: "invalid_number",
    NOT_REACHABLE_BY_SMS: "unreachable",
    UNKNOWN_HANDSET: "invalid_number",
    LANDLINE_OR_UNREACHABLE_CARRIER: "unreachable",
    UNREACHABLE_HANDSET: "unreachable",
    REGION_NOT_ENABLED: "unreachable",
    CARRIER_VIOLATION: "filtered",
    MESSAGE_BLOCKED: "filtered",
    BODY_TOO_LONG: "too_long",
    INVALID_FROM: "sender",
    MESSAGING_SERVICE_NO_SENDERS: "sender",
    ACCOUNT_SUSPENDED: "sender",
}


def permanent_reason(code: int | None) -> PermanentReason:
    """Why a provider error code means "never": "opted_out" (21610), "invalid_number"
    (21211, 21614, 30005), "unreachable" (21612, 21408, 30003, 30006), "filtered"
    (30004, 30007), "too_long" (21617), "sender" (the sender is misconfigured: 21212,
    21703, 30002), else "rejected"."""
    return _REASONS.get(code, "rejected") if code is not None else "rejected"


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
    """This message will never be accepted as it is; `code` says why (e.g. OPTED_OUT)."""

    @property
    def opted_out(self) -> bool:
        """The resident texted STOP to this sender (21610): nothing goes until START."""
        return self.code == OPTED_OUT

    @property
    def invalid_number(self) -> bool:
        """The number cannot receive texts at all (21211, 21614, 30005)."""
        return self.reason == "invalid_number"

    @property
    def reason(self) -> PermanentReason:
        return permanent_reason(self.code)


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
