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

What makes it hold against strangers (`ReplyIngress.from_settings` reads `email.ingress`):

- RCPT: `accept(address)` may answer True, False, or the refusal to give (a whole reply
  line), and may be a coroutine: the worker's check (`ingress_recipients`) looks the reply
  token up in the store, so a token that does not exist (never made, or its conversation
  erased) is refused `550 5.1.1` in the dialogue and nothing fills the Failed list; a store
  that cannot answer gets `451 4.3.0` (try later). A check that raises: `451 4.3.0` too.
- At most `max_connections` connections at once (`421 4.7.0 Too many connections, try
  again later` beyond, then closed) and `idle_timeout` seconds without a byte from the peer
  closes a connection (`gateway.mail.loopserver`).
- `allowed_peers` (IP networks; empty: anyone): a connection from another address is
  answered `554 5.7.1` before the greeting and closed.
- SMTP AUTH (PLAIN/LOGIN; `credentials=(username, password)`, compared in constant time):
  MAIL FROM before a successful AUTH gets `530 5.7.0 Authentication required`. AUTH is
  offered only over TLS (STARTTLS with `tls_context`), except to a loopback peer: a
  password crossing the network in the clear can be read by anyone on the path, while a
  loopback connection never leaves the machine (a local MTA relaying to us). LMTP has no
  AUTH (RFC 2033 is for a local delivery agent): an LMTP ingress relies on `allowed_peers`
  and on listening on loopback only.
"""

from __future__ import annotations

import asyncio
import hmac
import inspect
import ipaddress
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

from gateway.mail.loopserver import GuardedSmtp, LoopSmtpServer, Throttled
from gateway.mail.types import MailOrigin, ReplySink
from gateway.settings import IngressSettings

log = logging.getLogger(__name__)

DEFAULT_MAX_SIZE = 10 * 1024 * 1024
DEFAULT_MAX_CONNECTIONS = 100
DEFAULT_IDLE_TIMEOUT = 60.0
MAX_RECIPIENTS = 100
MAX_AUTH_ATTEMPTS = 3  # per connection; then 421 and closed

ACCEPTED = "250 2.0.0 Message accepted"
TRY_LATER = "451 4.3.0 Temporary failure, please try again later"
NOT_A_PEER = "554 5.7.1 This gateway does not take mail from your address"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Verdict = bool | str
"""What a recipient check answers: True (take it), False (550: no such reply address) or
the whole reply line to refuse it with."""
RecipientCheck = Callable[[str], Verdict | Awaitable[Verdict]]


class _MailLogFilter:
    """aiosmtpd warns "Session.login_data is deprecated" on every successful AUTH (its own
    code sets it): not news to the operator."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Session.login_data is deprecated")


logging.getLogger("mail.log").addFilter(_MailLogFilter())


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


def peer_address(peer: Any) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP address of a socket peer ("host", port, …); an IPv4-mapped IPv6 address (a
    dual-stack listener) as the IPv4 address it is. None when it is not an IP peer."""
    if not isinstance(peer, tuple) or not peer:
        return None
    try:
        address = ipaddress.ip_address(str(peer[0]).partition("%")[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def peer_allowed(peer: Any, networks: Iterable[Network]) -> bool:
    """Is the socket peer `peer` in one of `networks`?"""
    address = peer_address(peer)
    return address is not None and any(address in network for network in networks)


def auth_needs_tls(peer: Any) -> bool:
    """Must this peer use TLS (STARTTLS) before AUTH? Yes, unless it is a loopback address:
    over the network a password sent in the clear can be read on the path; a loopback
    connection never leaves the machine."""
    address = peer_address(peer)
    return address is None or not address.is_loopback


class Credentials:
    """aiosmtpd authenticator: the one username and password of `email.ingress`, compared
    in constant time (both always compared, so the time does not tell which was wrong)."""

    def __init__(self, username: str, password: str) -> None:
        self._username = username.encode("utf-8")
        self._password = password.encode("utf-8")
        self._failures = Throttled(log)

    def check(self, login: bytes, password: bytes) -> bool:
        user_ok = hmac.compare_digest(login, self._username)
        password_ok = hmac.compare_digest(password, self._password)
        return user_ok and password_ok

    def __call__(
        self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        if isinstance(auth_data, LoginPassword) and self.check(
            auth_data.login, auth_data.password
        ):
            return AuthResult(success=True)
        self._failures.warning(
            "smtp ingress: AUTH %s from %s failed (wrong username or password)",
            mechanism, _peer(getattr(session, "peer", None)),
        )  # fmt: skip
        return AuthResult(success=False, handled=False)



class _Handler:
    """aiosmtpd handler: reply addresses only, each message to the sink once."""

    def __init__(self, sink: ReplySink, accept: RecipientCheck, kind: str) -> None:
        self._sink = sink
        self._accept = accept
        self._kind = kind

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        if len(envelope.rcpt_tos) >= MAX_RECIPIENTS:
            return "452 4.5.3 Too many recipients"
        try:
            verdict = self._accept(address)
            if inspect.isawaitable(verdict):
                verdict = await verdict
        except Exception:  # a broken check must not open the door: the sender retries
            log.exception("%s ingress: the recipient check failed; answered 451", self._kind)
            return TRY_LATER
        if isinstance(verdict, str):
            return verdict
        if not verdict:
            return f"550 5.1.1 <{address}>: no such reply address here"
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


class _SMTP(_SizeExplained, GuardedSmtp):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # AUTH in the clear only from a loopback peer (see `auth_needs_tls`). aiosmtpd
        # decides per server (`auth_require_tls`); this protocol serves one connection.
        if self._original_transport is None and not auth_needs_tls(
            transport.get_extra_info("peername")
        ):
            self._auth_require_tls = False
        super().connection_made(transport)


class _LMTP(_SizeExplained, GuardedSmtp, LMTP):
    pass


def server_tls_context(certificate: str, key: str) -> ssl.SSLContext:
    """The TLS context STARTTLS uses: this certificate (chain) and key; clients are not
    asked for certificates."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certificate, key)
    return context


class ReplyIngress(LoopSmtpServer):
    """An SMTP or LMTP server feeding agents' replies to `sink`; see the module docstring."""

    name = "reply ingress"

    def __init__(
        self,
        listen: str,
        sink: ReplySink,
        *,
        accept: RecipientCheck,
        max_size: int = DEFAULT_MAX_SIZE,
        lmtp: bool = False,
        hostname: str | None = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        allowed_peers: Iterable[str | Network] = (),
        credentials: tuple[str, str] | None = None,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        host, port = parse_listen(listen)
        super().__init__(host, port, max_connections=max_connections)
        if lmtp and credentials is not None:
            raise ValueError("LMTP has no AUTH: use allowed_peers and a loopback listener")
        self.max_size = max_size
        self.lmtp = lmtp
        self.hostname = hostname or socket.gethostname()  # not getfqdn(): no DNS wait
        self.idle_timeout = idle_timeout
        self.allowed_peers = tuple(ipaddress.ip_network(n, strict=False) for n in allowed_peers)
        self.credentials = Credentials(*credentials) if credentials is not None else None
        self.tls_context = tls_context
        self.handler = _Handler(sink, accept, "lmtp" if lmtp else "smtp")
        self._strangers = Throttled(log)

    @classmethod
    def from_settings(
        cls,
        settings: IngressSettings,
        sink: ReplySink,
        *,
        accept: RecipientCheck,
        max_connections: int | None = None,
    ) -> ReplyIngress:
        """The ingress `email.ingress` describes (its TLS files are read now: a missing
        or unreadable file fails here, at start); `max_connections` overrides the
        setting's (the worker keeps it under the open files limit)."""
        credentials = None
        if settings.username is not None or settings.password is not None:
            if settings.username is None or settings.password is None:
                raise ValueError(
                    "email.ingress.username and email.ingress.password go together"
                )
            credentials = (settings.username, settings.password)
        if (settings.tls_certificate is None) != (settings.tls_key is None):
            raise ValueError(
                "email.ingress.tls_certificate and email.ingress.tls_key go together"
            )
        tls = None
        if settings.tls_certificate is not None and settings.tls_key is not None:
            tls = server_tls_context(str(settings.tls_certificate), str(settings.tls_key))
        return cls(
            settings.listen, sink, accept=accept,
            max_connections=max_connections or settings.max_connections,
            idle_timeout=settings.idle_timeout_seconds,
            allowed_peers=settings.allowed_peers,
            credentials=credentials,
            tls_context=tls,
        )  # fmt: skip

    def admit(self, protocol: SMTP, peer: Any) -> str | None:
        if self.allowed_peers and not peer_allowed(peer, self.allowed_peers):
            self._strangers.warning(
                "reply ingress: a connection from %s refused (not in "
                "email.ingress.allowed_peers); answered 554", _peer(peer),
            )  # fmt: skip
            return NOT_A_PEER
        return super().admit(protocol, peer)

    def make_protocol(self, loop: asyncio.AbstractEventLoop) -> SMTP:
        if self.lmtp:
            return _LMTP(
                self.handler,
                hostname=self.hostname,
                data_size_limit=self.max_size,
                enable_SMTPUTF8=True,
                timeout=self.idle_timeout,
                loop=loop,
            )
        auth: dict[str, Any] = {}
        if self.credentials is not None:
            auth = {
                "authenticator": self.credentials,
                "auth_required": True,
                "auth_require_tls": True,  # lifted for a loopback peer (`_SMTP`)
                # a few tries per connection, every other command as often as needed
                "command_call_limit": {"AUTH": MAX_AUTH_ATTEMPTS, "*": 2**31},
            }
        return _SMTP(
            self.handler,
            hostname=self.hostname,
            data_size_limit=self.max_size,
            enable_SMTPUTF8=True,
            timeout=self.idle_timeout,
            tls_context=self.tls_context,
            loop=loop,
            **auth,
        )

    async def start(self) -> None:
        """Bind and serve on the running loop."""
        if not await self._listen():
            return
        log.info(
            "reply ingress (%s) on %s:%d: at most %d connections, idle timeout %gs%s%s",
            "LMTP" if self.lmtp else "SMTP", self.host, self.port,
            self.max_connections, self.idle_timeout,
            ", peers: " + ", ".join(map(str, self.allowed_peers)) if self.allowed_peers else "",
            ", AUTH required" if self.credentials is not None else "",
        )  # fmt: skip
        if self.credentials is not None and self.tls_context is None:
            log.warning(
                "reply ingress: AUTH is required but no TLS certificate is set "
                "(email.ingress.tls_certificate/tls_key): only loopback peers can sign in"
            )
        if self.lmtp and not self.allowed_peers:
            log.info("reply ingress: LMTP has no AUTH; anyone who can connect may deliver")
