"""Settings and municipality map: loading, defaults, environment, and every kind of problem."""

from __future__ import annotations

import dataclasses
import shutil
import textwrap
import typing
from pathlib import Path
from typing import Any

import pytest

from gateway.rules.municipalities import CannedReply, Municipality
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
    check_config,
    config_path_from,
    load_municipality_map,
    load_settings,
)
from gateway.settings.declare import Leaf, Section, derive, section, setting
from gateway.settings.directory_build import MAP_KEYS as WRITTEN_MAP_KEYS
from gateway.settings.model import SCHEMA
from gateway.settings.municipality_map import MAP_KEYS

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "systemd" / "sms311.example.yaml"
REAL_MAP = REPO / "municipality_map.yaml"

# The smallest valid settings file (sandbox SMS, so no Twilio credentials). Line numbers matter:
# the problem cases below append from line 10 or replace one of these lines.
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

MAP = """\
municipalities:
  - id: ottawa
    name: Ottawa
    name_fr: Ottawa
    province: ON
    aliases: [Nepean, Kanata, Orléans]
    postal_prefixes: [K1, k2, "K4 A"]
    mailbox: 311@ottawa.example
    agents: ["@ottawa.example", lead@ottawa.example]
    languages: [en, fr]
  - id: gatineau
    name: Gatineau
    province: QC
    postal_prefixes: [J8, J9]
    mailbox: 311@gatineau.example
"""

OTTAWA = Municipality(
    id="ottawa",
    name="Ottawa",
    name_fr="Ottawa",
    province="ON",
    aliases=("Nepean", "Kanata", "Orléans"),
    postal_prefixes=("K1", "K2", "K4A"),
    mailbox="311@ottawa.example",
    agents=("@ottawa.example", "lead@ottawa.example"),
    languages=("en", "fr"),
)
GATINEAU = Municipality(
    id="gatineau",
    name="Gatineau",
    province="QC",
    postal_prefixes=("J8", "J9"),
    mailbox="311@gatineau.example",
    agents=("@gatineau.example",),
    languages=("en",),
)


def write(folder: Path, text: str, name: str = "sms311.yaml") -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def problems_of(path: Path, environ: dict[str, str] | None = None) -> list[Problem]:
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ or {})
    return caught.value.problems


def map_problems_of(path: Path) -> list[Problem]:
    with pytest.raises(ConfigError) as caught:
        load_municipality_map(path)
    return caught.value.problems


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
# The municipality map


def test_map_loads(tmp_path: Path) -> None:
    assert load_municipality_map(write(tmp_path, MAP, "map.yaml")) == [OTTAWA, GATINEAU]


def test_map_province_on_is_not_a_boolean(tmp_path: Path) -> None:
    # YAML 1.1 reads an unquoted ON as true; the map's string keys take the text as written.
    municipalities = load_municipality_map(write(tmp_path, MAP, "map.yaml"))
    assert municipalities[0].province == "ON"


THIRD = """\
  - id: kanata
    name: Kanata
    province: ON
    postal_prefixes: [K2K, K1]
    mailbox: 311@kanata.example
"""

MAP_CASES = [
    ("duplicate id", MAP + THIRD.replace("id: kanata", "id: ottawa"), 16, "municipalities[2].id",
     "duplicate id 'ottawa' (also on line 2)"),
    ("duplicate postal prefix", MAP + THIRD, 19, "municipalities[2].postal_prefixes[1]",
     "postal prefix 'K1' is also claimed by 'ottawa' (line 7)"),
    ("duplicate alias", MAP.replace("[J8, J9]\n", "[J8, J9]\n    aliases: [orleans]\n"), 15,
     "municipalities[1].aliases[0]", "alias 'orleans' is also claimed by 'ottawa' (line 6)"),
    ("bad prefix letter", MAP.replace("[J8, J9]", "[J8, D9]"), 14,
     "municipalities[1].postal_prefixes[1]",
     "'D9' is not a postal code prefix (FSA, e.g. K1A, K1 or K)"),
    ("bad prefix third letter", MAP.replace("[J8, J9]", "[J8, J9O]"), 14,
     "municipalities[1].postal_prefixes[1]", "'J9O' is not a postal code prefix"),
    ("prefix too long", MAP.replace("[J8, J9]", "[J8 0A1]"), 14,
     "municipalities[1].postal_prefixes[0]", "is not a postal code prefix"),
    ("prefix letter twice", MAP.replace("[J8, J9]", "[JJ]"), 14,
     "municipalities[1].postal_prefixes[0]", "is not a postal code prefix"),
    ("prefix of another province", MAP.replace("[J8, J9]", "[J8, K9]"), 14,
     "municipalities[1].postal_prefixes[1]", "K9 is a postal prefix of ON, not QC"),
    ("prefix of the territories", MAP.replace("[J8, J9]", "[X1A]"), 14,
     "municipalities[1].postal_prefixes[0]", "X1A is a postal prefix of NT or NU, not QC"),
    ("missing mailbox", MAP.replace("    mailbox: 311@gatineau.example\n", ""), 11,
     "municipalities[1].mailbox", "missing"),
    ("missing id", MAP.replace("  - id: gatineau\n    name", "  - name"), 11,
     "municipalities[1].id", "missing"),
    ("missing name", MAP.replace("    name: Gatineau\n", ""), 11, "municipalities[1].name",
     "missing"),
    ("bad mailbox", MAP.replace("311@gatineau.example", "311 at gatineau"), 15,
     "municipalities[1].mailbox", "is not a valid email address"),
    ("bad id", MAP.replace("id: gatineau", "id: Gatineau City"), 11, "municipalities[1].id",
     "must be a slug"),
    ("bad province", MAP.replace("province: QC", "province: PQ"), 13,
     "municipalities[1].province", "must be a province or territory code"),
    ("bad agent", MAP.replace('"@ottawa.example"', "ottawa"), 9, "municipalities[0].agents[0]",
     "must be an email address or an @domain"),
    ("bad agent domain", MAP.replace('"@ottawa.example"', '"@-x"'), 9,
     "municipalities[0].agents[0]", "is not a valid @domain"),
    ("no agents", MAP.replace('["@ottawa.example", lead@ottawa.example]', "[]"), 9,
     "municipalities[0].agents", "must name at least one"),
    ("bad language", MAP.replace("[en, fr]", "[en, de]"), 10, "municipalities[0].languages[1]",
     "must be one of en, fr (not 'de')"),
    ("aliases not a list", MAP.replace("[Nepean, Kanata, Orléans]", "Nepean"), 6,
     "municipalities[0].aliases", "must be a list"),
    ("alias not a string", MAP.replace("[Nepean, Kanata, Orléans]", "[Nepean, [Kanata]]"), 6,
     "municipalities[0].aliases[1]", "must be a string"),
    ("unknown key", MAP.replace("    mailbox: 311@gatineau", "    mailbx: 311@gatineau"), 15,
     "municipalities[1].mailbx", "unknown key (did you mean 'mailbox'?)"),
    ("entry not a mapping", MAP + "  - just a name\n", 16, "municipalities[2]",
     "must be a mapping"),
    ("unknown top-level key", MAP + "municipality: []\n", 16, "municipality",
     "unknown key (did you mean 'municipalities'?)"),
    ("not a list", "municipalities: {ottawa: {}}\n", 1, "municipalities", "must be a list"),
    ("empty list", "municipalities: []\n", 1, "municipalities", "at least one"),
    ("no municipalities", "cities: []\n", None, "municipalities", "missing"),
    ("yaml syntax", MAP.replace("[J8, J9]", "[J8, J9"), 15, "", "invalid YAML"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "line", "key", "message"),
    [case[1:] for case in MAP_CASES],
    ids=[case[0] for case in MAP_CASES],
)
def test_map_problem(tmp_path: Path, text: str, line: int | None, key: str, message: str) -> None:
    path = write(tmp_path, text, "municipality_map.yaml")
    problems = map_problems_of(path)
    relevant = [p for p in problems if p.key == key]
    assert relevant, problems
    assert relevant[0].file == str(path)
    assert relevant[0].line == line
    assert message in relevant[0].message, relevant[0].message


def test_map_problem_text(tmp_path: Path) -> None:
    third = THIRD.replace("id: kanata", "id: ottawa").replace(", K1]", "]")
    path = write(tmp_path, MAP + third, "municipality_map.yaml")
    assert [str(p) for p in map_problems_of(path)] == [
        f"{path}:16: municipalities[2].id: duplicate id 'ottawa' (also on line 2)"
    ]


def test_map_reports_every_problem(tmp_path: Path) -> None:
    text = MAP.replace("province: QC", "province: ZZ").replace("311@ottawa.example", "nope")
    text += THIRD
    path = write(tmp_path, text, "municipality_map.yaml")
    assert [(p.line, p.key) for p in map_problems_of(path)] == [
        (8, "municipalities[0].mailbox"),
        (13, "municipalities[1].province"),
        (19, "municipalities[2].postal_prefixes[1]"),
    ]


def test_map_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "municipality_map.yaml"
    assert [str(p) for p in map_problems_of(path)] == [f"{path}: file not found"]


# ------------------------------------------------------------------------------------------
# check_config: the settings and the map they name


def test_check_config_ok(tmp_path: Path) -> None:
    write(tmp_path, MAP, "municipality_map.yaml")
    assert check_config(write(tmp_path, BASE), {}) == []


def test_check_config_missing_map_names_the_setting(tmp_path: Path) -> None:
    path = write(tmp_path, BASE)
    assert [str(p) for p in check_config(path, {})] == [
        f"{path}: municipality_map: file not found: {tmp_path / 'municipality_map.yaml'}"
    ]
    path = write(tmp_path, BASE + "municipality_map: maps/m.yaml\n")
    assert [str(p) for p in check_config(path, {})] == [
        f"{path}:10: municipality_map: file not found: {tmp_path / 'maps' / 'm.yaml'}"
    ]


def test_check_config_reports_settings_and_map_problems(tmp_path: Path) -> None:
    write(tmp_path, MAP.replace("[J8, J9]", "[J8, K9]"), "maps/cities.yaml")
    text = BASE.replace("provider: sandbox", "provider: twillio")
    path = write(tmp_path, text + "municipality_map: maps/cities.yaml\n")
    assert [str(p) for p in check_config(path, {})] == [
        f"{path}:4: sms.provider: must be one of twilio, sandbox (not 'twillio')",
        f"{tmp_path / 'maps' / 'cities.yaml'}:14: municipalities[1].postal_prefixes[1]: "
        "K9 is a postal prefix of ON, not QC",
    ]


def test_check_config_map_from_environment(tmp_path: Path) -> None:
    write(tmp_path, MAP, "elsewhere/m.yaml")
    path = write(tmp_path, BASE)
    assert check_config(path, {"GATEWAY_MUNICIPALITY_MAP": "elsewhere/m.yaml"}) == []
    assert [str(p) for p in check_config(path, {"GATEWAY_MUNICIPALITY_MAP": "gone.yaml"})] == [
        f"GATEWAY_MUNICIPALITY_MAP: municipality_map: file not found: {tmp_path / 'gone.yaml'}"
    ]


# ------------------------------------------------------------------------------------------
# The files in the repository

EXAMPLE_SECRETS = {
    "GATEWAY_SMS__AUTH_TOKEN": "token",
    "GATEWAY_EMAIL__SMTP__PASSWORD": "smtp-password",
    "GATEWAY_EMAIL__IMAP__PASSWORD": "imap-password",
}


def test_example_settings_file_loads(tmp_path: Path) -> None:
    settings = load_settings(EXAMPLE, EXAMPLE_SECRETS)
    assert settings.sms.provider == "twilio"
    assert settings.sms.auth_token == "token"
    assert settings.email.imap is not None
    assert settings.email.imap.password == "imap-password"
    assert settings.municipality_map == EXAMPLE.parent / "municipality_map.yaml"
    # without the secrets it says which variables to set
    messages = [str(p) for p in problems_of(EXAMPLE, {})]
    assert any("GATEWAY_SMS__AUTH_TOKEN" in m for m in messages)
    assert any("GATEWAY_EMAIL__IMAP__PASSWORD" in m for m in messages)


def test_example_settings_file_documents_every_key() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    for key in (
        "database", "municipality_map", "public_url", "web", "listen", "sms", "provider",
        "account_sid", "auth_token", "sender", "api_base_url", "max_per_second",
        "default_region", "email", "from_address", "reply_address", "smtp", "host", "port",
        "username", "password", "security", "timeout", "imap", "mailbox", "processed_mailbox",
        "failed_mailbox", "ingress", "fallback_mailbox", "log_level", "state_dir", "outbox",
        "max_attempts", "base_backoff_seconds", "max_backoff_seconds", "lease_seconds",
        "takeover_seconds", "console", "secret_key", "session_hours", "login_max_failures", "login_window_minutes",
        "poll_seconds", "presence_seconds",
    ):  # fmt: skip
        assert f"{key}:" in text, key


def test_example_checks_clean_beside_a_map(tmp_path: Path) -> None:
    shutil.copy(EXAMPLE, tmp_path / "sms311.yaml")
    write(tmp_path, MAP, "municipality_map.yaml")
    assert check_config(tmp_path / "sms311.yaml", EXAMPLE_SECRETS) == []


def test_repository_municipality_map_is_valid() -> None:
    municipalities = load_municipality_map(REAL_MAP)
    assert len(municipalities) >= 17
    assert len({m.id for m in municipalities}) == len(municipalities)


def test_example_checks_clean_with_the_repository_map(tmp_path: Path) -> None:
    shutil.copy(EXAMPLE, tmp_path / "sms311.yaml")
    shutil.copy(REAL_MAP, tmp_path / "municipality_map.yaml")
    assert check_config(tmp_path / "sms311.yaml", EXAMPLE_SECRETS) == []


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


# ------------------------------------------------------------------------------------------
# Canned replies in the municipality map

CANNED = MAP.replace(
    "    languages: [en, fr]\n",
    "    languages: [en, fr]\n"
    "    canned_replies:\n"
    "      - title: Pothole logged\n"
    "        text: Thank you, a crew will fill it within 5 days.\n"
    "        language: en\n"
    "      - title: Nid-de-poule\n"
    "        language: FR\n"
    "        text: >-\n"
    "          Merci, une équipe le bouchera\n"
    "          d'ici 5 jours.\n"
    "      - {title: Any language, text: See ottawa.ca/311}\n",
)


def test_map_canned_replies_load(tmp_path: Path) -> None:
    ottawa, gatineau = load_municipality_map(write(tmp_path, CANNED, "map.yaml"))
    assert ottawa.canned_replies == (
        CannedReply("Pothole logged", "Thank you, a crew will fill it within 5 days.", "en"),
        CannedReply("Nid-de-poule", "Merci, une équipe le bouchera d'ici 5 jours.", "fr"),
        CannedReply("Any language", "See ottawa.ca/311", None),
    )
    assert gatineau.canned_replies == ()
    assert OTTAWA.canned_replies == ()  # the default


def test_map_canned_reply_of_1600_characters_is_fine(tmp_path: Path) -> None:
    text = CANNED.replace("See ottawa.ca/311", "x" * 1600)
    ottawa = load_municipality_map(write(tmp_path, text, "map.yaml"))[0]
    assert ottawa.canned_replies[-1].text == "x" * 1600


# CANNED's canned_replies start on line 11; the items on lines 12, 15 and 20.
CANNED_CASES = [
    ("not a list", MAP.replace("    languages: [en, fr]\n",
                               "    languages: [en, fr]\n    canned_replies: hello\n"), 11,
     "municipalities[0].canned_replies", "must be a list"),
    ("item not a mapping", CANNED.replace("      - {title: Any language, text: See ottawa.ca/311}",
                                          "      - just text"), 20,
     "municipalities[0].canned_replies[2]", "must be a mapping"),
    ("missing title", CANNED.replace("title: Any language, ", ""), 20,
     "municipalities[0].canned_replies[2].title", "missing"),
    ("missing text", CANNED.replace("        text: Thank you, a crew will fill it within 5 days.\n",
                                    ""), 12,
     "municipalities[0].canned_replies[0].text", "missing"),
    ("empty title", CANNED.replace("title: Pothole logged", "title: ''"), 12,
     "municipalities[0].canned_replies[0].title", "must not be empty"),
    ("empty text", CANNED.replace("text: See ottawa.ca/311", "text: '  '"), 20,
     "municipalities[0].canned_replies[2].text", "must not be empty"),
    ("text not a string", CANNED.replace("text: See ottawa.ca/311", "text: [a, b]"), 20,
     "municipalities[0].canned_replies[2].text", "must be a string"),
    ("text too long", CANNED.replace("See ottawa.ca/311", "x" * 1601), 20,
     "municipalities[0].canned_replies[2].text", "is 1601 characters; at most 1600"),
    ("bad language", CANNED.replace("language: FR", "language: de"), 16,
     "municipalities[0].canned_replies[1].language", "must be one of en, fr (not 'de')"),
    ("unknown key", CANNED.replace("        language: en\n", "        langage: en\n"), 14,
     "municipalities[0].canned_replies[0].langage", "unknown key (did you mean 'language'?)"),
    ("duplicate title", CANNED.replace("title: Nid-de-poule", "title: pothole  LOGGED")
     .replace("language: FR", "language: en"), 15,
     "municipalities[0].canned_replies[1].title",
     "duplicate title 'pothole  LOGGED' (also on line 12)"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "line", "key", "message"),
    [case[1:] for case in CANNED_CASES],
    ids=[case[0] for case in CANNED_CASES],
)
def test_map_canned_reply_problem(
    tmp_path: Path, text: str, line: int | None, key: str, message: str
) -> None:
    path = write(tmp_path, text, "municipality_map.yaml")
    problems = map_problems_of(path)
    assert len(problems) == 1, problems
    assert (problems[0].file, problems[0].line, problems[0].key) == (str(path), line, key)
    assert message in problems[0].message, problems[0].message
    assert str(problems[0]).startswith(f"{path}:{line}: {key}: ")


def test_map_same_title_in_two_languages_is_fine(tmp_path: Path) -> None:
    text = CANNED.replace("title: Nid-de-poule", "title: Pothole logged")
    ottawa = load_municipality_map(write(tmp_path, text, "map.yaml"))[0]
    assert [c.title for c in ottawa.canned_replies][:2] == ["Pothole logged"] * 2


def test_repository_map_has_canned_replies_in_both_languages() -> None:
    by_id = {m.id: m for m in load_municipality_map(REAL_MAP)}
    for ident in ("ottawa", "montreal"):
        replies = by_id[ident].canned_replies
        assert {c.language for c in replies} == {"en", "fr"}, ident
        assert all(0 < len(c.text) <= 1600 for c in replies)
