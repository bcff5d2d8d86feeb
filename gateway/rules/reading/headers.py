"""Header values of an inbound email (no I/O): decoded text, addresses, message ids, tokens.

- `header_values(msg, name)`: every value of one header, RFC 2047 decoded, as valid Unicode
  (undecodable bytes go through `charset.decode_bytes`), at most MAX_HEADER_VALUE characters
  of each; never raises.
- `addresses`, `first_address`, `return_path`: lower-cased addr-specs, leniently (a pattern
  scan when the address parser finds nothing; a bare "MAILER-DAEMON"; "" for the null
  return path "<>").
- `message_ids_of`, `trim_ids`: normalised "<left@right>" ids (angle brackets added when a
  client forgot them), at most MAX_IDS kept (the first and the last ones).
- `token_pattern`, `conversation_tokens`: the conversation tokens in the recipient headers
  (`RECIPIENT_HEADERS`: To and Cc only) whose address matches the reply-address template.
- `repeated_headers`: which of `SINGLE_HEADERS` (To, Cc, Message-ID, In-Reply-To,
  References) a message holds more than once.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from email import policy
from email.header import decode_header, make_header
from email.message import Message
from email.utils import getaddresses

from gateway.rules.reading.charset import decode_bytes
from gateway.rules.reading.limits import MAX_HEADER_VALUE, MAX_IDS
from gateway.rules.thread import is_token

# Only the headers the author wrote, which a DKIM signer signs: Delivered-To, X-Original-To and
# Envelope-To are added on delivery, by any server (or a forger), and no signature covers them,
# so a token read there would let a genuinely signed mail be re-sent into any conversation.
RECIPIENT_HEADERS = ("To", "Cc")
# RFC 5322 §3.6 allows each of these at most once; a second copy (a forger's, above the signed
# one that DKIM verifiers read from the bottom) makes the routing ambiguous.
SINGLE_HEADERS = ("To", "Cc", "Message-ID", "In-Reply-To", "References")


def clean(value: str) -> str:
    """`value` without lone surrogates (left by undecodable header bytes): valid Unicode."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        try:
            return decode_bytes(value.encode("utf-8", "surrogateescape"), None)
        except UnicodeEncodeError:
            return value.encode("utf-8", "replace").decode("utf-8")
    return value


def one_line(value: str) -> str:
    """`value` on one line: control characters and line or paragraph separators become
    spaces, runs of whitespace collapse, the ends are trimmed."""
    chars = [" " if unicodedata.category(c) in ("Cc", "Zl", "Zp") else c for c in value]
    return " ".join("".join(chars).split())


def header_values(msg: Message, name: str) -> list[str]:
    """Every value of header `name`, decoded (RFC 2047), as clean strings (at most
    MAX_HEADER_VALUE characters of each); never raises."""
    wanted = name.lower()
    out: list[str] = []
    for key, raw in msg.raw_items():
        if key.lower() != wanted:
            continue
        value = clean(str(raw)[:MAX_HEADER_VALUE])  # raw 8-bit bytes: UTF-8, else cp1252
        out.append(clean(_parse_header(key, value)))
    return out


def _parse_header(name: str, value: str) -> str:
    try:
        return str(policy.default.header_fetch_parse(name, value))
    except Exception:  # a header the policy cannot parse: decode it ourselves
        try:
            return str(make_header(decode_header(value)))
        except Exception:
            return value


_ADDR_RE = re.compile(r"[^\s<>()\[\]\",;:@]+@[A-Za-z0-9.\[\]:_-]+")


def addresses(values: Sequence[str]) -> list[str]:
    """Lower-cased addr-specs in header values (lenient: falls back to a pattern scan)."""
    out: list[str] = []
    for value in values:
        found: list[str] = []
        try:
            found = [a for _, a in getaddresses([value]) if "@" in a]
        except Exception:
            found = []
        if not found:
            found = _ADDR_RE.findall(value)
        out.extend(a.strip().strip("<>").lower() for a in found)
    return out


def first_address(values: Sequence[str]) -> str:
    addrs = addresses(values)
    if addrs:
        return addrs[0]
    for value in values:  # a bare local part such as "MAILER-DAEMON"
        bare = value.strip().strip("<>").strip()
        if bare and " " not in bare:
            return bare.lower()
    return ""


def return_path(values: Sequence[str]) -> str | None:
    if not values:
        return None
    value = values[0].strip()  # the one the final delivery added
    if value.replace(" ", "") in ("<>", ""):
        return ""
    addrs = addresses([value])
    return addrs[0] if addrs else value.strip("<> ").lower()


_MSGID_RE = re.compile(r"<([^<>\s]{1,500})>")


def message_ids_of(values: Sequence[str]) -> tuple[str, ...]:
    """Normalised "<left@right>" ids from Message-ID / In-Reply-To / References values."""
    out: list[str] = []
    for value in values:
        value = value[:100_000]
        found = _MSGID_RE.findall(value)
        if not found:  # clients that forget the angle brackets
            found = [w.strip("<>,;") for w in value.split() if "@" in w]
        for item in found:
            item = "".join(item.split())
            ident = f"<{item}>"
            if item and ident not in out:
                out.append(ident)
    return tuple(out)


def trim_ids(ids: tuple[str, ...]) -> tuple[str, ...]:
    if len(ids) <= MAX_IDS:
        return ids
    return (ids[0], *ids[-(MAX_IDS - 1) :])


def token_pattern(template: str) -> re.Pattern[str]:
    if template.count("{token}") != 1:
        raise ValueError(f"reply address template needs exactly one {{token}}: {template!r}")
    address = template.strip()
    if "<" in address and ">" in address:  # "Name <reply+{token}@host>"
        address = address[address.rindex("<") + 1 : address.rindex(">")]
    before, after = address.split("{token}")
    return re.compile(re.escape(before) + r"([a-z2-7]{26,})" + re.escape(after), re.IGNORECASE)


def conversation_tokens(msg: Message, token_re: re.Pattern[str]) -> tuple[str, ...]:
    out: list[str] = []
    for name in RECIPIENT_HEADERS:
        for addr in addresses(header_values(msg, name)):
            match = token_re.fullmatch(addr)
            if match:
                token = match.group(1).lower()
                if is_token(token) and token not in out:
                    out.append(token)
    return tuple(out)


def repeated_headers(msg: Message) -> tuple[str, ...]:
    """The `SINGLE_HEADERS` that `msg` holds more than once, in that order."""
    counts: dict[str, int] = {}
    for key, _value in msg.raw_items():
        counts[key.lower()] = counts.get(key.lower(), 0) + 1
    return tuple(name for name in SINGLE_HEADERS if counts.get(name.lower(), 0) > 1)
