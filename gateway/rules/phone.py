"""Residents' phone numbers: anything a provider or an operator writes, to E.164 (no I/O)."""

from __future__ import annotations

import functools

import phonenumbers


class NotAPhoneNumber(ValueError):
    """The text is not a possible phone number (the message says why)."""


@functools.lru_cache(maxsize=4096)
def normalise_number(raw: str, region: str) -> str:
    """E.164 for a resident's number written as `raw` ("613-555-0123", "+1 613…"), read
    in `region` (ISO country code, e.g. "CA"); NotAPhoneNumber when it is not a possible
    number.

    Cached: the same residents text again and again (a failure is not cached)."""
    try:
        number = phonenumbers.parse(raw, region)
    except phonenumbers.NumberParseException as exc:
        raise NotAPhoneNumber(f"From is not a phone number ({exc.error_type})") from exc
    if not phonenumbers.is_possible_number(number):
        raise NotAPhoneNumber("From is not a possible phone number")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
