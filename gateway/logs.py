"""Logging helpers: one line per event, phone numbers masked (privacy at INFO)."""

from __future__ import annotations

import logging
import sys
import time

_full_detail = False  # privacy.log_full_detail; process-wide, like the logging config itself


def log_full_detail() -> bool:
    """True when DEBUG logs may carry full numbers and texts (privacy.log_full_detail)."""
    return _full_detail and logging.getLogger("gateway").isEnabledFor(logging.DEBUG)


def mask_phone(number: str | None) -> str:
    """Mask the middle of a phone number: "+16135550123" -> "+1613***0123" (shown whole
    only when privacy.log_full_detail is on and the log level is DEBUG)."""
    if not number:
        return "-"
    if log_full_detail():
        return number
    if len(number) <= 6:
        return "***"
    return f"{number[:5]}***{number[-4:]}"


def setup_logging(level: str = "INFO", *, full_detail: bool = False) -> None:
    """Log to stderr (journald picks it up), one line per event. `full_detail` (only with
    DEBUG) lets numbers and texts through, for debugging."""
    global _full_detail
    _full_detail = full_detail
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Libraries that chat at INFO: aiosmtpd logs every SMTP command (addresses included),
    # alembic every migration step, aioimaplib whole messages at DEBUG. Their warnings show.
    for noisy in ("mail.log", "alembic", "aioimaplib"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    # uvicorn says at INFO that it started (the gateway says where it listens), and warns
    # for every malformed request and every request over its concurrency limit: a flood
    # would write a line per request. One warning a minute says the same; errors all show.
    server = logging.getLogger("uvicorn.error")
    server.setLevel(max(logging.WARNING, root.level))
    server.filters[:] = [OncePer(60.0)]


class OncePer(logging.Filter):
    """Lets one record through per `seconds` (the others are dropped); records of ERROR
    and above always pass."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self._seconds = seconds
        self._next = 0.0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            return True
        now = time.monotonic()
        if now < self._next:
            return False
        self._next = now + self._seconds
        return True
