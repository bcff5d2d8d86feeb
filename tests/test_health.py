"""`GET /healthz` names what is unreachable; `GET /metrics` counts texts."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiosmtpd.controller import Controller

from gateway.app import Gateway
from gateway.store import open_store
from gateway.web import create_app
from tests.gateway_fixtures import Resident, free_port, settings_in


class Accept:
    async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
        return "250 OK"


def make(tmp_path: Path, smtp_port: int) -> Gateway:
    settings = settings_in(tmp_path, smtp_port=smtp_port)
    store = open_store(settings.database)
    store.upgrade()
    store.close()
    return Gateway.from_settings(settings)


def test_healthz_is_200_when_store_and_smtp_answer(tmp_path: Path) -> None:
    port = free_port()
    controller = Controller(Accept(), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        gateway = make(tmp_path, port)
        response = create_app(gateway).test_client().get("/healthz")
        assert response.status_code == 200
        assert response.json == {"status": "ok", "failing": [],
                                 "checks": {"store": {"ok": True}, "smtp": {"ok": True}}}
        gateway.close()
    finally:
        controller.stop()


def test_healthz_is_503_naming_the_mail_server(tmp_path: Path) -> None:
    gateway = make(tmp_path, free_port())  # nothing listens there
    response = create_app(gateway).test_client().get("/healthz")
    assert response.status_code == 503
    assert response.json is not None
    assert response.json["failing"] == ["smtp"]
    assert "127.0.0.1" in response.json["checks"]["smtp"]["error"]
    gateway.close()


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
    from gateway.mail.types import MailOrigin

    raw = b"From: x@spam.example\r\nTo: sms@gateway.example\r\nSubject: hi\r\n\r\nHello\r\n"
    disposition = gateway.replies().handle(raw, MailOrigin(kind="smtp"))
    assert disposition.outcome == "failed" and disposition.kept
    text = client.get("/metrics").get_data(as_text=True)
    assert "sms311_failed_replies 1.0" in text
    assert 'sms311_replies_read_total{outcome="failed"} 1.0' in text
    gateway.close()


@pytest.mark.slow  # a real Dovecot
def test_healthz_logs_in_to_the_replies_mailbox(tmp_path: Path) -> None:
    from tests.dovecot import Dovecot

    port = free_port()
    controller = Controller(Accept(), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        with Dovecot(tmp_path / "imap") as dovecot:
            imap = (f"  imap: {{host: 127.0.0.1, port: {dovecot.port}, username: {dovecot.user},"
                    " security: none}\n")
            for password, status in ((dovecot.password, 200), ("wrong", 503)):
                folder = tmp_path / status.__str__()
                from gateway.settings import load_settings
                from tests.gateway_fixtures import write_settings

                config = write_settings(folder, smtp_port=port)
                config.write_text(config.read_text().replace("  smtp: {host", imap + "  smtp: {host"))
                settings = load_settings(config, environ={"GATEWAY_EMAIL__IMAP__PASSWORD": password})
                store = open_store(settings.database)
                store.upgrade()
                store.close()
                gateway = Gateway.from_settings(settings)
                response = create_app(gateway).test_client().get("/healthz")
                assert response.status_code == status, response.json
                assert response.json is not None
                assert response.json["checks"]["imap"]["ok"] is (status == 200)
                gateway.close()
    finally:
        controller.stop()
