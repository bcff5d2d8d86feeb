"""Running the gateway: the web half, the worker (asyncio), or both, until SIGTERM.

The web half (uvicorn in a thread, `gateway/run/web_server.py`) is loaded only by a process
that serves it, and the worker's modules only by one that runs it: each of the systemd
layout's two processes carries only its own half (README, Performance: Memory).

In `sms311 run`, a text queued by the web half wakes the worker's inbound processor, and an
email queued wakes its dispatcher.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from gateway.app import Gateway
from gateway.run import sdnotify
from gateway.run.limits import raise_open_files_limit
from gateway.store import StoreUnavailable
from gateway.store.sql import as_sql_store

if TYPE_CHECKING:
    from gateway.run.web_server import WebServer

log = logging.getLogger(__name__)

Extra = Callable[[asyncio.Event], Coroutine[Any, Any, None]]


def split_listen(listen: str) -> tuple[str, int]:
    """'127.0.0.1:8311' -> ('127.0.0.1', 8311); '[::1]:8311' works too."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


async def run_gateway(
    gateway: Gateway,
    *,
    web: bool = True,
    worker: bool = True,
    extras: tuple[Extra, ...] = (),
    on_ready: Callable[[], None] | None = None,
) -> None:
    """Run the chosen halves until SIGTERM/SIGINT; under systemd, tell it READY/STOPPING
    and feed its watchdog while the process really works."""
    raise_open_files_limit()  # every connection is a file descriptor (run/limits.py)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    notifier = sdnotify.Notifier.from_environment(os.environ)
    try:
        for warning in as_sql_store(gateway.store).durability_warnings():
            log.warning("%s", warning)
    except StoreUnavailable as exc:  # the store may come later: /healthz says so
        log.warning("durability settings not read: %s", exc)
    if gateway.settings.email.sender_authentication == "off":
        log.warning(
            "email.sender_authentication is off: a reply's From is believed as written, so "
            "anyone who knows a reply address or a thread's Message-ID can text a resident"
        )

    def shutdown() -> None:
        notifier.stopping()
        stop.set()

    loop.add_signal_handler(signal.SIGTERM, shutdown)
    loop.add_signal_handler(signal.SIGINT, shutdown)
    loop.add_signal_handler(signal.SIGHUP, lambda: _reload(gateway, notifier))
    if web:  # (uvicorn, Flask and the console are not loaded by a worker-only process)
        from gateway.run.web_server import WebServer
        from gateway.web.asgi import create_asgi_app
    server = WebServer(create_asgi_app(gateway), gateway.settings.web.listen) if web else None
    # /metrics and the detailed /healthz on their own (internal) address, when set
    metrics_listen = gateway.settings.web.metrics_listen
    internal = (
        WebServer(create_asgi_app(gateway, internal=True), metrics_listen, name="metrics")
        if web and metrics_listen is not None
        else None
    )
    for listener in (server, internal):
        if listener is not None:
            listener.start()
    tasks: list[asyncio.Task[None]] = [asyncio.create_task(extra(stop)) for extra in extras]
    wake: Callable[[], None] | None = None
    if worker:  # (SMTP, IMAP and the outbox are not loaded by a web-only process)
        from gateway.run.worker import Dispatcher, run_worker

        dispatcher = Dispatcher(gateway)
        if web:  # a committed text wakes the dispatcher at once (no outbox poll wait)

            def wake() -> None:
                with contextlib.suppress(RuntimeError):  # the loop is closing
                    loop.call_soon_threadsafe(dispatcher.wake)

            gateway.outbox_listeners.append(wake)
        tasks.append(asyncio.create_task(run_worker(gateway, stop, dispatcher)))
    if on_ready is not None:
        on_ready()
    notifier.ready("Running")
    health = _WatchdogCheck(gateway, tasks, server, internal)
    feeder = asyncio.create_task(
        sdnotify.feed_watchdog(notifier, sdnotify.watchdog_interval(os.environ), health, stop)
    )
    try:
        if tasks:
            await asyncio.gather(*tasks)
        else:
            await stop.wait()
    finally:
        stop.set()
        await feeder
        for listener in (server, internal):
            if listener is not None:
                listener.stop()
        if wake is not None:
            gateway.outbox_listeners.remove(wake)
        log.info("stopped")


class _WatchdogCheck:
    """Is the process really working? The watchdog is fed only while it is, so systemd
    restarts a wedged gateway. A database that is down is not "wedged" (the webhook answers
    503 and the worker retries; /healthz reports it): only a store call stuck for
    `STUCK_AFTER` seconds is."""

    STUCK_AFTER = 25.0

    def __init__(
        self,
        gateway: Gateway,
        tasks: list[asyncio.Task[None]],
        server: WebServer | None,
        internal: WebServer | None = None,
    ) -> None:
        self._gateway = gateway
        self._tasks = tasks
        self._servers = [s for s in (server, internal) if s is not None]
        self._ping: asyncio.Future[None] | None = None
        self._ping_started = 0.0

    async def __call__(self) -> bool:
        loop = asyncio.get_running_loop()
        if any(task.done() for task in self._tasks):  # the worker or a listener ended
            return False
        if any(not server.alive for server in self._servers):
            return False
        if self._ping is not None and self._ping.done():
            exc = self._ping.exception()
            if exc is not None and not isinstance(exc, StoreUnavailable):
                return False
            self._ping = None
        if self._ping is None:
            self._ping = asyncio.ensure_future(asyncio.to_thread(self._gateway.store.ping))
            self._ping_started = loop.time()
        return loop.time() - self._ping_started < self.STUCK_AFTER


def _reload(gateway: Gateway, notifier: sdnotify.Notifier) -> None:
    notifier.reloading()
    try:
        gateway.directory.reload()
    except Exception as exc:  # keep serving with the old map
        log.error("SIGHUP: municipality map not reloaded, keeping the old one: %s", exc)
        notifier.status("Running; SIGHUP: municipality map NOT reloaded, see the log")
    else:
        notifier.status("Running; municipality map reloaded")
