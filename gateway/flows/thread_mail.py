"""Queueing an email in a conversation's thread: the one place that does it.

Every email the gateway sends — a resident's texts to the city (`gateway.flows.text_in`), a
notice to an agent about a reply (shortened, not sent, not delivered, not texted, a console
reply's copy: `enqueue_notice`) — takes its threading from `next_in_thread` (From, Reply-To
with the conversation's token, the stable subject, a new Message-ID, In-Reply-To and
References following the thread) and goes into the outbox through `queue_email`, which
records its Message-ID in the thread in the same transaction. A notice about an email that
belongs to no conversation answers that email instead (`answering`).

Used inside a store transaction, so the email is queued atomically with the state change
that caused it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from email.utils import parseaddr
from typing import Any, TypedDict

from gateway.rules.agent_notice import AgentNotice
from gateway.rules.resident_email import ResidentEmail
from gateway.rules.thread import new_message_id, next_thread_headers, reply_address
from gateway.settings import Settings
from gateway.store import Conversation, Tx

TOKEN_PATTERN = "[a-z2-7]{26,64}"  # noqa: S105 - the shape of a reply token, not a secret


def sender_domain(address: str) -> str:
    """The domain of an address like "311 Text <sms@gw.example>" (for Message-IDs)."""
    return parseaddr(address)[1].rpartition("@")[2] or "sms311.invalid"


def reply_address_pattern(template: str) -> re.Pattern[str]:
    """A regex matching the addresses `template` ("reply+{token}@gw.example") produces."""
    before, _, after = template.partition("{token}")
    return re.compile(
        f"^{re.escape(before)}({TOKEN_PATTERN}){re.escape(after)}$", re.IGNORECASE
    )


class Threading(TypedDict):
    """The fields every threaded email shares (keyword arguments of `ResidentEmail` and
    `AgentNotice`)."""

    from_address: str
    reply_to: str
    subject: str
    message_id: str
    in_reply_to: str | None
    references: tuple[str, ...]


def _threading(
    settings: Settings, thread_ids: Sequence[str], reply_to: str, subject: str
) -> Threading:
    in_reply_to, references = next_thread_headers(thread_ids)
    return Threading(
        from_address=settings.email.from_address,
        reply_to=reply_to,
        subject=subject,
        message_id=new_message_id(sender_domain(settings.email.from_address)),
        in_reply_to=in_reply_to,
        references=references,
    )


def next_in_thread(settings: Settings, conversation: Conversation) -> Threading:
    """The threading of the next email of `conversation`: Reply-To carries its token,
    In-Reply-To / References follow `conversation.thread_message_ids`, a new Message-ID."""
    return _threading(
        settings, conversation.thread_message_ids,
        reply_address(settings.email.reply_address, conversation.token), conversation.subject,
    )  # fmt: skip


def answering(settings: Settings, message_ids: Sequence[str], subject: str) -> Threading:
    """The threading of an email answering one that belongs to no conversation (its
    References then its Message-ID in `message_ids`): Reply-To is the gateway's own From
    address, since there is no conversation token to carry."""
    return _threading(settings, message_ids, settings.email.from_address, subject)


def queue_email(tx: Tx, email: ResidentEmail | AgentNotice) -> str:
    """Put `email` in the outbox and, when it belongs to a conversation, its Message-ID in
    that conversation's thread (so a reply to it routes back, and the next email of the
    thread follows it). Returns the Message-ID."""
    if email.conversation_id is not None:
        tx.record_thread_email(email.conversation_id, email.message_id)
    tx.enqueue("email", email.to_dict())
    return email.message_id


def enqueue_notice(
    tx: Tx,
    settings: Settings,
    conversation: Conversation,
    to: str,
    kind: str,
    details: dict[str, Any],
    *,
    language: str = "en",
    cc: tuple[str, ...] = (),
) -> str:
    """Queue an `AgentNotice` to `to` (and `cc`), threaded into `conversation`.

    In-Reply-To / References follow `conversation.thread_message_ids`; the notice's new
    Message-ID is recorded in the thread (so a reply to the notice routes back to the
    conversation, and the next email of the thread follows it) and returned. To queue a
    second email in the same transaction, pass a `conversation` whose
    `thread_message_ids` end with that returned id (or read it again).
    """
    notice = AgentNotice(
        conversation_id=conversation.id, to=(to,), cc=cc, language=language, kind=kind,
        details=details, **next_in_thread(settings, conversation),
    )  # fmt: skip
    return queue_email(tx, notice)
