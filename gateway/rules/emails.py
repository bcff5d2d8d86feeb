"""Compose the threaded email for a resident's texts (no I/O).

One conversation is one email thread:

- the subject is the same for every email of the conversation (`thread_subject`);
- every email has its own `Message-ID` (`new_message_id`), and `In-Reply-To` /
  `References` chain it to the earlier ones (`next_thread_headers`);
- `Reply-To` carries the conversation's unguessable token (`new_token`, `reply_address`);
- the resident's number is shown in national format (`format_national`).

`ResidentEmail` is what the outbox stores (`to_dict` / `from_dict`, JSON-safe);
`compose` turns it into an `email.message.EmailMessage` ready for SMTP.

`AgentNotice` / `compose_notice`: a short automatic email, in the conversation's
thread, telling the agent what became of a reply (shortened, not sent because the
resident opted out, not delivered, not sent), or — kind "console_reply" — a copy of a
reply written in the web console, so that the mailbox shows the whole conversation.
Outbox payloads say which is which in `payload["type"]`: "resident" or "notice"
(`from_payload`).

Header injection is impossible: every value that goes into a header is reduced to one
line (CR, LF and other control characters become spaces) before it is set.
"""

from __future__ import annotations

import base64
import re
import secrets
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime
from typing import Any, Literal, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers

DEFAULT_TIMEZONE = "America/Toronto"
CONVERSATION_HEADER = "X-SMS311-Conversation"
NOTICE_HEADER = "X-SMS311-Notice"
REFERENCES_KEEP_LAST = 20  # References = the first id + the last 20 (RFC 5322 allows trimming)
TOKEN_BYTES = 20  # 160 bits: exactly 32 base32 characters, no padding

_TOKEN_RE = re.compile(r"[a-z2-7]{26,}")
_CONTENT_TYPE_RE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,126}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}")
_FILENAME_UNSAFE_RE = re.compile(r"[^A-Za-z0-9._-]+")

_EXTENSIONS = {
    "image/jpeg": "jpg",
    "image/jpg": "jpg",
    "image/pjpeg": "jpg",
    "image/png": "png",
    "image/gif": "gif",
    "image/bmp": "bmp",
    "image/webp": "webp",
    "image/heic": "heic",
    "image/heif": "heif",
    "image/tiff": "tiff",
    "video/mp4": "mp4",
    "video/mpeg": "mpeg",
    "video/quicktime": "mov",
    "video/3gpp": "3gp",
    "video/3gpp2": "3g2",
    "video/webm": "webm",
    "audio/mpeg": "mp3",
    "audio/mp4": "m4a",
    "audio/aac": "aac",
    "audio/amr": "amr",
    "audio/ogg": "ogg",
    "audio/wav": "wav",
    "audio/3gpp": "3gp",
    "text/vcard": "vcf",
    "text/x-vcard": "vcf",
    "text/calendar": "ics",
    "text/plain": "txt",
    "application/pdf": "pdf",
}

# Canadian time-zone abbreviations in French (zoneinfo only knows the English ones).
_TZ_ABBR_FR = {
    "NST": "HNT",
    "NDT": "HAT",
    "AST": "HNA",
    "ADT": "HAA",
    "EST": "HNE",
    "EDT": "HAE",
    "CST": "HNC",
    "CDT": "HAC",
    "MST": "HNR",
    "MDT": "HAR",
    "PST": "HNP",
    "PDT": "HAP",
}

_WORDS = {
    "en": {
        "subject": "311 text from {number} — {place}",
        "from": "From: {number} ({place})",
        "received_one": "received {when}",
        "received_many": "{count} texts received {first} to {last}",
        "answer": "reply to this email to answer by text message",
        "no_text": "(no text)",
        "media_failed": "[Attachment {n} ({type}) could not be downloaded: {url}]",
        "media_attached": "[Attached: {names}]",
    },
    "fr": {
        "subject": "Texto 311 de {number} — {place}",
        "from": "De : {number} ({place})",
        "received_one": "reçu le {when}",
        "received_many": "{count} textos reçus du {first} au {last}",
        "answer": "répondez à ce courriel pour répondre par texto",
        "no_text": "(aucun texte)",
        "media_failed": "[Pièce jointe {n} ({type}) impossible à télécharger : {url}]",
        "media_attached": "[Pièces jointes : {names}]",
    },
}


def _words(language: str) -> Mapping[str, str]:
    return _WORDS.get(language, _WORDS["en"])


# -- one-line header values -----------------------------------------------------------


def one_line(value: str) -> str:
    """`value` as a safe single header line: control characters and line/paragraph
    separators become spaces, runs of whitespace collapse, ends are trimmed."""
    chars = [
        " " if unicodedata.category(c) in ("Cc", "Zl", "Zp") or c.isspace() else c for c in value
    ]
    return " ".join("".join(chars).split())


def _bare(value: str) -> str:
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
    domain = _bare(domain).strip("<>@.").lower()
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
    ids = [i for i in (_bare(x) for x in thread_message_ids) if i]
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
    subject = _words(language)["subject"].format(
        number=one_line(resident_national), place=one_line(place)
    )
    if reference is not None and one_line(str(reference)):
        subject += f" [#{_bare(str(reference))}]"
    return one_line(subject)


# -- the email ---------------------------------------------------------------------


@dataclass(frozen=True)
class MediaRef:
    """A picture or other media sent with a text (Twilio MediaUrlN / MediaContentTypeN)."""

    url: str
    content_type: str

    def to_dict(self) -> dict[str, str]:
        return {"url": self.url, "content_type": self.content_type}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MediaRef:
        return cls(url=str(data["url"]), content_type=str(data["content_type"]))


@dataclass(frozen=True)
class ResidentText:
    """One text from the resident. `received_at` should be timezone-aware (UTC);
    a naive datetime is taken as UTC."""

    received_at: datetime
    body: str
    media: tuple[MediaRef, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "received_at": self.received_at.isoformat(),
            "body": self.body,
            "media": [m.to_dict() for m in self.media],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ResidentText:
        return cls(
            received_at=datetime.fromisoformat(str(data["received_at"])),
            body=str(data["body"]),
            media=tuple(MediaRef.from_dict(m) for m in data.get("media", ())),
        )


class _Threaded(Protocol):
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


def _thread_fields_to_dict(email: _Threaded) -> dict[str, Any]:
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


def _thread_fields_from_dict(data: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse of `_thread_fields_to_dict`, as constructor keywords."""
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


@dataclass(frozen=True, kw_only=True)
class ResidentEmail:
    """Everything needed to compose one email of a conversation (the outbox payload).

    `date` is the Date header; by default the time of the last text, so that a
    retried email is byte-for-byte the same. `timezone` (an IANA name) is used to
    show times to the city's agents.
    """

    conversation_id: int
    from_address: str
    to: tuple[str, ...]
    reply_to: str
    subject: str
    message_id: str
    resident_e164: str
    resident_national: str
    municipality_name: str
    language: str
    texts: tuple[ResidentText, ...]
    cc: tuple[str, ...] = ()
    in_reply_to: str | None = None
    references: tuple[str, ...] = ()
    note: str | None = None
    timezone: str = DEFAULT_TIMEZONE
    date: datetime | None = None

    @property
    def media(self) -> tuple[MediaRef, ...]:
        """All media of all texts, in order."""
        return tuple(m for t in self.texts for m in t.media)

    @property
    def recipients(self) -> tuple[str, ...]:
        """To + Cc."""
        return self.to + self.cc

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (lists, strings, ints, None; datetimes as ISO 8601), with
        "type": "resident" (the outbox tells resident emails from notices by it)."""
        return {
            "type": "resident",
            **_thread_fields_to_dict(self),
            "resident_e164": self.resident_e164,
            "resident_national": self.resident_national,
            "municipality_name": self.municipality_name,
            "language": self.language,
            "texts": [t.to_dict() for t in self.texts],
            "note": self.note,
            "timezone": self.timezone,
            "date": self.date.isoformat() if self.date is not None else None,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ResidentEmail:
        """The inverse of `to_dict` ("type" and unknown keys are ignored).
        Raises KeyError/ValueError on a malformed payload."""
        date = data.get("date")
        note = data.get("note")
        return cls(
            **_thread_fields_from_dict(data),
            resident_e164=str(data["resident_e164"]),
            resident_national=str(data["resident_national"]),
            municipality_name=str(data["municipality_name"]),
            language=str(data["language"]),
            texts=tuple(ResidentText.from_dict(t) for t in data["texts"]),
            note=str(note) if note is not None else None,
            timezone=str(data.get("timezone") or DEFAULT_TIMEZONE),
            date=datetime.fromisoformat(str(date)) if date is not None else None,
        )


@dataclass(frozen=True)
class Attachment:
    """A file attached to the email (a fetched MMS media)."""

    filename: str
    content_type: str
    data: bytes = field(repr=False)


def safe_content_type(content_type: str) -> str:
    """`content_type` without parameters, lower case, if it is a valid "type/subtype";
    else "application/octet-stream"."""
    value = one_line(content_type).split(";", 1)[0].strip().lower()
    return value if _CONTENT_TYPE_RE.fullmatch(value) else "application/octet-stream"


def media_filename(index: int | str, content_type: str) -> str:
    """A sensible attachment name from the content type's extension: the `index`-th
    (1-based) media is "media-1.jpg"; a string is used as the stem ("media-1-2.png")."""
    extension = _EXTENSIONS.get(safe_content_type(content_type), "bin")
    stem = f"media-{index}" if isinstance(index, int) else _safe_filename(index, "media")
    return f"{stem}.{extension}"


def _safe_filename(filename: str, fallback: str) -> str:
    name = _FILENAME_UNSAFE_RE.sub("_", one_line(filename).rsplit("/", 1)[-1]).strip("._")
    return name[:100] or fallback


def _zone(name: str) -> tzinfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return UTC


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _local(moment: datetime, zone: tzinfo, language: str) -> tuple[str, str, str]:
    """(date, time, zone abbreviation) of `moment` in `zone`."""
    local = _aware(moment).astimezone(zone)
    abbr = local.tzname() or ""
    if language == "fr":
        abbr = _TZ_ABBR_FR.get(abbr, abbr)
    return local.strftime("%Y-%m-%d"), local.strftime("%H:%M"), abbr


def _received(texts: Sequence[ResidentText], zone: tzinfo, language: str) -> str:
    words = _words(language)
    if not texts:
        return ""
    first = _local(min(t.received_at for t in texts), zone, language)
    if len(texts) == 1:
        return words["received_one"].format(when=f"{first[0]} {first[1]} {first[2]}")
    last = _local(max(t.received_at for t in texts), zone, language)
    last_text = f"{last[1]} {last[2]}" if last[0] == first[0] else f"{last[0]} {last[1]} {last[2]}"
    first_text = f"{first[0]} {first[1]}" if first[2] == last[2] else " ".join(first)
    return words["received_many"].format(count=len(texts), first=first_text, last=last_text)


def _body(
    email: ResidentEmail, attachments: Sequence[Attachment], failed: Sequence[MediaRef]
) -> str:
    words = _words(email.language)
    zone = _zone(email.timezone)
    failed_urls = {m.url for m in failed}
    parts: list[str] = []
    if email.note:
        parts.append(f"[{email.note.strip()}]")
    media_index = 0
    for text in email.texts:
        lines = [text.body.strip() or words["no_text"]]
        for media in text.media:
            media_index += 1
            if media.url in failed_urls:
                lines.append(
                    words["media_failed"].format(
                        n=media_index, type=safe_content_type(media.content_type), url=media.url
                    )
                )
        parts.append("\n".join(lines))
    if attachments:
        names = ", ".join(_attachment_names(attachments))
        parts.append(words["media_attached"].format(names=names))
    footer = " — ".join(
        p
        for p in (
            words["from"].format(
                number=one_line(email.resident_national), place=one_line(email.municipality_name)
            ),
            _received(email.texts, zone, email.language),
            words["answer"],
        )
        if p
    )
    return "\n\n".join(parts) + "\n\n-- \n" + footer + "\n"


def _attachment_names(attachments: Sequence[Attachment]) -> list[str]:
    return [
        _safe_filename(a.filename, media_filename(i, a.content_type))
        for i, a in enumerate(attachments, start=1)
    ]


def _addresses(values: Sequence[str]) -> str:
    return ", ".join(a for a in (one_line(v) for v in values) if a)


def compose(
    email: ResidentEmail,
    attachments: Sequence[Attachment] = (),
    failed_media: Sequence[MediaRef] = (),
) -> EmailMessage:
    """The email for `email`, ready to hand to SMTP (policy `email.policy.SMTP`).

    The body is text/plain UTF-8: the optional note, then the resident's texts first
    and clearly (one paragraph each), then a signature separator and a one-line
    footer (number, municipality, when, how to answer) in the resident's language,
    with times in `email.timezone`. `attachments` are attached after the body; each
    media listed in `failed_media` (matched by URL) is named in the body with its URL
    instead. Headers: From, To, Cc, Reply-To, Subject, Date, Message-ID, In-Reply-To
    and References when present, X-SMS311-Conversation — each forced onto one line.
    """
    message = EmailMessage(policy=SMTP)
    message["From"] = one_line(email.from_address)
    message["To"] = _addresses(email.to)
    if email.cc:
        message["Cc"] = _addresses(email.cc)
    message["Reply-To"] = one_line(email.reply_to)
    message["Subject"] = one_line(email.subject)
    zone = _zone(email.timezone)
    when = email.date or max(
        (t.received_at for t in email.texts), default=datetime(1970, 1, 1, tzinfo=UTC)
    )
    message["Date"] = format_datetime(_aware(when).astimezone(zone))
    message["Message-ID"] = _bare(email.message_id)
    if email.in_reply_to:
        message["In-Reply-To"] = _bare(email.in_reply_to)
    references = [r for r in (_bare(x) for x in email.references) if r]
    if references:
        message["References"] = " ".join(references)
    message[CONVERSATION_HEADER] = _bare(str(email.conversation_id))
    message.set_content(_body(email, attachments, failed_media), cte="quoted-printable")
    for attachment, filename in zip(attachments, _attachment_names(attachments), strict=True):
        maintype, subtype = safe_content_type(attachment.content_type).split("/", 1)
        message.add_attachment(
            attachment.data, maintype=maintype, subtype=subtype, filename=filename
        )
    return message


# -- notices to the agent ------------------------------------------------------------------

NoticeKind = Literal[
    "shortened", "opted_out", "delivery_failed", "not_sent", "console_reply", "not_texted"
]
NOTICE_KINDS: tuple[NoticeKind, ...] = (
    "shortened", "opted_out", "delivery_failed", "not_sent", "console_reply", "not_texted",
)  # fmt: skip
# Why an agent's reply email was not texted at all ("not_texted" notices).
NotTextedWhy = Literal["below_signature", "empty", "not_agent", "unroutable", "unreadable"]
NOT_TEXTED_WHY: tuple[NotTextedWhy, ...] = (
    "below_signature", "empty", "not_agent", "unroutable", "unreadable",
)  # fmt: skip
ConsoleOutcome = Literal["texted", "opted_out"]
CONSOLE_OUTCOMES: tuple[ConsoleOutcome, ...] = ("texted", "opted_out")
NOTICE_EXCERPT_CHARS = 200

_RE_PREFIX = re.compile(r"^\s*re\s*:", re.IGNORECASE)

# Provider error codes (Twilio) as the agent should read them: (English, French).
ERROR_TEXTS: Mapping[int, tuple[str, str]] = {
    21211: ("not a valid phone number", "numéro de téléphone invalide"),
    21408: ("texting to this region is not enabled", "l'envoi vers cette région n'est pas activé"),
    21610: (
        "the resident has opted out (texted STOP)",
        "la personne s'est désabonnée (elle a texté ARRET ou STOP)",
    ),
    21612: ("this number cannot get our texts", "ce numéro ne peut pas recevoir nos textos"),
    21614: ("not a mobile number", "pas un numéro de cellulaire"),
    21617: ("the text is too long", "le texte est trop long"),
    30001: ("too many texts queued at once", "trop de textos en attente à la fois"),
    30002: ("the texting account is suspended", "le compte d'envoi de textos est suspendu"),
    30003: ("the phone is unreachable (off or out of coverage)",
            "le téléphone est injoignable (éteint ou hors de portée)"),
    30004: ("the number blocks our texts", "le numéro bloque nos textos"),
    30005: ("unknown number (it does not exist or is out of service)",
            "numéro inconnu (il n'existe pas ou n'est plus en service)"),
    30006: ("a landline, or a carrier that cannot receive texts",
            "ligne fixe, ou opérateur qui ne peut pas recevoir de textos"),
    30007: ("filtered by the carrier as spam", "filtré par l'opérateur comme pourriel"),
    30008: ("unknown error at the carrier", "erreur inconnue chez l'opérateur"),
}  # fmt: skip

_STATUS_FR = {"undelivered": "non livré", "failed": "échec", "not_sent": "non envoyé"}


def error_text(code: int | None, language: str = "en") -> str | None:
    """What a provider error code means, in "en" or "fr"; None for an unknown code."""
    texts = ERROR_TEXTS.get(code) if code is not None else None
    if texts is None:
        return None
    return texts[1] if language == "fr" else texts[0]


def _utcnow() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


@dataclass(frozen=True, kw_only=True)
class AgentNotice:
    """A notice to the agent about one of their replies (an outbox payload).

    `subject` is the conversation's thread subject ("Re: " is added when composing,
    never twice). `details` is JSON-safe and depends on `kind`:

    - "shortened": sent_chars, original_chars — the reply was too long and cut;
    - "opted_out": — the resident texted STOP, the reply was not sent;
    - "delivery_failed": status ("undelivered" | "failed"), error_code (int | None),
      optionally error_message (the provider's text);
    - "not_sent": reason (English text), optionally error_code;

    and for each of these reply_excerpt: the start of the reply concerned (quoted, at
    most `NOTICE_EXCERPT_CHARS` characters).

    - "console_reply": a copy, for the municipality's mailbox (and the sticky agent), of
      a reply an agent wrote in the web console: agent_name (str | None), agent_email,
      text (the WHOLE reply as it was texted, quoted in full), outcome ("texted" |
      "opted_out": not texted, the resident texted STOP), parts (SMS queued, 0 when
      opted out), optionally shortened (bool: the reply had to be cut to fit).

    - "not_texted": an agent's reply EMAIL that was not texted at all: why (one of
      `NOT_TEXTED_WHY`: "below_signature" — the answer was below the signature line;
      "empty" — nothing left once quotes and signature were cut; "not_agent" — the
      sender may not answer this municipality's residents; "unroutable" — not an
      answer to any conversation; "unreadable" — binary data or the wrong charset),
      optionally sender and municipality (names shown for "not_agent"), and
      reply_excerpt. `conversation_id` is None for "unroutable" (the notice then
      answers the agent's own email: its In-Reply-To/References and subject).

    `date` (the Date header) is fixed when the notice is made, so a retried notice is
    the same email.
    """

    conversation_id: int | None
    from_address: str
    to: tuple[str, ...]
    reply_to: str
    subject: str
    message_id: str
    kind: str
    cc: tuple[str, ...] = ()
    in_reply_to: str | None = None
    references: tuple[str, ...] = ()
    language: str = "en"
    details: dict[str, Any] = field(default_factory=dict)
    date: datetime = field(default_factory=_utcnow)
    timezone: str = DEFAULT_TIMEZONE

    def __post_init__(self) -> None:
        if self.kind not in NOTICE_KINDS:
            raise ValueError(
                f"unknown notice kind {self.kind!r} (one of {', '.join(NOTICE_KINDS)})"
            )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict with "type": "notice"."""
        return {
            "type": "notice",
            **_thread_fields_to_dict(self),
            "language": self.language,
            "kind": self.kind,
            "details": dict(self.details),
            "date": self.date.isoformat(),
            "timezone": self.timezone,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AgentNotice:
        """The inverse of `to_dict`. Raises KeyError/ValueError on a malformed payload."""
        date = data.get("date")
        return cls(
            **_thread_fields_from_dict(data),
            language=str(data.get("language") or "en"),
            kind=str(data["kind"]),
            details=dict(data.get("details") or {}),
            date=datetime.fromisoformat(str(date)) if date is not None else _utcnow(),
            timezone=str(data.get("timezone") or DEFAULT_TIMEZONE),
        )


def from_payload(data: Mapping[str, Any]) -> ResidentEmail | AgentNotice:
    """The email an "email" outbox payload describes: an `AgentNotice` when
    data["type"] is "notice", else a `ResidentEmail` (payloads from before the
    "type" key are resident emails)."""
    if data.get("type") == "notice":
        return AgentNotice.from_dict(data)
    return ResidentEmail.from_dict(data)


def reply_subject(subject: str) -> str:
    """ "Re: " + `subject`, on one line, unless it already starts with "Re:"."""
    subject = one_line(subject)
    return subject if _RE_PREFIX.match(subject) else f"Re: {subject}"


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _error_part(code: int | None, language: str, fallback: str) -> str:
    """ "error 30003: unreachable …" (or only what is known)."""
    described = error_text(code, language) or one_line(fallback)
    word = "erreur" if language == "fr" else "error"
    colon = " :" if language == "fr" else ":"
    if code is not None and described:
        return f"{word} {code}{colon} {described}"
    if code is not None:
        return f"{word} {code}"
    return described


def _notice_lines(notice: AgentNotice, language: str) -> str:
    """The one-paragraph explanation in `language` ("en" or "fr")."""
    details = notice.details
    fr = language == "fr"
    if notice.kind == "shortened":
        sent = _int(details.get("sent_chars"))
        original = _int(details.get("original_chars"))
        counts = ""
        if sent is not None and original is not None:
            counts = (
                f" : la personne en a reçu les {sent} premiers caractères sur {original}"
                if fr
                else f": the resident received the first {sent} of its {original} characters"
            )
        if fr:
            return (
                f"Votre réponse était trop longue pour des textos{counts}. "
                "Pour envoyer la suite, répondez à ce courriel avec le reste."
            )
        return (
            f"Your reply was too long for text messages{counts}. "
            "To send the rest, reply to this email with it."
        )
    if notice.kind == "opted_out":
        if fr:
            return (
                "Votre réponse n'a PAS été envoyée par texto : la personne s'est désabonnée "
                "(elle a texté ARRET ou STOP). Rien ne peut lui être envoyé avant qu'elle "
                "texte START."
            )
        return (
            "Your reply was NOT texted: the resident has opted out of text messages "
            "(they texted STOP). Nothing can be sent to them until they text START."
        )
    if notice.kind == "delivery_failed":
        code = _int(details.get("error_code"))
        status = one_line(str(details.get("status") or ""))
        error = _error_part(code, language, str(details.get("error_message") or ""))
        shown_status = _STATUS_FR.get(status, status) if fr else status
        inside = ", ".join(p for p in (shown_status, error) if p)
        why = f" ({inside})" if inside else ""
        if fr:
            return (
                f"Votre réponse n'a pas pu être livrée au téléphone de la personne{why}. "
                "Joignez-la autrement au besoin."
            )
        return (
            f"Your reply could not be delivered to the resident's phone{why}. "
            "You may need to reach them another way."
        )
    if notice.kind == "console_reply":
        return _console_reply_lines(details, fr)
    if notice.kind == "not_texted":
        return _not_texted_lines(details, fr)
    # not_sent
    code = _int(details.get("error_code"))
    reason = str(details.get("reason") or "")
    if fr:
        reason = str(details.get("reason_fr") or "") or error_text(code, "fr") or reason
        why = f" : {one_line(reason)}" if reason.strip() else ""
        return f"Votre réponse n'a pas été envoyée par texto{why}."
    reason = reason or error_text(code, "en") or ""
    why = f": {one_line(reason)}" if reason.strip() else ""
    return f"Your reply was not texted{why}."


def _not_texted_lines(details: Mapping[str, Any], fr: bool) -> str:
    """The "not_texted" explanation: why the agent's email was not texted, and what to do."""
    why = details.get("why")
    sender = one_line(str(details.get("sender") or ""))
    sender = sender or ("cette adresse" if fr else "this address")
    city = one_line(str(details.get("municipality") or ""))
    city = city or ("cette municipalité" if fr else "this municipality")
    if fr:
        said = "Votre réponse n'a PAS été envoyée par texto"
        if why == "below_signature":
            return (
                f"{said} : elle était sous la ligne de signature (« -- », « Envoyé de mon "
                "iPhone » ou un bloc nom/titre/téléphone), et tout ce qui suit une signature "
                "est retiré. Écrivez votre réponse au-dessus de votre signature et renvoyez-la."
            )
        if why == "not_agent":
            return (
                f"{said} : {sender} ne fait pas partie des agents qui peuvent répondre aux "
                f"résidents de {city}. Répondez depuis votre adresse d'agent de {city}, ou "
                "demandez à l'administrateur de la passerelle de vous ajouter."
            )
        if why == "unroutable":
            return (
                "Votre courriel n'a PAS été envoyé par texto : il ne répond à aucune "
                "conversation connue de la passerelle (l'adresse de réponse et les références "
                "du fil manquent ou sont inconnues). Pour écrire à une personne, répondez au "
                "courriel de sa conversation."
            )
        if why == "unreadable":
            return (
                f"{said} : son texte est illisible (données binaires ou mauvais jeu de "
                "caractères). Renvoyez-la en texte ordinaire."
            )
        return (
            f"{said} : il ne restait rien à envoyer une fois l'historique cité et la signature "
            "retirés. Écrivez votre réponse en haut du courriel, au-dessus du message cité, et "
            "renvoyez-la."
        )
    said = "Your reply was NOT texted"
    if why == "below_signature":
        return (
            f"{said}: it was below the signature line (\"-- \", \"Sent from my iPhone\" or a "
            "name/title/phone block), and everything below a signature is cut. Write your "
            "answer above your signature and send it again."
        )
    if why == "not_agent":
        return (
            f"{said}: {sender} is not one of the agents who may answer {city}'s residents. "
            f"Answer from your {city} agent address, or ask the gateway's operator to add you."
        )
    if why == "unroutable":
        return (
            "Your email was NOT texted: it does not answer any conversation the gateway knows "
            "(the reply address and the thread references are missing or unknown). To write "
            "to a resident, reply to the email of their conversation."
        )
    if why == "unreadable":
        return (
            f"{said}: its text cannot be read (binary data or the wrong character set). "
            "Send it again as plain text."
        )
    return (
        f"{said}: nothing was left to text once the quoted history and the signature were "
        "cut. Write your answer at the top of the email, above the quoted message, and send "
        "it again."
    )


def _console_reply_lines(details: Mapping[str, Any], fr: bool) -> str:
    """The "console_reply" explanation: who answered from the console, and whether the
    resident was texted (in how many messages, shortened?) or not (opted out)."""
    name = one_line(str(details.get("agent_name") or ""))
    address = one_line(str(details.get("agent_email") or ""))
    if name and address and name.casefold() != address.casefold():
        who = f"{name} ({address})"
    else:
        who = name or address or ("Un agent" if fr else "An agent")
    outcome = details.get("outcome")
    parts = _int(details.get("parts"))
    if fr:
        said = f"{who} a répondu depuis la console web 311."
        if outcome == "opted_out":
            return (
                f"{said} La réponse n'a PAS été envoyée par texto : la personne s'est "
                "désabonnée (elle a texté ARRET ou STOP). Rien ne peut lui être envoyé avant "
                "qu'elle texte START."
            )
        if outcome != "texted":
            return said
        count = f" en {parts} textos" if parts is not None and parts > 1 else ""
        cut = " (raccourcie : elle était trop longue)" if details.get("shortened") is True else ""
        return f"{said} La réponse a été envoyée par texto à la personne{count}{cut}."
    said = f"{who} answered from the 311 web console."
    if outcome == "opted_out":
        return (
            f"{said} The reply was NOT texted: the resident has opted out of text messages "
            "(they texted STOP). Nothing can be sent to them until they text START."
        )
    if outcome != "texted":
        return said
    count = f" in {parts} messages" if parts is not None and parts > 1 else ""
    cut = " (shortened: it was too long)" if details.get("shortened") is True else ""
    return f"{said} The reply was texted to the resident{count}{cut}."


def _quote(text: str) -> str:
    """`text` quoted with "> " on every line (blank lines as ">")."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").strip()
    lines = [line.rstrip() for line in text.split("\n")]
    return "\n".join(f"> {line}" if line else ">" for line in lines)


def _excerpt(text: str) -> str:
    """The start of the reply, quoted with "> " (at most NOTICE_EXCERPT_CHARS)."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").strip()
    if len(text) >= NOTICE_EXCERPT_CHARS:
        cut = text[:NOTICE_EXCERPT_CHARS]
        space = cut.rfind(" ")
        text = (cut[:space] if space > NOTICE_EXCERPT_CHARS // 2 else cut).rstrip() + "…"
    return _quote(text)


def _notice_body(notice: AgentNotice) -> str:
    first, second = ("fr", "en") if notice.language == "fr" else ("en", "fr")
    parts = [_notice_lines(notice, first) + "\n" + _notice_lines(notice, second)]
    if notice.kind == "console_reply":
        # The copy shows the whole reply, quoted like the other notices' excerpts.
        text = str(notice.details.get("text") or "")
        if text.strip():
            label = "Réponse / Reply:" if first == "fr" else "Reply / Réponse :"
            parts.append(label + "\n" + _quote(text))
        names = (
            "Copie automatique de la passerelle texto 311 — répondez à ce courriel pour "
            "répondre par texto",
            "Automatic copy from the 311 text gateway — reply to this email to answer by text "
            "message",
        )
        joiner = "\n"  # two long lines
    else:
        excerpt = str(notice.details.get("reply_excerpt") or "")
        if excerpt.strip():
            label = (
                "Votre réponse / Your reply:" if first == "fr" else "Your reply / Votre réponse :"
            )
            parts.append(label + "\n" + _excerpt(excerpt))
        names = (
            "Avis automatique de la passerelle texto 311",
            "Automatic notice from the 311 text gateway",
        )
        joiner = " / "
    footer = joiner.join(names if first == "fr" else names[::-1])
    return "\n\n".join(parts) + "\n\n-- \n" + footer + "\n"


def compose_notice(notice: AgentNotice) -> EmailMessage:
    """The notice email, in the conversation's thread (policy `email.policy.SMTP`).

    Headers: From (the gateway), To/Cc (the agent; for a "console_reply" copy the mailbox,
    Cc the sticky agent), Reply-To (the conversation's reply address, so answering it
    texts the resident as usual), Subject "Re: <thread>",
    Date, Message-ID, In-Reply-To, References, X-SMS311-Conversation, and — so that
    no auto-responder answers it — Auto-Submitted: auto-generated (RFC 3834) and
    X-Auto-Response-Suppress: All (Exchange/Outlook); X-SMS311-Notice: <kind>.
    The body is text/plain: the explanation in the notice's language, then the other
    (English and French), then the start of the reply concerned, quoted (for a
    "console_reply" copy: the whole reply, quoted).
    """
    message = EmailMessage(policy=SMTP)
    message["From"] = one_line(notice.from_address)
    message["To"] = _addresses(notice.to)
    if notice.cc:
        message["Cc"] = _addresses(notice.cc)
    message["Reply-To"] = one_line(notice.reply_to)
    message["Subject"] = reply_subject(notice.subject)
    message["Date"] = format_datetime(_aware(notice.date).astimezone(_zone(notice.timezone)))
    message["Message-ID"] = _bare(notice.message_id)
    if notice.in_reply_to:
        message["In-Reply-To"] = _bare(notice.in_reply_to)
    references = [r for r in (_bare(x) for x in notice.references) if r]
    if references:
        message["References"] = " ".join(references)
    message["Auto-Submitted"] = "auto-generated"
    message["X-Auto-Response-Suppress"] = "All"
    if notice.conversation_id is not None:
        message[CONVERSATION_HEADER] = _bare(str(notice.conversation_id))
    message[NOTICE_HEADER] = notice.kind
    message.set_content(_notice_body(notice), cte="quoted-printable")
    return message
