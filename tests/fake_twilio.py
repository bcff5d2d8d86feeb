"""A fake Twilio REST API: a real HTTP server on 127.0.0.1 for the real `twilio` client.

    with FakeTwilio("AC…", "token") as api:
        provider = TwilioProvider("AC…", "token", "31100", api.base_url)
        provider.send("+16135550123", "Hello")
        api.messages[0]["Body"] == "Hello"

Implements what the gateway uses:

- POST /2010-04-01/Accounts/{sid}/Messages.json — HTTP basic auth checked, the form
  recorded in `messages` (each dict also has "_sid", the SID answered), answered 201
  with a Twilio-shaped Message resource ("SM…"); `attempts` has failed calls too.
  `fail_next(n, status, code)` makes the next n calls fail with Twilio's error JSON
  (e.g. 429 / 20429, 400 / 21610).
- GET /2010-04-01/Accounts/{sid}/Messages/{MM}/Media/{ME} — basic auth required; a 307
  redirect to a public "CDN" URL on the same server: by default under the API's own host
  (`base_url`, the one media host a gateway pointed at the fake knows); with
  `cdn_host="localhost"` under another host name, like Twilio's redirect to its CDN, so a
  client that leaks the credentials across hosts is caught (`cdn_requests`; the client
  must then be told that host is a media host). `add_media(..., redirect_to=url)` makes
  the API redirect that media's URL to `url` instead (a redirect the client must refuse).
- GET /2010-04-01/Accounts/{sid}/Messages.json — the list, most recent first, filtered
  by `To`, `From` and `DateSent` / `DateSent>` / `DateSent<` (the names the twilio
  client sends for to=, from_=, date_sent=, date_sent_after=, date_sent_before=; the
  value "YYYY-MM-DD" or "YYYY-MM-DDTHH:MM:SSZ", inclusive), in Twilio-shaped pages
  (`PageSize`, `Page`, `next_page_uri`, …). A message has a DateSent once "sent":
  at once, unless the fake was made with `queue_only=True` (then only after a
  status callback of sent/delivered/…), like a message Twilio still queues.
- `hang_next(n, mode)`: the next n creations are ACCEPTED (recorded in `messages`)
  but never answered: "timeout" holds the request until `release_hangs()`, `stop()`
  or `seconds` (the client's read timeout fires first), "close" drops the connection
  at once. Either way the client cannot know whether it was sent (`maybe_sent`).
- `arrivals`: (time.monotonic(), segments) of each accepted message, and
  `max_in_window()` the most segments that arrived within any 1-second window: what
  the pacing promises. With `reject_above=R`, a creation that would make more than R
  segments arrive within one second is refused 429 / 20429 (Retry-After: 1).
- `send_status(sid, status, error_code)` posts a signed status callback, as Twilio does.
- `stop()` then `start()` again: the API is down meanwhile (connections refused, the
  connections that were open are cut), then back on the same port with the same state.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import secrets
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Literal

from twilio.request_validator import RequestValidator

from gateway.rules.segments import count_segments

API = "/2010-04-01/Accounts/"
_MESSAGES = re.compile(r"^/2010-04-01/Accounts/(?P<account>[^/]+)/Messages\.json$")
_MEDIA = re.compile(
    r"^/2010-04-01/Accounts/(?P<account>[^/]+)/Messages/(?P<message>MM\w+)/Media/(?P<media>ME\w+)$"
)
_CDN = re.compile(r"^/cdn/(?P<media>ME\w+)$")


@dataclass
class Failure:
    status: int
    code: int
    message: str
    retry_after: str | None = None


@dataclass
class Hang:
    mode: Literal["timeout", "close"]
    seconds: float
    released: threading.Event = field(default_factory=threading.Event)


@dataclass
class Media:
    sid: str
    message_sid: str
    content_type: str
    data: bytes
    redirect_to: str | None = None


@dataclass
class CdnRequest:
    media_sid: str
    authorization: str | None  # must stay None: credentials never go to the CDN


@dataclass
class _State:
    lock: threading.Lock = field(default_factory=threading.Lock)
    messages: list[dict[str, str]] = field(default_factory=list)
    attempts: list[dict[str, str]] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    hangs: list[Hang] = field(default_factory=list)
    held: list[Hang] = field(default_factory=list)
    resources: list[dict[str, Any]] = field(default_factory=list)  # newest last
    arrivals: list[tuple[float, int]] = field(default_factory=list)
    lists: list[dict[str, str]] = field(default_factory=list)
    media: dict[str, Media] = field(default_factory=dict)
    media_requests: list[str | None] = field(default_factory=list)
    cdn_requests: list[CdnRequest] = field(default_factory=list)


def _error_body(status: int, code: int, message: str) -> dict[str, Any]:
    return {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }


ACCOUNT_SID = "AC" + "0" * 32  # the default credentials (conftest's `api` fixture)
AUTH_TOKEN = "fake-auth-token"


class FakeTwilio:
    """The fake API; use as a context manager. `base_url` is "http://127.0.0.1:<port>"."""

    def __init__(
        self,
        account_sid: str = ACCOUNT_SID,
        auth_token: str = AUTH_TOKEN,
        *,
        cdn_host: str = "127.0.0.1",
        queue_only: bool = False,
        reject_above: float | None = None,
    ) -> None:
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.cdn_host = cdn_host
        self.queue_only = queue_only
        self.reject_above = reject_above
        self._state = _State()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._port = 0  # once started, a restart listens on the same port
        self._open: set[socket.socket] = set()  # connections being served

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> FakeTwilio:
        """Listen (again: on the same port as before)."""
        handler = type("Handler", (_Handler,), {"api": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", self._port), handler)
        self._port = int(self._server.server_address[1])
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self.release_hangs()  # hung requests end (unanswered)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self._state.lock:  # keep-alive connections would still be served: cut them
            connections, self._open = set(self._open), set()
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __enter__(self) -> FakeTwilio:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "FakeTwilio is not running"
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- what the tests script and read --------------------------------------------------

    @property
    def messages(self) -> list[dict[str, str]]:
        """The forms of the messages created (accepted) so far."""
        with self._state.lock:
            return list(self._state.messages)

    @property
    def attempts(self) -> list[dict[str, str]]:
        """The forms of every create call, failed ones included."""
        with self._state.lock:
            return list(self._state.attempts)

    @property
    def arrivals(self) -> list[tuple[float, int]]:
        """(time.monotonic() at arrival, segments) of each accepted message, in order."""
        with self._state.lock:
            return list(self._state.arrivals)

    @property
    def list_requests(self) -> list[dict[str, str]]:
        """The query parameters of every GET of the message list."""
        with self._state.lock:
            return list(self._state.lists)

    def max_in_window(self, window: float = 1.0) -> int:
        """The most segments that arrived within any half-open `window` [t, t + window)."""
        return max_in_window(self.arrivals, window)

    @property
    def cdn_requests(self) -> list[CdnRequest]:
        with self._state.lock:
            return list(self._state.cdn_requests)

    def fail_next(
        self,
        n: int,
        status: int,
        code: int,
        message: str | None = None,
        *,
        retry_after: str | None = None,
    ) -> None:
        """The next `n` message creations answer `status` with Twilio error `code`."""
        text = message or {
            20429: "Too Many Requests",
            21610: "Attempt to send to unsubscribed recipient",
            21211: "The 'To' number is not a valid phone number.",
        }.get(code, "Error")
        with self._state.lock:
            self._state.failures.extend(Failure(status, code, text, retry_after) for _ in range(n))

    def hang_next(
        self, n: int = 1, mode: Literal["timeout", "close"] = "timeout", seconds: float = 30.0
    ) -> None:
        """The next `n` creations are accepted (the message IS sent) but not answered:
        "timeout" holds the connection until `release_hangs()`/`stop()` or `seconds`,
        then closes it; "close" closes it at once."""
        with self._state.lock:
            self._state.hangs.extend(Hang(mode, seconds) for _ in range(n))

    def release_hangs(self) -> None:
        """End every held request now (still without an answer)."""
        with self._state.lock:
            for hang in self._state.held:
                hang.released.set()
            self._state.held.clear()

    def add_media(
        self,
        content_type: str,
        data: bytes,
        message_sid: str | None = None,
        *,
        redirect_to: str | None = None,
    ) -> str:
        """Store a media of a received MMS; returns its (authenticated) API URL,
        as Twilio puts it in MediaUrl0. With `redirect_to`, that URL redirects there
        instead of to the fake's CDN."""
        message_sid = message_sid or "MM" + secrets.token_hex(16)
        media = Media("ME" + secrets.token_hex(16), message_sid, content_type, data, redirect_to)
        with self._state.lock:
            self._state.media[media.sid] = media
        return f"{self.base_url}{API}{self.account_sid}/Messages/{message_sid}/Media/{media.sid}"

    def send_status(
        self, sid: str, status: str = "delivered", error_code: int | None = None
    ) -> int:
        """POST a signed status callback for message `sid` to its StatusCallback URL,
        like Twilio; returns the HTTP status the gateway answered."""
        form = next(m for m in self.messages if m["_sid"] == sid)
        with self._state.lock:
            for resource in self._state.resources:
                if resource["sid"] == sid:
                    resource["status"] = status
                    resource["error_code"] = error_code
                    if status in ("sent", "delivered", "undelivered", "failed"):
                        resource["_date_sent"] = resource["_date_sent"] or _now()
        url = form["StatusCallback"]
        params = {
            "AccountSid": self.account_sid,
            "MessageSid": sid,
            "SmsSid": sid,
            "MessageStatus": status,
            "SmsStatus": status,
            "To": form["To"],
            "From": form.get("From", ""),
            "ApiVersion": "2010-04-01",
        }
        if form.get("MessagingServiceSid"):
            params["MessagingServiceSid"] = form["MessagingServiceSid"]
        if error_code is not None:
            params["ErrorCode"] = str(error_code)
        signature = RequestValidator(self.auth_token).compute_signature(url, params)
        request = urllib.request.Request(
            url,
            data=urllib.parse.urlencode(params).encode(),
            headers={"X-Twilio-Signature": signature},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)

    # -- used by the handler -------------------------------------------------------------

    def _authorized(self, header: str | None) -> bool:
        expected = base64.b64encode(f"{self.account_sid}:{self.auth_token}".encode()).decode()
        return header == f"Basic {expected}"

    def _create(
        self, form: dict[str, str]
    ) -> tuple[int, dict[str, Any], dict[str, str], Hang | None]:
        status, data, headers = self._create_message(form)
        hang = None
        if status == 201:
            with self._state.lock:
                hang = self._state.hangs.pop(0) if self._state.hangs else None
                if hang is not None and hang.mode == "timeout":
                    self._state.held.append(hang)
        return status, data, headers, hang

    def _create_message(self, form: dict[str, str]) -> tuple[int, dict[str, Any], dict[str, str]]:
        with self._state.lock:
            self._state.attempts.append(dict(form))
            failure = self._state.failures.pop(0) if self._state.failures else None
        if failure is not None:
            headers = {"Retry-After": failure.retry_after} if failure.retry_after else {}
            return (
                failure.status,
                _error_body(failure.status, failure.code, failure.message),
                headers,
            )
        if not form.get("To"):
            return 400, _error_body(400, 21604, "A 'To' phone number is required."), {}
        if not form.get("Body") and not form.get("MediaUrl"):
            return 400, _error_body(400, 21602, "Message body is required."), {}
        if not form.get("From") and not form.get("MessagingServiceSid"):
            return 400, _error_body(400, 21603, "A 'From' phone number is required."), {}
        body = form.get("Body", "")
        if len(body) > 1600:
            return (
                400,
                _error_body(
                    400, 21617, "The concatenated message body exceeds the 1600 character limit."
                ),
                {},
            )
        segments = count_segments(body)
        sid = "SM" + secrets.token_hex(16)
        created = _now()
        with self._state.lock:
            arrived = time.monotonic()
            if self.reject_above is not None:
                recent = sum(n for t, n in self._state.arrivals if t > arrived - 1.0)
                if recent + segments > self.reject_above:
                    return 429, _error_body(429, 20429, "Too Many Requests"), {"Retry-After": "1"}
            self._state.messages.append({**form, "_sid": sid})
            self._state.arrivals.append((arrived, segments))
        now = format_datetime(created, usegmt=True)
        resource = {
            "account_sid": self.account_sid,
            "api_version": "2010-04-01",
            "body": body,
            "date_created": now,
            "date_sent": None,
            "date_updated": now,
            "direction": "outbound-api",
            "error_code": None,
            "error_message": None,
            "from": form.get("From"),
            "messaging_service_sid": form.get("MessagingServiceSid"),
            "num_media": "0",
            "num_segments": str(segments),
            "price": None,
            "price_unit": "USD",
            "sid": sid,
            "status": "accepted" if form.get("MessagingServiceSid") else "queued",
            "subresource_uris": {"media": f"{API}{self.account_sid}/Messages/{sid}/Media.json"},
            "to": form["To"],
            "uri": f"{API}{self.account_sid}/Messages/{sid}.json",
        }
        with self._state.lock:
            self._state.resources.append(
                {
                    **resource,
                    "_created": created,
                    "_date_sent": None if self.queue_only else created,
                }
            )
        return 201, resource, {}

    def _list(self, query: dict[str, str]) -> tuple[int, dict[str, Any]]:
        """One page of the message list, newest first, filtered like Twilio's."""
        with self._state.lock:
            self._state.lists.append(dict(query))
            records = [dict(r) for r in reversed(self._state.resources)]
        try:
            page = int(query.get("Page", "0"))
            size = min(1000, max(1, int(query.get("PageSize", "50"))))
            after = _date_filter(query.get("DateSent>"))
            before = _date_filter(query.get("DateSent<"), end_of_day=True)
            on = query.get("DateSent")
        except ValueError as exc:
            return 400, _error_body(400, 20001, f"Invalid parameter: {exc}")
        selected = []
        for record in records:
            sent: datetime | None = record["_date_sent"]
            if query.get("To") and record["to"] != query["To"]:
                continue
            if query.get("From") and record["from"] != query["From"]:
                continue
            if (after or before or on) and sent is None:
                continue  # never sent yet: no DateSent to compare
            if after is not None and sent is not None and sent < after:
                continue
            if before is not None and sent is not None and sent > before:
                continue
            if on and sent is not None and not _same_date_sent(sent, on):
                continue
            selected.append(record)
        chunk = selected[page * size : (page + 1) * size]
        base = f"{API}{self.account_sid}/Messages.json"
        keep = {k: v for k, v in query.items() if k not in ("Page", "PageSize", "PageToken")}

        def uri(number: int) -> str:
            params = {**keep, "PageSize": str(size), "Page": str(number)}
            if number > 0:
                params["PageToken"] = f"PA{number}"
            return f"{base}?{urllib.parse.urlencode(params)}"

        more = (page + 1) * size < len(selected)
        messages = []
        for record in chunk:
            item = {k: v for k, v in record.items() if not k.startswith("_")}
            item["date_sent"] = (
                format_datetime(record["_date_sent"], usegmt=True) if record["_date_sent"] else None
            )
            messages.append(item)
        return 200, {
            "messages": messages,
            "end": page * size + max(0, len(chunk) - 1),
            "first_page_uri": uri(0),
            "next_page_uri": uri(page + 1) if more else None,
            "page": page,
            "page_size": size,
            "previous_page_uri": uri(page - 1) if page > 0 else None,
            "start": page * size,
            "uri": uri(page),
        }


def _now() -> datetime:
    """Now, to the second (Twilio's dates have no fractions)."""
    return datetime.now(UTC).replace(microsecond=0)


def _date_filter(value: str | None, *, end_of_day: bool = False) -> datetime | None:
    """A DateSent filter value: "YYYY-MM-DD" (midnight UTC; with `end_of_day` the
    whole day) or an ISO 8601 date-time ("YYYY-MM-DDTHH:MM:SSZ")."""
    if not value:
        return None
    if len(value) == 10:
        day = datetime.combine(date.fromisoformat(value), datetime.min.time(), tzinfo=UTC)
        return day + timedelta(days=1, microseconds=-1) if end_of_day else day
    moment = datetime.fromisoformat(value)
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _same_date_sent(sent: datetime, value: str) -> bool:
    if len(value) == 10:
        return sent.date() == date.fromisoformat(value)
    return sent == _date_filter(value)


def max_in_window(events: Sequence[tuple[float, int]], window: float = 1.0) -> int:
    """The most segments among `events` (time, segments) within any [t, t + window)."""
    ordered = sorted(events)
    best = total = first = 0
    for moment, segments in ordered:
        total += segments
        while ordered[first][0] <= moment - window:
            total -= ordered[first][1]
            first += 1
        best = max(best, total)
    return best


class _Handler(BaseHTTPRequestHandler):
    api: FakeTwilio
    protocol_version = "HTTP/1.1"
    # buffered: headers and body leave in one packet (no Nagle / delayed-ACK stalls);
    # BaseHTTPRequestHandler flushes after every request
    wbufsize = 64 * 1024

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def setup(self) -> None:
        super().setup()
        with self.api._state.lock:
            self.api._open.add(self.connection)

    def finish(self) -> None:
        with self.api._state.lock:
            self.api._open.discard(self.connection)
        super().finish()

    def _send(
        self,
        status: int,
        body: bytes,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, data: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(data).encode(), headers=headers)

    def _unauthorized(self) -> None:
        self._json(
            401,
            _error_body(401, 20003, "Authenticate"),
            {"WWW-Authenticate": 'Basic realm="Twilio API"'},
        )

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length).decode()
        path = urllib.parse.urlsplit(self.path).path
        match = _MESSAGES.match(path)
        if match is None:
            self._json(404, _error_body(404, 20404, "The requested resource was not found"))
            return
        if match["account"] != self.api.account_sid or not self.api._authorized(
            self.headers.get("Authorization")
        ):
            self._unauthorized()
            return
        form = dict(urllib.parse.parse_qsl(raw, keep_blank_values=True))
        status, data, headers, hang = self.api._create(form)
        if hang is not None:
            # accepted, but the client never hears about it
            if hang.mode == "timeout":
                hang.released.wait(hang.seconds)
            self.close_connection = True
            return
        self._json(status, data, headers)

    def do_GET(self) -> None:
        parts = urllib.parse.urlsplit(self.path)
        path = parts.path
        state = self.api._state
        if match := _MESSAGES.match(path):
            if match["account"] != self.api.account_sid or not self.api._authorized(
                self.headers.get("Authorization")
            ):
                self._unauthorized()
                return
            query = dict(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
            status, data = self.api._list(query)
            self._json(status, data)
            return
        if match := _MEDIA.match(path):
            with state.lock:
                state.media_requests.append(self.headers.get("Authorization"))
                media = state.media.get(match["media"])
            if match["account"] != self.api.account_sid or not self.api._authorized(
                self.headers.get("Authorization")
            ):
                self._unauthorized()
                return
            if media is None or media.message_sid != match["message"]:
                self._json(404, _error_body(404, 20404, "The requested resource was not found"))
                return
            location = (
                media.redirect_to or f"http://{self.api.cdn_host}:{self.api.port}/cdn/{media.sid}"
            )
            self._send(307, b"", "text/plain", {"Location": location})
            return
        if match := _CDN.match(path):
            with state.lock:
                state.cdn_requests.append(
                    CdnRequest(match["media"], self.headers.get("Authorization"))
                )
                media = state.media.get(match["media"])
            if media is None:
                self._send(404, b"NoSuchKey", "text/plain")
                return
            self._send(200, media.data, media.content_type)
            return
        self._json(404, _error_body(404, 20404, "The requested resource was not found"))
