"""Settings: load and validate the YAML file and the environment.

Errors name the file, the line and the key (`file:line: key: message`).

Public API:

- `load_settings(path, environ=None) -> Settings`: read the settings file, apply the
  `GATEWAY_<SECTION>__<KEY>` environment overrides, validate everything, and raise
  `ConfigError` listing *every* problem found (never only the first).
- `load_municipality_map(path) -> list[Municipality]`: read and validate `municipality_map.yaml`.
- `check_config(path, environ=None) -> list[Problem]`: both of the above, problems only
  (an empty list means the configuration is usable). `sms311 check-config` prints them.
- `config_path_from(argv_value, environ) -> Path`: `--config`, else `GATEWAY_CONFIG`, else
  `/etc/sms311/sms311.yaml`.
- `check_email_address(value) -> str`: a bare `name@domain`, stripped, or ValueError(why).

Rules:

- Relative paths (`municipality_map`, `state_dir`, a `sqlite:///relative.db` file) are resolved
  against the folder of the settings file.
- Environment variables: `GATEWAY_` + the key path in upper or lower case, with `__` between
  levels (`GATEWAY_SMS__AUTH_TOKEN`, `GATEWAY_EMAIL__SMTP__PASSWORD`, `GATEWAY_PUBLIC_URL`).
  A value is read as a YAML scalar where the setting is a number (`"100"` -> 100), and taken
  verbatim where it is a string (so a password like `0123` or `#x` stays as written); an empty
  value unsets an optional setting. `GATEWAY_CONFIG` (the settings file) and `GATEWAY_TEST_*`
  are not settings; any other unknown `GATEWAY_` variable is a problem.
- String settings take the YAML scalar's text as written, so `province: ON` or `sender: 31100`
  are the strings "ON" and "31100" (not YAML 1.1 booleans or numbers).
- Secret values (tokens, passwords, the database URL, console.secret_key) never appear in
  a message.
- `console:` (optional) tunes the staff console (`ConsoleSettings`); without
  `console.secret_key` the console keeps a generated secret in the database.
"""

from __future__ import annotations

import difflib
import email.utils
import math
import os
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import phonenumbers
import yaml

from gateway.rules.municipalities import CannedReply, Municipality

try:
    from yaml import CSafeLoader as _YamlLoader
except ImportError:  # pragma: no cover - PyYAML built without libyaml
    from yaml import SafeLoader as _YamlLoader  # type: ignore[assignment]

DEFAULT_CONFIG_PATH = Path("/etc/sms311/sms311.yaml")
ENV_PREFIX = "GATEWAY_"
ENV_CONFIG = "GATEWAY_CONFIG"
ENV_TEST_PREFIX = "GATEWAY_TEST_"

SMS_PROVIDERS = ("twilio", "sandbox")
MAIL_SECURITY = ("none", "starttls", "tls")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
PROVINCES = ("AB", "BC", "MB", "NB", "NL", "NS", "NT", "NU", "ON", "PE", "QC", "SK", "YT")
LANGUAGES = ("en", "fr")

# First letter of a Canadian postal code (FSA) -> the province(s) it serves.
FSA_PROVINCES: Mapping[str, tuple[str, ...]] = {
    "A": ("NL",),
    "B": ("NS",),
    "C": ("PE",),
    "E": ("NB",),
    "G": ("QC",),
    "H": ("QC",),
    "J": ("QC",),
    "K": ("ON",),
    "L": ("ON",),
    "M": ("ON",),
    "N": ("ON",),
    "P": ("ON",),
    "R": ("MB",),
    "S": ("SK",),
    "T": ("AB",),
    "V": ("BC",),
    "X": ("NT", "NU"),
    "Y": ("YT",),
}
# 1-3 characters: a valid first letter, then a digit, then a letter (D F I O Q U are never used).
_FSA_RE = re.compile(r"[ABCEGHJKLMNPRSTVXY](?:[0-9](?:[ABCEGHJKLMNPRSTVWXYZ])?)?")
_SLUG_RE = re.compile(r"[a-z0-9-]+")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DOMAIN_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_LOCAL_RE = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
_SENDER_RE = re.compile(r"[0-9]{3,8}|\+[1-9][0-9]{6,14}|MG[0-9a-fA-F]{32}")


# --------------------------------------------------------------------------------------------
# The settings (read by the rest of the gateway)


@dataclass(frozen=True)
class WebSettings:
    listen: str = "127.0.0.1:8311"
    # Reverse proxies in front of the web half whose X-Forwarded-For / -Proto to believe
    # (0: none). The console's per-address sign-in limit needs the client's real address.
    trusted_proxies: int = 0


@dataclass(frozen=True)
class SmsSettings:
    provider: str = "sandbox"  # twilio | sandbox   (the settings file defaults to twilio)
    account_sid: str = ""
    auth_token: str = field(default="", repr=False)
    sender: str = ""
    api_base_url: str = "https://api.twilio.com"
    max_per_second: float = 1.0
    default_region: str = "CA"


@dataclass(frozen=True)
class SmtpSettings:
    host: str = "127.0.0.1"
    port: int = 587
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    security: str = "starttls"  # none | starttls | tls
    timeout: float = 30.0


@dataclass(frozen=True)
class ImapSettings:
    host: str
    port: int = 993
    username: str = ""
    password: str = field(default="", repr=False)
    security: str = "tls"  # none | starttls | tls
    mailbox: str = "INBOX"
    processed_mailbox: str = "Processed"
    failed_mailbox: str = "Failed"
    # IDLE is restarted this often; a connection that died silently is noticed then.
    idle_restart_seconds: float = 300.0


@dataclass(frozen=True)
class IngressSettings:
    listen: str = "127.0.0.1:2525"


@dataclass(frozen=True)
class EmailSettings:
    from_address: str
    reply_address: str  # must contain "{token}"
    smtp: SmtpSettings = field(default_factory=SmtpSettings)
    imap: ImapSettings | None = None
    ingress: IngressSettings | None = None


@dataclass(frozen=True)
class OutboxSettings:
    """Retries of the outbox: capped exponential backoff, then the item is parked."""

    max_attempts: int = 12
    base_backoff_seconds: float = 1.0
    max_backoff_seconds: float = 300.0
    # A claimed row is this worker's while it renews the claim (every third of
    # takeover_seconds): the rows of a worker that died are taken over by another within
    # takeover_seconds. A live worker renews a row for at most lease_seconds of sending:
    # a send stuck for longer (longer than any SMTP/API timeout) is left to another worker,
    # which looks an SMS up at the provider first.
    lease_seconds: float = 120.0
    takeover_seconds: float = 10.0


@dataclass(frozen=True)
class ConversationSettings:
    """When a conversation (one email thread) ends."""

    # No message either way for this long: the resident's next text starts a new thread.
    idle_close_hours: float = 72.0


@dataclass(frozen=True)
class PrivacySettings:
    """How long message texts are kept."""

    # Texts older than this are blanked (counts kept); 0 keeps them for ever.
    retention_days: int = 365
    # DEBUG logs may then show full numbers and texts (never at INFO): for debugging only.
    log_full_detail: bool = False


@dataclass(frozen=True)
class ConsoleSettings:
    """The staff web console (`/console/…`)."""

    # Signs the session cookies; None: a secret generated once and kept in the database
    # (shared by every instance). At least 32 characters when set.
    secret_key: str | None = field(default=None, repr=False)
    session_hours: float = 12.0  # a sign-in lasts this long without a request
    login_max_failures: int = 5  # failed sign-ins per account (x10 per address): a pause …
    login_window_minutes: float = 15.0  # … counted over this window
    poll_seconds: float = 3.0  # how often open pages refresh
    presence_seconds: float = 20.0  # "Dana is viewing" lasts this long without a refresh


@dataclass(frozen=True)
class Settings:
    config_path: Path  # the settings file; relative paths are resolved against its folder
    database: str
    municipality_map: Path  # absolute
    public_url: str
    email: EmailSettings
    web: WebSettings = field(default_factory=WebSettings)
    sms: SmsSettings = field(default_factory=SmsSettings)
    fallback_mailbox: str | None = None
    log_level: str = "INFO"  # DEBUG | INFO | WARNING | ERROR | CRITICAL
    state_dir: Path = Path("var")  # sandbox SMS/mail files; absolute once loaded
    outbox: OutboxSettings = field(default_factory=OutboxSettings)
    conversations: ConversationSettings = field(default_factory=ConversationSettings)
    privacy: PrivacySettings = field(default_factory=PrivacySettings)
    console: ConsoleSettings = field(default_factory=ConsoleSettings)


# --------------------------------------------------------------------------------------------
# Problems


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the configuration: `file:line: key: message`.

    `file` is the file (or the environment variable) the value came from; `line` is 1-based,
    or None where there is no line (environment, a key that is missing altogether).
    """

    file: str
    line: int | None
    key: str
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        if self.key:
            return f"{where}: {self.key}: {self.message}"
        return f"{where}: {self.message}"


class ConfigError(Exception):
    """The configuration cannot be used; `problems` lists everything that is wrong."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems: list[Problem] = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))

    def __str__(self) -> str:
        return "\n".join(str(p) for p in self.problems)


# --------------------------------------------------------------------------------------------
# YAML with line numbers


@dataclass
class _Node:
    """A YAML value and where it came from (the key's line for a mapping value)."""

    src: str
    line: int | None
    kind: Literal["scalar", "map", "seq"]
    value: Any = None  # scalar: the YAML-constructed value (int, float, bool, None, str, …)
    text: str = ""  # scalar: its text as written
    keys: dict[str, _Node] = field(default_factory=dict)
    items: list[_Node] = field(default_factory=list)

    @property
    def is_null(self) -> bool:
        return self.kind == "scalar" and self.value is None


def _in_order(problems: list[Problem], first: str) -> list[Problem]:
    """Problems of file `first` in line order, then those of other sources (variables)."""
    return sorted(problems, key=lambda p: (p.file != first, p.file, p.line or 0))


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _read_text(path: Path, problems: list[Problem]) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        problems.append(Problem(str(path), None, "", "file not found"))
    except IsADirectoryError:
        problems.append(Problem(str(path), None, "", "is a folder, not a file"))
    except OSError as exc:
        problems.append(Problem(str(path), None, "", f"cannot read: {exc.strerror or exc}"))
    except UnicodeDecodeError:
        problems.append(Problem(str(path), None, "", "cannot read: not UTF-8 text"))
    return None


def _parse_yaml(src: str, text: str, problems: list[Problem]) -> _Node | None:
    """Compose `text` into `_Node`s; a syntax error becomes a Problem with its line."""
    loader = _YamlLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None
        return _convert(loader, root, src, root.start_mark.line + 1, "", problems, set())
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        what = exc.problem or exc.context or "syntax error"
        if exc.context and exc.problem:
            if exc.context.startswith("while"):
                what = f"{exc.problem} ({exc.context})"
            else:  # "expected a single document in the stream", "but found another document"
                what = f"{exc.context}, {exc.problem}"
        problems.append(Problem(src, mark.line + 1 if mark else None, "", f"invalid YAML: {what}"))
    except yaml.YAMLError as exc:
        problems.append(Problem(src, None, "", f"invalid YAML: {exc}"))
    finally:
        loader.dispose()
    return None


_STR_TAG = "tag:yaml.org,2002:str"


def _convert(
    loader: Any,
    node: yaml.Node,
    src: str,
    line: int,
    path: str,
    problems: list[Problem],
    active: set[int],
) -> _Node:
    if isinstance(node, yaml.ScalarNode):
        if node.tag == _STR_TAG:  # the common case, and the fast one
            return _Node(src, line, "scalar", value=node.value, text=node.value)
        try:
            value = loader.construct_object(node)
        except (ValueError, TypeError, OverflowError):  # e.g. an impossible date: keep the text
            value = node.value
        return _Node(src, line, "scalar", value=value, text=str(node.value))
    if id(node) in active:
        problems.append(Problem(src, line, path, "recursive YAML alias"))
        return _Node(src, line, "scalar")
    active.add(id(node))
    try:
        if isinstance(node, yaml.SequenceNode):
            items = [
                _convert(
                    loader, item, src, item.start_mark.line + 1, f"{path}[{i}]", problems, active
                )
                for i, item in enumerate(node.value)
            ]
            return _Node(src, line, "seq", items=items)
        assert isinstance(node, yaml.MappingNode)
        keys: dict[str, _Node] = {}
        for key_node, value_node in node.value:
            key_line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode):
                problems.append(Problem(src, key_line, path, "a key must be a plain name"))
                continue
            key = str(key_node.value)
            key_path = _join(path, key)
            if key in keys:
                first = keys[key].line
                problems.append(
                    Problem(src, key_line, key_path, f"duplicate key (first on line {first})")
                )
                continue
            keys[key] = _convert(loader, value_node, src, key_line, key_path, problems, active)
        return _Node(src, line, "map", keys=keys)
    finally:
        active.discard(id(node))


def _yaml_scalar(text: str) -> Any:
    """`text` read the way YAML reads a plain scalar: "100" -> 100, "true" -> True, "~" -> None."""
    resolver: Any = yaml.resolver.Resolver()
    tag = resolver.resolve(yaml.ScalarNode, text, (True, False))
    try:
        return yaml.constructor.SafeConstructor().construct_object(yaml.ScalarNode(tag, text))
    except (yaml.YAMLError, ValueError, TypeError, OverflowError):
        return text


def _suggest(word: str, choices: Iterable[str]) -> str | None:
    close = difflib.get_close_matches(word.lower(), list(choices), n=1, cutoff=0.6)
    return close[0] if close else None


def _unknown(word: str, choices: Iterable[str], what: str = "setting") -> str:
    guess = _suggest(word, choices)
    return f"unknown {what} (did you mean '{guess}'?)" if guess else f"unknown {what}"


# --------------------------------------------------------------------------------------------
# Checks shared by the settings and the municipality map (raise ValueError(message))


def _check_bare_address(value: str) -> str:
    value = value.strip()
    local, at, domain = value.rpartition("@")
    if not at or not _LOCAL_RE.fullmatch(local) or not _DOMAIN_RE.fullmatch(domain):
        raise ValueError("is not a valid email address (expected name@domain)")
    return value


def check_email_address(value: str) -> str:
    """A bare address (`name@domain`), stripped; raises ValueError(why) when it is not one."""
    return _check_bare_address(value)


def _check_address(value: str) -> str:
    """A single address, bare or with a display name: `311 Text <sms@example.ca>`."""
    value = value.strip()
    if len(email.utils.getaddresses([value])) != 1:
        raise ValueError("must be a single email address")
    _name, addr = email.utils.parseaddr(value)
    if not addr or ("<" in value and f"<{addr}>" not in value):
        raise ValueError("is not a valid email address (expected name@domain)")
    _check_bare_address(addr)
    return value


def _check_reply_address(value: str) -> str:
    value = value.strip()
    if value.count("{token}") != 1:
        raise ValueError('must contain "{token}" once, e.g. "reply+{token}@gateway.example.ca"')
    rest = value.replace("{token}", "")
    if "{" in rest or "}" in rest:
        raise ValueError('must not contain braces other than "{token}"')
    local, _at, _domain = value.rpartition("@")
    if "{token}" not in local:
        raise ValueError('"{token}" must be in the part before the @')
    _check_bare_address(value.replace("{token}", "token"))
    return value


def _check_agent(value: str) -> str:
    value = value.strip()
    if value.startswith("@"):
        if not _DOMAIN_RE.fullmatch(value[1:]):
            raise ValueError("is not a valid @domain")
        return value
    try:
        return _check_bare_address(value)
    except ValueError:
        raise ValueError("must be an email address or an @domain") from None


def _check_http_url(value: str) -> str:
    value = value.strip()
    try:
        parts = urlsplit(value)
        _port = parts.port
    except ValueError:
        raise ValueError("is not a valid URL") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError("must start with https:// (or http://)")
    if not parts.hostname:
        raise ValueError("must name a host, e.g. https://sms.example.ca")
    if parts.query or parts.fragment:
        raise ValueError("must not have a query (?…) or fragment (#…)")
    return value.rstrip("/")


def _check_listen(value: str) -> str:
    value = value.strip()
    host, colon, port = value.rpartition(":")
    if not colon or not host or not port.isdigit():
        raise ValueError('must be "host:port", e.g. "127.0.0.1:8311"')
    if host.startswith("[") != host.endswith("]") or (":" in host and not host.startswith("[")):
        raise ValueError('must be "host:port"; write an IPv6 address in brackets: "[::1]:8311"')
    if not 1 <= int(port) <= 65535:
        raise ValueError("port must be between 1 and 65535")
    return value


def _check_port(value: int) -> int:
    if not 1 <= value <= 65535:
        raise ValueError("must be between 1 and 65535")
    return value


def _check_positive(value: float) -> float:
    if not math.isfinite(value) or value <= 0:
        raise ValueError("must be greater than 0")
    return value


def _check_idle_restart(value: float) -> float:
    if not math.isfinite(value) or not 10 <= value <= 29 * 60:
        raise ValueError("must be between 10 and 1740 seconds (servers end IDLE after 30 min)")
    return value


def _check_takeover(value: float) -> float:
    if not math.isfinite(value) or not 1 <= value <= 3600:
        raise ValueError(
            "must be between 1 and 3600 seconds (claims are renewed every third of it)"
        )
    return value


def _check_not_negative(value: int) -> int:
    if value < 0:
        raise ValueError("must be 0 or more")
    return value


def _check_at_least_one(value: int) -> int:
    if value < 1:
        raise ValueError("must be at least 1")
    return value


def _check_secret_key(value: str) -> str:
    if len(value.strip()) < 32:
        raise ValueError(
            "must be at least 32 characters (e.g. the output of `openssl rand -hex 32`)"
        )
    return value.strip()


def _check_not_empty(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value.strip()


def _check_region(value: str) -> str:
    region = value.strip().upper()
    if region not in phonenumbers.SUPPORTED_REGIONS:
        raise ValueError(f"{_shown(value)} is not a phone region code (two letters, e.g. CA)")
    return region


def _check_sender(value: str) -> str:
    value = value.strip()
    if not _SENDER_RE.fullmatch(value):
        raise ValueError(
            "must be a short code (digits), an E.164 number (+16135550123) "
            "or a Messaging Service SID (MG…)"
        )
    return value


def _check_database(value: str) -> str:
    value = value.strip()
    scheme, sep, rest = value.partition("://")
    if not sep or scheme not in ("sqlite", "postgresql", "postgres", "postgresql+psycopg"):
        raise ValueError("must be a sqlite:///FILE or postgresql://… URL")
    if scheme == "sqlite" and (not rest.startswith("/") or rest in ("/", "")):
        raise ValueError("must be sqlite:///relative/file.db or sqlite:////absolute/file.db")
    if scheme != "sqlite" and not rest:
        raise ValueError("must name a database: postgresql://user@host/db")
    if scheme == "postgres":
        value = "postgresql://" + rest
    return value


def _one_of(choices: tuple[str, ...], *, upper: bool = False) -> Callable[[str], str]:
    def check(value: str) -> str:
        norm = value.strip().upper() if upper else value.strip().lower()
        if norm not in choices:
            raise ValueError(f"must be one of {', '.join(choices)} (not {_shown(value)})")
        return norm

    return check


def _shown(value: str) -> str:
    """A non-secret value, quoted and cut short, for a message."""
    return repr(value if len(value) <= 40 else value[:37] + "...")


def _env_name(path: str) -> str:
    return ENV_PREFIX + path.replace(".", "__").upper()


# --------------------------------------------------------------------------------------------
# The settings schema

_Kind = Literal["str", "int", "number", "bool"]


@dataclass(frozen=True)
class _Leaf:
    kind: _Kind
    required: bool = False
    secret: bool = False  # never shown; "missing" says which environment variable can set it
    check: Callable[[Any], Any] | None = None  # returns the normalised value or raises ValueError


@dataclass(frozen=True)
class _Section:
    keys: Mapping[str, _Leaf | _Section]
    optional: bool = False  # absent = None (email.imap, email.ingress)


_SECURITY = _one_of(MAIL_SECURITY)

SCHEMA = _Section(
    {
        "database": _Leaf("str", required=True, secret=True, check=_check_database),
        "municipality_map": _Leaf("str", check=_check_not_empty),
        "public_url": _Leaf("str", required=True, check=_check_http_url),
        "fallback_mailbox": _Leaf("str", check=_check_address),
        "log_level": _Leaf("str", check=_one_of(LOG_LEVELS, upper=True)),
        "state_dir": _Leaf("str", check=_check_not_empty),
        "web": _Section(
            {
                "listen": _Leaf("str", check=_check_listen),
                "trusted_proxies": _Leaf("int", check=_check_not_negative),
            }
        ),
        "sms": _Section(
            {
                "provider": _Leaf("str", check=_one_of(SMS_PROVIDERS)),
                "account_sid": _Leaf("str", check=_check_not_empty),
                "auth_token": _Leaf("str", secret=True),
                "sender": _Leaf("str", check=_check_sender),
                "api_base_url": _Leaf("str", check=_check_http_url),
                "max_per_second": _Leaf("number", check=_check_positive),
                "default_region": _Leaf("str", check=_check_region),
            }
        ),
        "email": _Section(
            {
                "from_address": _Leaf("str", required=True, check=_check_address),
                "reply_address": _Leaf("str", required=True, check=_check_reply_address),
                "smtp": _Section(
                    {
                        "host": _Leaf("str", required=True, check=_check_not_empty),
                        "port": _Leaf("int", check=_check_port),
                        "username": _Leaf("str"),
                        "password": _Leaf("str", secret=True),
                        "security": _Leaf("str", check=_SECURITY),
                        "timeout": _Leaf("number", check=_check_positive),
                    }
                ),
                "imap": _Section(
                    {
                        "host": _Leaf("str", required=True, check=_check_not_empty),
                        "port": _Leaf("int", check=_check_port),
                        "username": _Leaf("str", required=True),
                        "password": _Leaf("str", required=True, secret=True),
                        "security": _Leaf("str", check=_SECURITY),
                        "mailbox": _Leaf("str", check=_check_not_empty),
                        "processed_mailbox": _Leaf("str", check=_check_not_empty),
                        "failed_mailbox": _Leaf("str", check=_check_not_empty),
                        "idle_restart_seconds": _Leaf("number", check=_check_idle_restart),
                    },
                    optional=True,
                ),
                "ingress": _Section({"listen": _Leaf("str", check=_check_listen)}, optional=True),
            }
        ),
        "outbox": _Section(
            {
                "max_attempts": _Leaf("int", check=_check_at_least_one),
                "base_backoff_seconds": _Leaf("number", check=_check_positive),
                "max_backoff_seconds": _Leaf("number", check=_check_positive),
                "lease_seconds": _Leaf("number", check=_check_positive),
                "takeover_seconds": _Leaf("number", check=_check_takeover),
            }
        ),
        "conversations": _Section(
            {"idle_close_hours": _Leaf("number", check=_check_positive)}
        ),
        "privacy": _Section(
            {
                "retention_days": _Leaf("int", check=_check_not_negative),
                "log_full_detail": _Leaf("bool"),
            }
        ),
        "console": _Section(
            {
                "secret_key": _Leaf("str", secret=True, check=_check_secret_key),
                "session_hours": _Leaf("number", check=_check_positive),
                "login_max_failures": _Leaf("int", check=_check_at_least_one),
                "login_window_minutes": _Leaf("number", check=_check_positive),
                "poll_seconds": _Leaf("number", check=_check_positive),
                "presence_seconds": _Leaf("number", check=_check_positive),
            }
        ),
    }
)

# Defaults the settings file applies where the dataclass default differs (or there is none).
_FILE_DEFAULTS: Mapping[str, Any] = {
    "municipality_map": "municipality_map.yaml",
    "state_dir": "var",
    "sms.provider": "twilio",
}
_TYPE_NAMES: Mapping[_Kind, str] = {
    "str": "must be a string",
    "int": "must be a whole number",
    "number": "must be a number",
    "bool": "must be true or false",
}


@dataclass
class _Collected:
    """Validated values by dotted key, where each came from, and the problems."""

    values: dict[str, Any] = field(default_factory=dict)
    where: dict[str, tuple[str, int | None]] = field(default_factory=dict)
    sections: set[str] = field(default_factory=set)
    problems: list[Problem] = field(default_factory=list)

    def problem(self, where: tuple[str, int | None], key: str, message: str) -> None:
        self.problems.append(Problem(where[0], where[1], key, message))


def _leaf_value(leaf: _Leaf, node: _Node) -> Any:
    """The node's value as `leaf.kind`, or raise ValueError with the type message."""
    if node.kind != "scalar":
        raise ValueError(_TYPE_NAMES[leaf.kind])
    value = node.value
    if leaf.kind == "str":
        return node.text  # as written: `ON`, `31100`, `0123` stay strings
    if leaf.kind == "bool":
        if isinstance(value, bool):
            return value
        raise ValueError(_TYPE_NAMES[leaf.kind])
    if isinstance(value, bool):
        raise ValueError(_TYPE_NAMES[leaf.kind])
    if leaf.kind == "int" and isinstance(value, int):
        return value
    if leaf.kind == "number" and isinstance(value, int | float):
        return float(value)
    raise ValueError(_TYPE_NAMES[leaf.kind])


def _validate(
    section: _Section,
    node: _Node | None,
    path: str,
    here: tuple[str, int | None],
    out: _Collected,
) -> None:
    """Check `node` against `section`; `here` locates the section for "missing" problems."""
    if node is not None and node.is_null:
        node = None
    if node is not None and node.kind != "map":
        out.problem((node.src, node.line), path, "must be a section of keys (key: value)")
        return
    present = node.keys if node is not None else {}
    for key, extra in present.items():
        if key not in section.keys:
            out.problem((extra.src, extra.line), _join(path, key), _unknown(key, section.keys))
    for key, spec in section.keys.items():
        child = present.get(key)
        key_path = _join(path, key)
        if isinstance(spec, _Section):
            if spec.optional and (child is None or child.is_null):
                continue
            child_here = (child.src, child.line) if child is not None else here
            if child is not None:
                out.where[key_path] = child_here
            out.sections.add(key_path)
            _validate(spec, child, key_path, child_here, out)
            continue
        if child is None or child.is_null or (child.kind == "scalar" and child.text == ""):
            if spec.required:
                out.problem(here, key_path, _missing(key_path, spec))
            continue
        where = (child.src, child.line)
        out.where[key_path] = where
        try:
            value = _leaf_value(spec, child)
            if spec.check is not None:
                value = spec.check(value)
        except ValueError as exc:
            out.problem(where, key_path, str(exc))
            continue
        out.values[key_path] = value


def _missing(key_path: str, leaf: _Leaf, why: str = "") -> str:
    notes = [why] if why else []
    if leaf.secret:
        notes.append(f"set it here or with {_env_name(key_path)}")
    return f"missing ({'; '.join(notes)})" if notes else "missing"


def _apply_environment(
    root: _Node, environ: Mapping[str, str], settings_src: str, out: _Collected
) -> None:
    """Put each `GATEWAY_…` variable into the tree, where the file's value would be."""
    for name in sorted(environ):
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper == ENV_CONFIG:
            continue
        if upper.startswith(ENV_TEST_PREFIX):
            continue
        parts = upper[len(ENV_PREFIX) :].lower().split("__")
        dotted = ".".join(parts)
        spec: _Leaf | _Section = SCHEMA
        node = root
        for i, part in enumerate(parts):
            assert isinstance(spec, _Section)
            child_spec = spec.keys.get(part)
            if child_spec is None:
                guess = _suggest(part, spec.keys)
                hint = ""
                if guess is not None:
                    hint = f" (did you mean {_env_name(_join('.'.join(parts[:i]), guess))}?)"
                out.problem((name, None), dotted, "unknown setting" + hint)
                break
            last = i == len(parts) - 1
            if last and isinstance(child_spec, _Section):
                out.problem((name, None), dotted, f"is a section: set its keys with {name}__<KEY>")
                break
            if last:
                assert isinstance(child_spec, _Leaf)
                node.keys[part] = _env_node(name, environ[name], child_spec)
                break
            if isinstance(child_spec, _Leaf):
                prefix = ".".join(parts[: i + 1])
                out.problem((name, None), dotted, f"unknown setting ({prefix} is not a section)")
                break
            existing = node.keys.get(part)
            if existing is None or existing.is_null:
                existing = node.keys[part] = _Node(settings_src, None, "map")
            elif existing.kind != "map":
                break  # the file's value is wrong; that problem is reported by the validation
            node, spec = existing, child_spec


def _env_node(name: str, raw: str, leaf: _Leaf) -> _Node:
    if leaf.kind == "str":
        return _Node(name, None, "scalar", value=raw if raw else None, text=raw)
    return _Node(name, None, "scalar", value=_yaml_scalar(raw.strip()), text=raw)


@dataclass
class _SettingsResult:
    settings: Settings | None
    problems: list[Problem]
    map_path: Path | None
    map_where: tuple[str, int | None]


def _read_settings(path: Path, environ: Mapping[str, str] | None) -> _SettingsResult:
    env = os.environ if environ is None else environ
    src = str(path)
    out = _Collected()
    map_where: tuple[str, int | None] = (src, None)
    text = _read_text(path, out.problems)
    if text is None:
        return _SettingsResult(None, out.problems, None, map_where)
    root = _parse_yaml(src, text, out.problems)
    if out.problems:
        return _SettingsResult(None, out.problems, None, map_where)
    if root is None or root.is_null:
        root = _Node(src, None, "map")
    if root.kind != "map":
        out.problem(
            (src, root.line), "", "the settings file must be a mapping of keys (key: value)"
        )
        return _SettingsResult(None, out.problems, None, map_where)
    _apply_environment(root, env, src, out)
    _validate(SCHEMA, root, "", (src, None), out)
    _cross_check(out, src)

    folder = Path(os.path.abspath(path)).parent
    map_value = out.values.get("municipality_map", _FILE_DEFAULTS["municipality_map"])
    map_path = _resolve(folder, map_value)
    map_where = out.where.get("municipality_map", (src, None))
    if out.problems:
        return _SettingsResult(None, _in_order(out.problems, src), map_path, map_where)
    return _SettingsResult(_build(out.values, out.sections, folder, path), [], map_path, map_where)


def _cross_check(out: _Collected, src: str) -> None:
    """Rules that involve more than one key."""
    v = out.values
    sms_where = out.where.get("sms", (src, None))
    provider = v.get("sms.provider", _FILE_DEFAULTS["sms.provider"])
    if provider == "twilio" and ("sms.provider" in v or "sms.provider" not in out.where):
        for key in ("account_sid", "auth_token", "sender"):
            key_path = f"sms.{key}"
            if key_path not in out.where:
                leaf = _schema_node(key_path)
                assert isinstance(leaf, _Leaf)
                out.problem(sms_where, key_path, _missing(key_path, leaf, "sms.provider is twilio"))
    user, password = "email.smtp.username", "email.smtp.password"
    if (user in out.where) != (password in out.where):
        given, absent = (user, password) if user in out.where else (password, user)
        leaf = _Leaf("str", secret=absent == password)
        out.problem(out.where[given], absent, _missing(absent, leaf, f"{given} is set"))
    if "email.imap" in out.sections:
        imap_where = out.where.get("email.imap", (src, None))
        inbox = v.get("email.imap.mailbox", ImapSettings.mailbox)
        for key, default in (
            ("processed_mailbox", ImapSettings.processed_mailbox),
            ("failed_mailbox", ImapSettings.failed_mailbox),
        ):
            key_path = f"email.imap.{key}"
            if v.get(key_path, default) == inbox:
                where = out.where.get(key_path, imap_where)
                out.problem(where, key_path, "must differ from email.imap.mailbox")
    base = v.get("outbox.base_backoff_seconds", OutboxSettings.base_backoff_seconds)
    cap_key = "outbox.max_backoff_seconds"
    if cap_key in v and v[cap_key] < base:
        out.problem(out.where[cap_key], cap_key, "must be at least outbox.base_backoff_seconds")
    poll_key, presence_key = "console.poll_seconds", "console.presence_seconds"
    poll = v.get(poll_key, ConsoleSettings.poll_seconds)
    presence = v.get(presence_key, ConsoleSettings.presence_seconds)
    if (poll_key in v or presence_key in v) and presence <= poll:
        if presence_key in v:
            out.problem(
                out.where[presence_key],
                presence_key,
                "must be greater than console.poll_seconds (pages renew presence that often)",
            )
        else:
            out.problem(
                out.where[poll_key],
                poll_key,
                f"must be less than console.presence_seconds ({presence:g} by default)",
            )
    listen_web = v.get("web.listen", WebSettings.listen)
    if "email.ingress" in out.sections:
        listen_key = "email.ingress.listen"
        if _same_socket(v.get(listen_key, IngressSettings.listen), listen_web):
            where = out.where.get(listen_key, out.where.get("email.ingress", (src, None)))
            out.problem(where, listen_key, "must differ from web.listen")


def _same_socket(a: str, b: str) -> bool:
    """Would two "host:port" listeners collide (same port, same or wildcard host)?"""
    host_a, _, port_a = a.rpartition(":")
    host_b, _, port_b = b.rpartition(":")
    wildcard = ("0.0.0.0", "[::]", "*")  # noqa: S104 - compared, not bound
    return port_a == port_b and (host_a == host_b or host_a in wildcard or host_b in wildcard)


def _resolve(folder: Path, value: str) -> Path:
    return Path(os.path.normpath(folder / Path(value).expanduser()))


def _resolve_database(url: str, folder: Path) -> str:
    if not url.startswith("sqlite:///"):
        return url
    rest = url[len("sqlite:///") :]
    file, q, query = rest.partition("?")
    if file == ":memory:" or file.startswith("/"):
        return url
    return f"sqlite:///{_resolve(folder, file)}{q}{query}"


def _schema_node(dotted: str) -> _Leaf | _Section:
    spec: _Leaf | _Section = SCHEMA
    for part in dotted.split("."):
        assert isinstance(spec, _Section)
        spec = spec.keys[part]
    return spec


def _section_kwargs(values: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    spec = _schema_node(prefix)
    assert isinstance(spec, _Section)
    return {
        key: values[f"{prefix}.{key}"]
        for key, leaf in spec.keys.items()
        if isinstance(leaf, _Leaf) and f"{prefix}.{key}" in values
    }


def _build(values: Mapping[str, Any], sections: set[str], folder: Path, path: Path) -> Settings:
    sms = _section_kwargs(values, "sms")
    sms.setdefault("provider", _FILE_DEFAULTS["sms.provider"])
    imap = (
        ImapSettings(**_section_kwargs(values, "email.imap")) if "email.imap" in sections else None
    )
    ingress = (
        IngressSettings(**_section_kwargs(values, "email.ingress"))
        if "email.ingress" in sections
        else None
    )
    email_settings = EmailSettings(
        from_address=values["email.from_address"],
        reply_address=values["email.reply_address"],
        smtp=SmtpSettings(**_section_kwargs(values, "email.smtp")),
        imap=imap,
        ingress=ingress,
    )
    return Settings(
        config_path=Path(os.path.abspath(path)),
        database=_resolve_database(values["database"], folder),
        municipality_map=_resolve(
            folder, values.get("municipality_map", _FILE_DEFAULTS["municipality_map"])
        ),
        public_url=values["public_url"],
        email=email_settings,
        web=WebSettings(**_section_kwargs(values, "web")),
        sms=SmsSettings(**sms),
        fallback_mailbox=values.get("fallback_mailbox"),
        log_level=values.get("log_level", "INFO"),
        state_dir=_resolve(folder, values.get("state_dir", _FILE_DEFAULTS["state_dir"])),
        outbox=OutboxSettings(**_section_kwargs(values, "outbox")),
        conversations=ConversationSettings(**_section_kwargs(values, "conversations")),
        privacy=PrivacySettings(**_section_kwargs(values, "privacy")),
        console=ConsoleSettings(**_section_kwargs(values, "console")),
    )


def load_settings(path: Path, environ: Mapping[str, str] | None = None) -> Settings:
    """Read, override from `environ` (default: os.environ) and validate the settings file.

    Raises ConfigError with every problem found. Does not read the municipality map
    (`load_municipality_map(settings.municipality_map)` does; `check_config` checks both).
    """
    result = _read_settings(path, environ)
    if result.settings is None:
        raise ConfigError(result.problems)
    return result.settings


# --------------------------------------------------------------------------------------------
# municipality_map.yaml

_MAP_KEYS = (
    "id",
    "name",
    "name_fr",
    "province",
    "aliases",
    "postal_prefixes",
    "mailbox",
    "agents",
    "languages",
    "canned_replies",
)
_CANNED_KEYS = ("title", "text", "language")
CANNED_REPLY_MAX_CHARS = 1600  # the longest SMS body Twilio takes (about 10 segments)


def _fold(text: str) -> str:
    """Compare names loosely: case, accents, punctuation and spacing ignored."""
    decomposed = unicodedata.normalize("NFKD", text)
    plain = "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()
    return " ".join(re.sub(r"[^\w]+", " ", plain).split())


def _normalize_fsa(text: str) -> str:
    """Upper case without spaces: "k1a" or "K1 A" -> "K1A" (not validated)."""
    return "".join(text.split()).upper()


class _MapReader:
    """Validates one municipality_map.yaml, collecting problems."""

    def __init__(self, src: str) -> None:
        self.src = src
        self.problems: list[Problem] = []

    def problem(self, node: _Node, key: str, message: str) -> None:
        self.problems.append(Problem(self.src, node.line, key, message))

    def read(self, root: _Node | None) -> list[Municipality]:
        if root is None or root.kind != "map":
            line = root.line if root is not None else None
            self.problems.append(
                Problem(self.src, line, "municipalities", "missing (a list of municipalities)")
            )
            return []
        for key, child in root.keys.items():
            if key != "municipalities":
                self.problem(child, key, _unknown(key, ["municipalities"], "key"))
        entries = root.keys.get("municipalities")
        if entries is None:
            self.problems.append(Problem(self.src, None, "municipalities", "missing"))
            return []
        if entries.kind != "seq":
            self.problem(entries, "municipalities", "must be a list of municipalities")
            return []
        if not entries.items:
            self.problem(entries, "municipalities", "must list at least one municipality")
        result: list[Municipality] = []
        for i, entry in enumerate(entries.items):
            municipality = self.entry(entry, f"municipalities[{i}]")
            if municipality is not None:
                result.append(municipality)
        self.check_unique(entries.items)
        return result

    def string(self, node: _Node, key: str) -> str | None:
        if node.kind != "scalar" or node.is_null:
            self.problem(node, key, "must be a string")
            return None
        if not node.text.strip():
            self.problem(node, key, "must not be empty")
            return None
        return node.text.strip()

    def strings(self, node: _Node, key: str) -> list[tuple[_Node, str]] | None:
        if node.kind != "seq":
            self.problem(node, key, "must be a list, e.g. [a, b]")
            return None
        result = []
        for j, item in enumerate(node.items):
            text = self.string(item, f"{key}[{j}]")
            if text is not None:
                result.append((item, text))
        return result

    def entry(self, node: _Node, path: str) -> Municipality | None:
        if node.kind != "map":
            self.problem(node, path, "must be a mapping (id: …, name: …, …)")
            return None
        before = len(self.problems)
        keys = node.keys
        for key, extra in keys.items():
            if key not in _MAP_KEYS:
                self.problem(extra, f"{path}.{key}", _unknown(key, _MAP_KEYS, "key"))
        fields: dict[str, str | None] = {}
        for key in ("id", "name", "province", "mailbox", "name_fr"):
            child = keys.get(key)
            if child is None or child.is_null:
                if key != "name_fr":
                    self.problem(node, f"{path}.{key}", "missing")
                fields[key] = None
                continue
            fields[key] = self.string(child, f"{path}.{key}")
        ident, province, mailbox = fields["id"], fields["province"], fields["mailbox"]
        if ident is not None and not _SLUG_RE.fullmatch(ident):
            self.problem(keys["id"], f"{path}.id", "must be a slug of a-z, 0-9 and -")
        if province is not None:
            province = province.upper()
            if province not in PROVINCES:
                self.problem(
                    keys["province"],
                    f"{path}.province",
                    f"must be a province or territory code: {' '.join(PROVINCES)}",
                )
                province = None
        if mailbox is not None:
            try:
                mailbox = _check_bare_address(mailbox)
            except ValueError as exc:
                self.problem(keys["mailbox"], f"{path}.mailbox", str(exc))
                mailbox = None

        aliases = self.list_of(keys, "aliases", path, lambda text: text) or []
        prefixes = self.postal_prefixes(keys, path, province)
        agents = self.list_of(keys, "agents", path, _check_agent)
        if agents == []:
            self.problem(
                keys["agents"], f"{path}.agents", "must name at least one address or @domain"
            )
        if agents is None and mailbox is not None:
            agents = ["@" + mailbox.rpartition("@")[2]]
        languages = self.list_of(keys, "languages", path, _one_of(LANGUAGES))
        if languages == []:
            self.problem(keys["languages"], f"{path}.languages", "must list en, fr or both")
        canned = self.canned_replies(keys, path)
        if len(self.problems) > before:
            return None
        assert ident is not None and fields["name"] is not None
        assert province is not None and mailbox is not None
        return Municipality(
            id=ident,
            name=fields["name"],
            province=province,
            mailbox=mailbox,
            name_fr=fields["name_fr"],
            aliases=tuple(dict.fromkeys(aliases)),
            postal_prefixes=tuple(dict.fromkeys(prefixes)),
            agents=tuple(dict.fromkeys(agents or ())),
            languages=tuple(dict.fromkeys(languages or ("en",))),
            canned_replies=tuple(canned),
        )

    def list_of(
        self, keys: Mapping[str, _Node], key: str, path: str, check: Callable[[str], str]
    ) -> list[str] | None:
        """The checked strings of list `key`; None when absent (or broken)."""
        node = keys.get(key)
        if node is None or node.is_null:
            return None
        items = self.strings(node, f"{path}.{key}")
        if items is None:
            return None
        result = []
        for j, (item, text) in enumerate(items):
            try:
                result.append(check(text))
            except ValueError as exc:
                self.problem(item, f"{path}.{key}[{j}]", str(exc))
        return result

    def canned_replies(self, keys: Mapping[str, _Node], path: str) -> list[CannedReply]:
        """`canned_replies: [{title: …, text: …, language: en|fr}, …]` (optional)."""
        node = keys.get("canned_replies")
        if node is None or node.is_null:
            return []
        key = f"{path}.canned_replies"
        if node.kind != "seq":
            self.problem(node, key, "must be a list of {title: …, text: …}")
            return []
        result: list[CannedReply] = []
        seen: dict[tuple[str, str | None], tuple[int, int | None]] = {}
        for j, item in enumerate(node.items):
            item_key = f"{key}[{j}]"
            if item.kind != "map":
                self.problem(item, item_key, "must be a mapping {title: …, text: …}")
                continue
            before = len(self.problems)
            for name, extra in item.keys.items():
                if name not in _CANNED_KEYS:
                    self.problem(extra, f"{item_key}.{name}", _unknown(name, _CANNED_KEYS, "key"))
            values: dict[str, str | None] = {}
            for name in _CANNED_KEYS:
                child = item.keys.get(name)
                if child is None or child.is_null:
                    if name != "language":
                        self.problem(item, f"{item_key}.{name}", "missing")
                    values[name] = None
                    continue
                values[name] = self.string(child, f"{item_key}.{name}")
            text, language = values["text"], values["language"]
            if text is not None and len(text) > CANNED_REPLY_MAX_CHARS:
                self.problem(
                    item.keys["text"],
                    f"{item_key}.text",
                    f"is {len(text)} characters; at most {CANNED_REPLY_MAX_CHARS}",
                )
            if language is not None:
                try:
                    language = _one_of(LANGUAGES)(language)
                except ValueError as exc:
                    self.problem(item.keys["language"], f"{item_key}.language", str(exc))
            title = values["title"]
            if title is not None:
                first = seen.setdefault((_fold(title), language), (j, item.keys["title"].line))
                if first[0] != j:
                    self.problem(
                        item.keys["title"],
                        f"{item_key}.title",
                        f"duplicate title {title!r} (also on line {first[1]})",
                    )
            if len(self.problems) > before:
                continue
            assert title is not None and text is not None
            result.append(CannedReply(title=title, text=text, language=language))
        return result

    def postal_prefixes(
        self, keys: Mapping[str, _Node], path: str, province: str | None
    ) -> list[str]:
        node = keys.get("postal_prefixes")
        if node is None or node.is_null:
            return []
        items = self.strings(node, f"{path}.postal_prefixes")
        result = []
        for j, (item, text) in enumerate(items or []):
            key = f"{path}.postal_prefixes[{j}]"
            prefix = _normalize_fsa(text)
            if not _FSA_RE.fullmatch(prefix):
                self.problem(
                    item,
                    key,
                    f"{_shown(text)} is not a postal code prefix (FSA, e.g. K1A, K1 or K)",
                )
                continue
            provinces = FSA_PROVINCES[prefix[0]]
            if province is not None and province not in provinces:
                self.problem(
                    item,
                    key,
                    f"{prefix} is a postal prefix of {' or '.join(provinces)}, not {province}",
                )
                continue
            result.append(prefix)
        return result

    def check_unique(self, entries: list[_Node]) -> None:
        """Ids, aliases and postal prefixes each belong to one municipality."""
        ids: dict[str, int | None] = {}
        claims: dict[tuple[str, str], tuple[tuple[int, str], int | None]] = {}
        for i, entry in enumerate(entries):
            if entry.kind != "map":
                continue
            path = f"municipalities[{i}]"
            id_node = entry.keys.get("id")
            ident = id_node.text.strip() if id_node is not None and id_node.kind == "scalar" else ""
            if id_node is not None and ident:
                if ident in ids:
                    self.problem(
                        id_node, f"{path}.id", f"duplicate id {ident!r} (also on line {ids[ident]})"
                    )
                else:
                    ids[ident] = id_node.line
            owner = (i, ident or path)
            for key, what, norm in (
                ("aliases", "alias", _fold),
                ("postal_prefixes", "postal prefix", _normalize_fsa),
            ):
                node = entry.keys.get(key)
                if node is None or node.kind != "seq":
                    continue
                seen_here: set[str] = set()
                for j, item in enumerate(node.items):
                    if item.kind != "scalar" or item.is_null or not item.text.strip():
                        continue
                    value = norm(item.text)
                    if value in seen_here:
                        continue
                    seen_here.add(value)
                    other = claims.setdefault((key, value), (owner, item.line))
                    if other[0] != owner:
                        self.problem(
                            item,
                            f"{path}.{key}[{j}]",
                            f"{what} {item.text.strip()!r} is also claimed by "
                            f"{other[0][1]!r} (line {other[1]})",
                        )


def _read_map(path: Path) -> tuple[list[Municipality], list[Problem]]:
    src = str(path)
    problems: list[Problem] = []
    text = _read_text(path, problems)
    if text is None:
        return [], problems
    root = _parse_yaml(src, text, problems)
    if problems:
        return [], problems
    reader = _MapReader(src)
    municipalities = reader.read(root)
    return municipalities, _in_order(reader.problems, src)


def load_municipality_map(path: Path) -> list[Municipality]:
    """Read and validate municipality_map.yaml (format in DESIGN.md).

    Postal prefixes come back upper case without spaces; `agents` defaults to the mailbox's
    "@domain", `languages` to ("en",); `canned_replies` (optional: a list of `{title, text,
    language}`, text at most 1600 characters, language en|fr or absent) become
    `CannedReply`s. Raises ConfigError with every problem found.
    """
    municipalities, problems = _read_map(path)
    if problems:
        raise ConfigError(problems)
    return municipalities


# --------------------------------------------------------------------------------------------
# check-config and where the settings file is


def check_config(path: Path, environ: Mapping[str, str] | None = None) -> list[Problem]:
    """Every problem with the settings file (and environment) and the municipality map it names."""
    result = _read_settings(path, environ)
    problems = list(result.problems)
    if result.map_path is not None:
        if not result.map_path.exists():
            file, line = result.map_where
            problems.append(
                Problem(file, line, "municipality_map", f"file not found: {result.map_path}")
            )
        else:
            problems.extend(_read_map(result.map_path)[1])
    return problems


def config_path_from(argv_value: str | None, environ: Mapping[str, str] | None = None) -> Path:
    """The settings file: `--config` wins, else GATEWAY_CONFIG, else /etc/sms311/sms311.yaml."""
    if argv_value:
        return Path(argv_value)
    env = os.environ if environ is None else environ
    value = env.get(ENV_CONFIG)
    if value is None:
        value = next((v for k, v in env.items() if k.upper() == ENV_CONFIG), None)
    return Path(value) if value else DEFAULT_CONFIG_PATH
