"""What the performance work added to the web half: a committed text wakes the worker's
dispatcher at once (no outbox poll wait); the web server (uvicorn, gateway/run/web_server.py)
stops promptly even with keep-alive connections open, streams answers written in parts, and
bounds what a client can hold: a request's head, a request that never finishes, a
connection that sends nothing."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask

from gateway.app import Gateway
from gateway.run import web_server as server_module
from gateway.run.web_server import MAX_HEAD_BYTES, WebServer
from gateway.store import open_store
from gateway.web import create_app
from gateway.web.asgi import WsgiBridge
from tests.gateway_fixtures import Resident, free_port, settings_in


def make(tmp_path: Path) -> Gateway:
    settings = settings_in(tmp_path, smtp_port=free_port())
    store = open_store(settings.database)
    store.upgrade()
    store.close()
    return Gateway.from_settings(settings)


def test_a_text_queued_for_email_notifies_the_outbox_listeners(tmp_path: Path) -> None:
    gateway = make(tmp_path)
    calls: list[str] = []
    gateway.outbox_listeners.append(lambda: calls.append("woken"))
    resident = Resident(create_app(gateway).test_client(), gateway.settings)
    resident.say("+16135550150", "Pothole on Bank St", expect="city")
    assert calls == []  # held while the city is asked: nothing for the worker yet
    resident.say("+16135550150", "Ottawa", expect="Ottawa")
    assert calls == ["woken"]  # the held text is now an email in the outbox
    gateway.close()


def test_a_failing_listener_does_not_fail_the_webhook(tmp_path: Path) -> None:
    gateway = make(tmp_path)

    def broken() -> None:
        raise RuntimeError("the loop is closed")

    gateway.outbox_listeners.append(broken)
    resident = Resident(create_app(gateway).test_client(), gateway.settings)
    resident.say("+16135550151", "Pothole", expect="city")
    resident.say("+16135550151", "Ottawa", expect="Ottawa")
    gateway.close()


def test_the_web_server_stops_promptly_with_keep_alive_connections_open() -> None:
    app = Flask("t")
    release = threading.Event()

    @app.get("/")
    def index() -> str:
        return "ok"

    @app.get("/slow")
    def slow() -> str:
        release.wait(0.5)
        return "slow"

    port = free_port()
    server = WebServer(WsgiBridge(app, 8), f"127.0.0.1:{port}")
    server.start()
    session = requests.Session()
    assert session.get(f"http://127.0.0.1:{port}/", timeout=5).text == "ok"  # kept alive
    in_flight: list[str] = []
    slow_request = threading.Thread(
        target=lambda: in_flight.append(requests.get(f"http://127.0.0.1:{port}/slow",
                                                     timeout=5).text))
    slow_request.start()
    time.sleep(0.1)
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 2.0
    slow_request.join(5)
    assert in_flight == ["slow"]  # the request in flight was answered
    try:
        requests.get(f"http://127.0.0.1:{port}/", timeout=1)
    except requests.ConnectionError:
        pass
    else:
        raise AssertionError("still accepting after stop()")
    session.close()


def test_answers_written_in_parts_arrive_whole() -> None:
    """A WSGI app that writes part of its answer, then the rest: all of it arrives."""
    wrote, release = threading.Event(), threading.Event()

    def app(environ: dict[str, object], start_response: Any) -> list[bytes]:
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"partial ")
        wrote.set()
        release.wait(5)
        return [b"answer"]

    server = WebServer(WsgiBridge(app, 2), "127.0.0.1:0")
    server.start()
    answers: list[str] = []
    client = threading.Thread(
        target=lambda: answers.append(
            requests.get(f"http://127.0.0.1:{server.port}/", timeout=5).text)
    )
    client.start()
    try:
        assert wrote.wait(5)
    finally:
        release.set()
    client.join(5)
    server.stop()
    assert answers == ["partial answer"]


def _raw(port: int, data: bytes, wait: float = 5.0) -> bytes:
    """Send `data`, then read until the server closes the connection (or `wait` passes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        if data:
            sock.sendall(data)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    return received


@pytest.fixture
def hello_server() -> Iterator[WebServer]:
    app = Flask("t")

    @app.get("/")
    def index() -> str:
        return "hello"

    server = WebServer(WsgiBridge(app, 2), "127.0.0.1:0")
    server.start()
    yield server
    server.stop()


def test_a_request_head_over_the_limit_is_refused_and_the_connection_closed(
    hello_server: WebServer,
) -> None:
    head = b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-Filler: " + b"a" * (MAX_HEAD_BYTES + 10)
    answer = _raw(hello_server.port, head)  # no end of headers: it would wait for more
    assert answer.startswith(b"HTTP/1.1 431 ")
    # a normal request is still served
    assert requests.get(f"http://127.0.0.1:{hello_server.port}/", timeout=5).text == "hello"


def test_a_request_that_never_finishes_is_closed(
    hello_server: WebServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server_module, "RECEIVE_SECONDS", 0.3)
    started = time.monotonic()
    answer = _raw(hello_server.port, b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    assert answer == b""  # closed, nothing answered
    assert time.monotonic() - started < 3.0


def test_a_connection_that_sends_nothing_is_closed(
    hello_server: WebServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server_module, "RECEIVE_SECONDS", 0.3)
    started = time.monotonic()
    assert _raw(hello_server.port, b"") == b""
    assert time.monotonic() - started < 3.0


def test_pipelined_requests_are_answered_in_order(hello_server: WebServer) -> None:
    two = b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    answer = _raw(hello_server.port, two)
    first, _, second = answer.partition(b"hello")
    assert first.startswith(b"HTTP/1.1 200 ")
    assert b"HTTP/1.1 404 " in second


def test_connections_send_small_writes_at_once(hello_server: WebServer) -> None:
    """TCP_NODELAY on every connection: an answer written in two parts (head, then body)
    must not wait for the client's delayed ACK (40 ms a request before; issue 16)."""
    session = requests.Session()
    assert session.get(f"http://127.0.0.1:{hello_server.port}/", timeout=5).text == "hello"
    connections = list(hello_server._server.server_state.connections)
    assert connections
    for connection in connections:
        sock = connection.transport.get_extra_info("socket")
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    session.close()


def test_forwarded_headers_are_not_believed_by_the_server() -> None:
    """uvicorn believes X-Forwarded-For from loopback by default; the gateway decides that
    itself (`web.trusted_proxies`, werkzeug's ProxyFix), so the server must not."""
    app = Flask("t")

    @app.get("/who")
    def who() -> str:
        from flask import request

        return f"{request.remote_addr} {request.scheme}"

    server = WebServer(WsgiBridge(app, 2), "127.0.0.1:0")
    server.start()
    try:
        answer = requests.get(f"http://127.0.0.1:{server.port}/who", timeout=5, headers={
            "X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"})
    finally:
        server.stop()
    assert answer.text == "127.0.0.1 http"
