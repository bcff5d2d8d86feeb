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


def pss_bytes(pid: int, *, with_children: bool = True) -> int:
    """Proportional set size of `pid` (and its descendants), from /proc/PID/smaps_rollup: a
    page shared by n processes (a library both map) counts 1/n in each, so a sum over the
    processes counts it once."""
    total = 0
    for each in [pid, *(children(pid) if with_children else [])]:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{each}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
                    break
    return total


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms" if seconds < 0.1 else f"{seconds * 1000:.0f} ms"


# -- CPU, memory, threads of the processes under test (black-box, from /proc) -------------

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of process `pid` (all its threads, dead ones included), in seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS


def thread_cpu(pid: int) -> dict[int, float]:
    """utime + stime of each live thread of `pid`, in seconds, by thread id."""
    found: dict[int, float] = {}
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
                found[int(task.name)] = (int(fields[11]) + int(fields[12])) / TICKS
    return found


def status_kb(pid: int, key: str) -> int:
    """A field of /proc/PID/status in kB (VmRSS, VmHWM), 0 when the process is gone."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def thread_names(pid: int) -> dict[int, str]:
    """Python thread names by OS thread id (py-spy dump); empty when py-spy cannot tell."""
    spy = Path(PYTHON).parent / "py-spy"
    try:
        out = subprocess.run([str(spy), "dump", "--pid", str(pid), "--json"],
                             capture_output=True, text=True, timeout=30, check=True)
        import json

        return {int(t["os_thread_id"]): str(t.get("thread_name") or "")
                for t in json.loads(out.stdout) if t.get("os_thread_id")}
    except (OSError, subprocess.SubprocessError, ValueError, KeyError, TypeError):
        return {}


class RssWatch:
    """Samples the summed VmRSS and PSS of some processes (and their children) every
    100 ms; `peak` and `pss_peak` are the largest sums seen."""

    def __init__(self) -> None:
        import threading

        self.pids: list[int] = []
        self.peak = 0
        self.pss_peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            if self.pids:
                pids = list(self.pids)
                self.peak = max(self.peak, sum(rss_bytes(p) for p in pids))
                self.pss_peak = max(self.pss_peak, sum(pss_bytes(p) for p in pids))

    def __enter__(self) -> RssWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def machine() -> dict[str, str]:
    """What the figures were measured on."""
    import platform
    import tempfile

    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = status_total_kb("MemTotal")
    tmp = Path(tempfile.gettempdir())
    disk = "?"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        disk = subprocess.run(
            ["findmnt", "-n", "-o", "SOURCE,FSTYPE", "-T", str(tmp)],
            capture_output=True, text=True, check=True, timeout=10,
        ).stdout.strip()
    virt = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        for line in subprocess.run(["lscpu"], capture_output=True, text=True,
                                   timeout=10).stdout.splitlines():
            if line.startswith("Hypervisor vendor:"):
                virt = line.split(":", 1)[1].strip()
    load = Path("/proc/loadavg").read_text().split()[:3]
    return {
        "cpu": f"{model}, {os.cpu_count()} cores" + (f" ({virt} virtual machine)" if virt
                                                       else ""),
        "memory": f"{mem / 2**20:.1f} GB",
        "kernel": f"Linux {platform.release()}",
        "python": platform.python_version(),
        "disk": f"{disk} ({tmp}), fsync p50 {fsync_ms(tmp):.2f} ms",
        "load": "load average " + " ".join(load) + " at start",
    }


def status_total_kb(key: str) -> int:
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def fsync_ms(folder: Path, rounds: int = 30) -> float:
    """Median time of a 4 kB write + fsync in `folder` (what one SQLite commit waits for)."""
    import tempfile

    samples = []
    with tempfile.NamedTemporaryFile(dir=folder) as f:
        for _ in range(rounds):
            start = time.perf_counter()
            f.write(b"x" * 4096)
            f.flush()
            os.fsync(f.fileno())
            samples.append(time.perf_counter() - start)
    return percentile(samples, 0.5) * 1000
