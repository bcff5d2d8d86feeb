"""Shared by the settings test modules (test_config.py, test_config_problems.py,
test_config_map.py): the smallest valid settings file, the example file in systemd/ and the
secrets it leaves to the environment, and helpers that write a file and collect its problems.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from gateway.settings import ConfigError, Problem, load_settings
from tests.paths import REPO_ROOT

EXAMPLE = REPO_ROOT / "systemd" / "sms311.example.yaml"

# The smallest valid settings file (sandbox SMS, so no Twilio credentials). Line numbers matter:
# the problem cases of the test modules append from line 10 or replace one of these lines.
BASE = """\
database: sqlite:///gateway.db
public_url: https://sms.example.ca
sms:
  provider: sandbox
email:
  from_address: sms@gw.example
  reply_address: reply+{token}@gw.example
  smtp:
    host: smtp.example
"""

EXAMPLE_SECRETS = {
    "GATEWAY_SMS__AUTH_TOKEN": "token",
    "GATEWAY_EMAIL__SMTP__PASSWORD": "smtp-password",
    "GATEWAY_EMAIL__IMAP__PASSWORD": "imap-password",
}


def write(folder: Path, text: str, name: str = "sms311.yaml") -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def problems_of(path: Path, environ: dict[str, str] | None = None) -> list[Problem]:
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ or {})
    return caught.value.problems
