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

Routing holds against re-sent mail: the reply address is read from To and Cc only (what the
author wrote and a DKIM signer signs; never Delivered-To and its kin, which anyone adds);
mail holding To, Cc, Message-ID, In-Reply-To or References twice is not acted on (a second
copy above the signed one); and mail whose reply address names one conversation while its
In-Reply-To/References answer only another is not acted on either ("unroutable", no notice).

Who is an agent: the municipality map's `agents` (full addresses, or "@domain" for everyone
at a domain; the fallback mailbox's agents are that mailbox and its @domain). A full address
is preferred to a whole domain (`agent_match`): when one municipality lists the sender by
full address and another only by its domain, the sender answers for the first one only (is
"not_agent" in the other's conversations, and is told of failures as the first one's agent).

Nothing is lost or unexplained when a reply is NOT texted:

- the email is kept, whole, in the store's Failed list (`gateway.store.reply_mail`;
  `sms311 failed list|show|retry|delete`), whichever door it came by — a stranger's (not
  authenticated, or nobody's agent) within limits: at most `STRANGER_KEPT_PER_DAY` per sender
  address a day (mail with no usable sender counts as one sender, "unknown"), each cut to
  `STRANGER_KEPT_BYTES` (`truncated`). Beyond the count the mail is not kept but is still
  answered as handled — outcome "failed" with `kept=True` (the SMTP/LMTP ingress answers 250,
  so the sending server does not retry for ever; the IMAP listener files it in Failed) and
  "not kept" in the logged reason. An agent's failed reply is never dropped nor cut short;
- when the sender is an authenticated agent (of this municipality, or of another one),
  they get a short bilingual "not_texted" notice saying why (below the signature line,
  nothing left once quotes were cut, not an agent of this municipality, not an answer to
  any conversation, unreadable), in the conversation's thread or, when there is none, in
  reply to their own email. At most `NOT_TEXTED_NOTICES_PER_HOUR` such notices go to one
  address an hour: beyond, the reply is still kept and an INFO line says the notice was
  withheld. A "not_agent" notice quotes none of the reply (the sender may not answer that
  conversation: to it, a stranger); an "unroutable" one quotes its start to the agent.
  Strangers get no email from us (no backscatter), nor does a sender whose domain is not
  authenticated.

The listener then files the email in Processed or Failed according to the returned
`Disposition` (`kept` says whether a failed email is in the Failed list).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from email.utils import parseaddr
from typing import Any, Literal

from gateway.flows.agent_reply import EXCERPT_CHARS, queue_reply
from gateway.flows.thread_mail import answering, enqueue_notice, queue_email
from gateway.logs import log_full_detail
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

#: "Not texted" notices to one address: at most this many in any `NOTICE_WINDOW`. Counted
#: from the Failed list (every notice is about a reply kept there from that address: the
#: replies kept in the window bound the notices sent), so no other state is needed.
NOT_TEXTED_NOTICES_PER_HOUR = 5
NOTICE_WINDOW = timedelta(hours=1)
#: A stranger's mail (not authenticated, or nobody's agent) kept in the Failed list: at most
#: `STRANGER_KEPT_PER_DAY` per sender address (None, "unknown", for mail with no usable
#: sender) in any `STRANGER_WINDOW`, each cut to `STRANGER_KEPT_BYTES` (an agent's failed
#: reply: `gateway.store.reply_mail.MAX_KEPT_BYTES`, and never dropped).
STRANGER_KEPT_PER_DAY = 20
STRANGER_WINDOW = timedelta(days=1)
STRANGER_KEPT_BYTES = 256 * 1024


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


AgentMatch = Literal["address", "domain"]


def agent_match(sender: str, agents: tuple[str, ...]) -> AgentMatch | None:
    """How `sender` is one of `agents` (full addresses or "@domain" entries, no case):
    "address" when listed by full address, else "domain" when by its domain, else None."""
    sender = sender.strip().lower()
    if "@" not in sender:
        return None
    domain = sender.rpartition("@")[2]
    found: AgentMatch | None = None
    for agent in agents:
        agent = agent.strip().lower()
        if agent.startswith("@"):
            if domain == agent[1:]:
                found = "domain"
        elif sender == agent:
            return "address"
    return found


def is_agent(sender: str, agents: tuple[str, ...]) -> bool:
    """True when `sender` is one of `agents`: full addresses or "@domain" entries."""
    return agent_match(sender, agents) is not None


def mask_address(address: str | None) -> str:
    """An email address for an INFO log line: "j***@ottawa.example" (whole only when
    privacy.log_full_detail is on and the log level is DEBUG, like phone numbers)."""
    if not address:
        return "-"
    if log_full_detail():
        return address
    local, at, domain = address.rpartition("@")
    return f"{local[:1]}***@{domain}" if at and local else "***"


@dataclass(frozen=True)
class _Decision:
    """What `_decide` found: the disposition, and what a failure's notice needs."""

    disposition: Disposition
    reply: reading.ParsedReply | None = None
    conversation: Conversation | None = None
    why: KeptWhy | None = None  # the kind of failure (kept with the email)
    tell: bool = False  # send the sender a "not_texted" notice saying `why`
    municipality: Municipality | None = None  # the sender's (for "not_agent"/"unroutable")
    sender: str | None = None  # kept with the email (authenticated, or as claimed)
    authenticated: bool = False  # the sender passed authentication (or it is off)
    stranger: bool = True  # not authenticated, or nobody's agent: capped in the Failed list


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
                    disposition = self._keep(tx, key, raw, origin, decision, first=retry_of is None)
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
        where = ""
        if disposition.kept:
            dropped = disposition.reason.endswith(_DROPPED)
            where = " [answered as handled, not kept]" if dropped else " [kept in the Failed list]"
        log.log(
            logging.WARNING if disposition.outcome == "failed" else logging.INFO,
            "reply email via %s: %s (%s)%s", origin.kind, disposition.outcome,
            disposition.reason, where,
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
            # An authenticated agent's malformed email is theirs (kept whole); else a stranger's.
            sender = check.sender if check is not None and check.refused is None else None
            return _Decision(
                Disposition("failed", f"malformed email: {exc}"), sender=sender,
                authenticated=sender is not None,
                stranger=sender is None or self._municipality_of(sender) is None,
            )  # fmt: skip
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
                # Nothing is changed and nobody is told: the From may be forged. Routed
                # (reading only) so the console shows it in the conversation's timeline.
                return _Decision(
                    Disposition("failed", f"sender not authenticated: {check.refused}"),
                    reply, self._route(tx, reply), why="not_authenticated",
                    sender=check.sender, stranger=True,
                )  # fmt: skip
            reply = replace(reply, sender=check.sender)
        sender = reply.sender or None
        if reply.repeated:  # a second To, In-Reply-To, …: maybe added above a signed one
            return _Decision(
                Disposition(
                    "failed",
                    "unroutable: " + ", ".join(reply.repeated)
                    + " given more than once (RFC 5322 allows one)",
                ),
                reply, why="unroutable", sender=sender, authenticated=True, stranger=True,
            )  # fmt: skip

        conversation = self._route(tx, reply)
        other = self._other_thread(tx, reply, conversation)
        if conversation is not None and other is not None:
            # A mail written in one conversation (or to an outsider) re-sent to another's
            # reply address: its signature still holds, but it was never written for this one.
            return _Decision(
                Disposition(
                    "failed",
                    f"unroutable: the reply address is conversation {conversation.id}'s, "
                    f"but In-Reply-To/References answer conversation {other.id}",
                ),
                reply, why="unroutable", sender=sender, authenticated=True, stranger=True,
            )  # fmt: skip
        if conversation is None:
            home = self._municipality_of(reply.sender)
            return _Decision(
                Disposition("failed", "unroutable: no reply token and no known thread"),
                reply, why="unroutable", tell=home is not None, municipality=home,
                sender=sender, authenticated=True, stranger=home is None,
            )  # fmt: skip
        if not self._may_answer(reply.sender, conversation):
            home = self._municipality_of(reply.sender)
            return _Decision(
                Disposition(
                    "failed",
                    f"sender is not an agent of conversation {conversation.id} "
                    f"({conversation.municipality_id or 'fallback'})",
                ),
                reply, conversation, why="not_agent", tell=home is not None,
                municipality=self._directory().get(conversation.municipality_id or ""),
                sender=sender, authenticated=True, stranger=home is None,
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
                sender=sender, authenticated=True, stranger=False,
            )  # fmt: skip
        garbage = not_text_reason(reply.text)
        if garbage is not None:
            return _Decision(
                Disposition("failed", f"unreadable: {garbage}"), reply, conversation,
                why="unreadable", tell=True, sender=sender, authenticated=True, stranger=False,
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

    def _other_thread(
        self, tx: Tx, reply: reading.ParsedReply, conversation: Conversation | None
    ) -> Conversation | None:
        """The conversation that the reply's In-Reply-To/References answer when it is not
        `conversation` (found by the reply address) and none of them is `conversation`'s."""
        ids = (*reply.in_reply_to, *reversed(reply.references))
        if conversation is None or not reply.tokens or not ids:
            return None
        other = tx.conversation_by_email(ids)
        if other is None or other.id == conversation.id:
            return None
        for message_id in ids:
            found = tx.conversation_by_email([message_id])
            if found is not None and found.id == conversation.id:
                return None
        return other

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

    def _agent_lists(self) -> Iterator[tuple[Municipality, tuple[str, ...]]]:
        """Every municipality with its agents, then the fallback mailbox's (as a
        municipality named after the mailbox, id "")."""
        for municipality in self._directory().municipalities:
            if municipality.agents:
                yield municipality, municipality.agents
        fallback = self._settings.fallback_mailbox
        if fallback:
            home = Municipality(id="", name=fallback, province="", mailbox=fallback)
            yield home, self._fallback_agents()

    def _may_answer(self, sender: str, conversation: Conversation) -> bool:
        """`sender` is an agent of the conversation's municipality: listed there by full
        address, or by domain when no municipality lists them by full address (a full
        address is preferred to a whole domain)."""
        match = agent_match(sender, self._agents(conversation))
        if match != "domain":
            return match == "address"
        return not any(
            agent_match(sender, agents) == "address" for _, agents in self._agent_lists()
        )

    def _municipality_of(self, sender: str) -> Municipality | None:
        """The municipality `sender` is an agent of: the first listing them by full address,
        else the first by domain (None: nobody's agent; the fallback mailbox's agents
        count, as a municipality named after the mailbox)."""
        if not sender:
            return None
        by_domain: Municipality | None = None
        for municipality, agents in self._agent_lists():
            match = agent_match(sender, agents)
            if match == "address":
                return municipality
            if match == "domain" and by_domain is None:
                by_domain = municipality
        return by_domain

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
        *, first: bool,
    ) -> Disposition:  # fmt: skip
        """Keep the failed email in the Failed list (a stranger's within the caps, on its
        first handling: `first`); tell its sender why when they are an authenticated agent
        (`decision.tell`), on its first handling, within the notices' rate limit."""
        reply, conversation = decision.reply, decision.conversation
        disposition, now, sender = decision.disposition, self._now(), decision.sender
        if decision.stranger and first:
            kept = tx.count_failed_emails_from(sender, since=now - STRANGER_WINDOW)
            if kept >= STRANGER_KEPT_PER_DAY:
                # Not kept, but handled: the ingress answers 250, IMAP files it in Failed.
                reason = (
                    f"{disposition.reason}; {kept} emails from "
                    f"{'this sender' if sender else 'unknown senders'} kept in the last "
                    f"{_span(STRANGER_WINDOW)}, at most {STRANGER_KEPT_PER_DAY} from a "
                    f"stranger{_DROPPED}"
                )
                return replace(disposition, reason=reason, kept=True)
        tx.keep_failed_email(
            key, raw, disposition.reason, asdict(origin), now=now, sender=sender,
            subject=reply.subject if reply else None,
            conversation_id=conversation.id if conversation else None, why=decision.why,
            max_bytes=STRANGER_KEPT_BYTES if decision.stranger else None,
        )  # fmt: skip
        why = next((w for w in NOT_TEXTED_WHY if w == decision.why), None)
        if (
            first and decision.tell and decision.authenticated and why
            and reply is not None and reply.sender
        ):  # fmt: skip
            # This reply is kept (and counted): beyond the limit, the notice is withheld.
            recent = tx.count_failed_emails_from(
                reply.sender, since=now - NOTICE_WINDOW, whys=NOT_TEXTED_WHY
            )
            if recent > NOT_TEXTED_NOTICES_PER_HOUR:
                log.info(
                    "reply email via %s: not_texted notice to %s withheld: %d replies from "
                    "that address not texted in the last %s (at most %d notices)",
                    origin.kind, mask_address(reply.sender), recent, _span(NOTICE_WINDOW),
                    NOT_TEXTED_NOTICES_PER_HOUR,
                )  # fmt: skip
            else:
                self._tell(tx, reply, conversation, why, decision.municipality)
        return replace(disposition, kept=True)

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
        if reply.text and why == "unroutable":
            # To an agent, about their own email (nothing else holds it). Never for
            # "not_agent": that sender may not answer the conversation, none of it is quoted.
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
#: The end of the reason of a stranger's mail over the cap (answered as handled, not kept).
_DROPPED = ": not kept"


def _span(window: timedelta) -> str:
    """ "hour", "day", or "N hours" for a log line."""
    hours = int(window.total_seconds() // 3600)
    return {1: "hour", 24: "day"}.get(hours, f"{hours} hours")
