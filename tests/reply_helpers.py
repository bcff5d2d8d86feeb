"""Shared by the reply-reading test modules (test_replies.py, test_replies_text.py): the
gateway's addresses and a thread's token, id and subject as an agent's reply carries them;
`raw_email` (one part, bytes exactly as given) and `alternative` (multipart/alternative)
build a reply, `parse` reads it as the gateway does.
"""

from __future__ import annotations

from email.message import EmailMessage

from gateway.rules.reading import ParsedReply, parse_reply

TEMPLATE = "reply+{token}@gateway.example.ca"
OWN = ("311 Text <sms@gateway.example.ca>",)
TOKEN = "abcdefghijklmnopqrstuvwxyz234567"
TOKEN2 = "zyxwvutsrqponmlkjihgfedcba765432"
REPLY_TO = f"reply+{TOKEN}@gateway.example.ca"
THREAD_ID = "<b7k2m4@gateway.example.ca>"
SUBJECT = "Re: 311 text from 613-555-0123 — Ottawa"


def raw_email(
    body: str | bytes,
    *,
    headers: dict[str, str] | None = None,
    content_type: str = "text/plain; charset=utf-8",
    cte: str = "8bit",
) -> bytes:
    """A single-part email exactly as given (no library re-encoding)."""
    base = {
        "From": "Marie Tremblay <marie.tremblay@ottawa.example>",
        "To": f"311 Text <{REPLY_TO}>",
        "Subject": SUBJECT,
        "Date": "Mon, 04 Mar 2024 10:20:00 -0500",
        "Message-ID": "<reply-1@ottawa.example>",
        "In-Reply-To": THREAD_ID,
        "References": THREAD_ID,
        "MIME-Version": "1.0",
        "Content-Type": content_type,
        "Content-Transfer-Encoding": cte,
    }
    for key, value in (headers or {}).items():
        if value == "":
            base.pop(key, None)
        else:
            base[key] = value
    head = "".join(f"{k}: {v}\r\n" for k, v in base.items()).encode("utf-8")
    data = body.encode("utf-8") if isinstance(body, str) else body
    return head + b"\r\n" + data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def alternative(
    plain: str | None, html: str | None, headers: dict[str, str] | None = None
) -> bytes:
    msg = EmailMessage()
    msg["From"] = "Marie Tremblay <marie.tremblay@ottawa.example>"
    msg["To"] = f"311 Text <{REPLY_TO}>"
    msg["Subject"] = SUBJECT
    msg["Message-ID"] = "<reply-2@ottawa.example>"
    msg["In-Reply-To"] = THREAD_ID
    for key, value in (headers or {}).items():
        del msg[key]
        msg[key] = value
    if plain is not None:
        msg.set_content(plain)
        if html is not None:
            msg.add_alternative(html, subtype="html")
    elif html is not None:
        msg.set_content(html, subtype="html")
    return msg.as_bytes()


def parse(raw: bytes) -> ParsedReply:
    return parse_reply(raw, reply_address=TEMPLATE, own_addresses=OWN)
