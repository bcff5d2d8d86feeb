"""`GET /healthz`: a public ok / unavailable that names nothing and costs little; the details
(which check, why) on the internal app; the IMAP listener's recorded state instead of a sign-in
per request. `GET /metrics` counts texts."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from gateway.app import Gateway
from gateway.mail.imap import ImapListener
from gateway.mail.types import Disposition, MailOrigin
from gateway.settings import load_settings
from gateway.store import SqlStore, open_store
from gateway.store.service_state import MAX_DETAIL, ServiceState, read_states, record_state
from gateway.web import create_app
from gateway.web.health import HealthChecks
from tests.gateway_fixtures import Resident, free_port, write_settings
from tests.loop import wait_for
from tests.tcp_proxy import TcpProxy

OK = {"status": "ok"}
UNAVAILABLE = {"status": "unavailable"}


class Accept:
    async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
        return "250 OK"


@pytest.fixture
def smtp_port() -> Iterator[int]:
    """A real SMTP server (aiosmtpd) that accepts everything."""
    port = free_port()
    controller = Controller(Accept(), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield port
    finally:
        controller.stop()


def make(tmp_path: Path, smtp_port: int, *, imap_port: int | None = None,
         imap_user: str = "replies@gateway.example", password: str = "secret") -> Gateway:
    config = write_settings(tmp_path, smtp_port=smtp_port)
    if imap_port is not None:
        imap = (f"  imap: {{host: 127.0.0.1, port: {imap_port}, username: {imap_user},"
                " security: none}\n")
        config.write_text(config.read_text().replace("  smtp: {host", imap + "  smtp: {host"))
    environ = {} if imap_port is None else {"GATEWAY_EMAIL__IMAP__PASSWORD": password}
    settings = load_settings(config, environ=environ)
    store = open_store(settings.database)
    store.upgrade()
    store.close()
    return Gateway.from_settings(settings)


def public(gateway: Gateway) -> Any:
    return create_app(gateway).test_client()


def internal(gateway: Gateway) -> Any:
    return create_app(gateway, internal=True).test_client()


class ListenerThread:
    """The real IMAP listener, recording its state in the gateway's store, on its own event
    loop in a thread (as the worker runs it), while the test asks /healthz."""

    def __init__(self, gateway: Gateway, **options: Any) -> None:
        imap = gateway.settings.email.imap
        assert imap is not None

        async def sink(raw: bytes, origin: MailOrigin) -> Disposition:
            raise AssertionError("no mail in these tests")

        def record(ok: bool, detail: str | None) -> None:
            record_state(gateway.store, "imap", ok, detail)

        options = {"min_backoff": 0.05, "max_backoff": 0.2, **options}
        self.listener = ImapListener(imap, sink, gateway.store, record_state=record, **options)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), daemon=True)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._ready.set()
        await self.listener.run(self._stop)

    def __enter__(self) -> ListenerThread:
        self._thread.start()
        self._ready.wait(5)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
        assert not self._thread.is_alive()


def imap_state(gateway: Gateway) -> tuple[bool, str | None] | None:
    state = read_states(gateway.store).get("imap")
    return None if state is None else (state.ok, state.detail)


def settled(proxy: TcpProxy) -> int:
    """The connections the proxy accepted, once those in flight have been counted (it
    counts them on its own thread)."""
    time.sleep(0.3)
    return proxy.connections


def test_service_states_are_recorded_and_read(store: SqlStore) -> None:
    assert read_states(store) == {}
    then = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    record_state(store, "imap", False, "x" * 1000, now=then)
    record_state(store, "ingress", True, "listening")
    states = read_states(store)
    assert states["imap"] == ServiceState("imap", False, "x" * MAX_DETAIL, then)
    assert states["ingress"].ok and states["ingress"].detail == "listening"
    record_state(store, "imap", True, now=then + timedelta(seconds=30))  # replaced
    assert read_states(store)["imap"] == ServiceState(
        "imap", True, None, then + timedelta(seconds=30))
    with pytest.raises(ValueError):
        record_state(store, "", True)
    with pytest.raises(ValueError):
        record_state(store, "imap", True, now=datetime(2026, 1, 1))  # naive


# -- the public answer names nothing ---------------------------------------------------------


def test_public_healthz_is_ok_or_unavailable_and_nothing_else(
    tmp_path: Path, smtp_port: int
) -> None:
    gateway = make(tmp_path / "up", smtp_port)
    response = public(gateway).get("/healthz")
    assert (response.status_code, response.json) == (200, OK)
    assert response.headers["Cache-Control"] == "no-store"
    gateway.close()

    gateway = make(tmp_path / "down", free_port())  # nothing listens there
    response = public(gateway).get("/healthz")
    assert (response.status_code, response.json) == (503, UNAVAILABLE)
    assert b"127.0.0.1" not in response.data and b"smtp" not in response.data
    # the details are on the internal app
    response = internal(gateway).get("/healthz")
    assert response.status_code == 503 and response.json is not None
    assert response.json["failing"] == ["smtp"]
    assert "127.0.0.1" in response.json["checks"]["smtp"]["error"]
    assert response.json["checks"]["store"] == {"ok": True}
    gateway.close()


def test_a_change_of_health_is_logged_once_with_the_details(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    gateway = make(tmp_path, free_port())
    client = public(gateway)
    with caplog.at_level("WARNING", logger="gateway.web.health"):
        for _ in range(5):
            assert client.get("/healthz").status_code == 503
    lines = [r.getMessage() for r in caplog.records if r.name == "gateway.web.health"]
    assert len(lines) == 1 and "smtp: 127.0.0.1:" in lines[0]
    gateway.close()


def test_the_smtp_check_is_cached(tmp_path: Path, smtp_port: int) -> None:
    with TcpProxy(smtp_port) as proxy:
        gateway = make(tmp_path, proxy.port)
        client = public(gateway)
        for _ in range(20):
            assert client.get("/healthz").status_code == 200
        assert settled(proxy) == 1  # one TCP connection for 20 requests
        # once the cache has expired, the next request looks again
        checks = HealthChecks(gateway, smtp_cache=0.5)
        assert checks.run()["status"] == "ok"
        assert checks.run()["status"] == "ok"
        assert settled(proxy) == 2
        time.sleep(0.5)
        proxy.cut()  # the mail server goes away: seen at the next look
        assert checks.run()["failing"] == ["smtp"]
        gateway.close()


# -- IMAP: the listener's recorded state, no sign-in per request -----------------------------


def test_imap_down_is_reported_from_the_listeners_state(tmp_path: Path, smtp_port: int) -> None:
    closed = free_port()  # nothing listens there
    gateway = make(tmp_path, smtp_port, imap_port=closed)
    assert imap_state(gateway) is None
    with ListenerThread(gateway):
        wait_for(lambda: imap_state(gateway) is not None, "the listener to record its state")
    state = imap_state(gateway)
    assert state is not None and state[0] is False
    assert state[1] is not None and f"127.0.0.1:{closed}" in state[1]
    response = public(gateway).get("/healthz")
    assert (response.status_code, response.json) == (503, UNAVAILABLE)
    details = internal(gateway).get("/healthz").json
    assert details is not None
    assert details["failing"] == ["imap"]
    assert f"127.0.0.1:{closed}" in details["checks"]["imap"]["error"]
    assert details["services"]["imap"]["ok"] is False
    assert details["services"]["imap"]["age_seconds"] < 60
    gateway.close()


def test_imap_state_staleness_and_absence(tmp_path: Path, smtp_port: int) -> None:
    from gateway.mail import imap
    from gateway.web import health

    # the bound is a few of the listener's heartbeats
    assert health.STATE_HEARTBEAT == imap.STATE_HEARTBEAT
    assert health.STALE_AFTER >= 3 * imap.STATE_HEARTBEAT
    gateway = make(tmp_path, smtp_port, imap_port=free_port())
    client = public(gateway)
    # no state yet: fine while the gateway starts, not once the start-up grace has passed
    assert client.get("/healthz").status_code == 200
    late = HealthChecks(gateway, start_grace=0).run()
    assert late["failing"] == ["imap"] and "no state" in late["checks"]["imap"]["error"]

    now = datetime.now(UTC)
    record_state(gateway.store, "imap", True, now=now)
    assert client.get("/healthz").status_code == 200
    assert HealthChecks(gateway, start_grace=0).run()["status"] == "ok"

    # a state nobody refreshed (the worker died) is not believed
    record_state(gateway.store, "imap", True, now=now - timedelta(minutes=10))
    response = client.get("/healthz")
    assert (response.status_code, response.json) == (503, UNAVAILABLE)
    details = internal(gateway).get("/healthz").json
    assert details is not None and details["failing"] == ["imap"]
    assert "not updated for" in details["checks"]["imap"]["error"]

    record_state(gateway.store, "imap", False, "login refused\r\n\x1b[31m", now=now)
    details = internal(gateway).get("/healthz").json
    assert details is not None
    assert details["checks"]["imap"] == {"ok": False, "error": "login refused [31m"}
    gateway.close()


def test_no_imap_state_is_checked_when_imap_is_not_configured(
    tmp_path: Path, smtp_port: int
) -> None:
    gateway = make(tmp_path, smtp_port)
    record_state(gateway.store, "imap", False, "old", now=datetime.now(UTC) - timedelta(days=1))
    result = HealthChecks(gateway, start_grace=0).run()
    assert result["status"] == "ok" and "imap" not in result["checks"]
    assert result["services"]["imap"]["ok"] is False  # still shown in the details
    gateway.close()


@pytest.mark.slow  # a real Dovecot
def test_healthz_never_signs_in_to_the_mailbox(tmp_path: Path, smtp_port: int) -> None:
    from tests.dovecot import Dovecot

    with Dovecot(tmp_path / "imap") as dovecot, TcpProxy(dovecot.port) as proxy:
        gateway = make(tmp_path / "gw", smtp_port, imap_port=proxy.port, imap_user=dovecot.user,
                       password=dovecot.password)
        client, details = public(gateway), internal(gateway)
        with ListenerThread(gateway, state_heartbeat=0.2) as listener:
            wait_for(lambda: imap_state(gateway) == (True, None), "the listener to sign in")
            wait_for(listener.listener.caught_up.is_set, "the listener to idle")
            connections, logins = settled(proxy), dovecot.log().count("Login: user=")
            assert connections == 1 and logins == 1
            for _ in range(20):
                response = client.get("/healthz")
                assert (response.status_code, response.json) == (200, OK)
                assert details.get("/healthz").status_code == 200
            assert settled(proxy) == connections  # no connection to IMAP per request
            assert dovecot.log().count("Login: user=") == logins

            # the heartbeat: an unchanged state is written again and again
            first = read_states(gateway.store)["imap"].updated_at
            wait_for(lambda: read_states(gateway.store)["imap"].updated_at > first,
                     "the listener's heartbeat", 5)

            dovecot.stop()  # the mail server goes away: the listener says so
            wait_for(lambda: client.get("/healthz").status_code == 503,
                     "/healthz to report IMAP down")
            assert client.get("/healthz").json == UNAVAILABLE
            body = details.get("/healthz").json
            assert body is not None and body["failing"] == ["imap"]
            assert f"127.0.0.1:{proxy.port}" in body["checks"]["imap"]["error"]

            dovecot.start()  # back: the listener signs in again
            wait_for(lambda: client.get("/healthz").status_code == 200,
                     "/healthz to report IMAP back", 30)
        gateway.close()


@pytest.mark.slow  # a real Dovecot
def test_a_refused_sign_in_is_reported_without_the_password(
    tmp_path: Path, smtp_port: int
) -> None:
    from tests.dovecot import Dovecot

    secret = "wrong-Pa55word-never-shown"
    with Dovecot(tmp_path / "imap") as dovecot:
        gateway = make(tmp_path / "gw", smtp_port, imap_port=dovecot.port,
                       imap_user=dovecot.user, password=secret)
        with ListenerThread(gateway):
            wait_for(lambda: imap_state(gateway) is not None, "the listener to record its state",
                     30)
        response = public(gateway).get("/healthz")
        assert (response.status_code, response.json) == (503, UNAVAILABLE)
        body = internal(gateway).get("/healthz")
        assert body.json is not None and body.json["failing"] == ["imap"]
        assert "login refused" in body.json["checks"]["imap"]["error"]
        assert secret not in json.dumps(body.json) and secret not in body.get_data(as_text=True)
        gateway.close()


# -- metrics ---------------------------------------------------------------------------------


def test_metrics_count_texts_and_refusals(tmp_path: Path) -> None:
    gateway = make(tmp_path, free_port())
    client = create_app(gateway).test_client()
    Resident(client, gateway.settings).say("+16135550150", "Pothole", expect="city")
    client.post("/sms/inbound", data={"From": "+16135550150"})  # unsigned
    text = client.get("/metrics").get_data(as_text=True)
    assert 'sms311_texts_in_total{kind="text"} 1.0' in text
    assert 'sms311_webhook_rejected_total{reason="signature"} 1.0' in text
    assert "sms311_outbox_depth 0.0" in text
    assert "sms311_failed_replies 0.0" in text
    # a reply from a stranger is not texted: kept in the Failed list, and counted
    raw = b"From: x@spam.example\r\nTo: sms@gateway.example\r\nSubject: hi\r\n\r\nHello\r\n"
    disposition = gateway.replies().handle(raw, MailOrigin(kind="smtp"))
    assert disposition.outcome == "failed" and disposition.kept
    text = client.get("/metrics").get_data(as_text=True)
    assert "sms311_failed_replies 1.0" in text
    assert 'sms311_replies_read_total{outcome="failed"} 1.0' in text
    gateway.close()
