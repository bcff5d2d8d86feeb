"""Helpers shared by the benchmarks: processes, ports, percentiles, memory, settings.

The benchmarks import the test suite's helpers (settings files, the fake Twilio API,
Dovecot) from `tests/`; run them from the repository root (`make bench` does).
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable


@dataclass
class Figure:
    """One row of the `make bench` table."""

    name: str
    measured: str
    baseline: str
    ratio: str
    target: str
    met: bool | None  # None: informative, no target
    note: str = ""


def percentile(samples: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) of `samples`, nearest rank."""
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def env(**extra: str) -> dict[str, str]:
    """The environment for a child process: the repository importable, output unbuffered."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    path = os.pathsep.join(p for p in (str(REPO), base.get("PYTHONPATH", "")) if p)
    return {**base, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1", **extra}


def sms311(config: Path, *args: str, log: Path | None = None) -> subprocess.Popen[bytes]:
    """`sms311 --config CONFIG ARGS…` as a subprocess (output to `log`, else discarded)."""
    out: Any = log.open("ab") if log is not None else subprocess.DEVNULL
    try:
        return subprocess.Popen(
            [PYTHON, "-m", "gateway", "--config", str(config), *args],
            cwd=REPO, env=env(), stdout=out, stderr=subprocess.STDOUT,
        )
    finally:
        if log is not None:
            out.close()


def db_upgrade(config: Path) -> None:
    subprocess.run(
        [PYTHON, "-m", "gateway", "--config", str(config), "db", "upgrade"],
        cwd=REPO, env=env(), check=True, capture_output=True,
    )


def wait_for(predicate: Callable[[], bool], timeout: float = 20.0, what: str = "it") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise RuntimeError(f"timed out waiting for {what}")


def wait_http(url: str, timeout: float = 20.0, method: str = "GET") -> None:
    """Wait until `url` answers at all (any status)."""

    def answers() -> bool:
        try:
            requests.request(method, url, timeout=1)
            return True
        except requests.RequestException:
            return False

    wait_for(answers, timeout, url)


def stop(process: subprocess.Popen[Any], timeout: float = 15.0) -> int:
    """SIGTERM, wait; SIGKILL if it does not go. Returns the exit status."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return int(process.returncode)


@contextlib.contextmanager
def running(process: subprocess.Popen[Any]) -> Iterator[subprocess.Popen[Any]]:
    try:
        yield process
    finally:
        stop(process)


def children(pid: int) -> list[int]:
    """Every descendant of `pid` (from /proc)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def rss_bytes(pid: int, *, with_children: bool = True) -> int:
    """Resident set size of `pid` (and its descendants), from /proc/PID/status."""
    total = 0
    for each in [pid, *(children(pid) if with_children else [])]:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{each}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms" if seconds < 0.1 else f"{seconds * 1000:.0f} ms"
