"""Settings: the settings file and the environment, the municipality map, the census directory.

This package's public surface (what the rest of the gateway imports) is re-exported here;
each job has its module:

- `model`: the settings dataclasses, each key declared once (type, default, check, secret,
  help); `declare`: how a key is declared and the schema derived from the declarations.
- `load`: the settings file read with line numbers, `GATEWAY_<SECTION>__<KEY>` environment
  overrides, checks and cross-checks, the dataclasses built; `check_config`, `config_path_from`.
- `checks`: value checks (`check_email_address` among them).
- `municipality_map`: the map's keys and its reader (`load_municipality_map`).
- `problems`: `Problem` (`file:line: key: message`) and `ConfigError` (every problem at once).
- `yaml_lines`: YAML with line numbers, shared by the settings file and the map.
- `directory_build`: `sms311 directory build` (the census directory); not imported here.

Public API:

- `load_settings(path, environ=None) -> Settings`: read the settings file, apply the
  environment overrides, validate everything, and raise `ConfigError` listing *every* problem
  found (never only the first).
- `load_municipality_map(path) -> list[Municipality]`: read and validate `municipality_map.yaml`.
- `check_config(path, environ=None) -> list[Problem]`: both of the above, problems only
  (an empty list means the configuration is usable). `sms311 check-config` prints them.
- `config_path_from(argv_value, environ) -> Path`: `--config`, else `GATEWAY_CONFIG`, else
  `DEFAULT_CONFIG_PATH` (`/etc/sms311/sms311.yaml`).
- `check_email_address(value) -> str`: a bare `name@domain`, stripped, or ValueError(why).
- `console:` (optional) tunes the staff console (`ConsoleSettings`); without
  `console.secret_key` the console keeps a generated secret in the database.
"""

from __future__ import annotations

from gateway.settings.checks import check_email_address
from gateway.settings.load import (
    DEFAULT_CONFIG_PATH,
    check_config,
    config_path_from,
    load_settings,
)
from gateway.settings.model import (
    ConsoleSettings,
    ConversationSettings,
    EmailSettings,
    ImapSettings,
    IngressSettings,
    OutboxSettings,
    PrivacySettings,
    Settings,
    SmsSettings,
    SmtpSettings,
    WebSettings,
)
from gateway.settings.municipality_map import load_municipality_map
from gateway.settings.problems import ConfigError, Problem

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "ConfigError",
    "ConsoleSettings",
    "ConversationSettings",
    "EmailSettings",
    "ImapSettings",
    "IngressSettings",
    "OutboxSettings",
    "PrivacySettings",
    "Problem",
    "Settings",
    "SmsSettings",
    "SmtpSettings",
    "WebSettings",
    "check_config",
    "check_email_address",
    "config_path_from",
    "load_municipality_map",
    "load_settings",
]
