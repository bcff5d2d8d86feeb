"""`make run`'s sandbox as a new user meets it: `sms311 sandbox run`, then
`sms311 sandbox text` as a resident; the emails land as .eml files per mailbox."""

from __future__ import annotations

import email
import email.policy
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from gateway.mail.sandbox import mailbox_messages
from tests.gateway_fixtures import REPO, free_port


def sms311(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args], cwd=cwd, capture_output=True, text=True,
        timeout=60, check=False, env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def test_play_resident_in_the_sandbox(tmp_path: Path) -> None:
    web_port, smtp_port = free_port(), free_port()
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
        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.get(f"http://127.0.0.1:{web_port}/healthz", timeout=1).ok:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, "sandbox did not start"
            assert process.poll() is None, process.communicate()[0]
            time.sleep(0.1)

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
        [attachment] = list(messages[1].iter_attachments())  # type: ignore[attr-defined]
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


def test_sandbox_console_accounts_follow_the_database(tmp_path: Path) -> None:
    from gateway import accounts
    from gateway.sandbox import ensure_sandbox_accounts
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
