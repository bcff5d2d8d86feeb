"""gateway/run/sdnotify.py against real AF_UNIX datagram sockets, playing systemd's side.

The receiving socket asks for the sender's credentials (SO_PASSCRED), as systemd does to
enforce NotifyAccess=main, so the tests also check which process each message came from.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import secrets
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.run.sdnotify import Healthy, Notifier, feed_watchdog, watchdog_interval

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Message:
    fields: list[str]
    pid: int


class FakeSystemd:
    """The manager's end of NOTIFY_SOCKET: a datagram socket that reads sender credentials."""

    def __init__(self, address: str, environment_value: str) -> None:
        self.address = address
        self.environment_value = environment_value  # what NOTIFY_SOCKET is set to
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(address)

    def receive(self, timeout: float = 5.0) -> Message | None:
        ready, _, _ = select.select([self.sock], [], [], timeout)
        if not ready:
            return None
        data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
        pid = -1
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid, _uid, _gid = struct.unpack("3i", payload[:12])
        return Message(data.decode().split("\n"), pid)

    def receive_all(self, timeout: float = 0.0) -> list[Message]:
        messages = []
        while (message := self.receive(timeout)) is not None:
            messages.append(message)
        return messages

    def wait_for(self, field: str, timeout: float = 10.0) -> Message:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            message = self.receive(left)
            if message is not None and field in message.fields:
                return message
        raise AssertionError(f"no {field} within {timeout} s")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def path_systemd() -> Iterator[FakeSystemd]:
    # A short folder: a socket path must fit in sun_path (108 bytes).
    with tempfile.TemporaryDirectory(prefix="sd") as folder:
        path = os.path.join(folder, "notify")
        manager = FakeSystemd(path, path)
        yield manager
        manager.close()


@pytest.fixture
def abstract_systemd() -> Iterator[FakeSystemd]:
    name = f"sms311-test/notify/{secrets.token_hex(8)}"
    manager = FakeSystemd("\0" + name, "@" + name)
    yield manager
    manager.close()


@pytest.fixture(params=["path", "abstract"])
def systemd(request: pytest.FixtureRequest) -> FakeSystemd:
    manager: FakeSystemd = request.getfixturevalue(f"{request.param}_systemd")
    return manager


# --- Notifier ---------------------------------------------------------------------------


def test_every_notification_reaches_the_socket(systemd: FakeSystemd) -> None:
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": systemd.environment_value})
    assert notifier.enabled
    assert notifier.ready("Listening on 127.0.0.1:8311")
    assert notifier.status("Outbox: 3 pending\nand more")
    assert notifier.watchdog()
    assert notifier.reloading()
    assert notifier.stopping()
    assert notifier.ready()
    received = [m.fields for m in systemd.receive_all(timeout=1.0)]
    assert received == [
        ["READY=1", "STATUS=Listening on 127.0.0.1:8311"],
        ["STATUS=Outbox: 3 pending and more"],  # one line: a newline would end the field
        ["WATCHDOG=1"],
        ["STATUS=Reloading the municipality map"],  # no RELOADING=1 on systemd 252
        ["STOPPING=1", "STATUS=Stopping"],
        ["READY=1"],
    ]


def test_messages_come_from_this_process(systemd: FakeSystemd) -> None:
    # NotifyAccess=main: systemd accepts a message only from the main PID; threads share it.
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": systemd.environment_value})
    notifier.ready()
    message = systemd.receive()
    assert message is not None and message.pid == os.getpid()


def test_os_environ_is_the_default(
    systemd: FakeSystemd, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", systemd.environment_value)
    assert Notifier.from_environment().watchdog()
    assert systemd.wait_for("WATCHDOG=1")


@pytest.mark.parametrize("environ", [{}, {"NOTIFY_SOCKET": ""}])
def test_nothing_happens_outside_systemd(environ: dict[str, str]) -> None:
    notifier = Notifier.from_environment(environ)
    assert not notifier.enabled
    assert not notifier.ready("x")
    assert not notifier.status("x")
    assert not notifier.watchdog()
    assert not notifier.reloading()
    assert not notifier.stopping()


def test_an_unusable_socket_value_is_ignored_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": "vsock:2:1234"})
    assert not notifier.enabled
    assert not notifier.ready()
    assert "NOTIFY_SOCKET" in caplog.text


def test_a_socket_that_is_gone_does_not_raise(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    assert notifier.enabled
    with caplog.at_level(logging.WARNING, logger="gateway.run.sdnotify"):
        assert not notifier.ready()
    assert "sd_notify READY=1 failed" in caplog.text


# --- watchdog_interval ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 30.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 30.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "x"}, None),
        ({"WATCHDOG_USEC": "500000"}, 0.5),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-1"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": ""}, None),
    ],
)
def test_watchdog_interval(environ: dict[str, str], expected: float | None) -> None:
    assert watchdog_interval(environ) == expected


def test_watchdog_interval_reads_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert watchdog_interval() == 2.0


# --- feed_watchdog ----------------------------------------------------------------------

INTERVAL = 0.4  # a ping every 0.2 s


def pings(messages: list[Message]) -> int:
    return sum("WATCHDOG=1" in m.fields for m in messages)


def test_the_watchdog_is_fed_only_while_healthy(systemd: FakeSystemd) -> None:
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": systemd.environment_value})
    state = {"healthy": True}

    healthy: list[Message] = []
    unhealthy: list[Message] = []
    recovered: list[Message] = []

    async def scenario() -> None:
        stop = asyncio.Event()
        feeder = asyncio.create_task(
            feed_watchdog(notifier, INTERVAL, lambda: state["healthy"], stop)
        )
        await asyncio.sleep(1.0)
        state["healthy"] = False
        await asyncio.sleep(0.05)  # a ping already under way may still land
        healthy.extend(systemd.receive_all())
        await asyncio.sleep(1.0)
        unhealthy.extend(systemd.receive_all())
        state["healthy"] = True
        await asyncio.sleep(1.0)
        stop.set()
        await asyncio.wait_for(feeder, 1.0)  # ends promptly on stop
        recovered.extend(systemd.receive_all())

    asyncio.run(scenario())
    assert 3 <= pings(healthy) <= 7
    assert pings(unhealthy) == 0
    assert any("STATUS=Unhealthy (returned False): watchdog not fed" in m.fields
               for m in healthy + unhealthy)
    assert 3 <= pings(recovered) <= 7  # every interval/2 again
    assert any("STATUS=Running" in m.fields for m in recovered)


def test_pings_are_spaced_half_an_interval(path_systemd: FakeSystemd) -> None:
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": path_systemd.environment_value})
    times: list[float] = []

    async def scenario() -> None:
        stop = asyncio.Event()
        feeder = asyncio.create_task(feed_watchdog(notifier, INTERVAL, lambda: True, stop))
        await asyncio.to_thread(path_systemd.wait_for, "WATCHDOG=1", 1.0)  # the first, at once
        for _ in range(4):
            assert await asyncio.to_thread(path_systemd.wait_for, "WATCHDOG=1", 1.0)
            times.append(time.monotonic())
        stop.set()
        await feeder

    asyncio.run(scenario())
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(INTERVAL / 2 - 0.05 < gap < INTERVAL / 2 + 0.15 for gap in gaps), gaps


@pytest.mark.parametrize("kind", ["async-true", "async-false", "raises", "slow", "not-a-bool"])
def test_health_checks_of_every_kind(path_systemd: FakeSystemd, kind: str) -> None:
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": path_systemd.environment_value})

    async def async_true() -> bool:
        await asyncio.sleep(0)
        return True

    async def async_false() -> bool:
        return False

    def raises() -> bool:
        raise RuntimeError("store gone")

    async def slow() -> bool:
        await asyncio.sleep(10)
        return True

    def not_a_bool() -> bool:
        return "yes"  # type: ignore[return-value]

    checks: dict[str, Healthy] = {"async-true": async_true, "async-false": async_false, "raises": raises,
              "slow": slow, "not-a-bool": not_a_bool}

    async def scenario() -> None:
        stop = asyncio.Event()
        feeder = asyncio.create_task(feed_watchdog(notifier, INTERVAL, checks[kind], stop))
        await asyncio.sleep(0.7)
        stop.set()
        await asyncio.wait_for(feeder, 1.0)

    asyncio.run(scenario())
    messages = path_systemd.receive_all(timeout=0.0)
    if kind == "async-true":
        assert pings(messages) >= 3
        return
    assert pings(messages) == 0
    statuses = [f for m in messages for f in m.fields if f.startswith("STATUS=")]
    problem = {
        "async-false": "returned False",
        "raises": "raised RuntimeError: store gone",
        "slow": "took longer than 0.1 s",
        "not-a-bool": "returned 'yes'",
    }[kind]
    assert statuses == [f"STATUS=Unhealthy ({problem}): watchdog not fed"]  # said once


@pytest.mark.parametrize("interval", [None, 0.0])
def test_no_watchdog_means_no_feeding(path_systemd: FakeSystemd, interval: float | None) -> None:
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": path_systemd.environment_value})

    async def scenario() -> None:
        await asyncio.wait_for(feed_watchdog(notifier, interval, lambda: True,
                                             asyncio.Event()), 0.5)

    asyncio.run(scenario())
    assert path_systemd.receive_all(timeout=0.0) == []


@pytest.mark.parametrize("check_timeout", [0.0, 0.2, 5.0])
def test_a_check_timeout_that_could_starve_the_watchdog_is_refused(
    path_systemd: FakeSystemd, check_timeout: float
) -> None:
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": path_systemd.environment_value})
    with pytest.raises(ValueError, match=r"check_timeout must be between 0 and 0\.2 s"):
        asyncio.run(feed_watchdog(notifier, INTERVAL, lambda: True, asyncio.Event(),
                                  check_timeout=check_timeout))


def test_no_socket_means_no_feeding() -> None:
    async def scenario() -> None:
        await asyncio.wait_for(
            feed_watchdog(Notifier.from_environment({}), 1.0, lambda: True, asyncio.Event()),
            0.5,
        )

    asyncio.run(scenario())


# --- a whole process, as systemd runs it --------------------------------------------------

# What the lead wires into the gateway, in miniature: ready once serving, the watchdog fed
# while healthy, a status line on SIGHUP, STOPPING=1 on SIGTERM, exit 0. "wedge" blocks the
# event loop for a while (as a stuck loop would); the "unhealthy" file fails the health check.
SERVICE = textwrap.dedent(
    """\
    import asyncio, os, signal, sys, time
    from pathlib import Path
    from gateway.run.sdnotify import Healthy, Notifier, feed_watchdog, watchdog_interval

    folder = Path(sys.argv[1])

    async def main() -> None:
        notifier = Notifier.from_environment(os.environ)
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()

        def on_term() -> None:
            notifier.stopping()
            stop.set()

        def on_hup() -> None:
            notifier.reloading()
            notifier.status("Running (map reloaded)")

        loop.add_signal_handler(signal.SIGTERM, on_term)
        loop.add_signal_handler(signal.SIGHUP, on_hup)
        loop.add_signal_handler(signal.SIGUSR1, lambda: time.sleep(1.5))  # wedge the loop

        async def healthy() -> bool:
            await asyncio.sleep(0)
            return not (folder / "unhealthy").exists()

        feeder = asyncio.create_task(
            feed_watchdog(notifier, watchdog_interval(os.environ), healthy, stop)
        )
        notifier.ready("Running")
        await stop.wait()
        await feeder

    asyncio.run(main())
    """
)


@pytest.fixture
def service(tmp_path: Path) -> Path:
    script = tmp_path / "service.py"
    script.write_text(SERVICE, encoding="utf-8")
    return script


def start(service: Path, environ: dict[str, str]) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
    env.update(environ, PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, str(service), str(service.parent)], env=env)


def test_a_service_process_under_a_watchdog(systemd: FakeSystemd, service: Path) -> None:
    process = start(service, {"NOTIFY_SOCKET": systemd.environment_value,
                              "WATCHDOG_USEC": "400000"})
    try:
        ready = systemd.wait_for("READY=1")
        assert ready.pid == process.pid  # NotifyAccess=main would accept it
        assert ready.fields == ["READY=1", "STATUS=Running"]
        time.sleep(1.0)
        fed = systemd.receive_all()
        assert 3 <= pings(fed) <= 7
        assert all(m.pid == process.pid for m in fed)

        # A wedged event loop stops feeding: systemd would restart the service.
        process.send_signal(signal.SIGUSR1)
        time.sleep(0.3)
        systemd.receive_all()
        time.sleep(1.0)
        assert pings(systemd.receive_all()) == 0
        systemd.wait_for("WATCHDOG=1", timeout=2.0)  # and resumes once unblocked

        # So does a failing health check.
        (service.parent / "unhealthy").touch()
        time.sleep(0.3)
        systemd.receive_all()
        time.sleep(0.8)
        assert pings(systemd.receive_all()) == 0
        (service.parent / "unhealthy").unlink()
        systemd.wait_for("WATCHDOG=1", timeout=2.0)

        process.send_signal(signal.SIGHUP)
        assert systemd.wait_for("STATUS=Running (map reloaded)").pid == process.pid

        process.send_signal(signal.SIGTERM)
        stopping = systemd.wait_for("STOPPING=1")
        assert stopping.pid == process.pid
        assert process.wait(timeout=5) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_a_watchdog_meant_for_another_process_is_not_fed(
    path_systemd: FakeSystemd, service: Path
) -> None:
    process = start(service, {"NOTIFY_SOCKET": path_systemd.environment_value,
                              "WATCHDOG_USEC": "200000", "WATCHDOG_PID": "1"})
    try:
        path_systemd.wait_for("READY=1")
        time.sleep(0.5)
        assert pings(path_systemd.receive_all()) == 0
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=5) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_a_service_process_outside_systemd(service: Path) -> None:
    process = start(service, {})
    try:
        time.sleep(0.5)
        assert process.poll() is None  # runs happily with nobody to tell
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=5) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
