"""Telling an agent, by email in the conversation's thread, what happened to a reply:
shortened, not sent (the resident opted out), or not delivered; and copying a reply
written in the web console into the thread ("console_reply", see `gateway.flows.agent_reply`).

Used inside a store transaction, so the notice is queued atomically with the state
change that caused it.
"""

from __future__ import annotations

import re
from email.utils import parseaddr
from typing import Any

from gateway.rules import emails
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
    message_id = emails.new_message_id(sender_domain(settings.email.from_address))
    in_reply_to, references = emails.next_thread_headers(conversation.thread_message_ids)
    notice = emails.AgentNotice(
        conversation_id=conversation.id,
        from_address=settings.email.from_address,
        to=(to,),
        cc=cc,
        reply_to=emails.reply_address(settings.email.reply_address, conversation.token),
        subject=conversation.subject,
        message_id=message_id,
        in_reply_to=in_reply_to,
        references=references,
        language=language,
        kind=kind,
        details=details,
    )
    tx.record_thread_email(conversation.id, message_id)
    tx.enqueue("email", notice.to_dict())
    return message_id
