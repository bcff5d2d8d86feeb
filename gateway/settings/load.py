"""Loading the settings file: YAML, environment overrides, checks, cross-checks, the dataclasses.

Contract:

- `load_settings(path, environ=None) -> Settings`: read the settings file, apply the
  `GATEWAY_<SECTION>__<KEY>` environment overrides, validate everything against `SCHEMA`
  (derived from `model.py`), and raise `ConfigError` listing *every* problem found.
- `check_config(path, environ=None) -> list[Problem]`: the settings and the municipality map
  they name, problems only (empty: the configuration is usable). `sms311 check-config`.
- `config_path_from(argv_value, environ) -> Path`: `--config`, else `GATEWAY_CONFIG`, else
  `DEFAULT_CONFIG_PATH`.

Rules:

- A key absent from the file (and the environment) takes its declared default; the
  dataclasses are built from the keys given, so the default applied is the declared one.
- Relative paths (`municipality_map`, `state_dir`, a `sqlite:///relative.db` file) are resolved
  against the folder of the settings file (each such key's `resolve=`).
- Environment variables: `GATEWAY_` + the key path in upper or lower case, with `__` between
  levels (`GATEWAY_SMS__AUTH_TOKEN`, `GATEWAY_EMAIL__SMTP__PASSWORD`, `GATEWAY_PUBLIC_URL`).
  A value is read as a YAML scalar where the setting is a number (`"100"` -> 100), and taken
  verbatim where it is a string (so a password like `0123` or `#x` stays as written); an empty
  value unsets an optional setting. A list setting is written `a, b` (or `[a, b]`).
  `GATEWAY_CONFIG` (the settings file) and `GATEWAY_TEST_*`
  are not settings; any other unknown `GATEWAY_` variable is a problem.
- String settings take the YAML scalar's text as written, so `sender: 31100` is the string
  "31100" (not a YAML number).
- Secret values (tokens, passwords, the database URL, console.secret_key) never appear in
  a message.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.settings.declare import Kind, Leaf, Section
from gateway.settings.model import SCHEMA, Settings
from gateway.settings.municipality_map import read_map
from gateway.settings.problems import ConfigError, Problem, in_order, suggest, unknown
from gateway.settings.yaml_lines import Node, join, parse_yaml, read_text, yaml_scalar

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "ENV_CONFIG",
    "ENV_PREFIX",
    "ENV_TEST_PREFIX",
    "check_config",
    "config_path_from",
    "default_of",
    "env_name",
    "leaf_of",
    "load_settings",
]

DEFAULT_CONFIG_PATH = Path("/etc/sms311/sms311.yaml")
ENV_PREFIX = "GATEWAY_"
ENV_CONFIG = "GATEWAY_CONFIG"
ENV_TEST_PREFIX = "GATEWAY_TEST_"

_TYPE_NAMES: Mapping[Kind, str] = {
    "str": "must be a string",
    "int": "must be a whole number",
    "number": "must be a number",
    "bool": "must be true or false",
    "strings": "must be a list of strings ([a, b])",
}


def env_name(path: str) -> str:
    """The environment variable of dotted key `path`: sms.auth_token -> GATEWAY_SMS__AUTH_TOKEN."""
    return ENV_PREFIX + path.replace(".", "__").upper()


def _schema_node(dotted: str) -> Leaf | Section:
    spec: Leaf | Section = SCHEMA
    for part in dotted.split("."):
        assert isinstance(spec, Section)
        spec = spec.keys[part]
    return spec


def leaf_of(dotted: str) -> Leaf:
    """The declaration of key `dotted` (e.g. "sms.provider")."""
    spec = _schema_node(dotted)
    assert isinstance(spec, Leaf), dotted
    return spec


def default_of(dotted: str) -> Any:
    """The declared default of key `dotted` (as written, before `resolve`)."""
    leaf = leaf_of(dotted)
    assert not leaf.required, f"{dotted} is required"
    return leaf.default


# --------------------------------------------------------------------------------------------
# Validation against the schema


@dataclass
class _Collected:
    """Validated values by dotted key, where each came from, and the problems."""

    values: dict[str, Any] = field(default_factory=dict)
    where: dict[str, tuple[str, int | None]] = field(default_factory=dict)
    sections: set[str] = field(default_factory=set)
    problems: list[Problem] = field(default_factory=list)

    def problem(self, where: tuple[str, int | None], key: str, message: str) -> None:
        self.problems.append(Problem(where[0], where[1], key, message))

    def value(self, key: str) -> Any:
        """The validated value of `key`, else its declared default."""
        return self.values[key] if key in self.values else default_of(key)


def _leaf_value(leaf: Leaf, node: Node) -> Any:
    """The node's value as `leaf.kind`, or raise ValueError with the type message."""
    if leaf.kind == "strings":
        if node.kind != "seq":
            raise ValueError(_TYPE_NAMES[leaf.kind])
        items = []
        for item in node.items:
            if item.kind != "scalar" or item.is_null or not item.text.strip():
                raise ValueError(_TYPE_NAMES[leaf.kind])
            items.append(item.text.strip())
        return tuple(items)
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
    section: Section,
    node: Node | None,
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
            out.problem((extra.src, extra.line), join(path, key), unknown(key, section.keys))
    for key, spec in section.keys.items():
        child = present.get(key)
        key_path = join(path, key)
        if isinstance(spec, Section):
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


def _missing(key_path: str, leaf: Leaf, why: str = "") -> str:
    notes = [why] if why else []
    if leaf.secret:
        notes.append(f"set it here or with {env_name(key_path)}")
    return f"missing ({'; '.join(notes)})" if notes else "missing"


# --------------------------------------------------------------------------------------------
# The environment


def _apply_environment(
    root: Node, environ: Mapping[str, str], settings_src: str, out: _Collected
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
        spec: Leaf | Section = SCHEMA
        node = root
        for i, part in enumerate(parts):
            assert isinstance(spec, Section)
            child_spec = spec.keys.get(part)
            if child_spec is None:
                guess = suggest(part, spec.keys)
                hint = ""
                if guess is not None:
                    hint = f" (did you mean {env_name(join('.'.join(parts[:i]), guess))}?)"
                out.problem((name, None), dotted, "unknown setting" + hint)
                break
            last = i == len(parts) - 1
            if last and isinstance(child_spec, Section):
                out.problem((name, None), dotted, f"is a section: set its keys with {name}__<KEY>")
                break
            if last:
                assert isinstance(child_spec, Leaf)
                node.keys[part] = _env_node(name, environ[name], child_spec)
                break
            if isinstance(child_spec, Leaf):
                prefix = ".".join(parts[: i + 1])
                out.problem((name, None), dotted, f"unknown setting ({prefix} is not a section)")
                break
            existing = node.keys.get(part)
            if existing is None or existing.is_null:
                existing = node.keys[part] = Node(settings_src, None, "map")
            elif existing.kind != "map":
                break  # the file's value is wrong; that problem is reported by the validation
            node, spec = existing, child_spec


def _env_node(name: str, raw: str, leaf: Leaf) -> Node:
    if leaf.kind == "strings":  # "a, b" (or "[a, b]"); empty unsets it
        words = [w.strip() for w in raw.strip().strip("[]").split(",") if w.strip()]
        if not raw.strip():
            return Node(name, None, "scalar", value=None, text="")
        items = [Node(name, None, "scalar", value=w, text=w) for w in words]
        return Node(name, None, "seq", items=items)
    if leaf.kind == "str":
        return Node(name, None, "scalar", value=raw if raw else None, text=raw)
    return Node(name, None, "scalar", value=yaml_scalar(raw.strip()), text=raw)


# --------------------------------------------------------------------------------------------
# Reading, cross-checks, building


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
    text = read_text(path, out.problems)
    if text is None:
        return _SettingsResult(None, out.problems, None, map_where)
    root = parse_yaml(src, text, out.problems)
    if out.problems:
        return _SettingsResult(None, out.problems, None, map_where)
    if root is None or root.is_null:
        root = Node(src, None, "map")
    if root.kind != "map":
        out.problem(
            (src, root.line), "", "the settings file must be a mapping of keys (key: value)"
        )
        return _SettingsResult(None, out.problems, None, map_where)
    _apply_environment(root, env, src, out)
    _validate(SCHEMA, root, "", (src, None), out)
    _cross_check(out, src)

    folder = Path(os.path.abspath(path)).parent
    map_leaf = leaf_of("municipality_map")
    assert map_leaf.resolve is not None
    map_path: Path = map_leaf.resolve(out.value("municipality_map"), folder)
    map_where = out.where.get("municipality_map", (src, None))
    if out.problems:
        return _SettingsResult(None, in_order(out.problems, src), map_path, map_where)
    settings = _build(SCHEMA, "", out, folder, config_path=Path(os.path.abspath(path)))
    assert isinstance(settings, Settings)
    return _SettingsResult(settings, [], map_path, map_where)


def _cross_check(out: _Collected, src: str) -> None:
    """Rules that involve more than one key."""
    v = out.values
    sms_where = out.where.get("sms", (src, None))
    provider = out.value("sms.provider")
    if provider == "twilio" and ("sms.provider" in v or "sms.provider" not in out.where):
        for key in ("account_sid", "auth_token", "sender"):
            key_path = f"sms.{key}"
            if key_path not in out.where:
                leaf = leaf_of(key_path)
                out.problem(sms_where, key_path, _missing(key_path, leaf, "sms.provider is twilio"))
    both_or_neither = (
        ("email.smtp.username", "email.smtp.password"),
        ("email.ingress.username", "email.ingress.password"),
        ("email.ingress.tls_certificate", "email.ingress.tls_key"),
    )
    for first, second in both_or_neither:
        if (first in out.where) != (second in out.where):
            given, absent = (first, second) if first in out.where else (second, first)
            out.problem(
                out.where[given], absent, _missing(absent, leaf_of(absent), f"{given} is set")
            )
    if "email.imap" in out.sections:
        imap_where = out.where.get("email.imap", (src, None))
        inbox = out.value("email.imap.mailbox")
        for key in ("processed_mailbox", "failed_mailbox"):
            key_path = f"email.imap.{key}"
            if out.value(key_path) == inbox:
                where = out.where.get(key_path, imap_where)
                out.problem(where, key_path, "must differ from email.imap.mailbox")
    base = out.value("outbox.base_backoff_seconds")
    cap_key = "outbox.max_backoff_seconds"
    if cap_key in v and v[cap_key] < base:
        out.problem(out.where[cap_key], cap_key, "must be at least outbox.base_backoff_seconds")
    poll_key, presence_key = "console.poll_seconds", "console.presence_seconds"
    poll, presence = out.value(poll_key), out.value(presence_key)
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
    if "email.ingress" in out.sections:
        listen_key = "email.ingress.listen"
        if _same_socket(out.value(listen_key), out.value("web.listen")):
            where = out.where.get(listen_key, out.where.get("email.ingress", (src, None)))
            out.problem(where, listen_key, "must differ from web.listen")
    metrics_key = "web.metrics_listen"
    if metrics_key in v:
        others = ["web.listen"]
        if "email.ingress" in out.sections:
            others.append("email.ingress.listen")
        for other in others:
            if _same_socket(out.value(metrics_key), out.value(other)):
                out.problem(out.where[metrics_key], metrics_key, f"must differ from {other}")


def _same_socket(a: str, b: str) -> bool:
    """Would two "host:port" listeners collide (same port, same or wildcard host)?"""
    host_a, _, port_a = a.rpartition(":")
    host_b, _, port_b = b.rpartition(":")
    wildcard = ("0.0.0.0", "[::]", "*")  # noqa: S104 - compared, not bound
    return port_a == port_b and (host_a == host_b or host_a in wildcard or host_b in wildcard)


def _build(section: Section, prefix: str, out: _Collected, folder: Path, **extra: Any) -> Any:
    """The dataclass of `section` from the validated values (absent keys: the dataclass default,
    resolved against `folder` where the key says so); optional sections absent stay None."""
    kwargs: dict[str, Any] = dict(extra)
    for key, spec in section.keys.items():
        key_path = join(prefix, key)
        if isinstance(spec, Section):
            if key_path in out.sections:
                kwargs[key] = _build(spec, key_path, out, folder)
        elif key_path in out.values:
            value = out.values[key_path]
            kwargs[key] = value if spec.resolve is None else spec.resolve(value, folder)
        elif spec.resolve is not None and not spec.required:
            kwargs[key] = spec.resolve(spec.default, folder)
    assert section.cls is not None
    return section.cls(**kwargs)


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
            problems.extend(read_map(result.map_path)[1])
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
