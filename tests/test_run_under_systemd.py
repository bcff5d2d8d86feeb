"""`sms311 run` speaks systemd's notify protocol: READY=1 once it serves, WATCHDOG=1 while
it works (WatchdogSec), STOPPING=1 on SIGTERM and exit 0 within 10 s; SIGHUP reloads the
map and says so in STATUS=."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.gateway_fixtures import free_port, write_settings

pytestmark = pytest.mark.slow  # `sms311 run` as a subprocess


def receive(sock: socket.socket, wanted: str, timeout: float = 20.0) -> list[str]:
    """Datagrams until one contains `wanted`; all of them, in order."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            message = sock.recv(4096).decode()
        except TimeoutError:
            break
        seen.append(message)
        if wanted in message:
            return seen
    raise AssertionError(f"no {wanted!r} from the gateway; got {seen!r}")


def test_ready_watchdog_reload_and_stopping(tmp_path: Path) -> None:
    config = write_settings(tmp_path, smtp_port=free_port(), web_port=free_port())
    subprocess.run([sys.executable, "-m", "gateway", "--config", str(config), "db", "upgrade"],
                   check=True, capture_output=True, timeout=60)
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "--config", str(config), "run"],
            env={**os.environ, "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000"},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        try:
            assert any("READY=1" in m for m in receive(sock, "READY=1"))
            receive(sock, "WATCHDOG=1")  # fed every second (WatchdogSec=2)
            receive(sock, "WATCHDOG=1")
            process.send_signal(signal.SIGHUP)
            receive(sock, "municipality map reloaded")
            started = time.monotonic()
            process.send_signal(signal.SIGTERM)
            receive(sock, "STOPPING=1")
            output, _ = process.communicate(timeout=15)
            assert time.monotonic() - started < 10, "SIGTERM took more than 10 s"
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
    assert process.returncode == 0, output
