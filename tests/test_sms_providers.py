"""SMS providers: the real twilio client against the fake Twilio API; the sandbox."""

from __future__ import annotations

import json
import logging
import socket
import threading
import urllib.parse
from datetime import UTC, datetime, timedelta, timezone
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from twilio.request_validator import RequestValidator

from gateway.settings import SmsSettings
from gateway.sms import (
    MediaError,
    SmsPermanentError,
    SmsProvider,
    SmsTemporaryError,
    make_provider,
)
from gateway.sms.sandbox import SandboxProvider, read_sent
from gateway.sms.twilio import LazyTwilioProvider, TwilioProvider, errors
from gateway.sms.twilio.client import same_body
from tests.fake_twilio import ACCOUNT_SID as SID
from tests.fake_twilio import AUTH_TOKEN as TOKEN
from tests.fake_twilio import FakeTwilio

RESIDENT = "+16135550123"  # `api`: conftest's fake Twilio API, with SID and TOKEN


def provider(api: FakeTwilio, sender: str = "31100", **kwargs: Any) -> TwilioProvider:
    return TwilioProvider(SID, TOKEN, sender, api.base_url, **kwargs)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- Twilio: sending ------------------------------------------------------------------------


def test_send_from_a_short_code_with_a_status_callback(api: FakeTwilio) -> None:
    twilio = provider(api)
    sid = twilio.send(RESIDENT, "Your pothole is fixed. Merci!", "https://gw.example/sms/status")
    assert sid.startswith("SM") and len(sid) == 34
    (form,) = api.messages
    assert form["To"] == RESIDENT
    assert form["From"] == "31100"
    assert "MessagingServiceSid" not in form
    assert form["Body"] == "Your pothole is fixed. Merci!"
    assert form["StatusCallback"] == "https://gw.example/sms/status"
    assert form["_sid"] == sid


def test_send_through_a_messaging_service(api: FakeTwilio) -> None:
    twilio = provider(api, sender="MG" + "a" * 32)
    twilio.send(RESIDENT, "Bonjour")
    (form,) = api.messages
    assert form["MessagingServiceSid"] == "MG" + "a" * 32
    assert "From" not in form and "StatusCallback" not in form


def test_long_unicode_body_goes_whole(api: FakeTwilio) -> None:
    body = "Réparé — " + "x" * 1500
    provider(api).send(RESIDENT, body)
    assert api.messages[0]["Body"] == body


def test_too_many_requests_is_temporary_with_retry_after(api: FakeTwilio) -> None:
    twilio = provider(api)
    api.fail_next(2, 429, 20429, retry_after="2")
    for _ in range(2):
        with pytest.raises(SmsTemporaryError) as raised:
            twilio.send(RESIDENT, "hello")
        assert raised.value.code == errors.TOO_MANY_REQUESTS
        assert raised.value.retry_after == 2.0
        assert raised.value.maybe_sent is False
    assert api.messages == []
    twilio.send(RESIDENT, "hello")  # the burst is over
    assert len(api.messages) == 1 and len(api.attempts) == 3


def test_plain_http_429_without_twilio_code(api: FakeTwilio) -> None:
    api.fail_next(1, 429, 429)
    with pytest.raises(SmsTemporaryError) as raised:
        provider(api).send(RESIDENT, "hello")
    assert raised.value.code == errors.HTTP_TOO_MANY_REQUESTS
    assert raised.value.retry_after is None


def test_opted_out_is_permanent(api: FakeTwilio) -> None:
    api.fail_next(1, 400, 21610)
    with pytest.raises(SmsPermanentError) as raised:
        provider(api).send(RESIDENT, "hello")
    assert raised.value.code == errors.OPTED_OUT
    assert raised.value.opted_out


def test_invalid_number_is_permanent(api: FakeTwilio) -> None:
    api.fail_next(1, 400, 21211)
    with pytest.raises(SmsPermanentError) as raised:
        provider(api).send("+1555", "hello")
    assert raised.value.code == errors.INVALID_TO and not raised.value.opted_out


def test_server_error_is_temporary_and_may_have_been_sent(api: FakeTwilio) -> None:
    api.fail_next(1, 503, 20500, "Service unavailable")
    with pytest.raises(SmsTemporaryError) as raised:
        provider(api).send(RESIDENT, "hello")
    assert raised.value.maybe_sent is True


def test_bad_credentials_are_temporary(api: FakeTwilio) -> None:
    twilio = TwilioProvider(SID, "wrong-token", "31100", api.base_url)
    with pytest.raises(SmsTemporaryError, match="auth_token") as raised:
        twilio.send(RESIDENT, "hello")
    assert raised.value.code == errors.AUTHENTICATION_FAILED
    assert api.attempts == []


def test_unreachable_api_is_temporary_and_surely_not_sent() -> None:
    twilio = TwilioProvider(SID, TOKEN, "31100", f"http://127.0.0.1:{free_port()}", timeout=2)
    with pytest.raises(SmsTemporaryError) as raised:
        twilio.send(RESIDENT, "hello")
    assert raised.value.maybe_sent is False


def test_read_timeout_may_have_been_sent() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    thread = threading.Thread(target=lambda: accepted.append(listener.accept()[0]), daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        twilio = TwilioProvider(SID, TOKEN, "31100", url, timeout=0.3)
        with pytest.raises(SmsTemporaryError) as raised:
            twilio.send(RESIDENT, "hello")
        assert raised.value.maybe_sent is True
    finally:
        thread.join(5)
        for connection in accepted:
            connection.close()
        listener.close()


def test_no_phone_numbers_or_bodies_in_logs(
    api: FakeTwilio, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        provider(api).send(RESIDENT, "secret body text")
    assert "6135550123" not in caplog.text
    assert "secret body text" not in caplog.text
    assert "+1613***0123" in caplog.text


# -- Twilio: media ---------------------------------------------------------------------------


class Listener:
    """A loopback HTTP server standing for a host of the gateway's own network (its
    `/metrics`, a metadata service): it records every request that reaches it."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        paths = self.paths

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                paths.append(self.path)
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", "7")
                self.end_headers()
                self.wfile.write(b"secret\n")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                       daemon=True)

    def __enter__(self) -> Listener:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)

    def url(self, path: str = "/metrics", host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.server.server_address[1]}{path}"


def test_fetch_media_follows_the_redirect_with_auth_only_on_the_api() -> None:
    picture = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 100
    with FakeTwilio(cdn_host="localhost") as api:  # its CDN under another host name
        url = api.add_media("image/jpeg", picture)
        twilio = provider(api, media_hosts=("localhost",))
        assert twilio.fetch_media(url) == ("image/jpeg", picture)
        (cdn,) = api.cdn_requests
        assert cdn.authorization is None  # the CDN never sees the credentials
        with pytest.raises(MediaError, match="not on the provider's media hosts"):
            provider(api).fetch_media(url)  # the CDN is not one of this client's media hosts
        assert len(api.cdn_requests) == 1


def test_fetch_media_needs_the_credentials(api: FakeTwilio) -> None:
    url = api.add_media("image/png", b"png")
    with pytest.raises(MediaError) as raised:
        TwilioProvider(SID, "wrong-token", "31100", api.base_url).fetch_media(url)
    assert raised.value.code == 401


def test_fetch_media_size_cap(api: FakeTwilio) -> None:
    url = api.add_media("video/mp4", b"v" * 2048)
    with pytest.raises(MediaError, match="too large") as raised:
        provider(api, max_media_bytes=1024).fetch_media(url)
    assert raised.value.temporary is False
    assert provider(api, max_media_bytes=2048).fetch_media(url)[1] == b"v" * 2048


def test_fetch_media_missing_and_unreachable(api: FakeTwilio) -> None:
    url = api.add_media("image/png", b"png")
    with pytest.raises(MediaError) as missing:
        provider(api).fetch_media(url.replace("/Media/ME", "/Media/MEx"))
    assert missing.value.code == 404 and missing.value.temporary is False
    with pytest.raises(MediaError) as unreachable:
        provider(api, media_hosts=("localhost",)).fetch_media(
            f"http://localhost:{free_port()}/m.png"
        )
    assert unreachable.value.temporary is True
    with pytest.raises(MediaError):
        provider(api).fetch_media("file:///etc/passwd")


def test_credentials_are_not_sent_to_other_origins(api: FakeTwilio) -> None:
    url = api.add_media("image/gif", b"GIF89a")
    cdn_style = url.replace("127.0.0.1", "localhost")  # same server, another origin
    with pytest.raises(MediaError) as raised:
        provider(api, media_hosts=("localhost",)).fetch_media(cdn_style)
    assert raised.value.code == 401  # asked without credentials


@pytest.mark.parametrize("where", [
    "/metrics on loopback", "another port of the API's host", "credentials in the URL",
    "a host merely ending like the CDN", "the CDN's bucket name as a host's prefix",
])
def test_media_urls_off_the_provider_hosts_are_never_requested(
    api: FakeTwilio, where: str
) -> None:
    """Seen: a signed MediaUrl0 pointing at /metrics on loopback was fetched and attached."""
    with Listener() as listener:
        url = {
            "/metrics on loopback": listener.url(),
            "another port of the API's host": listener.url("/2010-04-01/Accounts/x/Media/ME1"),
            "credentials in the URL":
                f"http://api.twilio.com@127.0.0.1:{listener.server.server_address[1]}/metrics",
            "a host merely ending like the CDN": listener.url(host="eviltwiliocdn.com"),
            "the CDN's bucket name as a host's prefix":
                listener.url("/metrics", host="media.twiliocdn.com.localhost"),
        }[where]
        with pytest.raises(MediaError, match="not on the provider's media hosts") as raised:
            provider(api).fetch_media(url)
        assert raised.value.temporary is False  # listed in the email, never retried
        assert listener.paths == []


def test_redirects_are_followed_only_to_the_provider_hosts(api: FakeTwilio) -> None:
    with Listener() as listener:
        for target in (listener.url(), listener.url(host="localhost"),
                       "http://169.254.169.254/latest/meta-data/"):
            url = api.add_media("image/png", b"png", redirect_to=target)
            with pytest.raises(MediaError, match="not on the provider's media hosts"):
                provider(api).fetch_media(url)
        assert listener.paths == []
    # the fake's own redirect (to its CDN path on the API's host) is followed
    assert provider(api).fetch_media(api.add_media("image/png", b"png")) == ("image/png", b"png")


def test_twilio_media_hosts() -> None:
    twilio = TwilioProvider(SID, TOKEN, "31100")
    api_url = f"https://api.twilio.com/2010-04-01/Accounts/{SID}/Messages/MM1/Media/ME1"
    for url in (api_url, "https://mms.twiliocdn.com/AC1/abc", "https://media.twiliocdn.com/x",
                "https://s3-external-1.amazonaws.com/media.twiliocdn.com/AC1/abc"):
        assert twilio.media_allowed(url), url
    for url in ("https://api.twilio.com:8443/x", "http://api.twilio.com/x",
                "https://twiliocdn.com.evil.example/x", "https://s3-external-1.amazonaws.com/b/x",
                "https://evil.example/media.twiliocdn.com/x", "https://user:pw@api.twilio.com/x",
                "https://127.0.0.1/metrics", "ftp://mms.twiliocdn.com/x"):
        assert not twilio.media_allowed(url), url


# -- the status callback of the fake (what issue 3's /sms/status will receive) -------------


def test_fake_posts_signed_status_callbacks(api: FakeTwilio) -> None:
    received: list[tuple[str, dict[str, str]]] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers["Content-Length"])
            form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
            received.append((self.headers["X-Twilio-Signature"], form))
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/sms/status"
        sid = provider(api).send(RESIDENT, "hello", url)
        assert api.send_status(sid, "undelivered", errors.UNREACHABLE_HANDSET) == 204
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    ((signature, form),) = received
    assert RequestValidator(TOKEN).validate(url, form, signature)
    assert form["MessageSid"] == sid and form["MessageStatus"] == "undelivered"
    assert form["ErrorCode"] == "30003"


# -- the sandbox -----------------------------------------------------------------------------


def test_sandbox_records_texts_as_json_lines(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sandbox = SandboxProvider(tmp_path / "var")
    with caplog.at_level(logging.DEBUG):
        first = sandbox.send(RESIDENT, "Réparé!", "https://gw.example/sms/status")
        second = sandbox.send(RESIDENT, "Second")
    assert first != second and first.startswith("SM") and len(first) == 34
    lines = (tmp_path / "var" / "sms.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["sid"] for line in lines] == [first, second]
    records = read_sent(tmp_path / "var")
    assert records[0]["to"] == RESIDENT and records[0]["body"] == "Réparé!"
    assert records[0]["status_callback"] == "https://gw.example/sms/status"
    assert records[0]["at"].endswith("+00:00")
    assert "6135550123" not in caplog.text and "Réparé" not in caplog.text
    assert read_sent(tmp_path / "nothing") == []


def test_sandbox_fetches_its_own_files_and_its_public_url_only(
    tmp_path: Path, api: FakeTwilio
) -> None:
    picture = tmp_path / "my pothole.jpg"
    picture.write_bytes(b"\xff\xd8jpeg")
    public_url = f"http://localhost:{api.port}"  # the gateway's own, in the sandbox
    sandbox = SandboxProvider(tmp_path, public_url=public_url, max_media_bytes=100)
    assert sandbox.fetch_media(picture.as_uri()) == ("image/jpeg", b"\xff\xd8jpeg")
    with pytest.raises(MediaError):
        sandbox.fetch_media((tmp_path / "missing.png").as_uri())
    big = tmp_path / "big.png"
    big.write_bytes(b"x" * 101)
    with pytest.raises(MediaError, match="too large"):
        sandbox.fetch_media(big.as_uri())
    with pytest.raises(MediaError, match="outside"):
        sandbox.fetch_media("file:///etc/passwd")
    # http(s): on public_url, fetched without credentials
    url = api.add_media("image/png", b"png")
    media_sid = url.rsplit("/", 1)[1]
    assert sandbox.fetch_media(f"{public_url}/cdn/{media_sid}") == ("image/png", b"png")
    with pytest.raises(MediaError) as raised:  # its API path: asked without credentials
        sandbox.fetch_media(url.replace("127.0.0.1", "localhost"))
    assert raised.value.code == 401
    with Listener() as listener:  # anything else is never requested
        for other in (url, listener.url()):
            with pytest.raises(MediaError, match="not on the provider's media hosts"):
                sandbox.fetch_media(other)
            with pytest.raises(MediaError, match="not on the provider's media hosts"):
                SandboxProvider(tmp_path).fetch_media(other)
        assert listener.paths == []


# -- the factory -----------------------------------------------------------------------------


def test_make_provider(tmp_path: Path, api: FakeTwilio) -> None:
    sandbox = make_provider(SmsSettings(provider="sandbox"), tmp_path)
    assert isinstance(sandbox, SandboxProvider) and sandbox.name == "sandbox"
    sandbox.send(RESIDENT, "hi")
    assert (tmp_path / "sms.jsonl").exists()
    own = make_provider(SmsSettings(provider="sandbox"), tmp_path, "http://127.0.0.1:8311")
    assert isinstance(own, SandboxProvider)
    assert own.media_allowed("http://127.0.0.1:8311/sandbox/media/a.jpg")
    assert not own.media_allowed("http://127.0.0.1:9100/metrics")
    twilio = make_provider(
        SmsSettings(
            provider="twilio",
            account_sid=SID,
            auth_token=TOKEN,
            sender="+16135550000",
            api_base_url=api.base_url + "/",
        ),
        tmp_path,
    )
    assert isinstance(twilio, LazyTwilioProvider) and twilio.name == "twilio"
    assert isinstance(twilio, SmsProvider) and isinstance(sandbox, SmsProvider)
    twilio.send(RESIDENT, "hi")  # the REST client is built at this first use
    assert isinstance(twilio.real, TwilioProvider)
    assert api.messages[0]["From"] == "+16135550000"
    assert TOKEN not in repr(twilio)
    with pytest.raises(ValueError, match="provider"):
        make_provider(SmsSettings(provider="carrier-pigeon"), tmp_path)
    with pytest.raises(ValueError, match="sender"):
        make_provider(SmsSettings(provider="twilio", account_sid=SID, auth_token=TOKEN), tmp_path)


# -- errors: what each code means -----------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code", "reason"),
    [
        (400, 21610, "opted_out"),
        (400, 21211, "invalid_number"),
        (400, 21614, "invalid_number"),
        (400, 21612, "unreachable"),
        (400, 21212, "sender"),
        (400, 21617, "too_long"),
        (400, 21999, "rejected"),
    ],
)
def test_permanent_errors_say_why(api: FakeTwilio, status: int, code: int, reason: str) -> None:
    api.fail_next(1, status, code)
    with pytest.raises(SmsPermanentError) as raised:
        provider(api).send(RESIDENT, "hello")
    assert raised.value.code == code
    assert raised.value.reason == reason
    assert raised.value.opted_out is (code == 21610)
    assert raised.value.invalid_number is (reason == "invalid_number")


def test_delivery_codes_classified() -> None:
    assert errors.permanent_reason(30007) == "filtered"
    assert errors.permanent_reason(30004) == "filtered"
    assert errors.permanent_reason(30005) == "invalid_number"
    assert errors.permanent_reason(30006) == "unreachable"
    assert errors.permanent_reason(None) == "rejected"


def test_the_fake_refuses_bodies_over_1600_characters(api: FakeTwilio) -> None:
    with pytest.raises(SmsPermanentError) as raised:
        provider(api).send(RESIDENT, "x" * 1601)
    assert raised.value.code == errors.BODY_TOO_LONG and raised.value.reason == "too_long"


def test_server_error_with_retry_after(api: FakeTwilio) -> None:
    api.fail_next(1, 503, 20503, "Service unavailable", retry_after="7")
    with pytest.raises(SmsTemporaryError) as raised:
        provider(api).send(RESIDENT, "hello")
    assert raised.value.maybe_sent is True and raised.value.retry_after == 7.0


def test_retry_after_as_an_http_date(api: FakeTwilio) -> None:
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    api.fail_next(1, 429, 20429, retry_after=later)
    with pytest.raises(SmsTemporaryError) as raised:
        provider(api).send(RESIDENT, "hello")
    assert raised.value.retry_after is not None and 20 <= raised.value.retry_after <= 30
    assert raised.value.maybe_sent is False


# -- accepted, then no answer: maybe sent; find_sent tells ---------------------------------


def test_accepted_then_timeout_is_maybe_sent_and_found(api: FakeTwilio) -> None:
    twilio = provider(api, timeout=0.4)
    since = datetime.now(UTC)
    api.hang_next(1, "timeout")
    with pytest.raises(SmsTemporaryError) as raised:
        twilio.send(RESIDENT, "Your bin will be collected Tuesday.")
    assert raised.value.maybe_sent is True
    (form,) = api.messages  # it WAS sent
    api.release_hangs()
    assert twilio.find_sent(RESIDENT, "Your bin will be collected Tuesday.", since) == form["_sid"]
    # the retry logic: found, so not sent again
    assert len(api.messages) == 1


def test_accepted_then_connection_dropped_is_maybe_sent(api: FakeTwilio) -> None:
    twilio = provider(api)
    since = datetime.now(UTC)
    api.hang_next(1, "close")
    with pytest.raises(SmsTemporaryError) as raised:
        twilio.send(RESIDENT, "On our way.")
    assert raised.value.maybe_sent is True
    assert twilio.find_sent(RESIDENT, "On our way.", since) == api.messages[0]["_sid"]
    assert twilio.send(RESIDENT, "Next one") != ""  # the fake answers again afterwards


def test_find_sent_sends_the_twilio_filters(api: FakeTwilio) -> None:
    twilio = provider(api)
    since = datetime(2026, 11, 22, 10, 4, 5, 123456, tzinfo=timezone(timedelta(hours=-5)))
    assert twilio.find_sent(RESIDENT, "nothing was sent", since) is None
    first, second = api.list_requests
    # what the twilio client sends for to= and date_sent_after= (UTC, to the second,
    # less the allowed clock skew)
    assert first == {"To": RESIDENT, "DateSent>": "2026-11-22T15:04:00Z", "PageSize": "50"}
    assert second == {"To": RESIDENT, "PageSize": "50"}  # the queued ones have no DateSent


def test_find_sent_matches_only_the_same_text_to_the_same_number_from_us(
    api: FakeTwilio,
) -> None:
    since = datetime.now(UTC)
    ours = provider(api)
    sid = ours.send(RESIDENT, "Crew dispatched — thanks!")
    ours.send("+16135550199", "Crew dispatched — thanks!")
    provider(api, sender="+16135550000").send(RESIDENT, "Other sender")
    assert ours.find_sent(RESIDENT, "Crew dispatched — thanks!", since) == sid
    assert ours.find_sent(RESIDENT, "Crew dispatched - thanks!", since) == sid  # smart encoding
    assert ours.find_sent(RESIDENT, "Crew dispatched", since) is None
    assert ours.find_sent("+16135550100", "Crew dispatched — thanks!", since) is None
    assert ours.find_sent(RESIDENT, "Other sender", since) is None
    assert provider(api, sender="+16135550000").find_sent(RESIDENT, "Other sender", since)
    # a message from before `since` (beyond the clock skew) is another message
    assert (
        ours.find_sent(RESIDENT, "Crew dispatched — thanks!", since + timedelta(minutes=5)) is None
    )
    # naive means UTC
    assert ours.find_sent(RESIDENT, "Crew dispatched — thanks!", since.replace(tzinfo=None)) == sid


def test_find_sent_through_a_messaging_service(api: FakeTwilio) -> None:
    since = datetime.now(UTC)
    service = provider(api, sender="MG" + "b" * 32)
    sid = service.send(RESIDENT, "Bonjour")
    assert service.find_sent(RESIDENT, "Bonjour", since) == sid
    assert provider(api, sender="MG" + "c" * 32).find_sent(RESIDENT, "Bonjour", since) is None


def test_find_sent_finds_a_message_still_queued() -> None:
    with FakeTwilio(SID, TOKEN, queue_only=True) as api:
        since = datetime.now(UTC)
        twilio = provider(api)
        sid = twilio.send(RESIDENT, "Queued at Twilio")
        assert twilio.find_sent(RESIDENT, "Queued at Twilio", since) == sid
        assert len(api.list_requests) == 2  # the DateSent query could not see it


def test_find_sent_when_the_api_cannot_be_asked(api: FakeTwilio) -> None:
    since = datetime.now(UTC)
    with pytest.raises(SmsTemporaryError) as raised:
        TwilioProvider(SID, "wrong", "31100", api.base_url).find_sent(RESIDENT, "x", since)
    assert raised.value.code == 401
    unreachable = TwilioProvider(SID, TOKEN, "31100", f"http://127.0.0.1:{free_port()}", timeout=2)
    with pytest.raises(SmsTemporaryError):
        unreachable.find_sent(RESIDENT, "x", since)


def test_same_body() -> None:
    assert same_body("Sent from your Twilio trial account - Hello", "Hello")
    assert same_body("L'équipe passe demain", "L’équipe passe demain")
    assert same_body("Cafe\u0301", "Café")
    assert not same_body("Hello", "Hello!")


# -- the fake's list, pages and pacing observer ----------------------------------------------


def test_the_fake_lists_in_twilio_pages(api: FakeTwilio) -> None:
    twilio = provider(api)
    sids = [twilio.send(RESIDENT, f"text {i}") for i in range(5)]
    twilio.send("+16135550199", "someone else")
    listed = twilio.client.messages.list(to=RESIDENT, page_size=2)
    assert [m.sid for m in listed] == sids[::-1]  # newest first, across three pages
    assert [r.get("Page") for r in api.list_requests] == [None, "1", "2"]
    first = listed[0]
    assert first.to == RESIDENT and first.from_ == "31100" and first.direction == "outbound-api"
    assert first.body == "text 4" and first.num_segments == "1"
    assert first.date_sent is not None and first.date_created is not None
    limited = twilio.client.messages.list(to=RESIDENT, limit=3)
    assert len(limited) == 3


def test_the_fake_filters_by_date_sent(api: FakeTwilio) -> None:
    twilio = provider(api)
    twilio.send(RESIDENT, "today")
    today = datetime.now(UTC)
    tomorrow = today + timedelta(days=1)
    assert len(twilio.client.messages.list(date_sent_after=today - timedelta(hours=1))) == 1
    assert twilio.client.messages.list(date_sent_after=tomorrow) == []
    assert len(twilio.client.messages.list(date_sent_before=tomorrow)) == 1
    assert twilio.client.messages.list(date_sent_before=today - timedelta(hours=1)) == []
    assert len(twilio.client.messages.list(date_sent=today.strftime("%Y-%m-%d"))) == 1
    assert twilio.client.messages.list(date_sent=tomorrow.strftime("%Y-%m-%d")) == []
    assert twilio.client.messages.list(from_="+16135550000") == []


def test_the_fake_records_arrivals_and_can_refuse_bursts() -> None:
    with FakeTwilio(SID, TOKEN, reject_above=3) as api:
        twilio = provider(api)
        twilio.send(RESIDENT, "one")
        twilio.send(RESIDENT, "x" * 200)  # two segments
        with pytest.raises(SmsTemporaryError) as raised:
            twilio.send(RESIDENT, "too many")
        assert raised.value.code == errors.TOO_MANY_REQUESTS and raised.value.retry_after == 1.0
        assert [n for _, n in api.arrivals] == [1, 2]
        assert api.max_in_window() == 3
        times = [t for t, _ in api.arrivals]
        assert times == sorted(times)


def test_status_callback_marks_a_queued_message_sent() -> None:
    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        with FakeTwilio(SID, TOKEN, queue_only=True) as api:
            twilio = provider(api)
            url = f"http://127.0.0.1:{server.server_address[1]}/sms/status"
            sid = twilio.send(RESIDENT, "hello", url)
            long_ago = datetime(2000, 1, 1, tzinfo=UTC)
            assert twilio.client.messages.list(date_sent_after=long_ago) == []
            assert api.send_status(sid, "delivered") == 204
            [listed] = twilio.client.messages.list(date_sent_after=long_ago)
            assert listed.sid == sid and listed.status == "delivered"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


# -- the sandbox: find_sent ------------------------------------------------------------------


def test_sandbox_find_sent(tmp_path: Path) -> None:
    sandbox = SandboxProvider(tmp_path)
    since = datetime.now(UTC) - timedelta(seconds=1)
    assert sandbox.find_sent(RESIDENT, "hi", since) is None
    first = sandbox.send(RESIDENT, "hi")
    second = sandbox.send(RESIDENT, "hi")
    sandbox.send("+16135550199", "other")
    assert sandbox.find_sent(RESIDENT, "hi", since) == second  # the most recent
    assert first != second
    assert sandbox.find_sent(RESIDENT, "hi", since.replace(tzinfo=None)) == second
    assert sandbox.find_sent(RESIDENT, "hello", since) is None
    assert sandbox.find_sent("+16135550199", "hi", since) is None
    assert sandbox.find_sent(RESIDENT, "hi", datetime.now(UTC) + timedelta(minutes=1)) is None


def test_every_provider_is_a_setting_choice_and_passes_the_webhook_security_cases() -> None:
    """A provider is one folder plus its registration: the `sms.provider` choices, the
    registry and the shared webhook security cases must all name the same providers."""
    import importlib
    import pkgutil

    import tests
    from gateway.settings.model import SMS_PROVIDERS
    from gateway.sms import PROVIDERS
    from tests.webhook_security import WebhookSecurityCases

    assert set(PROVIDERS) == set(SMS_PROVIDERS)
    for info in pkgutil.iter_modules(tests.__path__):
        if info.name.startswith("test_webhooks_"):
            importlib.import_module(f"tests.{info.name}")
    covered = set()
    for case in WebhookSecurityCases.__subclasses__():
        for leaf in [case, *case.__subclasses__()]:
            section = getattr(leaf, "sms_section", "")
            covered |= {name for name in PROVIDERS if f"provider: {name}\n" in section}
    assert covered == set(PROVIDERS)
