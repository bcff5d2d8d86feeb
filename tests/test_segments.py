"""SMS encodings, segment counts and splitting (gateway.rules.segments). No servers."""

from __future__ import annotations

import re

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.rules.segments import (
    GSM7_BASIC,
    GSM7_EXTENSION,
    count_segments,
    encoding,
    prepare_for_sms,
    smart_quotes_to_gsm,
    split_for_sms,
    utf16_length,
)

# -- an independent reference: 3GPP TS 23.038, written out by code point order ---------------

# The default alphabet, position by position (0x1B, the escape, as None).
REFERENCE_TABLE: list[str | None] = [
    *"@£$¥èéùìòÇ\nØø\rÅå",
    *"Δ_ΦΓΛΩΠΨΣΘΞ", None, *"ÆæßÉ",
    *" !\"#¤%&'()*+,-./",
    *"0123456789:;<=>?",
    *"¡ABCDEFGHIJKLMNO",
    *"PQRSTUVWXYZÄÖÑÜ§",
    *"¿abcdefghijklmno",
    *"pqrstuvwxyzäöñüà",
]  # fmt: skip
REFERENCE_EXTENSION = {0x0A: "\f", 0x14: "^", 0x28: "{", 0x29: "}", 0x2F: "\\", 0x3C: "[",
                       0x3D: "~", 0x3E: "]", 0x40: "|", 0x65: "€"}  # fmt: skip


def reference_septets(text: str) -> list[list[int]] | None:
    """Each character as its septets (1, or ESC + 1), or None if not GSM-7."""
    out: list[list[int]] = []
    for char in text:
        if char in REFERENCE_TABLE:
            out.append([REFERENCE_TABLE.index(char)])
        elif char in REFERENCE_EXTENSION.values():
            code = next(k for k, v in REFERENCE_EXTENSION.items() if v == char)
            out.append([0x1B, code])
        else:
            return None
    return out


def reference_count(text: str) -> int:
    """Segments as a phone would pack them: fill each part, never splitting a character."""
    septets = reference_septets(text)
    if septets is not None:
        units, single, part = [len(s) for s in septets], 160, 153
    else:
        units = [len(c.encode("utf-16-le")) // 2 for c in text]
        single, part = 70, 67
    if sum(units) <= single:
        return 1
    parts: list[list[int]] = [[]]
    for unit in units:
        if sum(parts[-1]) + unit > part:
            parts.append([])
        parts[-1].append(unit)
    return len(parts)


def test_the_tables_match_the_standard() -> None:
    assert len(REFERENCE_TABLE) == 128
    assert {c for c in REFERENCE_TABLE if c is not None} == GSM7_BASIC
    assert set(REFERENCE_EXTENSION.values()) == GSM7_EXTENSION


# -- encoding ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Pothole fixed on Bank St.", "GSM-7"),
        ("", "GSM-7"),
        ("Réparé à côté", "UCS-2"),  # ô is not GSM-7
        ("Réparé à Montréal, ça va?", "UCS-2"),  # ç (lower case) is not GSM-7
        ("Ça répare à Sèvres, où?", "GSM-7"),  # Ç é à è ù are
        ("Ê", "UCS-2"),
        ("Cost: 5€ [approx] {x} ~ | ^ \\", "GSM-7"),
        ("Merci 🙂", "UCS-2"),
        ("It’s fixed", "UCS-2"),
        ("tab\there", "UCS-2"),
    ],
)
def test_encoding(text: str, expected: str) -> None:
    assert encoding(text) == expected


# -- counting ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "segments"),
    [
        ("", 1),
        ("a" * 160, 1),
        ("a" * 161, 2),
        ("a" * 306, 2),
        ("a" * 307, 3),
        ("€" * 80, 1),  # 160 septets
        ("€" * 81, 2),
        ("a" * 152 + "€" + "a" * 152, 3),  # the escape pair is not split: 152 | 2+151 | 1
        ("a" * 153 + "€" * 4, 2),
        ("ê" * 70, 1),
        ("ê" * 71, 2),
        ("ê" * 134, 2),
        ("ê" * 135, 3),
        ("🙂" * 35, 1),  # 70 UTF-16 code units
        ("🙂" * 36, 2),
        ("ê" * 66 + "🙂" + "ê" * 66, 3),  # the surrogate pair is not split: 66 | 2+65 | 1
        ("x" * 1600, 11),
        ("ê" * 1600, 24),
    ],
)
def test_count_segments(text: str, segments: int) -> None:
    assert count_segments(text) == segments
    assert reference_count(text) == segments


gsm_char = st.sampled_from(sorted(GSM7_BASIC | GSM7_EXTENSION))
any_text = st.text(
    alphabet=st.one_of(
        gsm_char, gsm_char, st.sampled_from("êçô’—«» \u00a0🙂👍🏽"), st.characters(codec="utf-8")
    ),
    max_size=500,
)


@settings(max_examples=400, deadline=None)
@given(text=any_text)
@example("a" * 159 + "€")
@example("ê" * 69 + "🙂")
def test_count_segments_agrees_with_the_reference(text: str) -> None:
    assert count_segments(text) == reference_count(text)
    assert (encoding(text) == "GSM-7") == (reference_septets(text) is not None)


# -- typography --------------------------------------------------------------------------------


def test_smart_quotes_become_gsm() -> None:
    text = "It’s “fixed” – see you… « Merci » ‘ok’ — done\u00a0: yes\u200b\tno\r\nbye"
    plain = smart_quotes_to_gsm(text)
    assert plain == 'It\'s "fixed" - see you... "Merci" \'ok\' - done : yes no\nbye'
    assert encoding(plain) == "GSM-7"


def test_french_letters_are_never_touched() -> None:
    text = "Votre requête a été traitée, ça roule ! Hôtel, maïs, Noël, où, À, È, Œ"
    assert smart_quotes_to_gsm(text) == text
    assert prepare_for_sms(text) == text


def test_prepare_replaces_only_when_it_saves_ucs2() -> None:
    assert prepare_for_sms("It’s fixed — thanks") == "It's fixed - thanks"
    # UCS-2 anyway (ê): the agent's typography stays
    assert prepare_for_sms("L’équipe arrête — merci") == "L’équipe arrête — merci"
    # an emoji keeps it UCS-2 too
    assert prepare_for_sms("Done 👍 it’s fixed") == "Done 👍 it’s fixed"
    assert prepare_for_sms("plain") == "plain"


def test_a_smart_quote_no_longer_halves_the_capacity() -> None:
    reply = "We’ll be there tomorrow morning. " * 4  # 132 characters
    assert count_segments(reply) == 2  # UCS-2: 132 > 70
    [sent], shortened = split_for_sms(reply)
    assert count_segments(sent) == 1 and not shortened


# -- splitting ---------------------------------------------------------------------------------


def test_short_and_up_to_1600_characters_is_one_part() -> None:
    assert split_for_sms("Fixed.") == (["Fixed."], False)
    body = ("The crew inspected the road. " * 55).strip()
    assert len(body) == 1594
    assert split_for_sms(body) == ([body], False)
    assert split_for_sms("x" * 1600) == (["x" * 1600], False)
    assert split_for_sms("  \n Fixed. \n") == (["Fixed."], False)  # outer whitespace


def test_empty_text_gives_no_part() -> None:
    assert split_for_sms("") == ([], False)
    assert split_for_sms(" \n\t\u00a0") == ([], False)


def test_emoji_count_two_towards_the_limit() -> None:
    body = "🙂" * 800  # 800 characters, 1,600 UTF-16 code units
    assert split_for_sms(body) == ([body], False)
    parts, shortened = split_for_sms("🙂" * 801)
    assert len(parts) == 2 and not shortened
    assert all(utf16_length(p) <= 1600 for p in parts)


def test_longer_text_is_split_at_words_and_numbered() -> None:
    words = [f"word{i}" for i in range(400)]  # 2,889 characters
    parts, shortened = split_for_sms(" ".join(words))
    assert not shortened and len(parts) == 2
    assert parts[0].startswith("(1/2) word0 ") and parts[1].startswith("(2/2) ")
    assert all(len(p) <= 1600 for p in parts)
    assert [w for p in parts for w in p[6:].split()] == words


def test_prefers_a_line_break_near_the_end() -> None:
    first = "a" * 1400 + "\n" + "b" * 150  # the break is in the last fifth of the part
    parts, _ = split_for_sms(first + " " + "c" * 100 + " d", numbered=False)
    assert parts[0] == "a" * 1400
    assert parts[1].startswith("b" * 150)


def test_unnumbered() -> None:
    parts, _ = split_for_sms("word " * 400, numbered=False)
    assert parts[0].startswith("word word") and len(parts) == 2


def test_a_word_longer_than_a_part_is_cut_but_never_inside_a_character() -> None:
    url = "https://example.ca/" + "x" * 2000
    parts, shortened = split_for_sms(url, numbered=False)
    assert "".join(parts) == url and not shortened
    assert [len(p) for p in parts] == [1600, len(url) - 1600]
    # an emoji on the boundary moves to the next part whole
    parts, _ = split_for_sms("x" * 1599 + "🙂" * 10, numbered=False)
    assert parts[0] == "x" * 1599 and parts[1] == "🙂" * 10
    # a combining accent stays with its letter
    parts, _ = split_for_sms("x" * 1599 + "e\u0301" + "y" * 10, numbered=False)
    assert parts[0] == "x" * 1599 and parts[1].startswith("e\u0301")


def test_too_long_is_shortened_with_an_ellipsis() -> None:
    body = " ".join(f"word{i}" for i in range(3000))  # ~23,000 characters
    parts, shortened = split_for_sms(body)
    assert shortened and len(parts) == 5
    assert all(len(p) <= 1600 for p in parts)
    assert [p[:6] for p in parts] == [f"({i}/5) " for i in range(1, 6)]
    assert parts[-1].endswith("...")  # GSM-7 text: a GSM-7 ellipsis
    assert encoding(parts[-1]) == "GSM-7"
    parts, shortened = split_for_sms("ê " * 5000, max_parts=2)
    assert shortened and parts[-1].endswith("…") and len(parts) == 2


def test_smaller_limits() -> None:
    parts, shortened = split_for_sms("one two three four five six", max_chars=20, max_parts=3)
    assert parts == ["(1/2) one two three", "(2/2) four five six"] and not shortened
    parts, shortened = split_for_sms("one two three four five six seven", 20, 1)
    assert parts == ["one two three..."] and shortened
    with pytest.raises(ValueError):
        split_for_sms("x" * 50, max_chars=5)
    with pytest.raises(ValueError):
        split_for_sms("x", max_parts=0)


def test_many_parts_widen_the_prefix() -> None:
    parts, shortened = split_for_sms("word " * 400, max_chars=30, max_parts=100)
    assert not shortened and len(parts) > 9
    assert parts[0].startswith(f"(1/{len(parts)}) ") and all(len(p) <= 30 for p in parts)


def unprefix(part: str) -> str:
    return re.sub(r"^\(\d+/\d+\) ", "", part)


texts = st.text(
    alphabet=st.one_of(
        st.sampled_from("abcdeêç€🙂 \n\t-.,’"),
        st.characters(codec="utf-8", exclude_categories=("Cs",)),
    ),
    max_size=4000,
)


@settings(max_examples=200, deadline=None)
@given(
    text=texts,
    max_chars=st.integers(20, 400),
    max_parts=st.integers(1, 8),
    numbered=st.booleans(),
)
@example("x" * 3300, 1600, 5, True)
@example("a " * 2000, 1600, 5, True)
def test_split_properties(text: str, max_chars: int, max_parts: int, numbered: bool) -> None:
    parts, shortened = split_for_sms(text, max_chars, max_parts, numbered=numbered)
    prepared = prepare_for_sms(text).strip()
    assert all(utf16_length(p) <= max_chars for p in parts)
    assert all(p and p == p.strip() for p in parts)
    if not prepared:
        assert parts == [] and not shortened
        return
    if utf16_length(prepared) <= max_chars:
        assert parts == [prepared] and not shortened
        return
    assert len(parts) <= max_parts
    pieces = [unprefix(p) for p in parts] if numbered and len(parts) > 1 else list(parts)
    if shortened:
        assert len(parts) == max_parts
        last = pieces[-1]
        assert last.endswith(("...", "…"))
        pieces[-1] = last.removesuffix("...") if last.endswith("...") else last[:-1]
    # joining the parts gives back the text, modulo the whitespace at the cuts
    position = 0
    for index, piece in enumerate(pieces):
        found = prepared.find(piece, position)
        assert found >= 0, (index, piece)
        assert prepared[position:found].strip() == "", "only whitespace between parts"
        position = found + len(piece)
    if not shortened:
        assert prepared[position:].strip() == ""
