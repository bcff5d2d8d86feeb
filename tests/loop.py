"""The whole gateway as a subprocess (`sms311 run`) with real parts around it, for the
end-to-end tests.

    loop = Loop(tmp_path, dovecot)            # aiosmtpd mail server, FakeTwilio, Dovecot
    try:
        loop.text("613-555-0142", "Pothole")  # a signed webhook over HTTP (asserts 200)
        wait_for(lambda: loop.collector.messages, "the email")
        dovecot.append(agent_reply(email, "On our way."))
        wait_for(lambda: loop.api.messages, "the SMS")
    finally:
        output = loop.stop()                  # SIGTERM; the gateway's log

Around the gateway: `smtp` (a `MailServer`: aiosmtpd on a fixed port that can go down and
come back), `api` (a `FakeTwilio`), optionally a Dovecot (`email.imap`) and the SMTP reply
ingress. The gateway's output goes to `log_path` (read it with `output()`), so a chatty
gateway never blocks on a full pipe. `start()`, `kill()` (SIGKILL), `terminate()` (SIGTERM)
and `start()` again restart it on the same settings, database and ports; `sms311(...)` runs
another command (e.g. `outbox`) on the same settings.
"""

from __future__ import annotations

import email
import email.policy
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from typing import Any

import requests
from aiosmtpd.controller import Controller

from gateway.run.sandbox import send_text, twilio_form
from gateway.settings import Settings, load_settings
from gateway.sms.twilio.signature import TwilioSignature
from tests.dovecot import Dovecot
from tests.fake_twilio import FakeTwilio
from tests.gateway_fixtures import free_port, stamp_authenticated, write_settings

START_TIMEOUT = 30.0


def wait_for(predicate: Callable[[], Any], what: str, timeout: float = 20.0) -> None:
    """Wait until `predicate()` is true (polling); fail naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.05)


class Collector:
    """aiosmtpd handler: keeps every message it receives."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.envelopes: list[tuple[str, list[str]]] = []
        self._lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        with self._lock:
            self.messages.append(message)
            self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        return "250 OK"

    def bodies(self) -> list[str]:
        """The plain-text body of every message received, in order."""
        with self._lock:
            messages = list(self.messages)
        return [body_text(m) for m in messages]


def body_text(message: EmailMessage) -> str:
    part = message.get_body(("plain",))
    return str(part.get_content()) if part is not None else ""


class MailServer:
    """An aiosmtpd SMTP server on a fixed loopback port; `stop()` makes it refuse
    connections (the mail server is down), `start()` brings it back on the same port."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.collector = Collector()
        self._controller: Controller | None = None

    @property
    def running(self) -> bool:
        return self._controller is not None

    def start(self) -> MailServer:
        if self._controller is None:
            self._controller = Controller(self.collector, hostname="127.0.0.1", port=self.port)
            self._controller.start()
        return self

    def stop(self) -> None:
        controller, self._controller = self._controller, None
        if controller is not None:
            controller.stop()


def agent_reply(to: EmailMessage, body: str, sender: str = "jane@ottawa.example") -> bytes:
    """The agent's answer to the email `to`, as a mail client writes it (history quoted)."""
    reply = EmailMessage()
    reply["From"] = f"Jane Doe <{sender}>"
    reply["To"] = to["Reply-To"]
    reply["Subject"] = "Re: " + to["Subject"]
    reply["Message-ID"] = make_msgid(domain="ottawa.example")
    reply["In-Reply-To"] = to["Message-ID"]
    reply["References"] = to["Message-ID"]
    quoted = "\n".join("> " + line for line in body_text(to).splitlines())
    reply.set_content(f"{body}\n\nOn Sun, Nov 22, 2026, 311 Text wrote:\n{quoted}\n")
    return stamp_authenticated(bytes(reply))


class Loop:
    """A gateway (`sms311 run`) with its mail server, SMS API and (optionally) mailbox.

    `outbox` (e.g. {"max_backoff_seconds": 1}) and `max_per_second` go into the settings;
    `database` replaces the SQLite default; `mail_up=False` starts with the mail server
    down; `start=False` leaves the gateway to `start()`.
    """

    def __init__(
        self,
        tmp_path: Path,
        dovecot: Dovecot | None = None,
        ingress_port: int | None = None,
        *,
        database: str | None = None,
        outbox: dict[str, float] | None = None,
        max_per_second: float | None = None,
        mail_up: bool = True,
        start: bool = True,
    ) -> None:
        self.tmp_path = tmp_path
        self.smtp = MailServer()
        if mail_up:
            self.smtp.start()
        self.collector = self.smtp.collector
        self.api = FakeTwilio().start()
        self.dovecot = dovecot
        self.web_port = free_port()
        self.metrics_port = free_port()  # web.metrics_listen: the detailed /healthz
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = tmp_path / "gateway.log"
        sms = (
            "sms:\n  provider: twilio\n"
            f"  account_sid: {self.api.account_sid}\n  auth_token: {self.api.auth_token}\n"
            f'  sender: "31100"\n  api_base_url: {self.api.base_url}\n'
        )
        if max_per_second is not None:
            sms += f"  max_per_second: {max_per_second}\n"
        email_extra = ""
        if dovecot is not None:
            email_extra += (
                f"  imap: {{host: 127.0.0.1, port: {dovecot.port}, username: {dovecot.user},"
                " security: none}\n"
            )
        if ingress_port is not None:
            email_extra += f'  ingress: {{listen: "127.0.0.1:{ingress_port}"}}\n'
        extra = ""
        if outbox:
            extra += "outbox:\n" + "".join(f"  {k}: {v}\n" for k, v in outbox.items())
        self.config = write_settings(
            tmp_path, database=database, smtp_port=self.smtp.port, web_port=self.web_port,
            sms=sms, public_url=f"http://127.0.0.1:{self.web_port}", extra=extra,
        )
        text = self.config.read_text().replace("  smtp: {host", email_extra + "  smtp: {host")
        web = f'web: {{listen: "127.0.0.1:{self.web_port}"'
        assert web in text
        text = text.replace(web, web + f', metrics_listen: "127.0.0.1:{self.metrics_port}"')
        self.config.write_text(text)
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if dovecot is not None:
            self.env["GATEWAY_EMAIL__IMAP__PASSWORD"] = dovecot.password
        self.settings: Settings = load_settings(self.config, environ=self.env)
        upgrade = self.sms311("db", "upgrade")
        assert upgrade.returncode == 0, upgrade.stdout + upgrade.stderr
        if start:
            self.start()

    # -- the gateway process ----------------------------------------------------------------

    def start(self, *, healthy: bool = True) -> None:
        """Start `sms311 run`; return when /healthz says 200 (`healthy`) or, with
        healthy=False, as soon as the web half answers at all (e.g. the mail server is down)."""
        assert self.process is None or self.process.poll() is not None, "already running"
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gateway", "--config", str(self.config), "run"],
                stdout=log, stderr=subprocess.STDOUT, env=self.env,
            )
        process = self.process

        def up() -> bool:
            assert process.poll() is None, f"the gateway exited:\n{self.output()}"
            try:
                response = requests.get(f"http://127.0.0.1:{self.web_port}/healthz", timeout=2)
            except requests.RequestException:
                return False
            return response.ok or not healthy

        wait_for(up, "the gateway to start" + (" and be healthy" if healthy else ""),
                 START_TIMEOUT)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: no cleanup of any kind, as a crash or the OOM killer."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(15)

    def terminate(self) -> int:
        """SIGTERM (a clean stop); the exit status."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def health(self) -> tuple[int, dict[str, Any]]:
        """GET the detailed /healthz (on `web.metrics_listen`): (status, JSON). The
        connection is closed at once: an idle keep-alive connection would hold up the
        gateway's shutdown."""
        with requests.get(f"http://127.0.0.1:{self.metrics_port}/healthz", timeout=10,
                          headers={"Connection": "close"}) as response:
            return response.status_code, dict(response.json())

    def output(self) -> str:
        """Everything the gateway has logged so far (all its runs)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def sms311(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Another `sms311` command on the same settings (e.g. "outbox", "retry", "7")."""
        return subprocess.run(
            [sys.executable, "-m", "gateway", "--config", str(self.config), *args],
            capture_output=True, text=True, timeout=60, check=False, env=self.env,
        )

    def stop(self) -> str:
        """Stop the gateway (SIGTERM), the SMS API and the mail server; the gateway's log."""
        try:
            if self.process is not None:
                self.terminate()
        finally:
            self.api.stop()
            self.smtp.stop()
        return self.output()

    # -- a resident -----------------------------------------------------------------------

    def text(self, number: str, body: str) -> list[str]:
        """One signed inbound text; asserts the gateway answered 200; its SMS replies."""
        status, replies = send_text(self.settings, number, body)
        assert status == 200, status
        return replies

    def post_text(self, number: str, body: str, timeout: float = 10.0) -> int:
        """One signed inbound text, whatever happens: the HTTP status, 0 if no answer."""
        form = twilio_form(self.settings, number, body)
        signature = TwilioSignature(self.settings.sms.auth_token, self.settings.public_url)
        headers = {"X-Twilio-Signature": signature.sign("/sms/inbound", "", form),
                   "Connection": "close"}
        try:
            with requests.post(f"http://127.0.0.1:{self.web_port}/sms/inbound", data=form,
                               headers=headers, timeout=timeout) as response:
                return int(response.status_code)
        except requests.RequestException:
            return 0


def first_email(loop: Loop, number: str = "613-555-0142", body: str = "Pothole on Bank St",
                count: int = 1) -> EmailMessage:
    """A new resident of Ottawa texts `body` (the gateway asks for the city, the resident
    answers "Kanata"); the email that results (the `count`-th received)."""
    assert "city" in loop.text(number, body)[0].lower()
    assert "Ottawa" in loop.text(number, "Kanata")[0]
    wait_for(lambda: len(loop.collector.messages) >= count, "the resident's email")
    return loop.collector.messages[count - 1]
