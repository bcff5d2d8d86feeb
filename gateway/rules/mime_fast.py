"""Compose an email's bytes directly (no I/O): `RawEmail`, `build_raw`, and the header
encoders it uses, without the standard library's header registry.

`email.message.EmailMessage` (policy `SMTP`) parses every header it is given into objects
and folds them back out when flattened: about 1 ms per email, most of the outbox drain's
CPU. The gateway writes its own headers from values it already checked (`one_line`,
`bare`), so it can write them out directly:

- addresses (From, To, Cc, Reply-To): ASCII display names as atoms or a quoted string,
  other names as RFC 2047 encoded-words (`=?utf-8?q?…?=`), folded between addresses;
- unstructured text (Subject): ASCII words as they are, each run of words with
  non-ASCII characters as encoded-words of at most 75 characters (a character is never
  split between two), folded at 78 characters;
- ids (Message-ID, In-Reply-To, References): as they are; References folded at 78;
- the body: text/plain UTF-8, quoted-printable (the standard library's own encoder, so
  the body is byte for byte the one `EmailMessage.set_content` writes); attachments in
  base64, 76 characters a line, in a multipart/mixed whose boundary is derived from the
  message (a retried email is the same bytes).

Every line ends with CRLF and the whole message is 7-bit ASCII, as SMTP wants it. A value
these rules do not cover (an address with a comment or a quoted name, a non-ASCII
address, a word longer than a line) makes `build_raw` return None: the caller then
composes with the standard library (`RawEmail.from_message`), which is slower but knows
every corner of RFC 5322.
"""

from __future__ import annotations

import binascii
import hashlib
import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from email import quoprimime
from email.message import EmailMessage
from email.utils import format_datetime, getaddresses

from gateway.rules.thread import Threaded, aware, bare, header_addresses, local_zone, one_line

MAX_LINE = 78  # RFC 5322's recommended line length
# A word (an encoded-word too: RFC 2047 allows 75) fits on the first line after the
# longest header name folded here ("Reply-To: "), so no line has to start empty.
_LONGEST_WORD = MAX_LINE - len("Reply-To: ")
_ENCODED_PREFIX = "=?utf-8?q?"
_ENCODED_ROOM = _LONGEST_WORD - len(_ENCODED_PREFIX) - 2  # the encoded text of one word
_LONGEST_ATOM = 900  # an id longer than this: left to the stdlib

# RFC 2047 5(3): the characters an encoded-word in a phrase may hold as they are
_Q_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!*+-/")
_Q_BYTE = {b: chr(b) if b in _Q_SAFE else f"={b:02X}" for b in range(256)}
_Q_BYTE[0x20] = "_"
_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+")  # RFC 5322 atext (one word)
_ADDR_SPEC = re.compile(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?"
)
_ID = re.compile(r"[\x21-\x7e]{1,900}")


@dataclass(frozen=True)
class RawEmail:
    """An email ready for SMTP: its bytes (CRLF, 7-bit) and its envelope."""

    data: bytes
    sender: str  # the From address ("" for a null return path)
    recipients: tuple[str, ...]  # To + Cc, each once (case-insensitively), in order
    message_id: str

    @classmethod
    def from_message(cls, message: EmailMessage) -> RawEmail:
        """The same from an `EmailMessage` (the standard library composes it)."""
        senders = getaddresses([str(v) for v in message.get_all("From", [])])
        recipients = envelope_addresses(
            [str(v) for h in ("To", "Cc") for v in message.get_all(h, [])]
        )
        return cls(
            data=message.as_bytes(policy=message.policy.clone(linesep="\r\n")),
            sender=senders[0][1] if senders else "",
            recipients=tuple(recipients),
            message_id=str(message.get("Message-ID", "")),
        )


def envelope_addresses(values: Sequence[str]) -> list[str]:
    """The addresses in these header values, each once (case-insensitively), in order."""
    result: list[str] = []
    seen: set[str] = set()
    for _name, address in getaddresses(list(values)):
        if address and address.lower() not in seen:
            seen.add(address.lower())
            result.append(address)
    return result


# -- header values ----------------------------------------------------------------------


def encoded_words(text: str) -> list[str]:
    """`text` as RFC 2047 Q encoded-words (UTF-8), each at most 68 characters, never
    splitting a character; decoders join adjacent encoded-words without the space."""
    words: list[str] = []
    current: list[str] = []
    size = 0
    for char in text:
        piece = "".join(_Q_BYTE[b] for b in char.encode("utf-8"))
        if current and size + len(piece) > _ENCODED_ROOM:
            words.append(_ENCODED_PREFIX + "".join(current) + "?=")
            current, size = [], 0
        current.append(piece)
        size += len(piece)
    if current:
        words.append(_ENCODED_PREFIX + "".join(current) + "?=")
    return words


def _plain_word(word: str) -> bool:
    """A word written as it is in unstructured text: printable ASCII, no "=?" (which a
    reader would take for the start of an encoded-word)."""
    return (
        word.isascii() and word.isprintable() and "=?" not in word
        and len(word) <= _LONGEST_WORD
    )


def unstructured(value: str) -> list[str]:
    """The words of an unstructured header value (Subject), encoded where needed:
    ASCII words as they are, each run of other words as encoded-words. `value` is one
    line with single spaces (`one_line`); a word too long for a line is encoded too
    (encoded-words can be split)."""
    if not value:
        return []
    atoms: list[str] = []
    run: list[str] = []
    for word in value.split(" "):
        if _plain_word(word):
            if run:
                atoms += encoded_words(" ".join(run))
                run = []
            atoms.append(word)
        else:
            run.append(word)
    if run:
        atoms += encoded_words(" ".join(run))
    return atoms


def _display_name(name: str) -> list[str] | None:
    """The words of a display name: atoms as they are, an ASCII name with other
    characters as one quoted string, each run of words with non-ASCII characters as one
    encoded-word (as the stdlib writes it). None when a run needs several encoded-words:
    readers disagree on the space between two encoded-words of a phrase."""
    if not name:
        return []
    if (
        "=?" in name or '"' in name or "\\" in name or name != " ".join(name.split())
        or not name.isprintable()
    ):  # a lookalike of an encoded-word, quoting, odd spacing: the stdlib knows better
        return None
    words = name.split(" ")
    if name.isascii():
        if all(_ATOM.fullmatch(w) and len(w) <= _LONGEST_WORD for w in words):
            return words
        quoted = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
        return [quoted] if len(quoted) <= _LONGEST_WORD else None
    atoms: list[str] = []
    run: list[str] = []
    for word in [*words, None]:
        if word is not None and not (_ATOM.fullmatch(word) and len(word) <= _LONGEST_WORD):
            run.append(word)
            continue
        if run:
            encoded = encoded_words(" ".join(run))
            if len(encoded) > 1:
                return None
            atoms += encoded
            run = []
        if word is not None:
            atoms.append(word)
    return atoms


def address_atoms(value: str) -> tuple[list[str], list[str]] | None:
    """An address-list header value ("Name <a@b>, c@d", as `header_addresses` writes it):
    (its atoms to fold, the addresses). None when it is not that simple form (a quoted
    name, a comment, a group, a non-ASCII address…): the stdlib composes it."""
    pairs = getaddresses([value])
    rebuilt = ", ".join(f"{n} <{a}>" if n else a for n, a in pairs)
    if not pairs or rebuilt != value:
        return None
    atoms: list[str] = []
    for index, (name, address) in enumerate(pairs):
        if not _ADDR_SPEC.fullmatch(address) or len(address) > _LONGEST_WORD - 3:
            return None
        words = _display_name(name)
        if words is None:
            return None
        last = f"<{address}>" if name else address
        if index < len(pairs) - 1:
            last += ","
        atoms += [*words, last]
    return atoms, [a for _n, a in pairs]


def fold(name: str, atoms: Sequence[str]) -> str:
    """ "Name: atom atom…" with CRLF, folded before an atom that would pass 78 characters
    (a folded line starts with one space; unfolding gives the single space back). An atom
    longer than a line (a long id) stays whole, on a line of its own (the first atom stays
    on the first line: a reader would keep the space of an empty first line)."""
    line = f"{name}:"
    lines: list[str] = []
    for atom in atoms:
        if len(line) + 1 + len(atom) > MAX_LINE and line != f"{name}:":
            lines.append(line)
            line = " " + atom
        else:
            line += " " + atom
    lines.append(line)
    return "\r\n".join(lines) + "\r\n"


def id_atoms(value: str) -> list[str] | None:
    """Message ids (`bare`, space separated) as atoms; None if one is not printable ASCII."""
    ids = value.split(" ") if value else []
    return ids if all(_ID.fullmatch(i) for i in ids) else None


# -- bodies -----------------------------------------------------------------------------


def quoted_printable_text(text: str) -> str:
    """`text` as `EmailMessage.set_content(text, cte="quoted-printable")` encodes it
    (UTF-8, lines at most 76 characters), with CRLF line endings."""
    lines = text.encode("utf-8").splitlines()
    encoded = quoprimime.body_encode((b"\n".join(lines) + b"\n").decode("latin-1"), MAX_LINE)
    return encoded.replace("\n", "\r\n")


def base64_lines(data: bytes) -> str:
    """`data` in base64, 76 characters a line, each ending with CRLF."""
    return "".join(
        binascii.b2a_base64(data[i : i + 57]).decode("ascii")[:-1] + "\r\n"
        for i in range(0, len(data), 57)
    )


@dataclass(frozen=True)
class Part:
    """An attachment: content type "type/subtype" (checked), a safe file name
    ([A-Za-z0-9._-]), the bytes."""

    content_type: str
    filename: str
    data: bytes


_TEXT_HEADERS = (
    'Content-Type: text/plain; charset="utf-8"\r\n'
    "Content-Transfer-Encoding: quoted-printable\r\n"
)


def build_raw(
    headers: Sequence[str],
    body: str,
    parts: Sequence[Part],
    *,
    sender: str,
    recipients: Sequence[str],
    message_id: str,
) -> RawEmail:
    """The message: `headers` (each already "Name: value\\r\\n", folded), MIME-Version,
    then the text/plain `body` alone, or in a multipart/mixed with `parts` attached."""
    text = quoted_printable_text(body)
    head = "".join(headers)
    if not parts:
        data = f"{head}{_TEXT_HEADERS}MIME-Version: 1.0\r\n\r\n{text}"
        return RawEmail(data.encode("ascii"), sender, tuple(recipients), message_id)
    encoded = [base64_lines(p.data) for p in parts]
    digest = hashlib.sha256(head.encode("ascii"))
    digest.update(text.encode("ascii"))
    for chunk in encoded:
        digest.update(chunk.encode("ascii"))
    # "=_" never occurs in quoted-printable or base64 text: the boundary cannot either
    boundary = f"=_sms311_{digest.hexdigest()[:24]}"
    pieces = [
        head,
        f'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="{boundary}"\r\n\r\n',
        f"--{boundary}\r\n{_TEXT_HEADERS}\r\n{text}\r\n",
    ]
    for part, chunk in zip(parts, encoded, strict=True):
        pieces.append(
            f"--{boundary}\r\nContent-Type: {part.content_type}\r\n"
            "Content-Transfer-Encoding: base64\r\n"
            f'Content-Disposition: attachment; filename="{part.filename}"\r\n\r\n{chunk}\r\n'
        )
    pieces.append(f"--{boundary}--\r\n")
    return RawEmail("".join(pieces).encode("ascii"), sender, tuple(recipients), message_id)


def thread_headers(
    email: Threaded, *, subject: str, date: datetime, timezone: str
) -> tuple[list[str], str, list[str]] | None:
    """The header lines `set_thread_headers` sets, in its order (From, To, Cc when any,
    Reply-To, Subject, Date, Message-ID, In-Reply-To and References when present), and
    the envelope: (lines, sender, recipients). None when a value is not one these rules
    write (the stdlib composes the email then)."""
    lines: list[str] = []
    addresses: dict[str, list[str]] = {}
    for name, value in (
        ("From", one_line(email.from_address)),
        ("To", header_addresses(email.to)),
        ("Cc", header_addresses(email.cc) if email.cc else None),
        ("Reply-To", one_line(email.reply_to)),
    ):
        if value is None:
            continue
        found = address_atoms(value)
        if found is None:
            return None
        atoms, addresses[name] = found
        lines.append(fold(name, atoms))
    subject_atoms = unstructured(subject)
    if any(
        a.startswith(_ENCODED_PREFIX) and b.startswith(_ENCODED_PREFIX)
        for a, b in itertools.pairwise(subject_atoms)
    ):
        # a run split over several encoded-words: readers disagree on the space between
        # them (hypothesis found the standard library's parser adding one): the stdlib writes it
        return None
    lines.append(fold("Subject", subject_atoms))
    lines.append(f"Date: {format_datetime(aware(date).astimezone(local_zone(timezone)))}\r\n")
    for name, value in (
        ("Message-ID", bare(email.message_id)),
        ("In-Reply-To", bare(email.in_reply_to) if email.in_reply_to else ""),
        ("References", " ".join(r for r in (bare(x) for x in email.references) if r)),
    ):
        ids = id_atoms(value)
        if ids is None or (name == "Message-ID" and len(ids) != 1):
            return None
        if ids:
            lines.append(fold(name, ids))
    sender = addresses["From"][0] if addresses["From"] else ""
    recipients: list[str] = []
    seen: set[str] = set()
    for address in (*addresses["To"], *addresses.get("Cc", [])):
        if address.lower() not in seen:
            seen.add(address.lower())
            recipients.append(address)
    return lines, sender, recipients
