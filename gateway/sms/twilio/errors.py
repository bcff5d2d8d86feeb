"""Twilio's error codes (https://www.twilio.com/docs/api/errors) and what each one means
to the gateway: try again later, or never (`permanent_reason`).

The neutral interface (`gateway.sms.base`) knows reasons ("opted_out", "invalid_number",
…), never codes: this module is where Twilio's numbers become those reasons.
"""

from __future__ import annotations

from gateway.sms.base import PermanentReason

AUTHENTICATION_FAILED = 20003
NOT_FOUND = 20404
TOO_MANY_REQUESTS = 20429
HTTP_TOO_MANY_REQUESTS = 429
INVALID_FROM = 21212
INVALID_TO = 21211
NOT_A_MOBILE_NUMBER = 21614  # "To" is not a valid mobile number
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
    """Why a Twilio error code means "never": "opted_out" (21610), "invalid_number"
    (21211, 21614, 30005), "unreachable" (21612, 21408, 30003, 30006), "filtered"
    (30004, 30007), "too_long" (21617), "sender" (the sender is misconfigured: 21212,
    21703, 30002), else "rejected"."""
    return _REASONS.get(code, "rejected") if code is not None else "rejected"
