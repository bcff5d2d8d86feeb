"""The SMS provider interface and its errors.

A provider is synchronous (the twilio client is): the asyncio worker calls it through
`asyncio.to_thread`. Errors say whether trying again may help:

- `SmsTemporaryError`: network trouble, 429/20429, 5xx, bad credentials (the operator
  must fix them; the message itself is fine). `maybe_sent` is True when the request may
  have reached the provider (a read timeout, a 5xx): resending could text twice.
- `SmsPermanentError`: this message to this number will never go (opted out, invalid
  number, …); `code` is the provider's error code (Twilio codes below).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

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
        return self.code == OPTED_OUT


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

    def fetch_media(self, url: str) -> tuple[str, bytes]:
        """Download a received media: (content type, data). Raises MediaError."""
        ...
