"""One agent's reply email read whole (no I/O): `parse_reply`, `visible_text`, `ParsedReply`.

`parse_reply` is the pipeline the package docstring (gateway.rules.reading) describes: bound
the input, parse it, read the routing headers (`headers`), decide "automatic?"
(`automatic`), choose and decode the text part (`body`, `html`), then keep only what the agent
wrote (`visible_text`: `quotes.cut_history`, the close command, `signatures.cut_signature`,
`tidy`). It raises only `MalformedEmail`, and only for input that is not an email (or that
could not be read at all: such mail goes to Failed, never to a resident).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Literal

from gateway.rules.reading.automatic import automatic_reason
from gateway.rules.reading.body import text_part, unflow
from gateway.rules.reading.headers import (
    conversation_tokens,
    first_address,
    header_values,
    message_ids_of,
    one_line,
    repeated_headers,
    return_path,
    token_pattern,
    trim_ids,
)
from gateway.rules.reading.html import html_to_text
from gateway.rules.reading.limits import (
    MAX_DASH_LINES,
    MAX_HEADER_BYTES,
    MAX_PARTS,
    MAX_RAW_BYTES,
    MAX_TEXT_BYTES,
)
from gateway.rules.reading.quotes import cut_history
from gateway.rules.reading.signatures import cut_marked_signature, cut_signature
from gateway.rules.reading.tidy import normalise, tidy

CLOSE_COMMANDS = frozenset({"#close", "#fermer"})
_MULTIPART_RE = re.compile(rb"multipart/", re.IGNORECASE)
# A line beginning with "--": every MIME part starts with one (its boundary). The stdlib
# parser ends a line at CR, LF or CRLF, so a bare CR counts too.
_DASH_LINE_RE = re.compile(rb"[\r\n]--")


EmptyBecause = Literal["below_signature", "nothing"]
#: Why a reply's visible text is empty: what was written above the quoted history starts with
#: a signature marker ("-- ", "Sent from my iPhone"), so the answer, if any, was below it; or
#: nothing is left above (or between) the quoted history once it and the signature are cut.
EMPTY_BECAUSE: tuple[EmptyBecause, ...] = ("below_signature", "nothing")


class MalformedEmail(ValueError):
    """The input is not an email at all (no header could be read)."""


@dataclass(frozen=True)
class ParsedReply:
    """What the reply pipeline needs to know about one inbound email."""

    message_id: str | None  # "<id@host>", or None
    sender: str  # lower-cased addr-spec of From ("" if none)
    return_path: str | None  # addr-spec of Return-Path; "" for the null path "<>"; None if absent
    subject: str
    tokens: tuple[str, ...]  # conversation tokens from the recipient headers, in order, unique
    in_reply_to: tuple[str, ...]  # normalised "<id@host>"
    references: tuple[str, ...]  # normalised "<id@host>"
    automatic: str | None  # why it must never be texted, e.g. "auto-reply: Auto-Submitted"
    text: str  # the visible reply only, plain text, whitespace tidied
    close_requested: bool  # "#close" / "#fermer" alone on a line (removed from `text`)
    # When `text` is empty: where the writing went (see `EMPTY_BECAUSE`), else None.
    empty_because: EmptyBecause | None = None
    # Headers RFC 5322 allows once that came more than once (To, Cc, Message-ID, In-Reply-To,
    # References): the routing is ambiguous, so such mail is never acted on.
    repeated: tuple[str, ...] = ()


def parse_reply(
    raw: bytes, *, reply_address: str, own_addresses: Sequence[str] = ()
) -> ParsedReply:
    """Parse one raw email (see the package docstring, gateway.rules.reading).

    `reply_address` is the settings template, e.g. "reply+{token}@gateway.example"; a template
    without "{token}" is a configuration error (ValueError). `own_addresses` are the gateway's
    own From addresses: mail from one of them is automatic ("loop").
    Raises MalformedEmail when `raw` has no header at all (and, defensively, if reading it
    failed in a way nobody foresaw: such mail must go to Failed, not be retried forever).
    """
    token_re = token_pattern(reply_address)
    if not isinstance(raw, bytes | bytearray | memoryview):
        raise MalformedEmail("not bytes")
    data = bytes(raw[:MAX_RAW_BYTES])
    if not data.strip():
        raise MalformedEmail("empty message")
    head = data[: MAX_HEADER_BYTES + 4]
    if b"\n\n" not in head and b"\n\r\n" not in head:
        data = data[:MAX_HEADER_BYTES]  # a header section this long is not a reply's
    for count, match in enumerate(_MULTIPART_RE.finditer(data)):
        if count >= MAX_PARTS:  # the stdlib parser is quadratic in the nesting depth
            data = data[: match.start()]
            break
    data = cut_dash_lines(data)
    try:
        msg = BytesParser(policy=policy.default).parsebytes(data)
    except Exception as exc:  # the parser is lenient; anything else is not an email
        raise MalformedEmail(f"unparseable: {type(exc).__name__}") from exc
    if not isinstance(msg, EmailMessage) or not msg.keys():
        raise MalformedEmail("no headers")

    try:
        return _read(msg, token_re, own_addresses)
    except Exception as exc:  # a bug or a case nobody foresaw: never text it, never retry it
        raise MalformedEmail(f"unreadable: {type(exc).__name__}: {exc}"[:200]) from exc


def cut_dash_lines(data: bytes) -> bytes:
    """`data` cut before its (MAX_DASH_LINES + 1)th line beginning with "--": MIME parts
    of any kind (not only multipart/ ones) are bounded before the parser sees them; the
    rest of such a message is ignored, as past every bound of gateway.rules.reading."""
    for count, match in enumerate(_DASH_LINE_RE.finditer(data)):
        if count >= MAX_DASH_LINES:
            return data[: match.start() + 1]
    return data


def _read(msg: EmailMessage, token_re: re.Pattern[str], own: Sequence[str]) -> ParsedReply:
    body, is_html, flowed, delsp = text_part(msg)
    if is_html:
        text, close, empty = _visible(html_to_text(body), quotes_certain=True)
    else:
        plain = unflow(body, delsp) if flowed else body
        text, close, empty = _visible(plain, quotes_certain=False)
    message_ids = message_ids_of(header_values(msg, "Message-ID"))
    return ParsedReply(
        message_id=message_ids[0] if message_ids else None,
        sender=first_address(header_values(msg, "From")),
        return_path=return_path(header_values(msg, "Return-Path")),
        subject=one_line(" ".join(header_values(msg, "Subject"))),
        tokens=conversation_tokens(msg, token_re),
        in_reply_to=message_ids_of(header_values(msg, "In-Reply-To")),
        references=trim_ids(message_ids_of(header_values(msg, "References"))),
        automatic=automatic_reason(msg, own_addresses=own),
        text=text,
        close_requested=close,
        empty_because=empty,
        repeated=repeated_headers(msg),
    )


def _visible(plain: str, *, quotes_certain: bool) -> tuple[str, bool, EmptyBecause | None]:
    """(visible text, close requested, why the text is empty or None)."""
    lines = normalise(plain[: MAX_TEXT_BYTES * 2]).split("\n")
    kept = cut_history(lines, quotes_certain=quotes_certain)
    close = False
    without_commands: list[str] = []
    for line in kept:
        if line.strip().casefold() in CLOSE_COMMANDS:
            close = True
            continue
        without_commands.append(line)
    text = tidy("\n".join(cut_signature(without_commands)))
    empty: EmptyBecause | None = None
    if not text:
        above_marker = tidy("\n".join(cut_marked_signature(without_commands)))
        below = not above_marker and tidy("\n".join(without_commands))
        empty = "below_signature" if below else "nothing"
    return text, close, empty


def visible_text(plain: str) -> str:
    """Only what the writer of `plain` wrote: quoted history, signatures and the close
    command cut, whitespace tidied (see the package docstring, gateway.rules.reading)."""
    return _visible(plain, quotes_certain=False)[0]
