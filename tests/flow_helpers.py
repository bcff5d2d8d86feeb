"""Helpers that drive the flows over a `Gateway` in process: a resident texts (`text_in`),
an agent answers by email (`agent_reply` builds it, `handle` runs `ReplyService`), the
dispatcher sends (`dispatch`); and what the outbox holds (`emails_out`, `notices`,
`sms_rows`). Plain functions, shared by the reply tests; fixtures are in conftest.py.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from typing import Any

from gateway.app import Gateway
from gateway.mail.types import MailOrigin
from gateway.rules.agent_notice import AgentNotice
from gateway.rules.resident_email import ResidentEmail
from gateway.run.worker import Dispatcher
from gateway.sms.base import InboundText
from tests.fake_twilio import FakeTwilio
from tests.gateway_fixtures import migrated_gateway, stamp_authenticated

PHONE = "+16135550123"
AGENT = "jane.doe@ottawa.example"
ORIGIN = MailOrigin(kind="imap", mailbox="INBOX", uidvalidity=1, uid=1)


def twilio_sms(api: FakeTwilio, rate: float = 100) -> str:
    """The `sms:` section of a settings file that sends through the fake Twilio API."""
    return (
        "sms:\n  provider: twilio\n"
        f"  account_sid: {api.account_sid}\n  auth_token: {api.auth_token}\n"
        f'  sender: "31100"\n  api_base_url: {api.base_url}\n  max_per_second: {rate}\n'
    )


def twilio_gateway(folder: Path, api: FakeTwilio, extra: str = "", rate: float = 100) -> Gateway:
    """A `Gateway` over a migrated SQLite store in `folder`, sending through `api`.
    Close it with `.close()` (the `gateway` fixture does that for you)."""
    gateway: Gateway = migrated_gateway(folder, sms=twilio_sms(api, rate), extra=extra)
    return gateway


_sids = iter(range(10_000_000))


def text_in(gateway: Gateway, body: str, phone: str = PHONE,
            at: datetime | None = None) -> None:
    gateway.inbound.handle(InboundText(
        sid=f"SM{next(_sids):032d}", phone=phone, to="31100", body=body,
        received_at=at or datetime.now(UTC),
    ))


def emails_out(gateway: Gateway) -> list[ResidentEmail]:
    return [ResidentEmail.from_dict(i.payload) for i in gateway.store.list_outbox(None)
            if i.kind == "email" and i.payload.get("type", "resident") == "resident"]


def notices(gateway: Gateway) -> list[AgentNotice]:
    return [AgentNotice.from_dict(i.payload) for i in gateway.store.list_outbox(None)
            if i.kind == "email" and i.payload.get("type") == "notice"]


def sms_rows(gateway: Gateway) -> list[dict[str, Any]]:
    return [i.payload for i in gateway.store.list_outbox(None) if i.kind == "sms"]


def resident_in_ottawa(gateway: Gateway, phone: str = PHONE) -> ResidentEmail:
    text_in(gateway, "Pothole on Bank St at Gladstone", phone)
    text_in(gateway, "Ottawa", phone)
    return emails_out(gateway)[-1]


def agent_reply(
    to_email: ResidentEmail,
    body: str,
    *,
    sender: str = AGENT,
    token: bool = True,
    headers: dict[str, str] | None = None,
    authenticated: bool = True,
) -> bytes:
    """An agent's reply as a mail client writes it: quoted history below the answer; as the
    city's trusted mail server hands it over (its Authentication-Results on top) unless
    `authenticated` is False."""
    message = EmailMessage()
    message["From"] = f"Jane Doe <{sender}>"
    message["To"] = to_email.reply_to if token else "311@ottawa.example"
    message["Subject"] = "RE: " + to_email.subject
    message["Message-ID"] = make_msgid(domain="ottawa.example")
    message["In-Reply-To"] = to_email.message_id
    message["References"] = " ".join((*to_email.references, to_email.message_id))
    for name, value in (headers or {}).items():
        message[name] = value
    quoted = "\n".join("> " + t.body for t in to_email.texts)
    message.set_content(
        f"{body}\n\nOn Sun, Nov 22, 2026 at 10:04 AM 311 Text <sms@gateway.example> wrote:\n"
        f"{quoted}\n"
    )
    return stamp_authenticated(bytes(message)) if authenticated else bytes(message)


def handle(gateway: Gateway, raw: bytes) -> Any:
    return gateway.replies().handle(raw, ORIGIN)


def dispatch(gateway: Gateway) -> None:
    dispatcher = Dispatcher(gateway)
    while asyncio.run(dispatcher.dispatch_once()):
        pass


def unroutable(
    sender: str = AGENT, *, authenticated: bool = True, body: str = "Who is this?"
) -> bytes:
    """A new email (no token, no known thread) written to the gateway by `sender`, stamped
    by the trusted test server unless `authenticated=False`."""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = "sms@gateway.example"
    message["Subject"] = "pothole list"
    message["Message-ID"] = make_msgid(domain="ottawa.example")
    message["In-Reply-To"] = "<unknown@nowhere.example>"
    message.set_content(body)
    return stamp_authenticated(bytes(message)) if authenticated else bytes(message)
