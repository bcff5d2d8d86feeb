"""Files the sandbox ships with (`make run`), found wherever the package is installed.

- `pothole.jpg`: a small sample picture (320x240, drawn for sms311, GPL like the code);
  `sms311 sandbox text … --media sample` attaches it.
- `sandbox_places.csv`: a short hand-written list (in the census file's columns) of
  municipalities whose names exist in several provinces (Victoria ×4, Richmond, Windsor,
  Stratford, Waterloo, Cornwall) and a few others, so that the sandbox shows the numbered
  choice. Written for sms311, not copied from the census test data (which stays in the
  tests). `sms311 sandbox run` merges it with the sandbox's map, as
  `sms311 directory build --merge` does with the whole census file.
"""

from __future__ import annotations

from pathlib import Path

SANDBOX_DATA = Path(__file__).resolve().parent
SAMPLE_PICTURE = SANDBOX_DATA / "pothole.jpg"
SANDBOX_PLACES = SANDBOX_DATA / "sandbox_places.csv"
SANDBOX_DIR = Path("var/sandbox")
"""Where `make run` keeps its sandbox (relative to the repository; `make sandbox-reset`
removes it)."""
SAMPLE_MEDIA = "sample"
"""The `--media` value that means `SAMPLE_PICTURE` (unless a file of that name exists)."""
