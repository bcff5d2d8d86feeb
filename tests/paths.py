"""Where the tests find the shared test data.

Import `SHARED_DATA` (a `Path`): `$GATEWAY_TEST_DATA` when set, else `../shared/data` next
to the repository, else `/work/shared/data` (where this workplace keeps it, for clones made
elsewhere). The folder is required: a missing folder fails loudly at import, it never skips
tests.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
CANDIDATES = [
    Path(p) for p in [os.environ.get("GATEWAY_TEST_DATA", "")] if p
] + [REPO_ROOT.parent / "shared" / "data", Path("/work/shared/data")]

SHARED_DATA = next((c for c in CANDIDATES if c.is_dir()), CANDIDATES[0])

if not SHARED_DATA.is_dir():
    raise RuntimeError(
        "shared test data not found (looked in "
        + ", ".join(str(c) for c in CANDIDATES)
        + "): set GATEWAY_TEST_DATA or put ../shared/data next to the repository"
    )


def shared_file(*parts: str) -> Path:
    """A file under SHARED_DATA; a missing file is an error naming it, not a skip."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        raise FileNotFoundError(f"shared test data file missing: {path}")
    return path
