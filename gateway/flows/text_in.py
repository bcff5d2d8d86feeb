"""A resident's text, from a validated webhook to committed rows.

Two entries, one set of rules:

- `InboundService.accept(text)` is what `POST /sms/inbound` runs. When the text needs no
  answer — the resident's municipality is known, no question is in progress, and the text
  is not a keyword — it is only recorded in the inbound queue (one durable row; a repeated
  MessageSid is recognised) and the webhook answers at once; the worker processes it
  (`process_queued`). Otherwise it is processed at once, as `handle` does, after the
  resident's queued texts (so a resident's texts are always processed in the order they
  arrived), and the replies go back in the webhook's answer.
- `InboundService.handle(text)` processes one text in ONE store transaction: the
  MessageSid is recorded (a repeat returns the first answer and changes nothing),
  keywords and the dialogue decide, held texts are kept, and every email to a city goes
  into the outbox in the same commit. It returns the SMS replies for the TwiML answer.
- `InboundService.process_queued(phone)` processes a resident's queued texts, oldest
  first, in one transaction that also deletes them from the queue. A reply decided there
  (rare: the map lost the municipality meanwhile) cannot ride on a webhook's answer any
  more: it is queued in the outbox as an SMS, sent through the provider's API.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from gateway.flows.payloads import SmsPayload
from gateway.flows.thread_mail import next_in_thread, queue_email
from gateway.logs import log_full_detail, mask_phone
from gateway.rules import dialogue, keywords, prompts
from gateway.rules.municipalities import DEFAULT_TIMEZONE, Directory, Municipality
from gateway.rules.resident_email import MediaRef, ResidentEmail, ResidentText
from gateway.rules.thread import format_national, local_name, new_token, thread_subject
from gateway.settings import Settings
from gateway.sms.base import InboundText
from gateway.store import (
    Conversation,
    DuplicateWebhook,
    QueuedText,
    Resident,
    Store,
    StoredMessage,
    TextToQueue,
    Tx,
)

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class Outcome:
    """What the webhook answers, and what happened (for logs and metrics)."""

    replies: tuple[str, ...]
    duplicate: bool = False
    keyword: str | None = None
    emails_queued: int = 0
    conversation_id: int | None = None  # the thread the text went to, if any
    municipality_id: str | None = None  # the resident's municipality after this text
    step: str = "keyword"  # delivered | held | answered | fallback | keyword | queued


def _media_dicts(media: Sequence[MediaRef]) -> list[dict[str, str]]:
    return [{"url": m.url, "content_type": m.content_type} for m in media]


def _inbound_text(row: QueuedText) -> InboundText:
    return InboundText(
        sid=row.sid, phone=row.phone, to=row.to, body=row.body, received_at=row.received_at,
        media=_media_refs(row.media), from_city=row.from_city, from_state=row.from_state,
    )  # fmt: skip


def _media_refs(media: Sequence[dict[str, str]]) -> tuple[MediaRef, ...]:
    return tuple(MediaRef(url=m["url"], content_type=m["content_type"]) for m in media)


class InboundService:
    """Turns inbound texts into stored messages, dialogue replies and queued emails."""

    def __init__(
        self,
        store: Store,
        settings: Settings,
        directory: Callable[[], Directory],
    ) -> None:
        self._store = store
        self._settings = settings
        self._directory = directory  # a callable: the map can be reloaded (SIGHUP)

    def accept(self, text: InboundText) -> Outcome:
        """The webhook's entry (see the module docstring): queue the text for the worker
        when it needs no answer, else process it now (`handle`). `step` is "queued" for a
        queued text; a retry of a queued text is a duplicate with no replies."""
        try:
            with self._store.transaction() as tx:
                routing = tx.resident_routing(text.phone)  # PostgreSQL: locks the number
                if routing is not None and self._needs_no_answer(*routing, text):
                    queued = tx.queue_inbound(
                        text.sid, text.phone, text.to, text.body, _media_dicts(text.media),
                        text.received_at, text.from_city, text.from_state,
                    )  # fmt: skip
                    return Outcome(
                        replies=(), duplicate=not queued, keyword=None, step="queued",
                        municipality_id=routing[0],
                    )  # fmt: skip
                previous = tx.webhook_response(text.sid)
                if previous is not None:
                    return Outcome(replies=tuple(_decode(previous)), duplicate=True)
                self._drain(tx, text.phone)
                outcome = self._handle_new(tx, text)
                tx.record_webhook(text.sid, _encode(outcome.replies))
        except DuplicateWebhook:
            return self._first_answer(text.sid)
        self._log(text, outcome)
        return outcome

    def accept_queueable(
        self, texts: Sequence[InboundText], busy_phones: Collection[str] = ()
    ) -> list[Outcome | None]:
        """The webhook's batch entry: in ONE transaction (one durable commit for them
        all), queue each text of `texts` that `accept` would queue; None for the others,
        which the caller passes to `accept` one by one, in order, after this commit.

        A resident's texts keep their order: once one of them is left out (it needs an
        answer), so are that resident's later texts in the batch; `busy_phones` are
        residents whose earlier texts are still being processed, so theirs are all left
        out. On PostgreSQL the numbers are locked in sorted order (as two batches of
        several processes could otherwise deadlock)."""
        results: list[Outcome | None] = [None] * len(texts)
        order = sorted(range(len(texts)), key=lambda i: texts[i].phone)  # stable: in order
        left_out = set(busy_phones)
        with self._store.transaction() as tx:
            # PostgreSQL: the numbers are locked (sorted), and read, in one go
            routings = tx.residents_routing([t.phone for t in texts if t.phone not in left_out])
            chosen: list[tuple[int, str | None]] = []
            for i in order:
                text = texts[i]
                routing = routings.get(text.phone)
                if text.phone in left_out:
                    continue
                if routing is None or not self._needs_no_answer(*routing, text):
                    left_out.add(text.phone)
                    continue
                chosen.append((i, routing[0]))
            queued = tx.queue_inbound_many([
                TextToQueue(
                    t.sid, t.phone, t.to, t.body, _media_dicts(t.media), t.received_at,
                    t.from_city, t.from_state,
                )
                for t in (texts[i] for i, _ in chosen)
            ])  # fmt: skip
        for (i, municipality_id), stored in zip(chosen, queued, strict=True):
            results[i] = Outcome(
                replies=(), duplicate=not stored, keyword=None, step="queued",
                municipality_id=municipality_id,
            )  # fmt: skip
        return results

    def process_queued(self, phone: str, limit: int | None = None) -> list[Outcome]:
        """Process `phone`'s queued texts (oldest first; the first `limit`) in one
        transaction; their outcomes. Another instance that got there first leaves nothing
        to do (an empty list)."""
        with self._store.transaction() as tx:
            resident = tx.get_resident(phone)  # PostgreSQL: one instance per number at a time
            done = self._drain(tx, phone, limit, resident)
        for text, outcome in done:
            self._log(text, outcome)
        return [outcome for _, outcome in done]

    def _needs_no_answer(
        self, municipality_id: str | None, stage: str, text: InboundText
    ) -> bool:
        """True when processing `text` cannot produce a reply: its resident's municipality
        is known and still in the map, no question is in progress, and the text is not
        a keyword (nor empty)."""
        if municipality_id is None or stage != "idle":
            return False
        if not text.media and (not text.body.strip() or keywords.classify(text.body)):
            return False
        return self._directory().get(municipality_id) is not None

    def _drain(
        self, tx: Tx, phone: str, limit: int | None = None, resident: Resident | None = None
    ) -> list[tuple[InboundText, Outcome]]:
        """Process the queued texts of `phone` (the first `limit`) in this transaction,
        oldest first, and take them off the queue; their replies go to the outbox (see the
        module docstring)."""
        queued = tx.queued_inbound(phone, limit)
        done: list[tuple[InboundText, Outcome]] = []
        # processed already: a retry queued after its first delivery was answered
        answered = tx.answered_webhooks([row.sid for row in queued]) if queued else set()
        if queued and resident is None:  # (the caller may have read it, locking the number)
            resident = tx.get_resident(phone)
        for row in queued:
            text = _inbound_text(row)
            if text.sid in answered:
                continue
            resident = resident or Resident(
                phone=phone, municipality_id=None, language="en", opted_out=False, dialogue={}
            )
            outcome, resident = self._decide(tx, text, resident)
            tx.record_webhook(text.sid, "")
            for reply in outcome.replies:
                tx.enqueue("sms", SmsPayload(to=phone, body=reply).to_dict())
            done.append((text, outcome))
        tx.unqueue_inbound([row.id for row in queued])
        return done

    def _first_answer(self, sid: str) -> Outcome:
        # The provider retried while the first delivery was still being committed: the
        # first one won; answer what it answered.
        with self._store.transaction() as tx:
            previous = tx.webhook_response(sid)
        return Outcome(replies=tuple(_decode(previous or "")), duplicate=True)

    def _log(self, text: InboundText, outcome: Outcome) -> None:
        log.info(
            "inbound text: from=%s conversation=%s municipality=%s step=%s keyword=%s "
            "replies=%d emails=%d",
            mask_phone(text.phone),
            outcome.conversation_id or "-",
            outcome.municipality_id or "-",
            outcome.step,
            outcome.keyword or "-",
            len(outcome.replies),
            outcome.emails_queued,
        )
        if log_full_detail():
            log.debug("inbound text %s from %s: %r", text.sid, text.phone, text.body)

    def handle(self, text: InboundText) -> Outcome:
        """Process one text in one transaction; safe to call again with the same sid."""
        try:
            with self._store.transaction() as tx:
                previous = tx.webhook_response(text.sid)
                if previous is not None:
                    return Outcome(replies=tuple(_decode(previous)), duplicate=True)
                outcome = self._handle_new(tx, text)
                tx.record_webhook(text.sid, _encode(outcome.replies))
        except DuplicateWebhook:
            return self._first_answer(text.sid)
        self._log(text, outcome)
        return outcome

    # -- the decision ---------------------------------------------------------------

    def _handle_new(self, tx: Tx, text: InboundText) -> Outcome:
        resident = tx.get_resident(text.phone) or Resident(
            phone=text.phone, municipality_id=None, language="en", opted_out=False, dialogue={}
        )
        return self._decide(tx, text, resident)[0]

    def _decide(self, tx: Tx, text: InboundText, resident: Resident) -> tuple[Outcome, Resident]:
        """What `text` does, given its `resident` as stored; the outcome, and the resident
        as stored after it (so that a batch of one resident's texts reads the row once)."""
        directory = self._directory()
        keyword = keywords.classify(text.body) if not text.media else None
        if keyword is not None and keyword.kind != "city":
            return self._keyword(tx, resident, keyword)

        state = dialogue.DialogueState.from_dict(resident.dialogue)
        if state.municipality_id is None and resident.municipality_id is not None:
            state = replace(state, municipality_id=resident.municipality_id)
        # A keyword (HELP/AIDE…) may have changed the kept language since the last turn.
        state = replace(state, language=prompts.as_language(resident.language, state.language))
        inbound = dialogue.Inbound(
            text=text.body,
            from_city=text.from_city,
            from_state=text.from_state,
            has_media=bool(text.media),
            opted_out=resident.opted_out,  # no questions to a number that said STOP
        )
        state, actions = dialogue.step(state, inbound, directory)
        replies: list[str] = []
        queued = 0
        conversation_id: int | None = None
        step = "held" if any(isinstance(a, dialogue.Hold) for a in actions) else "answered"
        for action in actions:
            if isinstance(action, dialogue.Hold):
                tx.hold_message(
                    text.phone, text.body, _media_dicts(text.media), text.sid, text.received_at
                )
            elif isinstance(action, dialogue.Reply):
                replies.append(action.text)
            elif isinstance(action, dialogue.Deliver):
                municipality = directory.get(action.municipality_id)
                if municipality is None:  # the map lost it (reload): keep the text
                    log.warning("municipality %r is gone from the map", action.municipality_id)
                    tx.hold_message(
                        text.phone, text.body, _media_dicts(text.media), text.sid, text.received_at
                    )
                    continue
                conversation_id = self._deliver(
                    tx, text, municipality, state.language, action.include_current
                )
                if conversation_id is not None:
                    queued, step = queued + 1, "delivered"
            elif isinstance(action, dialogue.Fallback):
                conversation_id = self._fallback(tx, text, state.language)
                queued, step = queued + (conversation_id is not None), "fallback"
        updated = replace(
            resident,
            municipality_id=state.municipality_id,
            language=state.language,
            dialogue=state.to_dict(),
        )
        if updated != resident or resident.created_at is None:  # unchanged: nothing to write
            tx.save_resident(updated)
        resident = updated
        if resident.opted_out:
            replies = []  # after STOP nothing is sent until START
        return Outcome(
            replies=tuple(replies),
            keyword=keyword.kind if keyword else None,
            emails_queued=queued,
            conversation_id=conversation_id,
            municipality_id=state.municipality_id,
            step=step,
        ), resident

    def _keyword(
        self, tx: Tx, resident: Resident, keyword: keywords.Keyword
    ) -> tuple[Outcome, Resident]:
        language = keyword.language or resident.language
        opted_out = resident.opted_out
        if keyword.kind == "stop":
            opted_out = True
        elif keyword.kind == "start":
            opted_out = False
        updated = replace(resident, opted_out=opted_out, language=language)
        tx.save_resident(updated)
        return Outcome(
            replies=(keywords.reply(keyword.kind, language),),
            keyword=keyword.kind,
            municipality_id=resident.municipality_id,
        ), updated

    # -- emails ---------------------------------------------------------------------

    def _file(
        self,
        tx: Tx,
        text: InboundText,
        conversation: Conversation,
        held: list[StoredMessage],
        include_current: bool,
    ) -> list[StoredMessage]:
        """File the held texts (oldest first), and this one if it is part of the delivery,
        in the conversation; returns them in order."""
        messages = list(held)
        if held:
            tx.attach_messages([m.id for m in held], conversation.id)
        if include_current:
            # Stored straight into the conversation (this also touches it).
            message_id = tx.add_message(
                text.phone,
                conversation.id,
                "in",
                text.body,
                _media_dicts(text.media),
                text.sid,
                text.received_at,
            )
            messages.append(
                StoredMessage(
                    id=message_id,
                    phone=text.phone,
                    conversation_id=conversation.id,
                    direction="in",
                    body=text.body,
                    media=tuple(_media_dicts(text.media)),
                    provider_sid=text.sid,
                    received_at=text.received_at,
                )
            )
        return messages

    def _conversation(
        self,
        tx: Tx,
        phone: str,
        municipality: Municipality | None,
        language: str,
        now: datetime,
        *,
        touch: bool = True,
    ) -> Conversation:
        """The resident's open conversation with this municipality, or a new one (a new
        email thread) when there is none or it went idle for `idle_close_hours`.
        `touch`: mark it active at `now` (not needed when a message received `now` is
        added to it, which touches it anyway)."""
        municipality_id = municipality.id if municipality else None
        idle = timedelta(hours=self._settings.conversations.idle_close_hours)
        conversation = tx.open_conversation(phone, municipality_id, idle_before=now - idle)
        if conversation is not None:
            if touch:
                tx.touch_conversation(conversation.id, now)
            return conversation
        national = format_national(phone, self._settings.sms.default_region)
        name = municipality.name if municipality else _UNKNOWN[language]
        token = new_token()
        # The short reference makes each conversation's subject distinct, so mail clients
        # that thread by subject do not merge a new conversation into a closed one.
        subject = thread_subject(
            name, national, language, reference=token[:6],
            name_fr=municipality.name_fr if municipality else None,
        )
        return tx.create_conversation(phone, municipality_id, token, subject)

    def _deliver(
        self,
        tx: Tx,
        text: InboundText,
        municipality: Municipality,
        language: str,
        include_current: bool,
    ) -> int | None:
        """Email the held texts (and this one) to the city; the conversation's id, or None
        when there was nothing to send."""
        held = tx.take_held(text.phone)
        if not held and not include_current:
            return None
        conversation = self._conversation(
            tx, text.phone, municipality, language, text.received_at, touch=not include_current
        )
        messages = self._file(tx, text, conversation, held, include_current)
        # Sticky: once an agent has answered, the resident's texts go to that agent, with
        # the city's mailbox in copy, until the conversation closes.
        agent = conversation.agent_address
        self._enqueue_email(
            tx,
            conversation,
            messages,
            to=(agent,) if agent else (municipality.mailbox,),
            cc=(municipality.mailbox,) if agent else (),
            municipality_name=local_name(municipality.name, municipality.name_fr, language),
            timezone=municipality.timezone,
            language=language,
            note=None,
        )
        return conversation.id

    def _fallback(self, tx: Tx, text: InboundText, language: str) -> int | None:
        mailbox = self._settings.fallback_mailbox
        if mailbox is None:
            # Nowhere to send them: they stay held (never lost) until the resident
            # names a municipality.
            log.warning(
                "held texts of %s kept: municipality unresolved and no fallback_mailbox",
                mask_phone(text.phone),
            )
            return None
        held = tx.take_held(text.phone)
        if not held:
            return None
        conversation = self._conversation(tx, text.phone, None, language, text.received_at)
        messages = self._file(tx, text, conversation, held, include_current=False)
        self._enqueue_email(
            tx,
            conversation,
            messages,
            to=(conversation.agent_address or mailbox,),
            cc=(mailbox,) if conversation.agent_address else (),
            municipality_name=_UNKNOWN[language],
            timezone=DEFAULT_TIMEZONE,
            language=language,
            note=_FALLBACK_NOTE,
        )
        return conversation.id

    def _enqueue_email(
        self,
        tx: Tx,
        conversation: Conversation,
        messages: Sequence[StoredMessage],
        *,
        to: tuple[str, ...],
        cc: tuple[str, ...] = (),
        municipality_name: str,
        timezone: str,
        language: str,
        note: str | None,
    ) -> None:
        email = ResidentEmail(
            conversation_id=conversation.id,
            to=to,
            cc=cc,
            resident_e164=conversation.phone,
            resident_national=format_national(
                conversation.phone, self._settings.sms.default_region
            ),
            municipality_name=municipality_name,
            language=language,
            texts=tuple(
                ResidentText(
                    received_at=m.received_at, body=m.body, media=_media_refs(m.media)
                )
                for m in messages
            ),
            note=note,
            timezone=timezone,
            **next_in_thread(self._settings, conversation),
        )
        queue_email(tx, email)


_UNKNOWN = {"en": "municipality unknown", "fr": "municipalité inconnue"}
_FALLBACK_NOTE = (
    "The resident's municipality could not be determined after several tries; "
    "these texts were held and are sent to the fallback mailbox. / "
    "La municipalité du résident n'a pas pu être déterminée."
)


_SEPARATOR = "\x1e"  # record separator: cannot appear in a TwiML-bound reply


def _encode(replies: Sequence[str]) -> str:
    return _SEPARATOR.join(replies)


def _decode(stored: str) -> list[str]:
    return [r for r in stored.split(_SEPARATOR) if r]
