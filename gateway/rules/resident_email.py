"""The email of a resident's texts (no I/O): `ResidentEmail`, the outbox payload, and `compose`.

`ResidentEmail` is what the outbox stores (`to_dict` / `from_dict`, JSON-safe, "type":
"resident"): the envelope and threading (gateway.rules.thread), the resident's number, the
municipality, the language, and the texts (`ResidentText`, each with its `MediaRef`s).
`compose` turns it into an `email.message.EmailMessage` ready for SMTP: the texts first and
clearly, a footer in the resident's language with times in the city's time zone, fetched
media attached (`Attachment`, named by `media_filename`), media that could not be fetched
named in the body with their URL.

Header injection is impossible: every header value is reduced to one line first.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from email.message import EmailMessage
from email.policy import SMTP
from typing import Any

from gateway.rules.mime_fast import Part, RawEmail, build_raw, thread_headers
from gateway.rules.municipalities import DEFAULT_TIMEZONE
from gateway.rules.thread import (
    CONVERSATION_HEADER,
    aware,
    bare,
    local_zone,
    one_line,
    set_thread_headers,
    thread_fields_from_dict,
    thread_fields_to_dict,
)

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
        "from": "From: {number} ({place})",
        "received_one": "received {when}",
        "received_many": "{count} texts received {first} to {last}",
        "answer": "reply to this email to answer by text message",
        "no_text": "(no text)",
        "media_failed": "[Attachment {n} ({type}) could not be downloaded: {url}]",
        "media_attached": "[Attached: {names}]",
    },
    "fr": {
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
            **thread_fields_to_dict(self),
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
            **thread_fields_from_dict(data),
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


def _local(moment: datetime, zone: tzinfo, language: str) -> tuple[str, str, str]:
    """(date, time, zone abbreviation) of `moment` in `zone`."""
    local = aware(moment).astimezone(zone)
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
    zone = local_zone(email.timezone)
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
    set_thread_headers(
        message, email, subject=one_line(email.subject), date=_date(email),
        timezone=email.timezone,
    )
    message[CONVERSATION_HEADER] = bare(str(email.conversation_id))
    message.set_content(_body(email, attachments, failed_media), cte="quoted-printable")
    for attachment, filename in zip(attachments, _attachment_names(attachments), strict=True):
        maintype, subtype = safe_content_type(attachment.content_type).split("/", 1)
        message.add_attachment(
            attachment.data, maintype=maintype, subtype=subtype, filename=filename
        )
    return message



def _date(email: ResidentEmail) -> datetime:
    """The Date header's time: `email.date`, else the time of the last text."""
    return email.date or max(
        (t.received_at for t in email.texts), default=datetime(1970, 1, 1, tzinfo=UTC)
    )


def compose_raw(
    email: ResidentEmail,
    attachments: Sequence[Attachment] = (),
    failed_media: Sequence[MediaRef] = (),
) -> RawEmail:
    """What `compose` makes, as the bytes SMTP sends and their envelope, written directly
    (`gateway.rules.mime_fast`: about twenty times faster). It reads back — headers,
    body, attachments — as `compose`'s email does. A header value the direct writer does
    not cover (a quoted display name, a non-ASCII address…) is composed by `compose`."""
    found = thread_headers(
        email, subject=one_line(email.subject), date=_date(email), timezone=email.timezone
    )
    if found is None:
        return RawEmail.from_message(compose(email, attachments, failed_media))
    lines, sender, recipients = found
    lines.append(f"{CONVERSATION_HEADER}: {bare(str(email.conversation_id))}\r\n")
    parts = [
        Part(safe_content_type(a.content_type), filename, a.data)
        for a, filename in zip(attachments, _attachment_names(attachments), strict=True)
    ]
    return build_raw(
        lines, _body(email, attachments, failed_media), parts,
        sender=sender, recipients=recipients, message_id=bare(email.message_id),
    )
