"""HTML mail as the text a reader sees (no I/O): `html_to_text`.

One line per block or <br>; entities decoded; head, style, script and hidden elements
dropped; lists as "- " / "1. " lines; a link's address kept in brackets when its text does not
show it (Outlook safelinks unwrapped). Quoted history is rendered as "> " lines, so that the
plain-text rules (`quotes.cut_history`) cut it, and signature containers are preceded by a
"-- " line (`signatures.cut_marked_signature`). At most MAX_TEXT_BYTES of the HTML are read and
MAX_HTML_DEPTH open elements tracked; never raises.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from html.parser import HTMLParser
from urllib.parse import parse_qs, urlsplit

from gateway.rules.reading.limits import MAX_HTML_DEPTH, MAX_TEXT_BYTES
from gateway.rules.reading.tidy import tidy

_BLOCKS = frozenset(
    {
        "address", "article", "aside", "blockquote", "center", "dd", "div", "dl", "dt",
        "fieldset", "figcaption", "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5",
        "h6", "header", "hr", "li", "main", "nav", "ol", "p", "pre", "section", "table",
        "tbody", "tfoot", "thead", "tr", "ul", "caption",
    }
)  # fmt: skip
_SKIP = frozenset(
    {"head", "style", "script", "title", "template", "xml", "svg", "object", "iframe",
     "noscript", "select", "button", "map"}
)  # fmt: skip
_VOID = frozenset(
    {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param",
     "source", "track", "wbr", "basefont", "frame", "keygen"}
)  # fmt: skip
# Containers whose content is quoted history (rendered as "> " lines).
_QUOTE_CLASSES = ("gmail_quote", "yahoo_quoted", "moz-cite-prefix", "protonmail_quote")
# Elements from which the rest of the document is quoted history (Outlook and friends).
_REST_IDS = (
    "divrplyfwdmsg", "olk_src_body_section", "mail-editor-reference-message-container",
    "stopspelling", "appendonsend", "zwchr", "origbody",
)  # fmt: skip
_REST_CLASSES = ("outlookmessageheader", "gmail_quote_container", "zmail_extra", "wmquote")
_SIGNATURE_MARKS = ("gmail_signature", "moz-signature", "applemailsignature", "signature")


@dataclass
class _Open:
    """An open HTML element, as the converter tracks it."""

    tag: str
    quote: bool = False
    skip: bool = False
    pre: bool = False
    paragraph: bool = False  # a <p> that is followed by a blank line (not Outlook's MsoNormal)


class _HtmlText(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.lines: list[str] = []
        self._line: list[str] = []
        self._line_depth = 0
        self._stack: list[_Open] = []
        self._quote = 0
        self._skip = 0
        self._pre = 0
        self._rest_quoted = False
        self._lists: list[int] = []  # per open list: item counter (-1 for ul)
        self._anchor: str | None = None  # href of the open <a>
        self._anchor_text: list[str] = []

    # -- output -----------------------------------------------------------------------
    def _depth(self) -> int:
        return self._quote + (1 if self._rest_quoted else 0)

    def _write(self, text: str) -> None:
        if not self._line:
            self._line_depth = self._depth()
            if not self._pre:
                text = text.lstrip(" ")
                if not text:
                    return
        elif not self._pre and self._line[-1].endswith(" ") and text.startswith(" "):
            text = text.lstrip(" ")
        if text:
            self._line.append(text)
            if self._anchor is not None:
                self._anchor_text.append(text)

    def _flush(self, *, blank: bool = False) -> None:
        """End the current line (if any); then add a blank line if `blank`."""
        if self._line:
            text = "".join(self._line).replace("\xa0", " ")
            self._line = []
            self.lines.append(("> " * self._line_depth + text).rstrip())
        if blank:
            self.lines.append(("> " * self._depth()).rstrip())

    # -- parser callbacks --------------------------------------------------------------
    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        tag = tag.lower()
        attr = {k.lower(): (v or "") for k, v in attrs}
        ident = attr.get("id", "").lower().removeprefix("x_")
        cls = attr.get("class", "").lower()
        style = attr.get("style", "").lower().replace(" ", "")
        if tag == "br":
            if not self._skip:
                if self._line:
                    self._flush()
                else:
                    self._flush(blank=True)
            return
        marked = bool(ident or cls or style)
        if (
            marked
            and not self._skip
            and (
                any(ident.startswith(r) for r in _REST_IDS)
                or any(c in cls for c in _REST_CLASSES)
                or (
                    tag in ("div", "p", "table", "td")
                    and "border-top" in style
                    and "solid" in style
                    and "border-top:none" not in style
                )
            )
        ):
            self._flush()
            self._rest_quoted = True  # Outlook's reply header: the rest is the original
        if tag == "hr":
            if not self._skip:
                self._flush(blank=True)
            return
        if tag in _VOID or len(self._stack) >= MAX_HTML_DEPTH:
            return
        quote = tag == "blockquote" or (marked and any(c in cls for c in _QUOTE_CLASSES))
        skip = tag in _SKIP or "display:none" in style or "hidden" in attr
        signature = marked and any(s in cls or s in ident for s in _SIGNATURE_MARKS)
        signature = signature or attr.get("data-signatureblock", "").lower() == "true"
        element = _Open(
            tag,
            quote=quote,
            skip=skip,
            pre=tag == "pre",
            paragraph=tag == "p" and "msonormal" not in cls,
        )
        if tag in _BLOCKS or quote or signature:
            self._flush()
        self._stack.append(element)
        self._quote += quote
        self._skip += skip
        self._pre += element.pre
        if self._skip:
            return
        if signature:
            self.lines.append("-- ")
        if tag in ("ul", "ol"):
            self._lists.append(0 if tag == "ol" else -1)
        elif tag == "li":
            marker = "- "
            if self._lists and self._lists[-1] >= 0:
                self._lists[-1] += 1
                marker = f"{self._lists[-1]}. "
            self._write(marker)
        elif tag in ("td", "th") and self._line:
            self._write(" ")
        elif tag == "a":
            self._anchor = attr.get("href", "")
            self._anchor_text = []

    def handle_endtag(self, tag: str) -> None:
        tag = tag.lower()
        if tag in _VOID or not any(e.tag == tag for e in self._stack):
            return
        while self._stack:
            element = self._stack.pop()
            if element.tag in _BLOCKS or element.quote:
                self._flush()
            if element.tag == "a":
                self._end_anchor()
            if element.paragraph and not self._skip:
                self._flush(blank=True)
            self._quote -= element.quote
            self._skip -= element.skip
            self._pre -= element.pre
            if element.tag in ("ul", "ol") and self._lists:
                self._lists.pop()
            if element.tag == tag:
                break

    def _end_anchor(self) -> None:
        href = (self._anchor or "").strip()
        text = "".join(self._anchor_text)
        self._anchor = None
        self._anchor_text = []
        if self._skip or not href.lower().startswith(("http://", "https://")):
            return
        href = _unwrap_safelink(href)
        bare = re.sub(r"^https?://(?:www\.)?", "", href, flags=re.IGNORECASE).rstrip("/")
        if text.strip() and bare.lower() not in text.lower():
            self._write(f" ({href})")

    def handle_data(self, data: str) -> None:
        if self._skip:
            return
        if self._pre:
            for i, piece in enumerate(data.replace("\r\n", "\n").split("\n")):
                if i:
                    self._flush(blank=not self._line)
                if piece:
                    self._write(piece)
            return
        text = re.sub(r"[ \t\r\n\f\v]+", " ", data)
        if text:
            self._write(text)

    def close(self) -> None:
        super().close()
        while self._stack:
            self.handle_endtag(self._stack[-1].tag)
        self._flush()


def _unwrap_safelink(href: str) -> str:
    try:
        parts = urlsplit(href)
        if parts.hostname and parts.hostname.endswith("safelinks.protection.outlook.com"):
            target = parse_qs(parts.query).get("url")
            if target:
                return target[0]
    except ValueError:
        return href
    return href


def html_to_text(html: str) -> str:
    """The text a reader sees in `html`, one line per block or <br>.

    Entities are decoded; head, style and script are dropped; lists become "- " / "1. " lines;
    links keep their address in brackets when the text does not show it. Quoted history is
    rendered as "> " lines so that `visible_text` can cut it: <blockquote> (Gmail, Apple Mail
    type=cite, Thunderbird), Gmail's gmail_quote and Yahoo's yahoo_quoted containers, and
    everything from Outlook's reply header (divRplyFwdMsg, the border-top header block,
    OLK_SRC_BODY_SECTION, Hotmail's stopSpelling) to the end. Signature containers
    (gmail_signature, moz-signature, …) are preceded by a "-- " line. Never raises.
    """
    parser = _HtmlText()
    try:
        parser.feed(html[:MAX_TEXT_BYTES])
        parser.close()
    except Exception:  # html.parser is lenient; keep what was read so far
        parser._flush()
    return tidy("\n".join(parser.lines))

