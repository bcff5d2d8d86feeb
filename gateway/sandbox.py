"""The embedded sandbox behind `make run`: play resident without Twilio or a mail server.

`sms311 sandbox run` writes a settings file under `var/sandbox/` (once), upgrades
its SQLite database, starts a sandbox SMTP server that saves every email as a
`.eml` file per mailbox, and runs the whole gateway with the `sandbox` SMS
provider. `sms311 sandbox text NUMBER "…"` signs a Twilio-shaped webhook with the
sandbox's auth token, posts it, and prints what the gateway texted back.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import mimetypes
import secrets
import shutil
import smtplib
import textwrap
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import make_msgid, parseaddr
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import requests

from gateway.config import Settings, load_settings
from gateway.mail.sandbox import SandboxMailServer, mailbox_messages
from gateway.server import run_gateway, split_listen
from gateway.services import Gateway
from gateway.sms.sandbox import read_sent
from gateway.store import open_store
from gateway.store.console import Role
from gateway.web.signature import TwilioSignature

SANDBOX_SMTP_PORT = 8025
SANDBOX_SENDER = "31100"
MEDIA_PATH = "/sandbox/media/"


def sandbox_settings_text(
    map_path: Path, token: str, web_port: int = 8311, smtp_port: int = SANDBOX_SMTP_PORT
) -> str:
    """The sandbox's settings file."""
    return textwrap.dedent(
        f"""\
        # sms311 sandbox settings, written by `sms311 sandbox run`. Safe to edit or delete.
        database: sqlite:///gateway.db
        state_dir: .
        municipality_map: {map_path}
        public_url: http://127.0.0.1:{web_port}
        web: {{listen: "127.0.0.1:{web_port}"}}
        sms:
          provider: sandbox
          auth_token: {token}
          sender: "{SANDBOX_SENDER}"
        email:
          from_address: "311 Text <sms@gateway.example>"
          reply_address: "reply+{{token}}@gateway.example"
          smtp: {{host: 127.0.0.1, port: {smtp_port}, security: none}}
          ingress: {{listen: "127.0.0.1:{smtp_port + 1}"}}   # `sandbox reply` plays the agent
        fallback_mailbox: 311-unrouted@gateway.example
        """
    )


def ensure_sandbox(
    directory: Path, map_path: Path, web_port: int = 8311, smtp_port: int = SANDBOX_SMTP_PORT
) -> Path:
    """Create the sandbox folder and its settings file if missing; the settings path.

    The ports only matter the first time: afterwards the settings file is the truth."""
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "sms311.yaml"
    if not config.exists():
        token = secrets.token_hex(16)
        text = sandbox_settings_text(map_path.resolve(), token, web_port, smtp_port)
        config.write_text(text, encoding="utf-8")
    return config


SANDBOX_ACCOUNTS: tuple[tuple[str, str, Role, tuple[str, ...]], ...] = (
    ("agent@ottawa.example", "Ottawa Agent", "agent", ("ottawa",)),
    ("supervisor@ottawa.example", "Ottawa Supervisor", "supervisor", ("ottawa",)),
    ("admin@gateway.example", "Sandbox Admin", "admin", ()),
)


def ensure_sandbox_accounts(gateway: Gateway) -> list[tuple[str, str]]:
    """The sandbox's console accounts, created on first run with a random password kept in
    `state_dir/console-accounts.txt` (readable by the owner only): (email, password) pairs.
    Accounts whose municipality is not in the map are left out."""
    from gateway import accounts

    path = gateway.settings.state_dir / "console-accounts.txt"
    if path.exists():
        pairs = [line.split(" ", 1) for line in path.read_text("utf-8").splitlines() if line]
        with gateway.console.reading() as tx:
            kept = all(tx.user_by_email(email) is not None for email, _ in pairs)
        if pairs and kept:
            return [(email, password) for email, password in pairs]
        path.unlink()  # the database was made anew: so are the accounts
    directory = gateway.directory()
    password = accounts.new_one_time_password()
    created: list[tuple[str, str]] = []
    with gateway.console.transaction() as tx:
        for email, name, role, municipalities in SANDBOX_ACCOUNTS:
            if any(directory.get(m) is None for m in municipalities):
                continue
            existing = tx.user_by_email(email)
            if existing is not None:  # left from an earlier run: give it the new password
                tx.set_password(existing.id, accounts.hash_password(password),
                                must_change_password=False, at=datetime.now(UTC))
            else:
                tx.add_user(email, name, role, municipalities, accounts.hash_password(password),
                            must_change_password=False, at=datetime.now(UTC))
            created.append((email, password))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text("".join(f"{e} {p}\n" for e, p in created), encoding="utf-8")
    return created


async def serve_sandbox(settings: Settings, printer: Callable[[str], None] = print) -> None:
    """Run the sandbox mail server and the whole gateway until SIGTERM/SIGINT."""
    base = settings.state_dir
    mail_dir = base / "mail"
    store = open_store(settings.database)
    store.upgrade()
    store.close()
    mail = SandboxMailServer(mail_dir, host="127.0.0.1", port=settings.email.smtp.port)
    await mail.start()
    gateway = Gateway.from_settings(settings)
    console_accounts = await asyncio.to_thread(ensure_sandbox_accounts, gateway)
    signins = "\n".join(f"                  {e}  password: {p}" for e, p in console_accounts)

    def ready() -> None:
        host, port = split_listen(settings.web.listen)
        printer(
            textwrap.dedent(
                f"""
                sms311 sandbox is running.
                  web:       http://{host}:{port}  (health: /healthz, metrics: /metrics)
                  console:   http://{host}:{port}/console/  (staff web console) — sign in as
{signins}
                  emails:    {mail_dir}/<mailbox>/*.eml
                  SMS sent:  {base}/sms.jsonl
                  settings:  {settings.config_path}
                Play resident from another terminal:
                  .venv/bin/sms311 sandbox text 613-555-0123 "There is a pothole on Bank St"
                  .venv/bin/sms311 sandbox text 613-555-0123 "Ottawa"
                  .venv/bin/sms311 sandbox text 613-555-0123 "It is still there" --media photo.jpg
                Play the city's agent (answers the latest email in that mailbox):
                  .venv/bin/sms311 sandbox reply 311@ottawa.example "A crew is on the way."
                Stop with Ctrl-C.
                """
            )
        )

    try:
        await run_gateway(gateway, on_ready=ready)
    finally:
        await mail.stop()
        gateway.close()


def run_sandbox(
    directory: Path, map_path: Path, web_port: int = 8311, smtp_port: int = SANDBOX_SMTP_PORT
) -> int:
    config = ensure_sandbox(directory, map_path, web_port, smtp_port)
    settings = load_settings(config)
    asyncio.run(serve_sandbox(settings))
    return 0


def twilio_form(
    settings: Settings,
    number: str,
    body: str,
    *,
    media_urls: Sequence[tuple[str, str]] = (),
    from_city: str | None = None,
    from_state: str | None = None,
) -> dict[str, str]:
    """The form Twilio posts for an inbound message."""
    sid = "SM" + uuid.uuid4().hex
    form = {
        "MessageSid": sid,
        "SmsMessageSid": sid,
        "AccountSid": settings.sms.account_sid or "AC" + "0" * 32,
        "From": number,
        "To": settings.sms.sender or SANDBOX_SENDER,
        "Body": body,
        "NumMedia": str(len(media_urls)),
        "NumSegments": "1",
        "ApiVersion": "2010-04-01",
        "SmsStatus": "received",
        "FromCountry": "CA",
    }
    for i, (url, content_type) in enumerate(media_urls):
        form[f"MediaUrl{i}"] = url
        form[f"MediaContentType{i}"] = content_type
    if from_city:
        form["FromCity"] = from_city
    if from_state:
        form["FromState"] = from_state
    return form


def send_text(
    settings: Settings,
    number: str,
    body: str,
    *,
    media: Sequence[Path] = (),
    from_city: str | None = None,
    from_state: str | None = None,
) -> tuple[int, list[str]]:
    """Post one signed inbound text to the running gateway: (HTTP status, replies)."""
    media_urls = []
    media_dir = settings.state_dir / "media"
    for path in media:
        media_dir.mkdir(parents=True, exist_ok=True)
        name = f"{uuid.uuid4().hex}{path.suffix}"
        shutil.copyfile(path, media_dir / name)
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        media_urls.append((settings.public_url.rstrip("/") + MEDIA_PATH + name, content_type))
    form = twilio_form(
        settings, number, body, media_urls=media_urls, from_city=from_city, from_state=from_state
    )
    signature = TwilioSignature(settings.sms.auth_token, settings.public_url)
    host, port = split_listen(settings.web.listen)
    response = requests.post(
        f"http://{host}:{port}/sms/inbound",
        data=form,
        headers={"X-Twilio-Signature": signature.sign("/sms/inbound", "", form)},
        timeout=10,
    )
    replies: list[str] = []
    if response.status_code == 200 and response.content:
        root = ElementTree.fromstring(response.content)  # noqa: S314 - our own server's TwiML
        replies = [m.text or "" for m in root.iter("Message")]
    return response.status_code, replies


def reply_as_agent(
    settings: Settings,
    mailbox: str,
    body: str,
    *,
    sender: str | None = None,
    timeout: float = 10.0,
) -> list[dict[str, Any]]:
    """Answer the latest email in the sandbox `mailbox` as its city's agent would, through
    the SMTP reply ingress; returns the texts the gateway then sent (from sms.jsonl)."""
    if settings.email.ingress is None:
        raise ValueError("this sandbox has no email.ingress: delete its sms311.yaml to renew it")
    files = mailbox_messages(settings.state_dir / "mail", mailbox)
    if not files:
        raise ValueError(f"no email in the sandbox mailbox {mailbox} yet")
    original = email.message_from_bytes(files[-1].read_bytes(), policy=email.policy.default)
    sender = sender or "agent@" + mailbox.rpartition("@")[2]
    reply = EmailMessage()
    reply["From"] = sender
    reply["To"] = str(original["Reply-To"])
    reply["Subject"] = "Re: " + str(original["Subject"])
    reply["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2] or "sandbox.example")
    reply["In-Reply-To"] = str(original["Message-ID"])
    reply["References"] = str(original["Message-ID"])
    plain = original.get_body(("plain",))
    quoted = "\n".join(
        "> " + line for line in (plain.get_content() if plain is not None else "").splitlines()
    )
    reply.set_content(f"{body}\n\nOn {original['Date']}, {original['From']} wrote:\n{quoted}\n")
    before = len(read_sent(settings.state_dir))
    host, port = split_listen(settings.email.ingress.listen)
    recipient = parseaddr(str(original["Reply-To"]))[1]
    with smtplib.SMTP(host, port, timeout=timeout) as client:
        client.sendmail(sender, [recipient], bytes(reply))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sent = read_sent(settings.state_dir)[before:]
        if sent:
            return sent
        time.sleep(0.1)
    return []
