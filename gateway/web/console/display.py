"""What the console shows, computed from values (no I/O): the timeline of a conversation
(texts, replies, notes, and the reply emails that were not texted), how long a resident has
been waiting, the segment counter, the CSV export.

The views fetch; these functions decide. They are unit-tested in tests/test_console_display.py.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from gateway.rules import segments
from gateway.rules.agent_notice import KEPT_WHY, KeptWhy
from gateway.store import StoredMessage
from gateway.store.console import ConversationRow, Note, NotTextedReply
from gateway.store.reply_mail import resolution_outcome

ItemKind = Literal["in", "out", "note", "not_texted"]
#: What became of a reply email that was not texted: still not texted; texted later (an
#: operator's `sms311 failed retry` handed it over and it went the reply path); or dealt
#: with by a retry without being texted (a second copy of a reply already texted, …).
RetryOutcome = Literal["not_texted", "texted_later", "retried"]

#: Delivery statuses of an outgoing SMS that mean it did not reach the phone.
FAILED_STATUSES = frozenset({"failed", "undelivered", "not_sent", "canceled"})


@dataclass(frozen=True)
class TimelineItem:
    """One line of a conversation: a resident text, an agent reply, an internal note, or a
    reply email that was not texted (`failed`; its `body` is always "": the email may be a
    stranger's, so the console never shows its text)."""

    kind: ItemKind
    at: datetime
    body: str
    message: StoredMessage | None = None
    note: Note | None = None
    failed: NotTextedReply | None = None

    @property
    def key(self) -> str:
        if self.message is not None:
            return f"m{self.message.id}"
        if self.failed is not None:
            return f"f{self.failed.id}"
        assert self.note is not None
        return f"n{self.note.id}"


def clean(text: str, *, multiline: bool = False, limit: int = 10_000) -> str:
    """A form field without the characters no person types and databases refuse (NUL,
    other control characters; line breaks and tabs kept in `multiline` text), stripped,
    at most `limit` characters."""
    kept = "\n\t" if multiline else ""
    text = text[: limit * 2].replace("\r\n", "\n")
    return "".join(
        c if (c.isprintable() or c in kept) else " " for c in text
    ).strip()[:limit]


def timeline(
    messages: Iterable[StoredMessage],
    notes: Iterable[Note],
    failed: Iterable[NotTextedReply] = (),
) -> list[TimelineItem]:
    """Messages (both directions, whichever door they came through), notes and reply emails
    that were not texted (at the time they were received), in time order; on equal times
    messages come first, then notes, then failed replies, each in their given order."""
    items: list[tuple[datetime, int, int, TimelineItem]] = []
    for order, message in enumerate(messages):
        items.append(
            (message.received_at, 0, order, TimelineItem(message.direction, message.received_at,
                                                         message.body, message=message))
        )
    for order, note in enumerate(notes):
        items.append((note.created_at, 1, order, TimelineItem("note", note.created_at,
                                                              note.body, note=note)))
    for order, reply in enumerate(failed):
        items.append((reply.received_at, 2, order,
                      TimelineItem("not_texted", reply.received_at, "", failed=reply)))
    items.sort(key=lambda item: item[:3])
    return [item[3] for item in items]


def why_not_texted(reply: NotTextedReply) -> KeptWhy | None:
    """The reply's `why` when it is one the console has a phrase for (one of
    `gateway.rules.agent_notice.KEPT_WHY`: the agents' `NOT_TEXTED_WHY`, and
    "not_authenticated"); None (the generic phrase) otherwise."""
    why = reply.why
    for known in KEPT_WHY:
        if why == known:
            return known
    return None


def retry_outcome(reply: NotTextedReply) -> RetryOutcome:
    """What became of it: "not_texted" while unresolved; once a retry resolved it,
    "texted_later" when the pipeline then processed it (it went the reply path, so it is in
    the timeline as an agent reply) and "retried" otherwise (ignored as automatic or as a
    second copy of a reply already texted)."""
    if reply.resolved_at is None:
        return "not_texted"
    if resolution_outcome(reply.resolution) == "processed":
        return "texted_later"
    return "retried"


def waiting_since(row: ConversationRow) -> datetime | None:
    """When the resident's unanswered text came in: an open conversation whose last
    resident text is newer than every agent reply. None when nobody is waiting."""
    if row.status != "open" or row.last_inbound_at is None:
        return None
    if row.last_reply_at is None or row.last_reply_at < row.last_inbound_at:
        return row.last_inbound_at
    return None


def waited(since: datetime | None, now: datetime) -> timedelta | None:
    if since is None:
        return None
    return max(now - since, timedelta(0))


@dataclass(frozen=True)
class SegmentCount:
    """What the reply box says about the text being typed."""

    chars: int  # characters after the gateway's own clean-up (typographic quotes…)
    encoding: segments.Encoding
    segments: int
    per_segment: int  # 160 / 153 (GSM-7) or 70 / 67 (UCS-2)
    non_gsm: tuple[str, ...]  # the characters that force UCS-2, first few, in order
    over_limit: bool  # longer than one message: it will be split into several texts
    will_shorten: bool  # so long that even split it is cut (the agent is told by email)


def count(text: str) -> SegmentCount:
    """The segment counter, computed on the text exactly as it would be sent."""
    prepared = segments.prepare_for_sms(text)
    encoding = segments.encoding(prepared)
    n = segments.count_segments(prepared)
    gsm = encoding == "GSM-7"
    if n == 1:
        per = segments.GSM7_SINGLE if gsm else segments.UCS2_SINGLE
    else:
        per = segments.GSM7_PART if gsm else segments.UCS2_PART
    odd: list[str] = []
    if not gsm:
        for char in prepared:
            if char not in segments.GSM7_BASIC and char not in segments.GSM7_EXTENSION:
                if char not in odd:
                    odd.append(char)
                if len(odd) == 5:
                    break
    _, shortened = segments.split_for_sms(prepared) if prepared.strip() else ([], False)
    return SegmentCount(
        chars=len(prepared),
        encoding=encoding,
        segments=n,
        per_segment=per,
        non_gsm=tuple(odd),
        over_limit=len(prepared) > segments.MAX_BODY_CHARS,
        will_shorten=shortened,
    )


def export_csv(
    items: Sequence[TimelineItem],
    *,
    resident: str,
    names: dict[str, str],
    describe: Callable[[NotTextedReply], str] | None = None,
) -> str:
    """The conversation as CSV: time (ISO 8601, UTC), who, kind, delivery status, text.

    `names` maps agent addresses / user ids ("user:<id>") to display names. A reply email
    that was not texted is a row of kind "not_texted" from its sender, via "email", its
    `retry_outcome` as status and, as text, `describe(reply)` (the page's sentence; the
    `why` code without it), never the email's own text."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["time_utc", "from", "kind", "via", "status", "text"])
    for item in items:
        if item.kind == "in":
            who, via, status = resident, "sms", ""
        elif item.kind == "out":
            assert item.message is not None
            address = item.message.agent_address or ""
            who = names.get(address, address)
            via, status = item.message.via or "email", item.message.status or ""
        elif item.failed is not None:
            failed = item.failed
            writer.writerow(_no_formulas([item.at.isoformat(), failed.sender or "", item.kind,
                                          "email", retry_outcome(failed),
                                          describe(failed) if describe else failed.why or ""]))
            continue
        else:
            assert item.note is not None
            who, via, status = item.note.user_name, "note", ""
        writer.writerow(_no_formulas([item.at.isoformat(), who, item.kind, via, status,
                                      item.body]))
    return out.getvalue()


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _no_formula(text: str) -> str:
    """A cell a spreadsheet would run as a formula gets a leading apostrophe (CSV
    injection, the OWASP recipe); the csv module quotes it and doubles its quotes."""
    if text.startswith(FORMULA_STARTS):
        return "'" + text
    return text


def _no_formulas(row: Sequence[str]) -> list[str]:
    """Every cell of a row, whatever its column (names, addresses and statuses too)."""
    return [_no_formula(cell) for cell in row]
