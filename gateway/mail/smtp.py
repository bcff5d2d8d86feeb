"""Send one email over SMTP (aiosmtplib): security none | starttls | tls, AUTH, timeouts.

`send_email` raises `TemporarySmtpError` when trying again later may work (the server
is down or slow, a 4xx answer, a TLS or login problem the operator must fix) and
`PermanentSmtpError` when this message will never be accepted (a 5xx answer to the
recipients or the data), so the dispatcher can retry the first and park the second.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Sequence
from email.message import EmailMessage
from email.utils import getaddresses

import aiosmtplib

from gateway.settings import SmtpSettings

log = logging.getLogger(__name__)

SECURITY_MODES = ("none", "starttls", "tls")


class SmtpError(Exception):
    """Sending failed. `code` is the SMTP reply code when the server gave one."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


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


def _classify(code: int, text: str) -> SmtpError:
    if 400 <= code < 500:
        return TemporarySmtpError(text, code)
    if 500 <= code < 600:
        return PermanentSmtpError(text, code)
    return TemporarySmtpError(text, code)


async def send_email(
    message: EmailMessage,
    smtp: SmtpSettings,
    *,
    sender: str | None = None,
    recipients: Sequence[str] | None = None,
    verify_certs: bool = True,
    tls_context: ssl.SSLContext | None = None,
    local_hostname: str | None = None,
) -> None:
    """Hand `message` to the SMTP server of `smtp`.

    The envelope sender is `sender` or the From address; the recipients are
    `recipients` or To + Cc (+ Bcc, which is not transmitted). `smtp.security` is
    "none" (plain), "starttls" (upgrade, required) or "tls" (implicit TLS); AUTH is
    used when `smtp.username` is set; `smtp.timeout` bounds each step. Certificates are
    checked unless `verify_certs` is False (tests); `tls_context` replaces the default
    TLS context (e.g. one trusting a private CA).

    Returns when the server accepted the message for at least one recipient (the
    refused ones are logged at WARNING: sending again would duplicate the others).
    Raises TemporarySmtpError or PermanentSmtpError; ValueError for a bad
    `smtp.security` or a message without recipients.
    """
    if smtp.security not in SECURITY_MODES:
        raise ValueError(f"email.smtp.security must be one of {SECURITY_MODES}: {smtp.security!r}")
    envelope_from = envelope_sender(message) if sender is None else sender
    rcpts = list(recipients) if recipients is not None else envelope_recipients(message)
    if not rcpts:
        raise ValueError("the email has no recipients")
    try:
        errors, response = await aiosmtplib.send(
            message,
            sender=envelope_from,
            recipients=rcpts,
            hostname=smtp.host,
            port=smtp.port,
            username=smtp.username or None,
            password=(smtp.password or "") if smtp.username else None,
            use_tls=smtp.security == "tls",
            start_tls=smtp.security == "starttls",
            validate_certs=verify_certs,
            tls_context=tls_context,
            timeout=smtp.timeout,
            local_hostname=local_hostname,
        )
    except aiosmtplib.SMTPRecipientsRefused as exc:
        codes = [r.code for r in exc.recipients]
        text = "; ".join(f"{r.recipient}: {r.code} {r.message}" for r in exc.recipients)
        if any(400 <= c < 500 for c in codes) or not codes:
            raise TemporarySmtpError(
                f"recipients refused: {text}", min(codes, default=None)
            ) from exc
        raise PermanentSmtpError(f"recipients refused: {text}", codes[0]) from exc
    except aiosmtplib.SMTPAuthenticationError as exc:
        # Not this message's fault: the operator must fix the login, then it will go.
        raise TemporarySmtpError(
            f"SMTP login failed ({exc.code} {exc.message}): check email.smtp.username/password",
            exc.code,
        ) from exc
    except aiosmtplib.SMTPNotSupported as exc:
        raise TemporarySmtpError(f"SMTP server does not support it: {exc}") from exc
    except aiosmtplib.SMTPResponseException as exc:
        raise _classify(exc.code, f"SMTP server said {exc.code} {exc.message}") from exc
    except aiosmtplib.SMTPException as exc:
        # connect errors, timeouts, disconnects
        raise TemporarySmtpError(f"SMTP {type(exc).__name__}: {exc}") from exc
    except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
        raise TemporarySmtpError(f"SMTP {type(exc).__name__}: {exc}") from exc
    if errors:
        log.warning(
            "email %s: accepted, but refused for %s",
            message.get("Message-ID", "-"),
            ", ".join(f"{a} ({r.code})" for a, r in errors.items()),
        )
    log.debug("email %s accepted: %s", message.get("Message-ID", "-"), response)
