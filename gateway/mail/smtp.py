"""Send emails over SMTP (aiosmtplib): security none | starttls | tls, AUTH, timeouts.

`SmtpPool` keeps a few connections open (`email.smtp.connections`, 4 by default) and
sends one message at a time on each: a message borrows an idle connection (or opens one
while fewer are open), sends MAIL/RCPT/DATA on it and gives it back. A transaction the
server refused is reset (RSET) before the connection carries another message; a
connection the server closed, that timed out or that answered 421 is dropped, and one
that sat idle for `idle_seconds` is closed (QUIT). A reused connection found closed
before the message went out (the server's idle time-out) is replaced once, at once.
`close()` (or leaving `async with`) QUITs them all. `send_email` sends one message on
a connection of its own.

Both raise `TemporarySmtpError` when trying again later may work (the server is down or
slow, a 4xx answer, a TLS or login problem the operator must fix) and
`PermanentSmtpError` when this message will never be accepted (a 5xx answer to the
recipients or the data), so the dispatcher can retry the first and park the second.
`SmtpError.connection` is True when the failure was the server's or the connection's
(refused, dropped, timed out, TLS, login, 421), not this message's: the dispatcher then
stops sending emails for a while (its circuit breaker) instead of failing every row.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import getaddresses
from types import TracebackType

import aiosmtplib

from gateway.rules.mime_fast import RawEmail
from gateway.settings import SmtpSettings

log = logging.getLogger(__name__)

SECURITY_MODES = ("none", "starttls", "tls")


class SmtpError(Exception):
    """Sending failed. `code` is the SMTP reply code when the server gave one."""

    def __init__(self, message: str, code: int | None = None, *, connection: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.connection = connection  # the server or the connection failed, not this message


class TemporarySmtpError(SmtpError):
    """Try again later: connection refused or dropped, timeout, 4xx, TLS/AUTH problems."""


class PermanentSmtpError(SmtpError):
    """This message will not be accepted as it is: 5xx for its recipients or data."""


def envelope_recipients(message: EmailMessage) -> list[str]:
    """The addresses of To + Cc (+ Bcc), without duplicates, in order."""
    values = [str(v) for h in ("To", "Cc", "Bcc") for v in message.get_all(h, [])]
    result: list[str] = []
    seen: set[str] = set()
    for _name, address in getaddresses(values):
        if address and address.lower() not in seen:
            seen.add(address.lower())
            result.append(address)
    return result


def envelope_sender(message: EmailMessage) -> str:
    """The address of the From header ('' if it has none: a null return path)."""
    pairs = getaddresses([str(v) for v in message.get_all("From", [])])
    return pairs[0][1] if pairs else ""


def _classify(code: int, text: str, *, connection: bool = False) -> SmtpError:
    if 400 <= code < 500:
        return TemporarySmtpError(text, code, connection=connection or code == 421)
    if 500 <= code < 600:
        return PermanentSmtpError(text, code, connection=connection)
    return TemporarySmtpError(text, code, connection=connection)


def _translate(exc: BaseException, *, connecting: bool) -> SmtpError:
    """The `SmtpError` for an aiosmtplib (or socket) failure; `connecting`: it happened
    while opening the connection (connect, greeting, STARTTLS, AUTH)."""
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        codes = [r.code for r in exc.recipients]
        text = "; ".join(f"{r.recipient}: {r.code} {r.message}" for r in exc.recipients)
        if any(400 <= c < 500 for c in codes) or not codes:
            return TemporarySmtpError(
                f"recipients refused: {text}", min(codes, default=None),
                connection=421 in codes,
            )
        return PermanentSmtpError(f"recipients refused: {text}", codes[0])
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
        # Not this message's fault: the operator must fix the login, then it will go.
        return TemporarySmtpError(
            f"SMTP login failed ({exc.code} {exc.message}): check email.smtp.username/password",
            exc.code, connection=True,
        )
    if isinstance(exc, aiosmtplib.SMTPNotSupported):
        return TemporarySmtpError(f"SMTP server does not support it: {exc}", connection=connecting)
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return _classify(exc.code, f"SMTP server said {exc.code} {exc.message}",
                         connection=connecting)
    # connect errors, timeouts, disconnects; ssl.SSLError is an OSError
    return TemporarySmtpError(f"SMTP {type(exc).__name__}: {exc}", connection=True)


_FAILURES = (aiosmtplib.SMTPException, OSError, TimeoutError)


@dataclass(eq=False)
class _Connection:
    client: aiosmtplib.SMTP
    idle_since: float = 0.0  # loop time it was last given back
    sent: int = 0  # messages sent on it


class _Stale(Exception):
    """A reused connection was found closed before the message went out."""


class SmtpPool:
    """Up to `size` SMTP connections to `smtp`'s server, kept open and reused (see the
    module docstring). Use it on one event loop: `async with SmtpPool(...) as pool:
    await pool.send(message)`, several `send`s at once (one per connection)."""

    def __init__(
        self,
        smtp: SmtpSettings,
        *,
        size: int | None = None,
        idle_seconds: float = 10.0,
        verify_certs: bool = True,
        tls_context: ssl.SSLContext | None = None,
        local_hostname: str | None = None,
    ) -> None:
        if smtp.security not in SECURITY_MODES:
            raise ValueError(
                f"email.smtp.security must be one of {SECURITY_MODES}: {smtp.security!r}"
            )
        self._smtp = smtp
        self.size = max(1, size if size is not None else smtp.connections)
        self._idle_seconds = idle_seconds
        self._verify_certs = verify_certs
        self._tls_context = tls_context
        self._local_hostname = local_hostname
        self._idle: list[_Connection] = []  # most recently used last
        self._slots: asyncio.Semaphore | None = None
        self._reaper: asyncio.Task[None] | None = None
        self._closed = False
        self.opened = 0  # connections opened so far (for tests and logs)

    async def __aenter__(self) -> SmtpPool:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def idle(self) -> int:
        """Connections open and waiting for a message."""
        return len(self._idle)

    async def send(
        self,
        message: EmailMessage | RawEmail,
        *,
        sender: str | None = None,
        recipients: Sequence[str] | None = None,
    ) -> None:
        """Hand `message` to the server, as `send_email` says (same envelope rules, same
        errors), on a pooled connection."""
        if self._closed:
            raise RuntimeError("the SMTP pool is closed")
        data, envelope_from, rcpts, message_id = _prepare(message, sender, recipients)
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.size)
        async with self._slots:
            for attempt in range(2):
                # a stale reused connection is replaced once, by a new one
                connection = self._take() if attempt == 0 else None
                reused = connection is not None
                if connection is None:
                    connection = await self._open()
                try:
                    errors, response = await self._transaction(
                        connection, envelope_from, rcpts, data, reused=reused
                    )
                except _Stale:
                    log.debug("SMTP connection closed by the server while idle: reconnecting")
                    continue
                break
        if errors:
            log.warning(
                "email %s: accepted, but refused for %s",
                message_id or "-",
                ", ".join(f"{a} ({r.code})" for a, r in errors.items()),
            )
        log.debug("email %s accepted: %s", message_id or "-", response)

    def _take(self) -> _Connection | None:
        while self._idle:
            connection = self._idle.pop()
            if connection.client.is_connected:
                return connection
        return None

    async def _open(self) -> _Connection:
        smtp = self._smtp
        client = aiosmtplib.SMTP(
            hostname=smtp.host,
            port=smtp.port,
            username=smtp.username or None,
            password=(smtp.password or "") if smtp.username else None,
            use_tls=smtp.security == "tls",
            start_tls=smtp.security == "starttls",
            validate_certs=self._verify_certs,
            tls_context=self._tls_context,
            timeout=smtp.timeout,
            local_hostname=self._local_hostname,
        )
        try:
            await client.connect()
            if client.is_ehlo_or_helo_needed:
                try:
                    await client.ehlo()
                except aiosmtplib.SMTPHeloError:
                    await client.helo()
        except _FAILURES as exc:
            client.close()
            raise _translate(exc, connecting=True) from exc
        self.opened += 1
        return _Connection(client)

    async def _transaction(
        self, connection: _Connection, sender: str, recipients: list[str], data: bytes,
        *, reused: bool,
    ) -> tuple[dict[str, aiosmtplib.SMTPResponse], str]:
        client = connection.client
        stage = "mail"
        try:
            ascii_only = sender.isascii() and all(r.isascii() for r in recipients)
            options = [] if ascii_only else ["SMTPUTF8"]
            if not ascii_only and not client.supports_extension("smtputf8"):
                raise aiosmtplib.SMTPNotSupported("SMTPUTF8 is not supported by this server")
            if client.supports_extension("size"):
                options.insert(0, f"size={len(data)}")
            encoding = "ascii" if ascii_only else "utf-8"
            await client.mail(sender, options=options, encoding=encoding)
            stage = "rcpt"
            refused: list[aiosmtplib.SMTPRecipientRefused] = []
            for recipient in recipients:
                try:
                    await client.rcpt(recipient, encoding=encoding)
                except aiosmtplib.SMTPRecipientRefused as exc:
                    refused.append(exc)
            if len(refused) == len(recipients):
                raise aiosmtplib.SMTPRecipientsRefused(refused)
            stage = "data"
            response = await client.data(data)
        except _FAILURES as exc:
            stale = reused and stage == "mail" and (
                not client.is_connected
                or isinstance(exc, ConnectionError)
                or getattr(exc, "code", None) == 421
            )
            await self._after_failure(connection, exc)
            if stale:
                raise _Stale from exc
            raise _translate(exc, connecting=False) from exc
        except BaseException:
            client.close()  # cancelled mid-transaction: the server's state is unknown
            raise
        connection.sent += 1
        self._give_back(connection)
        return {r.recipient: aiosmtplib.SMTPResponse(r.code, r.message) for r in refused}, (
            response.message
        )

    async def _after_failure(self, connection: _Connection, exc: BaseException) -> None:
        """A transaction failed: reset it (RSET) so the connection can carry the next
        message, or drop the connection when it is gone or does not answer RSET."""
        client = connection.client
        if client.is_connected and isinstance(
            exc, (aiosmtplib.SMTPResponseException, aiosmtplib.SMTPRecipientsRefused,
                  aiosmtplib.SMTPNotSupported)
        ):
            try:
                reset = await client.rset()
            except _FAILURES:
                reset = None
            if reset is not None and reset.code == 250 and client.is_connected:
                self._give_back(connection)
                return
        client.close()

    def _give_back(self, connection: _Connection) -> None:
        if self._closed or not connection.client.is_connected:
            connection.client.close()
            return
        loop = asyncio.get_running_loop()
        connection.idle_since = loop.time()
        self._idle.append(connection)
        if self._reaper is None or self._reaper.done():
            self._reaper = loop.create_task(self._reap())

    async def _reap(self) -> None:
        """Close the connections idle for `idle_seconds` (QUIT), until none is left."""
        loop = asyncio.get_running_loop()
        while self._idle:
            oldest = min(c.idle_since for c in self._idle)
            await asyncio.sleep(max(0.0, oldest + self._idle_seconds - loop.time()))
            now = loop.time()
            old = [c for c in self._idle if now - c.idle_since >= self._idle_seconds]
            self._idle = [c for c in self._idle if c not in old]
            for connection in old:
                await _quit(connection.client)

    async def close(self) -> None:
        """QUIT and close every idle connection; the pool cannot be used afterwards (a
        send still in flight closes its connection when it ends)."""
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
            self._reaper = None
        idle, self._idle = self._idle, []
        await asyncio.gather(*(_quit(c.client) for c in idle))


async def _quit(client: aiosmtplib.SMTP) -> None:
    try:
        if client.is_connected:
            await client.quit(timeout=2.0)
    except _FAILURES:
        pass
    finally:
        client.close()


def _prepare(
    message: EmailMessage | RawEmail, sender: str | None, recipients: Sequence[str] | None
) -> tuple[bytes, str, list[str], str]:
    """(bytes, envelope sender, recipients, Message-ID) of `message`."""
    if isinstance(message, RawEmail):
        envelope_from = message.sender if sender is None else sender
        rcpts = list(recipients) if recipients is not None else list(message.recipients)
        data, message_id = message.data, message.message_id
    else:
        envelope_from = envelope_sender(message) if sender is None else sender
        rcpts = list(recipients) if recipients is not None else envelope_recipients(message)
        if "Bcc" in message or "Resent-Bcc" in message:  # never transmitted
            message = copy.copy(message)
            del message["Bcc"], message["Resent-Bcc"]
        data = message.as_bytes(policy=message.policy.clone(linesep="\r\n"))
        message_id = str(message.get("Message-ID", ""))
    if not rcpts:
        raise ValueError("the email has no recipients")
    return data, envelope_from, rcpts, message_id


async def send_email(
    message: EmailMessage | RawEmail,
    smtp: SmtpSettings,
    *,
    sender: str | None = None,
    recipients: Sequence[str] | None = None,
    verify_certs: bool = True,
    tls_context: ssl.SSLContext | None = None,
    local_hostname: str | None = None,
) -> None:
    """Hand `message` to the SMTP server of `smtp`, on a connection of its own.

    The envelope sender is `sender` or the From address; the recipients are
    `recipients` or To + Cc (+ Bcc, which is not transmitted) — for a `RawEmail`, its
    own envelope. `smtp.security` is "none" (plain), "starttls" (upgrade, required) or
    "tls" (implicit TLS); AUTH is used when `smtp.username` is set; `smtp.timeout`
    bounds each step. Certificates are checked unless `verify_certs` is False (tests);
    `tls_context` replaces the default TLS context (e.g. one trusting a private CA).

    Returns when the server accepted the message for at least one recipient (the
    refused ones are logged at WARNING: sending again would duplicate the others).
    Raises TemporarySmtpError or PermanentSmtpError; ValueError for a bad
    `smtp.security` or a message without recipients.
    """
    pool = SmtpPool(
        smtp, size=1, verify_certs=verify_certs, tls_context=tls_context,
        local_hostname=local_hostname,
    )
    async with pool:
        await pool.send(message, sender=sender, recipients=recipients)
