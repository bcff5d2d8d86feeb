"""systemd service notifications (`sd_notify`) and the watchdog, without libsystemd.

Under a `Type=notify` unit systemd passes `NOTIFY_SOCKET` (a path, or "@name" for an abstract
socket) and, with `WatchdogSec=`, `WATCHDOG_USEC` (and `WATCHDOG_PID`). The protocol is one
datagram of newline-separated `KEY=value` lines per message (see sd_notify(3)); it is a dozen
lines of socket code, so no package is used. Outside systemd every call here does nothing.

- `Notifier.from_environment(os.environ)`, then `ready()`, `status(text)`, `reloading()`,
  `stopping()`, `watchdog()`; each returns whether a message was sent.
- `watchdog_interval(os.environ)`: the watchdog period in seconds, or None when there is none
  (or it is meant for another process).
- `await feed_watchdog(notifier, interval, healthy, stop)`: sends `WATCHDOG=1` every half
  interval, but only while `healthy()` says the process really works, so that systemd restarts
  a wedged one.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Mapping

log = logging.getLogger(__name__)

Healthy = Callable[[], bool | Awaitable[bool]]

SEND_TIMEOUT = 2.0  # seconds; systemd reads its notification socket promptly


class Notifier:
    """Sends notifications to systemd's `NOTIFY_SOCKET`; a no-op without one."""

    def __init__(self, address: str | None) -> None:
        """`address`: a socket path, "\\0name" for an abstract socket, or None (disabled)."""
        self._address = address

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """The notifier for `NOTIFY_SOCKET` in `environ` (default `os.environ`)."""
        value = (os.environ if environ is None else environ).get("NOTIFY_SOCKET", "")
        if not value:
            return cls(None)
        if value.startswith("@"):
            return cls("\0" + value[1:])
        if value.startswith("/"):
            return cls(value)
        # e.g. "vsock:…" (systemd 253+, for virtual machines): not for a service on a host.
        log.warning("NOTIFY_SOCKET=%r is not a socket path or @name: not notifying", value)
        return cls(None)

    @property
    def enabled(self) -> bool:
        """Whether this process runs under systemd with a notification socket."""
        return self._address is not None

    def notify(self, *fields: str) -> bool:
        """Send `KEY=value` fields as one message; False when disabled or it failed."""
        if self._address is None:
            return False
        message = "\n".join(fields).encode("utf-8", "replace")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.settimeout(SEND_TIMEOUT)
                sock.sendto(message, self._address)
        except OSError as exc:  # never let systemd's side take the gateway down
            log.warning("sd_notify %s failed: %s", fields[0] if fields else "", exc)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """Started: listening and working (`READY=1`), with an optional status line."""
        return self.notify("READY=1", *_status(status))

    def stopping(self, status: str | None = "Stopping") -> bool:
        """Shutting down (`STOPPING=1`): say it as soon as SIGTERM arrives."""
        return self.notify("STOPPING=1", *_status(status))

    def watchdog(self) -> bool:
        """Still alive (`WATCHDOG=1`)."""
        return self.notify("WATCHDOG=1")

    def status(self, text: str) -> bool:
        """A one-line status for `systemctl status` (`STATUS=`)."""
        return self.notify(*_status(text))

    def reloading(self, status: str = "Reloading the municipality map") -> bool:
        """A reload (SIGHUP) began: a status line only.

        `RELOADING=1` (with `MONOTONIC_USEC`) goes with `Type=notify-reload`, systemd 253+;
        Debian 12 has 252 and the units reload with `kill -HUP`, so this only says `STATUS=`.
        Send `status(…)` again when the reload is done.
        """
        return self.status(status)


def _status(text: str | None) -> list[str]:
    if text is None:
        return []
    return ["STATUS=" + " ".join(text.split())]  # one line: a newline would end the field


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds within which systemd expects `WATCHDOG=1`, or None when there is no watchdog.

    From `WATCHDOG_USEC`; when `WATCHDOG_PID` is set and is not this process, the watchdog is
    some other process's business and the answer is None too.
    """
    env = os.environ if environ is None else environ
    pid = env.get("WATCHDOG_PID")
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            log.warning("WATCHDOG_PID=%r is not a number: no watchdog", pid)
            return None
    usec = env.get("WATCHDOG_USEC")
    if not usec:
        return None
    try:
        value = int(usec)
    except ValueError:
        log.warning("WATCHDOG_USEC=%r is not a number: no watchdog", usec)
        return None
    return value / 1_000_000 if value > 0 else None


async def feed_watchdog(
    notifier: Notifier,
    interval: float | None,
    healthy: Healthy,
    stop: asyncio.Event,
    *,
    check_timeout: float | None = None,
) -> None:
    """Send `WATCHDOG=1` every `interval / 2` seconds while `healthy()` is true, until `stop`.

    `healthy` is called (and awaited, if it returns an awaitable) once per period. False, an
    exception, or taking longer than `check_timeout` (default `interval / 4`; it must stay
    under `interval / 2`) skips that ping, so a process whose event loop, dispatcher or store
    calls are stuck stops feeding, and systemd restarts it after `interval`. A synchronous
    `healthy` runs on the event loop: keep it quick, and do I/O in an async one (e.g.
    `await asyncio.to_thread(store.ping)`). Check that the process works, not that the
    servers it talks to are up: a database outage is for /healthz and retries, and restarts
    would not end it. Returns at once without a watchdog (`interval` None) or a socket.
    """
    if interval is None or interval <= 0 or not notifier.enabled:
        return
    period = interval / 2
    timeout = check_timeout if check_timeout is not None else interval / 4
    if not 0 < timeout < period:  # pings at most period + timeout apart: under `interval`
        raise ValueError(f"check_timeout must be between 0 and {period:g} s (interval / 2)")
    was_healthy = True
    while not stop.is_set():
        started = time.monotonic()
        problem = await _check(healthy, timeout)
        if stop.is_set():
            break
        if problem is None:
            notifier.watchdog()
            if not was_healthy:
                log.warning("health check passes again: feeding the systemd watchdog")
                notifier.status("Running")
        elif was_healthy:  # say it once, not every period
            log.error(
                "health check failed (%s): not feeding the systemd watchdog, which restarts "
                "the service after %g s of this", problem, interval
            )
            notifier.status(f"Unhealthy ({problem}): watchdog not fed")
        was_healthy = problem is None
        remaining = period - (time.monotonic() - started)
        if remaining > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), remaining)


async def _check(healthy: Healthy, timeout: float) -> str | None:
    """None when healthy, else what went wrong."""
    try:
        result = healthy()
        if inspect.isawaitable(result):
            result = await asyncio.wait_for(_awaited(result), timeout)
    except TimeoutError:
        return f"took longer than {timeout:g} s"
    except Exception as exc:
        return f"raised {type(exc).__name__}: {exc}"
    return None if result is True else f"returned {result!r}"


async def _awaited(awaitable: Awaitable[bool]) -> bool:
    return await awaitable
