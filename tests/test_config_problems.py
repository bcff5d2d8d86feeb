"""Settings: every kind of problem in the settings file (unknown or duplicate keys, types,
missing and conditional keys, values each check refuses), each named by file, line and key,
all reported together, and never showing a secret. The environment's problems are with the
environment overrides in test_config.py; the shared file texts and helpers in
tests/config_helpers.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.settings import ConfigError, check_config, load_settings
from tests.config_helpers import BASE, problems_of, write

# ------------------------------------------------------------------------------------------
# Problems in the settings file: (text, line, key, part of the message)

SETTINGS_CASES = [
    ("unknown key", BASE + "log_levle: DEBUG\n", 10, "log_levle",
     "unknown setting (did you mean 'log_level'?)"),
    ("unknown nested key", BASE.replace("sandbox\n", "sandbox\n  auth_tokn: x\n"), 5,
     "sms.auth_tokn", "unknown setting (did you mean 'auth_token'?)"),
    ("unknown key without suggestion", BASE + "    colour: blue\n", 10, "email.smtp.colour",
     "unknown setting"),
    ("duplicate key", BASE + "public_url: https://b.example\n", 10, "public_url",
     "duplicate key (first on line 2)"),
    ("int expected", BASE + "    port: abc\n", 10, "email.smtp.port", "must be a whole number"),
    ("int not bool", BASE + "    port: yes\n", 10, "email.smtp.port", "must be a whole number"),
    ("number expected", BASE.replace("sandbox\n", "sandbox\n  max_per_second: fast\n"), 5,
     "sms.max_per_second", "must be a number"),
    ("section expected", BASE + "web: 8311\n", 10, "web", "must be a section of keys"),
    ("string expected", BASE + "fallback_mailbox: [a@b.example]\n", 10, "fallback_mailbox",
     "must be a string"),
    ("missing database", BASE.replace("database: sqlite:///gateway.db\n", ""), None, "database",
     "missing"),
    ("missing smtp host", BASE.replace("    host: smtp.example", "    port: 25"), 8,
     "email.smtp.host", "missing"),
    ("missing from_address", BASE.replace("  from_address: sms@gw.example\n", ""), 5,
     "email.from_address", "missing"),
    ("empty from_address", BASE.replace("from_address: sms@gw.example", "from_address: ''"), 5,
     "email.from_address", "missing"),
    ("missing imap host", BASE + "  imap: {username: u, password: p}\n", 10, "email.imap.host",
     "missing"),
    ("missing imap password", BASE + "  imap: {host: h, username: u}\n", 10,
     "email.imap.password", "missing (set it here or with GATEWAY_EMAIL__IMAP__PASSWORD)"),
    ("smtp username without password", BASE + "    username: sms\n", 10, "email.smtp.password",
     "missing (email.smtp.username is set; set it here or with GATEWAY_EMAIL__SMTP__PASSWORD)"),
    ("bad provider", BASE.replace("provider: sandbox", "provider: twillio"), 4, "sms.provider",
     "must be one of twilio, sandbox (not 'twillio')"),
    ("bad security", BASE + "    security: ssl\n", 10, "email.smtp.security",
     "must be one of none, starttls, tls (not 'ssl')"),
    ("bad log level", BASE + "log_level: loud\n", 10, "log_level", "must be one of DEBUG, INFO"),
    ("reply without token", BASE.replace("reply+{token}@", "reply@"), 7, "email.reply_address",
     'must contain "{token}" once'),
    ("reply token in domain", BASE.replace("reply+{token}@gw.example", "r@{token}.gw.example"), 7,
     "email.reply_address", "before the @"),
    ("bad from_address", BASE.replace("sms@gw.example", "not an address"), 6,
     "email.from_address", "is not a valid email address"),
    ("two from addresses", BASE.replace("sms@gw.example", "'a@gw.example, b@gw.example'"), 6,
     "email.from_address", "must be a single email address"),
    ("bad fallback_mailbox", BASE + "fallback_mailbox: nobody@\n", 10, "fallback_mailbox",
     "is not a valid email address"),
    ("url scheme", BASE.replace("https://sms.example.ca", "ftp://sms.example.ca"), 2,
     "public_url", "must start with https://"),
    ("url without host", BASE.replace("https://sms.example.ca", "https://"), 2, "public_url",
     "must name a host"),
    ("url with query", BASE.replace("sms.example.ca", "sms.example.ca/?a=1"), 2, "public_url",
     "must not have a query"),
    ("api url", BASE.replace("sandbox\n", "sandbox\n  api_base_url: api.twilio.com\n"), 5,
     "sms.api_base_url", "must start with https://"),
    ("listen without port", BASE + "web:\n  listen: localhost\n", 11, "web.listen",
     'must be "host:port"'),
    ("listen port range", BASE + "web:\n  listen: 'localhost:70000'\n", 11, "web.listen",
     "port must be between 1 and 65535"),
    ("listen bare ipv6", BASE + "web: {listen: '::1:8311'}\n", 10, "web.listen", "in brackets"),
    ("ingress listen", BASE + "  ingress:\n    listen: ':2525'\n", 11, "email.ingress.listen",
     'must be "host:port"'),
    ("ingress on the web port", BASE + "  ingress: {listen: '127.0.0.1:8311'}\n", 10,
     "email.ingress.listen", "must differ from web.listen"),
    ("ingress on a wildcard", BASE + "  ingress: {listen: '0.0.0.0:8311'}\n", 10,
     "email.ingress.listen", "must differ from web.listen"),
    ("ingress username alone", BASE + "  ingress: {listen: '127.0.0.1:2525', username: u}\n",
     10, "email.ingress.password", "email.ingress.username is set"),
    ("ingress certificate alone",
     BASE + "  ingress: {listen: '127.0.0.1:2525', tls_certificate: /etc/c.pem}\n", 10,
     "email.ingress.tls_key", "email.ingress.tls_certificate is set"),
    ("metrics on the web port", BASE + "web: {listen: '127.0.0.1:8311', "
     "metrics_listen: '127.0.0.1:8311'}\n", 10, "web.metrics_listen",
     "must differ from web.listen"),
    ("imap failed is the inbox", BASE + "  imap: {host: h, username: u, password: p,\n"
     "         mailbox: Failed}\n", 10, "email.imap.failed_mailbox",
     "must differ from email.imap.mailbox"),
    ("smtp port range", BASE + "    port: 0\n", 10, "email.smtp.port",
     "must be between 1 and 65535"),
    ("max_per_second zero", BASE.replace("sandbox\n", "sandbox\n  max_per_second: 0\n"), 5,
     "sms.max_per_second", "must be greater than 0"),
    ("max_per_second negative", BASE.replace("sandbox\n", "sandbox\n  max_per_second: -1.5\n"),
     5, "sms.max_per_second", "must be greater than 0"),
    ("bad region", BASE.replace("sandbox\n", "sandbox\n  default_region: XX\n"), 5,
     "sms.default_region", "'XX' is not a phone region code"),
    ("bad sender", BASE.replace("sandbox\n", "sandbox\n  sender: 613-555-0123\n"), 5,
     "sms.sender", "must be a short code"),
    ("bad database", BASE.replace("sqlite:///gateway.db", "mysql://db/sms"), 1, "database",
     "must be a sqlite:///FILE or postgresql://"),
    ("sqlite without file", BASE.replace("sqlite:///gateway.db", "sqlite://"), 1, "database",
     "must be sqlite:///relative/file.db"),
    ("imap loops", BASE + "  imap: {host: h, username: u, password: p, processed_mailbox: INBOX}\n",
     10, "email.imap.processed_mailbox", "must differ from email.imap.mailbox"),
    ("backoff cap below base", BASE + "outbox:\n  base_backoff_seconds: 10\n"
     "  max_backoff_seconds: 5\n", 12, "outbox.max_backoff_seconds",
     "must be at least outbox.base_backoff_seconds"),
    ("max_attempts", BASE + "outbox: {max_attempts: 0}\n", 10, "outbox.max_attempts",
     "must be at least 1"),
    ("takeover too short", BASE + "outbox: {takeover_seconds: 0.5}\n", 10,
     "outbox.takeover_seconds", "must be between 1 and 3600 seconds"),
    ("takeover too long", BASE + "outbox: {takeover_seconds: 7200}\n", 10,
     "outbox.takeover_seconds", "must be between 1 and 3600 seconds"),
    ("not a mapping", "- database\n- public_url\n", 1, "", "must be a mapping of keys"),
    ("yaml syntax", "database: x\nemail:\n  from_address: a@b.example\n reply_address: x\n", 4,
     "", "invalid YAML: did not find expected key"),
    ("yaml tab", "database: x\n\tpublic_url: y\n", 2, "", "invalid YAML"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "line", "key", "message"),
    [case[1:] for case in SETTINGS_CASES],
    ids=[case[0] for case in SETTINGS_CASES],
)
def test_settings_problem(
    tmp_path: Path, text: str, line: int | None, key: str, message: str
) -> None:
    path = write(tmp_path, text)
    problems = problems_of(path)
    assert len(problems) == 1, problems  # nothing else is wrong with these files
    assert (problems[0].file, problems[0].line, problems[0].key) == (str(path), line, key)
    assert message in problems[0].message, problems[0].message


def test_problem_text_names_file_line_and_key(tmp_path: Path) -> None:
    path = write(tmp_path, BASE.replace("provider: sandbox", "provider: twillio"))
    assert [str(p) for p in problems_of(path)] == [
        f"{path}:4: sms.provider: must be one of twilio, sandbox (not 'twillio')"
    ]


def test_twilio_needs_credentials(tmp_path: Path) -> None:
    path = write(tmp_path, BASE.replace("provider: sandbox", "provider: twilio"))
    assert [str(p) for p in problems_of(path)] == [
        f"{path}:3: sms.account_sid: missing (sms.provider is twilio)",
        f"{path}:3: sms.auth_token: missing (sms.provider is twilio; "
        "set it here or with GATEWAY_SMS__AUTH_TOKEN)",
        f"{path}:3: sms.sender: missing (sms.provider is twilio)",
    ]


def test_empty_file_lists_every_required_key(tmp_path: Path) -> None:
    path = write(tmp_path, "# nothing yet\n")
    keys = {p.key for p in problems_of(path)}
    assert keys == {
        "database",
        "public_url",
        "email.from_address",
        "email.reply_address",
        "email.smtp.host",
        "sms.account_sid",
        "sms.auth_token",
        "sms.sender",
    }


@pytest.mark.parametrize(
    ("name", "make", "message"),
    [
        ("missing.yaml", None, "file not found"),
        ("folder.yaml", "dir", "is a folder, not a file"),
        ("latin1.yaml", "latin1", "cannot read: not UTF-8 text"),
    ],
)
def test_unreadable_settings_file(
    tmp_path: Path, name: str, make: str | None, message: str
) -> None:
    path = tmp_path / name
    if make == "dir":
        path.mkdir()
    elif make == "latin1":
        path.write_bytes("public_url: https://montréal.example\n".encode("latin-1"))
    assert [str(p) for p in problems_of(path)] == [f"{path}: {message}"]
    assert [str(p) for p in check_config(path, {})] == [f"{path}: {message}"]


def test_all_problems_are_reported_together(tmp_path: Path) -> None:
    text = """\
        database: mysql://db
        public_url: ftp://x
        sms:
          provider: sandbox
          max_per_second: 0
        email:
          from_address: nobody
          reply_address: reply@gw.example
          smtp: {port: 0}
        colour: blue
        """
    path = write(tmp_path, text)
    env = {"GATEWAY_WEB__LISTEN": "nowhere", "GATEWAY_NOPE": "1"}
    with pytest.raises(ConfigError) as caught:
        load_settings(path, env)
    found = [(p.file, p.line, p.key) for p in caught.value.problems]
    assert found == [
        (str(path), 1, "database"),
        (str(path), 2, "public_url"),
        (str(path), 5, "sms.max_per_second"),
        (str(path), 7, "email.from_address"),
        (str(path), 8, "email.reply_address"),
        (str(path), 9, "email.smtp.host"),
        (str(path), 9, "email.smtp.port"),
        (str(path), 10, "colour"),
        ("GATEWAY_NOPE", None, "nope"),
        ("GATEWAY_WEB__LISTEN", None, "web.listen"),
    ]
    assert str(caught.value).splitlines() == [str(p) for p in caught.value.problems]


def test_secret_values_never_appear_in_messages(tmp_path: Path) -> None:
    text = BASE.replace("sqlite:///gateway.db", "mysql://u:hunter2@db/sms").replace(
        "provider: sandbox", "provider: sandbox\n  auth_token: {token: hunter3}"
    )
    path = write(tmp_path, text + "    password: [hunter4]\n")
    env = {"GATEWAY_EMAIL__IMAP__PASSWORD": "hunter5"}  # imap without host
    problems = [str(p) for p in problems_of(path, env)]
    assert f"{path}:5: sms.auth_token: must be a string" in problems
    assert f"{path}:11: email.smtp.password: must be a string" in problems
    assert any("database" in p for p in problems)
    assert not any("hunter" in p for p in problems), problems
