"""The asyncio half: the outbox dispatcher and the mail listeners.

The dispatcher claims due outbox rows (a lease, so a crashed worker's rows come
back), sends them, and marks each sent, retried (capped exponential backoff with
jitter) or parked. A parked row is logged at ERROR and counted; `sms311 outbox`
lists and requeues parked rows. Nothing is ever dropped.

Claims: a claim lasts `outbox.takeover_seconds` (10 s) and a heartbeat renews the claims
this worker is working on every third of that, so the rows of an instance that died
(any host) are taken over by another within `takeover_seconds`, while a slow send of a
live worker keeps its row. A send still going after `outbox.lease_seconds` (120 s, longer
than any SMTP or API timeout) is no longer renewed. A worker that could not renew a
claim in time (the store unreachable) does not start sending that row: it is left to
whoever claims it next.

A taken-over row, or a row released as below, counts as an attempt that may have been
made (`OutboxItem.maybe_sent`): an SMS is then looked up at the provider before it is
sent again. So is an SMS whose last attempt failed in a way that may have reached the
provider (a timeout after sending, an unreadable answer, a 5xx); after a definite "not
sent" (429/20429, connection refused, bad credentials) the retry goes out without a
lookup, so a throttle storm is not made worse. An email may be sent twice (SMTP has no
way to ask), which only the one in flight can be.

A worker restarted after a crash (SIGKILL, OOM, power) does not even wait for the
claims of the process it replaces: at start it releases the claims of workers of the
same host and PID namespace that are no longer running (a worker id is
"host:pid:pid-namespace").
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parseaddr
from typing import Any, TypeVar

from gateway.app import Gateway
from gateway.flows.delivery import record_refusal
from gateway.flows.payloads import SmsPayload
from gateway.flows.thread_mail import reply_address_pattern
from gateway.logs import mask_phone
from gateway.mail.smtp import PermanentSmtpError, SmtpError, SmtpPool, TemporarySmtpError
from gateway.rules import segments
from gateway.rules.agent_notice import AgentNotice, compose_notice_raw
from gateway.rules.email_payload import from_payload
from gateway.rules.resident_email import (
    Attachment,
    MediaRef,
    compose_raw,
    media_filename,
)
from gateway.run.housekeeping import retention_loop
from gateway.sms import MediaError, SmsPermanentError, SmsTemporaryError
from gateway.store import OutboxItem, OutboxKind, StoreUnavailable
from gateway.store.pacing import Pacer, SegmentPacer, pacer_for
from gateway.waiting import sleep_or

_T = TypeVar("_T")

log = logging.getLogger(__name__)


# Rows claimed at once. Emails: enough for many conversations to go out on the pool's
# connections at once (the emails of one conversation leave one after the other; with 20,
# a few long conversations filled a batch and left connections idle). SMS: fewer, as they
# wait for the pacer while claimed, and other instances may send them meanwhile.
BATCH: dict[OutboxKind, int] = {"email": 100, "sms": 20}
BREAKER_MAX_SECONDS = 60.0  # the longest the circuit breaker waits between two probes
MARK_RETRIES = 3  # tries to mark sent rows as sent (the store briefly unavailable)


class _ClaimLapsed(Exception):
    """This worker's claim on a row may have lapsed: the row is not sent by it now."""


class _Breaker:
    """The circuit breaker of one outbox kind: after a connection-level failure (the mail
    server or the SMS provider unreachable, a time-out, a 421, a failed login) no row of
    that kind is claimed until a probe is due — `outbox.base_backoff_seconds` doubling up
    to `BREAKER_MAX_SECONDS` (never more than `outbox.max_backoff_seconds`), ±20% jitter.
    The probe is the next batch: its oldest row is tried alone; if it goes, the breaker
    closes and the rest is sent at once, else the breaker waits longer and the rest fails
    fast. Times are the dispatcher's clock (`now`)."""

    def __init__(self, kind: str, base: float, cap: float, rand: Callable[[], float]) -> None:
        self.kind = kind
        self._base = base
        self._cap = cap
        self._random = rand
        self.failures = 0  # connection-level failures in a row (0: closed)
        self.probe_at: datetime | None = None

    @property
    def closed(self) -> bool:
        return self.failures == 0

    def allows(self, now: datetime) -> bool:
        """May rows be claimed now (closed, or a probe is due)?"""
        return self.probe_at is None or now >= self.probe_at

    def trip(self, now: datetime, error: str) -> None:
        delay = backoff_seconds(self.failures, self._base, self._cap, self._random)
        self.failures += 1
        self.probe_at = now + timedelta(seconds=delay)
        log.warning(
            "dispatcher (%s): %s unreachable (%s); no %s sent before a probe in %.1fs "
            "(failure %d in a row)",
            self.kind, "the mail server" if self.kind == "email" else "the SMS provider",
            error, "email" if self.kind == "email" else "SMS", delay, self.failures,
        )

    def reset(self) -> None:
        if self.failures:
            log.warning("dispatcher (%s): reachable again after %d failed probe(s); resuming",
                        self.kind, self.failures - 1)
        self.failures = 0
        self.probe_at = None


class _Batch:
    """One claimed batch being handled: the connection-level failure that tripped the
    breaker during it (the rows not tried yet then fail fast), and the rows sent whose
    "sent" mark is not committed yet (their claims are renewed until it is)."""

    def __init__(self, dispatcher: Dispatcher, breaker: _Breaker) -> None:
        self._dispatcher = dispatcher
        self.breaker = breaker
        self.down: str | None = None
        self._unmarked: list[int] = []
        self._flusher: asyncio.Task[None] | None = None

    def failed(self, error: str) -> None:
        """A connection-level failure: trip the breaker (once per batch)."""
        if self.down is None:
            self.down = error
            self.breaker.trip(self._dispatcher._now(), error)

    def sent(self, id: int) -> None:
        """Row `id` was sent: marked by the next commit (several rows at once)."""
        self._unmarked.append(id)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        failures = 0
        while self._unmarked:
            ids = self._unmarked
            self._unmarked = []
            try:
                await asyncio.to_thread(self._dispatcher._gateway.store.mark_sent_many, ids)
            except StoreUnavailable:
                failures += 1
                self._unmarked[:0] = ids
                if failures >= MARK_RETRIES:
                    raise
                await asyncio.sleep(0.5 * failures)
                continue
            for id in ids:  # marked: no longer renewed
                self._dispatcher._claims.pop(id, None)

    async def marked(self) -> None:
        """Wait for every sent row to be marked (raises StoreUnavailable when it could not
        be: those rows' claims then lapse; another worker may send them again)."""
        while self._flusher is not None and not self._flusher.done():
            await self._flusher
        if self._flusher is not None:
            self._flusher.result()


@dataclass
class _Claim:
    """What the dispatcher knows of a row it claimed and works on."""

    expires: float  # loop time (monotonic) by which the claim surely still holds
    sending_since: float | None = None  # loop time the first send or lookup began
    lost: bool = False  # a renewal found it no longer claimed by this worker
    capped: bool = False  # sending for longer than outbox.lease_seconds: not renewed


def backoff_seconds(attempts: int, base: float, cap: float, rand: Callable[[], float]) -> float:
    """Delay before attempt number `attempts + 1`: base·2^attempts, capped, with ±20% jitter."""
    delay = min(cap, base * (2 ** min(attempts, 30)))
    return float(max(0.0, delay * (0.8 + 0.4 * rand())))


class Dispatcher:
    """Sends what the outbox holds: one loop for emails, one for SMS (paced).

    Emails are sent one after the other. SMS are sent concurrently (up to
    `sms_concurrency` requests in flight, so a slow provider API does not cap the
    rate) but never two at once to the same number, and never one while an earlier one
    to that number waits for its retry, so a resident gets the parts and replies in
    order; every send first waits for the segment pacer.
    """

    def __init__(
        self,
        gateway: Gateway,
        *,
        poll_interval: float = 0.25,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        pacer: SegmentPacer | None = None,
        sms_concurrency: int = 16,
        worker_id: str | None = None,
    ) -> None:
        self._gateway = gateway
        outbox = gateway.settings.outbox
        # The longest one send keeps its row (the heartbeat stops renewing it after that).
        self._lease = timedelta(seconds=outbox.lease_seconds)
        # A claim lasts this long unless renewed: a dead instance's rows are taken over by
        # the others after at most this long. Renewed every third of it.
        self._claim_for = timedelta(seconds=outbox.takeover_seconds)
        self._renew_every = outbox.takeover_seconds / 3
        self._claims: dict[int, _Claim] = {}
        self._keeper: asyncio.Task[None] | None = None
        self._poll_interval = poll_interval
        self._now = now
        self._wake = {"email": asyncio.Event(), "sms": asyncio.Event()}
        self._worker_id = worker_id or worker_identity()
        self._random = random.Random()
        self._pacer: Pacer = pacer or pacer_for(gateway.store, gateway.settings.sms.max_per_second)
        self._sms_threads = ThreadPoolExecutor(sms_concurrency, thread_name_prefix="sms")
        self._sms_slots = asyncio.Semaphore(sms_concurrency)
        # one SMTP connection pool while `run` runs (else one per `dispatch_once`)
        self._pool: SmtpPool | None = None
        self._breakers = {
            kind: _Breaker(
                kind, outbox.base_backoff_seconds,
                min(BREAKER_MAX_SECONDS, outbox.max_backoff_seconds), self._random.random,
            )
            for kind in ("email", "sms")
        }
        # number -> (id, due) of the earliest SMS to it that failed and waits for its retry:
        # the later ones to that number wait too, so texts and parts arrive in order
        self._waiting: dict[str, tuple[int, datetime]] = {}

    def wake(self, kind: str = "") -> None:
        """Look at the outbox (for `kind`, or both) now rather than at the next poll."""
        for each, event in self._wake.items():
            if kind in ("", each) or kind not in self._wake:
                event.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Dispatch emails and SMS until `stop` is set; what is in flight is finished first."""
        prepare = getattr(self._gateway.provider, "prepare", None)
        if prepare is not None:  # a client built at its first use is built now, not between
            await asyncio.to_thread(prepare)  # the pacer's grant and the send it granted
        log.info("dispatcher started as %s", self._worker_id)
        await self.release_dead_claims()
        self._pool = SmtpPool(self._gateway.settings.email.smtp)
        try:
            await asyncio.gather(self._loop("email", stop), self._loop("sms", stop))
        finally:
            if self._keeper is not None:
                self._keeper.cancel()
            self._sms_threads.shutdown(wait=False, cancel_futures=True)
            pool, self._pool = self._pool, None
            await pool.close()
        log.info("dispatcher stopped")

    async def release_dead_claims(self) -> int:
        """Release the rows claimed by workers of this host that died (see the module
        docstring), once, before this worker claims anything; how many. A store that is
        down is logged: those leases then simply expire."""
        store = self._gateway.store
        released = 0
        try:
            for claimant in await asyncio.to_thread(store.claimants):
                if not is_dead_worker(claimant, self._worker_id):
                    continue
                count = await asyncio.to_thread(
                    store.release_claims, claimant,
                    f"worker {claimant} stopped while holding it (it may have been sent)",
                )
                if count:
                    log.warning(
                        "released %d outbox row(s) claimed by %s, which is no longer running",
                        count, claimant,
                    )
                released += count
        except StoreUnavailable as exc:
            log.error("dispatcher: store unavailable, claims of dead workers kept: %s", exc)
        return released

    async def _loop(self, kind: OutboxKind, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                handled = await self.dispatch_once(kind)
            except StoreUnavailable as exc:
                log.error("dispatcher (%s): store unavailable: %s", kind, exc)
                handled = 0
                await sleep_or(stop, 2.0)
            if handled:
                continue
            self._wake[kind].clear()
            await sleep_or(stop, self._poll_interval, self._wake[kind])

    async def dispatch_once(self, kind: OutboxKind | None = None) -> int:
        """Claim and handle one batch of due rows (of `kind`, or of both); the number handled.
        A kind whose circuit breaker is open (its server unreachable) is not claimed until
        its probe is due."""
        kinds: list[OutboxKind] = [kind] if kind else ["email", "sms"]
        handled = 0
        for each in kinds:
            breaker = self._breakers[each]
            if not breaker.allows(self._now()):
                continue
            claimed_at = asyncio.get_running_loop().time()
            items = await asyncio.to_thread(
                self._gateway.store.claim_due, [each], BATCH[each], self._now(), self._claim_for,
                self._worker_id,
            )
            self._hold(items, claimed_at)
            batch = _Batch(self, breaker)
            try:
                if not breaker.closed and items:  # the probe: the oldest row alone first
                    await self._handle(each, items[:1], batch)
                    items_left = items[1:]
                else:
                    items_left = items
                await self._handle(each, items_left, batch)
                await batch.marked()
            finally:
                for item in items:
                    self._claims.pop(item.id, None)
                if not self._claims and self._keeper is not None:
                    self._keeper.cancel()
                    self._keeper = None
            handled += len(items)
        return handled

    # -- claims -----------------------------------------------------------------------------

    async def _handle(self, kind: OutboxKind, items: Sequence[OutboxItem], batch: _Batch) -> None:
        if not items:
            return
        if kind == "email":
            async with self._smtp_pool() as pool:
                await self._send_email_batch(items, batch, pool)
        else:
            await self._send_sms_batch(items, batch)

    @contextlib.asynccontextmanager
    async def _smtp_pool(self) -> AsyncIterator[SmtpPool]:
        """The pool of `run`; outside it (a lone `dispatch_once`), one for this batch."""
        if self._pool is not None:
            yield self._pool
            return
        async with SmtpPool(self._gateway.settings.email.smtp) as pool:
            yield pool

    def _hold(self, items: Sequence[OutboxItem], claimed_at: float) -> None:
        """Work on `items` (just claimed): renew their claims until they are handled."""
        expires = claimed_at + self._claim_for.total_seconds()
        for item in items:
            self._claims[item.id] = _Claim(expires)
        if items and (self._keeper is None or self._keeper.done()):
            self._keeper = asyncio.create_task(self._keep_claims())

    async def _keep_claims(self) -> None:
        while self._claims:
            await asyncio.sleep(self._renew_every)
            await self.renew_claims()

    async def renew_claims(self) -> int:
        """The heartbeat: extend the claims of the rows this worker works on (not those
        sending for longer than `outbox.lease_seconds`); how many were renewed. A store
        that is down is logged: the claims then lapse, and the rows are not sent by this
        worker (see `_begin`)."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        ids = []
        for id, claim in self._claims.items():
            if claim.lost or claim.capped:
                continue
            if claim.sending_since is not None and (
                started - claim.sending_since >= self._lease.total_seconds()
            ):
                claim.capped = True
                log.warning(
                    "outbox %s: still sending after %.0fs (outbox.lease_seconds): its claim is "
                    "no longer renewed; another worker may take it over (and look it up first)",
                    id, self._lease.total_seconds(),
                )
                continue
            ids.append(id)
        if not ids:
            return 0
        try:
            kept = await asyncio.to_thread(
                self._gateway.store.renew_claims, ids, self._worker_id,
                self._now() + self._claim_for,
            )
        except StoreUnavailable as exc:
            log.warning("dispatcher: claims not renewed (store unavailable): %s", exc)
            return 0
        for id in ids:
            renewed = self._claims.get(id)
            if renewed is None:  # handled meanwhile
                continue
            if id in kept:
                renewed.expires = max(
                    renewed.expires, started + self._claim_for.total_seconds()
                )
            else:
                renewed.lost = True
        return len(kept)

    def _begin(self, item: OutboxItem) -> None:
        """About to send (or look up) `item`: raise `_ClaimLapsed` unless this worker's
        claim surely holds for a while yet (a third of `outbox.takeover_seconds`), so a
        worker cut off from the store never sends a row another may have taken over."""
        claim = self._claims.get(item.id)
        now = asyncio.get_running_loop().time()
        if claim is None or claim.lost or claim.capped or now + self._renew_every >= claim.expires:
            why = (
                "is no longer held (its batch failed)" if claim is None
                else "was taken over" if claim.lost
                else "could not be renewed in time"
            )
            log.warning("outbox %s (%s): not sent by this worker: its claim %s; left to the "
                        "next claim", item.id, item.kind, why)
            raise _ClaimLapsed
        if claim.sending_since is None:
            claim.sending_since = now

    async def _deliver(
        self, item: OutboxItem, send: Callable[[OutboxItem], Awaitable[None]],
        batch: _Batch | None = None,
    ) -> bool:
        """Send `item` and record the outcome; False when it was left alone because this
        worker's claim on it may have lapsed (whoever claims it next sends it).

        With a `batch`: once its breaker tripped (a connection-level failure), `item` is
        not tried but fails at once (an attempt, as if refused); a sent email is marked
        with the batch's next commit (its claim renewed until then), never before its SMTP
        transaction succeeded."""
        marked_later = False
        try:
            if batch is not None and batch.down is not None:
                self._begin(item)  # not a row this worker may no longer hold
                await self._retry(item, f"not tried: {batch.down}", maybe_sent=item.maybe_sent
                                  if item.kind == "sms" else False)
                return True
            await send(item)
        except _ClaimLapsed:
            return False
        except SmsTemporaryError as exc:
            if batch is not None and _unreachable(exc):
                batch.failed(str(exc))
            if exc.retry_after:  # the provider asked every sender to slow down, not just this one
                self._pacer.pause(exc.retry_after)
            await self._retry(item, str(exc), exc.retry_after, maybe_sent=exc.maybe_sent)
        except (TemporarySmtpError, OSError, TimeoutError) as exc:
            if batch is not None and item.kind == "email" and _unreachable(exc):
                batch.failed(str(exc))
            # an SMS failing this way (not through the provider's errors) may have gone
            await self._retry(item, str(exc), maybe_sent=item.kind == "sms")
        except SmsPermanentError as exc:
            await self._sms_failed_for_good(item, exc)
        except (PermanentSmtpError, ValueError, KeyError, TypeError) as exc:
            if batch is not None and isinstance(exc, SmtpError) and exc.connection:
                batch.failed(str(exc))
            await self._park(item, f"{type(exc).__name__}: {exc}", maybe_sent=item.maybe_sent)
        else:
            if batch is not None:
                batch.breaker.reset()
            if batch is not None and item.kind == "email":
                batch.sent(item.id)
                marked_later = True
            else:
                await asyncio.to_thread(self._gateway.store.mark_sent, item.id)
                self._stop_waiting_for(item)
        finally:
            if not marked_later:
                self._claims.pop(item.id, None)
        return True

    # -- email ------------------------------------------------------------------------------

    async def _send_email_batch(
        self, items: Sequence[OutboxItem], batch: _Batch, pool: SmtpPool
    ) -> None:
        """Send `items` on up to `pool.size` connections at once; the emails of one
        conversation one after the other, in order (so they arrive threaded in order)."""
        by_conversation: dict[object, list[OutboxItem]] = {}
        for item in items:
            conversation = item.payload.get("conversation_id")
            key = ("row", item.id) if conversation is None else conversation
            by_conversation.setdefault(key, []).append(item)
        queues: Iterator[list[OutboxItem]] = iter(by_conversation.values())
        send = functools.partial(self._send_email, pool=pool)

        async def sender() -> None:
            for queue in queues:  # shared: each sender takes the next conversation
                for item in queue:
                    await self._deliver(item, send, batch)

        await asyncio.gather(*(sender() for _ in range(min(pool.size, len(by_conversation)))))

    async def _send_email(self, item: OutboxItem, pool: SmtpPool) -> None:
        self._begin(item)
        email = from_payload(item.payload)
        if isinstance(email, AgentNotice):
            message = compose_notice_raw(email, self._gateway.describe_error)
            await pool.send(message)
            self._gateway.metrics.emails_sent.inc()
            log.info("notice sent: %s conversation=%s outbox=%s", email.kind,
                     email.conversation_id, item.id)
            return
        attachments: list[Attachment] = []
        failed: list[MediaRef] = []
        # A media that keeps failing must not hold the text back for ever: after half the
        # attempts the email goes without it, its URL listed in the body.
        give_up_media = item.attempts + 1 >= self._gateway.settings.outbox.max_attempts // 2
        for index, text in enumerate(email.texts):
            for n, media in enumerate(text.media):
                try:
                    attachments.append(await self._fetch(media, f"media-{index + 1}-{n + 1}"))
                except MediaError as exc:
                    if exc.temporary and not give_up_media:
                        raise TemporarySmtpError(f"media not fetched yet: {exc}") from exc
                    log.warning("outbox %s: media left out of the email: %s", item.id, exc)
                    failed.append(media)
        message = compose_raw(email, attachments, failed)
        await pool.send(message)
        self._gateway.metrics.emails_sent.inc()
        if email.texts:
            age = (self._now() - email.texts[-1].received_at).total_seconds()
            self._gateway.metrics.text_to_email_seconds.observe(max(0.0, age))
        log.info("email sent: conversation=%s outbox=%s", email.conversation_id, item.id)

    async def _fetch(self, media: MediaRef, stem: str) -> Attachment:
        """Fetch one MMS media with the provider's credentials."""
        content_type, data = await asyncio.to_thread(self._gateway.provider.fetch_media, media.url)
        content_type = content_type or media.content_type
        return Attachment(
            filename=media_filename(stem, content_type),
            content_type=content_type,
            data=data,
        )

    # -- SMS --------------------------------------------------------------------------------

    async def _send_sms_batch(self, items: Sequence[OutboxItem], batch: _Batch) -> None:
        by_number: dict[str, list[OutboxItem]] = {}
        for item in items:
            by_number.setdefault(str(item.payload.get("to", "")), []).append(item)

        async def in_order(queue: list[OutboxItem]) -> None:
            async with self._sms_slots:
                for item in queue:
                    if await self._held_back(item):
                        continue
                    if not await self._deliver(item, self._send_sms, batch):
                        return  # its claim lapsed: the later ones to that number wait too

        await asyncio.gather(*(in_order(queue) for queue in by_number.values()))

    async def _held_back(self, item: OutboxItem) -> bool:
        """True (and the row postponed) when an earlier SMS to the same number failed and
        waits for its retry: a resident gets the replies, and the parts of a long reply,
        in order, even across 429s and outages. (Per process, as the pacing is.)"""
        to = str(item.payload.get("to", ""))
        waiting = self._waiting.get(to)
        if waiting is None or waiting[0] >= item.id:
            return False
        first, due = waiting
        now = self._now()
        if due < now - self._lease:  # that row was handled elsewhere (another worker, by hand)
            del self._waiting[to]
            return False
        until = max(due, now + timedelta(seconds=self._poll_interval))
        await asyncio.to_thread(self._gateway.store.postpone, item.id, until)
        self._claims.pop(item.id, None)
        log.info("outbox %s (sms) waits for outbox %s, an earlier text to the same number",
                 item.id, first)
        return True

    def _stop_waiting_for(self, item: OutboxItem) -> None:
        """`item` was sent or given up: later SMS to its number need not wait for it."""
        if item.kind == "sms":
            to = str(item.payload.get("to", ""))
            if self._waiting.get(to, (None,))[0] == item.id:
                del self._waiting[to]

    async def _provider(self, call: Callable[..., _T], *args: Any) -> _T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._sms_threads, functools.partial(call, *args))

    async def _send_sms(self, item: OutboxItem) -> None:
        sms = SmsPayload.from_dict(item.payload)
        to, body = sms.to, sms.body
        provider = self._gateway.provider
        sid: str | None = None
        if item.maybe_sent:
            # The last attempt may have reached the provider (a timeout after sending, a
            # worker that stopped mid-send): look before sending again, so a resident never
            # gets a reply twice. After a definite "not sent" (a 429, a refused connection)
            # there is nothing to look for: no lookup, so a throttle storm is not made worse.
            self._begin(item)
            try:
                sid = await self._provider(provider.find_sent, to, body, item.created_at)
            except SmsTemporaryError as exc:
                exc.maybe_sent = True  # not looked up: that earlier attempt may still have gone
                raise
            if sid:
                log.info("outbox %s: already sent as %s, not sending again", item.id, sid[:12])
        if sid is None:
            await self._pacer.acquire(segments.count_segments(body))
            self._begin(item)
            sid = await self._provider(provider.send, to, body, self._status_callback())
        self._gateway.metrics.texts_out.labels("sent").inc()
        if sms.queued_at:
            age = (self._now() - datetime.fromisoformat(sms.queued_at)).total_seconds()
            self._gateway.metrics.reply_to_sms_seconds.observe(max(0.0, age))
        await asyncio.to_thread(self._record_sent, sms, sid)
        log.info("sms sent: to=%s outbox=%s part=%s/%s", mask_phone(to), item.id,
                 sms.part, sms.parts)

    def _status_callback(self) -> str:
        return self._gateway.settings.public_url.rstrip("/") + "/sms/status"

    def _record_sent(self, sms: SmsPayload, sid: str) -> None:
        if sms.message_id is None:
            return
        with self._gateway.store.transaction() as tx:
            first = sms.part == 1  # status callbacks follow the first part
            tx.set_message_status(sms.message_id, "sent", None, sid if first else None)

    async def _sms_failed_for_good(self, item: OutboxItem, exc: SmsPermanentError) -> None:
        """The provider refused for good: tell the agent, mark the resident if opted out."""
        self._gateway.metrics.texts_out.labels("refused").inc()
        await asyncio.to_thread(
            record_refusal, self._gateway.store, self._gateway.settings,
            SmsPayload.from_dict(item.payload), exc,
        )
        await self._park(item, f"refused by the provider ({exc.code}): {exc}; agent told")

    # -- retries ----------------------------------------------------------------------------

    async def _retry(
        self, item: OutboxItem, error: str, at_least: float | None = None, *,
        maybe_sent: bool = False,
    ) -> None:
        """Due again after the backoff; `maybe_sent`: this attempt may have reached the far
        side (then an SMS is looked up before it is sent again)."""
        outbox = self._gateway.settings.outbox
        attempts = item.attempts + 1
        if attempts >= outbox.max_attempts:
            await self._park(item, f"gave up after {attempts} attempts: {error}",
                             maybe_sent=maybe_sent)
            return
        delay = backoff_seconds(
            item.attempts, outbox.base_backoff_seconds, outbox.max_backoff_seconds,
            self._random.random,
        )
        delay = max(delay, at_least or 0.0)
        log.warning(
            "outbox %s (%s) failed, attempt %d, retry in %.1fs: %s",
            item.id, item.kind, attempts, delay, error,
        )
        self._gateway.metrics.outbox_retries.labels(item.kind).inc()
        due = self._now() + timedelta(seconds=delay)
        await asyncio.to_thread(
            functools.partial(
                self._gateway.store.mark_retry, item.id, error, due, maybe_sent=maybe_sent
            )
        )
        if item.kind == "sms":
            to = str(item.payload.get("to", ""))
            waiting = self._waiting.get(to)
            if waiting is None or waiting[0] >= item.id:
                self._waiting[to] = (item.id, due)

    async def _park(self, item: OutboxItem, error: str, *, maybe_sent: bool = False) -> None:
        log.error(
            "outbox %s (%s) PARKED: %s — see `sms311 outbox`, retry with `sms311 outbox retry %s`",
            item.id, item.kind, error, item.id,
        )
        self._gateway.metrics.outbox_parked.labels(item.kind).inc()
        await asyncio.to_thread(
            functools.partial(
                self._gateway.store.mark_parked, item.id, error, maybe_sent=maybe_sent
            )
        )
        self._stop_waiting_for(item)


def _unreachable(exc: BaseException) -> bool:
    """A failure of the server or the connection, not of this message: an SmtpError
    saying so, a socket error or time-out, an SMS provider error caused by one (its API
    unreachable)."""
    if isinstance(exc, SmtpError):
        return exc.connection
    if isinstance(exc, SmsTemporaryError):
        return isinstance(exc.__cause__, (OSError, TimeoutError))
    return isinstance(exc, (OSError, TimeoutError))


def _pid_namespace() -> str:
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:  # no /proc (not Linux): the host name and PID must do
        return "-"


def worker_identity() -> str:
    """This process as a claimant of outbox rows: "host:pid:pid-namespace"."""
    return f"{socket.gethostname()}:{os.getpid()}:{_pid_namespace()}"


def is_dead_worker(claimant: str, me: str) -> bool:
    """True when `claimant` (a worker id) is known to be gone: the same host and PID
    namespace as `me` and no such process, or `me` itself (at start-up, rows claimed
    under our own id were claimed by an earlier process that had our PID). A worker of
    another host or namespace (or an id in another format) cannot be checked: False."""
    if claimant == me:
        return True
    theirs, mine = claimant.rsplit(":", 2), me.rsplit(":", 2)
    if len(theirs) != 3 or theirs[0] != mine[0] or theirs[2] != mine[2]:
        return False
    try:
        pid = int(theirs[1])
    except ValueError:
        return False
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # EPERM: it exists (another user's process)
        return False
    return False


UNKNOWN_REPLY_ADDRESS = (
    "550 5.1.1 <{address}>: no such reply address here (no conversation has this token; "
    "an old conversation may have been erased after the retention period)"
)
LOOKUP_FAILED = "451 4.3.0 Cannot check the reply address now, please try again later"


def ingress_recipients(gateway: Gateway) -> Callable[[str], Awaitable[bool | str]]:
    """Which RCPT addresses the reply ingress takes: a reply address
    (`email.reply_address`) whose token is a conversation's, open or closed (looked up in
    the store, off the loop; unknown: the 550 `UNKNOWN_REPLY_ADDRESS`, so strangers cannot fill the
    Failed list; the store down: the 451 `LOOKUP_FAILED`, the sender retries), and the
    gateway's From address (`email.from_address`: a client that ignores Reply-To, or Mutt
    told "no" at its Reply-To prompt, answers there; such mail is routed by
    In-Reply-To/References)."""
    settings = gateway.settings
    pattern = reply_address_pattern(settings.email.reply_address)
    own = parseaddr(settings.email.from_address)[1].strip().lower()

    def known(token: str) -> bool:
        with gateway.console.reading() as tx:  # read-only: never waits for the write lock
            return tx.core.conversation_by_token(token) is not None

    async def accept(address: str) -> bool | str:
        address = address.strip().lower()
        if own and address == own:
            return True
        match = pattern.match(address)
        if match is None:
            return False
        try:
            found = await asyncio.to_thread(known, match.group(1).lower())
        except StoreUnavailable as exc:
            log.warning("reply ingress: a recipient not checked (store unavailable: %s); "
                        "answered 451", exc)
            return LOOKUP_FAILED
        return True if found else UNKNOWN_REPLY_ADDRESS.format(address=address)

    return accept


async def run_worker(
    gateway: Gateway, stop: asyncio.Event, dispatcher: Dispatcher | None = None
) -> None:
    """The worker until `stop`: the dispatcher, the IMAP listener (when `email.imap` is
    set), the SMTP/LMTP reply ingress (when `email.ingress` is set) and the daily
    retention purge (when `privacy.retention_days` is not 0)."""
    from gateway.run.inbound import InboundProcessor
    from gateway.run.limits import ingress_connection_share
    from gateway.store.coordination import (
        MailboxLease,
        OutboxListener,
        postgres_conninfo,
        while_leased,
    )
    from gateway.store.service_state import record_state

    dispatcher = dispatcher or Dispatcher(gateway)
    sink = gateway.replies(on_queued=dispatcher.wake)
    email = gateway.settings.email
    inbound = InboundProcessor(gateway, on_queued=dispatcher.wake)
    gateway.inbound_listeners.append(inbound.wake)  # `sms311 run`: the web half queued one
    tasks = [dispatcher.run(stop), inbound.run(stop), retention_loop(gateway, stop)]
    # PostgreSQL: several instances may share the database (None on SQLite)
    conninfo = postgres_conninfo(gateway.store)
    if email.imap is not None:
        from gateway.mail.imap import ImapListener

        listener = ImapListener(
            email.imap, sink, gateway.store, idle_timeout=email.imap.idle_restart_seconds,
            record_state=functools.partial(record_state, gateway.store, "imap"),  # /healthz
        )
        # one listener per mailbox across instances; another takes over when this one dies
        lease = MailboxLease(conninfo, email.imap.host, email.imap.username, email.imap.mailbox)
        tasks.append(while_leased(lease, listener.run, stop))
    if conninfo is not None:  # rows enqueued (texts queued) by any instance: looked at at once

        def notified(kind: str) -> None:
            if kind in ("inbound", ""):
                inbound.wake()
            if kind != "inbound":
                dispatcher.wake(kind)

        tasks.append(OutboxListener(conninfo, notified).run(stop))
    ingress = None
    if email.ingress is not None:  # (aiosmtpd is loaded only then)
        from gateway.mail.ingress import ReplyIngress

        wanted = email.ingress.max_connections
        share = ingress_connection_share(wanted)
        if share < wanted:
            log.warning(
                "email.ingress.max_connections is %d, more than half the open files limit: "
                "the ingress takes at most %d connections (raise LimitNOFILE)", wanted, share,
            )  # fmt: skip
        ingress = ReplyIngress.from_settings(
            email.ingress, sink, accept=ingress_recipients(gateway), max_connections=share
        )
        try:
            await ingress.start()
        except Exception as exc:
            await _record_service(gateway, "ingress", False, f"cannot listen: {exc}")
            raise
        await _record_service(gateway, "ingress", True, f"listening on {email.ingress.listen}")
    try:
        await asyncio.gather(*tasks)
    finally:
        gateway.inbound_listeners.remove(inbound.wake)
        if ingress is not None:
            await ingress.stop()


async def _record_service(gateway: Gateway, name: str, ok: bool, detail: str) -> None:
    """Record a service's state for /healthz's details (in a thread; a store that is down
    is logged, never fatal)."""
    from gateway.store.service_state import record_state

    try:
        await asyncio.to_thread(record_state, gateway.store, name, ok, detail)
    except Exception as exc:
        log.warning("%s: state not recorded: %s", name, type(exc).__name__)
