"""The web half's HTTP server: uvicorn in a thread, with the limits it lacks.

The web half is an ASGI app (`gateway.web.asgi`) served by uvicorn with its C parser
(httptools) on an event loop of its own, in a thread: `POST /sms/inbound` is answered on that
loop, with the texts of every connection committed together (one durable commit for many
texts), and every other request (console, health, status callbacks) goes to the Flask app in
a pool of threads (a2wsgi). Measured in issue 16 on 2 cores, the web half alone: waitress
(8 threads) served ~2,000 texts/s with 0.45 ms of CPU a text, a third of it the server's own
thread hand-offs; this server 3,400-3,800 texts/s with 0.30-0.36 ms (README, Performance).

What uvicorn does not bound, `_GuardedHttp` does, so that no client holds a connection or
memory for free: a request's head (request line and headers) is at most `MAX_HEAD_BYTES`
(431, then the connection closes), and a request must arrive whole within
`RECEIVE_SECONDS` of its first byte (or of the connection, for a client that sends nothing);
idle keep-alive connections close after `KEEP_ALIVE_SECONDS`; beyond `MAX_CONNECTIONS`
connections or requests at once, uvicorn answers 503. A request body is bounded by the app
(the webhook: 32 KiB; Flask's `MAX_CONTENT_LENGTH`: 256 KiB).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
from typing import TYPE_CHECKING

from uvicorn import Config, Server
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.run.server import split_listen

if TYPE_CHECKING:
    from gateway.web.asgi import ASGIApp

log = logging.getLogger(__name__)

MAX_HEAD_BYTES = 64 * 1024
RECEIVE_SECONDS = 30.0
KEEP_ALIVE_SECONDS = 15.0
MAX_CONNECTIONS = 1000
_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain\r\n"
    b"content-length: 32\r\nconnection: close\r\n\r\nRequest Header Fields Too Large\n"
)



class _GuardedHttp(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol with the limits it lacks (see the module docstring)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_bytes = 0
        self._reading_head = True
        self._deadline: asyncio.TimerHandle | None = None
        self._arm()

    def _arm(self) -> None:
        self._deadline = self.loop.call_later(RECEIVE_SECONDS, self._too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            log.info("closing a connection whose request did not arrive within %gs",
                     RECEIVE_SECONDS)
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self._reading_head:
            if self._deadline is None:
                self._arm()
            self._head_bytes += len(data)
        super().data_received(data)
        if (
            self._reading_head
            and self._head_bytes > MAX_HEAD_BYTES
            and not self.transport.is_closing()
        ):
            log.info("refused a request whose head is over %d bytes", MAX_HEAD_BYTES)
            self.transport.write(_TOO_LARGE)
            self.transport.close()

    def on_headers_complete(self) -> None:
        self._reading_head = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        self._reading_head, self._head_bytes = True, 0
        super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


def _listening_socket(listen: str) -> socket.socket:
    """The listening socket, made with its protocol named (IPPROTO_TCP): asyncio sets
    TCP_NODELAY only on the connections of such a socket, and without it an answer written
    in two parts waited for the client's delayed ACK (40 ms a request, measured)."""
    host, port = split_listen(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    return sock


class WebServer:
    """An ASGI app under uvicorn, on its own event loop in a background thread."""

    def __init__(
        self, app: ASGIApp, listen: str, name: str = "web"
    ) -> None:
        self._socket = _listening_socket(listen)
        self._config = Config(
            app, interface="asgi3", http=_GuardedHttp, ws="none", lifespan="off", loop="asyncio",
            access_log=False, log_config=None, server_header=False, proxy_headers=False,
            timeout_keep_alive=int(KEEP_ALIVE_SECONDS), limit_concurrency=MAX_CONNECTIONS,
            timeout_graceful_shutdown=5,
        )  # fmt: skip
        self._server = Server(self._config)
        self._app = app
        self.name = name
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)

    @property
    def port(self) -> int:
        return int(self._socket.getsockname()[1])

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _serve(self) -> None:
        try:
            self._server.run(sockets=[self._socket])
        except Exception:
            log.exception("%s: the web server failed", self.name)

    def start(self, timeout: float = 10.0) -> None:
        """Start serving; returns once the server accepts connections."""
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started and self._thread.is_alive():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: the web server did not start")
            time.sleep(0.005)
        host = self._socket.getsockname()[0]
        log.info("%s listening on %s:%s", self.name, host, self.port)

    def stop(self, grace: float = 5.0) -> None:
        """Stop accepting, let the requests in flight finish (up to `grace` seconds), then
        close every connection and end the server's loop."""
        self._config.timeout_graceful_shutdown = max(1, int(grace))
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout=grace + 2)
        with contextlib.suppress(OSError):
            self._socket.close()
        close = getattr(self._app, "close", None)
        if close is not None:  # commits what is queued, ends the app's threads
            close()
