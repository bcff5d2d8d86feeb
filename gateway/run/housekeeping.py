"""Housekeeping, daily in the worker: the retention purge (`privacy.retention_days`: message
texts older than that are blanked, counts kept) and the console's day-old form keys and
presence marks. A store that is down postpones it to the next round."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

from gateway.app import Gateway
from gateway.store import StoreUnavailable
from gateway.store.privacy import purge_texts
from gateway.waiting import sleep_or

log = logging.getLogger(__name__)

RETENTION_EVERY = 24 * 3600.0
RETENTION_FIRST_AFTER = 60.0


async def retention_loop(
    gateway: Gateway,
    stop: asyncio.Event,
    *,
    first_after: float = RETENTION_FIRST_AFTER,
    every: float = RETENTION_EVERY,
) -> None:
    """Blank message texts older than `privacy.retention_days`, daily (counts are kept);
    and forget the console's day-old form keys and presence marks."""
    days = gateway.settings.privacy.retention_days
    await sleep_or(stop, first_after)
    while not stop.is_set():
        now = datetime.now(UTC)
        try:
            if days > 0:
                result = await asyncio.to_thread(
                    purge_texts, gateway.store, now - timedelta(days=days)
                )
                log.info(
                    "retention purge (%d days): %d texts blanked, %d sent outbox rows deleted",
                    days, result.texts_blanked, result.outbox_deleted,
                )
            await asyncio.to_thread(_prune_console, gateway, now - timedelta(days=1))
        except StoreUnavailable as exc:
            log.warning("retention purge postponed: store unavailable: %s", exc)
        await sleep_or(stop, every)


def _prune_console(gateway: Gateway, before: datetime) -> None:
    with gateway.console.transaction() as tx:
        gone = tx.prune(before)
    log.debug("console housekeeping: %d old form keys and presence marks removed", gone)
