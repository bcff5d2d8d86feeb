"""Twilio (and Twilio-compatible APIs) through the real `twilio` client.

The client is pointed at `api_base_url` by setting the base URL of its `api` domain
(`client.api.base_url`), the one every `client.messages` call goes through; so
SignalWire-style compatible APIs and the tests' fake API work unchanged. Media are
fetched with `requests` and HTTP basic auth (account SID, auth token) — the
credentials are only sent to the API's own origin; Twilio's redirect to its CDN is
followed without them. A media URL comes from a webhook form (the provider signed it,
but the URL is whatever was texted through it): it is fetched only from the API's own
origin or the provider's media hosts (`TWILIO_MEDIA_HOSTS`), and a redirect is followed
only to those, so a MediaUrl0 naming a host of the gateway's own network (`/metrics` on
loopback, a cloud metadata address) is never requested: the email lists it instead.

`find_sent` lists the messages sent to a number (GET Messages.json, which the client
sends as `To=…&DateSent>=YYYY-MM-DDTHH:MM:SSZ&PageSize=50`) to find out whether a
send that failed ambiguously (a timeout after the request went out, a 5xx) was in
fact accepted.
"""

from __future__ import annotations

import logging
import threading
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict
from twilio.base.exceptions import TwilioException
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

from gateway.logs import mask_phone
from gateway.rules.segments import smart_quotes_to_gsm
from gateway.sms.base import (
    MAX_MEDIA_BYTES,
    MediaError,
    SmsPermanentError,
    SmsTemporaryError,
)
from gateway.sms.twilio import check_credentials
from gateway.sms.twilio.errors import (
    AUTHENTICATION_FAILED,
    HTTP_TOO_MANY_REQUESTS,
    TEMPORARY_CODES,
    permanent_reason,
)

log = logging.getLogger(__name__)

DEFAULT_API_BASE_URL = "https://api.twilio.com"
_CHUNK = 64 * 1024
#: Messages looked at by `find_sent` (most recent first).
FIND_SENT_LIMIT = 50
#: How far before `since` a message may be dated and still count (clocks differ, and
#: Twilio's dates have one-second resolution).
CLOCK_SKEW = timedelta(seconds=5)
#: What Twilio puts before every body sent from a trial account.
TRIAL_PREFIX = "Sent from your Twilio trial account - "
#: Where Twilio's media live besides the API (api.twilio.com redirects there): its CDN
#: (mms.twiliocdn.com, media.twiliocdn.com) and, for media stored before HTTP auth on
#: media was enforced, the path-style S3 bucket media.twiliocdn.com. A pattern is a host
#: name, "*." + a domain (its subdomains), or a host name and a path prefix.
TWILIO_MEDIA_HOSTS = ("*.twiliocdn.com", "s3-external-1.amazonaws.com/media.twiliocdn.com/")
#: Redirects followed when fetching a media.
MAX_MEDIA_REDIRECTS = 5
_DEFAULT_PORTS = {"http": 80, "https": 443}


def same_body(sent: str, body: str) -> bool:
    """True if `sent` (as the provider reports it) is the text `body`: compared after
    Unicode NFC, the trial-account prefix, outer whitespace and the typographic
    substitutions a provider's smart encoding may make."""

    def norm(text: str) -> str:
        text = unicodedata.normalize("NFC", text)
        text = text.removeprefix(TRIAL_PREFIX)
        return smart_quotes_to_gsm(text).strip()

    return sent == body or norm(sent) == norm(body)


def _same_number(a: str, b: str) -> bool:
    """Phone numbers / short codes compared on their digits ("+1 613…" == "1613…")."""
    digits_a, digits_b = "".join(filter(str.isdigit, a)), "".join(filter(str.isdigit, b))
    return a == b or (bool(digits_a) and digits_a == digits_b)


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()


def endpoint(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an http(s) URL without credentials in it, else None."""
    try:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        port = parts.port
    except ValueError:
        return None
    if scheme not in _DEFAULT_PORTS or not parts.hostname or "@" in parts.netloc:
        return None
    return scheme, parts.hostname.lower().rstrip("."), port or _DEFAULT_PORTS[scheme]


def on_hosts(url: str, patterns: Sequence[str]) -> bool:
    """True if the http(s) `url` is on one of the host `patterns` ("host", "*.domain",
    "host/path-prefix"; any port)."""
    where = endpoint(url)
    if where is None:
        return False
    host = where[1]
    path = urlsplit(url).path
    for pattern in patterns:
        name, slash, prefix = pattern.lower().partition("/")
        if name.startswith("*."):
            matches = host.endswith(name[1:]) and len(host) > len(name) - 1
        else:
            matches = host == name
        if matches and (not slash or path.startswith("/" + prefix)):
            return True
    return False


def _retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), if any."""
    value = (headers or {}).get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _not_sent(exc: requests.RequestException) -> bool:
    """True if the request surely never reached the server (so resending is safe)."""
    if isinstance(exc, requests.ConnectTimeout):
        return True
    if isinstance(exc, requests.ConnectionError) and not isinstance(exc, requests.ReadTimeout):
        reason = getattr(exc.args[0], "reason", None) if exc.args else None
        return isinstance(reason, NewConnectionError | ConnectTimeoutError)
    return False


#: Kept-alive connections to the API: at least the worker's SMS threads (16), so that
#: none of them opens a new connection per text (requests keeps 10 per host by default,
#: twilio's client cores + 4 for https: 6 on 2 cores).
API_CONNECTIONS = 32


class _HttpClient(TwilioHttpClient):  # type: ignore[misc]
    """The twilio HTTP client, quieter (one DEBUG line per request instead of INFO
    blocks), remembering each thread's last response headers (for Retry-After), and
    keeping up to `API_CONNECTIONS` connections alive."""

    def __init__(self, timeout: float) -> None:
        super().__init__(timeout=timeout, logger=log)
        self._last = threading.local()
        for scheme in ("https://", "http://"):
            self.session.mount(scheme, HTTPAdapter(pool_maxsize=API_CONNECTIONS))

    def request(self, *args: Any, **kwargs: Any) -> Any:
        self._last.headers = None
        response = super().request(*args, **kwargs)
        self._last.headers = response.headers
        return response

    def last_headers(self) -> Mapping[str, str] | None:
        headers = getattr(self._last, "headers", None)
        return CaseInsensitiveDict(headers) if headers is not None else None

    def log_request(self, kwargs: dict[str, Any]) -> None:
        log.debug("twilio API %s %s", kwargs["method"], kwargs["url"])

    def log_response(self, status_code: int, response: Any) -> None:
        log.debug("twilio API answered %s", status_code)


class TwilioProvider:
    """Send texts through Twilio's Messages API (or any API shaped like it).

    `sender` is a short code, an E.164 number, or a Messaging Service SID ("MG…",
    sent as MessagingServiceSid instead of From).
    """

    name = "twilio"

    def __init__(
        self,
        account_sid: str,
        auth_token: str,
        sender: str,
        api_base_url: str = DEFAULT_API_BASE_URL,
        *,
        timeout: float = 15.0,
        max_media_bytes: int = MAX_MEDIA_BYTES,
        media_hosts: Sequence[str] = TWILIO_MEDIA_HOSTS,
    ) -> None:
        check_credentials(account_sid, auth_token, sender)
        self.account_sid = account_sid
        self._auth_token = auth_token
        self.sender = sender
        self.api_base_url = api_base_url.rstrip("/")
        self.timeout = timeout
        self.max_media_bytes = max_media_bytes
        self.media_hosts = tuple(media_hosts)
        self._http = _HttpClient(timeout)
        self.client = Client(account_sid, auth_token, http_client=self._http)
        if _origin(self.api_base_url) != _origin(DEFAULT_API_BASE_URL):
            # TWILIO_EDGE / TWILIO_REGION would rewrite the host: not for another API.
            self.client.edge = None
            self.client.region = None
        self.client.api.base_url = self.api_base_url

    def __repr__(self) -> str:
        return f"TwilioProvider(account_sid={self.account_sid!r}, api={self.api_base_url!r})"

    # -- sending ---------------------------------------------------------------------

    def send(self, to: str, body: str, status_callback: str | None = None) -> str:
        """Create a Message resource; returns its SID ("SM…")."""
        params: dict[str, Any] = {"to": to, "body": body}
        if self.sender.startswith("MG"):
            params["messaging_service_sid"] = self.sender
        else:
            params["from_"] = self.sender
        if status_callback:
            params["status_callback"] = status_callback
        try:
            message = self.client.messages.create(**params)
        except TwilioException as exc:
            raise self._error(exc) from exc
        except requests.RequestException as exc:
            raise SmsTemporaryError(
                f"Twilio API unreachable: {type(exc).__name__}", maybe_sent=not _not_sent(exc)
            ) from exc
        except ValueError as exc:  # a 2xx answer that is not JSON
            raise SmsTemporaryError(
                f"Twilio API gave an unreadable answer: {exc}", maybe_sent=True
            ) from exc
        sid = str(message.sid or "")
        if not sid:
            raise SmsTemporaryError("Twilio API answered without a message SID", maybe_sent=True)
        log.info("text to %s accepted by Twilio: %s", mask_phone(to), sid)
        return sid

    def _error(self, exc: TwilioException) -> SmsTemporaryError | SmsPermanentError:
        status = int(getattr(exc, "status", 0) or 0)
        raw_code = getattr(exc, "code", None)
        code = (
            int(raw_code) if isinstance(raw_code, int | str) and str(raw_code).isdigit() else None
        )
        text = str(getattr(exc, "msg", None) or getattr(exc, "detail", None) or "")
        message = f"Twilio API {status}" + (f" code {code}" if code else "") + f": {text}"
        if status == 401 or code == AUTHENTICATION_FAILED:
            return SmsTemporaryError(
                message + " (check sms.account_sid / sms.auth_token)",
                code or AUTHENTICATION_FAILED,
            )
        if status == HTTP_TOO_MANY_REQUESTS or code in TEMPORARY_CODES:
            return SmsTemporaryError(
                message, code or status, retry_after=_retry_after(self._http.last_headers())
            )
        if status >= 500 or status == 0:
            return SmsTemporaryError(
                message,
                code or status or None,
                retry_after=_retry_after(self._http.last_headers()),
                maybe_sent=True,
            )
        return SmsPermanentError(
            message, code or status, reason=permanent_reason(code or status)
        )

    # -- was it sent after all? -----------------------------------------------------------

    def find_sent(self, to: str, body: str, since: datetime) -> str | None:
        """The SID of a message with this body sent by our sender to `to` since `since`
        (less `CLOCK_SKEW`), or None.

        Asks for the most recent `FIND_SENT_LIMIT` messages to `to` with
        `DateSent>=` since (in UTC); a message Twilio has accepted but not handed to a
        carrier yet has no DateSent, so when nothing matches, the most recent messages
        to `to` are asked for again without the date filter, and those created since
        `since` count too. Raises SmsTemporaryError if the API cannot be asked.
        """
        since = _utc(since) - CLOCK_SKEW
        first = self._list(to=to, date_sent_after=since, limit=FIND_SENT_LIMIT)
        sid = self._match(first, to, body, since)
        if sid is None:
            sid = self._match(self._list(to=to, limit=FIND_SENT_LIMIT), to, body, since)
        log.info("looked for a text already sent to %s: %s", mask_phone(to), sid or "none found")
        return sid

    def _list(self, **filters: Any) -> list[Any]:
        try:
            return list(self.client.messages.list(**filters))
        except TwilioException as exc:
            status = int(getattr(exc, "status", 0) or 0)
            response = exc.args[1] if len(exc.args) > 1 else None
            status = status or int(getattr(response, "status_code", 0) or 0)
            raise SmsTemporaryError(
                f"Twilio API {status or '?'}: cannot list the messages sent: "
                f"{getattr(exc, 'msg', None) or (exc.args[0] if exc.args else exc)}",
                status or None,
                retry_after=_retry_after(self._http.last_headers()),
            ) from exc
        except (requests.RequestException, ValueError) as exc:
            raise SmsTemporaryError(
                f"Twilio API unreachable while listing messages: {type(exc).__name__}"
            ) from exc

    def _ours(self, record: Any) -> bool:
        if self.sender.startswith("MG"):
            return str(getattr(record, "messaging_service_sid", "") or "") == self.sender
        return _same_number(str(getattr(record, "from_", "") or ""), self.sender)

    def _match(self, records: Iterable[Any], to: str, body: str, since: datetime) -> str | None:
        for record in records:
            if not str(getattr(record, "direction", "") or "outbound").startswith("outbound"):
                continue
            if not _same_number(str(getattr(record, "to", "") or ""), to):
                continue
            if not self._ours(record):
                continue
            if not same_body(str(getattr(record, "body", "") or ""), body):
                continue
            created = getattr(record, "date_created", None) or getattr(record, "date_sent", None)
            if isinstance(created, datetime) and _utc(created) < since.replace(microsecond=0):
                continue
            return str(record.sid)
        return None

    # -- media -------------------------------------------------------------------------

    def media_allowed(self, url: str) -> bool:
        """True if `url` is on the API's own origin or one of `media_hosts`."""
        where = endpoint(url)
        return where is not None and (
            where == endpoint(self.api_base_url) or on_hosts(url, self.media_hosts)
        )

    def fetch_media(self, url: str) -> tuple[str, bytes]:
        """GET a media URL on the API's origin or its media hosts (HTTP basic auth on the
        API's own origin only), following redirects only to those; at most
        `max_media_bytes`. Raises MediaError."""
        return fetch_http_media(
            url,
            allowed=self.media_allowed,
            auth=(self.account_sid, self._auth_token),
            auth_url=self.api_base_url,
            timeout=self.timeout,
            limit=self.max_media_bytes,
        )


def fetch_http_media(
    url: str,
    *,
    allowed: Callable[[str], bool],
    auth: tuple[str, str] | None = None,
    auth_url: str | None = None,
    timeout: float,
    limit: int = MAX_MEDIA_BYTES,
) -> tuple[str, bytes]:
    """Download `url`: (content type without parameters, data).

    `allowed(url)` is asked of `url` and of every redirect target (at most
    `MAX_MEDIA_REDIRECTS`) before it is requested; `auth` is sent only to the origin of
    `auth_url`. Raises MediaError: temporary for network trouble, 429 and 5xx; permanent
    otherwise (4xx, more than `limit` bytes, not an http(s) URL, not an allowed host).
    """
    if _origin(url)[0] not in ("http", "https"):
        raise MediaError(f"not an http(s) media URL: {urlsplit(url).scheme or '?'}")
    auth_at = endpoint(auth_url) if auth_url else None
    for _ in range(MAX_MEDIA_REDIRECTS + 1):
        where = endpoint(url)
        if where is None or not allowed(url):
            host = where[1] if where else urlsplit(url).netloc[:100] or "?"
            raise MediaError(f"media URL not on the provider's media hosts: {host}")
        hop_auth = auth if auth_at is not None and where == auth_at else None
        location = _get_media(url, hop_auth, timeout, limit)
        if isinstance(location, tuple):
            return location
        url = urljoin(url, location)
    raise MediaError(f"media fetch: more than {MAX_MEDIA_REDIRECTS} redirects")


def _get_media(
    url: str, auth: tuple[str, str] | None, timeout: float, limit: int
) -> tuple[str, bytes] | str:
    """One GET of a media: (content type, data), or the redirect's Location."""
    try:
        with requests.get(
            url, auth=auth, timeout=timeout, stream=True, allow_redirects=False
        ) as response:
            if response.is_redirect:
                return str(response.headers["Location"])
            if response.status_code != 200:
                temporary = response.status_code in (401, 408, 429) or response.status_code >= 500
                raise MediaError(
                    f"media fetch answered {response.status_code}",
                    response.status_code,
                    temporary=temporary,
                )
            declared = response.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > limit:
                raise MediaError(f"media too large: {declared} bytes (limit {limit})")
            data = bytearray()
            for chunk in response.iter_content(_CHUNK):
                data += chunk
                if len(data) > limit:
                    raise MediaError(f"media too large: over {limit} bytes")
            content_type = response.headers.get("Content-Type", "application/octet-stream")
    except (requests.exceptions.InvalidURL, requests.exceptions.InvalidSchema) as exc:
        raise MediaError(f"not a media URL: {type(exc).__name__}") from exc
    except requests.RequestException as exc:
        raise MediaError(f"media fetch failed: {type(exc).__name__}", temporary=True) from exc
    return content_type.split(";", 1)[0].strip().lower(), bytes(data)
