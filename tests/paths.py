"""Where the tests find the shared test data (../shared/data next to the repository).

Import `SHARED_DATA` (a `Path`). The folder is required: a missing folder fails loudly at
import, it never skips tests.
"""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

if not SHARED_DATA.is_dir():
    raise RuntimeError(
        f"shared test data not found at {SHARED_DATA}: the tests need the ../shared/data "
        "folder next to the repository (see its README)"
    )


def shared_file(*parts: str) -> Path:
    """A file under SHARED_DATA; a missing file is an error naming it, not a skip."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        raise FileNotFoundError(f"shared test data file missing: {path}")
    return path
