"""The sandbox SMS provider: records each text it would send, sends nothing. Its webhooks
are Twilio's (`sms311 sandbox text` signs a Twilio-shaped form with the sandbox's token).

Each `send` appends one JSON line `{"sid", "to", "body", "at", "status_callback"}` to
`<directory>/sms.jsonl` (read it with `read_sent`); `find_sent` looks there. `fetch_media` reads
`file://` URLs of files inside its own directory and fetches, without credentials, http(s)
URLs on the gateway's own `public_url` (where `sms311 sandbox text --media` serves its
pictures, the way Twilio serves MMS media); any other URL is refused (MediaError), as the
real provider refuses a host that is not its own.
"""

from __future__ import annotations

import json
import logging
import mimetypes
import secrets
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit
from urllib.request import url2pathname

from gateway.logs import mask_phone
from gateway.sms.base import MAX_MEDIA_BYTES, MediaError, ProviderKind
from gateway.sms.twilio.errors import describe

if TYPE_CHECKING:
    from gateway.settings import SmsSettings
    from gateway.sms.twilio.webhook import TwilioWebhooks

log = logging.getLogger(__name__)

SENT_FILE = "sms.jsonl"


def read_sent(directory: Path) -> list[dict[str, Any]]:
    """The texts recorded so far in `directory`, oldest first."""
    path = Path(directory) / SENT_FILE
    if not path.exists():
        return []
    with path.open(encoding="utf-8") as file:
        return [json.loads(line) for line in file if line.strip()]


class SandboxProvider:
    """Records texts to `<directory>/sms.jsonl` instead of sending them."""

    name = "sandbox"

    def __init__(
        self,
        directory: Path,
        *,
        public_url: str = "",
        timeout: float = 15.0,
        max_media_bytes: int = MAX_MEDIA_BYTES,
    ) -> None:
        self.directory = Path(directory)
        self.public_url = public_url
        self.timeout = timeout
        self.max_media_bytes = max_media_bytes
        self._lock = threading.Lock()

    @property
    def path(self) -> Path:
        return self.directory / SENT_FILE

    def send(self, to: str, body: str, status_callback: str | None = None) -> str:
        """Append the text to sms.jsonl; returns a Twilio-like SID ("SM" + 32 hex)."""
        sid = "SM" + secrets.token_hex(16)
        record = {
            "sid": sid,
            "to": to,
            "body": body,
            "at": datetime.now(UTC).isoformat(),
            "status_callback": status_callback,
        }
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with self._lock:
            self.directory.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as file:
                file.write(line)
        log.info("sandbox text to %s recorded: %s (%d chars)", mask_phone(to), sid, len(body))
        return sid

    def find_sent(self, to: str, body: str, since: datetime) -> str | None:
        """The SID of the most recent text with this body recorded for `to` at or after
        `since` (naive means UTC), or None."""
        since = since.replace(tzinfo=UTC) if since.tzinfo is None else since
        with self._lock:
            records = read_sent(self.directory)
        for record in reversed(records):
            if record.get("to") != to or record.get("body") != body:
                continue
            try:
                at = datetime.fromisoformat(str(record.get("at")))
            except ValueError:
                at = None
            if at is not None and at.tzinfo is None:
                at = at.replace(tzinfo=UTC)
            if at is None or at >= since:
                return str(record["sid"])
        return None

    def media_allowed(self, url: str) -> bool:
        """True if `url` is on the origin of the gateway's `public_url`."""
        from gateway.sms.twilio.client import endpoint

        where = endpoint(url)
        return where is not None and bool(self.public_url) and where == endpoint(self.public_url)

    def fetch_media(self, url: str) -> tuple[str, bytes]:
        """Read a `file://` URL inside `directory`, or GET an http(s) URL on `public_url`
        without credentials."""
        parts = urlsplit(url)
        if parts.scheme.lower() != "file":
            from gateway.sms.twilio.client import fetch_http_media

            return fetch_http_media(
                url, allowed=self.media_allowed, timeout=self.timeout, limit=self.max_media_bytes
            )
        if parts.netloc not in ("", "localhost"):
            raise MediaError(f"file URL on another host: {parts.netloc}")
        path = Path(url2pathname(unquote(parts.path)))
        if not path.resolve().is_relative_to(self.directory.resolve()):
            raise MediaError("file URL outside the sandbox's directory")
        try:
            size = path.stat().st_size
            if size > self.max_media_bytes:
                raise MediaError(f"media too large: {size} bytes (limit {self.max_media_bytes})")
            data = path.read_bytes()
        except OSError as exc:
            raise MediaError(f"cannot read media file: {exc.strerror or exc}") from exc
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return content_type, data


def _client(sms: SmsSettings, state_dir: Path, public_url: str) -> SandboxProvider:
    return SandboxProvider(state_dir, public_url=public_url)


def _webhooks(sms: SmsSettings, public_url: str) -> TwilioWebhooks:
    from gateway.sms.twilio.webhook import TwilioWebhooks  # (not loaded by the worker)

    return TwilioWebhooks(sms.auth_token, public_url)


PROVIDER = ProviderKind(client=_client, webhooks=_webhooks, describe_error=describe)
