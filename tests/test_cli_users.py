"""`sms311 user …`: the console's accounts from the command line, against a real SQLite file."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pyotp
import pytest

from gateway.cli import main
from gateway.rules.accounts import verify_password, verify_totp
from gateway.settings import load_settings
from gateway.store import open_store
from gateway.store.console import ConsoleStore, Scope, User
from gateway.store.sql import head_revision
from tests.gateway_fixtures import write_settings

PASSWORD = "correct horse battery staple"


@pytest.fixture
def config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    path = str(write_settings(tmp_path))
    assert main(["--config", path, "db", "upgrade"]) == 0
    capsys.readouterr()
    return path


@pytest.fixture
def stdin(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """Standard input for --password-stdin: write to it before calling main."""
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stdin", stream)
    yield stream


def feed(stream: io.StringIO, text: str) -> None:
    stream.seek(0)
    stream.truncate()
    stream.write(text)
    stream.seek(0)


def user_of(config: str, email: str) -> User | None:
    store = open_store(load_settings(Path(config), {}).database)
    try:
        with ConsoleStore(store).reading() as tx:
            return tx.user_by_email(email)
    finally:
        store.close()


def stored(config: str, email: str) -> User:
    user = user_of(config, email)
    assert user is not None, email
    return user


def run(config: str, *argv: str) -> int:
    return main(["--config", config, "user", *argv])


def add(config: str, stream: io.StringIO, email: str, *extra: str, role: str = "agent") -> None:
    feed(stream, PASSWORD + "\n")
    args = ["add", email, "--name", email.split("@")[0].title(), "--role", role,
            "--password-stdin", *extra]
    if role != "admin" and "--municipality" not in extra:
        args += ["--municipality", "ottawa"]
    assert run(config, *args) == 0


# ------------------------------------------------------------------------------------------
# add


def test_add_with_a_password_on_stdin(
    config: str, stdin: io.StringIO, capsys: pytest.CaptureFixture[str]
) -> None:
    feed(stdin, PASSWORD + "\n")
    code = run(config, "add", "Dana@Ottawa.Example", "--name", "Dana Scully", "--role",
               "supervisor", "--municipality", "ottawa", "--municipality", "montreal",
               "--password-stdin", "--language", "fr")
    out = capsys.readouterr().out
    assert code == 0
    assert "dana@ottawa.example" in out
    assert PASSWORD not in out
    user = stored(config, "dana@ottawa.example")
    assert (user.email, user.name, user.role) == ("dana@ottawa.example", "Dana Scully",
                                                  "supervisor")
    assert user.municipalities == ("montreal", "ottawa")
    assert user.language == "fr"
    assert not user.disabled and user.totp_secret is None
    assert user.must_change_password is False
    assert verify_password(user.password_hash, PASSWORD)
    assert not verify_password(user.password_hash, PASSWORD + "\n")


def test_add_with_a_one_time_password(config: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = run(config, "add", "fox@ottawa.example", "--name", "Fox", "--role", "agent",
               "--municipality", "ottawa,montreal")
    out = capsys.readouterr().out
    assert code == 0
    found = re.findall(r"one-time password: (\S+)", out)
    assert len(found) == 1, out
    user = stored(config, "fox@ottawa.example")
    assert verify_password(user.password_hash, found[0])
    assert user.must_change_password is True
    assert user.municipalities == ("montreal", "ottawa")
    assert user.language is None


def test_add_an_admin_needs_no_municipality(
    config: str, stdin: io.StringIO, capsys: pytest.CaptureFixture[str]
) -> None:
    add(config, stdin, "root@city.example", role="admin")
    user = stored(config, "root@city.example")
    assert user.role == "admin" and user.municipalities == ()
    assert "every municipality" in capsys.readouterr().out


@pytest.mark.parametrize("role", ["agent", "supervisor"])
def test_add_an_agent_needs_a_municipality(
    config: str, role: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(config, "add", "a@ottawa.example", "--name", "A", "--role", role) == 2
    assert "at least one --municipality" in capsys.readouterr().err
    assert user_of(config, "a@ottawa.example") is None


def test_add_a_duplicate_is_refused(
    config: str, stdin: io.StringIO, capsys: pytest.CaptureFixture[str]
) -> None:
    add(config, stdin, "dana@ottawa.example")
    capsys.readouterr()
    feed(stdin, "another good password\n")
    code = run(config, "add", "DANA@ottawa.example", "--name", "Other", "--role", "admin",
               "--password-stdin")
    err = capsys.readouterr().err
    assert code == 1
    assert "already an account for dana@ottawa.example" in err
    assert stored(config, "dana@ottawa.example").name == "Dana"  # unchanged


@pytest.mark.parametrize(
    ("given", "suggestion"),
    [("otawa", "ottawa"), ("Montréal", "montreal"), ("Verdun", "montreal"), ("atlantis", None)],
)
def test_add_with_an_unknown_municipality(
    config: str, given: str, suggestion: str | None, capsys: pytest.CaptureFixture[str]
) -> None:
    code = run(config, "add", "a@ottawa.example", "--name", "A", "--role", "agent",
               "--municipality", "ottawa", "--municipality", given)
    err = capsys.readouterr().err
    assert code == 2
    assert f"unknown municipality {given!r}" in err
    if suggestion:
        assert f"did you mean {suggestion!r}?" in err
    else:
        assert "did you mean" not in err
    assert "Traceback" not in err
    assert user_of(config, "a@ottawa.example") is None


@pytest.mark.parametrize(
    ("password", "reason"),
    [("short\n", "at least 12 characters"), ("a@ottawa.example\n", "email address"),
     ("", "no password"), ("one line\nand another\n", "one line"),
     ("superman1234\n", "it is too easy to guess: This is similar to a commonly used password"),
     ("jennifer1985\n", "it is too easy to guess: Common names and surnames")],
)
def test_add_refuses_a_weak_or_missing_password(
    config: str, stdin: io.StringIO, password: str, reason: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    feed(stdin, password)
    code = run(config, "add", "a@ottawa.example", "--name", "A", "--role", "admin",
               "--password-stdin")
    assert code == 2
    assert reason in capsys.readouterr().err
    assert user_of(config, "a@ottawa.example") is None


def test_add_a_bad_email(config: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(config, "add", "not-an-address", "--name", "A", "--role", "admin") == 2
    assert "'not-an-address' is not a valid email address" in capsys.readouterr().err


def test_add_takes_a_crlf_line(config: str, stdin: io.StringIO) -> None:
    feed(stdin, PASSWORD + "\r\n")
    assert run(config, "add", "a@ottawa.example", "--name", "A", "--role", "admin",
               "--password-stdin") == 0
    assert verify_password(stored(config, "a@ottawa.example").password_hash, PASSWORD)


def test_commands_need_an_upgraded_database(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = str(write_settings(tmp_path / "fresh"))
    assert run(config, "list") == 1
    assert f"the database is empty (no schema yet; this version needs {head_revision()}): run " \
        f"`sms311 --config {config} db upgrade`" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------
# list


def test_list_table_and_json(
    config: str, stdin: io.StringIO, capsys: pytest.CaptureFixture[str]
) -> None:
    add(config, stdin, "zoe@ottawa.example", "--municipality", "ottawa", "--municipality",
        "montreal")
    add(config, stdin, "root@city.example", role="admin")
    assert run(config, "totp", "root@city.example", "--enable") == 0
    assert run(config, "disable", "zoe@ottawa.example") == 0
    capsys.readouterr()

    assert run(config, "list") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["EMAIL", "NAME", "ROLE", "MUNICIPALITIES", "DISABLED", "TOTP"]
    assert lines[1].split() == ["root@city.example", "Root", "admin", "(all)", "no", "on"]
    assert lines[2].split() == ["zoe@ottawa.example", "Zoe", "agent", "montreal,ottawa", "yes",
                                "off"]
    assert lines[1].index("admin") == lines[0].index("ROLE")  # aligned columns

    assert run(config, "list", "--json") == 0
    out = capsys.readouterr().out
    listed = json.loads(out)
    assert [u["email"] for u in listed] == ["root@city.example", "zoe@ottawa.example"]
    assert listed[1] == {
        "email": "zoe@ottawa.example", "name": "Zoe", "role": "agent",
        "municipalities": ["montreal", "ottawa"], "disabled": True, "totp": False,
        "must_change_password": False, "language": None,
        "created_at": listed[1]["created_at"], "updated_at": listed[1]["updated_at"],
    }
    assert listed[0]["totp"] is True
    assert datetime.fromisoformat(listed[1]["created_at"]).tzinfo is not None
    assert "argon2" not in out and stored(config, "root@city.example").totp_secret not in out


def test_list_when_there_is_nobody(config: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(config, "list", "--json") == 0
    assert json.loads(capsys.readouterr().out) == []
    assert run(config, "list") == 0
    captured = capsys.readouterr()
    assert captured.out.split() == ["EMAIL", "NAME", "ROLE", "MUNICIPALITIES", "DISABLED", "TOTP"]
    assert "sms311 user add" in captured.err


# ------------------------------------------------------------------------------------------
# disable / enable / passwd


def test_disable_and_enable(
    config: str, stdin: io.StringIO, capsys: pytest.CaptureFixture[str]
) -> None:
    add(config, stdin, "dana@ottawa.example")
    assert run(config, "disable", "Dana@Ottawa.example") == 0
    assert stored(config, "dana@ottawa.example").disabled is True
    assert run(config, "disable", "dana@ottawa.example") == 0  # already: fine
    assert "already disabled" in capsys.readouterr().out
    assert run(config, "enable", "dana@ottawa.example") == 0
    assert stored(config, "dana@ottawa.example").disabled is False


@pytest.mark.parametrize(
    "argv",
    [["disable", "nobody@x.example"], ["enable", "nobody@x.example"],
     ["passwd", "nobody@x.example"], ["totp", "nobody@x.example", "--enable"],
     ["set", "nobody@x.example", "--role", "admin"]],
)
def test_unknown_account_is_refused(
    config: str, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(config, *argv) == 1
    assert "no account for nobody@x.example" in capsys.readouterr().err


def test_passwd_from_stdin_and_one_time(
    config: str, stdin: io.StringIO, capsys: pytest.CaptureFixture[str]
) -> None:
    add(config, stdin, "dana@ottawa.example")
    capsys.readouterr()
    assert run(config, "passwd", "dana@ottawa.example") == 0
    (one_time,) = re.findall(r"one-time password: (\S+)", capsys.readouterr().out)
    user = stored(config, "dana@ottawa.example")
    assert verify_password(user.password_hash, one_time)
    assert not verify_password(user.password_hash, PASSWORD)
    assert user.must_change_password is True

    feed(stdin, "a brand new passphrase\n")
    assert run(config, "passwd", "dana@ottawa.example", "--password-stdin") == 0
    assert "one-time" not in capsys.readouterr().out
    user = stored(config, "dana@ottawa.example")
    assert verify_password(user.password_hash, "a brand new passphrase")
    assert user.must_change_password is False

    feed(stdin, "tiny\n")
    assert run(config, "passwd", "dana@ottawa.example", "--password-stdin") == 2
    assert "at least 12 characters" in capsys.readouterr().err
    feed(stdin, "P@ssw0rd12345\n")  # zxcvbn: a common password, dressed up
    assert run(config, "passwd", "dana@ottawa.example", "--password-stdin") == 2
    assert "too easy to guess: This is similar to a commonly used password" in (
        capsys.readouterr().err)
    user = stored(config, "dana@ottawa.example")
    assert verify_password(user.password_hash, "a brand new passphrase")


# ------------------------------------------------------------------------------------------
# totp


def test_totp_enable_prints_a_working_uri_then_disable(
    config: str, stdin: io.StringIO, capsys: pytest.CaptureFixture[str]
) -> None:
    add(config, stdin, "dana@ottawa.example")
    capsys.readouterr()
    assert run(config, "totp", "dana@ottawa.example", "--enable") == 0
    out = capsys.readouterr().out
    (uri,) = re.findall(r"otpauth://\S+", out)
    (secret,) = re.findall(r"^secret: (\S+)$", out, re.MULTILINE)
    totp = pyotp.parse_uri(uri)
    assert isinstance(totp, pyotp.TOTP)
    assert totp.secret == secret
    assert totp.name == "dana@ottawa.example" and totp.issuer == "sms311"
    user = stored(config, "dana@ottawa.example")
    assert user.totp_secret == secret
    now = datetime.now(UTC)
    assert verify_totp(user.totp_secret, totp.at(int(now.timestamp())), now)

    assert run(config, "totp", "dana@ottawa.example", "--enable") == 0  # a new secret
    assert "replaces the previous authenticator" in capsys.readouterr().out
    assert stored(config, "dana@ottawa.example").totp_secret not in (None, secret)

    assert run(config, "totp", "dana@ottawa.example", "--disable") == 0
    assert stored(config, "dana@ottawa.example").totp_secret is None
    assert run(config, "totp", "dana@ottawa.example", "--disable") == 0
    assert "already off" in capsys.readouterr().out


def test_totp_needs_enable_or_disable(config: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        run(config, "totp", "dana@ottawa.example")
    assert exited.value.code == 2
    assert "--enable" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------
# set


def test_set_role_municipalities_language(
    config: str, stdin: io.StringIO, capsys: pytest.CaptureFixture[str]
) -> None:
    add(config, stdin, "dana@ottawa.example")
    capsys.readouterr()
    assert run(config, "set", "dana@ottawa.example", "--role", "supervisor", "--municipality",
               "montreal", "--municipality", "ottawa", "--language", "fr") == 0
    assert "updated dana@ottawa.example" in capsys.readouterr().out
    user = stored(config, "dana@ottawa.example")
    assert (user.role, user.municipalities, user.language) == (
        "supervisor", ("montreal", "ottawa"), "fr")
    assert verify_password(user.password_hash, PASSWORD)  # untouched

    assert run(config, "set", "dana@ottawa.example", "--language", "auto") == 0
    assert stored(config, "dana@ottawa.example").language is None
    assert run(config, "set", "dana@ottawa.example", "--role", "supervisor") == 0
    assert "nothing changed" in capsys.readouterr().out


def test_set_name(config: str, stdin: io.StringIO) -> None:
    add(config, stdin, "dana@ottawa.example")
    assert run(config, "set", "dana@ottawa.example", "--name", "Dana K. Scully") == 0
    assert stored(config, "dana@ottawa.example").name == "Dana K. Scully"


@pytest.mark.parametrize(("name", "message"), [("  ", "must not be empty"),
                                              ("x" * 201, "at most 200 characters")])
def test_names_are_checked(
    config: str, stdin: io.StringIO, name: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(config, "add", "a@city.example", "--name", name, "--role", "admin") == 2
    assert message in capsys.readouterr().err
    add(config, stdin, "dana@ottawa.example")
    assert run(config, "set", "dana@ottawa.example", "--name", name) == 2
    assert message in capsys.readouterr().err
    assert stored(config, "dana@ottawa.example").name == "Dana"


def test_changes_are_audited_without_secrets(config: str, stdin: io.StringIO) -> None:
    add(config, stdin, "dana@ottawa.example")
    assert run(config, "passwd", "dana@ottawa.example") == 0
    assert run(config, "totp", "dana@ottawa.example", "--enable") == 0
    assert run(config, "set", "dana@ottawa.example", "--role", "supervisor") == 0
    assert run(config, "disable", "dana@ottawa.example") == 0
    store = open_store(load_settings(Path(config), {}).database)
    try:
        with ConsoleStore(store).reading() as tx:
            entries = tx.audit_log(Scope(None))
            secret = tx.user_by_email("dana@ottawa.example").totp_secret  # type: ignore[union-attr]
    finally:
        store.close()
    assert [e.action for e in entries] == [
        "user_disable", "user_set", "user_totp", "user_passwd", "user_add"]
    assert all(e.detail["via"] == "cli" and e.detail["email"] == "dana@ottawa.example"
               for e in entries)
    assert entries[1].detail["role"] == "supervisor"
    text = json.dumps([e.detail for e in entries])
    assert PASSWORD not in text and "argon2" not in text and str(secret) not in text


def test_set_refusals(config: str, stdin: io.StringIO, capsys: pytest.CaptureFixture[str]) -> None:
    add(config, stdin, "root@city.example", role="admin")
    capsys.readouterr()
    # an admin without municipalities cannot become an agent without naming one
    assert run(config, "set", "root@city.example", "--role", "agent") == 2
    assert "at least one --municipality" in capsys.readouterr().err
    assert stored(config, "root@city.example").role == "admin"
    assert run(config, "set", "root@city.example", "--role", "agent", "--municipality",
               "ottawa") == 0
    assert stored(config, "root@city.example").role == "agent"
    assert run(config, "set", "root@city.example", "--municipality", "nowhere") == 2
    assert "unknown municipality 'nowhere'" in capsys.readouterr().err
    assert run(config, "set", "root@city.example") == 2
    assert "nothing to change" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------
# As a real process: the console script reads the password from its standard input


@pytest.mark.slow  # `sms311` subprocesses
def test_add_as_a_subprocess(config: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "--config", config, "user", "add", "kim@ottawa.example",
         "--name", "Kim", "--role", "agent", "--municipality", "ottawa", "--password-stdin"],
        input=PASSWORD + "\n", capture_output=True, text=True, check=False, timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert verify_password(stored(config, "kim@ottawa.example").password_hash, PASSWORD)
    again = subprocess.run(
        [sys.executable, "-m", "gateway", "--config", config, "user", "add", "lee@ottawa.example",
         "--name", "Lee", "--role", "agent", "--municipality", "otawa"],
        capture_output=True, text=True, check=False, timeout=60,
    )
    assert again.returncode == 2
    assert "unknown municipality 'otawa' (did you mean 'ottawa'?)" in again.stderr
