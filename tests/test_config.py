"""Settings: loading into the dataclasses, defaults, each key declared once, environment
overrides, the small parts of the API, and the console section.

Every kind of problem in the settings file is in test_config_problems.py; the municipality
map, check_config and the files in the repository in test_config_map.py; the shared file
texts and helpers in tests/config_helpers.py.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

import pytest

from gateway.rules.municipalities import Municipality
from gateway.settings import (
    DEFAULT_CONFIG_PATH,
    ConfigError,
    ConsoleSettings,
    EmailSettings,
    ImapSettings,
    IngressSettings,
    OutboxSettings,
    Problem,
    Settings,
    SmsSettings,
    SmtpSettings,
    WebSettings,
    config_path_from,
    load_settings,
)
from gateway.settings.declare import Leaf, Section, derive, section, setting
from gateway.settings.directory_build import MAP_KEYS as WRITTEN_MAP_KEYS
from gateway.settings.model import SCHEMA
from gateway.settings.municipality_map import MAP_KEYS
from tests.config_helpers import BASE, EXAMPLE, EXAMPLE_SECRETS, problems_of, write

FULL = """\
database: postgres://sms311@db.internal/sms311
municipality_map: ../maps/cities.yaml
public_url: https://sms.example.ca/gateway/
log_level: debug
state_dir: state
web: {listen: "0.0.0.0:8080"}
sms:
  provider: twilio
  account_sid: AC0123456789abcdef0123456789abcdef
  auth_token: s3cret
  sender: 31100
  api_base_url: http://127.0.0.1:9999
  max_per_second: 100
  default_region: us
email:
  from_address: "311 Text <sms@gateway.example.ca>"
  reply_address: "reply+{token}@gateway.example.ca"
  smtp: {host: smtp.example.ca, port: 465, username: sms, password: 0123, security: TLS,
         timeout: 5}
  imap:
    host: imap.example.ca
    port: 143
    username: reply
    password: pw
    security: starttls
    mailbox: Replies
    processed_mailbox: Done
    failed_mailbox: Rejected
  ingress: {listen: "[::1]:2525"}
fallback_mailbox: 311-unrouted@gateway.example.ca
outbox: {max_attempts: 5, base_backoff_seconds: 0.5, max_backoff_seconds: 60}
"""


# ------------------------------------------------------------------------------------------
# Loading


def test_full_file_loads_into_the_dataclasses(tmp_path: Path) -> None:
    path = write(tmp_path / "etc", FULL)
    assert load_settings(path, {}) == Settings(
        config_path=path,
        database="postgresql://sms311@db.internal/sms311",
        municipality_map=tmp_path / "maps" / "cities.yaml",
        public_url="https://sms.example.ca/gateway",
        log_level="DEBUG",
        state_dir=tmp_path / "etc" / "state",
        web=WebSettings(listen="0.0.0.0:8080"),
        sms=SmsSettings(
            provider="twilio",
            account_sid="AC0123456789abcdef0123456789abcdef",
            auth_token="s3cret",
            sender="31100",  # unquoted in the file: still the string as written
            api_base_url="http://127.0.0.1:9999",
            max_per_second=100.0,
            default_region="US",
        ),
        email=EmailSettings(
            from_address="311 Text <sms@gateway.example.ca>",
            reply_address="reply+{token}@gateway.example.ca",
            smtp=SmtpSettings(
                host="smtp.example.ca",
                port=465,
                username="sms",
                password="0123",  # not YAML 1.1 octal 83
                security="tls",
                timeout=5.0,
            ),
            imap=ImapSettings(
                host="imap.example.ca",
                port=143,
                username="reply",
                password="pw",
                security="starttls",
                mailbox="Replies",
                processed_mailbox="Done",
                failed_mailbox="Rejected",
            ),
            ingress=IngressSettings(listen="[::1]:2525"),
        ),
        fallback_mailbox="311-unrouted@gateway.example.ca",
        outbox=OutboxSettings(max_attempts=5, base_backoff_seconds=0.5, max_backoff_seconds=60.0),
    )


def test_defaults_and_paths_beside_the_settings_file(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, BASE), {})
    assert settings.database == f"sqlite:///{tmp_path / 'gateway.db'}"
    assert settings.database.startswith("sqlite:////")  # absolute
    assert settings.municipality_map == tmp_path / "municipality_map.yaml"
    assert settings.state_dir == tmp_path / "var"
    assert settings.log_level == "INFO"
    assert settings.web == WebSettings(listen="127.0.0.1:8311")
    assert settings.sms == SmsSettings(provider="sandbox")
    assert settings.sms.api_base_url == "https://api.twilio.com"
    assert settings.sms.max_per_second == 1.0
    assert settings.sms.default_region == "CA"
    assert settings.email.smtp == SmtpSettings(host="smtp.example", port=587, security="starttls")
    assert settings.email.imap is None and settings.email.ingress is None
    assert settings.fallback_mailbox is None
    assert settings.outbox == OutboxSettings(
        max_attempts=12, base_backoff_seconds=1.0, max_backoff_seconds=300.0,
        lease_seconds=120.0, takeover_seconds=10.0,
    )


def test_imap_defaults(tmp_path: Path) -> None:
    text = BASE + "  imap: {host: imap.example, username: u, password: p}\n  ingress: {}\n"
    email = load_settings(write(tmp_path, text), {}).email
    assert email.imap == ImapSettings(
        host="imap.example",
        port=993,
        username="u",
        password="p",
        security="tls",
        mailbox="INBOX",
        processed_mailbox="Processed",
        failed_mailbox="Failed",
    )
    assert email.ingress == IngressSettings(listen="127.0.0.1:2525")


@pytest.mark.parametrize(
    ("database", "expected"),
    [
        ("sqlite:///data/gw.db", "sqlite:///{tmp}/data/gw.db"),
        ("sqlite:///../gw.db?timeout=5", "sqlite:///{parent}/gw.db?timeout=5"),
        ("sqlite:////var/lib/sms311/gateway.db", "sqlite:////var/lib/sms311/gateway.db"),
        ("'sqlite:///:memory:'", "sqlite:///:memory:"),
        ("postgresql://u@db/sms", "postgresql://u@db/sms"),
        ("postgres://u@db/sms", "postgresql://u@db/sms"),
        ("postgresql+psycopg://u@db/sms", "postgresql+psycopg://u@db/sms"),
    ],
)
def test_database_urls(tmp_path: Path, database: str, expected: str) -> None:
    path = write(tmp_path, BASE.replace("sqlite:///gateway.db", database))
    settings = load_settings(path, {})
    assert settings.database == expected.format(tmp=tmp_path, parent=tmp_path.parent)


def test_twilio_is_the_default_provider(tmp_path: Path) -> None:
    text = BASE.replace("  provider: sandbox\n", "  sender: '+16135550123'\n")
    env = {"GATEWAY_SMS__ACCOUNT_SID": "AC1", "GATEWAY_SMS__AUTH_TOKEN": "t"}
    assert load_settings(write(tmp_path, text), env).sms.provider == "twilio"


def test_secrets_are_not_in_the_repr(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path / "etc", FULL), {})
    assert "s3cret" not in repr(settings)
    assert "password=" not in repr(settings)


# ------------------------------------------------------------------------------------------
# Each key is declared once (gateway/settings/model.py): the schema the loader walks, the
# dataclasses the gateway reads and the defaults both apply cannot disagree.


def dataclass_keys(cls: type, prefix: str = "") -> dict[str, dataclasses.Field[Any]]:
    """Every settings key of dataclass `cls`, walked from its fields (not from the schema)."""
    hints = typing.get_type_hints(cls)
    keys: dict[str, dataclasses.Field[Any]] = {}
    for f in dataclasses.fields(cls):
        if cls is Settings and f.name == "config_path":  # the file itself, not a key
            continue
        kind = hints[f.name]
        inner = [a for a in typing.get_args(kind) if a is not type(None)] or [kind]
        if len(inner) == 1 and dataclasses.is_dataclass(inner[0]):
            keys.update(dataclass_keys(typing.cast(type, inner[0]), f"{prefix}{f.name}."))
        else:
            keys[prefix + f.name] = f
    return keys


def schema_keys(spec: Section, prefix: str = "") -> dict[str, Leaf]:
    keys: dict[str, Leaf] = {}
    for name, child in spec.keys.items():
        if isinstance(child, Section):
            keys.update(schema_keys(child, f"{prefix}{name}."))
        else:
            keys[prefix + name] = child
    return keys


def attribute(settings: Settings, dotted: str) -> Any:
    value: Any = settings
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


# Only the required keys, and the sections that are optional, with their required keys. The
# SMS provider is left out (its credentials are given, as its default, twilio, needs them).
REQUIRED_ONLY = """\
database: sqlite:///gateway.db
public_url: https://sms.example.ca
sms: {account_sid: AC1, auth_token: t, sender: "31100"}
email:
  from_address: sms@gw.example
  reply_address: reply+{token}@gw.example
  smtp: {host: smtp.example}
  imap: {host: imap.example, username: reply, password: pw}
  ingress: {}
"""
REQUIRED_ONLY_GIVEN = {
    "database", "public_url", "sms.account_sid", "sms.auth_token", "sms.sender",
    "email.from_address", "email.reply_address", "email.smtp.host", "email.imap.host",
    "email.imap.username", "email.imap.password",
}  # fmt: skip


def test_every_schema_key_is_a_dataclass_field_and_every_field_a_key() -> None:
    in_schema, in_dataclasses = schema_keys(SCHEMA), dataclass_keys(Settings)
    assert sorted(in_schema) == sorted(in_dataclasses)
    for key, leaf in in_schema.items():
        field = in_dataclasses[key]
        assert leaf.required == (field.default is dataclasses.MISSING), key
        if not leaf.required:
            assert leaf.default == field.default, key
        assert leaf.help.strip(), f"{key} has no help"
        assert field.repr is not leaf.secret, f"{key}: a secret is left out of the repr"


def test_the_loader_applies_the_dataclass_defaults(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, REQUIRED_ONLY), {})
    required = {key for key, leaf in schema_keys(SCHEMA).items() if leaf.required}
    assert required <= REQUIRED_ONLY_GIVEN
    for key, field in dataclass_keys(Settings).items():
        if key in REQUIRED_ONLY_GIVEN:
            continue
        assert field.default is not dataclasses.MISSING, f"{key}: required, but not by the file"
        expected = field.default
        if isinstance(expected, Path):  # municipality_map, state_dir: beside the settings file
            expected = tmp_path / expected
        assert attribute(settings, key) == expected, key


def test_sms_provider_defaults_to_twilio(tmp_path: Path) -> None:
    # The settings file has always defaulted to twilio (README; the credentials are then
    # required); the dataclass said sandbox until both came from one declaration.
    assert SmsSettings().provider == "twilio"
    assert load_settings(write(tmp_path, REQUIRED_ONLY), {}).sms.provider == "twilio"
    path = write(tmp_path, BASE.replace("  provider: sandbox\n", ""))
    assert [p.key for p in problems_of(path)] == ["sms.account_sid", "sms.auth_token", "sms.sender"]


def test_a_field_without_a_declaration_is_refused() -> None:
    @section
    class Stray:
        declared: int = setting(default=1, help="a declared key")
        undeclared: int = 2

    with pytest.raises(TypeError, match=r"Stray\.undeclared: declare it with setting"):
        derive(Stray)


def test_the_map_keys_have_one_home() -> None:
    assert WRITTEN_MAP_KEYS is MAP_KEYS  # directory_build writes the reader's keys
    assert set(MAP_KEYS) == {f.name for f in dataclasses.fields(Municipality)}


# ------------------------------------------------------------------------------------------
# Environment overrides


def test_environment_overrides_nested_and_typed(tmp_path: Path) -> None:
    path = write(tmp_path, BASE + "fallback_mailbox: old@gw.example\n")
    env = {
        "GATEWAY_DATABASE": "postgresql://u@db/sms",
        "GATEWAY_PUBLIC_URL": "https://other.example",
        "GATEWAY_SMS__AUTH_TOKEN": "#not a comment: {x}",
        "GATEWAY_SMS__MAX_PER_SECOND": "100",  # YAML scalar -> number
        "GATEWAY_EMAIL__SMTP__PORT": "2525",
        "GATEWAY_EMAIL__SMTP__USERNAME": "user",
        "GATEWAY_EMAIL__SMTP__PASSWORD": "0123",  # a string setting keeps its text
        "GATEWAY_EMAIL__IMAP__HOST": "imap.example",  # creates the imap section
        "GATEWAY_EMAIL__IMAP__USERNAME": "reply",
        "GATEWAY_EMAIL__IMAP__PASSWORD": "true",
        "gateway_web__listen": "0.0.0.0:9000",  # case-insensitive
        "GATEWAY_FALLBACK_MAILBOX": "",  # empty unsets an optional setting
        "GATEWAY_CONFIG": "/somewhere/else.yaml",  # names the file, not a setting
        "GATEWAY_TEST_POSTGRES_URL": "postgresql://test",  # for the tests
        "PATH": "/usr/bin",
    }
    settings = load_settings(path, env)
    assert settings.database == "postgresql://u@db/sms"
    assert settings.public_url == "https://other.example"
    assert settings.sms.auth_token == "#not a comment: {x}"
    assert settings.sms.max_per_second == 100.0
    assert settings.email.smtp.port == 2525
    assert settings.email.smtp.username == "user"
    assert settings.email.smtp.password == "0123"
    assert settings.email.imap == ImapSettings(
        host="imap.example", username="reply", password="true"
    )
    assert settings.web.listen == "0.0.0.0:9000"
    assert settings.fallback_mailbox is None


def test_environment_replaces_a_bad_file_value(tmp_path: Path) -> None:
    path = write(tmp_path, BASE + "    port: abc\n")
    assert load_settings(path, {"GATEWAY_EMAIL__SMTP__PORT": "25"}).email.smtp.port == 25


def test_environment_database_is_resolved_beside_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, BASE)
    settings = load_settings(path, {"GATEWAY_DATABASE": "sqlite:///other.db"})
    assert settings.database == f"sqlite:///{tmp_path / 'other.db'}"


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("GATEWAY_SMS__MAX_PER_SECOND", "fast",
         "GATEWAY_SMS__MAX_PER_SECOND: sms.max_per_second: must be a number"),
        ("GATEWAY_SMS__MAX_PER_SECOND", "true",
         "GATEWAY_SMS__MAX_PER_SECOND: sms.max_per_second: must be a number"),
        ("GATEWAY_EMAIL__SMTP__PORT", "1.5",
         "GATEWAY_EMAIL__SMTP__PORT: email.smtp.port: must be a whole number"),
        ("GATEWAY_SMS__PROVIDER", "carrier-pigeon",
         "GATEWAY_SMS__PROVIDER: sms.provider: must be one of twilio, sandbox "
         "(not 'carrier-pigeon')"),
        ("GATEWAY_SMS__AUTH_TOKN", "x",
         "GATEWAY_SMS__AUTH_TOKN: sms.auth_tokn: unknown setting "
         "(did you mean GATEWAY_SMS__AUTH_TOKEN?)"),
        ("GATEWAY_PUBLICURL", "https://x.example",
         "GATEWAY_PUBLICURL: publicurl: unknown setting (did you mean GATEWAY_PUBLIC_URL?)"),
        ("GATEWAY_NOTHING", "x", "GATEWAY_NOTHING: nothing: unknown setting"),
        ("GATEWAY_EMAIL__SMTP", "x",
         "GATEWAY_EMAIL__SMTP: email.smtp: is a section: set its keys with "
         "GATEWAY_EMAIL__SMTP__<KEY>"),
        ("GATEWAY_PUBLIC_URL__HOST", "x",
         "GATEWAY_PUBLIC_URL__HOST: public_url.host: unknown setting "
         "(public_url is not a section)"),
        ("GATEWAY_DATABASE", "mysql://u:hunter2@db",
         "GATEWAY_DATABASE: database: must be a sqlite:///FILE or postgresql://… URL"),
    ],
)  # fmt: skip
def test_environment_problem(tmp_path: Path, name: str, value: str, expected: str) -> None:
    path = write(tmp_path, BASE)
    assert [str(p) for p in problems_of(path, {name: value})] == [expected]


def test_environment_defaults_to_os_environ(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GATEWAY_SMS__MAX_PER_SECOND", "7")
    assert load_settings(write(tmp_path, BASE)).sms.max_per_second == 7.0


# ------------------------------------------------------------------------------------------
# Small parts of the API


@pytest.mark.parametrize(
    ("problem", "text"),
    [
        (
            Problem("sms311.yaml", 12, "sms.sender", "missing"),
            "sms311.yaml:12: sms.sender: missing",
        ),
        (
            Problem("GATEWAY_SMS__MAX_PER_SECOND", None, "sms.max_per_second", "must be a number"),
            "GATEWAY_SMS__MAX_PER_SECOND: sms.max_per_second: must be a number",
        ),
        (Problem("m.yaml", 3, "", "invalid YAML: x"), "m.yaml:3: invalid YAML: x"),
        (Problem("m.yaml", None, "", "file not found"), "m.yaml: file not found"),
    ],
)
def test_problem_str(problem: Problem, text: str) -> None:
    assert str(problem) == text


def test_config_error_lists_problems_one_per_line() -> None:
    error = ConfigError([Problem("a", 1, "x", "bad"), Problem("b", None, "y", "worse")])
    assert str(error) == "a:1: x: bad\nb: y: worse"
    assert len(error.problems) == 2


@pytest.mark.parametrize(
    ("argv", "environ", "expected"),
    [
        ("/cli.yaml", {"GATEWAY_CONFIG": "/env.yaml"}, Path("/cli.yaml")),
        (None, {"GATEWAY_CONFIG": "/env.yaml"}, Path("/env.yaml")),
        (None, {"gateway_config": "rel/env.yaml"}, Path("rel/env.yaml")),
        (None, {}, DEFAULT_CONFIG_PATH),
        (None, {"GATEWAY_CONFIG": ""}, DEFAULT_CONFIG_PATH),
    ],
)
def test_config_path_from(argv: str | None, environ: dict[str, str], expected: Path) -> None:
    assert config_path_from(argv, environ) == expected


def test_default_config_path() -> None:
    assert Path("/etc/sms311/sms311.yaml") == DEFAULT_CONFIG_PATH


# ------------------------------------------------------------------------------------------
# The console section

SECRET_KEY = "k" * 40


def test_console_defaults(tmp_path: Path) -> None:
    console = load_settings(write(tmp_path, BASE), {}).console
    assert console == ConsoleSettings()
    assert console.secret_key is None
    assert (console.session_hours, console.login_max_failures, console.login_window_minutes) == (
        12.0, 5, 15.0,
    )
    assert (console.poll_seconds, console.presence_seconds) == (3.0, 20.0)


def test_console_section_loads(tmp_path: Path) -> None:
    text = BASE + (
        "console:\n"
        f"  secret_key: {SECRET_KEY}\n"
        "  session_hours: 8\n"
        "  login_max_failures: 3\n"
        "  login_window_minutes: 30\n"
        "  poll_seconds: 2.5\n"
        "  presence_seconds: 10\n"
    )
    assert load_settings(write(tmp_path, text), {}).console == ConsoleSettings(
        secret_key=SECRET_KEY,
        session_hours=8.0,
        login_max_failures=3,
        login_window_minutes=30.0,
        poll_seconds=2.5,
        presence_seconds=10.0,
    )


def test_console_from_the_environment(tmp_path: Path) -> None:
    env = {
        "GATEWAY_CONSOLE__SECRET_KEY": "#0123 " + SECRET_KEY,  # a string, taken as written
        "GATEWAY_CONSOLE__SESSION_HOURS": "1.5",
        "GATEWAY_CONSOLE__LOGIN_MAX_FAILURES": "10",
    }
    console = load_settings(write(tmp_path, BASE), env).console
    assert console.secret_key == "#0123 " + SECRET_KEY
    assert console.session_hours == 1.5
    assert console.login_max_failures == 10
    # an empty variable unsets the file's secret: the console falls back to the database's
    path = write(tmp_path, BASE + f"console: {{secret_key: {SECRET_KEY}}}\n")
    assert load_settings(path, {"GATEWAY_CONSOLE__SECRET_KEY": ""}).console.secret_key is None


def test_console_secret_key_is_secret(tmp_path: Path) -> None:
    path = write(tmp_path, BASE + "console:\n  secret_key: hunter2\n")
    problems = [str(p) for p in problems_of(path)]
    assert problems == [
        f"{path}:11: console.secret_key: must be at least 32 characters "
        "(e.g. the output of `openssl rand -hex 32`)"
    ]
    env_problems = [str(p) for p in problems_of(write(tmp_path, BASE), {
        "GATEWAY_CONSOLE__SECRET_KEY": "hunter3"})]
    assert env_problems == [
        "GATEWAY_CONSOLE__SECRET_KEY: console.secret_key: must be at least 32 characters "
        "(e.g. the output of `openssl rand -hex 32`)"
    ]
    settings = load_settings(write(tmp_path, BASE), {"GATEWAY_CONSOLE__SECRET_KEY": SECRET_KEY})
    assert SECRET_KEY not in repr(settings)


CONSOLE_CASES = [
    ("session_hours zero", BASE + "console: {session_hours: 0}\n", 10, "console.session_hours",
     "must be greater than 0"),
    ("session_hours text", BASE + "console:\n  session_hours: long\n", 11,
     "console.session_hours", "must be a number"),
    ("login_max_failures zero", BASE + "console:\n  login_max_failures: 0\n", 11,
     "console.login_max_failures", "must be at least 1"),
    ("login_max_failures fraction", BASE + "console:\n  login_max_failures: 2.5\n", 11,
     "console.login_max_failures", "must be a whole number"),
    ("login_window_minutes negative", BASE + "console:\n  login_window_minutes: -1\n", 11,
     "console.login_window_minutes", "must be greater than 0"),
    ("poll_seconds zero", BASE + "console:\n  poll_seconds: 0\n", 11, "console.poll_seconds",
     "must be greater than 0"),
    ("presence_seconds not a number", BASE + "console:\n  presence_seconds: [20]\n", 11,
     "console.presence_seconds", "must be a number"),
    ("presence not above poll", BASE + "console:\n  poll_seconds: 5\n  presence_seconds: 5\n",
     12, "console.presence_seconds", "must be greater than console.poll_seconds"),
    ("poll above the default presence", BASE + "console:\n  poll_seconds: 30\n", 11,
     "console.poll_seconds", "must be less than console.presence_seconds (20 by default)"),
    ("unknown console key", BASE + "console:\n  session_hour: 8\n", 11, "console.session_hour",
     "unknown setting (did you mean 'session_hours'?)"),
    ("console not a section", BASE + "console: yes\n", 10, "console",
     "must be a section of keys"),
    ("secret_key not a string", BASE + "console:\n  secret_key: [x]\n", 11,
     "console.secret_key", "must be a string"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "line", "key", "message"),
    [case[1:] for case in CONSOLE_CASES],
    ids=[case[0] for case in CONSOLE_CASES],
)
def test_console_problem(
    tmp_path: Path, text: str, line: int | None, key: str, message: str
) -> None:
    path = write(tmp_path, text)
    problems = problems_of(path)
    assert len(problems) == 1, problems
    assert (problems[0].file, problems[0].line, problems[0].key) == (str(path), line, key)
    assert message in problems[0].message, problems[0].message
    assert str(problems[0]).startswith(f"{path}:{line}: {key}: ")


def test_console_environment_problem(tmp_path: Path) -> None:
    path = write(tmp_path, BASE)
    assert [str(p) for p in problems_of(path, {"GATEWAY_CONSOLE__POLL_SECONDS": "soon"})] == [
        "GATEWAY_CONSOLE__POLL_SECONDS: console.poll_seconds: must be a number"
    ]
    assert [str(p) for p in problems_of(path, {"GATEWAY_CONSOLE__SESSION": "1"})] == [
        "GATEWAY_CONSOLE__SESSION: console.session: unknown setting "
        "(did you mean GATEWAY_CONSOLE__SESSION_HOURS?)"
    ]


def test_example_settings_file_console_section() -> None:
    console = load_settings(EXAMPLE, EXAMPLE_SECRETS).console
    assert console == ConsoleSettings()  # the example shows the defaults
    with_key = {**EXAMPLE_SECRETS, "GATEWAY_CONSOLE__SECRET_KEY": SECRET_KEY}
    assert load_settings(EXAMPLE, with_key).console.secret_key == SECRET_KEY
