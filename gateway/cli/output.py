"""Printing text that came from outside (an email, a provider, a console user) on the
operator's terminal, without letting it drive the terminal.

An email's subject or a failed reply's bytes can carry terminal control sequences: ESC[2J
clears the screen, an OSC sequence retitles the window or writes a hyperlink, a BEL rings,
a CR rewrites the line already shown. Every CLI print of such text goes through
`printable` (one line or many) or `printable_bytes` (an email as it arrived), which keep
newlines, tabs and CRLF line ends and drop every other C0 and C1 control character (a lone
CR too), DEL, and whole ESC sequences (CSI, OSC, DCS, SOS, PM, APC and the two-character
ones). A field shown on one line of a listing (`one_line=True`) also has its line breaks and
tabs made spaces, so it cannot forge a line or a column of its own. `printable_json`
does the same for a JSON document: control characters stay escaped (\\u001b), so the
document still reads back as it was stored.
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["printable", "printable_bytes", "printable_json"]

# ESC sequences, whole:
# - CSI: ESC [ parameters intermediates final byte
# - OSC, DCS, SOS, PM, APC: ESC ] / P / X / ^ / _ ... up to BEL or ST (ESC \ or U+009C);
#   an unterminated one up to the end of its line (the rest of an email stays shown)
# - any other: ESC and the one character after it (e.g. ESC c, the full reset)
_ESCAPE_SEQUENCE = re.compile(
    r"\x1b\[[\x30-\x3f]*[\x20-\x2f]*[\x40-\x7e]?"
    r"|\x1b[\]PX^_][^\x07\x1b\x9c\n]*(?:\x07|\x1b\\|\x9c)?"
    r"|\x1b[^\n]?"
)
# What is left: C0 but tab, newline and the CR of a CRLF; DEL; C1 (U+0080..U+009F, e.g.
# U+009B, the 8-bit CSI).
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]|\r(?!\n)")
_LINE_BREAK = re.compile(r"\r\n|[\n\t\u2028\u2029]")
_C1 = re.compile(r"[\x7f-\x9f]")


def printable(text: str, *, one_line: bool = False) -> str:
    """`text` without terminal control sequences: newline, tab and CRLF kept, every other
    control character and ESC sequence dropped. `one_line`: line breaks and tabs become
    spaces too (a field of a listing)."""
    text = _CONTROL.sub("", _ESCAPE_SEQUENCE.sub("", text))
    return _LINE_BREAK.sub(" ", text) if one_line else text


def printable_bytes(data: bytes) -> str:
    """An email as it arrived (bytes), made `printable`: UTF-8 (most mail is ASCII or
    UTF-8), any byte that is not shown as \\xNN."""
    return printable(data.decode("utf-8", errors="backslashreplace"))


def printable_json(value: Any) -> str:
    """`value` as indented JSON (non-ASCII letters as they are), with the C1 controls and
    DEL escaped as the C0 ones already are: the same document, safe on a terminal."""
    text = json.dumps(value, indent=2, ensure_ascii=False)
    return _C1.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
