"""Where the tests find their data.

`TEST_DATA` (a `Path`) is `tests/data/` inside the repository: public corpora copied in with
their licences (`tests/data/README.md` names each source, commit and licence), so a clone
passes on its own. `data_file(...)` names one file under it; a missing file or folder is an
error naming it, never a skip.
"""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
TEST_DATA = REPO_ROOT / "tests" / "data"

if not TEST_DATA.is_dir():
    raise RuntimeError(f"test data folder missing: {TEST_DATA} (it is part of the repository)")


def data_file(*parts: str) -> Path:
    """A file under TEST_DATA; a missing file is an error naming it, not a skip."""
    path = TEST_DATA.joinpath(*parts)
    if not path.exists():
        raise FileNotFoundError(f"test data file missing: {path}")
    return path
