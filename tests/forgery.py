"""Forged (and genuine) agents' replies, as raw bytes, for tests/test_forged_replies.py.

    keys = Keys(); keys.add("ottawa.example")        # a test RSA key, published in a stub DNS
    raw = reply(to_email, "Crew sent.")              # a mail client's reply, NOT authenticated
    raw = stamped(raw, "test.mx; dmarc=pass header.from=ottawa.example")   # an A-R on top
    raw = keys.sign(raw, "ottawa.example")           # a DKIM signature on top (dkimpy)
    gateway.dkim_dns = keys.dns                      # the gateway looks its keys up there

`reply(...)` writes the header section by hand (CRLF line endings, every header exactly as
given, however odd: `from_values` may hold several From values or values no library would
write), so the bytes the gateway reads are the bytes the test meant. `flat_parts_mail`
builds the MIME bomb of issue 15: ~2 MB of ~200,000 flat parts.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from email.utils import make_msgid

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.rules.resident_email import ResidentEmail

CRLF = b"\r\n"


class Keys:
    """A test RSA key per (selector, domain), published in a stub DNS (a dict) that the
    gateway is given as its DKIM `dnsfunc` (`Gateway.dkim_dns`)."""

    def __init__(self) -> None:
        self.records: dict[str, bytes] = {}
        self.private: dict[tuple[str, str], bytes] = {}
        self.lookups: list[str] = []

    def add(self, domain: str, selector: str = "sel1", *, publish: bool = True) -> None:
        """A new key for `selector._domainkey.domain`; `publish=False` keeps it out of DNS
        (a key nobody can check: the signature must not count)."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.private[(selector, domain)] = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )  # fmt: skip
        if publish:
            public = key.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            self.records[f"{selector}._domainkey.{domain}"] = (
                b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)
            )

    def sign(
        self, raw: bytes, domain: str, selector: str = "sel1", *, length: bool = False,
        headers: Sequence[str] = ("from", "to", "subject", "message-id", "in-reply-to",
                                  "references"),
    ) -> bytes:  # fmt: skip
        """`raw` with a DKIM-Signature by `domain` on top (relaxed/simple, as most signers),
        signing `headers` (Microsoft 365 signs no To, Cc, In-Reply-To nor References);
        `length=True` adds `l=` (the body length signed: anything appended stays "valid")."""
        signature: bytes = dkim.sign(
            raw, selector.encode(), domain.encode(), self.private[(selector, domain)],
            include_headers=[h.encode() for h in headers], length=length,
        )  # fmt: skip
        return signature + raw

    def dns(self, name: bytes | str, timeout: float = 5) -> bytes | None:
        """dkimpy's `dnsfunc`: the TXT record at `name`, from the dict."""
        text = (name.decode() if isinstance(name, bytes) else name).rstrip(".")
        self.lookups.append(text)
        return self.records.get(text)


def reply(
    to_email: ResidentEmail,
    body: str,
    *,
    from_values: Sequence[str] = ("Jane Doe <jane.doe@ottawa.example>",),
    token: bool = True,
    message_id: str | None = None,
    own_address: str = "sms@gateway.example",
) -> bytes:
    """An agent's answer to `to_email` as a mail client writes it (the history quoted
    below), with NO Authentication-Results. `from_values`: one From header per value,
    written as given. `token=False`: addressed to the gateway's From address
    (`own_address`) instead of the reply address, so only In-Reply-To/References route it.
    """
    headers: list[tuple[str, str]] = [("From", value) for value in from_values]
    headers += [
        ("To", to_email.reply_to if token else f"311 Text <{own_address}>"),
        ("Subject", "RE: " + to_email.subject),
        ("Date", "Sun, 22 Nov 2026 10:05:00 -0500"),
        ("Message-ID", message_id or make_msgid(domain="ottawa.example")),
        ("In-Reply-To", to_email.message_id),
        ("References", " ".join((*to_email.references, to_email.message_id))),
        ("MIME-Version", "1.0"),
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Content-Transfer-Encoding", "8bit"),
    ]
    quoted = "\n".join("> " + text.body for text in to_email.texts)
    text = f"{body}\n\nOn Sun, Nov 22, 2026 at 10:04 AM 311 Text <{own_address}> wrote:\n{quoted}\n"
    head = b"".join(f"{name}: {value}".encode() + CRLF for name, value in headers)
    return head + CRLF + text.encode().replace(b"\n", CRLF)


def agent_mail(sender: str, to: str, body: str) -> bytes:
    """An email an agent wrote to someone else (not to the gateway): what an outsider can
    get hold of, genuinely signed, by writing to the city and being answered."""
    head = (
        f"From: Jane Doe <{sender}>\r\nTo: {to}\r\nSubject: RE: A question about fees\r\n"
        "Date: Sun, 22 Nov 2026 09:00:00 -0500\r\n"
        f"Message-ID: {make_msgid(domain='ottawa.example')}\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n"
    )
    return head.encode() + CRLF + body.encode().replace(b"\n", CRLF) + CRLF


def stamped(raw: bytes, *values: str) -> bytes:
    """`raw` with Authentication-Results headers added on top: `values` top first (the first
    is the last one added, as each server adds its own above the others)."""
    return b"".join(f"Authentication-Results: {v}".encode() + CRLF for v in values) + raw


def flat_parts_mail(
    to: str, sender: str = "jane.doe@ottawa.example", parts: int = 200_000
) -> bytes:
    """Issue 15's MIME bomb: one multipart/mixed of `parts` flat, empty parts (~2 MB for
    200,000), which once cost the stdlib parser 10-23 s of CPU."""
    head = (
        f"From: Jane Doe <{sender}>\r\nTo: {to}\r\nSubject: RE: parts\r\n"
        f"Message-ID: {make_msgid(domain='ottawa.example')}\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
    ).encode()
    return head + b"--b\r\n\r\nx\r\n" * parts + b"--b--\r\n"
