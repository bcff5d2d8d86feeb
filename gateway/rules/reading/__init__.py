"""Read an agent's reply email (no I/O): routing data, "automatic?", and the visible text.

`parse_reply(raw, reply_address=..., own_addresses=...)` turns the raw bytes of one email into a
`ParsedReply`:

- routing data: the conversation tokens found in the recipient headers (To, Cc, Delivered-To,
  X-Original-To, Envelope-To) that match the reply-address template ("reply+{token}@host"),
  and the normalised Message-ID, In-Reply-To and References;
- `automatic`: why the email must never be texted (auto-reply, out-of-office, bounce, delivery
  delay, read receipt, feedback report, mailing list, loop), or None for a person's reply;
- `text`: only what the agent wrote, as plain text: quoted history ("On … wrote:",
  "Le … a écrit :", "> " lines, Outlook header blocks in English and French,
  "-----Original Message-----", "________"), signatures ("-- ", "Sent from my iPhone",
  "Envoyé de mon iPhone", "Get Outlook for iOS", …) are cut, and so are a signature block
  with no marker at the end (a person's name with a title, an organisation or labelled
  phone/email/web lines, and the closing on top of it) and mail disclaimers — the rules, and
  the look-alike endings that are deliberately kept (a number in a sentence, contact lines with
  no person's name, a sign-off with only a first name), are in gateway.rules.reading.signatures;
  HTML-only mail is turned into text, whitespace is tidied;
- `close_requested`: the agent put the close command ("#close" / "#fermer") alone on a line of
  the visible text (the line is removed from `text`).

Robustness: every charset and transfer encoding is decoded with fallbacks (declared charset,
then UTF-8, then Windows-1252, then Latin-1) and never raises; truncated, mislabelled and huge
messages parse. Work is capped: at most `MAX_TEXT_BYTES` of the chosen text part are read,
attachments and attached messages are skipped, and at most `MAX_PARTS` MIME parts are looked at.
The only exception `parse_reply` raises for bad input is `MalformedEmail`, and only when the
input has no header at all (it is not an email).

The rules were measured against the reply corpora in the shared test data and against the
maintained library `mail-parser-reply` (see tests/test_reply_corpora.py for the scores).
"""

from __future__ import annotations

import binascii
import codecs
import re
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from email import policy
from email.header import decode_header, make_header
from email.message import EmailMessage, Message
from email.parser import BytesParser
from email.utils import getaddresses
from html.parser import HTMLParser
from typing import Literal
from urllib.parse import parse_qs, urlsplit

from gateway.rules.emails import is_token
from gateway.rules.reading.signatures import signature_start

MAX_RAW_BYTES = 4_000_000  # of the raw message (beyond that: attachments, in practice)
MAX_HEADER_BYTES = 512_000  # of the header section
MAX_TEXT_BYTES = 1_000_000  # of the chosen text part (decoded transfer encoding)
MAX_HTML_DEPTH = 500  # open HTML elements tracked
MAX_HEADER_VALUE = 16_000  # characters of one header value parsed
MAX_PARTS = 200  # MIME parts looked at
MAX_DEPTH = 12  # MIME nesting followed
MAX_IDS = 100  # References kept (the first one and the last ones)
_LONG_LINE = 1_000  # lines longer than this are never separators, attributions or headers

CLOSE_COMMANDS = frozenset({"#close", "#fermer"})
OWN_HEADER_PREFIX = "x-sms311-"
RECIPIENT_HEADERS = ("To", "Cc", "Delivered-To", "X-Original-To", "Envelope-To")


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


# ---------------------------------------------------------------------------------------------
# parse_reply
# ---------------------------------------------------------------------------------------------


def parse_reply(
    raw: bytes, *, reply_address: str, own_addresses: Sequence[str] = ()
) -> ParsedReply:
    """Parse one raw email (see the module docstring).

    `reply_address` is the settings template, e.g. "reply+{token}@gateway.example"; a template
    without "{token}" is a configuration error (ValueError). `own_addresses` are the gateway's
    own From addresses: mail from one of them is automatic ("loop").
    Raises MalformedEmail when `raw` has no header at all (and, defensively, if reading it
    failed in a way nobody foresaw: such mail must go to Failed, not be retried forever).
    """
    token_re = _token_pattern(reply_address)
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


def _read(msg: EmailMessage, token_re: re.Pattern[str], own: Sequence[str]) -> ParsedReply:
    body, is_html, flowed, delsp = _body(msg)
    if is_html:
        text, close, empty = _visible(html_to_text(body), quotes_certain=True)
    else:
        plain = _unflow(body, delsp) if flowed else body
        text, close, empty = _visible(plain, quotes_certain=False)
    message_ids = _message_ids(_header_values(msg, "Message-ID"))
    return ParsedReply(
        message_id=message_ids[0] if message_ids else None,
        sender=_first_address(_header_values(msg, "From")),
        return_path=_return_path(_header_values(msg, "Return-Path")),
        subject=_one_line(" ".join(_header_values(msg, "Subject"))),
        tokens=_tokens(msg, token_re),
        in_reply_to=_message_ids(_header_values(msg, "In-Reply-To")),
        references=_trim_ids(_message_ids(_header_values(msg, "References"))),
        automatic=automatic_reason(msg, own_addresses=own),
        text=text,
        close_requested=close,
        empty_because=empty,
    )


# ---------------------------------------------------------------------------------------------
# headers
# ---------------------------------------------------------------------------------------------


def _clean(value: str) -> str:
    """`value` without lone surrogates (left by undecodable header bytes): valid Unicode."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        try:
            return _decode_bytes(value.encode("utf-8", "surrogateescape"), None)
        except UnicodeEncodeError:
            return value.encode("utf-8", "replace").decode("utf-8")
    return value


def _one_line(value: str) -> str:
    chars = [" " if unicodedata.category(c) in ("Cc", "Zl", "Zp") else c for c in value]
    return " ".join("".join(chars).split())


def _header_values(msg: Message, name: str) -> list[str]:
    """Every value of header `name`, decoded (RFC 2047), as clean strings (at most
    MAX_HEADER_VALUE characters of each); never raises."""
    wanted = name.lower()
    out: list[str] = []
    for key, raw in msg.raw_items():
        if key.lower() != wanted:
            continue
        value = _clean(str(raw)[:MAX_HEADER_VALUE])  # raw 8-bit bytes: UTF-8, else cp1252
        out.append(_clean(_parse_header(key, value)))
    return out


def _parse_header(name: str, value: str) -> str:
    try:
        return str(policy.default.header_fetch_parse(name, value))
    except Exception:  # a header the policy cannot parse: decode it ourselves
        try:
            return str(make_header(decode_header(value)))
        except Exception:
            return value


_MULTIPART_RE = re.compile(rb"multipart/", re.IGNORECASE)
_ADDR_RE = re.compile(r"[^\s<>()\[\]\",;:@]+@[A-Za-z0-9.\[\]:_-]+")


def _addresses(values: Sequence[str]) -> list[str]:
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


def _first_address(values: Sequence[str]) -> str:
    addrs = _addresses(values)
    if addrs:
        return addrs[0]
    for value in values:  # a bare local part such as "MAILER-DAEMON"
        bare = value.strip().strip("<>").strip()
        if bare and " " not in bare:
            return bare.lower()
    return ""


def _return_path(values: Sequence[str]) -> str | None:
    if not values:
        return None
    value = values[0].strip()  # the one the final delivery added
    if value.replace(" ", "") in ("<>", ""):
        return ""
    addrs = _addresses([value])
    return addrs[0] if addrs else value.strip("<> ").lower()


_MSGID_RE = re.compile(r"<([^<>\s]{1,500})>")


def _message_ids(values: Sequence[str]) -> tuple[str, ...]:
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


def _trim_ids(ids: tuple[str, ...]) -> tuple[str, ...]:
    if len(ids) <= MAX_IDS:
        return ids
    return (ids[0], *ids[-(MAX_IDS - 1) :])


def _token_pattern(template: str) -> re.Pattern[str]:
    if template.count("{token}") != 1:
        raise ValueError(f"reply address template needs exactly one {{token}}: {template!r}")
    address = template.strip()
    if "<" in address and ">" in address:  # "Name <reply+{token}@host>"
        address = address[address.rindex("<") + 1 : address.rindex(">")]
    before, after = address.split("{token}")
    return re.compile(re.escape(before) + r"([a-z2-7]{26,})" + re.escape(after), re.IGNORECASE)


def _tokens(msg: Message, token_re: re.Pattern[str]) -> tuple[str, ...]:
    out: list[str] = []
    for name in RECIPIENT_HEADERS:
        for addr in _addresses(_header_values(msg, name)):
            match = token_re.fullmatch(addr)
            if match:
                token = match.group(1).lower()
                if is_token(token) and token not in out:
                    out.append(token)
    return tuple(out)


# ---------------------------------------------------------------------------------------------
# automatic_reason
# ---------------------------------------------------------------------------------------------

_REPORT_KINDS = {
    "delivery-status": "bounce",
    "global-delivery-status": "bounce",
    "disposition-notification": "read-receipt",
    "global-disposition-notification": "read-receipt",
    "feedback-report": "feedback-report",
}
_AUTOREPLY_HEADERS = (
    "X-Autoreply",
    "X-Autorespond",
    "X-Autoresponder",
    "X-Auto-Reply",
    "X-Autogenerated",
    "X-Mail-Autoreply",
    "X-Autoreply-From",
    "X-Is-Autoreply",
)
_PRECEDENCE = frozenset({"bulk", "junk", "list", "auto_reply", "auto-reply"})
_DAEMONS = frozenset(
    {"mailer-daemon", "postmaster", "post_master", "post-master", "mail-daemon", "mailerdaemon",
     "mail.daemon", "mdaemon", "mailer_daemon"}
)  # fmt: skip
_NO_REPLY = re.compile(
    r"^(?:no[-_.]?reply|do[-_.]?not[-_.]?reply|ne[-_.]?pas[-_.]?r[ée]pondre|"
    r"pas[-_.]?de[-_.]?r[ée]ponse|nepasrepondre|noreponse|no[-_.]?response)(?:[-_.+].*)?$"
)
_LIST_HEADERS = frozenset(
    {"list-id", "list-unsubscribe", "list-subscribe", "list-post", "list-help", "list-owner",
     "list-archive", "x-mlserver", "x-ml-name", "x-mailing-list", "mailing-list"}
)  # fmt: skip

# Subjects that only machines write, at the very start of the subject (a person's reply starts
# with "Re:"/"RE :"/"TR :"). English and French, plus the common bounce wordings.
_AUTO_REPLY_SUBJECT = re.compile(
    r"^\s*(?:\[[^\]]{0,40}\]\s*)?(?:"
    r"auto(?:matic)?[ -]?(?:reply|response|answer)|auto:|autoreply|autoresponse|"
    r"out of (?:the )?office|ooo\b|away from (?:the )?office|on vacation|vacation reply|"
    r"r[ée]ponse automatique|r[ée]ponse auto\b|message automatique|absence du bureau|"
    r"absent(?:e)? du bureau|absence\s*:|en vacances|"
    r"abwesenheitsnotiz|automatische antwort|risposta automatica|respuesta autom[áa]tica"
    r")",
    re.IGNORECASE,
)
_BOUNCE_SUBJECT = re.compile(
    r"^\s*(?:\[[^\]]{0,40}\]\s*)?(?:"
    r"undeliver(?:able|ed)|undelivered mail|delivery (?:status )?notification|"
    r"delivery (?:failure|failed|has failed|problem|report|delayed|notification|incomplete)|"
    r"mail delivery (?:failed|failure|system|subsystem|notification|error|delayed)|"
    r"returned mail|return(?:ed)? to sender|mail returned|failure notice|failed mail|"
    r"message (?:not delivered|delivery failure|could not be delivered|undeliverable)|"
    r"could not send message|warning: (?:could not send|message .{0,40}delayed)|delayed mail|"
    r"non remis|non distribuable|rapport de non-remise|[ée]chec de (?:la )?remise|"
    r"notification d'[ée]tat de (?:la )?remise|remise diff[ée]r[ée]e|"
    r"mail system error|nondeliverable|non-delivery|nicht zustellbar|unzustellbar|"
    r"delivery status|dsn:|bounce"
    r")",
    re.IGNORECASE,
)
_FEEDBACK_SUBJECT = re.compile(
    r"^\s*(?:complaint about message from|abuse report|feedback report|spam report)",
    re.IGNORECASE,
)
_RECEIPT_SUBJECT = re.compile(
    r"^\s*(?:read|not read|lu|non lu|read receipt|accusé de (?:lecture|réception)|"
    r"return receipt|gelesen|ungelesen)\s*:",
    re.IGNORECASE,
)


def automatic_reason(msg: Message, *, own_addresses: Sequence[str] = ()) -> str | None:
    """Why `msg` was written by a machine and must never be texted, or None.

    Looks at: our own X-SMS311-* headers or a From that is one of `own_addresses` ("loop");
    multipart/report and message/delivery-status, disposition-notification or feedback-report
    parts (bounce, read receipt, feedback report); RFC 3834 Auto-Submitted other than "no";
    X-Autoreply / X-Autorespond; X-Failed-Recipients; Precedence bulk/junk/list/auto_reply;
    List-Id / List-Unsubscribe (mailing lists); the null return path "<>"; From MAILER-DAEMON
    or postmaster; and the usual English and French machine subjects ("Automatic reply",
    "Réponse automatique", "Undeliverable", "Non remis", "Read:", "Lu :", …).

    X-Auto-Response-Suppress is deliberately not used: Outlook and Exchange put it on ordinary
    mail too (it asks others not to auto-reply; it does not say this mail is one).
    """
    keys = {k.lower() for k in msg}
    own = {a.lower() for a in _addresses(own_addresses)}
    sender = _first_address(_header_values(msg, "From"))
    if any(k.startswith(OWN_HEADER_PREFIX) for k in keys):
        return "loop: X-SMS311 header"
    if sender and sender in own:
        return "loop: from the gateway itself"

    ctype = _content_type(msg)
    if ctype == "multipart/report":
        report = (_param(msg, "report-type") or "").lower()
        return f"{_REPORT_KINDS.get(report, 'bounce')}: multipart/report"
    for part in _parts(msg, into_attached=False):
        sub = _content_type(part)
        if sub.startswith("message/") and sub[8:] in _REPORT_KINDS:
            return f"{_REPORT_KINDS[sub[8:]]}: {sub}"

    auto_submitted = " ".join(_header_values(msg, "Auto-Submitted")).strip().lower()
    if auto_submitted and not auto_submitted.startswith("no"):
        return f"auto-reply: Auto-Submitted {auto_submitted.split(';')[0].strip()}"[:80]
    for name in _AUTOREPLY_HEADERS:
        if name.lower() in keys:
            value = " ".join(_header_values(msg, name)).strip().lower()
            if value not in ("no", "false", "0"):
                return f"auto-reply: {name}"
    if "x-failed-recipients" in keys:
        return "bounce: X-Failed-Recipients"
    local = sender.split("@", 1)[0]
    if local in _DAEMONS:
        return f"bounce: from {local}"
    if _NO_REPLY.match(local):
        return "bulk: no-reply sender"

    subject = _one_line(" ".join(_header_values(msg, "Subject")))
    if _BOUNCE_SUBJECT.match(subject):
        return "bounce: subject"
    if _FEEDBACK_SUBJECT.match(subject):
        return "feedback-report: subject"
    if _RECEIPT_SUBJECT.match(subject):
        return "read-receipt: subject"
    if _AUTO_REPLY_SUBJECT.match(subject):
        return "auto-reply: subject"

    precedence = " ".join(_header_values(msg, "Precedence")).strip().lower()
    if precedence in _PRECEDENCE:
        return f"bulk: Precedence {precedence}"
    listed = sorted(keys & _LIST_HEADERS)
    if listed:
        return f"mailing-list: {listed[0]}"
    return_path = _return_path(_header_values(msg, "Return-Path"))
    if return_path == "":
        return "bounce: null return path"
    return None


def _content_type(part: Message) -> str:
    try:
        return part.get_content_type().lower()
    except Exception:
        return "text/plain"


def _param(part: Message, name: str) -> str | None:
    try:
        value = part.get_param(name)
    except Exception:
        return None
    if isinstance(value, tuple):  # RFC 2231 (charset, language, value)
        value = value[2]
    return _clean(str(value)) if value is not None else None


def _parts(msg: Message, *, into_attached: bool) -> Iterator[Message]:
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
        if children and (into_attached or not _content_type(part).startswith("message/")):
            stack.extend((c, depth + 1) for c in reversed(children))


# ---------------------------------------------------------------------------------------------
# body and charsets
# ---------------------------------------------------------------------------------------------

_LATIN = frozenset(
    {
        "iso-8859-1", "iso8859-1", "latin-1", "latin1", "l1", "iso_8859-1", "cp819",
        "windows-1252", "cp1252", "iso-8859-15", "iso8859-15", "latin-9", "latin9",
    }
)  # fmt: skip
_UNKNOWN = frozenset(
    {"", "us-ascii", "ascii", "unknown-8bit", "x-unknown", "unknown", "default", "8bit",
     "7bit", "binary", "none", "charset", "x-user-defined"}
)  # fmt: skip


def _decode_bytes(data: bytes, declared: str | None, *, truncated: bool = False) -> str:
    """Text from `data`: the declared charset if it decodes, else UTF-8, else Windows-1252,
    else Latin-1 (which always decodes). A declared Latin-1 family charset on bytes that are
    valid non-ASCII UTF-8 is taken as the common mislabelling it is. Never raises."""
    charset = (declared or "").strip().strip("\"'").lower()
    if charset in _UNKNOWN:
        charset = ""
    # A byte-order mark is believed when the label does not contradict it. (UTF-16 labelled
    # utf-8 has usually lost its byte alignment on the way, e.g. to CRLF conversion; the
    # reply service then refuses it as unreadable rather than texting garbage.)
    for bom, codec in _BOMS:
        if data.startswith(bom) and (
            not charset or codec == "utf-8" or charset.startswith(codec[:6])
        ):
            text = _try_decode(data[len(bom):], codec, truncated=truncated)
            if text is not None:
                return text
    candidates: list[str] = []
    if charset in _LATIN:
        candidates = ["utf-8", "cp1252"] if not data.isascii() else ["ascii"]
    elif charset:
        candidates = [charset, "utf-8", "cp1252"]
    else:
        candidates = ["utf-8", "cp1252"]
    for name in candidates:
        text = _try_decode(data, name, truncated=truncated)
        if text is not None:
            return text
    return data.decode("latin-1")


def _try_decode(data: bytes, charset: str, *, truncated: bool) -> str | None:
    try:
        if truncated:  # a cut multi-byte sequence at the end is dropped, not an error
            return str(codecs.getincrementaldecoder(charset)("strict").decode(data, final=False))
        return data.decode(charset)
    except Exception:  # unknown or non-text codec, or bytes it cannot decode
        return None


_BOMS = (
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
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


def _is_attachment(part: Message) -> bool:
    try:
        return part.get_content_disposition() == "attachment"
    except Exception:
        return False


def _body(msg: Message) -> tuple[str, bool, bool, bool]:
    """(text, is_html, format=flowed, delsp) of the part to read: the first inline text/plain
    part with some text, else the first inline text/html part, else ""."""
    html: Message | None = None
    for part in _parts(msg, into_attached=False):
        ctype = _content_type(part)
        if ctype not in ("text/plain", "text/html") or _is_attachment(part):
            continue
        if ctype == "text/plain":
            text = _part_text(part)
            if text.strip():
                flowed = (_param(part, "format") or "").lower() == "flowed"
                delsp = (_param(part, "delsp") or "").lower() == "yes"
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
    return _decode_bytes(data, charset, truncated=truncated)


def _unflow(text: str, delsp: bool) -> str:
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


# ---------------------------------------------------------------------------------------------
# HTML to text
# ---------------------------------------------------------------------------------------------

_BLOCKS = frozenset(
    {
        "address", "article", "aside", "blockquote", "center", "dd", "div", "dl", "dt",
        "fieldset", "figcaption", "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5",
        "h6", "header", "hr", "li", "main", "nav", "ol", "p", "pre", "section", "table",
        "tbody", "tfoot", "thead", "tr", "ul", "caption",
    }
)  # fmt: skip
_SKIP = frozenset(
    {"head", "style", "script", "title", "template", "xml", "svg", "object", "iframe",
     "noscript", "select", "button", "map"}
)  # fmt: skip
_VOID = frozenset(
    {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param",
     "source", "track", "wbr", "basefont", "frame", "keygen"}
)  # fmt: skip
# Containers whose content is quoted history (rendered as "> " lines).
_QUOTE_CLASSES = ("gmail_quote", "yahoo_quoted", "moz-cite-prefix", "protonmail_quote")
# Elements from which the rest of the document is quoted history (Outlook and friends).
_REST_IDS = (
    "divrplyfwdmsg", "olk_src_body_section", "mail-editor-reference-message-container",
    "stopspelling", "appendonsend", "zwchr", "origbody",
)  # fmt: skip
_REST_CLASSES = ("outlookmessageheader", "gmail_quote_container", "zmail_extra", "wmquote")
_SIGNATURE_MARKS = ("gmail_signature", "moz-signature", "applemailsignature", "signature")


@dataclass
class _Open:
    """An open HTML element, as the converter tracks it."""

    tag: str
    quote: bool = False
    skip: bool = False
    pre: bool = False
    paragraph: bool = False  # a <p> that is followed by a blank line (not Outlook's MsoNormal)


class _HtmlText(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.lines: list[str] = []
        self._line: list[str] = []
        self._line_depth = 0
        self._stack: list[_Open] = []
        self._quote = 0
        self._skip = 0
        self._pre = 0
        self._rest_quoted = False
        self._lists: list[int] = []  # per open list: item counter (-1 for ul)
        self._anchor: str | None = None  # href of the open <a>
        self._anchor_text: list[str] = []

    # -- output -----------------------------------------------------------------------
    def _depth(self) -> int:
        return self._quote + (1 if self._rest_quoted else 0)

    def _write(self, text: str) -> None:
        if not self._line:
            self._line_depth = self._depth()
            if not self._pre:
                text = text.lstrip(" ")
                if not text:
                    return
        elif not self._pre and self._line[-1].endswith(" ") and text.startswith(" "):
            text = text.lstrip(" ")
        if text:
            self._line.append(text)
            if self._anchor is not None:
                self._anchor_text.append(text)

    def _flush(self, *, blank: bool = False) -> None:
        """End the current line (if any); then add a blank line if `blank`."""
        if self._line:
            text = "".join(self._line).replace("\xa0", " ")
            self._line = []
            self.lines.append(("> " * self._line_depth + text).rstrip())
        if blank:
            self.lines.append(("> " * self._depth()).rstrip())

    # -- parser callbacks --------------------------------------------------------------
    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        tag = tag.lower()
        attr = {k.lower(): (v or "") for k, v in attrs}
        ident = attr.get("id", "").lower().removeprefix("x_")
        cls = attr.get("class", "").lower()
        style = attr.get("style", "").lower().replace(" ", "")
        if tag == "br":
            if not self._skip:
                if self._line:
                    self._flush()
                else:
                    self._flush(blank=True)
            return
        marked = bool(ident or cls or style)
        if (
            marked
            and not self._skip
            and (
                any(ident.startswith(r) for r in _REST_IDS)
                or any(c in cls for c in _REST_CLASSES)
                or (
                    tag in ("div", "p", "table", "td")
                    and "border-top" in style
                    and "solid" in style
                    and "border-top:none" not in style
                )
            )
        ):
            self._flush()
            self._rest_quoted = True  # Outlook's reply header: the rest is the original
        if tag == "hr":
            if not self._skip:
                self._flush(blank=True)
            return
        if tag in _VOID or len(self._stack) >= MAX_HTML_DEPTH:
            return
        quote = tag == "blockquote" or (marked and any(c in cls for c in _QUOTE_CLASSES))
        skip = tag in _SKIP or "display:none" in style or "hidden" in attr
        signature = marked and any(s in cls or s in ident for s in _SIGNATURE_MARKS)
        signature = signature or attr.get("data-signatureblock", "").lower() == "true"
        element = _Open(
            tag,
            quote=quote,
            skip=skip,
            pre=tag == "pre",
            paragraph=tag == "p" and "msonormal" not in cls,
        )
        if tag in _BLOCKS or quote or signature:
            self._flush()
        self._stack.append(element)
        self._quote += quote
        self._skip += skip
        self._pre += element.pre
        if self._skip:
            return
        if signature:
            self.lines.append("-- ")
        if tag in ("ul", "ol"):
            self._lists.append(0 if tag == "ol" else -1)
        elif tag == "li":
            marker = "- "
            if self._lists and self._lists[-1] >= 0:
                self._lists[-1] += 1
                marker = f"{self._lists[-1]}. "
            self._write(marker)
        elif tag in ("td", "th") and self._line:
            self._write(" ")
        elif tag == "a":
            self._anchor = attr.get("href", "")
            self._anchor_text = []

    def handle_endtag(self, tag: str) -> None:
        tag = tag.lower()
        if tag in _VOID or not any(e.tag == tag for e in self._stack):
            return
        while self._stack:
            element = self._stack.pop()
            if element.tag in _BLOCKS or element.quote:
                self._flush()
            if element.tag == "a":
                self._end_anchor()
            if element.paragraph and not self._skip:
                self._flush(blank=True)
            self._quote -= element.quote
            self._skip -= element.skip
            self._pre -= element.pre
            if element.tag in ("ul", "ol") and self._lists:
                self._lists.pop()
            if element.tag == tag:
                break

    def _end_anchor(self) -> None:
        href = (self._anchor or "").strip()
        text = "".join(self._anchor_text)
        self._anchor = None
        self._anchor_text = []
        if self._skip or not href.lower().startswith(("http://", "https://")):
            return
        href = _unwrap_safelink(href)
        bare = re.sub(r"^https?://(?:www\.)?", "", href, flags=re.IGNORECASE).rstrip("/")
        if text.strip() and bare.lower() not in text.lower():
            self._write(f" ({href})")

    def handle_data(self, data: str) -> None:
        if self._skip:
            return
        if self._pre:
            for i, piece in enumerate(data.replace("\r\n", "\n").split("\n")):
                if i:
                    self._flush(blank=not self._line)
                if piece:
                    self._write(piece)
            return
        text = re.sub(r"[ \t\r\n\f\v]+", " ", data)
        if text:
            self._write(text)

    def close(self) -> None:
        super().close()
        while self._stack:
            self.handle_endtag(self._stack[-1].tag)
        self._flush()


def _unwrap_safelink(href: str) -> str:
    try:
        parts = urlsplit(href)
        if parts.hostname and parts.hostname.endswith("safelinks.protection.outlook.com"):
            target = parse_qs(parts.query).get("url")
            if target:
                return target[0]
    except ValueError:
        return href
    return href


def html_to_text(html: str) -> str:
    """The text a reader sees in `html`, one line per block or <br>.

    Entities are decoded; head, style and script are dropped; lists become "- " / "1. " lines;
    links keep their address in brackets when the text does not show it. Quoted history is
    rendered as "> " lines so that `visible_text` can cut it: <blockquote> (Gmail, Apple Mail
    type=cite, Thunderbird), Gmail's gmail_quote and Yahoo's yahoo_quoted containers, and
    everything from Outlook's reply header (divRplyFwdMsg, the border-top header block,
    OLK_SRC_BODY_SECTION, Hotmail's stopSpelling) to the end. Signature containers
    (gmail_signature, moz-signature, …) are preceded by a "-- " line. Never raises.
    """
    parser = _HtmlText()
    try:
        parser.feed(html[:MAX_TEXT_BYTES])
        parser.close()
    except Exception:  # html.parser is lenient; keep what was read so far
        parser._flush()
    return _tidy("\n".join(parser.lines))


# ---------------------------------------------------------------------------------------------
# visible text
# ---------------------------------------------------------------------------------------------

_CONTROL_RE = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")
_INVISIBLE = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff\u00ad\u200e\u200f"), None)

_WROTE = (
    r"wrote|writes|sent|a\s+[ée]crit|schrieb|schreef|geschreven|napisa[łl]|skrev|"
    r"đã viết|escribi[óo]|escreveu|ha scritto|napsal|kirjoitti|написал[а]?|пишет"
)
_WROTE_RE = re.compile(rf"\b(?:{_WROTE})\b", re.IGNORECASE)
_INTRO = r"On|Le|Am|Op|El|Il|Em|Den|På|W dniu|Vào|Dne|Il giorno"
# "On <date>, <name> wrote:" (and French, German, Dutch, … forms), maybe after reply text on the
# same line ("reply On … wrote:") or between dashes ("-----On … wrote-----").
_ATTRIBUTION_RE = re.compile(
    rf"^(?P<prefix>.*?)[\s-]*(?<![\w'’])(?:{_INTRO})\s(?P<body>.*)$", re.IGNORECASE | re.DOTALL
)
_ENDS_LIKE_ATTRIBUTION = re.compile(rf"(?:(?:{_WROTE})\s*:?|:|>)\s*-*\s*$", re.IGNORECASE)
_STARTS_WITH_DATE = re.compile(r"^\d{1,4}[./-]\d{1,2}[./-]\d{1,4}\b")
_DASH_WROTE_RE = re.compile(rf"^-{{2,}}\s*.{{1,120}}\s(?:{_WROTE})\s*:?\s*-{{2,}}$", re.I)
_NAME_WROTE_RE = re.compile(
    rf"^.{{0,200}}?(?:<[^<>\s]*@[^<>\s]*>|\S@\S|\d).{{0,200}}\s(?:{_WROTE})\s*:\s*$",
    re.IGNORECASE,
)
_DATE_EMAIL_RE = re.compile(
    r"^\d{1,4}[./-]\d{1,2}[./-]\d{1,4}\b.{0,160}(?:<\s*\S+@\S+\s*>|\S+@\S+)\s*:?\s*$"
)
_TIME_RE = re.compile(r"\d{1,2}:\d{2}")
_SEPARATOR_RE = re.compile(
    r"^\s*-{2,}\s*(?:original message|reply message|message d'origine|message original|"
    r"courriel original|ursprüngliche nachricht|antwort nachricht|oprindelig meddelelse|"
    r"mensaje original|messaggio originale|mensagem original|oorspronkelijk bericht|"
    r"originalmeddelande|opprinnelig melding|alkuperäinen viesti)\s*-{2,}\s*$",
    re.IGNORECASE,
)
_UNDERSCORES_RE = re.compile(r"^\s*_{10,}\s*$")
_FORWARD_RE = re.compile(
    r"^\s*(?:-{2,}\s*(?:forwarded message|message transf[ée]r[ée]|weitergeleitete nachricht|"
    r"mensaje reenviado|messaggio inoltrato)\s*-{2,}|begin forwarded message:|"
    r"d[ée]but du message r[ée]exp[ée]di[ée]\s*:)\s*$",
    re.IGNORECASE,
)
_FROM_NAMES = r"from|de|von|fra|från|van|da|od|от"
_DATE_NAMES = (
    r"sent|date|envoy[ée]|gesendet|datum|sendt|skickat|verzonden|enviado|inviato|дата|"
    r"отправлено"
)
_OTHER_NAMES = (
    r"to|cc|bcc|subject|reply-to|à|a|objet|an|betreff|kopie|til|emne|till|ämne|aan|"
    r"onderwerp|para|asunto|oggetto|assunto|кому|тема|копия|importance|priority|priorité"
)
_HEADER_RE = re.compile(
    rf"^\s*[*_]{{0,2}}\s*(?P<name>{_FROM_NAMES}|{_DATE_NAMES}|{_OTHER_NAMES})\s*[*_]{{0,2}}\s*:"
    r"(?!//)",
    re.IGNORECASE,
)
_FROM_RE = re.compile(_FROM_NAMES, re.IGNORECASE)
_DATE_RE = re.compile(_DATE_NAMES, re.IGNORECASE)
_SUBJECT_RE = re.compile(
    r"subject|objet|betreff|emne|ämne|onderwerp|asunto|oggetto|assunto|тема", re.IGNORECASE
)
_DATED_TIME_RE = re.compile(
    r"(?:19|20)\d\d\b.{0,40}\b\d{1,2}:\d{2}|\d{1,2}:\d{2}.{0,40}\b(?:19|20)\d\d\b"
)
_HEADER_START_RE = re.compile(
    rf"^\s*[*_]{{0,2}}\s*(?:{_FROM_NAMES}|{_DATE_NAMES})\s*[*_]{{0,2}}\s*:(?!//)", re.IGNORECASE
)
_DEVICES = (
    r"(?:outlook|gmail|yahoo|aol|mail|samsung|galaxy|blackberry|iphone|ipad|android|proton|"
    r"mobile|phone|smartphone|tablet|verizon|bell|rogers|telus|huawei|pixel|motorola|nokia|"
    r"xiaomi|windows|bluemail|spark|edison|airmail|superhuman|newton|zoho|hotmail)\b"
)
# Device and app signatures ("Sent from my iPhone", "Envoyé de mon iPhone", "Get Outlook for
# iOS", …): the whole line, short, no sentence after it.
_MOBILE_SIGNATURE_RE = re.compile(
    r"^\s*(?:"
    r"sent from my [\w.'’&-]+(?: [\w.'’&()-]+){0,5}|"
    rf"sent (?:from|with|via|using|on) (?:the |a |an )?{_DEVICES}(?: [\w.'’&()-]+){{0,5}}|"
    r"get outlook for (?:ios|android|mac|windows)\S*|"
    r"(?:envoy[ée]|exp[ée]di[ée]) (?:de|depuis|à partir de|a partir de) (?:mon|ma) "
    r"[\w.'’&-]+(?: [\w.'’&()-]+){0,5}|"
    rf"(?:envoy[ée]|exp[ée]di[ée]) (?:avec|par|via|depuis|de) (?:l'application |l'appli |un |une )?"
    rf"{_DEVICES}(?: [\w.'’&()-]+){{0,5}}|"
    r"t[ée]l[ée]charger outlook pour (?:ios|android|mac|windows)\S*|"
    r"obtenir outlook pour (?:ios|android|mac|windows)\S*|"
    r"von meinem [\w .-]{1,40} gesendet"
    r")\s*\.?\s*$",
    re.IGNORECASE,
)
_DASH_NAME_RE = re.compile(r"^\s*-{1,2}\s?[A-ZÀ-Ý][\w.'’-]*(?: [A-ZÀ-Ý][\w.'’-]*){0,2}\s*$")
# A piece of a quoted link that a client wrapped onto an unquoted line.
_LINK_ARTIFACT_RE = re.compile(r"://|mailto:|^\S*(?:https?|\()\S*.*>\s*$|^(?=\S{8,}$)\S*[=&%]\S*$")


def _is_quote(line: str) -> bool:
    return line.lstrip(" \t").startswith(">")


def _is_blank(line: str) -> bool:
    return not line.strip()


def _next_nonblank(lines: Sequence[str], start: int, limit: int = 50) -> int:
    j = start
    end = min(len(lines), start + limit)
    while j < end and _is_blank(lines[j]):
        j += 1
    return j if j < end else len(lines)


def _header_group(name: str) -> str:
    name = name.lower()
    for group, pattern in (("from", _FROM_RE), ("date", _DATE_RE), ("subject", _SUBJECT_RE)):
        if pattern.fullmatch(name):
            return group
    return name


def _header_block_at(lines: Sequence[str], i: int) -> bool:
    """An Outlook-style header block ("From:/Sent:/To:/Subject:", "De :/Envoyé :/À :/Objet :",
    bold or asterisk variants) starts at line i: a From or Date line, then within the next
    lines more header lines: two of From/Date/Subject, or three names, or two names with an
    address or a dated time among them ("De : 8 h 30 / À : 16 h 30" is text, not a header)."""
    line = lines[i]
    if len(line) > _LONG_LINE or not _HEADER_START_RE.match(line):
        return False
    groups: set[str] = set()
    evidence = False
    seen = 0
    j = i
    while j < len(lines) and seen < 9:
        candidate = lines[j]
        j += 1
        seen += 1
        if len(candidate) > _LONG_LINE:
            break
        if _is_blank(candidate):
            continue
        evidence = evidence or "@" in candidate or bool(_DATED_TIME_RE.search(candidate))
        match = _HEADER_RE.match(candidate)
        if not match:
            continue
        groups.add(_header_group(match.group("name")))
        core = len(groups & {"from", "date", "subject"})
        if core >= 2 or len(groups) >= 3 or (len(groups) >= 2 and evidence):
            return True
    return False


def _attribution_at(lines: Sequence[str], i: int) -> tuple[int, str] | None:
    """A reply attribution ("On … wrote:", "Le … a écrit :", …) starting at line i, possibly
    wrapped over a few lines: (number of lines, text before it on the first line) or None."""
    first = lines[i].strip()
    if not first or len(first) > _LONG_LINE:
        return None
    joined = ""
    for k in range(1, 6):
        if i + k > len(lines):
            break
        piece = lines[i + k - 1].strip()
        if len(piece) > 300:
            break
        joined = f"{joined} {piece}".strip() if k > 1 else first
        if len(joined) > 400:
            break
        if k > 1 and first.endswith((".", "!", "?")):
            break
        if not _ENDS_LIKE_ATTRIBUTION.search(joined[-60:]):
            continue
        found = _match_attribution(joined, lines, i + k, first_line_only=(k == 1))
        if found is not None:
            return k, found
    return None


def _match_attribution(
    joined: str, lines: Sequence[str], after: int, *, first_line_only: bool
) -> str | None:
    """The text before the attribution in `joined` ("" if none) if `joined` (one line, or a
    few lines joined when `first_line_only` is False) is an attribution, else None."""
    if _WROTE_RE.search(joined):
        match = _ATTRIBUTION_RE.match(joined)
        if (
            match
            and re.search(r"\d|@", match.group("body"))
            and _WROTE_RE.search(match.group("body"))
        ):
            prefix = match.group("prefix").strip()
            if first_line_only or not prefix:
                return prefix
        if first_line_only and _DASH_WROTE_RE.match(joined):
            return ""
        if (first_line_only or _STARTS_WITH_DATE.match(joined)) and _NAME_WROTE_RE.match(joined):
            return ""
    nxt = _next_nonblank(lines, after)
    if not (nxt < len(lines) and _is_quote(lines[nxt])):
        return None
    if _DATE_EMAIL_RE.match(joined):
        return ""
    if (
        first_line_only
        and joined.endswith(":")
        and ("@" in joined or _TIME_RE.search(joined))
        and len(joined) <= 300
    ):
        return ""  # "<date>, <name> <address>:" right above the quote, in any language
    return None


def _skip_quote_block(lines: Sequence[str], j: int) -> int:
    """Index after the quote block starting at j (quote lines, blank lines, and link pieces
    that a client broke out of a quoted line)."""
    n = len(lines)
    while j < n:
        line = lines[j]
        if _is_quote(line) or _is_blank(line):
            j += 1
            continue
        nxt = _next_nonblank(lines, j + 1, limit=3)
        if (
            nxt < n
            and _is_quote(lines[nxt])
            and len(line) < 200
            and _LINK_ARTIFACT_RE.search(line.strip())
        ):
            j += 1
            continue
        break
    return j


def _quoted_attribution(line: str) -> bool:
    """`line` is a quoted "> On … wrote:" (iPhone and Apple Mail quote the attribution too)."""
    content = line.lstrip(" \t>").strip()
    if not content or len(content) > 400 or not _ENDS_LIKE_ATTRIBUTION.search(content[-60:]):
        return False
    return _match_attribution(content, (), 0, first_line_only=True) is not None


def _cut_history(lines: list[str], *, quotes_certain: bool) -> list[str]:
    """The lines above (and between) the quoted history."""
    quoted = [line for line in lines if _is_quote(line)]
    quotes_active = (
        quotes_certain or len(quoted) >= 3 or any(_quoted_attribution(q) for q in quoted[:50])
    )
    out: list[str] = []
    i = 0
    n = len(lines)
    while i < n:
        line = lines[i]
        if _is_blank(line):
            out.append("")
            i += 1
            continue
        if len(line) <= _LONG_LINE:
            if _FORWARD_RE.match(line):
                out.extend(lines[i:])
                break
            if _SEPARATOR_RE.match(line) or _UNDERSCORES_RE.match(line):
                break
            if _header_block_at(lines, i):
                break
        if _is_quote(line):
            if quotes_active:
                i = _skip_quote_block(lines, i)
                continue
            out.append(line)
            i += 1
            continue
        found = _attribution_at(lines, i)
        if found is not None:
            k, prefix = found
            if prefix:
                out.append(prefix)
            nxt = _next_nonblank(lines, i + k)
            if nxt < n and _is_quote(lines[nxt]):
                quotes_active = True
                i = _skip_quote_block(lines, nxt)
                continue
            break
        out.append(line)
        i += 1
    return out


def _cut_signature(lines: list[str]) -> list[str]:
    """The lines above the signature: the marked ones first ("-- ", "Sent from my iPhone",
    a last "-Name" line), then a trailing signature block with no marker or a mail
    disclaimer (rules and what is deliberately kept: gateway.rules.reading.signatures)."""
    lines = _cut_marked_signature(lines)
    start = signature_start(lines)
    return lines if start is None else lines[:start]


def _cut_marked_signature(lines: list[str]) -> list[str]:
    for idx, line in enumerate(lines):
        stripped = line.strip()
        if line.rstrip() in ("--", "—"):  # "-- " (RFC 3676), or without its space
            return lines[:idx]
        if len(stripped) <= 80 and _MOBILE_SIGNATURE_RE.match(stripped):
            return lines[:idx]
    # "-Name" as the last line (github's "^-\w" signature)
    last = len(lines) - 1
    while last >= 0 and _is_blank(lines[last]):
        last -= 1
    if last > 0 and _DASH_NAME_RE.match(lines[last]) and not lines[last].lstrip().startswith("- "):
        return lines[:last]
    return lines


def _tidy(text: str) -> str:
    """Trailing spaces off every line, at most one blank line in a row, no blank lines or
    separator lines at either end."""
    lines = [line.rstrip() for line in text.split("\n")]
    out: list[str] = []
    for line in lines:
        if not line and (not out or not out[-1]):
            continue
        out.append(line)
    while out and (not out[-1].strip() or re.fullmatch(r"\s*[-_=*~.]{3,}\s*", out[-1])):
        out.pop()
    return "\n".join(out).strip()


def _normalise(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\u2028", "\n")
    text = text.replace("\u2029", "\n\n").translate(_INVISIBLE).replace("\xa0", " ")
    return _CONTROL_RE.sub(" ", text.replace("\t", "    "))


def tidy_text(text: str) -> str:
    """Text someone typed, tidied the way a reply's visible text is (line ends, invisible and
    control characters, no-break spaces, tabs, trailing spaces, runs of blank lines) —
    nothing is cut: for text that has no quoted history or signature (the console's)."""
    return _tidy(_normalise(text))


def _visible(plain: str, *, quotes_certain: bool) -> tuple[str, bool, EmptyBecause | None]:
    """(visible text, close requested, why the text is empty or None)."""
    lines = _normalise(plain[: MAX_TEXT_BYTES * 2]).split("\n")
    kept = _cut_history(lines, quotes_certain=quotes_certain)
    close = False
    without_commands: list[str] = []
    for line in kept:
        if line.strip().casefold() in CLOSE_COMMANDS:
            close = True
            continue
        without_commands.append(line)
    text = _tidy("\n".join(_cut_signature(without_commands)))
    empty: EmptyBecause | None = None
    if not text:
        above_marker = _tidy("\n".join(_cut_marked_signature(without_commands)))
        below = not above_marker and _tidy("\n".join(without_commands))
        empty = "below_signature" if below else "nothing"
    return text, close, empty


def visible_text(plain: str) -> str:
    """Only what the writer of `plain` wrote: quoted history, signatures and the close
    command cut, whitespace tidied (see the module docstring)."""
    return _visible(plain, quotes_certain=False)[0]
