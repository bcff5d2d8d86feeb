"""SMS encodings, segment counting and splitting (no I/O).

An SMS carries 140 bytes. A text that only uses the GSM 03.38 alphabet (GSM-7) is
packed 7 bits a character: 160 characters in one message, or 153 per part of a
concatenated message (the user-data header takes the rest). Any other character
makes the whole text UCS-2 (UTF-16): 70 code units in one message, 67 per part; a
character outside the Basic Multilingual Plane (most emoji) takes two code units.
The characters of the GSM-7 *extension table* (``^ { } \\ [ ] ~ | €`` and form
feed) are sent as an escape plus a character, so they count 2; an escape pair, like
a surrogate pair, is never cut between two parts.

French: é è à ù ì ò, É, Ç, Ä Ö Ñ Ü ä ö ñ ü are in GSM-7; ê ô î â û ë ï ç, È À Ê …
are not. A reply that uses them is sent in UCS-2, as it is (correctness over cost).

Typography. Mail clients turn an agent's quotes and dashes into ’ “ ” – — … and
insert non-breaking spaces (French: « Bonjour » , « : »), none of which is GSM-7;
one of them would make the whole reply UCS-2 and halve what fits in a segment.
`smart_quotes_to_gsm` maps them to their plain equivalents; `prepare_for_sms`
(which `split_for_sms` applies) does so only when that makes the whole text GSM-7,
so a text that is UCS-2 anyway keeps the agent's typography.

Twilio sends a body of up to 1,600 characters as one concatenated message
(`split_for_sms` keeps such a reply whole); longer replies are split at word
boundaries into several messages, numbered "(1/3) ", and beyond `max_parts`
the last part is cut short with an ellipsis.
"""

from __future__ import annotations

import bisect
import re
import unicodedata
from typing import Final, Literal

Encoding = Literal["GSM-7", "UCS-2"]

#: The GSM 03.38 default alphabet (0x1B, the escape to the extension table, excluded).
GSM7_BASIC: Final = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅå"  # 0x00-0x0F
    "Δ_ΦΓΛΩΠΨΣΘΞÆæßÉ"  # 0x10-0x1F (0x1B is the escape)
    " !\"#¤%&'()*+,-./"  # 0x20-0x2F
    "0123456789:;<=>?"  # 0x30-0x3F
    "¡ABCDEFGHIJKLMNO"  # 0x40-0x4F
    "PQRSTUVWXYZÄÖÑÜ§"  # 0x50-0x5F
    "¿abcdefghijklmno"  # 0x60-0x6F
    "pqrstuvwxyzäöñüà"  # 0x70-0x7F
)
#: The GSM 03.38 extension table: each is sent as ESC + a character (2 septets).
GSM7_EXTENSION: Final = frozenset("\f^{}\\[~]|€")

GSM7_SINGLE: Final = 160  # septets in a single message
GSM7_PART: Final = 153  # septets per part of a concatenated message
UCS2_SINGLE: Final = 70  # UTF-16 code units in a single message
UCS2_PART: Final = 67  # UTF-16 code units per part

#: Twilio's limit for one (concatenated) message body, in characters.
MAX_BODY_CHARS: Final = 1600
#: At most this many separate messages for one reply; beyond, it is shortened.
MAX_PARTS: Final = 5

ELLIPSIS_GSM: Final = "..."
ELLIPSIS_UCS2: Final = "…"

# Typographic characters mail clients insert, and their GSM-7 stand-ins.
_SMART: Final = {
    "\u2018": "'",  # ‘
    "\u2019": "'",  # ’
    "\u201a": "'",  # ‚
    "\u201b": "'",  # ‛
    "\u2032": "'",  # ′
    "\u00b4": "'",  # ´
    "\u0060": "'",  # ` (not GSM-7 either)
    "\u201c": '"',  # “
    "\u201d": '"',  # ”
    "\u201e": '"',  # „
    "\u201f": '"',  # ‟
    "\u2033": '"',  # ″
    "\u00ab": '"',  # «
    "\u00bb": '"',  # »
    "\u2039": "'",  # ‹
    "\u203a": "'",  # ›
    "\u2010": "-",  # hyphen
    "\u2011": "-",  # non-breaking hyphen
    "\u2012": "-",  # figure dash
    "\u2013": "-",  # – en dash
    "\u2014": "-",  # — em dash
    "\u2015": "-",  # horizontal bar
    "\u2212": "-",  # minus sign
    "\u2026": "...",  # …
    "\u2022": "-",  # • bullet (Outlook lists)
    "\u00b7": "-",  # · middle dot used as a bullet
    "\u00a0": " ",  # no-break space (French « : », « ? »)
    "\u202f": " ",  # narrow no-break space
    "\u2007": " ",  # figure space
    "\u2009": " ",  # thin space
    "\u200a": " ",  # hair space
    "\u2002": " ",  # en space
    "\u2003": " ",  # em space
    "\t": " ",  # tab is not GSM-7
    "\u200b": "",  # zero-width space
    "\u2060": "",  # word joiner
    "\ufeff": "",  # byte-order mark / zero-width no-break space
    "\u00ad": "",  # soft hyphen
}
_SMART_TABLE: Final = str.maketrans(_SMART)
# French guillemets with their (no-break) spaces: « Bonjour » -> "Bonjour"
_GUILLEMET_OPEN: Final = re.compile("[«‹][ \u00a0\u202f\u2009]*")
_GUILLEMET_CLOSE: Final = re.compile("[ \u00a0\u202f\u2009]*([»›])")


def _is_gsm(char: str) -> bool:
    return char in GSM7_BASIC or char in GSM7_EXTENSION


def encoding(text: str) -> Encoding:
    """ "GSM-7" if every character of `text` is in the GSM 03.38 alphabet (basic or
    extension table), else "UCS-2"."""
    return "GSM-7" if all(_is_gsm(c) for c in text) else "UCS-2"


def _unit(char: str, gsm: bool) -> int:
    """What one character costs: septets in GSM-7, UTF-16 code units in UCS-2."""
    if gsm:
        return 2 if char in GSM7_EXTENSION else 1
    return 2 if ord(char) > 0xFFFF else 1


def utf16_length(text: str) -> int:
    """The length of `text` in UTF-16 code units (an emoji counts 2)."""
    return len(text) + sum(1 for c in text if ord(c) > 0xFFFF)


def count_segments(text: str) -> int:
    """How many SMS a provider bills for `text` sent as one (concatenated) message.

    GSM-7: up to 160 septets is one segment, else parts of 153 septets; UCS-2: up to
    70 UTF-16 code units is one, else parts of 67. An escape pair (GSM-7) or a
    surrogate pair (UCS-2) is never split, so a part may hold one unit less. An
    empty text counts 1 (a message is still sent).
    """
    gsm = encoding(text) == "GSM-7"
    single, per_part = (GSM7_SINGLE, GSM7_PART) if gsm else (UCS2_SINGLE, UCS2_PART)
    costs = [_unit(c, gsm) for c in text]
    if sum(costs) <= single:
        return 1
    parts, used = 1, 0
    for cost in costs:
        if used + cost > per_part:
            parts += 1
            used = 0
        used += cost
    return parts


def smart_quotes_to_gsm(text: str) -> str:
    """`text` with typographic quotes, dashes, ellipses, bullets and special spaces
    replaced by GSM-7 equivalents (’ -> ', “ ” « » -> ", – — -> -, … -> ...,
    no-break spaces and tabs -> space, zero-width characters and soft hyphens
    removed, the spaces inside French guillemets dropped: « oui » -> "oui") and
    CR LF line ends turned into LF. Letters (ê, ç, …) are never touched."""
    text = _GUILLEMET_OPEN.sub(lambda m: _SMART[m.group()[0]], text)
    text = _GUILLEMET_CLOSE.sub(lambda m: _SMART[m.group(1)], text)
    return text.replace("\r\n", "\n").translate(_SMART_TABLE)


def prepare_for_sms(text: str) -> str:
    """`smart_quotes_to_gsm(text)` if that makes `text` GSM-7, else `text` unchanged
    (a text that must be UCS-2 anyway keeps the agent's typography)."""
    plain = smart_quotes_to_gsm(text)
    if plain != text and encoding(plain) == "GSM-7":
        return plain
    return text


# -- splitting ---------------------------------------------------------------------------


def _prefix(number: int, total: int) -> str:
    return f"({number}/{total}) "


def _prefix_width(parts: int) -> int:
    """Room for the "(i/n) " prefix when there are `parts` parts (none for one)."""
    return len(_prefix(parts, parts)) if parts > 1 else 0


def _glued(char: str) -> bool:
    """True if `char` must stay with the character before it (combining marks,
    variation selectors, joiners, emoji modifiers)."""
    code = ord(char)
    return (
        unicodedata.combining(char) != 0
        or unicodedata.category(char) in ("Mn", "Me")
        or 0xFE00 <= code <= 0xFE0F
        or 0xE0100 <= code <= 0xE01EF
        or code == 0x200D
        or 0x1F3FB <= code <= 0x1F3FF
    )


class _Cutter:
    """Greedy splitting of one text at whitespace into spans of at most `budget`
    UTF-16 code units."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.ends = [0]  # ends[i] = UTF-16 units of text[:i]
        for char in text:
            self.ends.append(self.ends[-1] + (2 if ord(char) > 0xFFFF else 1))

    def skip_space(self, index: int) -> int:
        while index < len(self.text) and self.text[index].isspace():
            index += 1
        return index

    def cut(self, start: int, budget: int) -> tuple[int, int]:
        """(end of the span starting at `start`, start of the next span)."""
        text = self.text
        limit = bisect.bisect_right(self.ends, self.ends[start] + budget) - 1
        if limit >= len(text):
            return len(text), len(text)
        if text[limit].isspace():
            end = limit
        else:
            end = next((i for i in range(limit - 1, start, -1) if text[i].isspace()), start)
            if end == start:  # one word longer than the budget: cut it, not inside a character
                end = limit
                while end > start + 1 and _glued(text[end]):
                    end -= 1
                return end, end
            # prefer a line break when there is one in the last fifth of the window
            floor = start + (limit - start) * 4 // 5
            end = next((i for i in range(limit - 1, floor, -1) if text[i] == "\n"), end)
        span_end = end
        while span_end > start and text[span_end - 1].isspace():
            span_end -= 1
        return span_end, self.skip_space(end)

    def spans(self, budget: int) -> list[tuple[int, int]]:
        """All spans (start, end) of the text, in order."""
        spans: list[tuple[int, int]] = []
        start = self.skip_space(0)
        while start < len(self.text):
            end, following = self.cut(start, budget)
            spans.append((start, end))
            start = following
        return spans


def split_for_sms(
    text: str,
    max_chars: int = MAX_BODY_CHARS,
    max_parts: int = MAX_PARTS,
    *,
    numbered: bool = True,
    prepare: bool = True,
) -> tuple[list[str], bool]:
    """The messages to send for one reply, and whether it had to be shortened.

    The text is first passed through `prepare_for_sms` (unless `prepare` is False)
    and stripped; an empty text gives ``([], False)``. A text of at most `max_chars`
    characters (UTF-16 code units, so an emoji counts 2, as providers count) is ONE
    part, sent whole: the provider concatenates its segments. A longer text is cut at
    whitespace (preferring a line break near the end of a part) into parts of at most
    `max_chars`, each prefixed "(i/n) " when `numbered`; a single word longer than a
    part is cut, never inside a character. If it needs more than `max_parts` parts,
    only `max_parts` are kept, the last one ending with an ellipsis ("..." in a GSM-7
    text, "…" otherwise), and the second value is True.
    """
    if max_parts < 1:
        raise ValueError("max_parts must be at least 1")
    body = (prepare_for_sms(text) if prepare else text).strip()
    if not body:
        return [], False
    if utf16_length(body) <= max_chars:
        return [body], False
    cutter = _Cutter(body)
    guess = 1
    while True:
        shown = min(guess, max_parts)
        width = _prefix_width(shown) if numbered else 0
        budget = max_chars - width
        if budget < 2 * len(ELLIPSIS_GSM) + 2:
            raise ValueError(f"max_chars {max_chars} leaves no room for a part")
        spans = cutter.spans(budget)
        again = min(len(spans), max_parts)
        if not numbered or _prefix_width(again) <= width:
            break
        guess = len(spans)
    shortened = len(spans) > max_parts
    if shortened:
        spans = spans[:max_parts]
        ellipsis = ELLIPSIS_GSM if encoding(body) == "GSM-7" else ELLIPSIS_UCS2
        start = spans[-1][0]
        end, _ = cutter.cut(start, budget - len(ellipsis))
        pieces = [body[s:e] for s, e in spans[:-1]] + [body[start:end] + ellipsis]
    else:
        pieces = [body[s:e] for s, e in spans]
    if numbered and len(pieces) > 1:
        pieces = [_prefix(i, len(pieces)) + p for i, p in enumerate(pieces, start=1)]
    return pieces, shortened
