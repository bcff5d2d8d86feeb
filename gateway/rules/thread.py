"""Thread identity (no I/O): what makes the emails of one conversation one thread.

One conversation is one email thread:

- the subject is the same for every email of the conversation (`thread_subject`; a notice
  answers it with `reply_subject`);
- every email has its own `Message-ID` (`new_message_id`), and `In-Reply-To` /
  `References` chain it to the earlier ones (`next_thread_headers`);
- `Reply-To` carries the conversation's unguessable token (`new_token`, `is_token`,
  `reply_address`);
- the resident's number is shown in national format (`format_national`), the municipality
  in the resident's language (`local_name`).

What a resident email (gateway.rules.resident_email) and an agent notice
(gateway.rules.agent_notice) share is here too: the envelope and threading fields of their
outbox payloads (`Threaded`, `thread_fields_to_dict`, `thread_fields_from_dict`) and the
headers that put them in the thread (`set_thread_headers`).

Header injection is impossible: every value that goes into a header is reduced to one
line (`one_line`: CR, LF and other control characters become spaces) before it is set.
"""

from __future__ import annotations

import base64
import re
import secrets
import unicodedata
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, tzinfo
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Any, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers

CONVERSATION_HEADER = "X-SMS311-Conversation"
REFERENCES_KEEP_LAST = 20  # References = the first id + the last 20 (RFC 5322 allows trimming)
TOKEN_BYTES = 20  # 160 bits: exactly 32 base32 characters, no padding

_TOKEN_RE = re.compile(r"[a-z2-7]{26,}")
_RE_PREFIX = re.compile(r"^\s*re\s*:", re.IGNORECASE)

_SUBJECTS = {
    "en": "311 text from {number} — {place}",
    "fr": "Texto 311 de {number} — {place}",
}


# -- one-line header values -----------------------------------------------------------


_PRINTABLE_LINE = re.compile(r"[\x21-\x7e]+(?: [\x21-\x7e]+)*")  # ASCII, single spaces


def one_line(value: str) -> str:
    """`value` as a safe single header line: control characters and line/paragraph
    separators become spaces, runs of whitespace collapse, ends are trimmed."""
    if _PRINTABLE_LINE.fullmatch(value):  # the usual case (ids the gateway made): as is
        return value
    chars = [
        " " if unicodedata.category(c) in ("Cc", "Zl", "Zp") or c.isspace() else c for c in value
    ]
    return " ".join("".join(chars).split())


def bare(value: str) -> str:
    """A header token without any whitespace at all (Message-IDs, tokens)."""
    return "".join(one_line(value).split())


# -- tokens, addresses, Message-IDs ------------------------------------------------


def new_token() -> str:
    """A fresh conversation token: 160 random bits as 32 lower-case base32 characters
    (`a`–`z`, `2`–`7`), safe in an email local part and in a URL."""
    return base64.b32encode(secrets.token_bytes(TOKEN_BYTES)).decode("ascii").lower().rstrip("=")


def is_token(value: str) -> bool:
    """True if `value` looks like a token made by `new_token` (>= 128 bits of base32)."""
    return _TOKEN_RE.fullmatch(value) is not None


def reply_address(template: str, token: str) -> str:
    """The conversation's Reply-To address: `template` with "{token}" replaced.

    `reply_address("reply+{token}@gw.example", t)` -> "reply+<t>@gw.example".
    Raises ValueError if the template has no "{token}" or the token is not base32.
    """
    if "{token}" not in template:
        raise ValueError(f"reply address template has no {{token}}: {template!r}")
    if not is_token(token):
        raise ValueError("not a conversation token")
    return one_line(template.replace("{token}", token))


def new_message_id(domain: str) -> str:
    """A new, unique RFC 5322 Message-ID "<random@domain>" (128 random bits)."""
    domain = bare(domain).strip("<>@.").lower()
    if not domain or any(c in domain for c in '<>@()[]\\,;:"'):
        raise ValueError(f"not a domain for a Message-ID: {domain!r}")
    left = base64.b32encode(secrets.token_bytes(16)).decode("ascii").lower().rstrip("=")
    return f"<sms311.{left}@{domain}>"


def next_thread_headers(thread_message_ids: Sequence[str]) -> tuple[str | None, tuple[str, ...]]:
    """In-Reply-To and References for the next email of a thread whose earlier emails
    had `thread_message_ids` (oldest first).

    In-Reply-To is the last id (None for the first email); References are all of them,
    trimmed to the first one + the last 20 so the header stays bounded.
    """
    ids = [i for i in (bare(x) for x in thread_message_ids) if i]
    if not ids:
        return None, ()
    if len(ids) > REFERENCES_KEEP_LAST + 1:
        ids = ids[:1] + ids[-REFERENCES_KEEP_LAST:]
    return ids[-1], tuple(ids)


# -- phone numbers and subjects ------------------------------------------------------


def format_national(e164: str, region: str = "CA") -> str:
    """The number as people write it: "+16135550123" -> "(613) 555-0123".

    Numbers of `region`'s country (all of NANP for CA/US) use the national format;
    others the international format ("+33 1 23 45 67 89"). Anything that is not a
    phone number (a short code, garbage) comes back unchanged, on one line.
    """
    try:
        number = phonenumbers.parse(e164, region)
    except phonenumbers.NumberParseException:
        return one_line(e164)
    if not phonenumbers.is_possible_number(number):
        return one_line(e164)
    if number.country_code == phonenumbers.country_code_for_region(region):
        return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.NATIONAL)
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.INTERNATIONAL)


def local_name(name: str, name_fr: str | None, language: str) -> str:
    """The municipality's name in the resident's language: its French name (`name_fr`,
    "Montréal") in French when it has one, else `name` ("Montreal")."""
    return name_fr if language == "fr" and name_fr else name


def thread_subject(
    municipality_name: str,
    resident_national: str,
    language: str,
    reference: str | int | None = None,
    *,
    name_fr: str | None = None,
) -> str:
    """The subject of every email of one conversation (so mail clients thread them).

    "311 text from (613) 555-0123 — Ottawa" (en) or
    "Texto 311 de (514) 555-0123 — Montréal" (fr); the place is `local_name` (the
    French name `name_fr`, accents intact, in French); with `reference` (e.g. the
    conversation id) a short " [#42]" is appended. Always one line; `compose` encodes
    what is not ASCII as RFC 2047 encoded-words, which mail clients decode back.
    """
    place = local_name(municipality_name, name_fr, language)
    subject = _SUBJECTS.get(language, _SUBJECTS["en"]).format(
        number=one_line(resident_national), place=one_line(place)
    )
    if reference is not None and one_line(str(reference)):
        subject += f" [#{bare(str(reference))}]"
    return one_line(subject)


def reply_subject(subject: str) -> str:
    """ "Re: " + `subject`, on one line, unless it already starts with "Re:"."""
    subject = one_line(subject)
    return subject if _RE_PREFIX.match(subject) else f"Re: {subject}"


# -- what a resident email and an agent notice share -----------------------------------


class Threaded(Protocol):
    """What a resident email and an agent notice share: the envelope and the threading."""

    @property
    def conversation_id(self) -> int | None: ...
    @property
    def from_address(self) -> str: ...
    @property
    def to(self) -> tuple[str, ...]: ...
    @property
    def cc(self) -> tuple[str, ...]: ...
    @property
    def reply_to(self) -> str: ...
    @property
    def subject(self) -> str: ...
    @property
    def message_id(self) -> str: ...
    @property
    def in_reply_to(self) -> str | None: ...
    @property
    def references(self) -> tuple[str, ...]: ...


def thread_fields_to_dict(email: Threaded) -> dict[str, Any]:
    """The envelope and threading fields of an outbox payload."""
    return {
        "conversation_id": email.conversation_id,
        "from_address": email.from_address,
        "to": list(email.to),
        "cc": list(email.cc),
        "reply_to": email.reply_to,
        "subject": email.subject,
        "message_id": email.message_id,
        "in_reply_to": email.in_reply_to,
        "references": list(email.references),
    }


def thread_fields_from_dict(data: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse of `thread_fields_to_dict`, as constructor keywords."""
    in_reply_to = data.get("in_reply_to")
    conversation_id = data["conversation_id"]
    return {
        "conversation_id": int(conversation_id) if conversation_id is not None else None,
        "from_address": str(data["from_address"]),
        "to": tuple(str(a) for a in data["to"]),
        "cc": tuple(str(a) for a in data.get("cc", ())),
        "reply_to": str(data["reply_to"]),
        "subject": str(data["subject"]),
        "message_id": str(data["message_id"]),
        "in_reply_to": str(in_reply_to) if in_reply_to is not None else None,
        "references": tuple(str(r) for r in data.get("references", ())),
    }


def local_zone(name: str) -> tzinfo:
    """The IANA time zone `name` ("America/Toronto"), or UTC when there is no such zone."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return UTC


def aware(moment: datetime) -> datetime:
    """`moment`, a naive datetime taken as UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def header_addresses(values: Sequence[str]) -> str:
    """A To or Cc header value: the addresses on one line each, joined by ", "."""
    return ", ".join(a for a in (one_line(v) for v in values) if a)


def set_thread_headers(
    message: EmailMessage, email: Threaded, *, subject: str, date: datetime, timezone: str
) -> None:
    """Set the envelope and threading headers of `email` on `message`, in this order: From,
    To, Cc (when any), Reply-To, `subject` (set as given), Date (`date` shown in the IANA
    zone `timezone`; a naive `date` is UTC), Message-ID, In-Reply-To and References (when
    present) — each value forced onto one line."""
    message["From"] = one_line(email.from_address)
    message["To"] = header_addresses(email.to)
    if email.cc:
        message["Cc"] = header_addresses(email.cc)
    message["Reply-To"] = one_line(email.reply_to)
    message["Subject"] = subject
    message["Date"] = format_datetime(aware(date).astimezone(local_zone(timezone)))
    message["Message-ID"] = bare(email.message_id)
    if email.in_reply_to:
        message["In-Reply-To"] = bare(email.in_reply_to)
    references = [r for r in (bare(x) for x in email.references) if r]
    if references:
        message["References"] = " ".join(references)
