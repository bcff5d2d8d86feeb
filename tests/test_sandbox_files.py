"""The sandbox's files are its owner's only: the settings file (the auth token), the SQLite
database (residents' numbers and texts) and the SMS log 0600, its folders 0700, whatever
the umask; a sandbox made by an older version is tightened. The setup functions of `sms311
sandbox run` are called directly (no gateway started: fast)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.run.sandbox import ensure_sandbox, prepare_sandbox_files
from gateway.settings import load_settings
from tests.gateway_fixtures import REPO


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def lax_umask() -> Iterator[None]:
    """A umask that lets everyone read (and the group write) new files, as on some hosts."""
    old = os.umask(0o002)
    try:
        yield
    finally:
        os.umask(old)


def test_the_sandbox_files_are_the_owners_only(tmp_path: Path, lax_umask: None) -> None:
    folder = tmp_path / "var" / "sandbox"
    config = ensure_sandbox(folder, REPO / "municipality_map.yaml")
    settings = load_settings(config)
    prepare_sandbox_files(settings)
    assert mode(config) == 0o600
    assert mode(folder / "gateway.db") == 0o600
    assert (folder / "gateway.db").stat().st_size > 0  # the schema is there
    assert mode(folder / "sms.jsonl") == 0o600
    for directory in (tmp_path / "var", folder, folder / "mail", folder / "media"):
        assert mode(directory) == 0o700, directory


def test_an_older_sandbox_is_tightened(tmp_path: Path, lax_umask: None) -> None:
    folder = tmp_path / "sandbox"
    config = ensure_sandbox(folder, REPO / "municipality_map.yaml")
    prepare_sandbox_files(load_settings(config))
    for path in (config, folder / "gateway.db"):
        path.chmod(0o644)
    folder.chmod(0o755)
    (folder / "mail").chmod(0o755)
    config = ensure_sandbox(folder, REPO / "municipality_map.yaml")
    prepare_sandbox_files(load_settings(config))
    assert mode(config) == mode(folder / "gateway.db") == 0o600
    assert mode(folder) == mode(folder / "mail") == 0o700


def test_a_state_dir_elsewhere_is_not_chmod_ed(tmp_path: Path, lax_umask: None) -> None:
    """A sandbox whose settings name a folder of the user's own leaves its mode alone."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o775)
    config = ensure_sandbox(tmp_path / "sandbox", REPO / "municipality_map.yaml")
    config.write_text(config.read_text().replace("state_dir: .\n", f"state_dir: {shared}\n"))
    prepare_sandbox_files(load_settings(config))
    assert mode(shared) == 0o775
    assert mode(shared / "mail") == 0o700 and mode(shared / "sms.jsonl") == 0o600
