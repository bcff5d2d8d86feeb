"""`make run`'s sandbox as a new user meets it: `sms311 sandbox run`, then
`sms311 sandbox text` as a resident; the emails land as .eml files per mailbox. The README's
"Play resident" commands print exactly its sample lines; same-name towns get the numbered
choice; bad input gets one line, never a traceback."""

from __future__ import annotations

import email
import email.policy
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

import pytest
import requests

from gateway.mail.sandbox import mailbox_messages
from gateway.run.sandbox import ensure_sandbox, sandbox_banner
from gateway.sandbox_data import SAMPLE_PICTURE, SANDBOX_PLACES
from gateway.settings import load_settings
from gateway.store import open_store
from tests.gateway_fixtures import REPO, free_port

pytestmark = pytest.mark.slow  # `sms311 sandbox run` subprocesses


def wait_until_healthy(web_port: int, process: subprocess.Popen[str]) -> None:
    """Until the sandbox's /healthz answers 200 (30 s at most; the process must not exit)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            if requests.get(f"http://127.0.0.1:{web_port}/healthz", timeout=1).ok:
                return
        except requests.ConnectionError:
            pass
        assert time.monotonic() < deadline, "sandbox did not start"
        assert process.poll() is None, process.communicate()[0]
        time.sleep(0.1)


@contextmanager
def held(port: int) -> Iterator[None]:
    """`port` taken meanwhile, as on a busy machine (the sandbox used to put its reply ingress
    on the SMTP port + 1, whatever held it)."""
    with socket.socket() as holder:
        try:
            holder.bind(("127.0.0.1", port))
            holder.listen()
        except OSError:  # someone else holds it already: as busy
            pass
        yield


def sms311(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args], cwd=cwd, capture_output=True, text=True,
        timeout=60, check=False, env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def test_play_resident_in_the_sandbox(tmp_path: Path) -> None:
    web_port, smtp_port = free_port(), free_port()
    with held(smtp_port + 1):
        play_resident(tmp_path, web_port, smtp_port)


def play_resident(tmp_path: Path, web_port: int, smtp_port: int) -> None:
    sandbox = tmp_path / "sandbox"
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "sandbox", "run", "--dir", str(sandbox),
         "--map", str(REPO / "municipality_map.yaml"), "--port", str(web_port),
         "--smtp-port", str(smtp_port)],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    config = str(sandbox / "sms311.yaml")
    try:
        wait_until_healthy(web_port, process)

        first = sms311("--config", config, "sandbox", "text", "613-555-0123",
                       "There is a pothole on Bank St", cwd=tmp_path)
        assert first.returncode == 0, first.stderr
        assert "<< " in first.stdout and "city" in first.stdout.lower()
        answer = sms311("--config", config, "sandbox", "text", "613-555-0123", "otawa",
                        cwd=tmp_path)
        assert "Ottawa" in answer.stdout
        picture = tmp_path / "photo.jpg"
        picture.write_bytes(b"\xff\xd8\xff\xe0fake-jpeg")
        third = sms311("--config", config, "sandbox", "text", "613-555-0123",
                       "It is getting bigger", "--media", str(picture), cwd=tmp_path)
        assert "no reply" in third.stdout

        deadline = time.monotonic() + 15
        while len(mailbox_messages(sandbox / "mail", "311@ottawa.example")) < 2:
            assert time.monotonic() < deadline, "emails did not land in the sandbox mailbox"
            time.sleep(0.1)
        files = sorted(mailbox_messages(sandbox / "mail", "311@ottawa.example"))
        messages = [email.message_from_bytes(f.read_bytes(), policy=email.policy.default)
                    for f in files]
        bodies = [m.get_body(("plain",)).get_content() for m in messages]  # type: ignore[union-attr]
        assert "There is a pothole on Bank St" in bodies[0]
        assert "It is getting bigger" in bodies[1]
        [attachment] = list(messages[1].iter_attachments())
        assert attachment.get_content() == b"\xff\xd8\xff\xe0fake-jpeg"
        assert messages[1]["In-Reply-To"] == messages[0]["Message-ID"]

        # Play the agent: the reply goes through the SMTP ingress and comes out as an SMS.
        reply = sms311("--config", config, "sandbox", "reply", "311@ottawa.example",
                       "A crew is on the way.", cwd=tmp_path)
        assert reply.returncode == 0, reply.stderr
        assert ">> to +16135550123: A crew is on the way." in reply.stdout

        # The staff console: the printed accounts sign in and see the conversation.
        accounts = (sandbox / "console-accounts.txt").read_text().split()
        assert accounts[0] == "agent@ottawa.example"
        assert oct((sandbox / "console-accounts.txt").stat().st_mode & 0o777) == "0o600"
        session = requests.Session()
        base = f"http://127.0.0.1:{web_port}/console"
        token = re.search(r'name="csrf_token" value="([^"]+)"',
                          session.get(f"{base}/login", timeout=5).text)
        assert token
        signed_in = session.post(f"{base}/login", timeout=10, data={
            "email": accounts[0], "password": accounts[1], "csrf_token": token.group(1)})
        assert signed_in.status_code == 200 and "(613) 555-0123" in signed_in.text
    finally:
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=15)
    assert process.returncode == 0, output
    assert "sandbox text" in output  # it told the user what to try
    assert f"http://127.0.0.1:{web_port}/console/" in output
    assert f"agent@ottawa.example  password: {accounts[1]}" in output
    # …how to run any other command against it, and how to start over.
    assert "sms311 --config sandbox/sms311.yaml outbox" in output
    assert "Start over: stop it (Ctrl-C), remove sandbox/, and start it again." in output


def test_sandbox_console_accounts_follow_the_database(tmp_path: Path) -> None:
    from gateway.rules import accounts
    from gateway.run.sandbox import ensure_sandbox_accounts
    from tests.gateway_fixtures import migrated_gateway

    map_text = (REPO / "municipality_map.yaml").read_text()
    gateway = migrated_gateway(tmp_path / "a", municipality_map=map_text)
    try:
        first = ensure_sandbox_accounts(gateway)
        assert [e for e, _ in first] == ["agent@ottawa.example", "supervisor@ottawa.example",
                                         "admin@gateway.example"]
        assert ensure_sandbox_accounts(gateway) == first  # kept between runs
        with gateway.console.reading() as tx:
            agent = tx.user_by_email("agent@ottawa.example")
        assert agent is not None and accounts.verify_password(agent.password_hash, first[0][1])
        (gateway.settings.state_dir / "console-accounts.txt").unlink()
        second = ensure_sandbox_accounts(gateway)  # file lost: new password, same accounts
        assert second[0][1] != first[0][1]
        with gateway.console.reading() as tx:
            agent = tx.user_by_email("agent@ottawa.example")
        assert agent is not None and accounts.verify_password(agent.password_hash, second[0][1])
    finally:
        gateway.close()
    # A new database with the old file beside it: the accounts are made again.
    other = migrated_gateway(tmp_path / "b", municipality_map=map_text)
    try:
        state = other.settings.state_dir
        state.mkdir(parents=True, exist_ok=True)
        (state / "console-accounts.txt").write_text("agent@ottawa.example stale-password\n")
        made = ensure_sandbox_accounts(other)
        assert made[0][1] != "stale-password"
        with other.console.reading() as tx:
            assert tx.user_by_email("admin@gateway.example") is not None
    finally:
        other.close()


# --------------------------------------------------------------------------------------------
# A running sandbox shared by the tests below (each plays its own phone numbers)


@dataclass
class Sandbox:
    folder: Path
    config: Path
    web_port: int
    process: subprocess.Popen[str]

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`sms311 --config <the sandbox's settings> ARGS`, from the sandbox's parent folder."""
        return sms311("--config", str(self.config), *args, cwd=self.folder.parent)

    def mailbox(self, address: str) -> list[EmailMessage]:
        messages = []
        for path in mailbox_messages(self.folder / "mail", address):
            message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
            assert isinstance(message, EmailMessage)
            messages.append(message)
        return messages

    def settle(self) -> None:
        """Wait until the worker has sent everything queued (as a person typing would)."""
        store = open_store(f"sqlite:///{self.folder / 'gateway.db'}")
        try:
            deadline = time.monotonic() + 15
            while store.outbox_stats()["depth"]:
                assert time.monotonic() < deadline, "the sandbox's outbox did not drain"
                time.sleep(0.05)
        finally:
            store.close()


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    folder = tmp_path_factory.mktemp("shared") / "sandbox"
    web_port, smtp_port = free_port(), free_port()
    with held(smtp_port + 1):
        yield from running_sandbox(folder, web_port, smtp_port)


def running_sandbox(folder: Path, web_port: int, smtp_port: int) -> Iterator[Sandbox]:
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "sandbox", "run", "--dir", str(folder),
         "--map", str(REPO / "municipality_map.yaml"), "--port", str(web_port),
         "--smtp-port", str(smtp_port)],
        cwd=folder.parent, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        wait_until_healthy(web_port, process)
        yield Sandbox(folder, folder / "sms311.yaml", web_port, process)
    finally:
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=15)
    assert process.returncode == 0, output


def readme_sessions() -> list[tuple[str, list[str]]]:
    """The commands of the README's "Play resident" section, each with the sample output
    lines under it (the `# ` comment lines, without the `# `)."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Play resident", 1)[1].split("\n## ", 1)[0]
    sessions: list[tuple[str, list[str]]] = []
    for block in re.findall(r"```sh\n(.*?)```", section, flags=re.DOTALL):
        for line in block.splitlines():
            if line.startswith("# "):
                assert sessions, f"a sample line before any command: {line!r}"
                sessions[-1][1].append(line[2:])
            elif line.strip():
                sessions.append((line, []))
    return sessions


def test_the_readme_play_resident_commands_print_its_sample_lines(sandbox: Sandbox) -> None:
    sessions = readme_sessions()
    assert len(sessions) >= 8 and sum(bool(sample) for _, sample in sessions) >= 6
    for line, sample in sessions:
        sandbox.settle()
        words = shlex.split(line, comments=True)
        if words[0] == "ls":
            [folder] = words[1:]
            found = list((sandbox.folder / Path(folder).relative_to("var/sandbox")).glob("*"))
            assert found, f"{line}: nothing there"
            continue
        assert words[:2] == [".venv/bin/sms311", "sandbox"], line
        result = sandbox.run(*words[1:])
        assert result.returncode == 0, (line, result.stderr)
        if sample:
            assert result.stdout.splitlines() == sample, line
    # What the README says of it: the held text, then the text with the sample picture,
    # two emails of one thread; the Victoria one went to Victoria, BC.
    sandbox.settle()
    first, second, *_ = sandbox.mailbox("311@ottawa.example")
    assert second["In-Reply-To"] == first["Message-ID"]
    [picture] = list(second.iter_attachments())
    assert picture.get_content_type() == "image/jpeg"
    assert picture.get_content() == SAMPLE_PICTURE.read_bytes()
    assert len(sandbox.mailbox("311@victoria-bc.example")) == 1


def test_victoria_gets_the_numbered_choice_in_the_sandbox(sandbox: Sandbox) -> None:
    def say(number: str, text: str) -> list[str]:
        result = sandbox.run("sandbox", "text", number, text)
        assert result.returncode == 0, result.stderr
        return result.stdout.splitlines()

    assert "Which city" in say("902-555-0150", "The ditch on Main St is flooded")[0]
    choice = say("902-555-0150", "victoria")
    assert choice[0] == "<< Which one? Reply with its number:"
    assert [line.strip() for line in choice[1:5]] == [
        "1 Victoria, NL", "2 Victoria, PE", "3 Victoria, MB", "4 Victoria, BC",
    ]
    assert say("902-555-0150", "1") == [
        "<< Thanks! Your messages now go to Victoria, NL. Text CITY to change it."
    ]
    sandbox.settle()
    [sent] = sandbox.mailbox("311@victoria-nl.example")
    body = sent.get_body(("plain",))
    assert body is not None and "The ditch on Main St is flooded" in body.get_content()
    # A census name of one province is a plain match.
    say("306-555-0151", "The lights at 8th St are out")
    assert say("306-555-0151", "saskatoon") == [
        "<< Thanks! Your messages now go to Saskatoon, SK. Text CITY to change it."
    ]


def test_montreal_keeps_its_accent_in_the_email_subject(sandbox: Sandbox) -> None:
    for text in ("Il y a un nid-de-poule rue Sherbrooke", "Montréal"):
        result = sandbox.run("sandbox", "text", "514-555-0152", text)
        assert result.returncode == 0, result.stderr
    assert "Montréal, QC" in result.stdout
    sandbox.settle()
    [path] = mailbox_messages(sandbox.folder / "mail", "311@montreal.example")
    raw = path.read_bytes()
    subject_line = re.search(rb"^Subject:.*(?:\r?\n[ \t].*)*", raw, re.MULTILINE)
    assert subject_line and subject_line.group(0).isascii()  # RFC 2047 encoded-words
    [received] = sandbox.mailbox("311@montreal.example")
    assert "Montréal" in received["Subject"]
    assert received["Subject"].startswith("Texto 311 de (514) 555-0152 — Montréal")
    body = received.get_body(("plain",))
    assert body is not None and "(Montréal)" in body.get_content()


def test_sandbox_commands_refuse_bad_input_in_one_line(sandbox: Sandbox, tmp_path: Path) -> None:
    def refused(code: int, *args: str) -> str:
        result = sandbox.run("sandbox", *args)
        assert result.returncode == code, (args, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr and result.stdout == ""
        assert len(result.stderr.splitlines()) == 1, result.stderr
        return result.stderr

    number = "613-555-0153"
    assert "photo.jpg: no such file" in refused(2, "text", number, "Look", "--media", "photo.jpg")
    assert "is a directory" in refused(2, "text", number, "Look", "--media", str(tmp_path))
    assert "'abc' is not a phone number" in refused(2, "text", "abc", "Hello")
    assert "no email in the sandbox mailbox 311@nowhere.example yet" in refused(
        2, "reply", "311@nowhere.example", "Hello"
    )
    # Nothing was sent: the number's first text is still its first.
    first = sandbox.run("sandbox", "text", number, "Pothole on Elgin St")
    assert "Which city" in first.stdout, first.stdout


def test_an_empty_text_is_said_to_be_ignored(sandbox: Sandbox) -> None:
    """The gateway drops a text with no words and no picture (nothing stored, emailed or
    answered): `sandbox text` says so, not that it was emailed."""
    number = "613-555-0154"
    for blank in ("", "   "):
        result = sandbox.run("sandbox", "text", number, blank)
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines() == [
            "(no reply: the gateway ignores an empty text; nothing was emailed)"
        ]
    # Nothing was kept: the number's first real text is asked for its city, and only it is
    # emailed once the city is known.
    assert "Which city" in sandbox.run("sandbox", "text", number, "Graffiti on Elgin St").stdout
    answered = sandbox.run("sandbox", "text", number, "otawa")
    assert "Ottawa" in answered.stdout, answered.stdout
    done = sandbox.run("sandbox", "text", number, "Still there")
    assert done.stdout.splitlines() == ["(no reply: the text was emailed)"]


def test_sandbox_commands_say_when_the_sandbox_is_not_running(tmp_path: Path) -> None:
    folder = tmp_path / "sandbox"
    config = ensure_sandbox(folder, REPO / "municipality_map.yaml", free_port(), free_port())
    mailbox = folder / "mail" / "311@ottawa.example"
    mailbox.mkdir(parents=True)
    (mailbox / "1.eml").write_bytes(
        b"From: a@b.example\r\nReply-To: reply+x@gateway.example\r\nSubject: s\r\n"
        b"Message-ID: <1@b.example>\r\n\r\nhello\r\n"
    )
    for args in (["text", "613-555-0123", "Hello"], ["reply", "311@ottawa.example", "Hi"]):
        result = sms311("--config", str(config), "sandbox", *args, cwd=tmp_path)
        assert result.returncode == 1, result.stderr
        assert "Traceback" not in result.stderr
        assert "is `make run` (sms311 sandbox run) running?" in result.stderr
    missing = sms311("--config", str(tmp_path / "none.yaml"), "sandbox", "text", "613-555-0123",
                     "Hello", cwd=tmp_path)
    assert missing.returncode == 2
    assert "no such file: start the sandbox first (`make run`)" in missing.stderr


def test_the_sandbox_data_is_whole() -> None:
    # (That it ships with the package: tests/test_packaging.py builds it.)
    picture = SAMPLE_PICTURE.read_bytes()
    assert picture[:3] == b"\xff\xd8\xff" and picture[-2:] == b"\xff\xd9"  # a whole JPEG
    assert 1_000 < len(picture) < 20_000
    rows = SANDBOX_PLACES.read_text(encoding="utf-8").splitlines()
    assert rows[0].startswith("csd_code,name,name_fr,") and 15 <= len(rows) - 1 <= 60


def test_each_listener_has_its_own_port_kept_in_the_settings(tmp_path: Path) -> None:
    folder = tmp_path / "sandbox"
    with held(8026):  # the old smtp + 1, as on a busy machine
        config = ensure_sandbox(folder, REPO / "municipality_map.yaml", 8311, 8025)
    settings = load_settings(config)
    assert settings.email.ingress is not None
    ingress = int(settings.email.ingress.listen.rpartition(":")[2])
    assert ingress not in (8311, 8025, 8026)
    with socket.socket() as probe:  # it was free when chosen
        probe.bind(("127.0.0.1", ingress))
    # A re-run (other ports asked for: the settings file is the truth) keeps every port, so
    # `sandbox reply` and the other commands find the listeners where the sandbox put them.
    text = config.read_text()
    assert ensure_sandbox(folder, REPO / "municipality_map.yaml", 9311, 9025, 9026) == config
    assert config.read_text() == text
    assert f'ingress: {{listen: "127.0.0.1:{ingress}"}}' in text
    # A sandbox set up before (ingress on the SMTP port + 1) keeps working as it was.
    config.write_text(text.replace(f"127.0.0.1:{ingress}", "127.0.0.1:8026"))
    ensure_sandbox(folder, REPO / "municipality_map.yaml")
    reloaded = load_settings(config).email.ingress
    assert reloaded is not None and reloaded.listen == "127.0.0.1:8026"
    # Asked for: that port.
    other = ensure_sandbox(tmp_path / "other", REPO / "municipality_map.yaml", 8311, 8025, 8099)
    chosen = load_settings(other).email.ingress
    assert chosen is not None and chosen.listen == "127.0.0.1:8099"


def test_the_banner_says_how_to_use_and_reset_the_sandbox(tmp_path: Path) -> None:
    """`make run`'s banner, as seen in the repository: `.venv/bin/sms311`, the settings file
    to name for any other command, and `make sandbox-reset` to start over."""
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "sms311").write_text("")
    (tmp_path / "Makefile").write_text("")
    config = ensure_sandbox(tmp_path / "var" / "sandbox", REPO / "municipality_map.yaml")
    banner = sandbox_banner(load_settings(config), [("agent@ottawa.example", "pw")], tmp_path)
    lines = [line.strip() for line in banner.splitlines()]
    assert 'web:       http://127.0.0.1:8311  (the console; health: /healthz, metrics: ' \
        "/metrics)" in lines
    assert ".venv/bin/sms311 sandbox text 613-555-0123 \"otawa\"" in lines
    assert ".venv/bin/sms311 --config var/sandbox/sms311.yaml outbox" in lines
    assert ".venv/bin/sms311 --config var/sandbox/sms311.yaml user list" in lines
    assert ("Start over: stop it (Ctrl-C), `make sandbox-reset` (removes var/sandbox/, keeps "
            ".venv), then `make run`.") in lines
    assert "agent@ottawa.example  password: pw" in lines


def test_the_sandbox_map_is_written_anew_at_every_start(tmp_path: Path) -> None:
    source = tmp_path / "municipality_map.yaml"
    shutil.copyfile(REPO / "municipality_map.yaml", source)
    folder = tmp_path / "sandbox"
    ensure_sandbox(folder, source)
    written = (folder / "municipality_map.yaml").read_text(encoding="utf-8")
    assert "id: victoria-bc" in written and "id: ottawa" in written
    ids = re.findall(r"^- id: (\S+)$", written, flags=re.MULTILINE)
    assert ids.count("burlington") == 1  # the curated entry stands for the census one
    assert "victoria-nl" in ids and len(ids) == len(set(ids))
    source.write_text(source.read_text().replace("name: Ottawa\n", "name: Bytown\n"))
    config = ensure_sandbox(folder, source)
    assert "name: Bytown" in (folder / "municipality_map.yaml").read_text(encoding="utf-8")
    assert "municipality_map: municipality_map.yaml\n" in config.read_text()
    # A sandbox made before it had its own map (its settings name the source map) moves to it.
    config.write_text(config.read_text().replace(
        "municipality_map: municipality_map.yaml", f"municipality_map: {source.resolve()}"))
    ensure_sandbox(folder, source)
    assert "municipality_map: municipality_map.yaml\n" in config.read_text()
    elsewhere = "municipality_map: /srv/maps/mine.yaml\n"  # one the user chose stays
    config.write_text(config.read_text().replace("municipality_map: municipality_map.yaml\n",
                                                 elsewhere))
    ensure_sandbox(folder, source)
    assert elsewhere in config.read_text()
