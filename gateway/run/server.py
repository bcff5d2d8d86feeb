"""Running the gateway: the web half (waitress), the worker (asyncio), or both.

waitress in a thread was kept after measuring the candidates (issue 5's comparison of
gunicorn sync and gthread, granian and cheroot: none served more texts per second, and the
multi-process ones had p99 latencies of 0.3-1.6 s, from SQLite's busy polling between
processes, since replaced by a lock file: gateway/store/group.py). In `sms311 run`, a text
queued by the web half wakes the worker's inbound processor, and an email queued wakes its
dispatcher.

waitress's channels are `_QuietChannel`s: a channel whose request is still being served
does not ask the loop to write until it has `FLUSH_WHILE_SERVING` bytes to send. waitress
itself asks as soon as a task thread has written anything, then cannot send it while that
thread holds the channel's output lock: poll() returns at once, again and again, and the
loop thread takes the GIL from the very threads it waits for. Measured (issue 16, 8
threads, requests that use the CPU for 0.3 ms): 70-180 requests/s at 125% CPU, against
1,800-1,850/s with the quiet channel. The task's end wakes the loop, which sends the answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from waitress.channel import HTTPChannel
from waitress.server import create_server

from gateway.app import Gateway
from gateway.run import sdnotify
from gateway.run.limits import raise_open_files_limit
from gateway.run.worker import Dispatcher, run_worker
from gateway.store import StoreUnavailable
from gateway.store.sql import as_sql_store

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

log = logging.getLogger(__name__)

Extra = Callable[[asyncio.Event], Coroutine[Any, Any, None]]


def split_listen(listen: str) -> tuple[str, int]:
    """'127.0.0.1:8311' -> ('127.0.0.1', 8311); '[::1]:8311' works too."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


class _QuietChannel(HTTPChannel):  # type: ignore[misc]
    """waitress's channel, not writable while its request is being served and it has
    less than `FLUSH_WHILE_SERVING` bytes to send (see the module docstring). The task's
    end pulls the loop's trigger, and the answer goes out at once."""

    FLUSH_WHILE_SERVING = 18000  # a large answer is still streamed while it is written

    def writable(self) -> bool:
        if (
            self.requests
            and self.total_outbufs_len < self.FLUSH_WHILE_SERVING
            and not (self.will_close or self.close_when_flushed)
        ):
            return False
        return bool(super().writable())


class WebServer:
    """A WSGI app behind waitress, in a background thread."""

    def __init__(
        self, app: WSGIApplication, listen: str, threads: int = 8, name: str = "web"
    ) -> None:
        host, port = split_listen(listen)
        # poll(), not select(): with the open files limit raised (run/limits.py) a socket's
        # descriptor may be above 1023, which select() cannot watch
        self._server = create_server(
            app, host=host, port=port, threads=threads, ident="sms311", asyncore_use_poll=True
        )
        self._server.channel_class = _QuietChannel
        self.name = name
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.effective_port)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):  # closed while stopping
            self._server.run()

    def start(self) -> None:
        self._thread.start()
        log.info("%s listening on %s:%s", self.name, self._server.effective_host, self.port)

    def stop(self, grace: float = 5.0) -> None:
        """Stop accepting, let the requests in flight finish (up to `grace` seconds), then
        end waitress's loop and close every connection. (Closing the server from this
        thread alone leaves the loop polling its open keep-alive connections, and the
        process waiting for it.)"""
        server = self._server
        if not self._thread.is_alive():
            server.close()
            return
        channels: dict[Any, Any] = {}

        def stop_accepting() -> None:  # these run on waitress's loop thread
            server.accepting = False
            server.del_channel()
            with contextlib.suppress(OSError):
                server.socket.close()

        def leave_loop() -> None:  # answers still buffered go out; an empty map ends the loop
            for channel in list(server._map.values()):
                with contextlib.suppress(Exception):
                    if channel is not server.trigger and channel.writable():
                        channel.handle_write()
            channels.update(server._map)
            server._map.clear()

        server.trigger.pull_trigger(stop_accepting)
        server.task_dispatcher.shutdown(cancel_pending=False, timeout=grace)
        server.trigger.pull_trigger(leave_loop)
        self._thread.join(timeout=grace)
        for channel in channels.values():
            with contextlib.suppress(OSError):
                channel.close()


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
    if web:  # (Flask and the console are not loaded by a worker-only process)
        from gateway.web import create_app
    server = WebServer(create_app(gateway), gateway.settings.web.listen) if web else None
    # /metrics and the detailed /healthz on their own (internal) address, when set
    metrics_listen = gateway.settings.web.metrics_listen
    internal = (
        WebServer(create_app(gateway, internal=True), metrics_listen, threads=2, name="metrics")
        if web and metrics_listen is not None
        else None
    )
    for listener in (server, internal):
        if listener is not None:
            listener.start()
    tasks: list[asyncio.Task[None]] = [asyncio.create_task(extra(stop)) for extra in extras]
    wake: Callable[[], None] | None = None
    if worker:
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
