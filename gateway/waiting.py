"""Waiting in the asyncio half: `sleep_or(stop, seconds, *others)`, a sleep that a stop (or
any other event) cuts short. Used by the dispatcher, housekeeping and the coordination of
instances, so shutdown never waits out a poll interval."""

from __future__ import annotations

import asyncio


async def sleep_or(stop: asyncio.Event, seconds: float, *others: asyncio.Event) -> None:
    """Sleep up to `seconds`, waking early when `stop` or any of `others` is set."""
    waiters = [asyncio.ensure_future(e.wait()) for e in (stop, *others)]
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
