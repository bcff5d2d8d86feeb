"""`gateway.rules.thread`'s header cleaning: the fast path for values that are already one
clean ASCII line gives exactly what the character-by-character rule gives."""

from __future__ import annotations

import unicodedata

from hypothesis import given
from hypothesis import strategies as st

from gateway.rules.thread import REFERENCES_KEEP_LAST, bare, next_thread_headers, one_line


def _by_character(value: str) -> str:
    chars = [
        " " if unicodedata.category(c) in ("Cc", "Zl", "Zp") or c.isspace() else c for c in value
    ]
    return " ".join("".join(chars).split())


@given(st.text())
def test_one_line_is_the_character_rule(value: str) -> None:
    assert one_line(value) == _by_character(value)


@given(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E)))
def test_one_line_on_ascii_lines(value: str) -> None:
    assert one_line(value) == _by_character(value)
    assert bare(value) == "".join(_by_character(value).split())


def test_references_keep_the_first_and_the_last_ids() -> None:
    ids = [f"<m{i}@gw.example>" for i in range(40)]
    in_reply_to, references = next_thread_headers(ids)
    assert in_reply_to == "<m39@gw.example>"
    assert references == (ids[0], *ids[-REFERENCES_KEEP_LAST:])
