"""Scale-out: two `sms311 run` processes on one PostgreSQL database behave as one.

Texts are spread over both instances (a dialogue started on one continues on the other),
one instance is killed mid-stream, and still every text is emailed and every reply texted
(at most the one message in flight when the instance died twice), the IMAP mailbox is read
by one instance at a time, and together they keep to `sms.max_per_second`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from gateway.run.sandbox import send_text
from gateway.settings import load_settings
from tests.dovecot import Dovecot
from tests.fake_twilio import FakeTwilio
from tests.gateway_fixtures import free_port, write_settings
from tests.loop import MailServer, agent_reply, body_text, wait_for
from tests.postgres import throwaway_database

pytestmark = pytest.mark.slow

RATE = 4


class Instance:
    """One `sms311 run` process with its own settings file (its own web port)."""

    def __init__(self, folder: Path, database: str, smtp: int, api: FakeTwilio,
                 dovecot: Dovecot) -> None:
        self.web_port = free_port()
        sms = (
            "sms:\n  provider: twilio\n"
            f"  account_sid: {api.account_sid}\n  auth_token: {api.auth_token}\n"
            f'  sender: "31100"\n  api_base_url: {api.base_url}\n  max_per_second: {RATE}\n'
        )
        self.config = write_settings(
            folder, database=database, smtp_port=smtp, web_port=self.web_port, sms=sms,
            public_url=f"http://127.0.0.1:{self.web_port}",
            extra="outbox: {takeover_seconds: 3, max_backoff_seconds: 1}\n",
        )
        imap = (f"  imap: {{host: 127.0.0.1, port: {dovecot.port}, username: {dovecot.user},"
                " security: none, idle_restart_seconds: 10}\n")
        self.config.write_text(
            self.config.read_text().replace("  smtp: {host", imap + "  smtp: {host")
        )
        self.env = {**os.environ, "GATEWAY_EMAIL__IMAP__PASSWORD": dovecot.password,
                    "PYTHONUNBUFFERED": "1"}
        self.settings = load_settings(self.config, environ=self.env)
        self.log = folder / "gateway.log"
        self.process: subprocess.Popen[bytes] | None = None

    def sms311(self, *args: str) -> None:
        subprocess.run([sys.executable, "-m", "gateway", "--config", str(self.config), *args],
                       env=self.env, check=True, capture_output=True, timeout=60)

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gateway", "--config", str(self.config), "run"],
                env=self.env, stdout=log, stderr=subprocess.STDOUT,
            )

        def healthy() -> bool:
            try:
                return requests.get(f"http://127.0.0.1:{self.web_port}/healthz", timeout=2).ok
            except requests.ConnectionError:
                return False

        wait_for(healthy, "an instance to start")

    def text(self, number: str, body: str) -> list[str]:
        status, replies = send_text(self.settings, number, body)
        assert status == 200, status
        return replies

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> int:
        if self.process is None or self.process.poll() is not None:
            return 0
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return -9


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[Instance, Instance, MailServer, FakeTwilio, Dovecot]]:
    with throwaway_database("sms311_scale") as database, FakeTwilio() as api, \
            Dovecot(tmp_path / "imap") as dovecot:
        mail = MailServer().start()
        a = Instance(tmp_path / "a", database, mail.port, api, dovecot)
        b = Instance(tmp_path / "b", database, mail.port, api, dovecot)
        a.sms311("db", "upgrade")
        a.start()
        b.start()
        try:
            yield a, b, mail, api, dovecot
        finally:
            codes = (a.stop(), b.stop())
            mail.stop()
            assert codes[0] == 0, a.log.read_text()


def test_two_instances_behave_as_one(
    cluster: tuple[Instance, Instance, MailServer, FakeTwilio, Dovecot],
) -> None:
    a, b, mail, api, dovecot = cluster
    # A dialogue started on one instance continues on the other.
    assert "city" in a.text("613-555-0100", "Streetlight out on Elgin")[0].lower()
    assert "Ottawa" in b.text("613-555-0100", "Ottawa")[0]
    wait_for(lambda: len(mail.collector.messages) == 1, "the first email")

    # Texts spread over both; one instance is killed in the middle of the stream.
    sent: list[str] = []
    for n in range(24):
        instance = a if n % 2 else b
        if n == 12:
            b.kill()
        if instance is b and n >= 12:
            instance = a
        body = f"Report number {n} about the streetlight"
        number = f"613-555-{n % 4 + 200:04d}"
        if n < 4:
            instance.text(number, "Ottawa")  # each of four residents names the city first
        instance.text(number, body)
        sent.append(body)

    def emailed() -> Counter[str]:
        return Counter(b for body in mail.collector.bodies() for b in sent if b in body)

    wait_for(lambda: set(emailed()) == set(sent), "every text emailed", timeout=60)
    counts = emailed()
    assert max(counts.values()) <= 2
    assert sum(1 for c in counts.values() if c == 2) <= 1  # at most the one in flight

    # Replies: one listener at a time, each reply texted once; pacing across the cluster.
    b.start()  # back: two instances again, one of them holds the mailbox
    threads = [m for m in mail.collector.messages if "Report number" in body_text(m)]
    firsts = {str(m["Reply-To"]): m for m in threads}
    for n, to_city in enumerate(list(firsts.values()) * 3):
        dovecot.append(agent_reply(to_city, f"Answer {n}: a crew is on the way."))
    expected = {f"Answer {n}: a crew is on the way." for n in range(len(firsts) * 3)}
    wait_for(lambda: {m["Body"] for m in api.messages} >= expected, "every reply texted",
             timeout=60)
    bodies = Counter(m["Body"] for m in api.messages)
    assert all(bodies[e] == 1 for e in expected), bodies
    assert api.max_in_window() <= RATE
