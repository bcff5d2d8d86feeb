"""`GET /healthz` (JSON: 200 when store, SMTP and IMAP answer, 503 naming what does not)
and `GET /metrics` (Prometheus text)."""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

from flask import Blueprint, Response, jsonify
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.app import Gateway
from gateway.store.reply_mail import count_failed_emails
from gateway.web.extension import current_gateway

log = logging.getLogger(__name__)

blueprint = Blueprint("health", __name__)

CHECK_TIMEOUT = 2.0


def _tcp(host: str, port: int) -> str | None:
    """None when a TCP connection opens, else the error."""
    try:
        with socket.create_connection((host, port), timeout=CHECK_TIMEOUT):
            return None
    except OSError as exc:
        return f"{host}:{port}: {exc.strerror or exc}"


def run_checks(gateway: Gateway) -> dict[str, dict[str, Any]]:
    """Each dependency's state: {"store": {"ok": True}, "smtp": {"ok": False, "error": …}}."""
    checks: dict[str, dict[str, Any]] = {}
    try:
        gateway.store.ping()
        checks["store"] = {"ok": True}
    except Exception as exc:  # any failure of the store is "not reachable"
        checks["store"] = {"ok": False, "error": type(exc).__name__}
    smtp = gateway.settings.email.smtp
    error = _tcp(smtp.host, smtp.port)
    checks["smtp"] = {"ok": error is None} | ({"error": error} if error else {})
    imap = gateway.settings.email.imap
    if imap is not None:
        error = _mailbox(gateway)
        checks["imap"] = {"ok": error is None} | ({"error": error} if error else {})
    return checks


def _mailbox(gateway: Gateway) -> str | None:
    """None when the replies mailbox accepts a login (connect, LOGIN, NOOP, LOGOUT)."""
    from gateway.mail.imap import ImapListener
    from gateway.mail.types import Disposition, MailOrigin

    imap = gateway.settings.email.imap
    assert imap is not None

    async def no_sink(raw: bytes, origin: MailOrigin) -> Disposition:  # the check reads nothing
        raise RuntimeError("not used")

    listener = ImapListener(imap, no_sink, gateway.store, check_timeout=CHECK_TIMEOUT * 2)
    try:
        asyncio.run(listener.check())
    except Exception as exc:  # any failure is "not reachable", named
        return f"{imap.host}:{imap.port}: {type(exc).__name__}: {exc}"[:300]
    return None


@blueprint.get("/healthz")
def healthz() -> Response:
    checks = run_checks(current_gateway())
    healthy = all(check["ok"] for check in checks.values())
    failing = [name for name, check in checks.items() if not check["ok"]]
    response = jsonify({"status": "ok" if healthy else "unavailable", "failing": failing,
                        "checks": checks})
    response.status_code = 200 if healthy else 503
    return response


@blueprint.get("/metrics")
def metrics() -> Response:
    gateway = current_gateway()
    try:
        stats = gateway.store.outbox_stats()
        gateway.metrics.outbox_depth.set(stats["depth"])
        gateway.metrics.outbox_oldest_seconds.set(stats["oldest_age_seconds"] or 0)
        with gateway.console.reading() as tx:  # a read-only transaction
            gateway.metrics.failed_replies.set(count_failed_emails(tx.core))
    except Exception as exc:  # metrics must answer even when the store does not
        log.warning("metrics: outbox stats unavailable: %s", type(exc).__name__)
    return Response(generate_latest(gateway.metrics.registry), mimetype=CONTENT_TYPE_LATEST)
