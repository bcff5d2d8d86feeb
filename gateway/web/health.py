"""`GET /healthz` and `GET /metrics` (Prometheus text).

Two answers to /healthz, from the same checks (`HealthChecks`):

- the public one (`blueprint`, on `web.listen`): only `{"status": "ok"}` (200) or
  `{"status": "unavailable"}` (503). Anyone who can reach the webhook can ask it, so it names
  nothing (no server, no error) and costs little: no IMAP sign-in, at most one SMTP connection
  every `SMTP_CACHE_SECONDS`;
- the detailed one (`internal_blueprint`, on `web.metrics_listen` only): which check fails and
  why, and every service's recorded state with its age.

The checks:

- store: a round trip (`Store.ping`), at every request;
- smtp: a TCP connection to `email.smtp` (no sign-in), its result kept `SMTP_CACHE_SECONDS`
  (concurrent requests wait for the one check in flight rather than opening their own);
- imap (when `email.imap` is set): the IMAP listener's last known state, which it records in
  the store (`gateway.store.service_state`: on every change and every `STATE_HEARTBEAT`
  seconds). Not ok when the listener says so, when the state is older than `STALE_AFTER`
  (the worker stopped or hangs), or when there is none once `START_GRACE` has passed since
  this web half started (no worker ever listened). While the store is down the state cannot
  be read: imap is then reported as unknown (`"ok": null`), not as failing.

`/metrics` is on the public listener unless `web.metrics_listen` is set; then it is served
only there (the public one answers 404). It is meant for the monitoring system, not the
Internet: bind `metrics_listen` to loopback or a private network.

A change of the overall answer (ok <-> unavailable) is logged once, with what fails, so the
details are also in the log when no internal listener is configured.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.app import Gateway
from gateway.store.reply_mail import count_failed_emails
from gateway.store.service_state import read_states
from gateway.web.extension import current_gateway

log = logging.getLogger(__name__)

blueprint = Blueprint("health", __name__)  # the public /healthz
internal_blueprint = Blueprint("health_internal", __name__)  # the detailed /healthz
metrics_blueprint = Blueprint("metrics", __name__)  # /metrics

CHECK_TIMEOUT = 2.0  # seconds for the SMTP connection
SMTP_CACHE_SECONDS = 5.0
STATE_HEARTBEAT = 30.0  # = gateway.mail.imap.STATE_HEARTBEAT (how often the listener writes)
STALE_AFTER = 4 * STATE_HEARTBEAT  # an older IMAP state: the listener stopped writing
START_GRACE = 60.0  # no IMAP state yet: ok this long after the web half started

_EXTENSION = "sms311.health"


def _tcp(host: str, port: int) -> str | None:
    """None when a TCP connection opens, else the error."""
    try:
        with socket.create_connection((host, port), timeout=CHECK_TIMEOUT):
            return None
    except OSError as exc:
        return f"{host}:{port}: {exc.strerror or exc}"


class HealthChecks:
    """The checks behind /healthz, with what they remember between requests (the SMTP
    result, when this web half started, the last overall answer). Thread-safe."""

    def __init__(
        self,
        gateway: Gateway,
        *,
        smtp_cache: float = SMTP_CACHE_SECONDS,
        stale_after: float = STALE_AFTER,
        start_grace: float = START_GRACE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._gateway = gateway
        self.smtp_cache = smtp_cache
        self.stale_after = stale_after
        self.start_grace = start_grace
        self._clock = clock
        self._started = clock()
        self._smtp_lock = threading.Lock()
        self._smtp: tuple[float, str | None] | None = None  # (checked at, error)
        self._healthy: bool | None = None  # the last overall answer (logged on change)

    def smtp_error(self) -> str | None:
        """None when the SMTP server accepts a TCP connection (at most one connection every
        `smtp_cache` seconds), else the error."""
        with self._smtp_lock:
            cached = self._smtp
            if cached is not None and self._clock() - cached[0] < self.smtp_cache:
                return cached[1]
            smtp = self._gateway.settings.email.smtp
            error = _tcp(smtp.host, smtp.port)
            self._smtp = (self._clock(), error)
            return error

    def run(self, now: datetime | None = None) -> dict[str, Any]:
        """Every check: {"status": "ok" | "unavailable", "failing": [names], "checks": {name:
        {"ok": True | False | None, "error": …}}, "services": {name: {"ok", "detail",
        "age_seconds"}}}."""
        now = now or datetime.now(UTC)
        gateway = self._gateway
        checks: dict[str, dict[str, Any]] = {}
        services: dict[str, dict[str, Any]] = {}
        states = None
        try:
            gateway.store.ping()
            states = read_states(gateway.store)
            checks["store"] = {"ok": True}
        except Exception as exc:  # any failure of the store is "not reachable"
            checks["store"] = {"ok": False, "error": type(exc).__name__}
        error = self.smtp_error()
        checks["smtp"] = {"ok": error is None} | ({"error": error} if error else {})
        if states is not None:
            for name, state in sorted(states.items()):
                services[name] = {
                    "ok": state.ok,
                    "detail": state.detail,
                    "age_seconds": round(max(0.0, (now - state.updated_at).total_seconds()), 1),
                }
        if gateway.settings.email.imap is not None:
            checks["imap"] = self._imap(services.get("imap"), states is not None)
        failing = [name for name, check in checks.items() if check["ok"] is False]
        healthy = not failing and all(check["ok"] for check in checks.values())
        self._log_change(healthy, checks)
        return {
            "status": "ok" if healthy else "unavailable",
            "failing": failing,
            "checks": checks,
            "services": services,
        }

    def _imap(self, state: dict[str, Any] | None, readable: bool) -> dict[str, Any]:
        if not readable:
            return {"ok": None, "error": "unknown: the store is unavailable"}
        if state is None:
            waited = self._clock() - self._started
            if waited < self.start_grace:
                return {"ok": True, "note": "no state recorded yet (starting)"}
            return {"ok": False, "error": "no state recorded: is the worker running?"}
        if state["age_seconds"] > self.stale_after:
            return {
                "ok": False,
                "error": f"state not updated for {state['age_seconds']:.0f} s "
                "(the worker stopped or hangs)",
            }
        if not state["ok"]:
            return {"ok": False, "error": state["detail"] or "not working"}
        return {"ok": True}

    def _log_change(self, healthy: bool, checks: dict[str, dict[str, Any]]) -> None:
        if healthy == self._healthy:
            return
        before, self._healthy = self._healthy, healthy
        if healthy:
            if before is not None:
                log.info("healthz: ok again")
            return
        why = "; ".join(
            f"{name}: {check.get('error', 'unknown')}"
            for name, check in checks.items()
            if check["ok"] is not True
        )
        log.warning("healthz: unavailable (%s)", why)


def run_checks(gateway: Gateway) -> dict[str, dict[str, Any]]:
    """Each dependency's state, e.g. {"store": {"ok": True}, "smtp": {"ok": False,
    "error": …}, "imap": …} (a fresh `HealthChecks`: nothing cached)."""
    checks: dict[str, dict[str, Any]] = HealthChecks(gateway).run()["checks"]
    return checks


def attach_checks(app: Flask, gateway: Gateway) -> HealthChecks:
    """The `HealthChecks` of `app` (made once; the views use it)."""
    checks = HealthChecks(gateway)
    app.extensions[_EXTENSION] = checks
    return checks


def current_checks() -> HealthChecks:
    checks: HealthChecks = current_app.extensions[_EXTENSION]
    return checks


@blueprint.get("/healthz")
def healthz() -> Response:
    """The public answer: ok or not, nothing else."""
    healthy = current_checks().run()["status"] == "ok"
    response = jsonify({"status": "ok" if healthy else "unavailable"})
    response.status_code = 200 if healthy else 503
    response.headers["Cache-Control"] = "no-store"
    return response


@internal_blueprint.get("/healthz")
def healthz_details() -> Response:
    """The internal answer: the same status code, with which check fails and why."""
    result = current_checks().run()
    response = jsonify(result)
    response.status_code = 200 if result["status"] == "ok" else 503
    response.headers["Cache-Control"] = "no-store"
    return response


@metrics_blueprint.get("/metrics")
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
