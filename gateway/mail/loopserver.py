"""An aiosmtpd SMTP/LMTP server served on the running event loop (rather than in the
thread of aiosmtpd's `Controller`), whose `stop()` also closes the open connections.
The reply ingress and the sandbox mail server are built on it."""

from __future__ import annotations

import asyncio
import weakref

from aiosmtpd.smtp import SMTP


class LoopSmtpServer:
    """Subclasses say how to make one connection's protocol (`make_protocol`)."""

    name = "SMTP server"

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self._requested_port = port  # 0: any free port
        self._server: asyncio.Server | None = None
        self._connections: weakref.WeakSet[SMTP] = weakref.WeakSet()

    def make_protocol(self, loop: asyncio.AbstractEventLoop) -> SMTP:
        raise NotImplementedError

    @property
    def port(self) -> int:
        """The bound port (after `start`)."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError(f"the {self.name} is not running")
        return int(self._server.sockets[0].getsockname()[1])

    async def _listen(self) -> bool:
        """Bind and serve on the running loop; False if it already was."""
        if self._server is not None:
            return False
        loop = asyncio.get_running_loop()

        def connection() -> SMTP:
            protocol = self.make_protocol(loop)
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
