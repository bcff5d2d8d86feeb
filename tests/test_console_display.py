"""Unit tests for the console's display rules (gateway/web/console/display.py, no I/O)."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta

from gateway.store import StoredMessage
from gateway.store.console import ConversationRow, Note, NotTextedReply
from gateway.web.console import display

T0 = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def message(id: int, direction: str, at: datetime, body: str = "x", **kw: object) -> StoredMessage:
    return StoredMessage(id=id, phone="+16135550123", conversation_id=1, direction=direction,  # type: ignore[arg-type]
                         body=body, media=(), provider_sid=None, received_at=at, **kw)  # type: ignore[arg-type]


def note(id: int, at: datetime, body: str = "n") -> Note:
    return Note(id=id, conversation_id=1, user_id=1, user_name="Dana", body=body, created_at=at)


def failed(id: int, at: datetime, why: str | None = "below_signature",
           sender: str | None = "jane@ottawa.example", **kw: object) -> NotTextedReply:
    values: dict[str, object] = dict(resolved_at=None, resolution=None)
    values.update(kw)
    return NotTextedReply(id=id, conversation_id=1, received_at=at, why=why, sender=sender,
                          **values)  # type: ignore[arg-type]


def row(**kw: object) -> ConversationRow:
    values: dict[str, object] = dict(
        id=1, phone="+16135550123", municipality_id="ottawa", status="open", agent_address=None,
        created_at=T0, last_activity_at=T0, last_inbound_at=T0, last_reply_at=None, preview="",
        unread=False,
        language="en", opted_out=False,
    )
    values.update(kw)
    return ConversationRow(**values)  # type: ignore[arg-type]


def test_timeline_merges_messages_and_notes_in_time_order() -> None:
    items = display.timeline(
        [message(1, "in", T0), message(2, "out", T0 + timedelta(minutes=2))],
        [note(1, T0 + timedelta(minutes=1)), note(2, T0 + timedelta(minutes=2))],
    )
    assert [i.key for i in items] == ["m1", "n1", "m2", "n2"]
    assert [i.kind for i in items] == ["in", "note", "out", "note"]


def test_timeline_keeps_stored_order_of_messages_at_the_same_time() -> None:
    items = display.timeline([message(5, "in", T0), message(3, "in", T0)], [])
    assert [i.key for i in items] == ["m5", "m3"]


def test_timeline_places_replies_not_texted_at_their_received_time() -> None:
    items = display.timeline(
        [message(1, "in", T0), message(2, "out", T0 + timedelta(minutes=3))],
        [note(1, T0 + timedelta(minutes=2))],
        [failed(7, T0 + timedelta(minutes=2)), failed(4, T0 + timedelta(minutes=1))],
    )
    assert [i.key for i in items] == ["m1", "f4", "n1", "f7", "m2"]
    event = items[1]
    assert event.kind == "not_texted" and event.failed is not None and event.message is None
    assert event.body == "" and event.at == T0 + timedelta(minutes=1)  # never the email's text
    # without failed replies, as before
    assert [i.key for i in display.timeline([message(1, "in", T0)], [])] == ["m1"]


def test_why_not_texted_keeps_only_the_known_kinds() -> None:
    for why in ("below_signature", "empty", "not_agent", "unroutable", "unreadable"):
        assert display.why_not_texted(failed(1, T0, why=why)) == why
    assert display.why_not_texted(failed(1, T0, why=None)) is None  # malformed, internal error
    assert display.why_not_texted(failed(1, T0, why="something_new")) is None


def test_retry_outcome_of_a_reply_not_texted() -> None:
    assert display.retry_outcome(failed(1, T0)) == "not_texted"
    later = T0 + timedelta(hours=1)
    texted = failed(1, T0, resolved_at=later, resolution="processed: conversation 1: texted")
    assert display.retry_outcome(texted) == "texted_later"
    meanwhile = failed(1, T0, resolved_at=later, resolution="processed: already handled: conversation 1")
    assert display.retry_outcome(meanwhile) == "texted_later"
    copy = failed(1, T0, resolved_at=later, resolution="ignored: a second copy of a reply")
    assert display.retry_outcome(copy) == "retried"
    assert display.retry_outcome(failed(1, T0, resolved_at=later)) == "retried"


def test_export_csv_rows_for_replies_not_texted() -> None:
    items = display.timeline(
        [message(1, "in", T0, "Pothole")],
        [],
        [failed(3, T0 + timedelta(minutes=1)),
         failed(4, T0 + timedelta(minutes=2), why=None, sender="=cmd@evil.example",
                resolved_at=T0 + timedelta(hours=1), resolution="processed: texted")],
    )
    described = list(csv.reader(io.StringIO(display.export_csv(
        items, resident="(613) 555-0123", names={},
        describe=lambda f: f"not texted ({f.why or 'other'})"))))
    assert described[2][1:] == ["jane@ottawa.example", "not_texted", "email", "not_texted",
                                "not texted (below_signature)"]
    assert described[3][1:] == ["'=cmd@evil.example", "not_texted", "email", "texted_later",
                                "not texted (other)"]
    assert described[2][0] == (T0 + timedelta(minutes=1)).isoformat()
    plain = list(csv.reader(io.StringIO(display.export_csv(
        items, resident="(613) 555-0123", names={}))))
    assert plain[2][-1] == "below_signature" and plain[3][-1] == ""


def test_waiting_only_while_the_residents_last_text_is_unanswered() -> None:
    assert display.waiting_since(row()) == T0
    # Held texts delivered when the municipality was named: activity is later, still waiting.
    assert display.waiting_since(row(last_activity_at=T0 + timedelta(minutes=5))) == T0
    answered = row(last_reply_at=T0 + timedelta(minutes=5))
    assert display.waiting_since(answered) is None
    again = row(last_reply_at=T0 - timedelta(minutes=5))  # answered, then a new text
    assert display.waiting_since(again) == T0
    assert display.waiting_since(row(status="closed")) is None
    assert display.waiting_since(row(last_inbound_at=None)) is None
    assert display.waited(T0, T0 + timedelta(minutes=7)) == timedelta(minutes=7)
    assert display.waited(T0 + timedelta(seconds=5), T0) == timedelta(0)  # clock skew
    assert display.waited(None, T0) is None


def test_counter_gsm7_and_ucs2() -> None:
    plain = display.count("The crew comes tomorrow.")
    assert (plain.encoding, plain.segments, plain.per_segment) == ("GSM-7", 1, 160)
    assert plain.non_gsm == ()
    french = display.count("Une équipe viendra demain, ça va être réglé.")
    assert french.encoding == "UCS-2" and french.per_segment == 70
    assert "ç" in french.non_gsm and "é" not in french.non_gsm  # é is GSM-7, ç is not
    long = display.count("a" * 161)
    assert (long.segments, long.per_segment) == (2, 153)


def test_counter_counts_what_is_sent_after_typography_cleanup() -> None:
    # A typographic apostrophe would force UCS-2; the gateway sends a plain one instead.
    counted = display.count("We’re on it")
    assert counted.encoding == "GSM-7"


def test_counter_flags_long_and_shortened_replies() -> None:
    assert not display.count("hello").over_limit
    assert display.count("word " * 400).over_limit
    assert display.count("word " * 2000).will_shorten
    assert not display.count("word " * 100).will_shorten


def test_export_csv_columns_and_formula_guard() -> None:
    items = display.timeline(
        [message(1, "in", T0, "=HYPERLINK(\"x\")"),
         message(2, "out", T0 + timedelta(minutes=1), "On our way", status="delivered",
                 agent_address="dana@ottawa.example", via="console")],
        [note(1, T0 + timedelta(minutes=2), "Called the resident")],
    )
    rows = list(csv.reader(io.StringIO(display.export_csv(
        items, resident="(613) 555-0123", names={"dana@ottawa.example": "Dana"}))))
    assert rows[0] == ["time_utc", "from", "kind", "via", "status", "text"]
    assert rows[1][1:] == ["(613) 555-0123", "in", "sms", "", "'=HYPERLINK(\"x\")"]
    assert rows[2][1:] == ["Dana", "out", "console", "delivered", "On our way"]
    assert rows[3][1:] == ["Dana", "note", "note", "", "Called the resident"]
    assert rows[1][0] == T0.isoformat()


def test_clean_removes_what_nobody_types() -> None:
    assert display.clean("  a\x00b\x07c  ") == "a b c"
    assert display.clean("line\r\nnext\ttab", multiline=True) == "line\nnext\ttab"
    assert display.clean("line\nnext") == "line next"
    assert display.clean("x" * 50, limit=10) == "x" * 10
