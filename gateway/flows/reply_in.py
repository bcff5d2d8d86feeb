"""An agent's email, from the mailbox (IMAP) or the SMTP/LMTP ingress, to queued SMS.

`ReplyService` is the `ReplySink` both listeners call. In ONE store transaction it
records the email as handled (keyed by the hash of its bytes, so a message seen again
after a crash, a UIDVALIDITY change or a second delivery is never texted twice; and by
its Message-ID, so a second copy with other bytes — one per recipient, or by both
doors — is not texted either), routes it (reply token, else In-Reply-To/References:
mail to `email.from_address` is routed the same way), checks the sender is an agent
of that municipality, keeps only the visible reply, and queues the SMS (or, when the
resident opted out, a notice to the agent) through `gateway.flows.agent_reply.queue_reply`,
the path the web console's replies take too. A texted reply's Message-ID joins the
conversation's thread, so the resident's next email answers it.

The sender is authenticated first (`email.sender_authentication: required`, the default):
the one address of the one From header (`gateway.rules.reading.authentication.sender_of`)
must have its domain authenticated by a trusted Authentication-Results header or by a DKIM
signature the gateway verifies itself (`gateway.mail.dkim_check`, DNS looked up before the
transaction opens). A reply that is not authenticated is not texted, changes nothing
(no sticky agent, no `#close`) and is kept in the Failed list (why "not_authenticated");
its claimed sender is never told (the From may be forged).

Nothing is lost or unexplained when a reply is NOT texted:

- the email is kept, whole, in the store's Failed list (`gateway.store.reply_mail`;
  `sms311 failed list|show|retry|delete`), whichever door it came by;
- when the sender is an agent (of this municipality, or of another one), they get a
  short bilingual "not_texted" notice saying why (below the signature line, nothing
  left once quotes were cut, not an agent of this municipality, not an answer to any
  conversation, unreadable), in the conversation's thread or, when there is none, in
  reply to their own email. Strangers get no email from us (no backscatter).

The listener then files the email in Processed or Failed according to the returned
`Disposition` (`kept` says whether a failed email is in the Failed list).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import unicodedata
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from email.utils import parseaddr
from typing import Any

from gateway.flows.agent_reply import EXCERPT_CHARS, queue_reply
from gateway.flows.thread_mail import answering, enqueue_notice, queue_email
from gateway.mail.dkim_check import DnsFunc, dns_txt, verified_dkim_domains
from gateway.mail.types import Disposition, MailOrigin
from gateway.metrics import Metrics
from gateway.rules import reading
from gateway.rules.agent_notice import NOT_TEXTED_WHY, AgentNotice, KeptWhy, NotTextedWhy
from gateway.rules.municipalities import Directory, Municipality
from gateway.rules.reading import authentication
from gateway.settings import Settings
from gateway.store import Conversation, DuplicateEmail, Store, StoreUnavailable, Tx

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


@dataclass(frozen=True)
class _Decision:
    """What `_decide` found: the disposition, and what a failure's notice needs."""

    disposition: Disposition
    reply: reading.ParsedReply | None = None
    conversation: Conversation | None = None
    why: KeptWhy | None = None  # the kind of failure (kept with the email)
    tell: bool = False  # send the sender a "not_texted" notice saying `why`
    municipality: Municipality | None = None  # the sender's (for "not_agent"/"unroutable")


@dataclass(frozen=True)
class SenderCheck:
    """The sender authentication's verdict: the authenticated address, or why not."""

    sender: str | None
    refused: str | None = None


class ReplyService:
    """Turns agents' reply emails into queued SMS; see the module docstring."""

    def __init__(
        self,
        store: Store,
        settings: Settings,
        directory: Callable[[], Directory],
        metrics: Metrics,
        *,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        on_queued: Callable[[], None] | None = None,
        dkim_dns: DnsFunc | None = None,
    ) -> None:
        self._store = store
        self._settings = settings
        self._directory = directory  # a callable: the map can be reloaded (SIGHUP)
        self._metrics = metrics
        self._now = now
        self._on_queued = on_queued  # wakes the dispatcher: the SMS goes at once, not at a poll
        self._own = tuple(a for a in (parseaddr(settings.email.from_address)[1],) if a)
        self._dkim_dns = dkim_dns  # None: the system's resolvers (dnspython), made when needed

    async def __call__(self, raw: bytes, origin: MailOrigin) -> Disposition:
        disposition = await asyncio.to_thread(self.handle, raw, origin)
        self._queued(disposition)
        return disposition

    def _queued(self, disposition: Disposition) -> None:
        if self._on_queued is not None and disposition.outcome in ("processed", "failed"):
            self._on_queued()  # an SMS, or a notice to the agent, is waiting

    def handle(self, raw: bytes, origin: MailOrigin) -> Disposition:
        """Decide and record, in one transaction; safe to call again with the same bytes."""
        key = "sha256:" + hashlib.sha256(raw).hexdigest()
        return self._handle(raw, origin, key, retry_of=None)

    def retry(self, failed_id: int) -> Disposition:
        """Hand a kept failed reply (`sms311 failed retry ID`) to the pipeline again, as if it
        had just arrived (the cause may be fixed: an agent added to the map, …). When it is
        now texted (or ignored), it is marked resolved. No second notice goes to the agent
        when it fails again. Raises KeyError when there is no such kept email."""
        with self._store.transaction() as tx:
            kept = tx.get_failed_email(failed_id)
        if kept is None:
            raise KeyError(failed_id)
        origin = MailOrigin(**{k: v for k, v in kept.origin.items() if k in _ORIGIN_FIELDS})
        disposition = self._handle(kept.raw, origin, kept.key, retry_of=failed_id)
        self._queued(disposition)
        return disposition

    def check_sender(self, raw: bytes) -> SenderCheck | None:
        """Authenticate the sender (None: `email.sender_authentication` is off). DKIM is
        verified (DNS) only when no trusted Authentication-Results authenticates it."""
        email = self._settings.email
        if email.sender_authentication == "off":
            return None
        from_values, results = authentication.authentication_headers(raw)
        sender = authentication.sender_of(from_values)
        if isinstance(sender, authentication.Refused):
            return SenderCheck(None, sender.reason)
        believed = authentication.trusted_results(results, email.trusted_authserv_ids)
        verdict = authentication.authenticate(sender, believed)
        if not verdict.authenticated and b"dkim-signature" in raw[:262144].lower():
            if self._dkim_dns is None:
                self._dkim_dns = dns_txt()
            domains = verified_dkim_domains(raw, self._dkim_dns)
            verdict = authentication.authenticate(sender, believed, domains)
        if not verdict.authenticated:
            return SenderCheck(sender.address, verdict.how)
        return SenderCheck(sender.address)

    def _handle(
        self, raw: bytes, origin: MailOrigin, key: str, *, retry_of: int | None
    ) -> Disposition:
        store = self._store
        try:
            check = self.check_sender(raw)  # may look DNS up: before the transaction
        except Exception:  # a bug here must not let a reply through
            log.exception("reply email via %s: sender authentication failed", origin.kind)
            check = SenderCheck(None, "internal error while authenticating the sender")
        try:
            with store.transaction() as tx:
                seen = tx.processed_email(key)
                if seen is not None and not (retry_of is not None and seen[0] == "failed"):
                    if retry_of is not None:  # texted meanwhile: nothing left to do
                        tx.resolve_failed_email(
                            retry_of, seen[0], f"already handled: {seen[1]}",
                            now=self._now(),
                        )  # fmt: skip
                    # (a failed email was kept in the Failed list when it was first seen)
                    return Disposition(
                        seen[0], f"already handled: {seen[1]}", kept=seen[0] == "failed"
                    )
                decision = self._decide(tx, raw, check)
                disposition = decision.disposition
                if disposition.outcome == "failed":
                    self._keep(tx, key, raw, origin, decision, notify=retry_of is None)
                    disposition = replace(disposition, kept=True)
                elif retry_of is not None:
                    tx.resolve_failed_email(
                        retry_of, disposition.outcome, disposition.reason,
                        now=self._now(),
                    )  # fmt: skip
                if seen is None:
                    tx.record_processed_email(
                        key, disposition.outcome, disposition.reason, asdict(origin)
                    )
                else:
                    tx.update_processed_email(
                        key, disposition.outcome, disposition.reason
                    )
        except DuplicateEmail:
            with store.transaction() as tx:
                seen = tx.processed_email(key)
            outcome, reason = seen or ("processed", "handled concurrently")
            return Disposition(outcome, f"already handled: {reason}", kept=outcome == "failed")
        except StoreUnavailable:
            raise  # the listener keeps the email and tries again later
        except Exception as exc:
            # A bug must not block the mailbox behind one email for ever: keep it in the
            # Failed list (nothing else was committed, so a fixed version can retry it).
            log.exception("reply email via %s: internal error", origin.kind)
            disposition = Disposition("failed", f"internal error: {type(exc).__name__}")
            disposition = self._keep_alone(key, raw, origin, disposition)
        log.log(
            logging.WARNING if disposition.outcome == "failed" else logging.INFO,
            "reply email via %s: %s (%s)%s", origin.kind, disposition.outcome,
            disposition.reason, " [kept in the Failed list]" if disposition.kept else "",
        )  # fmt: skip
        self._metrics.replies_read.labels(disposition.outcome).inc()
        return disposition

    def _keep_alone(
        self, key: str, raw: bytes, origin: MailOrigin, disposition: Disposition
    ) -> Disposition:
        """Keep an email the pipeline could not decide, in a transaction of its own."""
        try:
            with self._store.transaction() as tx:
                tx.keep_failed_email(
                    key, raw, disposition.reason, asdict(origin), now=self._now()
                )
        except StoreUnavailable:
            raise
        except Exception:
            log.exception("reply email via %s: could not keep it in the Failed list", origin.kind)
            return disposition
        return replace(disposition, kept=True)

    # -- the decision ---------------------------------------------------------------------

    def _decide(self, tx: Tx, raw: bytes, check: SenderCheck | None = None) -> _Decision:
        settings = self._settings
        try:
            reply = reading.parse_reply(
                raw, reply_address=settings.email.reply_address, own_addresses=self._own
            )
        except reading.MalformedEmail as exc:
            return _Decision(Disposition("failed", f"malformed email: {exc}"))
        if reply.automatic:
            return _Decision(
                Disposition("ignored", f"automatic message, not texted: {reply.automatic}"),
                reply,
            )
        if reply.message_id is not None:
            earlier = tx.reply_seen(reply.message_id)
            if earlier is not None:
                return _Decision(
                    Disposition(
                        "ignored",
                        f"conversation {earlier}: a second copy of a reply already texted "
                        "(same Message-ID)",
                    ),
                    reply,
                )

        if check is not None:
            if check.refused is not None or check.sender is None:
                # Nothing is changed and nobody is told: the From may be forged.
                return _Decision(
                    Disposition("failed", f"sender not authenticated: {check.refused}"),
                    reply, why="not_authenticated",
                )  # fmt: skip
            reply = replace(reply, sender=check.sender)

        conversation = self._route(tx, reply)
        if conversation is None:
            home = self._municipality_of(reply.sender)
            return _Decision(
                Disposition("failed", "unroutable: no reply token and no known thread"),
                reply, why="unroutable", tell=home is not None, municipality=home,
            )  # fmt: skip
        agents = self._agents(conversation)
        if not is_agent(reply.sender, agents):
            home = self._municipality_of(reply.sender)
            return _Decision(
                Disposition(
                    "failed",
                    f"sender is not an agent of conversation {conversation.id} "
                    f"({conversation.municipality_id or 'fallback'})",
                ),
                reply, conversation, why="not_agent", tell=home is not None,
                municipality=self._directory().get(conversation.municipality_id or ""),
            )  # fmt: skip
        now = self._now()
        if not reply.text and not reply.close_requested:
            below = reply.empty_because == "below_signature"
            return _Decision(
                Disposition(
                    "failed",
                    "empty reply once quotes and signature are cut"
                    + (" (the answer was below the signature line)" if below else ""),
                ),
                reply, conversation, why="below_signature" if below else "empty", tell=True,
            )  # fmt: skip
        garbage = not_text_reason(reply.text)
        if garbage is not None:
            return _Decision(
                Disposition("failed", f"unreadable: {garbage}"), reply, conversation,
                why="unreadable", tell=True,
            )  # fmt: skip

        tx.set_agent(conversation.id, reply.sender)
        reason = "closed by the agent"
        if reply.text:
            reason = self._text_back(tx, conversation, reply.sender, reply.text, now)
        if reply.message_id is not None:
            # the resident's next email answers this reply (In-Reply-To / References)
            tx.record_thread_email(conversation.id, reply.message_id, direction="in")
        if reply.close_requested:
            tx.close_conversation(conversation.id, now)
            if reply.text:
                reason += "; conversation closed"
        else:
            tx.touch_conversation(conversation.id, now)
        return _Decision(
            Disposition("processed", f"conversation {conversation.id}: {reason}"),
            reply, conversation,
        )  # fmt: skip

    def _route(self, tx: Tx, reply: reading.ParsedReply) -> Conversation | None:
        for token in reply.tokens:
            conversation = tx.conversation_by_token(token)
            if conversation is not None:
                return conversation
        ids = (*reply.in_reply_to, *reversed(reply.references))
        return tx.conversation_by_email(ids) if ids else None

    def _agents(self, conversation: Conversation) -> tuple[str, ...]:
        if conversation.municipality_id is None:
            return self._fallback_agents()
        municipality = self._directory().get(conversation.municipality_id)
        return municipality.agents if municipality else ()

    def _fallback_agents(self) -> tuple[str, ...]:
        fallback = self._settings.fallback_mailbox
        return (fallback, "@" + fallback.rpartition("@")[2]) if fallback else ()

    def _municipality_of(self, sender: str) -> Municipality | None:
        """The first municipality `sender` is an agent of (None: nobody's agent; the
        fallback mailbox's agents count, as a municipality named after the mailbox)."""
        if not sender:
            return None
        for municipality in self._directory().municipalities:
            if municipality.agents and is_agent(sender, municipality.agents):
                return municipality
        fallback = self._settings.fallback_mailbox
        if fallback and is_agent(sender, self._fallback_agents()):
            return Municipality(id="", name=fallback, province="", mailbox=fallback)
        return None

    def _text_back(
        self, tx: Tx, conversation: Conversation, agent: str, text: str, now: datetime
    ) -> str:
        """Queue the SMS (or tell the agent the resident opted out): the one reply path
        the console takes too (`gateway.flows.agent_reply.queue_reply`)."""
        queued = queue_reply(
            tx, self._settings, conversation, agent=agent, text=text, now=now,
            via="email",
        )  # fmt: skip
        return queued.reason

    # -- a reply that was not texted --------------------------------------------------------

    def _keep(
        self, tx: Tx, key: str, raw: bytes, origin: MailOrigin, decision: _Decision,
        *, notify: bool,
    ) -> None:  # fmt: skip
        """Keep the failed email in the Failed list; tell its sender why when they are an
        agent (`decision.tell`) and this is its first handling (`notify`)."""
        reply, conversation = decision.reply, decision.conversation
        tx.keep_failed_email(
            key, raw, decision.disposition.reason, asdict(origin), now=self._now(),
            sender=reply.sender if reply else None, subject=reply.subject if reply else None,
            conversation_id=conversation.id if conversation else None, why=decision.why,
        )  # fmt: skip
        why = next((w for w in NOT_TEXTED_WHY if w == decision.why), None)
        if notify and decision.tell and why and reply is not None and reply.sender:
            self._tell(tx, reply, conversation, why, decision.municipality)

    def _tell(
        self,
        tx: Tx,
        reply: reading.ParsedReply,
        conversation: Conversation | None,
        why: NotTextedWhy,
        municipality: Municipality | None,
    ) -> None:
        """Queue a "not_texted" notice to the reply's sender, answering their email."""
        settings = self._settings
        details: dict[str, Any] = {"why": why, "sender": reply.sender}
        if municipality is not None:
            details["municipality"] = municipality.name
        if reply.text and why in ("not_agent", "unroutable"):
            details["reply_excerpt"] = reply.text[:EXCERPT_CHARS]
        if conversation is not None:
            resident = tx.get_resident(conversation.phone)
            thread = conversation.thread_message_ids
            if reply.message_id is not None and reply.message_id not in thread:
                thread = (*thread, reply.message_id)  # the notice answers the agent's email
            enqueue_notice(
                tx, settings, replace(conversation, thread_message_ids=thread), reply.sender,
                "not_texted", details, language=resident.language if resident else "en",
            )  # fmt: skip
            return
        # Not in any conversation: answer the agent's own email, in its thread.
        own_ids = (*reply.references, *((reply.message_id,) if reply.message_id else ()))
        language = municipality.languages[0] if municipality and municipality.languages else "en"
        notice = AgentNotice(
            conversation_id=None,
            to=(reply.sender,),
            language="fr" if language == "fr" else "en",
            kind="not_texted",
            details=details,
            **answering(settings, own_ids, reply.subject or "311"),
        )
        queue_email(tx, notice)


_ORIGIN_FIELDS = frozenset(MailOrigin.__dataclass_fields__)
