"""A text that did not arrive: one rule, whichever way the gateway learns it.

Two doors: the provider's delivery status callback (`record_delivery_report`, from
`POST /sms/status`) and the provider refusing a send outright (`record_refusal`, from the
worker's dispatcher). Both end in `_not_delivered`, in the same store transaction as
the message's new status:

- when the reason is "opted_out" (the resident texted STOP to the sender, e.g. Twilio's
  21610), the resident is marked opted out: nothing more is sent until START;
- the agent who wrote the reply (else the conversation's agent) gets a notice in the
  thread: "opted_out", or "delivery_failed" with the state and the provider's code.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from gateway.flows.payloads import SmsPayload
from gateway.flows.thread_mail import enqueue_notice
from gateway.rules.agent_notice import NOTICE_EXCERPT_CHARS
from gateway.settings import Settings
from gateway.sms.base import FAILED_STATES, DeliveryReport, PermanentReason, SmsPermanentError
from gateway.store import Conversation, Store, Tx


def record_delivery_report(store: Store, settings: Settings, report: DeliveryReport) -> bool:
    """Keep the status of our message `report.sid`; on a new failure, apply the rule
    above. False when the sid is not one of our outgoing messages (nothing done)."""
    with store.transaction() as tx:
        message = tx.message_by_provider_sid(report.sid)
        if message is None or message.direction != "out":
            return False
        newly_failed = report.failed and message.status not in FAILED_STATES
        tx.set_message_status(message.id, report.state, report.code)
        if not newly_failed or message.conversation_id is None:
            return True
        conversation = tx.get_conversation(message.conversation_id)
        if conversation is not None:
            _not_delivered(
                tx, settings, conversation,
                agent=message.agent_address or conversation.agent_address,
                body=message.body, state=report.state, code=report.code,
                reason=report.reason or "rejected",
            )
    return True


def record_refusal(
    store: Store, settings: Settings, sms: SmsPayload, error: SmsPermanentError
) -> None:
    """The provider refused the outbox SMS `sms` for good: its message is "failed" and
    the rule above applies."""
    with store.transaction() as tx:
        if sms.message_id is not None:
            tx.set_message_status(sms.message_id, "failed", error.code)
        if sms.conversation_id is None:
            return
        conversation = tx.get_conversation(sms.conversation_id)
        if conversation is None:
            return
        _not_delivered(
            tx, settings, conversation, agent=sms.agent or conversation.agent_address,
            body=sms.body, state="failed", code=error.code, reason=error.reason,
        )


def _not_delivered(
    tx: Tx,
    settings: Settings,
    conversation: Conversation,
    *,
    agent: str | None,
    body: str,
    state: str,
    code: int | None,
    reason: PermanentReason,
) -> None:
    resident = tx.get_resident(conversation.phone)
    opted_out = reason == "opted_out"
    if opted_out and resident is not None:
        tx.save_resident(replace(resident, opted_out=True))
    if not agent:
        return
    details: dict[str, Any] = {"reply_excerpt": body[:NOTICE_EXCERPT_CHARS]}
    if not opted_out:
        details |= {"status": state, "error_code": code}
    enqueue_notice(
        tx, settings, conversation, agent, "opted_out" if opted_out else "delivery_failed",
        details, language=resident.language if resident else "en",
    )
