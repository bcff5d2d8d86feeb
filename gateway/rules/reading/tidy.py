"""Whitespace and invisible characters in a reply's text (no I/O): nothing is cut here.

- `normalise(text)`: every line end as LF (U+2028 too; U+2029 as a blank line), zero-width
  and bidi marks and soft hyphens removed, no-break spaces as spaces, tabs as four spaces,
  other control characters as spaces;
- `tidy(text)`: trailing spaces off every line, at most one blank line in a row, no blank
  lines or separator lines at either end;
- `tidy_text(text)`: both, for text someone typed with no quoted history or signature (the
  console's).
"""

from __future__ import annotations

import re

_CONTROL_RE = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")
_INVISIBLE = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff\u00ad\u200e\u200f"), None)


def tidy(text: str) -> str:
    """Trailing spaces off every line, at most one blank line in a row, no blank lines or
    separator lines at either end."""
    lines = [line.rstrip() for line in text.split("\n")]
    out: list[str] = []
    for line in lines:
        if not line and (not out or not out[-1]):
            continue
        out.append(line)
    while out and (not out[-1].strip() or re.fullmatch(r"\s*[-_=*~.]{3,}\s*", out[-1])):
        out.pop()
    return "\n".join(out).strip()


def normalise(text: str) -> str:
    """Line ends, invisible and control characters, no-break spaces and tabs made plain."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\u2028", "\n")
    text = text.replace("\u2029", "\n\n").translate(_INVISIBLE).replace("\xa0", " ")
    return _CONTROL_RE.sub(" ", text.replace("\t", "    "))


def tidy_text(text: str) -> str:
    """Text someone typed, tidied the way a reply's visible text is (line ends, invisible and
    control characters, no-break spaces, tabs, trailing spaces, runs of blank lines) —
    nothing is cut: for text that has no quoted history or signature (the console's)."""
    return tidy(normalise(text))

