"""Quoted history in a reply's plain text (no I/O): `cut_history` keeps what is above it.

What counts as history, from the first line of it to the end (or to the next unquoted
answer, for replies written between quotes):

- reply attributions ("On … wrote:", "Le … a écrit :", and German, Dutch, Spanish, … forms),
  maybe wrapped over a few lines, maybe after answer text on the same line, maybe quoted
  themselves ("> On … wrote:", as iPhone and Apple Mail write them);
- "> " quote blocks: always when the text came from HTML (`quotes_certain`), else once an
  attribution was seen, or when there are three quoted lines or more (one or two "> " lines
  with no attribution are kept: they may be the answer); pieces of a quoted link that a
  client broke out onto an unquoted line go with them;
- Outlook header blocks ("From:/Sent:/To:/Subject:", "De :/Envoyé :/À :/Objet :", bold or
  asterisk variants) — with enough header lines that "De : 8 h 30 / À : 16 h 30" stays;
- separators: "-----Original Message-----" and its translations, a line of underscores.

Forwarded mail ("---------- Forwarded message ---------", "Début du message réexpédié :")
is kept whole: what was forwarded is the point of it. Lines longer than LONG_LINE are never
separators, attributions or headers.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from gateway.rules.reading.limits import LONG_LINE

_WROTE = (
    r"wrote|writes|sent|a\s+[ée]crit|schrieb|schreef|geschreven|napisa[łl]|skrev|"
    r"đã viết|escribi[óo]|escreveu|ha scritto|napsal|kirjoitti|написал[а]?|пишет"
)
_WROTE_RE = re.compile(rf"\b(?:{_WROTE})\b", re.IGNORECASE)
_INTRO = r"On|Le|Am|Op|El|Il|Em|Den|På|W dniu|Vào|Dne|Il giorno"
# "On <date>, <name> wrote:" (and French, German, Dutch, … forms), maybe after reply text on the
# same line ("reply On … wrote:") or between dashes ("-----On … wrote-----").
_ATTRIBUTION_RE = re.compile(
    rf"^(?P<prefix>.*?)[\s-]*(?<![\w'’])(?:{_INTRO})\s(?P<body>.*)$", re.IGNORECASE | re.DOTALL
)
_ENDS_LIKE_ATTRIBUTION = re.compile(rf"(?:(?:{_WROTE})\s*:?|:|>)\s*-*\s*$", re.IGNORECASE)
_STARTS_WITH_DATE = re.compile(r"^\d{1,4}[./-]\d{1,2}[./-]\d{1,4}\b")
_DASH_WROTE_RE = re.compile(rf"^-{{2,}}\s*.{{1,120}}\s(?:{_WROTE})\s*:?\s*-{{2,}}$", re.I)
_NAME_WROTE_RE = re.compile(
    rf"^.{{0,200}}?(?:<[^<>\s]*@[^<>\s]*>|\S@\S|\d).{{0,200}}\s(?:{_WROTE})\s*:\s*$",
    re.IGNORECASE,
)
_DATE_EMAIL_RE = re.compile(
    r"^\d{1,4}[./-]\d{1,2}[./-]\d{1,4}\b.{0,160}(?:<\s*\S+@\S+\s*>|\S+@\S+)\s*:?\s*$"
)
_TIME_RE = re.compile(r"\d{1,2}:\d{2}")
_SEPARATOR_RE = re.compile(
    r"^\s*-{2,}\s*(?:original message|reply message|message d'origine|message original|"
    r"courriel original|ursprüngliche nachricht|antwort nachricht|oprindelig meddelelse|"
    r"mensaje original|messaggio originale|mensagem original|oorspronkelijk bericht|"
    r"originalmeddelande|opprinnelig melding|alkuperäinen viesti)\s*-{2,}\s*$",
    re.IGNORECASE,
)
_UNDERSCORES_RE = re.compile(r"^\s*_{10,}\s*$")
_FORWARD_RE = re.compile(
    r"^\s*(?:-{2,}\s*(?:forwarded message|message transf[ée]r[ée]|weitergeleitete nachricht|"
    r"mensaje reenviado|messaggio inoltrato)\s*-{2,}|begin forwarded message:|"
    r"d[ée]but du message r[ée]exp[ée]di[ée]\s*:)\s*$",
    re.IGNORECASE,
)
_FROM_NAMES = r"from|de|von|fra|från|van|da|od|от"
_DATE_NAMES = (
    r"sent|date|envoy[ée]|gesendet|datum|sendt|skickat|verzonden|enviado|inviato|дата|"
    r"отправлено"
)
_OTHER_NAMES = (
    r"to|cc|bcc|subject|reply-to|à|a|objet|an|betreff|kopie|til|emne|till|ämne|aan|"
    r"onderwerp|para|asunto|oggetto|assunto|кому|тема|копия|importance|priority|priorité"
)
_HEADER_RE = re.compile(
    rf"^\s*[*_]{{0,2}}\s*(?P<name>{_FROM_NAMES}|{_DATE_NAMES}|{_OTHER_NAMES})\s*[*_]{{0,2}}\s*:"
    r"(?!//)",
    re.IGNORECASE,
)
_FROM_RE = re.compile(_FROM_NAMES, re.IGNORECASE)
_DATE_RE = re.compile(_DATE_NAMES, re.IGNORECASE)
_SUBJECT_RE = re.compile(
    r"subject|objet|betreff|emne|ämne|onderwerp|asunto|oggetto|assunto|тема", re.IGNORECASE
)
_DATED_TIME_RE = re.compile(
    r"(?:19|20)\d\d\b.{0,40}\b\d{1,2}:\d{2}|\d{1,2}:\d{2}.{0,40}\b(?:19|20)\d\d\b"
)
_HEADER_START_RE = re.compile(
    rf"^\s*[*_]{{0,2}}\s*(?:{_FROM_NAMES}|{_DATE_NAMES})\s*[*_]{{0,2}}\s*:(?!//)", re.IGNORECASE
)
# A piece of a quoted link that a client wrapped onto an unquoted line.
_LINK_ARTIFACT_RE = re.compile(r"://|mailto:|^\S*(?:https?|\()\S*.*>\s*$|^(?=\S{8,}$)\S*[=&%]\S*$")


def _is_quote(line: str) -> bool:
    return line.lstrip(" \t").startswith(">")


def _is_blank(line: str) -> bool:
    return not line.strip()


def _next_nonblank(lines: Sequence[str], start: int, limit: int = 50) -> int:
    j = start
    end = min(len(lines), start + limit)
    while j < end and _is_blank(lines[j]):
        j += 1
    return j if j < end else len(lines)


def _header_group(name: str) -> str:
    name = name.lower()
    for group, pattern in (("from", _FROM_RE), ("date", _DATE_RE), ("subject", _SUBJECT_RE)):
        if pattern.fullmatch(name):
            return group
    return name


def _header_block_at(lines: Sequence[str], i: int) -> bool:
    """An Outlook-style header block ("From:/Sent:/To:/Subject:", "De :/Envoyé :/À :/Objet :",
    bold or asterisk variants) starts at line i: a From or Date line, then within the next
    lines more header lines: two of From/Date/Subject, or three names, or two names with an
    address or a dated time among them ("De : 8 h 30 / À : 16 h 30" is text, not a header)."""
    line = lines[i]
    if len(line) > LONG_LINE or not _HEADER_START_RE.match(line):
        return False
    groups: set[str] = set()
    evidence = False
    seen = 0
    j = i
    while j < len(lines) and seen < 9:
        candidate = lines[j]
        j += 1
        seen += 1
        if len(candidate) > LONG_LINE:
            break
        if _is_blank(candidate):
            continue
        evidence = evidence or "@" in candidate or bool(_DATED_TIME_RE.search(candidate))
        match = _HEADER_RE.match(candidate)
        if not match:
            continue
        groups.add(_header_group(match.group("name")))
        core = len(groups & {"from", "date", "subject"})
        if core >= 2 or len(groups) >= 3 or (len(groups) >= 2 and evidence):
            return True
    return False


def _attribution_at(lines: Sequence[str], i: int) -> tuple[int, str] | None:
    """A reply attribution ("On … wrote:", "Le … a écrit :", …) starting at line i, possibly
    wrapped over a few lines: (number of lines, text before it on the first line) or None."""
    first = lines[i].strip()
    if not first or len(first) > LONG_LINE:
        return None
    joined = ""
    for k in range(1, 6):
        if i + k > len(lines):
            break
        piece = lines[i + k - 1].strip()
        if len(piece) > 300:
            break
        joined = f"{joined} {piece}".strip() if k > 1 else first
        if len(joined) > 400:
            break
        if k > 1 and first.endswith((".", "!", "?")):
            break
        if not _ENDS_LIKE_ATTRIBUTION.search(joined[-60:]):
            continue
        found = _match_attribution(joined, lines, i + k, first_line_only=(k == 1))
        if found is not None:
            return k, found
    return None


def _match_attribution(
    joined: str, lines: Sequence[str], after: int, *, first_line_only: bool
) -> str | None:
    """The text before the attribution in `joined` ("" if none) if `joined` (one line, or a
    few lines joined when `first_line_only` is False) is an attribution, else None."""
    if _WROTE_RE.search(joined):
        match = _ATTRIBUTION_RE.match(joined)
        if (
            match
            and re.search(r"\d|@", match.group("body"))
            and _WROTE_RE.search(match.group("body"))
        ):
            prefix = match.group("prefix").strip()
            if first_line_only or not prefix:
                return prefix
        if first_line_only and _DASH_WROTE_RE.match(joined):
            return ""
        if (first_line_only or _STARTS_WITH_DATE.match(joined)) and _NAME_WROTE_RE.match(joined):
            return ""
    nxt = _next_nonblank(lines, after)
    if not (nxt < len(lines) and _is_quote(lines[nxt])):
        return None
    if _DATE_EMAIL_RE.match(joined):
        return ""
    if (
        first_line_only
        and joined.endswith(":")
        and ("@" in joined or _TIME_RE.search(joined))
        and len(joined) <= 300
    ):
        return ""  # "<date>, <name> <address>:" right above the quote, in any language
    return None


def _skip_quote_block(lines: Sequence[str], j: int) -> int:
    """Index after the quote block starting at j (quote lines, blank lines, and link pieces
    that a client broke out of a quoted line)."""
    n = len(lines)
    while j < n:
        line = lines[j]
        if _is_quote(line) or _is_blank(line):
            j += 1
            continue
        nxt = _next_nonblank(lines, j + 1, limit=3)
        if (
            nxt < n
            and _is_quote(lines[nxt])
            and len(line) < 200
            and _LINK_ARTIFACT_RE.search(line.strip())
        ):
            j += 1
            continue
        break
    return j


def _quoted_attribution(line: str) -> bool:
    """`line` is a quoted "> On … wrote:" (iPhone and Apple Mail quote the attribution too)."""
    content = line.lstrip(" \t>").strip()
    if not content or len(content) > 400 or not _ENDS_LIKE_ATTRIBUTION.search(content[-60:]):
        return False
    return _match_attribution(content, (), 0, first_line_only=True) is not None


def cut_history(lines: list[str], *, quotes_certain: bool) -> list[str]:
    """The lines above (and between) the quoted history."""
    quoted = [line for line in lines if _is_quote(line)]
    quotes_active = (
        quotes_certain or len(quoted) >= 3 or any(_quoted_attribution(q) for q in quoted[:50])
    )
    out: list[str] = []
    i = 0
    n = len(lines)
    while i < n:
        line = lines[i]
        if _is_blank(line):
            out.append("")
            i += 1
            continue
        if len(line) <= LONG_LINE:
            if _FORWARD_RE.match(line):
                out.extend(lines[i:])
                break
            if _SEPARATOR_RE.match(line) or _UNDERSCORES_RE.match(line):
                break
            if _header_block_at(lines, i):
                break
        if _is_quote(line):
            if quotes_active:
                i = _skip_quote_block(lines, i)
                continue
            out.append(line)
            i += 1
            continue
        found = _attribution_at(lines, i)
        if found is not None:
            k, prefix = found
            if prefix:
                out.append(prefix)
            nxt = _next_nonblank(lines, i + k)
            if nxt < n and _is_quote(lines[nxt]):
                quotes_active = True
                i = _skip_quote_block(lines, nxt)
                continue
            break
        out.append(line)
        i += 1
    return out

