"""Outside text on the operator's terminal: every CLI print of it (`failed show` and `failed
list`, `outbox list`, `user list`, what `sandbox text` and `sandbox reply` show of what the
gateway texted) goes through `gateway.cli.output`, so an email's ESC[2J cannot clear the
screen, nor an OSC sequence retitle the window, nor a BEL ring."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from gateway.cli import main
from gateway.cli.output import printable, printable_bytes, printable_json
from gateway.store import open_store
from gateway.store.reply_mail import keep_failed_email
from tests.gateway_fixtures import REPO, write_settings

#: Anything a terminal acts on: C0 but tab, newline and CR; DEL; C1.
CONTROLS = re.compile(r"[\x00-\x08\x0b-\x0c\x0e-\x1f\x7f-\x9f]")

CLEAR, BEL = "\x1b[2J", "\x07"
NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def test_printable_drops_control_sequences_and_keeps_the_text() -> None:
    assert printable(f"Pothole{CLEAR} on Bank{BEL} St") == "Pothole on Bank St"
    assert printable("a\x1b]0;owned\x07b\x1b]8;;https://evil.example\x1b\\link\x1b]8;;\x1b\\") \
        == "ablink"  # OSC (window title, hyperlink), ended by BEL or ST
    assert printable("x\x1bcy\x1bPq#0;2;0;0;0\x1b\\z") == "xyz"  # a full reset, a DCS
    assert printable("ok\x9b2J\x9d0;t\x9c.") == "ok2J0;t."  # the 8-bit (C1) forms
    assert printable("line 1\r\nline 2\n\tend\rOVER\x7f\x00") == "line 1\r\nline 2\n\tendOVER"
    assert printable("Montréal — 🚧") == "Montréal — 🚧"
    assert printable("a\nb\tc\r\nd", one_line=True) == "a b c d"
    assert printable("\x1b]0;never ended\nnext line") == "\nnext line"  # not the rest
    assert printable_bytes(b"Subject: \x1b[2J\x07hi\r\n\xff\xc3\xa9") == "Subject: hi\r\n\\xffé"
    shown = printable_json({"name": f"Dana{CLEAR}\x9b2J é"})
    assert not CONTROLS.search(shown)
    assert json.loads(shown) == {"name": f"Dana{CLEAR}\x9b2J é"}  # the same document


@pytest.fixture
def config(tmp_path: Path) -> str:
    path = str(write_settings(tmp_path))
    assert main(["--config", path, "db", "upgrade"]) == 0
    return path


RAW = (
    b"From: agent@ottawa.example\r\n"
    b"Subject: Re: pothole \x1b[2J\x07now\r\n"
    b"\r\n"
    b"Fixed.\x1b]0;owned\x07\r\n"
)


def keep(tmp_path: Path, **fields: Any) -> int:
    store = open_store(f"sqlite:///{tmp_path / 'gateway.db'}")
    try:
        with store.transaction() as tx:
            return keep_failed_email(tx, "sha256:forged", RAW, fields.pop("reason"),
                                     {"kind": "smtp"}, now=NOW, **fields)
    finally:
        store.close()


def test_failed_show_and_list_strip_an_emails_control_sequences(
    tmp_path: Path, config: str, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    failed_id = keep(
        tmp_path, reason=f"sender not an agent ({CLEAR}{BEL})\nforged\tline",
        sender=f"x{CLEAR}{BEL}@evil.example", subject=f"Re: pothole {CLEAR}{BEL}now",
    )
    capsysbinary.readouterr()
    assert main(["--config", config, "failed", "show", str(failed_id)]) == 0
    out = capsysbinary.readouterr().out
    assert out == (b"From: agent@ottawa.example\r\nSubject: Re: pothole now\r\n\r\nFixed.\r\n")

    # --raw: the bytes as they arrived, for a file (refused on a terminal)
    assert main(["--config", config, "failed", "show", "--raw", str(failed_id)]) == 0
    assert capsysbinary.readouterr().out == RAW

    assert main(["--config", config, "failed", "list"]) == 0
    out = capsysbinary.readouterr().out.decode()
    assert not CONTROLS.search(out)
    (line,) = out.splitlines()  # the reason's line break forges no line, its tab no column
    assert "\tfrom=x@evil.example\t" in line
    assert line.endswith("\tsender not an agent () forged line")


def test_failed_show_raw_is_refused_on_a_terminal(
    tmp_path: Path, config: str, monkeypatch: pytest.MonkeyPatch,
    capsysbinary: pytest.CaptureFixture[bytes],
) -> None:
    failed_id = keep(tmp_path, reason="unroutable")
    monkeypatch.setattr("sys.stdout.isatty", lambda: True)
    assert main(["--config", config, "failed", "show", "--raw", str(failed_id)]) == 2
    out, err = capsysbinary.readouterr()
    assert out == b"" and b"redirect it to a file" in err


def test_outbox_list_strips_a_providers_error(
    tmp_path: Path, config: str, capsys: pytest.CaptureFixture[str]
) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'gateway.db'}")
    try:
        with store.transaction() as tx:
            tx.enqueue("sms", {"type": "reply", "to": "+16135550123", "body": "hi"})
        (item,) = store.list_outbox(None)
        store.mark_parked(item.id, f"HTTP 400: {CLEAR}bad{BEL}\r\nnumber")
    finally:
        store.close()
    capsys.readouterr()
    assert main(["--config", config, "outbox", "list", "--all"]) == 0
    out = capsys.readouterr().out
    assert not CONTROLS.search(out)
    (line,) = out.splitlines()
    assert line.endswith("\tHTTP 400: bad number")


def test_user_list_strips_a_name_given_in_the_console(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.console_fixtures import add_user
    from tests.gateway_fixtures import migrated_gateway

    gateway = migrated_gateway(tmp_path)
    try:
        add_user(gateway, "dana@ottawa.example", f"Dana{CLEAR}{BEL}\x9b2J Smith")
    finally:
        gateway.close()
    config = str(tmp_path / "sms311.yaml")
    capsys.readouterr()
    assert main(["--config", config, "user", "list"]) == 0
    out = capsys.readouterr().out
    assert not CONTROLS.search(out) and "Dana2J Smith" in out
    assert main(["--config", config, "user", "list", "--json"]) == 0
    out = capsys.readouterr().out
    assert not CONTROLS.search(out)
    assert json.loads(out)[0]["name"] == f"Dana{CLEAR}{BEL}\x9b2J Smith"  # stored as given


def test_sandbox_text_and_reply_strip_what_the_gateway_texted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from gateway.run import sandbox

    config = str(sandbox.ensure_sandbox(tmp_path / "sandbox", REPO / "municipality_map.yaml"))

    def send_text(*args: Any, **kwargs: Any) -> tuple[int, list[str]]:
        return 200, [f"Which town?{CLEAR}\n1. Ottawa{BEL}"]

    def reply_as_agent(*args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        return [{"to": f"+16135550123{CLEAR}", "body": f"Pay at https://evil.example{BEL}"}]

    monkeypatch.setattr(sandbox, "send_text", send_text)
    monkeypatch.setattr(sandbox, "reply_as_agent", reply_as_agent)
    capsys.readouterr()
    assert main(["--config", config, "sandbox", "text", "613-555-0123", "pothole"]) == 0
    assert capsys.readouterr().out == "<< Which town?\n   1. Ottawa\n"
    assert main(["--config", config, "sandbox", "reply", "311@ottawa.example", "ok"]) == 0
    assert capsys.readouterr().out == ">> to +16135550123: Pay at https://evil.example\n"
