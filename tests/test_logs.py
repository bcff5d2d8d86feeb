"""`gateway.logs`: the web server's per-request warnings are let through once a minute."""

from __future__ import annotations

import logging

import pytest

from gateway.logs import OncePer, setup_logging


def test_once_per_lets_one_record_through_per_period(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [100.0]
    monkeypatch.setattr("gateway.logs.time.monotonic", lambda: clock[0])
    once = OncePer(60.0)
    record = logging.LogRecord("uvicorn.error", logging.WARNING, "", 0, "limit", (), None)
    assert once.filter(record)
    assert not once.filter(record)
    clock[0] += 59.0
    assert not once.filter(record)
    error = logging.LogRecord("uvicorn.error", logging.ERROR, "", 0, "crash", (), None)
    assert once.filter(error)  # errors always pass
    clock[0] += 1.0
    assert once.filter(record)


def test_the_servers_per_request_warnings_are_rate_limited(
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    server = logging.getLogger("uvicorn.error")
    try:
        setup_logging("INFO")
        server.info("Uvicorn running on socket")
        for _ in range(50):
            server.warning("Exceeded concurrency limit.")
        server.error("Exception in ASGI application")
        logging.getLogger("gateway.test").warning("another warning")
        err = capsys.readouterr().err
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        server.filters[:] = []
        server.setLevel(logging.NOTSET)
    assert err.count("Exceeded concurrency limit") == 1
    assert "Exception in ASGI application" in err
    assert "Uvicorn running" not in err
    assert "another warning" in err
