"""The command line contract: check-config's exit codes and output format,
`db upgrade`/`db status`, GATEWAY_CONFIG, and the console script equal to -m gateway."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli import main
from tests.gateway_fixtures import write_settings


def test_check_config_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_settings(tmp_path)
    assert main(["--config", str(config), "check-config"]) == 0
    assert "OK" in capsys.readouterr().out


def test_check_config_prints_every_problem_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_settings(tmp_path, extra="sms_typo: 1\n")
    (tmp_path / "municipality_map.yaml").write_text(
        "municipalities:\n  - id: a\n    name: A\n    province: ON\n"
        "  - id: a\n    name: B\n    province: ZZ\n    mailbox: b@b.example\n"
    )
    assert main(["--config", str(config), "check-config"]) == 2
    lines = capsys.readouterr().out.splitlines()
    assert any(re.match(rf"{re.escape(str(config))}:\d+: sms_typo: ", line) for line in lines)
    map_file = re.escape(str(tmp_path / "municipality_map.yaml"))
    assert any(re.match(rf"{map_file}:2: municipalities\[0\]\.mailbox: ", ln) for ln in lines)
    assert any(re.match(rf"{map_file}:\d+: municipalities\[1\]\.id: ", ln) for ln in lines)
    assert any(re.match(rf"{map_file}:\d+: municipalities\[1\]\.province: ", ln) for ln in lines)


def test_gateway_config_environment_variable(tmp_path: Path) -> None:
    config = write_settings(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "check-config"], capture_output=True, text=True,
        env={"GATEWAY_CONFIG": str(config), "PATH": "/usr/bin:/bin"}, check=False, timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_run_refuses_an_old_schema(tmp_path: Path) -> None:
    config = write_settings(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "--config", str(config), "run"],
        capture_output=True, text=True, check=False, timeout=60,
    )
    assert result.returncode == 1
    assert "sms311 db upgrade" in result.stderr
    assert "Traceback" not in result.stderr


def test_db_upgrade_then_status(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = str(write_settings(tmp_path))
    assert main(["--config", config, "db", "status"]) == 0
    assert "empty" in capsys.readouterr().out
    assert main(["--config", config, "db", "upgrade"]) == 0
    revision = capsys.readouterr().out.strip().split()[-1]
    assert main(["--config", config, "db", "status"]) == 0
    assert capsys.readouterr().out.strip().endswith(revision)
