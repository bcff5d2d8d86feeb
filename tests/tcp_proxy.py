"""A TCP relay on 127.0.0.1 that a test can cut or freeze: a network path that fails.

    with TcpProxy(5432) as proxy:       # relays 127.0.0.1:<proxy.port> -> 127.0.0.1:5432
        ... point the client at proxy.port ...
        proxy.cut()                     # the server is gone: connections reset, new ones refused
        proxy.restore()                 # back (same port)
        proxy.freeze()                  # silently dropped: current connections stay open but
                                        # nothing more goes through (a NAT or firewall that
                                        # forgot them); new connections are relayed normally

It runs its own asyncio loop in a background thread, so it works the same under synchronous
tests, `sms311 run` subprocesses and asyncio tests. `connections` counts the connections
accepted so far (a client that reconnected shows up there).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Coroutine
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass
class _Link:
    """One relayed connection: the client's side and the server's side."""

    writers: list[asyncio.StreamWriter]
    frozen: bool = False
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST (SO_LINGER 0): the peer sees "connection reset", at once."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class TcpProxy:
    """See the module docstring."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.port = 0
        self.connections = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcp-proxy",
                                        daemon=True)
        self._server: asyncio.Server | None = None
        self._links: list[_Link] = []

    # -- life cycle (called from the test's thread) ---------------------------------------

    def start(self) -> TcpProxy:
        self._thread.start()
        self._run(self._listen())
        return self

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        self._run(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # -- faults ------------------------------------------------------------------------------

    def cut(self) -> None:
        """The far side is gone: every connection is reset and the port refuses new ones."""
        self._run(self._cut())

    def restore(self) -> None:
        """Listen again on the same port (after `cut`); relay normally."""
        self._run(self._listen())

    def freeze(self) -> None:
        """Relay nothing more on the current connections, without closing them."""
        self._run(self._freeze())

    # -- inside the proxy's loop ------------------------------------------------------------

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(10)

    async def _listen(self) -> None:
        if self._server is not None:
            return
        self._server = await asyncio.start_server(
            self._accept, "127.0.0.1", self.port, reuse_address=True
        )
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _freeze(self) -> None:
        for link in self._links:
            link.frozen = True

    async def _cut(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        await self._drop_links()

    async def _shutdown(self) -> None:
        await self._cut()

    async def _drop_links(self) -> None:
        links, self._links = self._links, []
        for link in links:
            for writer in link.writers:
                _reset(writer)
            for task in link.tasks:
                task.cancel()
        for link in links:
            for task in link.tasks:
                with contextlib.suppress(asyncio.CancelledError, OSError):
                    await task

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(
                self.target_host, self.target_port
            )
        except OSError:
            _reset(writer)  # the target is down: the client sees a reset
            return
        link = _Link(writers=[writer, up_writer])
        self._links.append(link)
        link.tasks = [
            asyncio.create_task(self._pipe(reader, up_writer, link)),
            asyncio.create_task(self._pipe(up_reader, writer, link)),
        ]

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link: _Link
    ) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                if not link.frozen:
                    writer.write(data)
                    await writer.drain()
        if not link.frozen:  # one side closed: close the other (a frozen link says nothing)
            with contextlib.suppress(OSError):
                writer.close()
