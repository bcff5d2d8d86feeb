"""An agent's email, from the mailbox (IMAP) or the SMTP/LMTP ingress, to queued SMS.

`ReplyService` is the `ReplySink` both listeners call. In ONE store transaction it
records the email as handled (keyed by the hash of its bytes, so a message seen again
after a crash, a UIDVALIDITY change or a second delivery is never texted twice),
routes it (reply token, else In-Reply-To/References), checks the sender is an agent
of that municipality, keeps only the visible reply, and queues the SMS (or, when the
resident opted out, a notice to the agent) through `gateway.agent_reply.queue_reply`,
the path the web console's replies take too. The listener then files the email in
Processed or Failed according to the returned `Disposition`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import unicodedata
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from email.utils import parseaddr

from gateway import replies
from gateway.agent_reply import queue_reply
from gateway.mail.types import Disposition, MailOrigin
from gateway.services import Gateway
from gateway.store import Conversation, DuplicateEmail, StoreUnavailable, Tx

log = logging.getLogger(__name__)

# Characters a person's reply (in any language) hardly ever has, but binary data read as
# Windows-1252 / Latin-1 text is full of: C1 controls, the Latin-1 symbols (¤¦¨¬¯²³´¶¸¹¼¾…;
# not the « » ° · ¡ ¿ ©, NBSP and soft hyphen people do type), U+FFFD (bytes no charset
# could decode), private-use and surrogate code points and other control characters.
_USUAL_LATIN1 = frozenset("\u00a0\u00a1\u00a9\u00ab\u00ad\u00ae\u00b0\u00b7\u00bb\u00bf")
# A UTF-16 (LE, BE) or UTF-8 byte-order mark decoded as Windows-1252 / Latin-1.
_MISREAD_BOMS = ("\u00ff\u00fe", "\u00fe\u00ff", "\u00ef\u00bb\u00bf")
NOT_TEXT_SHARE = 0.05  # of the non-space characters
NOT_TEXT_MIN = 3  # odd characters needed at least (a stray "½" or "²" is fine)


def not_text_reason(text: str) -> str | None:
    """Why `text` cannot be what a person wrote (binary data decoded as text), or None.

    Counted over the non-space characters: the share of characters that only binary data
    decoded as text produces (see `_USUAL_LATIN1` above); beyond `NOT_TEXT_SHARE` (and at
    least `NOT_TEXT_MIN` of them) it is not texted. Text that starts with a byte-order mark
    read in the wrong charset ("ÿþF\x00i\x00x…": UTF-16 labelled UTF-8) is not texted
    either. Cheap: looks at the first 20,000 characters.
    """
    if text.lstrip().startswith(_MISREAD_BOMS):
        return "UTF-16/UTF-8 text read in the wrong charset (byte-order mark)"
    sample = [c for c in text[:20_000] if not c.isspace()]
    if not sample:
        return None
    odd = 0
    for char in sample:
        code = ord(char)
        if (
            0x80 <= code <= 0xBF and char not in _USUAL_LATIN1
        ) or char == "\ufffd" or unicodedata.category(char) in ("Co", "Cs", "Cc"):
            odd += 1
    if odd >= NOT_TEXT_MIN and odd > NOT_TEXT_SHARE * len(sample):
        return f"{odd} of {len(sample)} characters are not text (binary data?)"
    return None


def is_agent(sender: str, agents: tuple[str, ...]) -> bool:
    """True when `sender` is one of `agents`: full addresses or "@domain" entries."""
    sender = sender.strip().lower()
    if "@" not in sender:
        return False
    domain = sender.rpartition("@")[2]
    for agent in agents:
        agent = agent.strip().lower()
        if agent.startswith("@"):
            if domain == agent[1:]:
                return True
        elif sender == agent:
            return True
    return False


class ReplyService:
    """Turns agents' reply emails into queued SMS; see the module docstring."""

    def __init__(
        self,
        gateway: Gateway,
        *,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        on_queued: Callable[[], None] | None = None,
    ) -> None:
        self._gateway = gateway
        self._now = now
        self._on_queued = on_queued  # wakes the dispatcher: the SMS goes at once, not at a poll
        self._own = tuple(
            a for a in (parseaddr(gateway.settings.email.from_address)[1],) if a
        )

    async def __call__(self, raw: bytes, origin: MailOrigin) -> Disposition:
        disposition = await asyncio.to_thread(self.handle, raw, origin)
        if self._on_queued is not None and disposition.outcome == "processed":
            self._on_queued()
        return disposition

    def handle(self, raw: bytes, origin: MailOrigin) -> Disposition:
        """Decide and record, in one transaction; safe to call again with the same bytes."""
        key = "sha256:" + hashlib.sha256(raw).hexdigest()
        store = self._gateway.store
        try:
            with store.transaction() as tx:
                seen = tx.processed_email(key)
                if seen is not None:
                    return Disposition(seen[0], f"already handled: {seen[1]}")
                disposition = self._decide(tx, raw)
                tx.record_processed_email(
                    key, disposition.outcome, disposition.reason, asdict(origin)
                )
        except DuplicateEmail:
            with store.transaction() as tx:
                seen = tx.processed_email(key)
            outcome, reason = seen or ("processed", "handled concurrently")
            return Disposition(outcome, f"already handled: {reason}")
        except StoreUnavailable:
            raise  # the listener keeps the email and tries again later
        except Exception as exc:
            # A bug must not block the mailbox behind one email for ever: file it in Failed
            # (nothing was committed, so a fixed version can be handed it again).
            log.exception("reply email via %s: internal error", origin.kind)
            return Disposition("failed", f"internal error: {type(exc).__name__}")
        log.log(
            logging.WARNING if disposition.outcome == "failed" else logging.INFO,
            "reply email via %s: %s (%s)", origin.kind, disposition.outcome, disposition.reason,
        )
        self._gateway.metrics.replies_read.labels(disposition.outcome).inc()
        return disposition

    # -- the decision ---------------------------------------------------------------------

    def _decide(self, tx: Tx, raw: bytes) -> Disposition:
        settings = self._gateway.settings
        try:
            reply = replies.parse_reply(
                raw, reply_address=settings.email.reply_address, own_addresses=self._own
            )
        except replies.MalformedEmail as exc:
            return Disposition("failed", f"malformed email: {exc}")
        if reply.automatic:
            return Disposition("ignored", f"automatic message, not texted: {reply.automatic}")

        conversation = self._route(tx, reply)
        if conversation is None:
            return Disposition("failed", "unroutable: no reply token and no known thread")
        agents = self._agents(conversation)
        if not is_agent(reply.sender, agents):
            return Disposition(
                "failed",
                f"sender is not an agent of conversation {conversation.id} "
                f"({conversation.municipality_id or 'fallback'})",
            )
        now = self._now()
        if not reply.text and not reply.close_requested:
            return Disposition("failed", "empty reply once quotes and signature are cut")
        garbage = not_text_reason(reply.text)
        if garbage is not None:
            return Disposition("failed", f"unreadable: {garbage}")

        tx.set_agent(conversation.id, reply.sender)
        reason = "closed by the agent"
        if reply.text:
            reason = self._text_back(tx, conversation, reply.sender, reply.text, now)
        if reply.close_requested:
            tx.close_conversation(conversation.id, now)
            if reply.text:
                reason += "; conversation closed"
        else:
            tx.touch_conversation(conversation.id, now)
        return Disposition("processed", f"conversation {conversation.id}: {reason}")

    def _route(self, tx: Tx, reply: replies.ParsedReply) -> Conversation | None:
        for token in reply.tokens:
            conversation = tx.conversation_by_token(token)
            if conversation is not None:
                return conversation
        ids = (*reply.in_reply_to, *reversed(reply.references))
        return tx.conversation_by_email(ids) if ids else None

    def _agents(self, conversation: Conversation) -> tuple[str, ...]:
        if conversation.municipality_id is None:
            fallback = self._gateway.settings.fallback_mailbox
            return (fallback, "@" + fallback.rpartition("@")[2]) if fallback else ()
        municipality = self._gateway.directory().get(conversation.municipality_id)
        return municipality.agents if municipality else ()

    def _text_back(
        self, tx: Tx, conversation: Conversation, agent: str, text: str, now: datetime
    ) -> str:
        """Queue the SMS (or tell the agent the resident opted out): the one reply path
        the console takes too (`gateway.agent_reply.queue_reply`)."""
        queued = queue_reply(
            tx, self._gateway.settings, conversation, agent=agent, text=text, now=now,
            via="email",
        )  # fmt: skip
        return queued.reason
