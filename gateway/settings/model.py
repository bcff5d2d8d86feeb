"""The settings: every key declared once, as a field of a frozen dataclass.

Contract:

- The rest of the gateway reads these dataclasses (`settings.sms.provider`, typed).
- Each key is one `setting(...)` line: its type (the annotation), its default (none: required),
  its check, whether it is secret, how it is resolved against the settings file's folder, and
  its help. The loader's schema (`SCHEMA`), the defaults it applies, the environment variables
  it accepts and its "missing" messages are all derived from these lines (`declare.derive`),
  so they cannot disagree.
- A key in the file is the field's name; a section is a field typed with another section
  (`email.smtp` is `Settings.email.smtp`); `X | None = None` is an optional section.
- Rules involving several keys (e.g. `sms.provider: twilio` needs the credentials) are
  cross-checks in `load.py`.
"""

from __future__ import annotations

from dataclasses import field
from pathlib import Path

from gateway.settings.checks import (
    check_address,
    check_at_least_one,
    check_authserv_ids,
    check_database,
    check_http_url,
    check_idle_restart,
    check_ingress_timeout,
    check_listen,
    check_networks,
    check_not_empty,
    check_not_negative,
    check_port,
    check_positive,
    check_region,
    check_reply_address,
    check_secret_key,
    check_sender,
    check_takeover,
    one_of,
    resolve_database,
    resolve_optional_path,
    resolve_path,
)
from gateway.settings.declare import Section, derive, not_a_setting, section, setting

__all__ = [
    "LOG_LEVELS",
    "MAIL_SECURITY",
    "SCHEMA",
    "SENDER_AUTHENTICATION",
    "SMS_PROVIDERS",
    "ConsoleSettings",
    "ConversationSettings",
    "EmailSettings",
    "ImapSettings",
    "IngressSettings",
    "OutboxSettings",
    "PrivacySettings",
    "Settings",
    "SmsSettings",
    "SmtpSettings",
    "WebSettings",
]

SMS_PROVIDERS = ("twilio", "sandbox")
MAIL_SECURITY = ("none", "starttls", "tls")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
SENDER_AUTHENTICATION = ("required", "off")

_security = one_of(MAIL_SECURITY)


@section
class WebSettings:
    listen: str = setting(
        default="127.0.0.1:8311", check=check_listen, help="host:port the web half listens on"
    )
    trusted_proxies: int = setting(
        default=0,
        check=check_not_negative,
        help="reverse proxies in front of the web half whose X-Forwarded-For / -Proto to "
        "believe (0: none); the console's per-address sign-in limit needs the client's address",
    )
    metrics_listen: str | None = setting(
        default=None,
        check=check_listen,
        help="host:port of a second, internal listener for /metrics and the detailed /healthz "
        "(bind it to loopback or a private network); unset: /metrics is on `listen`",
    )


@section
class SmsSettings:
    provider: str = setting(
        default="twilio",
        check=one_of(SMS_PROVIDERS),
        help="twilio (also Twilio-compatible APIs) or sandbox (texts recorded to "
        "state_dir/sms.jsonl)",
    )
    account_sid: str = setting(
        default="", check=check_not_empty, help="the provider account (needed for twilio)"
    )
    auth_token: str = setting(
        default="", secret=True, help="the provider's API secret (needed for twilio)"
    )
    sender: str = setting(
        default="",
        check=check_sender,
        help="short code, E.164 number or Messaging Service SID (MG…); needed for twilio",
    )
    api_base_url: str = setting(
        default="https://api.twilio.com",
        check=check_http_url,
        help="any Twilio-compatible API (SignalWire, a local fake)",
    )
    max_per_second: float = setting(
        default=1.0, check=check_positive, help="segments per second the sender may send"
    )
    default_region: str = setting(
        default="CA", check=check_region, help="region of numbers written without +country"
    )


@section
class SmtpSettings:
    host: str = setting(check=check_not_empty, help="the SMTP server emails are sent through")
    port: int = setting(default=587, check=check_port, help="the SMTP server's port")
    username: str | None = setting(
        default=None, help="SMTP sign-in name (with password, or neither)"
    )
    password: str | None = setting(
        default=None, secret=True, help="SMTP password (with username, or neither)"
    )
    security: str = setting(default="starttls", check=_security, help="none | starttls | tls")
    timeout: float = setting(default=30.0, check=check_positive, help="seconds for each SMTP step")
    connections: int = setting(
        default=4,
        check=check_at_least_one,
        help="SMTP connections the worker keeps open and sends on at once (reused; "
        "one closed after 10 s idle)",
    )


@section
class ImapSettings:
    host: str = setting(check=check_not_empty, help="the IMAP server replies are read from")
    port: int = setting(default=993, check=check_port, help="the IMAP server's port")
    username: str = setting(help="IMAP sign-in name")
    password: str = setting(secret=True, help="IMAP password")
    security: str = setting(default="tls", check=_security, help="none | starttls | tls")
    mailbox: str = setting(default="INBOX", check=check_not_empty, help="where replies arrive")
    processed_mailbox: str = setting(
        default="Processed", check=check_not_empty, help="where a handled reply is moved"
    )
    failed_mailbox: str = setting(
        default="Failed", check=check_not_empty, help="where a reply that was not texted is moved"
    )
    idle_restart_seconds: float = setting(
        default=300.0,
        check=check_idle_restart,
        help="IDLE is restarted this often; a connection that died silently is noticed then",
    )


@section
class IngressSettings:
    listen: str = setting(
        default="127.0.0.1:2525",
        check=check_listen,
        help="host:port of the SMTP/LMTP ingress that receives replies (instead of IMAP)",
    )
    max_connections: int = setting(
        default=100,
        check=check_at_least_one,
        help="connections at once; beyond it a sender is answered 421 (try later) and closed",
    )
    idle_timeout_seconds: float = setting(
        default=60.0,
        check=check_ingress_timeout,
        help="a connection that sends nothing for this long is closed (1–3600)",
    )
    allowed_peers: tuple[str, ...] = setting(
        default=(),
        check=check_networks,
        help="IP addresses or networks that may connect ([127.0.0.1, 10.0.0.0/8, ::1]); "
        "any other is answered 554; empty: anyone",
    )
    username: str | None = setting(
        default=None,
        check=check_not_empty,
        help="with password: senders must sign in (SMTP AUTH) before MAIL FROM",
    )
    password: str | None = setting(
        default=None, secret=True, help="the ingress's AUTH password (with username, or neither)"
    )
    tls_certificate: Path | None = setting(
        default=None,
        check=check_not_empty,
        resolve=resolve_optional_path,
        help="PEM certificate (chain) for STARTTLS, with tls_key; AUTH needs TLS except "
        "from a loopback peer",
    )
    tls_key: Path | None = setting(
        default=None,
        check=check_not_empty,
        resolve=resolve_optional_path,
        help="the certificate's PEM private key (with tls_certificate)",
    )


@section
class EmailSettings:
    from_address: str = setting(
        check=check_address, help='the From of emails: "311 Text <sms@gateway.example.ca>"'
    )
    reply_address: str = setting(
        check=check_reply_address,
        help='the Reply-To, with "{token}" once before the @: "reply+{token}@gateway.example.ca"',
    )
    sender_authentication: str = setting(
        default="required",
        check=one_of(SENDER_AUTHENTICATION),
        help="required: a reply is acted on only when its From domain is authenticated (a DKIM "
        "signature the gateway verifies, or a trusted Authentication-Results); off: From is "
        "believed as written (a WARNING at every start)",
    )
    trusted_authserv_ids: tuple[str, ...] = setting(
        default=(),
        check=check_authserv_ids,
        help="authserv-ids of the mail servers whose Authentication-Results (RFC 8601) are "
        "believed: only the topmost ones, added after the message reached them",
    )
    smtp: SmtpSettings
    imap: ImapSettings | None = None
    ingress: IngressSettings | None = None


@section
class OutboxSettings:
    """Retries of the outbox: capped exponential backoff, then the item is parked."""

    max_attempts: int = setting(
        default=12,
        check=check_at_least_one,
        help="attempts before an email is parked (and reported)",
    )
    base_backoff_seconds: float = setting(
        default=1.0,
        check=check_positive,
        help="first retry delay; doubles each attempt (±20% jitter)",
    )
    max_backoff_seconds: float = setting(
        default=300.0,
        check=check_positive,
        help="the cap of the retry delay, so recovery after an outage is quick",
    )
    # A claimed row is this worker's while it renews the claim (every third of
    # takeover_seconds): the rows of a worker that died are taken over by another within
    # takeover_seconds. A live worker renews a row for at most lease_seconds of sending:
    # a send stuck for longer (longer than any SMTP/API timeout) is left to another worker,
    # which looks an SMS up at the provider first.
    lease_seconds: float = setting(
        default=120.0,
        check=check_positive,
        help="the longest one send keeps its row; after this it may be taken over",
    )
    takeover_seconds: float = setting(
        default=10.0,
        check=check_takeover,
        help="a claimed row's claim lasts this long unless renewed (1–3600)",
    )


@section
class ConversationSettings:
    """When a conversation (one email thread) ends."""

    idle_close_hours: float = setting(
        default=72.0,
        check=check_positive,
        help="no message either way for this long: the resident's next text starts a new thread",
    )


@section
class PrivacySettings:
    """How long message texts are kept."""

    retention_days: int = setting(
        default=365,
        check=check_not_negative,
        help="texts older than this are blanked (counts kept); 0 keeps them for ever",
    )
    log_full_detail: bool = setting(
        default=False,
        help="DEBUG logs may then show full numbers and texts (never at INFO): debugging only",
    )


@section
class ConsoleSettings:
    """The staff web console (`/console/…`)."""

    secret_key: str | None = setting(
        default=None,
        secret=True,
        check=check_secret_key,
        help="signs console sessions and CSRF tokens (at least 32 characters); without it one "
        "is generated once and kept in the database, so every instance shares it",
    )
    session_hours: float = setting(
        default=12.0,
        check=check_positive,
        help="a console session ends after this long without a request (idle timeout; "
        "each request starts it again)",
    )
    session_max_hours: float = setting(
        default=12.0,
        check=check_positive,
        help="a console session ends this long after its sign-in, however active "
        "(absolute lifetime): the user signs in again",
    )
    login_max_failures: int = setting(
        default=5,
        check=check_at_least_one,
        help="failed sign-ins for one account (ten times as many from one address) …",
    )
    login_window_minutes: float = setting(
        default=15.0,
        check=check_positive,
        help="… within this window, after which sign-in answers 429 until it has passed",
    )
    poll_seconds: float = setting(
        default=3.0, check=check_positive, help="how often console pages refresh"
    )
    presence_seconds: float = setting(
        default=20.0,
        check=check_positive,
        help='how long "Dana is viewing" lasts without a refresh (more than poll_seconds)',
    )


@section
class Settings:
    config_path: Path = not_a_setting("the settings file; relative paths are relative to it")
    database: str = setting(
        secret=True,
        check=check_database,
        resolve=resolve_database,
        help="sqlite:///FILE (relative to the settings file) or postgresql://user@host/db",
    )
    municipality_map: Path = setting(
        default=Path("municipality_map.yaml"),
        check=check_not_empty,
        resolve=resolve_path,
        help="the municipality map (relative to the settings file); absolute once loaded",
    )
    public_url: str = setting(
        check=check_http_url,
        help="base URL the provider calls; signatures are checked against it",
    )
    email: EmailSettings
    web: WebSettings = field(default_factory=WebSettings)
    sms: SmsSettings = field(default_factory=SmsSettings)
    fallback_mailbox: str | None = setting(
        default=None,
        check=check_address,
        help="where held texts go whose municipality stays unknown",
    )
    log_level: str = setting(
        default="INFO",
        check=one_of(LOG_LEVELS, upper=True),
        help="DEBUG | INFO | WARNING | ERROR | CRITICAL (numbers stay masked)",
    )
    state_dir: Path = setting(
        default=Path("var"),
        check=check_not_empty,
        resolve=resolve_path,
        help="where the sandbox provider and mail server keep their files (relative to the "
        "settings file); absolute once loaded",
    )
    outbox: OutboxSettings = field(default_factory=OutboxSettings)
    conversations: ConversationSettings = field(default_factory=ConversationSettings)
    privacy: PrivacySettings = field(default_factory=PrivacySettings)
    console: ConsoleSettings = field(default_factory=ConsoleSettings)


SCHEMA: Section = derive(Settings)
"""The keys of the settings file, derived from the declarations above."""
