"""The embedded sandbox behind `make run`: play resident without Twilio or a mail server.

`sms311 sandbox run` writes a settings file under `var/sandbox/` (once) and the
sandbox's municipality map (every run: the given map merged with a short list of places,
so same-name towns get the numbered choice), upgrades its SQLite database, starts a
sandbox SMTP server that saves every email as a `.eml` file per mailbox, and runs the
whole gateway with the `sandbox` SMS provider. `sms311 sandbox text NUMBER "…"` signs a
Twilio-shaped webhook with the sandbox's auth token, posts it, and prints what the
gateway texted back. Bad input and a gateway that does not answer are `SandboxError`s
(a message and an exit code), never a traceback.

What the sandbox keeps is for its owner only (residents' numbers and texts, the auth token,
console passwords): its folders are made 0700 and its settings file, database and logs
0600 (`private_dir`, `private_file`), whatever the umask; `ensure_sandbox` and
`prepare_sandbox_files` also tighten those of a sandbox made by an older version.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import mimetypes
import os
import secrets
import shlex
import smtplib
import socket
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
from sqlalchemy.engine import make_url

from gateway.app import Gateway
from gateway.mail.sandbox import SandboxMailServer, mailbox_messages
from gateway.rules.phone import NotAPhoneNumber, normalise_number
from gateway.run.server import run_gateway, split_listen
from gateway.sandbox_data import SAMPLE_MEDIA, SAMPLE_PICTURE, SANDBOX_DIR, SANDBOX_PLACES
from gateway.settings import Settings, load_municipality_map, load_settings
from gateway.settings.directory_build import dump_map, merge_with_census, read_census
from gateway.sms.sandbox import SENT_FILE, read_sent
from gateway.sms.twilio.signature import TwilioSignature
from gateway.store import open_store
from gateway.store.console import Role

SANDBOX_SMTP_PORT = 8025
SANDBOX_SENDER = "31100"
MEDIA_PATH = "/sandbox/media/"
SANDBOX_MAP = "municipality_map.yaml"  # in the sandbox folder, written by every `sandbox run`
NOT_RUNNING_HINT = "is `make run` (sms311 sandbox run) running?"


class SandboxError(Exception):
    """A sandbox command cannot go on; nothing was sent. `code` is the exit code:
    1 the gateway did not answer or refused, 2 a bad argument or setting."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on or connects from now (the kernel's choice)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


# The mail server the sandbox plays: `sandbox reply` stamps the Authentication-Results it
# would add (dmarc=pass), and the sandbox's settings trust it.
SANDBOX_AUTHSERV_ID = "sandbox.mx"


def sandbox_settings_text(
    map_path: Path,
    token: str,
    web_port: int = 8311,
    smtp_port: int = SANDBOX_SMTP_PORT,
    ingress_port: int | None = None,
) -> str:
    """The sandbox's settings file. Each listener has its own port, kept in the file: the
    web half, the sandbox mail server (the gateway's SMTP) and the gateway's reply ingress
    (`sandbox reply` plays the agent through it; default: a free port chosen now)."""
    if ingress_port is None:
        ingress_port = free_port()
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
          ingress: {{listen: "127.0.0.1:{ingress_port}"}}   # `sandbox reply` plays the agent
          trusted_authserv_ids: [{SANDBOX_AUTHSERV_ID}]   # what `sandbox reply` stamps
        fallback_mailbox: 311-unrouted@gateway.example
        """
    )


_MAP_HEADER = """\
# The sandbox's municipality map, written anew by every `sms311 sandbox run`: the entries
# of {source} (edit that file, not this one), then the {count} places of
# gateway/sandbox_data/{slice} (hand-written; same-name towns of several provinces)
# that none of them stands for, with example mailboxes.
"""


def private_dir(path: Path) -> Path:
    """Make the folder `path` (and any missing parent) readable by its owner only (0700);
    an existing one is tightened to 0700."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for folder in reversed(missing):
        folder.mkdir(mode=0o700, exist_ok=True)
    path.chmod(0o700)  # (mkdir's mode is masked by the umask; an old folder kept its own)
    return path


def private_file(path: Path) -> Path:
    """Make the file `path` (created empty when missing) readable by its owner only (0600),
    before anything is written to it."""
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    return path


def write_sandbox_map(directory: Path, map_path: Path) -> Path:
    """Write `directory/municipality_map.yaml`: the map at `map_path` merged with the
    shipped list of same-name places (`gateway/sandbox_data/sandbox_places.csv`), as
    `sms311 directory build --merge` merges with the whole census, so that `Victoria` gets
    a numbered choice.
    Raises `ConfigError` when `map_path` is not a valid map."""
    report = merge_with_census(load_municipality_map(map_path), read_census(SANDBOX_PLACES))
    header = _MAP_HEADER.format(
        source=map_path.resolve(), count=report.from_census, slice=SANDBOX_PLACES.name
    )
    target = directory / SANDBOX_MAP
    temporary = target.with_name(f".{target.name}.tmp")
    temporary.write_text(header + dump_map(report.municipalities), encoding="utf-8")
    temporary.replace(target)
    return target


def ensure_sandbox(
    directory: Path,
    map_path: Path,
    web_port: int = 8311,
    smtp_port: int = SANDBOX_SMTP_PORT,
    ingress_port: int | None = None,
) -> Path:
    """Create the sandbox folder and its settings file if missing, and write the sandbox's
    municipality map (see `write_sandbox_map`); the settings path.

    The ports only matter the first time (`ingress_port` None: a free port, chosen now):
    afterwards the settings file is the truth, so later commands find every listener.
    The folder is made 0700 and the settings file (it holds the auth token) 0600."""
    private_dir(directory)
    write_sandbox_map(directory, map_path)
    config = directory / "sms311.yaml"
    if not config.exists():
        token = secrets.token_hex(16)
        text = sandbox_settings_text(Path(SANDBOX_MAP), token, web_port, smtp_port, ingress_port)
        private_file(config).write_text(text, encoding="utf-8")
        return config
    private_file(config)
    # Settings written before the sandbox had its own map name `map_path` itself: move them
    # to the sandbox's map (a map the user chose by editing the line is left alone).
    text = config.read_text(encoding="utf-8")
    old_line = f"municipality_map: {map_path.resolve()}\n"
    if old_line in text:
        config.write_text(text.replace(old_line, f"municipality_map: {SANDBOX_MAP}\n"), "utf-8")
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
    from gateway.rules import accounts

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
    private_file(path)
    path.write_text("".join(f"{e} {p}\n" for e, p in created), encoding="utf-8")
    return created


def _shown(path: Path, here: Path) -> str:
    """`path` as a user types it in `here`: relative when inside it, else whole."""
    try:
        return path.relative_to(here).as_posix()
    except ValueError:
        return str(path)


def sandbox_banner(
    settings: Settings, console_accounts: Sequence[tuple[str, str]], here: Path | None = None
) -> str:
    """What `sandbox run` prints once the gateway answers: where to look, how to play
    resident and agent, how to run any other command against this sandbox (its settings
    file), and how to start over. Commands are written as typed in `here` (the current
    folder): `.venv/bin/sms311` when that exists, `--config` unless it is the default
    sandbox, `make sandbox-reset` for `make run`'s own sandbox."""
    here = (here or Path.cwd()).absolute()
    host, port = split_listen(settings.web.listen)
    base = settings.state_dir
    folder = _shown(base, here)
    config = _shown(settings.config_path, here)
    program = ".venv/bin/sms311" if (here / ".venv" / "bin" / "sms311").exists() else "sms311"
    with_config = f"{program} --config {shlex.quote(config)}"
    default = Path(os.path.abspath(here / SANDBOX_DIR / "sms311.yaml"))
    is_default = Path(os.path.abspath(settings.config_path)) == default
    play = f"{program} sandbox" if is_default else f"{with_config} sandbox"
    if is_default and (here / "Makefile").exists():
        reset = (f"stop it (Ctrl-C), `make sandbox-reset` (removes {folder}/, keeps .venv), "
                 "then `make run`")
    else:
        reset = f"stop it (Ctrl-C), remove {folder}/, and start it again"
    signins = "".join(f"\n               {e}  password: {p}" for e, p in console_accounts)
    return textwrap.dedent(
        f"""
        sms311 sandbox is running.
          web:       http://{host}:{port}  (the console; health: /healthz, metrics: /metrics)
          console:   http://{host}:{port}/console/  (staff web console), sign in as:SIGNINS
          emails:    {base / "mail"}/<mailbox>/*.eml
          SMS sent:  {base}/sms.jsonl
          settings:  {settings.config_path}
        Play resident from another terminal:
          {play} text 613-555-0123 "There is a pothole on Bank St"
          {play} text 613-555-0123 "otawa"
          {play} text 613-555-0123 "It is getting bigger" --media sample
        Play the city's agent (answers the latest email in that mailbox):
          {play} reply 311@ottawa.example "A crew is on the way."
        Other commands work on this sandbox when given its settings file, e.g.:
          {with_config} outbox
          {with_config} user list
        Start over: {reset}.
        Stop with Ctrl-C.
        """
    ).replace("SIGNINS", signins)


def prepare_sandbox_files(settings: Settings) -> None:
    """Before the sandbox starts: its folders (state, mail, media) 0700, its SQLite
    database (and the SQLite journals, which take the database's mode) and its SMS log
    0600, then the database's schema made or upgraded."""
    base = settings.state_dir
    if base.resolve() == settings.config_path.parent.resolve():  # the sandbox's own folder
        private_dir(base)
    else:  # a folder the settings name: made 0700 when missing, never chmod-ed
        base.mkdir(mode=0o700, parents=True, exist_ok=True)
    for sub in ("mail", "media"):
        private_dir(base / sub)
    private_file(base / SENT_FILE)
    url = make_url(settings.database)
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        database = Path(url.database)  # (its folder, perhaps not the sandbox's, left alone)
        database.parent.mkdir(parents=True, exist_ok=True)
        private_file(database)
        for journal in ("-wal", "-shm", "-journal"):
            if database.with_name(database.name + journal).exists():
                private_file(database.with_name(database.name + journal))
    store = open_store(settings.database)
    try:
        store.upgrade()
    finally:
        store.close()


async def serve_sandbox(settings: Settings, printer: Callable[[str], None] = print) -> None:
    """Run the sandbox mail server and the whole gateway until SIGTERM/SIGINT."""
    base = settings.state_dir
    mail_dir = base / "mail"
    await asyncio.to_thread(prepare_sandbox_files, settings)
    mail = SandboxMailServer(mail_dir, host="127.0.0.1", port=settings.email.smtp.port)
    await mail.start()
    gateway = Gateway.from_settings(settings)
    console_accounts = await asyncio.to_thread(ensure_sandbox_accounts, gateway)

    def ready() -> None:
        printer(sandbox_banner(settings, console_accounts))

    try:
        await run_gateway(gateway, on_ready=ready)
    finally:
        await mail.stop()
        gateway.close()


def run_sandbox(
    directory: Path,
    map_path: Path,
    web_port: int = 8311,
    smtp_port: int = SANDBOX_SMTP_PORT,
    ingress_port: int | None = None,
) -> int:
    config = ensure_sandbox(directory, map_path, web_port, smtp_port, ingress_port)
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
    """Post one signed inbound text to the running gateway: (HTTP status, replies).

    `media` files are served to the gateway from `state_dir/media` the way Twilio serves
    MMS media. Raises `SandboxError` before anything is sent when `number` is not a phone
    number or a media file cannot be read (code 2), and when the gateway does not answer
    (code 1)."""
    try:
        normalise_number(number, settings.sms.default_region)
    except NotAPhoneNumber:
        raise SandboxError(2, f"{number!r} is not a phone number (like 613-555-0123)") from None
    pictures = [(path, read_media(path)) for path in media]
    media_urls = []
    media_dir = settings.state_dir / "media"
    for path, data in pictures:
        private_dir(media_dir)
        name = f"{uuid.uuid4().hex}{path.suffix}"
        private_file(media_dir / name).write_bytes(data)
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        media_urls.append((settings.public_url.rstrip("/") + MEDIA_PATH + name, content_type))
    form = twilio_form(
        settings, number, body, media_urls=media_urls, from_city=from_city, from_state=from_state
    )
    signature = TwilioSignature(settings.sms.auth_token, settings.public_url)
    host, port = split_listen(settings.web.listen)
    try:
        response = requests.post(
            f"http://{host}:{port}/sms/inbound",
            data=form,
            headers={"X-Twilio-Signature": signature.sign("/sms/inbound", "", form)},
            timeout=10,
        )
    except requests.Timeout:
        raise SandboxError(
            1, f"the gateway at http://{host}:{port} did not answer within 10 s"
        ) from None
    except requests.ConnectionError:
        raise SandboxError(
            1, f"nothing answers at http://{host}:{port}: {NOT_RUNNING_HINT}"
        ) from None
    replies: list[str] = []
    if response.status_code == 200 and response.content:
        root = ElementTree.fromstring(response.content)  # noqa: S314 - our own server's TwiML
        replies = [m.text or "" for m in root.iter("Message")]
    return response.status_code, replies


def media_file(value: str) -> Path:
    """The file `--media VALUE` names: `SAMPLE_MEDIA` ("sample") is the sandbox's sample
    picture, unless a file of that name exists."""
    path = Path(value)
    if value == SAMPLE_MEDIA and not path.exists():
        return SAMPLE_PICTURE
    return path


def read_media(path: Path) -> bytes:
    """The bytes of a file to attach; `SandboxError` (code 2) saying why it cannot be read."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise SandboxError(2, f"{path}: no such file") from None
    except IsADirectoryError:
        raise SandboxError(2, f"{path}: is a directory, not a file") from None
    except OSError as exc:
        raise SandboxError(2, f"{path}: cannot read it ({exc.strerror or exc})") from None


def reply_as_agent(
    settings: Settings,
    mailbox: str,
    body: str,
    *,
    sender: str | None = None,
    timeout: float = 10.0,
) -> list[dict[str, Any]]:
    """Answer the latest email in the sandbox `mailbox` as its city's agent would, through
    the SMTP reply ingress; returns the texts the gateway then sent (from sms.jsonl).

    Raises `SandboxError` when the mailbox has no email yet or the settings have no
    ingress (code 2), and when the ingress does not answer or refuses the reply (code 1)."""
    if settings.email.ingress is None:
        raise SandboxError(
            2, "this sandbox has no email.ingress: delete its sms311.yaml to renew it"
        )
    mail = settings.state_dir / "mail"
    files = mailbox_messages(mail, mailbox)
    if not files:
        have = sorted(p.parent.name for p in mail.glob("*/*.eml")) if mail.is_dir() else []
        hint = f" (mailboxes with email: {', '.join(dict.fromkeys(have))})" if have else ""
        raise SandboxError(2, f"no email in the sandbox mailbox {mailbox} yet{hint}")
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
    # What the city's trusted mail server adds on top of a reply it authenticated.
    trusted = settings.email.trusted_authserv_ids
    if settings.email.sender_authentication == "required" and not trusted:
        raise SandboxError(
            2, "this sandbox trusts no email.trusted_authserv_ids: delete its sms311.yaml to "
            "renew it"
        )
    if trusted:
        stamp = f"{trusted[0]}; dmarc=pass header.from={sender.rpartition('@')[2]}"
        reply["Authentication-Results"] = stamp
    before = len(read_sent(settings.state_dir))
    host, port = split_listen(settings.email.ingress.listen)
    recipient = parseaddr(str(original["Reply-To"]))[1]
    try:
        with smtplib.SMTP(host, port, timeout=timeout) as client:
            client.sendmail(sender, [recipient], bytes(reply))
    except smtplib.SMTPException as exc:
        raise SandboxError(1, f"the gateway's reply ingress refused the reply: {exc}") from None
    except OSError:
        raise SandboxError(
            1, f"nothing answers at {host}:{port} (the reply ingress): {NOT_RUNNING_HINT}"
        ) from None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sent = read_sent(settings.state_dir)[before:]
        if sent:
            return sent
        time.sleep(0.1)
    return []
