"""The systemd units in systemd/: `systemd-analyze verify` and `security`, and what they run.

The units are checked exactly as shipped, installed in a throwaway root (`--root`) laid out as
an operator's server: the units in /etc/systemd/system, systemd's own units, /bin/kill, and
/opt/sms311/.venv/bin/sms311 (a wrapper running this checkout's `sms311`), so that `verify`
finds every program the units name. `make test` installs systemd when it is missing.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from aiosmtpd.controller import Controller

from gateway.cli import build_parser
from gateway.run.sandbox import send_text
from gateway.settings import check_config, load_settings
from tests.gateway_fixtures import free_port, write_settings

REPO = Path(__file__).resolve().parents[1]
SYSTEMD = REPO / "systemd"
SERVICES = ["sms311.service", "sms311-web.service", "sms311-worker.service"]
UNITS = [*SERVICES, "sms311.target"]
SMS311 = "/opt/sms311/.venv/bin/sms311"
MAX_EXPOSURE = 2.0  # systemd-analyze security: "OK" and better
CONFIG = "/etc/sms311/sms311.yaml"
ENV_FILE = "/etc/sms311/sms311.env"


def analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        raise RuntimeError("systemd-analyze not found: install Debian's systemd "
                           "(make test does, through .ci/install-system-deps)")
    return path


def unit_settings(name: str) -> dict[str, dict[str, list[str]]]:
    """The unit's sections, each key with every value it is given, in order."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for line in (SYSTEMD / name).read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        assert not line.endswith("\\"), f"{name}: keep settings on one line"
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, sep, value = line.partition("=")
        assert sep and current is not None, f"{name}: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def service(name: str) -> dict[str, list[str]]:
    return unit_settings(name)["Service"]


def one(settings: dict[str, list[str]], key: str) -> str:
    values = settings.get(key, [])
    assert len(values) == 1, f"{key}: {values}"
    return values[0]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A filesystem root with the units installed as the README's layout says."""
    root = tmp_path_factory.mktemp("root")
    system_units = Path("/usr/lib/systemd/system")
    if not system_units.is_dir():
        raise RuntimeError(f"{system_units} missing: install Debian's systemd")
    shutil.copytree(system_units, root / "usr/lib/systemd/system", symlinks=True)
    (root / "bin").symlink_to("usr/bin")  # Debian's merged /usr
    (root / "usr/bin").mkdir(parents=True)
    kill = Path("/bin/kill")
    if not kill.exists():
        raise RuntimeError("/bin/kill missing: install Debian's procps")
    shutil.copy2(kill, root / "usr/bin/kill")
    wrapper = root / SMS311.lstrip("/")
    wrapper.parent.mkdir(parents=True)
    real = Path(sysconfig.get_path("scripts")) / "sms311"
    assert real.exists(), real
    wrapper.write_text(f'#!/bin/sh\nexec {shlex.quote(str(real))} "$@"\n', encoding="utf-8")
    wrapper.chmod(0o755)
    units = root / "etc/systemd/system"
    units.mkdir(parents=True)
    for name in UNITS:
        shutil.copy2(SYSTEMD / name, units / name)
    yield root


def run_analyze(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [analyze(), f"--root={root}", *args],
        capture_output=True, text=True, timeout=120, env={**os.environ, "SYSTEMD_PAGER": "",
                                                          "SYSTEMD_COLORS": "0"},
    )


# --- systemd-analyze ------------------------------------------------------------------------


@pytest.mark.parametrize("unit", UNITS)
def test_verify_reports_nothing(root: Path, unit: str) -> None:
    result = run_analyze(root, "verify", unit)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_verify_would_see_a_mistake(root: Path) -> None:
    """The check above is not vacuous: a misspelt key or a missing program is reported."""
    units = root / "etc/systemd/system"
    text = (SYSTEMD / "sms311-web.service").read_text(encoding="utf-8")
    (units / "sms311-typo.service").write_text(
        text.replace("ProtectSystem=strict", "ProtectSytem=strict"), encoding="utf-8")
    (units / "sms311-nobin.service").write_text(
        text.replace(SMS311, "/opt/sms311/venv/bin/sms311"), encoding="utf-8")
    try:
        typo = run_analyze(root, "verify", "sms311-typo.service")
        assert "Unknown key 'ProtectSytem'" in typo.stderr
        nobin = run_analyze(root, "verify", "sms311-nobin.service")
        assert nobin.returncode != 0
        assert "/opt/sms311/venv/bin/sms311 is not executable" in nobin.stderr
    finally:
        (units / "sms311-typo.service").unlink()
        (units / "sms311-nobin.service").unlink()


@pytest.mark.parametrize("unit", SERVICES)
def test_security_exposure_is_ok(root: Path, unit: str) -> None:
    result = run_analyze(root, "security", "--offline=yes", "--no-pager", unit)
    assert result.returncode == 0, result.stderr
    found = re.search(r"Overall exposure level for (\S+): (\d+\.\d+) (\w+)", result.stdout)
    assert found is not None, result.stdout
    score = float(found[2])
    print(f"{unit}: exposure {score} {found[3]}")
    failed = [line for line in result.stdout.splitlines() if line.startswith("✗")]
    assert score <= MAX_EXPOSURE, "\n".join([f"{unit}: {score} {found[3]}", *failed])


# --- what the units say ---------------------------------------------------------------------

HARDENING = {
    "NoNewPrivileges": "yes",
    "CapabilityBoundingSet": "",
    "AmbientCapabilities": "",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "ProtectClock": "yes",
    "ProtectHostname": "yes",
    "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
    "RestrictNamespaces": "yes",
    "RestrictRealtime": "yes",
    "RestrictSUIDSGID": "yes",
    "LockPersonality": "yes",
    "MemoryDenyWriteExecute": "yes",
    "SystemCallArchitectures": "native",
    "UMask": "0077",
}


@pytest.mark.parametrize("unit", SERVICES)
def test_service_settings(unit: str) -> None:
    settings = service(unit)
    for key, value in {
        "Type": "notify",
        "NotifyAccess": "main",
        "WatchdogSec": "30",
        "Restart": "on-failure",
        "TimeoutStopSec": "15",  # the gateway exits within 10 s of SIGTERM
        "User": "sms311",
        "Group": "sms311",
        "StateDirectory": "sms311",
        "ConfigurationDirectory": "sms311",
        "EnvironmentFile": "-" + ENV_FILE,
        "Environment": f"GATEWAY_CONFIG={CONFIG}",
        "ExecReload": "/bin/kill -HUP $MAINPID",
        # 1,100 idle connections once exhausted 1024 descriptors and took the webhook down
        "LimitNOFILE": "65536",
        **HARDENING,
    }.items():
        assert one(settings, key) == value, key
    assert settings["SystemCallFilter"] == ["@system-service", "~@privileged @resources"]
    assert int(one(settings, "RestartSec")) > 0


def test_every_service_is_hardened_the_same_way() -> None:
    def block(name: str) -> str:
        text = (SYSTEMD / name).read_text(encoding="utf-8")
        return text[text.index("# Hardening"):text.index("[Install]")]

    assert block("sms311-web.service") == block("sms311.service")
    assert block("sms311-worker.service") == block("sms311.service")


COMMANDS = {
    "sms311.service": (["check-config", "db upgrade"], "run"),
    "sms311-worker.service": (["check-config", "db upgrade"], "worker"),
    "sms311-web.service": (["check-config"], "web"),  # the worker migrates; web waits for it
}


@pytest.mark.parametrize("unit", SERVICES)
def test_commands(unit: str) -> None:
    settings = service(unit)
    before, main = COMMANDS[unit]
    assert settings["ExecStartPre"] == [f"{SMS311} {c}" for c in before]
    assert one(settings, "ExecStart") == f"{SMS311} {main}"
    parser = build_parser()
    for line in [*settings["ExecStartPre"], *settings["ExecStart"]]:
        parser.parse_args(shlex.split(line)[1:])  # a real command (SystemExit otherwise)


def test_only_the_worker_and_the_all_in_one_unit_migrate() -> None:
    web = unit_settings("sms311-web.service")["Unit"]
    assert "sms311-worker.service" in " ".join(web["After"]).split()
    assert not any("db upgrade" in c for c in service("sms311-web.service")["ExecStartPre"])


def test_the_all_in_one_unit_and_the_split_units_exclude_each_other() -> None:
    unit = unit_settings("sms311.service")["Unit"]
    split = {"sms311-web.service", "sms311-worker.service", "sms311.target"}
    assert set(" ".join(unit["Conflicts"]).split()) == split
    assert set(" ".join(unit["Before"]).split()) == split  # stop one before starting the other
    target = unit_settings("sms311.target")
    assert set(one(target["Unit"], "Wants").split()) == {
        "sms311-web.service", "sms311-worker.service"}
    for name in ("sms311-web.service", "sms311-worker.service"):
        assert one(unit_settings(name)["Unit"], "PartOf") == "sms311.target"
    for name in UNITS:
        assert one(unit_settings(name)["Install"], "WantedBy") == "multi-user.target"


def test_the_example_settings_keep_state_in_the_state_directory() -> None:
    text = (SYSTEMD / "sms311.example.yaml").read_text(encoding="utf-8")
    assert "\ndatabase: sqlite:////var/lib/sms311/gateway.db\n" in text
    assert "\nstate_dir: /var/lib/sms311\n" in text
    assert one(service("sms311.service"), "StateDirectory") == "sms311"  # /var/lib/sms311


# --- the user, the secrets ------------------------------------------------------------------


def test_sysusers_creates_the_service_user(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    result = subprocess.run(
        ["systemd-sysusers", f"--root={tmp_path}", str(SYSTEMD / "sms311.sysusers")],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    passwd = (tmp_path / "etc/passwd").read_text(encoding="utf-8")
    entry = next(line for line in passwd.splitlines() if line.startswith("sms311:"))
    _, _, uid, gid, _, home, shell = entry.split(":")
    assert 0 < int(uid) < 1000 and uid == gid  # a system user with its own group
    assert home == "/var/lib/sms311"
    assert shell.endswith("nologin")
    assert "sms311:" in (tmp_path / "etc/group").read_text(encoding="utf-8")


def environment_file_example() -> dict[str, str]:
    """The example's assignments, uncommented, read as systemd reads an EnvironmentFile."""
    values = {}
    for line in (SYSTEMD / "sms311.env.example").read_text(encoding="utf-8").splitlines():
        found = re.fullmatch(r"#(GATEWAY_[A-Z_]+)=(.*)", line)
        if found:
            raw = found[2]
            assert raw.startswith("'") and raw.endswith("'") and raw.count("'") == 2, line
            values[found[1]] = raw[1:-1]  # single quotes: verbatim
    return values


def test_environment_file_example_names_real_settings(tmp_path: Path) -> None:
    secrets = environment_file_example()
    assert set(secrets) == {
        "GATEWAY_SMS__AUTH_TOKEN",
        "GATEWAY_EMAIL__SMTP__PASSWORD",
        "GATEWAY_EMAIL__IMAP__PASSWORD",
        "GATEWAY_DATABASE",
    }
    text = (SYSTEMD / "sms311.env.example").read_text(encoding="utf-8")
    assert "0600" in text
    shutil.copy(SYSTEMD / "sms311.example.yaml", tmp_path / "sms311.yaml")
    shutil.copy(REPO / "municipality_map.yaml", tmp_path / "municipality_map.yaml")
    assert check_config(tmp_path / "sms311.yaml", secrets) == []


@pytest.mark.slow  # `sms311` subprocesses
def test_check_config_as_the_units_run_it(tmp_path: Path) -> None:
    """ExecStartPre runs `sms311 check-config` with GATEWAY_CONFIG and the secrets set."""
    shutil.copy(SYSTEMD / "sms311.example.yaml", tmp_path / "sms311.yaml")
    shutil.copy(REPO / "municipality_map.yaml", tmp_path / "municipality_map.yaml")
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("GATEWAY_")}
    env.update(environment_file_example(), GATEWAY_CONFIG=str(tmp_path / "sms311.yaml"))
    sms311 = str(Path(sysconfig.get_path("scripts")) / "sms311")
    result = subprocess.run([sms311, "check-config"], env=env, capture_output=True, text=True,
                            timeout=60)
    assert (result.returncode, result.stdout.strip()) == (0, f"{tmp_path / 'sms311.yaml'}: OK")
    del env["GATEWAY_EMAIL__IMAP__PASSWORD"]  # a missing secret stops the unit from starting
    result = subprocess.run([sms311, "check-config"], env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2
    assert "GATEWAY_EMAIL__IMAP__PASSWORD" in result.stdout


# --- the gateway under the units' seccomp filters -------------------------------------------
#
# Without systemd as PID 1 the units cannot run here, but the settings most likely to break a
# Python program are seccomp filters, and those need no privileges: SystemCallFilter= (with
# SystemCallErrorNumber=), RestrictAddressFamilies= and MemoryDenyWriteExecute=. The helper
# below builds them from the unit's settings with libseccomp, as systemd does, then execs the
# real `sms311` commands under them. (The namespace and mount settings are systemd's routine.)

SECCOMP_EXEC = '''\
import ctypes, errno, json, os, sys

lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)


class ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]


lib.seccomp_init.restype = ctypes.c_void_p
lib.seccomp_init.argtypes = [ctypes.c_uint32]
lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                       ctypes.c_uint, ctypes.POINTER(ArgCmp)]
lib.seccomp_load.argtypes = [ctypes.c_void_p]
ALLOW, CMP_EQ, CMP_MASKED_EQ = 0x7FFF0000, 4, 7
PROT_WRITE, PROT_EXEC, SHM_EXEC = 0x2, 0x4, 0o100000


def errno_action(number):
    return 0x00050000 | (number & 0xFFFF)


def rule(ctx, action, name, *cmps):
    nr = lib.seccomp_syscall_resolve_name(name.encode())
    if nr < 0:
        return  # not a system call of this architecture
    array = (ArgCmp * max(1, len(cmps)))(*[ArgCmp(*c) for c in cmps])
    if (r := lib.seccomp_rule_add_array(ctx, action, nr, len(cmps), array)) < 0:
        raise OSError(-r, "seccomp_rule_add " + name)


def load(ctx):
    if (r := lib.seccomp_load(ctx)) < 0:
        raise OSError(-r, "seccomp_load")


spec = json.loads(open(sys.argv[1]).read())
if spec.get("nofile"):  # LimitNOFILE=: soft and hard, as systemd sets them (at most the hard
    import resource     # limit this process has: only root may raise it)
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nofile = spec["nofile"] if hard == resource.RLIM_INFINITY else min(spec["nofile"], hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
if spec["mdwe"]:  # MemoryDenyWriteExecute=yes, as systemd's seccomp_memory_deny_write_execute
    ctx = lib.seccomp_init(ALLOW)
    for name in ("mmap", "mmap2"):
        rule(ctx, errno_action(errno.EPERM), name,
             (2, CMP_MASKED_EQ, PROT_WRITE | PROT_EXEC, PROT_WRITE | PROT_EXEC))
    for name in ("mprotect", "pkey_mprotect"):
        rule(ctx, errno_action(errno.EPERM), name, (2, CMP_MASKED_EQ, PROT_EXEC, PROT_EXEC))
    rule(ctx, errno_action(errno.EPERM), "shmat", (2, CMP_MASKED_EQ, SHM_EXEC, SHM_EXEC))
    load(ctx)
ctx = lib.seccomp_init(ALLOW)  # RestrictAddressFamilies=
for family in range(64):
    if family not in spec["families"]:
        rule(ctx, errno_action(errno.EAFNOSUPPORT), "socket", (0, CMP_EQ, family, 0))
load(ctx)
ctx = lib.seccomp_init(errno_action(spec["errno"]))  # SystemCallFilter=, last
for name in spec["allow"]:
    rule(ctx, ALLOW, name)
load(ctx)
command = sys.argv[sys.argv.index("--") + 1:]
os.execvp(command[0], command)
'''


def syscall_group(name: str) -> set[str]:
    """The system calls of a systemd group, nested groups expanded."""
    result = subprocess.run([analyze(), "syscall-filter", name], capture_output=True,
                            text=True, check=True, timeout=60)
    calls: set[str] = set()
    for line in result.stdout.splitlines()[1:]:
        line = line.strip()
        if line.startswith("@"):
            calls |= syscall_group(line)
        elif line and not line.startswith("#"):
            calls.add(line)
    return calls


@pytest.fixture(scope="module")
def seccomp(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """A command prefix that runs a program under the units' seccomp settings."""
    settings = service("sms311.service")  # the same in every unit (tested above)
    first, *rest = settings["SystemCallFilter"]
    assert not first.startswith("~")  # an allow list, then what it takes away
    allow: set[str] = set()
    for item in first.split():
        allow |= syscall_group(item) if item.startswith("@") else {item}
    for line in rest:
        assert line.startswith("~")
        for item in line[1:].split():
            allow -= syscall_group(item) if item.startswith("@") else {item}
    spec = {
        "allow": sorted(allow),
        "errno": getattr(errno, one(settings, "SystemCallErrorNumber")),
        "families": [getattr(socket, f) for f in
                     one(settings, "RestrictAddressFamilies").split()],
        "mdwe": one(settings, "MemoryDenyWriteExecute") == "yes",
        "nofile": int(one(settings, "LimitNOFILE")),
    }
    folder = tmp_path_factory.mktemp("seccomp")
    (folder / "spec.json").write_text(json.dumps(spec), encoding="utf-8")
    (folder / "seccomp_exec.py").write_text(SECCOMP_EXEC, encoding="utf-8")
    return [sys.executable, str(folder / "seccomp_exec.py"), str(folder / "spec.json"), "--"]


def test_the_seccomp_harness_denies_what_the_units_deny(seccomp: list[str]) -> None:
    probe = textwrap.dedent(
        """\
        import ctypes, mmap, os, socket

        def outcome(action):
            try:
                action()
            except OSError as exc:
                return exc.errno
            return 0

        print(outcome(lambda: mmap.mmap(-1, 4096, prot=7)))  # W+X: MemoryDenyWriteExecute
        print(outcome(lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW)))
        print(outcome(lambda: os.sched_setaffinity(0, {0})))  # @resources
        print(outcome(lambda: os.chroot("/")))  # @privileged
        print(outcome(lambda: socket.socket(socket.AF_INET6).close()))
        print(outcome(lambda: mmap.mmap(-1, 4096, prot=3).close()))
        # AF_NETLINK is refused, yet names still resolve (glibc falls back for AI_ADDRCONFIG).
        print(outcome(lambda: socket.getaddrinfo("localhost", 25, flags=socket.AI_ADDRCONFIG)))
        print(ctypes.CFUNCTYPE(ctypes.c_int)(lambda: 7)())  # libffi closures still work
        """
    )
    result = subprocess.run([*seccomp, sys.executable, "-c", probe], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(errno.EPERM), str(errno.EAFNOSUPPORT),
                                     str(errno.EPERM), str(errno.EPERM), "0", "0", "0", "7"]


class Collector:
    """An aiosmtpd handler that keeps what it receives."""

    def __init__(self) -> None:
        self.messages: list[bytes] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(envelope.content)
        return "250 OK"


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_the_gateway_runs_under_the_units_seccomp_filters(
    seccomp: list[str], tmp_path: Path, request: pytest.FixtureRequest, backend: str
) -> None:
    database = (f"sqlite:///{tmp_path / 'gateway.db'}" if backend == "sqlite"
                else str(request.getfixturevalue("pg_url")))
    collector = Collector()
    smtp_port, web_port = free_port(), free_port()
    controller = Controller(collector, hostname="127.0.0.1", port=smtp_port)
    controller.start()
    config = write_settings(tmp_path, database=database, smtp_port=smtp_port,
                            web_port=web_port, public_url=f"http://127.0.0.1:{web_port}")
    sms311 = str(Path(sysconfig.get_path("scripts")) / "sms311")
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("GATEWAY_")}
    env.update(GATEWAY_CONFIG=str(config), PYTHONUNBUFFERED="1")
    try:
        for command in (["check-config"], ["db", "upgrade"]):  # ExecStartPre=
            result = subprocess.run([*seccomp, sms311, *command], env=env, capture_output=True,
                                    text=True, timeout=120)
            assert result.returncode == 0, result.stdout + result.stderr
        process = subprocess.Popen([*seccomp, sms311, "run"], env=env, text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            def answers() -> bool:
                try:
                    return requests.get(f"http://127.0.0.1:{web_port}/metrics", timeout=1).ok
                except requests.ConnectionError:
                    return False

            wait_until(answers, "the gateway to answer /metrics")
            settings = load_settings(config, environ={})
            status, replies = send_text(settings, "613-555-0177", "Streetlight out on Elgin St")
            assert status == 200 and replies
            status, replies = send_text(settings, "613-555-0177", "Ottawa")
            assert status == 200 and "Ottawa" in replies[0]
            wait_until(lambda: len(collector.messages) == 1, "the email to the city")
            assert b"Streetlight out on Elgin St" in collector.messages[0]
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                output, _ = process.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                output, _ = process.communicate()
        assert process.returncode == 0, output
        assert "not permitted" not in output.lower() and "errno 1" not in output.lower(), output
    finally:
        controller.stop()
