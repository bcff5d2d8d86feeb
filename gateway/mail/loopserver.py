"""An aiosmtpd SMTP/LMTP server served on the running event loop (rather than in the
thread of aiosmtpd's `Controller`), whose `stop()` also closes the open connections.
The reply ingress and the sandbox mail server are built on it.

Holding under load (the reply ingress; the sandbox mail server uses none of it):

- A protocol built on `GuardedSmtp` asks its server at connection time whether to take the
  connection (`LoopSmtpServer.admit`, before the 220 greeting): at most `max_connections`
  at once, beyond that `421 4.7.0 Too many connections, try again later` and closed (the
  sending server retries later). A subclass may refuse more (the ingress's peer allow-list).
- Refusals are logged at most once a minute per reason (`Throttled`), with a count of the
  ones left out, so a flood of connections cannot flood the log.
- `accept()` failing for want of file descriptors (EMFILE/ENFILE): asyncio stops accepting
  on that socket for a second and tries again, calling the loop's exception handler for
  each failed try (up to 100 a second: one per backlog slot), which logs an ERROR each
  time (measured: 1,000 in under 3 s). `_quiet_accept_errors` puts a handler on the loop that
  logs that one condition once a minute, without a traceback; everything else goes to the
  handler that was there before. (Its retry, when the server was closed meanwhile, fails on
  the closed socket: that is not logged either.)
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Callable
from typing import Any

from aiosmtpd.smtp import SMTP

log = logging.getLogger(__name__)

TOO_MANY = "421 4.7.0 Too many connections, try again later"
_ACCEPT_EXHAUSTED = "socket.accept() out of system resource"  # asyncio's message


class Throttled:
    """A log line that is written at most once every `interval` seconds; the next one
    written says how many were left out meanwhile."""

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._interval = interval
        self._clock = clock
        self._next: float | None = None
        self._skipped = 0

    def warning(self, message: str, *args: Any) -> bool:
        """Log `message % args` at WARNING unless one was logged less than `interval`
        seconds ago; True when it was logged."""
        now = self._clock()
        if self._next is not None and now < self._next:
            self._skipped += 1
            return False
        if self._skipped:
            message += " (and %d more like it not logged in the last %.0f s)"
            args = (*args, self._skipped, self._interval)
        self._skipped = 0
        self._next = now + self._interval
        self._logger.warning(message, *args)
        return True


_quieted: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()


def _quiet_accept_errors(loop: asyncio.AbstractEventLoop) -> None:
    """On `loop`, log "accept() out of file descriptors" once a minute, no traceback."""
    if loop in _quieted:
        return
    _quieted.add(loop)
    previous = loop.get_exception_handler()
    throttled = Throttled(log)

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") == _ACCEPT_EXHAUSTED:
            exc = context.get("exception")
            throttled.warning(
                "cannot accept connections: %s (out of file descriptors: see LimitNOFILE and "
                "email.ingress.max_connections); asyncio tries again every second",
                exc,
            )
            return
        if isinstance(context.get("exception"), ValueError) and "_start_serving" in repr(
            context.get("handle")
        ):  # that retry, after the server was closed meanwhile (asyncio does not cancel it)
            log.debug("accept() retried on a closed server: %s", context.get("exception"))
            return
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)


class GuardedSmtp(SMTP):
    """aiosmtpd's SMTP (or, mixed in before `LMTP`, LMTP) that asks its server
    (`gate`) whether to take each connection before greeting it, and tells it when the
    connection ends (so the server counts the open ones exactly)."""

    gate: LoopSmtpServer | None = None
    _refused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # connection_made is called again after STARTTLS (with the TLS transport): only
        # the first call is a new connection.
        if self.gate is not None and self._original_transport is None and self.session is None:
            refusal = self.gate.admit(self, transport.get_extra_info("peername"))
            if refusal is not None:
                self._refused = True
                assert isinstance(transport, asyncio.WriteTransport)
                transport.write(refusal.encode("ascii") + b"\r\n")
                transport.close()  # the answer is flushed first
                return
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if self._refused:  # aiosmtpd never saw it
            return
        try:
            super().connection_lost(error)
        finally:
            if self.gate is not None:
                self.gate.release(self)

    def eof_received(self) -> bool | None:
        if self._refused:
            return False
        return super().eof_received()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        # The idle timeout (aiosmtpd's `timeout`) counts from the last byte received, not
        # the last command: a large message on a slow link is not cut off mid-DATA.
        self._reset_timeout()
        super().data_received(data)


class LoopSmtpServer:
    """Subclasses say how to make one connection's protocol (`make_protocol`); a
    `GuardedSmtp` protocol is admitted by `admit` (at most `max_connections` at once)."""

    name = "SMTP server"

    def __init__(self, host: str, port: int, *, max_connections: int | None = None) -> None:
        self.host = host
        self._requested_port = port  # 0: any free port
        self.max_connections = max_connections
        self._server: asyncio.Server | None = None
        self._connections: weakref.WeakSet[SMTP] = weakref.WeakSet()
        self._open: set[SMTP] = set()  # admitted and not yet closed (GuardedSmtp only)
        self._too_many = Throttled(log)

    def make_protocol(self, loop: asyncio.AbstractEventLoop) -> SMTP:
        raise NotImplementedError

    @property
    def port(self) -> int:
        """The bound port (after `start`)."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError(f"the {self.name} is not running")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def open_connections(self) -> int:
        """How many admitted connections are open now."""
        return len(self._open)

    def admit(self, protocol: SMTP, peer: Any) -> str | None:
        """Take this new connection (None), or the answer to refuse it with (it is then
        closed). Subclasses may refuse more, then call this."""
        if self.max_connections is not None and len(self._open) >= self.max_connections:
            self._too_many.warning(
                "%s: a connection from %s refused: %d open already (the most at once); "
                "answered 421, the sending server will retry",
                self.name, _address(peer), len(self._open),
            )  # fmt: skip
            return TOO_MANY
        self._open.add(protocol)
        return None

    def release(self, protocol: SMTP) -> None:
        """An admitted connection ended."""
        self._open.discard(protocol)

    async def _listen(self) -> bool:
        """Bind and serve on the running loop; False if it already was."""
        if self._server is not None:
            return False
        loop = asyncio.get_running_loop()
        _quiet_accept_errors(loop)

        def connection() -> SMTP:
            protocol = self.make_protocol(loop)
            if isinstance(protocol, GuardedSmtp):
                protocol.gate = self
            self._connections.add(protocol)
            return protocol

        self._server = await loop.create_server(
            connection, host=self.host, port=self._requested_port
        )
        return True

    async def stop(self) -> None:
        """Stop listening, close open connections, wait until closed."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for protocol in list(self._connections):
            transport = protocol.transport
            if transport is not None and not transport.is_closing():
                transport.close()
        await server.wait_closed()


def _address(peer: Any) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        host = str(peer[0])
        return f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}"
    return str(peer) if peer else "an unknown peer"
