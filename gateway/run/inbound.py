"""The worker's share of the inbound path: texts the webhook queued become emails.

The webhook stores a text that needs no answer and answers at once
(`gateway.flows.text_in.InboundService.accept`); `InboundProcessor` turns those queued
texts into conversation messages and emails in the outbox. It takes up to `batch`
residents with queued texts, the longest waiting first, and processes each resident's
texts oldest first in one transaction (`InboundService.process_queued`), so a resident's
texts keep their order, and several instances on PostgreSQL never process one number at
the same time (its lock). It wakes when the web half of the same process queued a text
(`Gateway.inbound_listeners`), on PostgreSQL when any instance did (NOTIFY), and
otherwise polls every `poll_interval` seconds. A store that is down is logged and tried
again after a pause; the queued texts are safe in the database meanwhile.

While a webhook is busy (a text accepted in the last `BUSY_WINDOW` seconds: by the web half
of this process, or the newest queued text for a webhook elsewhere), the
processor works in short rounds — `BUSY_PER_RESIDENT` texts of a resident per transaction
(on SQLite the webhook's commits wait for a worker's transaction: one writer at a time) and
at most `BUSY_ROUND_CPU` seconds of CPU a round — and rests `YIELD_FACTOR` times the CPU
time each round took. In `sms311 run`, where the web half and this share one Python process
(one core: the GIL), answering the provider keeps at least three quarters of the process: a
burst is acknowledged at full speed and processed at a quarter of the process meanwhile,
then at full speed once it is over. In the systemd layout (`sms311 web` and `sms311
worker`), the kernel shares the cores, and the short transactions keep the webhook's
commits from waiting long for the database.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from gateway.app import Gateway
from gateway.store import StoreUnavailable
from gateway.waiting import sleep_or

log = logging.getLogger(__name__)

BATCH = 64  # residents per round
# Texts of one resident per transaction. On SQLite the webhooks wait for a worker's
# transaction (one writer at a time): a short one keeps their p99 low. On PostgreSQL only
# that resident's own texts wait, and fewer, larger transactions save commits.
MAX_PER_RESIDENT = {"sqlite": 8, "postgresql": 32}
BUSY_PER_RESIDENT = 2  # texts of one resident per transaction while the webhook is busy
BUSY_ROUND_CPU = 0.01  # seconds of CPU: a round ends after this while the webhook is busy
BUSY_WINDOW = 0.2  # seconds: the webhook accepted a text this recently: it is busy
YIELD_FACTOR = 3.0  # while it is busy, rest this many times as long as a round took


class InboundProcessor:
    """Processes the inbound queue until stopped (see the module docstring)."""

    def __init__(
        self,
        gateway: Gateway,
        *,
        on_queued: Callable[[], None] = lambda: None,
        poll_interval: float = 0.25,
        batch: int = BATCH,
    ) -> None:
        self._gateway = gateway
        self._on_queued = on_queued  # outbox rows were queued: wake the dispatcher
        self._poll_interval = poll_interval
        self._batch = batch
        backend = "postgresql" if getattr(gateway.store, "postgresql", False) else "sqlite"
        self._per_resident = MAX_PER_RESIDENT[backend]
        self._wake = asyncio.Event()
        self.processed = 0  # texts processed by this instance (tests, the benchmark)
        self.last_round_cpu = 0.0  # CPU seconds the last round took (its thread's)
        self.last_round_busy = False  # was a webhook busy during the last round?

    def wake(self) -> None:
        """Look at the queue now rather than at the next poll."""
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self._wake.clear()
            try:
                handled = await asyncio.to_thread(self.process_once)
            except StoreUnavailable as exc:
                log.error("inbound queue: store unavailable: %s", exc)
                await sleep_or(stop, 2.0)
                continue
            if not handled:
                await sleep_or(stop, self._poll_interval, self._wake)
            elif self.last_round_busy:
                await sleep_or(stop, min(1.0, self.last_round_cpu * YIELD_FACTOR))

    def process_once(self) -> int:
        """One round: the queued texts of up to `batch` residents; how many were processed."""
        gateway = self._gateway
        started = time.thread_time()
        handled = queued = 0
        busy = self.webhook_busy()
        for phone in gateway.store.queued_phones(self._batch):
            if busy and handled and time.thread_time() - started > BUSY_ROUND_CPU:
                break
            limit = min(self._per_resident, BUSY_PER_RESIDENT) if busy else self._per_resident
            outcomes = gateway.inbound.process_queued(phone, limit)
            handled += len(outcomes)
            queued += sum(o.emails_queued + len(o.replies) for o in outcomes)
        if queued:  # emails (and, rarely, SMS replies) in the outbox
            self._on_queued()
        self.processed += handled
        self.last_round_cpu = time.thread_time() - started
        self.last_round_busy = busy
        return handled

    def webhook_busy(self) -> bool:
        """Is a webhook accepting texts? This process's web half says so at once; a
        webhook in another process (the systemd layout, other instances) is seen by the
        newest queued text's arrival (clocks: the same machine, or NTP)."""
        if self._gateway.webhook_busy(BUSY_WINDOW):
            return True
        newest = self._gateway.store.newest_queued_at()
        return newest is not None and datetime.now(UTC) - newest < timedelta(
            seconds=BUSY_WINDOW
        )
