"""End to end: `sms311 run` as a subprocess, a real aiosmtpd mail server, signed
webhooks over HTTP; the emails arrive in the right mailbox, threaded."""

from __future__ import annotations

import email
import email.policy
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import requests
from aiosmtpd.controller import Controller

from gateway.run.sandbox import send_text
from gateway.settings import load_settings
from tests.gateway_fixtures import free_port, write_settings

pytestmark = pytest.mark.slow


class Collector:
    """aiosmtpd handler: keeps every message it receives."""

    def __init__(self) -> None:
        self.messages: list[tuple[list[str], EmailMessage]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        self.messages.append((list(envelope.rcpt_tos), message))
        return "250 OK"


@pytest.fixture
def smtp_server() -> Iterator[tuple[Collector, int]]:
    collector = Collector()
    port = free_port()
    controller = Controller(collector, hostname="127.0.0.1", port=port)
    controller.start()
    yield collector, port
    controller.stop()


def sms311(config: Path, *args: str, **kwargs: Any) -> Any:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "gateway", "--config", str(config), *args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs,
    )


def wait_for(predicate: Any, timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_texts_become_a_threaded_email_conversation(
    tmp_path: Path, smtp_server: tuple[Collector, int]
) -> None:
    collector, smtp_port = smtp_server
    web_port = free_port()
    config = write_settings(
        tmp_path, smtp_port=smtp_port, web_port=web_port,
        public_url=f"http://127.0.0.1:{web_port}",
    )
    upgrade = subprocess.run(
        [sys.executable, "-m", "gateway", "--config", str(config), "db", "upgrade"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert upgrade.returncode == 0, upgrade.stdout + upgrade.stderr
    process = sms311(config, "run")
    try:
        def healthy() -> bool:
            try:
                return requests.get(f"http://127.0.0.1:{web_port}/healthz", timeout=1).ok
            except requests.ConnectionError:
                return False

        wait_for(healthy, what="the gateway to answer /healthz")
        settings = load_settings(config, environ={})
        status, replies = send_text(settings, "613-555-0142", "Pothole on Bank St at Gladstone")
        assert status == 200 and replies and "city" in replies[0].lower()
        status, replies = send_text(settings, "613-555-0142", "Kanata")
        assert status == 200 and "Ottawa" in replies[0]
        status, replies = send_text(settings, "613-555-0142", "It is getting bigger")
        assert (status, replies) == (200, [])

        wait_for(lambda: len(collector.messages) >= 2, what="two emails")
        (rcpt1, first), (rcpt2, second) = collector.messages
        assert rcpt1 == rcpt2 == ["311@ottawa.example"]
        assert "Pothole on Bank St at Gladstone" in first.get_content()
        assert "It is getting bigger" in second.get_content()
        assert "(613) 555-0142" in first.get_content()
        assert first["Subject"] == second["Subject"]
        assert second["In-Reply-To"] == first["Message-ID"]
        assert first["Message-ID"] in second["References"]
        assert first["Reply-To"] == second["Reply-To"]
        local = first["Reply-To"].addresses[0].username
        assert local.startswith("reply+") and len(local) - len("reply+") >= 26  # >= 128 bits

        # The dialogue's answer ("Kanata") is not an email of its own.
        time.sleep(0.5)
        assert len(collector.messages) == 2
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            output, _ = process.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
    assert process.returncode == 0, output
    assert "613-555-0142" not in output and "6135550142" not in output  # masked in logs
    assert "Pothole" not in output  # no bodies at INFO
