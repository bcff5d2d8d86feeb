"""The MIME structure of an inbound email and the text part to read (no I/O).

- `mime_parts(msg, into_attached=...)`: the parts, depth first, at most MAX_PARTS of them and
  MAX_DEPTH deep, entering attached messages (message/*) only when asked;
- `content_type`, `param`, `is_attachment`: what a part says about itself, never raising
  (a part whose headers cannot be read is text/plain, inline, without parameters);
- `text_part(msg)`: the text to read: the first inline text/plain part with some text, else
  the first inline text/html part, else "" — decoded (transfer encoding, then charset with
  fallbacks: `charset.decode_bytes`), at most MAX_TEXT_BYTES of it; malformed base64 is
  decoded leniently, never passed through as if it were the text;
- `unflow(text, delsp)`: RFC 3676 format=flowed undone.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Iterator
from email.message import Message

from gateway.rules.reading.charset import decode_bytes
from gateway.rules.reading.headers import clean
from gateway.rules.reading.limits import MAX_DEPTH, MAX_PARTS, MAX_TEXT_BYTES


def content_type(part: Message) -> str:
    try:
        return part.get_content_type().lower()
    except Exception:
        return "text/plain"


def param(part: Message, name: str) -> str | None:
    try:
        value = part.get_param(name)
    except Exception:
        return None
    if isinstance(value, tuple):  # RFC 2231 (charset, language, value)
        value = value[2]
    return clean(str(value)) if value is not None else None


def mime_parts(msg: Message, *, into_attached: bool) -> Iterator[Message]:
    """The MIME parts of `msg` (depth first, capped), not entering message/* attachments
    unless `into_attached`."""
    count = 0
    stack: list[tuple[Message, int]] = [(msg, 0)]
    while stack and count < MAX_PARTS:
        part, depth = stack.pop()
        count += 1
        yield part
        if depth >= MAX_DEPTH:
            continue
        children: list[Message] = []
        try:
            if part.is_multipart():
                payload = part.get_payload()
                if isinstance(payload, list):
                    children = [p for p in payload if isinstance(p, Message)]
        except Exception:
            children = []
        if children and (into_attached or not content_type(part).startswith("message/")):
            stack.extend((c, depth + 1) for c in reversed(children))


_NOT_BASE64 = re.compile(r"[^A-Za-z0-9+/]")


def _lenient_base64(text: str) -> bytes | None:
    """Decode base64 the way a mail client would: ignore what is not in the alphabet, and
    drop an incomplete last character (a message cut short) instead of failing."""
    cleaned = _NOT_BASE64.sub("", text)
    cleaned = cleaned[: len(cleaned) - (len(cleaned) % 4 == 1)]
    cleaned += "=" * (-len(cleaned) % 4)
    try:
        return binascii.a2b_base64(cleaned)
    except (binascii.Error, ValueError):
        return None


def _payload_bytes(part: Message) -> bytes:
    if str(part.get("Content-Transfer-Encoding", "")).strip().lower() == "base64":
        # The email package hands back undecoded text for base64 it finds malformed
        # (e.g. cut short); never let base64 through as if it were the text.
        try:
            encoded = part.get_payload()
        except Exception:
            encoded = None
        if isinstance(encoded, str):
            decoded = _lenient_base64(encoded)
            if decoded is not None:
                return decoded
    try:
        payload = part.get_payload(decode=True)
    except Exception:
        payload = None
    if isinstance(payload, bytes):
        return payload
    try:
        raw = part.get_payload()
    except Exception:
        return b""
    if isinstance(raw, str):
        return raw.encode("utf-8", "surrogateescape")
    return b""


def is_attachment(part: Message) -> bool:
    try:
        return part.get_content_disposition() == "attachment"
    except Exception:
        return False


def text_part(msg: Message) -> tuple[str, bool, bool, bool]:
    """(text, is_html, format=flowed, delsp) of the part to read: the first inline text/plain
    part with some text, else the first inline text/html part, else ""."""
    html: Message | None = None
    for part in mime_parts(msg, into_attached=False):
        ctype = content_type(part)
        if ctype not in ("text/plain", "text/html") or is_attachment(part):
            continue
        if ctype == "text/plain":
            text = _part_text(part)
            if text.strip():
                flowed = (param(part, "format") or "").lower() == "flowed"
                delsp = (param(part, "delsp") or "").lower() == "yes"
                return text, False, flowed, delsp
        elif html is None:
            html = part
    if html is not None:
        return _part_text(html), True, False, False
    return "", False, False, False


def _part_text(part: Message) -> str:
    data = _payload_bytes(part)
    truncated = len(data) > MAX_TEXT_BYTES
    if truncated:
        data = data[:MAX_TEXT_BYTES]
    charset: str | None
    try:
        charset = part.get_content_charset()
    except Exception:
        charset = None
    return decode_bytes(data, charset, truncated=truncated)


def unflow(text: str, delsp: bool) -> str:
    """Undo RFC 3676 format=flowed: join soft-broken lines (same quote depth)."""
    out: list[str] = []
    pending: str | None = None
    pending_depth = 0
    for line in text.replace("\r\n", "\n").split("\n"):
        depth = len(line) - len(line.lstrip(">"))
        content = line[depth:]
        if content.startswith(" "):
            content = content[1:]  # space-stuffing
        if pending is not None and depth == pending_depth:
            content = pending + content
        elif pending is not None:
            out.append(">" * pending_depth + (" " if pending_depth else "") + pending)
        pending = None
        if content.endswith(" ") and content != "-- ":
            pending, pending_depth = (content[:-1] if delsp else content), depth
            continue
        out.append(">" * depth + (" " if depth else "") + content)
    if pending is not None:
        out.append(">" * pending_depth + (" " if pending_depth else "") + pending)
    return "\n".join(out)

