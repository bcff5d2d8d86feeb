"""What the performance work added to the web half: a committed text wakes the worker's
dispatcher at once (no outbox poll wait), and the web server stops promptly even with
keep-alive connections open."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import requests
from flask import Flask

from gateway.app import Gateway
from gateway.run.server import WebServer
from gateway.store import open_store
from gateway.web import create_app
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
    server = WebServer(app, f"127.0.0.1:{port}")
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


def _channel(cls: type[Any], serving: bool, buffered: int, closing: bool = False) -> Any:
    channel = object.__new__(cls)  # the state writable() reads, without a socket
    channel.requests = ["a request being served"] if serving else []
    channel.total_outbufs_len = buffered
    channel.will_close = closing
    channel.close_when_flushed = False
    return channel


def test_a_channel_does_not_ask_to_write_while_its_request_is_served() -> None:
    """waitress's loop must not spin on a channel whose task has written part of its answer
    and still runs (gateway.run.server: it took the GIL from the task threads, issue 16)."""
    from waitress.channel import HTTPChannel

    from gateway.run.server import _QuietChannel

    assert HTTPChannel.writable(_channel(HTTPChannel, serving=True, buffered=118))  # the spin
    assert not _channel(_QuietChannel, serving=True, buffered=118).writable()
    assert _channel(_QuietChannel, serving=False, buffered=118).writable()  # task done: send
    assert _channel(_QuietChannel, serving=True, buffered=20_000).writable()  # stream a big one
    assert _channel(_QuietChannel, serving=True, buffered=0, closing=True).writable()
    assert not _channel(_QuietChannel, serving=False, buffered=0).writable()


def test_answers_written_in_parts_arrive_whole() -> None:
    """A task that writes part of its answer, then the rest: all of it arrives (the task's
    end wakes the loop, which sends what is left)."""
    wrote, release = threading.Event(), threading.Event()

    def app(environ: dict[str, object], start_response: Any) -> list[bytes]:
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"partial ")
        wrote.set()
        release.wait(5)
        return [b"answer"]

    port = free_port()
    server = WebServer(app, f"127.0.0.1:{port}", threads=2)
    server.start()
    answers: list[str] = []
    client = threading.Thread(
        target=lambda: answers.append(requests.get(f"http://127.0.0.1:{port}/", timeout=5).text)
    )
    client.start()
    try:
        assert wrote.wait(5)
    finally:
        release.set()
        client.join(5)
        server.stop()
    assert answers == ["partial answer"]
