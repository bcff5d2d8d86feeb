"""Value checks: each takes a value as written and returns the value to keep, or raises
`ValueError(message)`; the loader turns the message into `file:line: key: message`.

Contract:

- A check never names the key (the loader does) and never shows a secret; `shown(value)`
  quotes a non-secret value, cut short, for a message.
- Checks normalise as they accept: strings are stripped, `postgres://` becomes
  `postgresql://`, a region is upper-cased, a URL loses its trailing slash.
- `one_of(choices, upper=False)` builds the check of a closed list (lower-cased, or
  upper-cased).
- `resolve_path` and `resolve_database` turn a checked value into the field's value, given the
  settings file's folder (relative paths are relative to it).
- `check_email_address` is public (`gateway.settings.check_email_address`): the console and
  the CLI check addresses with it.
"""

from __future__ import annotations

import email.utils
import ipaddress
import math
import os
import re
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import phonenumbers

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
DOMAIN_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_LOCAL_RE = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
_SENDER_RE = re.compile(r"[0-9]{3,8}|\+[1-9][0-9]{6,14}|MG[0-9a-fA-F]{32}")


def shown(value: str) -> str:
    """A non-secret value, quoted and cut short, for a message."""
    return repr(value if len(value) <= 40 else value[:37] + "...")


def one_of(choices: tuple[str, ...], *, upper: bool = False) -> Callable[[str], str]:
    def check(value: str) -> str:
        norm = value.strip().upper() if upper else value.strip().lower()
        if norm not in choices:
            raise ValueError(f"must be one of {', '.join(choices)} (not {shown(value)})")
        return norm

    return check


# --------------------------------------------------------------------------------------------
# Addresses and URLs


def check_email_address(value: str) -> str:
    """A bare address (`name@domain`), stripped; raises ValueError(why) when it is not one."""
    value = value.strip()
    local, at, domain = value.rpartition("@")
    if not at or not _LOCAL_RE.fullmatch(local) or not DOMAIN_RE.fullmatch(domain):
        raise ValueError("is not a valid email address (expected name@domain)")
    return value


def check_address(value: str) -> str:
    """A single address, bare or with a display name: `311 Text <sms@example.ca>`."""
    value = value.strip()
    if len(email.utils.getaddresses([value])) != 1:
        raise ValueError("must be a single email address")
    _name, addr = email.utils.parseaddr(value)
    if not addr or ("<" in value and f"<{addr}>" not in value):
        raise ValueError("is not a valid email address (expected name@domain)")
    check_email_address(addr)
    return value


def check_reply_address(value: str) -> str:
    value = value.strip()
    if value.count("{token}") != 1:
        raise ValueError('must contain "{token}" once, e.g. "reply+{token}@gateway.example.ca"')
    rest = value.replace("{token}", "")
    if "{" in rest or "}" in rest:
        raise ValueError('must not contain braces other than "{token}"')
    local, _at, _domain = value.rpartition("@")
    if "{token}" not in local:
        raise ValueError('"{token}" must be in the part before the @')
    check_email_address(value.replace("{token}", "token"))
    return value


def check_http_url(value: str) -> str:
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


def check_listen(value: str) -> str:
    value = value.strip()
    host, colon, port = value.rpartition(":")
    if not colon or not host or not port.isdigit():
        raise ValueError('must be "host:port", e.g. "127.0.0.1:8311"')
    if host.startswith("[") != host.endswith("]") or (":" in host and not host.startswith("[")):
        raise ValueError('must be "host:port"; write an IPv6 address in brackets: "[::1]:8311"')
    if not 1 <= int(port) <= 65535:
        raise ValueError("port must be between 1 and 65535")
    return value


def check_database(value: str) -> str:
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


# --------------------------------------------------------------------------------------------
# Numbers


def check_port(value: int) -> int:
    if not 1 <= value <= 65535:
        raise ValueError("must be between 1 and 65535")
    return value


def check_positive(value: float) -> float:
    if not math.isfinite(value) or value <= 0:
        raise ValueError("must be greater than 0")
    return value


def check_idle_restart(value: float) -> float:
    if not math.isfinite(value) or not 10 <= value <= 29 * 60:
        raise ValueError("must be between 10 and 1740 seconds (servers end IDLE after 30 min)")
    return value


def check_takeover(value: float) -> float:
    if not math.isfinite(value) or not 1 <= value <= 3600:
        raise ValueError(
            "must be between 1 and 3600 seconds (claims are renewed every third of it)"
        )
    return value


def check_not_negative(value: int) -> int:
    if value < 0:
        raise ValueError("must be 0 or more")
    return value


def check_at_least_one(value: int) -> int:
    if value < 1:
        raise ValueError("must be at least 1")
    return value


# --------------------------------------------------------------------------------------------
# Other strings


def check_secret_key(value: str) -> str:
    if len(value.strip()) < 32:
        raise ValueError(
            "must be at least 32 characters (e.g. the output of `openssl rand -hex 32`)"
        )
    return value.strip()


_AUTHSERV_ID_RE = re.compile(r"[A-Za-z0-9!#$%&'*+./^_`{|}~-]+")


def check_authserv_ids(value: tuple[str, ...]) -> tuple[str, ...]:
    """Authentication-Results authserv-ids (RFC 8601: a hostname, usually), lower-cased."""
    out: list[str] = []
    for item in value:
        if not _AUTHSERV_ID_RE.fullmatch(item):
            raise ValueError(f"{shown(item)} is not an authserv-id (a name: mx.city.example)")
        if item.lower() not in out:
            out.append(item.lower())
    return tuple(out)


def check_not_empty(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value.strip()


def check_region(value: str) -> str:
    region = value.strip().upper()
    if region not in phonenumbers.SUPPORTED_REGIONS:
        raise ValueError(f"{shown(value)} is not a phone region code (two letters, e.g. CA)")
    return region


def check_sender(value: str) -> str:
    value = value.strip()
    if not _SENDER_RE.fullmatch(value):
        raise ValueError(
            "must be a short code (digits), an E.164 number (+16135550123) "
            "or a Messaging Service SID (MG…)"
        )
    return value


# --------------------------------------------------------------------------------------------
# Values relative to the settings file's folder


def resolve_path(value: str | Path, folder: Path) -> Path:
    """`value` (`~` expanded) relative to `folder`, normalised."""
    return Path(os.path.normpath(folder / Path(value).expanduser()))


def resolve_database(url: str, folder: Path) -> str:
    """A `sqlite:///relative.db` URL made absolute against `folder`; other URLs unchanged."""
    if not url.startswith("sqlite:///"):
        return url
    rest = url[len("sqlite:///") :]
    file, q, query = rest.partition("?")
    if file == ":memory:" or file.startswith("/"):
        return url
    return f"sqlite:///{resolve_path(file, folder)}{q}{query}"


# --------------------------------------------------------------------------------------------
# The reply ingress (email.ingress)


def check_ingress_timeout(value: float) -> float:
    if not math.isfinite(value) or not 1 <= value <= 3600:
        raise ValueError("must be between 1 and 3600 seconds")
    return value


def check_networks(value: tuple[str, ...]) -> tuple[str, ...]:
    """IP addresses or networks ("127.0.0.1", "10.0.0.0/8", "::1"), each normalised
    ("10.0.0.0/8", "127.0.0.1/32"); a network with host bits set is refused (a typo)."""
    out: list[str] = []
    for item in value:
        try:
            network = ipaddress.ip_network(item.strip())
        except ValueError as exc:
            why = "has host bits set" if "host bits set" in str(exc) else "is not valid"
            raise ValueError(
                f"{shown(item)} {why}: write an IP address or network (127.0.0.1, "
                "10.0.0.0/8, ::1)"
            ) from None
        if str(network) not in out:
            out.append(str(network))
    return tuple(out)


def resolve_optional_path(value: str | Path | None, folder: Path) -> Path | None:
    """`resolve_path` for a path that may be unset (None stays None)."""
    return None if value is None else resolve_path(value, folder)
