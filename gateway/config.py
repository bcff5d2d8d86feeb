"""Settings: load and validate the YAML file and the environment.

Errors name the file, the line and the key (`file:line: key: message`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class WebSettings:
    listen: str = "127.0.0.1:8311"


@dataclass(frozen=True)
class SmsSettings:
    provider: str = "sandbox"  # twilio | sandbox
    account_sid: str = ""
    auth_token: str = ""
    sender: str = ""
    api_base_url: str = "https://api.twilio.com"
    max_per_second: float = 1.0
    default_region: str = "CA"


@dataclass(frozen=True)
class SmtpSettings:
    host: str = "127.0.0.1"
    port: int = 587
    username: str | None = None
    password: str | None = None
    security: str = "starttls"  # none | starttls | tls
    timeout: float = 30.0


@dataclass(frozen=True)
class ImapSettings:
    host: str
    port: int = 993
    username: str = ""
    password: str = ""
    security: str = "tls"  # none | starttls | tls
    mailbox: str = "INBOX"
    processed_mailbox: str = "Processed"
    failed_mailbox: str = "Failed"


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
class Settings:
    config_path: Path  # the settings file; relative paths are resolved against its folder
    database: str
    municipality_map: Path  # absolute
    public_url: str
    email: EmailSettings
    web: WebSettings = field(default_factory=WebSettings)
    sms: SmsSettings = field(default_factory=SmsSettings)
    fallback_mailbox: str | None = None
