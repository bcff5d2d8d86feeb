"""`gateway.logs`: waitress's per-request queue warning is let through once a minute."""

from __future__ import annotations

import logging

import pytest

from gateway.logs import OncePer, setup_logging


def test_once_per_lets_one_record_through_per_period(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [100.0]
    monkeypatch.setattr("gateway.logs.time.monotonic", lambda: clock[0])
    once = OncePer(60.0)
    record = logging.LogRecord("waitress.queue", logging.WARNING, "", 0, "depth", (), None)
    assert once.filter(record)
    assert not once.filter(record)
    clock[0] += 59.0
    assert not once.filter(record)
    clock[0] += 1.0
    assert once.filter(record)


def test_waitress_queue_warnings_are_rate_limited(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        setup_logging("INFO")
        queue = logging.getLogger("waitress.queue")
        for depth in range(50):
            queue.warning("Task queue depth is %d", depth)
        logging.getLogger("gateway.test").warning("another warning")
        err = capsys.readouterr().err
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        logging.getLogger("waitress.queue").filters[:] = []
    assert err.count("Task queue depth") == 1
    assert "another warning" in err
