"""The SMTP/LMTP reply ingress: the city's mail server hands agents' replies straight to us.

    ingress = ReplyIngress("127.0.0.1:2525", sink, accept=is_reply_address)
    await ingress.start()      # ingress.port is the bound port ("host:0" picks a free one)
    ...
    await ingress.stop()

An aiosmtpd server (SMTP, or LMTP with `lmtp=True`) on the caller's asyncio loop that feeds
the same reply pipeline (`ReplySink`) as the IMAP listener:

- RCPT: only addresses for which `accept(address)` is true (the reply addresses and the
  gateway's From address) are taken; any other is refused with `550 5.1.1`, so nothing
  can be relayed through it. At most `MAX_RECIPIENTS` per message (`452 4.5.3` beyond).
- DATA: larger than `max_size` bytes is refused with `552 5.3.4`, naming the limit (SIZE
  is advertised, so a client announcing a bigger message is refused at MAIL FROM): the
  agent's own server bounces it to them with that explanation. The message is handed to
  the sink once, with `MailOrigin(kind="smtp"|"lmtp", peer="host:port")`, and answered
  `250` when it was processed or ignored, or failed and was KEPT (`Disposition.kept`: in
  the store's Failed list, the agent told why when they are one). A failed message that
  could not be kept, or a sink that raises (the store is down…), gets `451 4.3.0` so the
  sending server keeps the message and retries: nothing is accepted and then lost. LMTP
  answers once per accepted recipient (the same status for each: the message is handled
  once).
- One INFO line per message: the peer, the outcome and the reason; never the body.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import Any

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP

from gateway.mail.loopserver import LoopSmtpServer
from gateway.mail.types import MailOrigin, ReplySink

log = logging.getLogger(__name__)

DEFAULT_MAX_SIZE = 10 * 1024 * 1024
MAX_RECIPIENTS = 100

ACCEPTED = "250 2.0.0 Message accepted"
TRY_LATER = "451 4.3.0 Temporary failure, please try again later"


def parse_listen(listen: str) -> tuple[str, int]:
    """ "host:port" (or "[v6]:port") -> (host, port); port 0 picks a free port."""
    host, colon, port = listen.strip().rpartition(":")
    if not colon or not port.isdigit() or not host:
        raise ValueError(f"listen address must be host:port, not {listen!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    number = int(port)
    if not 0 <= number <= 65535:
        raise ValueError(f"port out of range in {listen!r}")
    return host, number


def _peer(peer: Any) -> str | None:
    if isinstance(peer, tuple) and len(peer) >= 2:
        host = str(peer[0])
        return f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}"
    return str(peer) if peer else None


class _Handler:
    """aiosmtpd handler: reply addresses only, each message to the sink once."""

    def __init__(self, sink: ReplySink, accept: Callable[[str], bool], kind: str) -> None:
        self._sink = sink
        self._accept = accept
        self._kind = kind

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        try:
            accepted = self._accept(address)
        except Exception:  # a broken predicate must not open the door
            log.exception("%s ingress: the recipient check failed", self._kind)
            accepted = False
        if not accepted:
            return f"550 5.1.1 <{address}>: no such reply address here"
        if len(envelope.rcpt_tos) >= MAX_RECIPIENTS:
            return "452 4.5.3 Too many recipients"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        raw: bytes = envelope.original_content or b""
        peer = _peer(getattr(session, "peer", None))
        origin = MailOrigin(kind="lmtp" if self._kind == "lmtp" else "smtp", peer=peer)
        try:
            disposition = await self._sink(raw, origin)
        except Exception as exc:
            log.warning(
                "%s ingress from %s: the reply pipeline failed (%s: %s); answered 451, "
                "the sending server will retry",
                self._kind, peer, type(exc).__name__, exc,
            )  # fmt: skip
            status = TRY_LATER
        else:
            log.info(
                "%s ingress from %s: %s (%s)",
                self._kind, peer, disposition.outcome, disposition.reason,
            )  # fmt: skip
            status = ACCEPTED
            if disposition.outcome == "failed" and not disposition.kept:
                log.warning(
                    "%s ingress from %s: a failed reply could not be kept; answered 451, "
                    "the sending server will retry", self._kind, peer,
                )  # fmt: skip
                status = TRY_LATER
        if self._kind == "lmtp":  # one reply per accepted recipient (RFC 2033 4.2)
            return "\r\n".join([status] * max(1, len(envelope.rcpt_tos)))
        return status


def too_big(max_size: int) -> str:
    """The 552 answer for a message over `max_size` bytes (the agent's server bounces it)."""
    return (
        f"552 5.3.4 Message too big for the 311 text gateway (at most {max_size // 1_000_000} MB)"
        ": send the answer again without attachments"
        if max_size >= 1_000_000
        else f"552 5.3.4 Message too big for the 311 text gateway (at most {max_size} bytes)"
    )


class _SizeExplained:
    """Mixin for aiosmtpd's SMTP/LMTP: its two "too big" answers name our limit."""

    data_size_limit: int | None

    async def push(self, status: Any) -> None:
        if isinstance(status, str) and status.startswith("552 Error:") and self.data_size_limit:
            status = too_big(self.data_size_limit)
        await super().push(status)  # type: ignore[misc]


class _SMTP(_SizeExplained, SMTP):
    pass


class _LMTP(_SizeExplained, LMTP):
    pass


class ReplyIngress(LoopSmtpServer):
    """An SMTP or LMTP server feeding agents' replies to `sink`; see the module docstring."""

    name = "reply ingress"

    def __init__(
        self,
        listen: str,
        sink: ReplySink,
        *,
        accept: Callable[[str], bool],
        max_size: int = DEFAULT_MAX_SIZE,
        lmtp: bool = False,
        hostname: str | None = None,
    ) -> None:
        host, port = parse_listen(listen)
        super().__init__(host, port)
        self.max_size = max_size
        self.lmtp = lmtp
        self.hostname = hostname or socket.gethostname()  # not getfqdn(): no DNS wait
        self.handler = _Handler(sink, accept, "lmtp" if lmtp else "smtp")

    def make_protocol(self, loop: asyncio.AbstractEventLoop) -> SMTP:
        protocol_class = _LMTP if self.lmtp else _SMTP
        return protocol_class(
            self.handler,
            hostname=self.hostname,
            data_size_limit=self.max_size,
            enable_SMTPUTF8=True,
            loop=loop,
        )

    async def start(self) -> None:
        """Bind and serve on the running loop."""
        if not await self._listen():
            return
        log.info(
            "reply ingress (%s) on %s:%d", "LMTP" if self.lmtp else "SMTP", self.host, self.port
        )
