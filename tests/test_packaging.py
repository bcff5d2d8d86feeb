"""What an installed sms311 holds: setuptools builds the package from setup.cfg without a
warning (no "Installing '…' as data is deprecated", the ~100 lines `make run` used to
print), and the build has every module of every subpackage and every file the running
gateway reads — the console's templates, static files and compiled translations, the
migrations, the sandbox's data, py.typed — and nothing of tests/."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.gateway_fixtures import REPO

# Files under gateway/ that the running gateway never reads: translation sources (the
# compiled .mo ships) and notes for developers.
NOT_SHIPPED = {"messages.po", "messages.pot", "VENDORED.md"}


def source_files() -> list[str]:
    """The package's files, relative to the repository (no bytecode, no hidden or editor
    backup files)."""
    return sorted(
        path.relative_to(REPO).as_posix()
        for path in (REPO / "gateway").rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
        and not path.name.startswith(".") and not path.name.endswith("~")
    )


@pytest.mark.slow
def test_setuptools_builds_the_whole_package_without_a_warning(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(REPO / name, source / name)
    # As a working tree has it, __pycache__ folders and all (they must not ship).
    shutil.copytree(REPO / "gateway", source / "gateway")
    (source / "tests").mkdir()
    (source / "tests" / "test_nothing.py").write_text("")
    built = tmp_path / "built"
    result = subprocess.run(
        [sys.executable, "-c", "import setuptools; setuptools.setup()",
         "build_py", "--build-lib", str(built)],
        cwd=source, capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    output = result.stdout + result.stderr
    warnings = [line for line in output.splitlines()
                if "warn" in line.lower() and "byte-compiling is disabled" not in line]
    assert not warnings, output

    shipped = sorted(path.relative_to(built).as_posix()
                     for path in built.rglob("*") if path.is_file())
    expected = [name for name in source_files() if Path(name).name not in NOT_SHIPPED]
    assert [name for name in expected if name not in shipped] == []
    assert [name for name in shipped if name not in expected] == []
    for needed in ("gateway/py.typed", "gateway/cli/parser.py",
                   "gateway/web/templates/console/base.html",
                   "gateway/web/static/console.css",
                   "gateway/web/translations/fr/LC_MESSAGES/messages.mo",
                   "gateway/store/migrations/script.py.mako",
                   "gateway/store/migrations/versions/0001_initial.py",
                   "gateway/sandbox_data/pothole.jpg",
                   "gateway/sandbox_data/sandbox_places.csv"):
        assert needed in shipped, needed
    assert not any(name.startswith("tests/") or "__pycache__" in name for name in shipped)
    entry_points = (source / "sms311.egg-info" / "entry_points.txt").read_text()
    assert "sms311 = gateway.cli:main" in entry_points
