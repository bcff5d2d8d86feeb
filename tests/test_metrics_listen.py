"""`web.metrics_listen`: /metrics and the detailed /healthz on an internal address of their
own; the public listener then answers 404 for /metrics and only ok / unavailable for /healthz."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from aiosmtpd.controller import Controller

from gateway.app import Gateway
from gateway.settings import ConfigError, load_settings
from gateway.store import open_store
from gateway.web import create_app
from tests.gateway_fixtures import free_port, write_settings
from tests.loop import wait_for


class Accept:
    async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
        return "250 OK"


def config_with(tmp_path: Path, *, smtp_port: int, web_port: int, metrics: str,
                extra_email: str = "") -> Path:
    config = write_settings(tmp_path, smtp_port=smtp_port, web_port=web_port)
    text = config.read_text()
    web = f'web: {{listen: "127.0.0.1:{web_port}"}}'
    assert web in text
    text = text.replace(web, f'web: {{listen: "127.0.0.1:{web_port}", metrics_listen: "{metrics}"}}')
    text = text.replace("  smtp: {host", extra_email + "  smtp: {host")
    config.write_text(text)
    return config


def test_metrics_move_to_the_internal_app(tmp_path: Path) -> None:
    config = config_with(tmp_path, smtp_port=free_port(), web_port=free_port(),
                         metrics="127.0.0.1:9311")
    settings = load_settings(config, environ={})
    assert settings.web.metrics_listen == "127.0.0.1:9311"
    store = open_store(settings.database)
    store.upgrade()
    store.close()
    gateway = Gateway.from_settings(settings)
    try:
        public = create_app(gateway).test_client()
        internal = create_app(gateway, internal=True).test_client()
        assert public.get("/metrics").status_code == 404
        response = internal.get("/metrics")
        assert response.status_code == 200
        assert "sms311_outbox_depth" in response.get_data(as_text=True)
        # /healthz: the public answer names nothing, the internal one says what fails
        assert public.get("/healthz").json == {"status": "unavailable"}
        details = internal.get("/healthz")
        assert details.status_code == 503 and details.json is not None
        assert details.json["failing"] == ["smtp"]
        # the internal app serves nothing else
        assert internal.get("/console/").status_code == 404
        assert internal.post("/sms/inbound").status_code == 404
    finally:
        gateway.close()


def test_metrics_listen_is_checked_like_a_listen_address(tmp_path: Path) -> None:
    config = config_with(tmp_path, smtp_port=free_port(), web_port=free_port(),
                         metrics="localhost")
    with pytest.raises(ConfigError, match=r"web\.metrics_listen: must be \"host:port\""):
        load_settings(config, environ={})


@pytest.mark.slow  # `sms311 run`
def test_sms311_run_serves_metrics_on_the_internal_address_only(tmp_path: Path) -> None:
    controller = Controller(Accept(), hostname="127.0.0.1", port=free_port())
    controller.start()
    web_port, metrics_port, ingress_port = free_port(), free_port(), free_port()
    config = config_with(
        tmp_path, smtp_port=controller.port, web_port=web_port,
        metrics=f"127.0.0.1:{metrics_port}",
        extra_email=f'  ingress: {{listen: "127.0.0.1:{ingress_port}"}}\n',
    )
    upgrade = subprocess.run(
        [sys.executable, "-m", "gateway", "--config", str(config), "db", "upgrade"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert upgrade.returncode == 0, upgrade.stderr
    log = tmp_path / "run.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "--config", str(config), "run"],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    public, internal = f"http://127.0.0.1:{web_port}", f"http://127.0.0.1:{metrics_port}"

    def ingress_recorded() -> bool:
        assert process.poll() is None, log.read_text()
        try:
            details = requests.get(f"{internal}/healthz", timeout=2).json()
        except requests.ConnectionError:
            return False
        return "ingress" in details["services"]

    try:
        wait_for(ingress_recorded, "sms311 run to start and record the ingress", 60)
        assert f"metrics listening on 127.0.0.1:{metrics_port}" in log.read_text()
        response = requests.get(f"{public}/healthz", timeout=5)
        assert (response.status_code, response.json()) == (200, {"status": "ok"})
        assert requests.get(f"{public}/metrics", timeout=5).status_code == 404
        response = requests.get(f"{internal}/metrics", timeout=5)
        assert response.status_code == 200 and "sms311_texts_in_total" in response.text
        details = requests.get(f"{internal}/healthz", timeout=5).json()
        assert details["status"] == "ok"
        assert details["checks"] == {"store": {"ok": True}, "smtp": {"ok": True}}
        ingress = details["services"]["ingress"]
        assert ingress["ok"] is True and f"127.0.0.1:{ingress_port}" in ingress["detail"]
        assert requests.get(f"{internal}/console/", timeout=5).status_code == 404
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            assert process.wait(20) == 0, log.read_text()
        finally:
            if process.poll() is None:
                process.kill()
            controller.stop()
