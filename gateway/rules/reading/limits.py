"""The bounds on the work of reading one email (no I/O).

Every loop and every copy in gateway.rules.reading is capped by one of these, so that a huge,
deeply nested or hostile message costs bounded time and memory: past a bound, the rest is
ignored (never an error).
"""

from __future__ import annotations

MAX_RAW_BYTES = 4_000_000  # of the raw message (beyond that: attachments, in practice)
MAX_HEADER_BYTES = 512_000  # of the header section
MAX_TEXT_BYTES = 1_000_000  # of the chosen text part (decoded transfer encoding)
MAX_HTML_DEPTH = 500  # open HTML elements tracked
MAX_HEADER_VALUE = 16_000  # characters of one header value parsed
MAX_PARTS = 200  # MIME parts looked at
# Lines beginning with "--" (MIME boundaries of any part, signature and history markers)
# before the raw message is cut: the stdlib parser costs ~50 µs per part, so 200,000 flat
# parts in 2 MB took 10-23 s of CPU; 1,000 take ~50 ms.
MAX_DASH_LINES = 1_000
MAX_DEPTH = 12  # MIME nesting followed
MAX_IDS = 100  # References kept (the first one and the last ones)
LONG_LINE = 1_000  # lines longer than this are never separators, attributions or headers
