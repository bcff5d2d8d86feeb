"""Read an agent's reply email (no I/O): routing data, "automatic?", and the visible text.

`parse_reply(raw, reply_address=..., own_addresses=...)` turns the raw bytes of one email into a
`ParsedReply`:

- routing data: the conversation tokens found in the recipient headers the author wrote (To,
  Cc; never Delivered-To, X-Original-To or Envelope-To, which any server adds and no DKIM
  signature covers) that match the reply-address template ("reply+{token}@host"), the
  normalised Message-ID, In-Reply-To and References, and `repeated`: which of To, Cc,
  Message-ID, In-Reply-To, References came more than once (RFC 5322 allows one);
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
attachments and attached messages are skipped, and at most `MAX_PARTS` MIME parts are looked at;
before parsing, the raw message is cut at its `MAX_DASH_LINES`th line beginning with "--", so the
parser never builds more parts than that, whatever their kind.
The only exception `parse_reply` raises for bad input is `MalformedEmail`, and only when the
input has no header at all (it is not an email).

The rules were measured against the reply corpora in the test data (tests/data) and against the
maintained library `mail-parser-reply` (see tests/test_reply_corpora.py for the scores).

The modules, one job each (this package re-exports the public surface, `__all__`):

- `parse`: `parse_reply`, `ParsedReply`, `MalformedEmail`, `visible_text` — the pipeline;
- `limits`: the MAX_* bounds on the work done for one message;
- `headers`: header values, addresses, message ids, conversation tokens;
- `automatic`: `automatic_reason` — auto-replies, bounces, receipts, lists, loops;
- `charset`: bytes to text with fallbacks; `body`: MIME walking and the text part to read;
- `html`: `html_to_text`;
- `quotes`: attributions, Outlook header blocks, separators: cutting the quoted history;
- `signatures`: "-- " and device signatures, signature blocks with no marker, disclaimers;
- `tidy`: whitespace and invisible characters (`tidy_text`).
"""

from __future__ import annotations

from gateway.rules.reading.automatic import automatic_reason
from gateway.rules.reading.html import html_to_text
from gateway.rules.reading.limits import MAX_DASH_LINES, MAX_IDS, MAX_RAW_BYTES, MAX_TEXT_BYTES
from gateway.rules.reading.parse import (
    CLOSE_COMMANDS,
    EMPTY_BECAUSE,
    EmptyBecause,
    MalformedEmail,
    ParsedReply,
    parse_reply,
    visible_text,
)
from gateway.rules.reading.tidy import tidy_text

__all__ = [
    "CLOSE_COMMANDS",
    "EMPTY_BECAUSE",
    "MAX_DASH_LINES",
    "MAX_IDS",
    "MAX_RAW_BYTES",
    "MAX_TEXT_BYTES",
    "EmptyBecause",
    "MalformedEmail",
    "ParsedReply",
    "automatic_reason",
    "html_to_text",
    "parse_reply",
    "tidy_text",
    "visible_text",
]
