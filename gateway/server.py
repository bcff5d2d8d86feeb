"""Running the gateway: the web half (waitress), the worker (asyncio), or both.

`run_gateway` owns signals: SIGTERM/SIGINT stop accepting and finish what is in
flight; SIGHUP reloads the municipality map.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Coroutine
from typing import Any

from waitress.server import create_server

from gateway.services import Gateway
from gateway.web import create_app
from gateway.worker import run_worker

log = logging.getLogger(__name__)

Extra = Callable[[asyncio.Event], Coroutine[Any, Any, None]]


def split_listen(listen: str) -> tuple[str, int]:
    """'127.0.0.1:8311' -> ('127.0.0.1', 8311); '[::1]:8311' works too."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


class WebServer:
    """The Flask app behind waitress, in a background thread."""

    def __init__(self, gateway: Gateway, threads: int = 8) -> None:
        host, port = split_listen(gateway.settings.web.listen)
        self._server = create_server(
            create_app(gateway), host=host, port=port, threads=threads, ident="sms311"
        )
        self._thread = threading.Thread(target=self._serve, name="web", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.effective_port)

    def _serve(self) -> None:
        with contextlib.suppress(OSError):  # closed while stopping
            self._server.run()

    def start(self) -> None:
        self._thread.start()
        log.info("web listening on %s:%s", self._server.effective_host, self.port)

    def stop(self) -> None:
        self._server.close()
        self._thread.join(timeout=5)


async def run_gateway(
    gateway: Gateway,
    *,
    web: bool = True,
    worker: bool = True,
    extras: tuple[Extra, ...] = (),
    on_ready: Callable[[], None] | None = None,
) -> None:
    """Run the chosen halves until SIGTERM/SIGINT."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: _reload(gateway))
    server = WebServer(gateway) if web else None
    if server is not None:
        server.start()
    tasks: list[asyncio.Task[None]] = [asyncio.create_task(extra(stop)) for extra in extras]
    if worker:
        tasks.append(asyncio.create_task(run_worker(gateway, stop)))
    if on_ready is not None:
        on_ready()
    try:
        if tasks:
            await asyncio.gather(*tasks)
        else:
            await stop.wait()
    finally:
        stop.set()
        if server is not None:
            server.stop()
        log.info("stopped")


def _reload(gateway: Gateway) -> None:
    try:
        gateway.directory.reload()
    except Exception as exc:  # keep serving with the old map
        log.error("SIGHUP: municipality map not reloaded, keeping the old one: %s", exc)
