"""One reply path for both doors: an agent's answer, from email or the web console, to SMS.

`queue_reply` is what an agent's reply becomes, whichever door it came in by: the
email side (`gateway.flows.reply_in.ReplyService`, via="email") and the staff web
console (via="console") both call it inside their store transaction, so both get the
same rules:

- a resident who texted STOP is never texted: the reply is stored with status
  "not_sent" and the agent is told;
- otherwise the reply is split with `gateway.rules.segments.split_for_sms` (typography made
  GSM-7 when that is enough, up to 1,600 characters as one message, beyond that up to
  5 numbered parts), stored with status "queued", and one outbox "sms" row is queued
  per part — the dispatcher paces them to the sender's rate like every other SMS, and
  the outbox row is committed with the message in one transaction, so a reply is
  texted once (the dispatcher's claims and provider look-ups do the rest);
- a reply that had to be cut gets a "shortened" notice to the agent, in the thread.

What differs by door:

- via="email": `text` is the visible text `gateway.rules.reading.parse_reply` extracted (it
  is already prepared); the opted-out case is told to the agent with an "opted_out"
  notice. This is exactly what `ReplyService` did before this module existed.
- via="console": `text` is what the agent typed; it is prepared as an email reply's
  text is (`prepare_text`: line ends, invisible and control characters, trailing
  spaces, runs of blank lines; the SMS typography is left to `split_for_sms`, as for
  email). In addition a COPY of the reply ("console_reply" notice, `gateway.rules.agent_notice`)
  is queued into the conversation's email thread, To the municipality's mailbox (Cc
  the conversation's sticky agent when that is another address), so mailbox users
  see the whole conversation, and pressing Reply on the copy answers the resident
  like any other email of the thread. When the resident opted out, that copy says the
  reply was NOT texted and no separate "opted_out" notice is sent: one email about
  one reply is enough (the console shows the outcome at once, `QueuedReply.opted_out`).

Not done here (the caller's business, as it is for email in `ReplyService`): checking
that the agent may answer this conversation, making the conversation stick to the
agent (`Tx.set_agent`), closing or touching it. No network I/O: everything is rows in
`tx`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import datetime
from email.utils import parseaddr
from typing import Literal, get_args

from gateway.flows.payloads import SmsPayload
from gateway.flows.thread_mail import enqueue_notice
from gateway.logs import mask_phone
from gateway.rules import reading, segments
from gateway.rules.agent_notice import NOTICE_EXCERPT_CHARS
from gateway.settings import Settings
from gateway.store import Conversation, Tx

log = logging.getLogger(__name__)

Via = Literal["email", "console"]
VIAS: tuple[Via, ...] = get_args(Via)

EXCERPT_CHARS = NOTICE_EXCERPT_CHARS  # of the reply, quoted in a notice to the agent
MAX_TEXT_CHARS = reading.MAX_TEXT_BYTES * 2  # what an email reply's text is cut to, too


@dataclass(frozen=True)
class QueuedReply:
    """What became of one reply.

    `message_id`: the stored outbound message (status "queued", or "not_sent" when the
    resident opted out); always set by `queue_reply` today, None is kept for callers
    that report a reply that was never stored. `parts`: SMS queued (0 when opted out).
    `shortened`: the reply had to be cut to fit (the agent is told by email).
    `opted_out`: the resident texted STOP, nothing was texted. `reason`: one line for
    the logs and the email Disposition ("texted in 2 part(s)", …).
    """

    message_id: int | None
    parts: int
    shortened: bool
    opted_out: bool
    reason: str


def prepare_text(text: str) -> str:
    """A console reply's text prepared the way an email reply's visible text is
    (`gateway.rules.reading`): CR LF / CR / U+2028 line ends to LF, U+2029 to a blank line,
    zero-width and direction marks removed, no-break spaces to spaces, tabs to four
    spaces, other control characters to spaces, trailing spaces cut, at most one blank
    line in a row, no blank or separator lines at the ends. At most `MAX_TEXT_CHARS`
    are read. Quotes and signatures are NOT cut (nothing is quoted in the console), and
    "#close" is not a command here. Typographic quotes and dashes are left to
    `segments.split_for_sms`, exactly as for email."""
    return reading.tidy_text(text[:MAX_TEXT_CHARS])


def _address(value: str | None) -> str:
    return parseaddr(value or "")[1].strip().lower()


def queue_reply(
    tx: Tx,
    settings: Settings,
    conversation: Conversation,
    *,
    agent: str,
    text: str,
    now: datetime,
    via: Via,
    agent_name: str | None = None,
    mailbox: str | None = None,
) -> QueuedReply:
    """Queue `agent`'s reply `text` to the resident of `conversation`, inside `tx`
    (see the module docstring for what is queued).

    `agent` is the agent's email address (stored on the message, and where notices
    about the reply go). For via="console": `agent_name` is shown in the copy, and
    `mailbox` is where the copy goes (the municipality's mailbox, or the fallback
    mailbox); without one it goes to the sticky agent, and without either the reply is
    refused. Raises ValueError, before anything is written, for an unknown `via`, a
    text that is empty once prepared, or a console reply with nowhere to copy it;
    KeyError if the conversation does not exist.
    """
    if via not in VIAS:
        raise ValueError(f"unknown reply door {via!r} (one of {', '.join(VIAS)})")
    copy_to: str | None = None
    cc: tuple[str, ...] = ()
    if via == "console":
        text = prepare_text(text)
        current = tx.get_conversation(conversation.id)
        if current is None:
            raise KeyError(f"no conversation {conversation.id}")
        conversation = current  # the sticky agent and the thread as they are now
        sticky = (conversation.agent_address or "").strip()
        copy_to = (mailbox or "").strip() or sticky or None
        if copy_to is None:
            raise ValueError("console reply: no mailbox and no agent to copy it to")
        if sticky and _address(sticky) != _address(copy_to):
            cc = (sticky,)
    if not text.strip():
        raise ValueError("empty reply")

    resident = tx.get_resident(conversation.phone)
    language = resident.language if resident else "en"
    excerpt = text[:EXCERPT_CHARS]
    if resident is not None and resident.opted_out:
        message_id = tx.add_message(
            conversation.phone, conversation.id, "out", text, [], None, now,
            status="not_sent", agent_address=agent, via=via,
        )  # fmt: skip
        if copy_to is not None:
            enqueue_notice(
                tx, settings, conversation, copy_to, "console_reply",
                _copy_details(agent, agent_name, text, "opted_out", 0, False),
                language=language, cc=cc,
            )  # fmt: skip
            reason = f"not texted: the resident opted out (copy to {copy_to} says so)"
        else:
            enqueue_notice(
                tx, settings, conversation, agent, "opted_out",
                {"reply_excerpt": excerpt}, language=language,
            )  # fmt: skip
            reason = "not texted: the resident opted out (agent told)"
        log.info(
            "reply not texted to %s: opted out (conversation=%s via=%s)",
            mask_phone(conversation.phone), conversation.id, via,
        )  # fmt: skip
        return QueuedReply(message_id, 0, False, True, reason)

    parts, shortened = segments.split_for_sms(text)
    if not parts:  # only characters the SMS preparation removes
        raise ValueError("empty reply once prepared for SMS")
    message_id = tx.add_message(
        conversation.phone, conversation.id, "out", text, [], None, now,
        status="queued", agent_address=agent, via=via,
    )  # fmt: skip
    for number, part in enumerate(parts, start=1):
        sms = SmsPayload(
            to=conversation.phone, body=part, conversation_id=conversation.id,
            message_id=message_id, part=number, parts=len(parts), agent=agent,
            queued_at=now.isoformat(),
        )  # fmt: skip
        tx.enqueue("sms", sms.to_dict())
    if copy_to is not None:
        copy_id = enqueue_notice(
            tx, settings, conversation, copy_to, "console_reply",
            _copy_details(agent, agent_name, text, "texted", len(parts), shortened),
            language=language, cc=cc,
        )  # fmt: skip
        # the shortened notice below follows the copy in the thread
        conversation = replace(
            conversation, thread_message_ids=(*conversation.thread_message_ids, copy_id)
        )
    if shortened:
        sent = sum(len(p) for p in parts)
        enqueue_notice(
            tx, settings, conversation, agent, "shortened",
            {"sent_chars": sent, "original_chars": len(text), "reply_excerpt": excerpt},
            language=language,
        )  # fmt: skip
    log.info(
        "reply queued for %s: conversation=%s parts=%d%s via=%s",
        mask_phone(conversation.phone), conversation.id, len(parts),
        " (shortened)" if shortened else "", via,
    )  # fmt: skip
    reason = f"texted in {len(parts)} part(s)" + (", shortened (agent told)" if shortened else "")
    if copy_to is not None:
        reason += f"; copy to {copy_to}"
    return QueuedReply(message_id, len(parts), shortened, False, reason)


def _copy_details(
    agent: str, agent_name: str | None, text: str, outcome: str, parts: int, shortened: bool
) -> dict[str, object]:
    """The details of a "console_reply" copy (see `gateway.rules.agent_notice.AgentNotice`)."""
    return {
        "agent_name": agent_name,
        "agent_email": agent,
        "text": text,
        "outcome": outcome,
        "parts": parts,
        "shortened": shortened,
    }
