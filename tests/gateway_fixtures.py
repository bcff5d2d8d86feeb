"""Shared test helpers: settings files, a signed-webhook conversation driver, a free port.

Plain functions and classes, imported explicitly; the fixtures built on them (`gateway`,
`api`, …) are in conftest.py.
"""

from __future__ import annotations

import re
import socket
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

from gateway.run.sandbox import twilio_form
from gateway.settings import Settings, load_settings
from gateway.sms.twilio.signature import TwilioSignature

REPO = Path(__file__).resolve().parents[1]
AUTH_TOKEN = "test-auth-token-0123456789abcdef"
PUBLIC_URL = "https://sms.example.ca"

TEST_MAP = textwrap.dedent(
    """\
    municipalities:
      - id: ottawa
        name: Ottawa
        province: ON
        aliases: [Nepean, Kanata, Orléans]
        postal_prefixes: [K1, K2]
        mailbox: 311@ottawa.example
        agents: ["@ottawa.example"]
        languages: [en, fr]
      - id: montreal
        name: Montréal
        province: QC
        aliases: [Verdun]
        postal_prefixes: [H2, H3]
        mailbox: 311@montreal.example
        agents: ["@montreal.example"]
        languages: [fr, en]
      - id: victoria-bc
        name: Victoria
        province: BC
        postal_prefixes: [V8W]
        mailbox: 311@victoria-bc.example
        agents: ["@victoria-bc.example"]
      - id: victoria-pe
        name: Victoria
        province: PE
        postal_prefixes: [C0A]
        mailbox: 311@victoria-pe.example
        agents: ["@victoria-pe.example"]
    """
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# The mail server the tests' settings trust: replies built by the tests carry its
# Authentication-Results (`authenticated(...)`), so they exercise the real sender check.
TEST_AUTHSERV_ID = "test.mx"


def stamp_authenticated(raw: bytes, domain: str | None = None) -> bytes:
    """`raw` with the Authentication-Results a trusted server (`TEST_AUTHSERV_ID`) adds
    on top: dmarc=pass for `domain` (default: the From address's domain)."""
    if domain is None:
        head = raw.split(b"\n\n", 1)[0].replace(b"\r\n", b"\n")
        found = re.search(rb"(?im)^from:[^\n]*@([A-Za-z0-9.-]+)", head)
        domain = found[1].decode("ascii").lower() if found else "invalid"
    line = f"Authentication-Results: {TEST_AUTHSERV_ID}; dmarc=pass header.from={domain}\r\n"
    newline = b"\r\n" if b"\r\n" in raw[:2000] else b"\n"
    return line.encode("ascii").replace(b"\r\n", newline) + raw


def write_settings(
    folder: Path,
    *,
    database: str | None = None,
    smtp_port: int = 2525,
    web_port: int = 8311,
    public_url: str = PUBLIC_URL,
    fallback: bool = True,
    municipality_map: str = TEST_MAP,
    extra: str = "",
    sms: str | None = None,
) -> Path:
    """Write a settings file (and its map) into `folder`; returns the settings path."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "municipality_map.yaml").write_text(municipality_map, encoding="utf-8")
    database = database or f"sqlite:///{folder / 'gateway.db'}"
    text = textwrap.dedent(
        f"""\
        database: {database}
        municipality_map: municipality_map.yaml
        public_url: {public_url}
        web: {{listen: "127.0.0.1:{web_port}"}}
        SMS_SECTION
        email:
          from_address: "311 Text <sms@gateway.example>"
          reply_address: "reply+{{token}}@gateway.example"
          smtp: {{host: 127.0.0.1, port: {smtp_port}, security: none}}
          trusted_authserv_ids: [{TEST_AUTHSERV_ID}]
        """
    )
    sms_section = sms or (
        f"sms:\n  provider: sandbox\n  auth_token: {AUTH_TOKEN}\n  sender: \"31100\"\n"
    )
    text = text.replace("SMS_SECTION\n", sms_section)
    if fallback:
        text += "fallback_mailbox: 311-unrouted@gateway.example\n"
    path = folder / "sms311.yaml"
    path.write_text(text + extra, encoding="utf-8")
    return path


def settings_in(folder: Path, **kwargs: Any) -> Settings:
    return load_settings(write_settings(folder, **kwargs), environ={})


def twiml_messages(body: bytes) -> list[str]:
    if not body:
        return []
    root = ElementTree.fromstring(body)
    return [m.text or "" for m in root.iter("Message")]


class Clock:
    """A clock the test moves: `clock()` is the time, `clock.advance(seconds)` moves it."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class Resident:
    """A salmon-style driver over the real webhook: `say(number, text, expect=…)`.

    Every request is signed with the twilio library's RequestValidator, as Twilio would.
    After each inbound text the worker's share runs too (`InboundProcessor.process_once`:
    the texts the webhook queued become emails), as in `sms311 run`; set `worker = False`
    to look at the queue as the webhook left it.
    """

    def __init__(self, client: Any, settings: Settings) -> None:
        self.client = client
        self.settings = settings
        self.signature = TwilioSignature(settings.sms.auth_token, settings.public_url)
        self.last_form: dict[str, str] = {}
        self.worker = True

    def post(self, form: dict[str, str], path: str = "/sms/inbound") -> Any:
        signature = self.signature.sign(path, "", form)
        response = self.client.post(
            path, data=form, headers={"X-Twilio-Signature": signature}
        )
        if self.worker and path == "/sms/inbound" and response.status_code == 200:
            self.process_queue()
        return response

    def process_queue(self) -> int:
        """Run the worker's share once: the queued texts become emails; how many. A store
        that is down leaves them queued (0), as the worker would, for the next round."""
        from gateway.run.inbound import InboundProcessor
        from gateway.store import StoreUnavailable
        from gateway.web.extension import _KEY

        gateway = self.client.application.extensions[_KEY]
        try:
            return InboundProcessor(gateway).process_once()
        except StoreUnavailable:
            return 0

    def say(
        self,
        number: str,
        text: str,
        expect: str | None = None,
        *,
        silent: bool = False,
        **extra: Any,
    ) -> list[str]:
        form = twilio_form(self.settings, number, text, **extra)
        self.last_form = form
        response = self.post(form)
        assert response.status_code == 200, (response.status_code, response.data)
        replies = twiml_messages(response.data)
        for reply in replies:
            assert len(reply) <= 160, f"reply longer than 160 characters: {reply!r}"
        if expect is not None:
            assert any(re.search(expect, r, re.IGNORECASE) for r in replies), (
                f"after {text!r} expected a reply matching {expect!r}, got {replies!r}"
            )
        if silent:
            assert replies == [], f"after {text!r} expected no reply, got {replies!r}"
        return replies


def migrated_gateway(folder: Path, **kwargs: Any) -> Any:
    """A `Gateway` over a freshly migrated SQLite store in `folder` (settings as
    `write_settings` takes them). Close it with `.close()`."""
    from gateway.app import Gateway
    from gateway.store import open_store

    settings = settings_in(folder, **kwargs)
    store = open_store(settings.database)
    store.upgrade()
    store.close()
    return Gateway.from_settings(settings)
