"""The asyncio half: the outbox dispatcher (and, later, the mail listeners).

The dispatcher claims due outbox rows (a lease, so a crashed worker's rows come
back), sends them, and marks each sent, retried (capped exponential backoff with
jitter) or parked. A parked row is logged at ERROR and counted; `sms311 outbox`
lists and requeues parked rows. Nothing is ever dropped.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from gateway import emails
from gateway.mail.smtp import PermanentSmtpError, TemporarySmtpError, send_email
from gateway.services import Gateway
from gateway.sms import MediaError
from gateway.store import OutboxItem, StoreUnavailable

log = logging.getLogger(__name__)

LEASE = timedelta(minutes=2)
BATCH = 20


def backoff_seconds(attempts: int, base: float, cap: float, rand: Callable[[], float]) -> float:
    """Delay before attempt number `attempts + 1`: base·2^attempts, capped, with ±20% jitter."""
    delay = min(cap, base * (2 ** min(attempts, 30)))
    return float(max(0.0, delay * (0.8 + 0.4 * rand())))


class Dispatcher:
    """Sends what the outbox holds."""

    def __init__(
        self,
        gateway: Gateway,
        *,
        poll_interval: float = 0.25,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._gateway = gateway
        self._poll_interval = poll_interval
        self._now = now
        self._wake = asyncio.Event()
        self._worker_id = f"{socket.gethostname()}:{os.getpid()}"
        self._random = random.Random()

    def wake(self) -> None:
        """Look at the outbox now rather than at the next poll."""
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Dispatch until `stop` is set; the row in flight is finished first."""
        log.info("dispatcher started as %s", self._worker_id)
        while not stop.is_set():
            try:
                sent = await self.dispatch_once()
            except StoreUnavailable as exc:
                log.error("dispatcher: store unavailable: %s", exc)
                sent = 0
                await _sleep_or(stop, 2.0)
            if sent:
                continue
            self._wake.clear()
            await _sleep_or(stop, self._poll_interval, self._wake)
        log.info("dispatcher stopped")

    async def dispatch_once(self) -> int:
        """Claim and handle one batch of due rows; the number handled."""
        store = self._gateway.store
        items = await asyncio.to_thread(
            store.claim_due, ["email"], BATCH, self._now(), LEASE, self._worker_id
        )
        for item in items:
            await self._deliver(item)
        return len(items)

    async def _deliver(self, item: OutboxItem) -> None:
        try:
            if item.kind == "email":
                await self._send_email(item)
            else:
                raise PermanentSmtpError(f"unknown outbox kind {item.kind!r}")
        except (TemporarySmtpError, OSError, TimeoutError) as exc:
            await self._retry(item, str(exc))
        except (PermanentSmtpError, ValueError, KeyError, TypeError) as exc:
            await self._park(item, f"{type(exc).__name__}: {exc}")
        else:
            await asyncio.to_thread(self._gateway.store.mark_sent, item.id)

    async def _send_email(self, item: OutboxItem) -> None:
        email = emails.ResidentEmail.from_dict(item.payload)
        attachments: list[emails.Attachment] = []
        failed: list[emails.MediaRef] = []
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
        message = emails.compose(email, attachments, failed)
        await send_email(message, self._gateway.settings.email.smtp)
        self._gateway.metrics.emails_sent.inc()
        if email.texts:
            age = (self._now() - email.texts[-1].received_at).total_seconds()
            self._gateway.metrics.text_to_email_seconds.observe(max(0.0, age))
        log.info("email sent: conversation=%s outbox=%s", email.conversation_id, item.id)

    async def _fetch(self, media: emails.MediaRef, stem: str) -> emails.Attachment:
        """Fetch one MMS media with the provider's credentials."""
        content_type, data = await asyncio.to_thread(self._gateway.provider.fetch_media, media.url)
        content_type = content_type or media.content_type
        return emails.Attachment(
            filename=emails.media_filename(stem, content_type),
            content_type=content_type,
            data=data,
        )

    async def _retry(self, item: OutboxItem, error: str) -> None:
        outbox = self._gateway.settings.outbox
        attempts = item.attempts + 1
        if attempts >= outbox.max_attempts:
            await self._park(item, f"gave up after {attempts} attempts: {error}")
            return
        delay = backoff_seconds(
            item.attempts, outbox.base_backoff_seconds, outbox.max_backoff_seconds,
            self._random.random,
        )
        log.warning(
            "outbox %s (%s) failed, attempt %d, retry in %.1fs: %s",
            item.id, item.kind, attempts, delay, error,
        )
        self._gateway.metrics.outbox_retries.labels(item.kind).inc()
        await asyncio.to_thread(
            self._gateway.store.mark_retry, item.id, error, self._now() + timedelta(seconds=delay)
        )

    async def _park(self, item: OutboxItem, error: str) -> None:
        log.error(
            "outbox %s (%s) PARKED: %s — see `sms311 outbox`, retry with `sms311 outbox retry %s`",
            item.id, item.kind, error, item.id,
        )
        self._gateway.metrics.outbox_parked.labels(item.kind).inc()
        await asyncio.to_thread(self._gateway.store.mark_parked, item.id, error)


async def _sleep_or(stop: asyncio.Event, seconds: float, *others: asyncio.Event) -> None:
    """Sleep up to `seconds`, waking early when any event is set."""
    waiters = [asyncio.ensure_future(e.wait()) for e in (stop, *others)]
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


async def run_worker(
    gateway: Gateway, stop: asyncio.Event, dispatcher: Dispatcher | None = None
) -> None:
    """The worker: the dispatcher (and the listeners, when configured) until `stop`."""
    dispatcher = dispatcher or Dispatcher(gateway)
    await dispatcher.run(stop)
