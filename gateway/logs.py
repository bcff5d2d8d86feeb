"""Logging helpers: one line per event, phone numbers masked (privacy at INFO)."""

from __future__ import annotations

import logging
import sys


def mask_phone(number: str | None) -> str:
    """Mask the middle of a phone number: "+16135550123" -> "+1613***0123"."""
    if not number:
        return "-"
    if len(number) <= 6:
        return "***"
    return f"{number[:5]}***{number[-4:]}"


def setup_logging(level: str = "INFO") -> None:
    """Log to stderr (journald picks it up), one line per event."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Libraries that chat at INFO: aiosmtpd logs every SMTP command (addresses included),
    # alembic every migration step, aioimaplib whole messages at DEBUG. Their warnings show.
    for noisy in ("mail.log", "alembic", "aioimaplib"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
