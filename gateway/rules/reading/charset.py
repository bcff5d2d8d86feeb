"""Bytes to text with fallbacks (no I/O): `decode_bytes` never raises.

The declared charset is tried first, then UTF-8, then Windows-1252, then Latin-1 (which
always decodes). A byte-order mark is believed when the label does not contradict it; a
Latin-1 family label on valid non-ASCII UTF-8 is taken as the mislabelling it usually is; a
multi-byte sequence cut at the end of a truncated part is dropped.
"""

from __future__ import annotations

import codecs

_LATIN = frozenset(
    {
        "iso-8859-1", "iso8859-1", "latin-1", "latin1", "l1", "iso_8859-1", "cp819",
        "windows-1252", "cp1252", "iso-8859-15", "iso8859-15", "latin-9", "latin9",
    }
)  # fmt: skip
_UNKNOWN = frozenset(
    {"", "us-ascii", "ascii", "unknown-8bit", "x-unknown", "unknown", "default", "8bit",
     "7bit", "binary", "none", "charset", "x-user-defined"}
)  # fmt: skip


def decode_bytes(data: bytes, declared: str | None, *, truncated: bool = False) -> str:
    """Text from `data`: the declared charset if it decodes, else UTF-8, else Windows-1252,
    else Latin-1 (which always decodes). A declared Latin-1 family charset on bytes that are
    valid non-ASCII UTF-8 is taken as the common mislabelling it is. Never raises."""
    charset = (declared or "").strip().strip("\"'").lower()
    if charset in _UNKNOWN:
        charset = ""
    # A byte-order mark is believed when the label does not contradict it. (UTF-16 labelled
    # utf-8 has usually lost its byte alignment on the way, e.g. to CRLF conversion; the
    # reply service then refuses it as unreadable rather than texting garbage.)
    for bom, codec in _BOMS:
        if data.startswith(bom) and (
            not charset or codec == "utf-8" or charset.startswith(codec[:6])
        ):
            text = _try_decode(data[len(bom):], codec, truncated=truncated)
            if text is not None:
                return text
    candidates: list[str] = []
    if charset in _LATIN:
        candidates = ["utf-8", "cp1252"] if not data.isascii() else ["ascii"]
    elif charset:
        candidates = [charset, "utf-8", "cp1252"]
    else:
        candidates = ["utf-8", "cp1252"]
    for name in candidates:
        text = _try_decode(data, name, truncated=truncated)
        if text is not None:
            return text
    return data.decode("latin-1")


def _try_decode(data: bytes, charset: str, *, truncated: bool) -> str | None:
    try:
        if truncated:  # a cut multi-byte sequence at the end is dropped, not an error
            return str(codecs.getincrementaldecoder(charset)("strict").decode(data, final=False))
        return data.decode(charset)
    except Exception:  # unknown or non-text codec, or bytes it cannot decode
        return None


_BOMS = (
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
