"""The Makefile as a new user meets it, run on a copy of it with stand-ins for pip and the
tools (each logs its arguments): `make run` installs only what running needs, `make test`
the test tools too; switching between the two installs nothing again (one stamp each), a
changed setup.cfg installs again, and `make sandbox-reset` removes var/sandbox/ but keeps
.venv."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.gateway_fixtures import REPO

pytestmark = pytest.mark.slow  # it runs make, many times

TOOLS = ("python", "pip", "sms311", "ruff", "mypy", "pytest")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of the Makefile and the files it reads, with a .venv of stand-ins that
    append `name args` to log.txt (as does .ci/install-system-deps)."""
    for name in ("Makefile", "setup.cfg", "pyproject.toml"):
        shutil.copy2(REPO / name, tmp_path / name)
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    log = tmp_path / "log.txt"
    for tool in TOOLS:
        script = bin_dir / tool
        script.write_text(f'#!/bin/sh\necho "{tool} $*" >> "{log}"\n')
        script.chmod(0o755)
    (tmp_path / ".ci").mkdir()
    (tmp_path / ".ci" / "install-system-deps").write_text(f'echo "system-deps" >> "{log}"\n')
    log.write_text("")
    return tmp_path


def make(project: Path, target: str) -> list[str]:
    """Run `make TARGET` in the copy; the lines the stand-ins logged meanwhile."""
    log = project / "log.txt"
    log.write_text("")
    result = subprocess.run(["make", "--no-print-directory", target], cwd=project,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return [line.rstrip() for line in log.read_text().splitlines()]


def installs(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("pip install")]


def test_make_run_installs_only_what_running_needs(project: Path) -> None:
    first = make(project, "run")
    assert installs(first) == ["pip install --quiet -e ."]  # no [test]: no playwright, mypy…
    assert first[-1] == "sms311 sandbox run --dir var/sandbox"
    assert installs(make(project, "run")) == []  # installed once


def test_switching_between_run_and_test_installs_nothing_again(project: Path) -> None:
    assert installs(make(project, "run")) == ["pip install --quiet -e ."]
    tested = make(project, "test")
    assert installs(tested) == ["pip install --quiet -e .[test]"]
    assert tested[1:] == ["system-deps", "ruff check gateway tests bench", "mypy", "pytest -q"]
    for target in ("run", "test", "run", "test"):
        assert installs(make(project, target)) == [], target
    # A changed setup.cfg (a new dependency) installs again, once.
    setup = project / "setup.cfg"
    setup.write_text(setup.read_text() + "\n# a change\n")
    assert installs(make(project, "run")) == ["pip install --quiet -e ."]
    assert installs(make(project, "run")) == []
    assert installs(make(project, "test")) == ["pip install --quiet -e .[test]"]
    assert installs(make(project, "run")) == []


def test_make_test_first_serves_make_run_too(project: Path) -> None:
    assert installs(make(project, "test")) == ["pip install --quiet -e .[test]"]
    assert installs(make(project, "run")) == []


def test_sandbox_reset_removes_the_sandbox_and_keeps_the_venv(project: Path) -> None:
    sandbox = project / "var" / "sandbox"
    (sandbox / "mail").mkdir(parents=True)
    (sandbox / "sms311.yaml").write_text("database: sqlite:///gateway.db\n")
    make(project, "sandbox-reset")
    assert not sandbox.exists()
    assert (project / ".venv" / "bin" / "pip").exists()
    make(project, "sandbox-reset")  # nothing to remove: fine too
