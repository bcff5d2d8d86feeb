"""Durability: the city's mail server down for a while, then back (`sms311 run` end to end).

Texts keep being accepted (200) while the SMTP server refuses connections; every one is
emailed, once, when it is back, and quickly, because the backoff is capped
(`outbox.max_backoff_seconds`). A row that fails `outbox.max_attempts` times is parked:
`sms311 outbox` lists it and `sms311 outbox retry ID` sends it.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from gateway.store import OutboxStatus, open_store
from tests.loop import Loop, wait_for

pytestmark = pytest.mark.slow

PHONE = "613-555-0177"


def texts_in_emails(loop: Loop, prefix: str) -> Counter[str]:
    """How many times each "<prefix> NN" text was emailed."""
    found: Counter[str] = Counter()
    for body in loop.collector.bodies():
        found.update(re.findall(rf"{prefix} \d\d", body))
    return found


def email_rows(loop: Loop, status: OutboxStatus) -> list[tuple[int, int]]:
    """(id, attempts) of the email rows of the outbox with this status."""
    store = open_store(loop.settings.database)
    try:
        return [(i.id, i.attempts) for i in store.list_outbox(status) if i.kind == "email"]
    finally:
        store.close()


def test_texts_accepted_while_the_mail_server_is_down_are_all_emailed_soon_after(
    tmp_path: Path,
) -> None:
    # Backoff 0.25 s doubling, capped at 1 s: uncapped, a row that failed 6 times would
    # wait 0.25 * 2**6 * 0.8 >= 12.8 s before its next attempt; capped, at most 1.2 s.
    loop = Loop(
        tmp_path,
        outbox={"max_attempts": 100, "base_backoff_seconds": 0.25, "max_backoff_seconds": 1},
        mail_up=False,
        start=False,
    )
    try:
        loop.start(healthy=False)
        status, health = loop.health()
        assert status == 503 and health["failing"] == ["smtp"]

        sent = [f"outage text {n:02d}" for n in range(10)]
        assert "city" in loop.text(PHONE, sent[0])[0].lower()  # held; the gateway asks
        assert "Ottawa" in loop.text(PHONE, "Kanata")[0]  # the held text is queued
        for body in sent[1:]:
            assert loop.text(PHONE, body) == []  # accepted (200) and queued, mail down

        def all_retried_six_times() -> bool:
            rows = email_rows(loop, "pending")
            return len(rows) == len(sent) and min(a for _i, a in rows) >= 6

        wait_for(all_retried_six_times, "every email to have failed 6 times", 60)
        assert email_rows(loop, "parked") == []
        assert loop.collector.messages == []

        loop.smtp.start()  # the mail server is back
        wait_for(lambda: set(texts_in_emails(loop, "outage text")) == set(sent),
                 "every text emailed after the mail server came back (capped backoff)", 10)
        wait_for(lambda: email_rows(loop, "pending") == [], "the outbox to drain")
        assert texts_in_emails(loop, "outage text") == Counter(dict.fromkeys(sent, 1))
        assert len(loop.collector.messages) == len(sent)  # one email per text, none twice
    finally:
        output = loop.stop()
    assert "Connect call failed" in output and "retry in" in output  # the retries are logged
    assert "PARKED" not in output and "Traceback" not in output


def test_parked_emails_are_listed_and_sent_again_by_the_outbox_command(tmp_path: Path) -> None:
    loop = Loop(
        tmp_path,
        outbox={"max_attempts": 3, "base_backoff_seconds": 0.1, "max_backoff_seconds": 0.2},
        mail_up=False,
        start=False,
    )
    try:
        loop.start(healthy=False)
        sent = [f"parked text {n:02d}" for n in range(3)]
        loop.text(PHONE, sent[0])
        loop.text(PHONE, "Kanata")
        for body in sent[1:]:
            loop.text(PHONE, body)
        wait_for(lambda: len(email_rows(loop, "parked")) == 3, "the three emails parked")
        parked = email_rows(loop, "parked")
        assert [attempts for _id, attempts in parked] == [3, 3, 3]

        listing = loop.sms311("outbox")  # parked rows by default
        assert listing.returncode == 0, listing.stderr
        lines = listing.stdout.splitlines()
        assert [int(line.split("\t")[0]) for line in lines] == [i for i, _a in parked]
        for line in lines:
            assert "\temail\tparked\tattempts=3\t" in line
            assert "gave up after 3 attempts" in line and "Connect call failed" in line
        assert '"parked": 3' in listing.stderr  # the stats line

        loop.smtp.start()
        loop.text(PHONE, "parked text 03")  # the dispatcher works again…
        wait_for(lambda: texts_in_emails(loop, "parked text"), "the new text's email")
        assert texts_in_emails(loop, "parked text") == Counter({"parked text 03": 1})
        assert len(email_rows(loop, "parked")) == 3  # …and leaves parked rows alone

        for row_id, _attempts in parked:
            retry = loop.sms311("outbox", "retry", str(row_id))
            assert retry.returncode == 0, retry.stderr
            assert retry.stdout.strip() == f"outbox row {row_id} queued again"
        wait_for(lambda: len(texts_in_emails(loop, "parked text")) == 4, "the retried emails")
        assert texts_in_emails(loop, "parked text") == Counter(
            dict.fromkeys([*sent, "parked text 03"], 1)
        )
        wait_for(lambda: email_rows(loop, "pending") == [], "the outbox to drain")
        assert loop.sms311("outbox").stdout == ""  # nothing parked any more
        again = loop.sms311("outbox", "retry", str(parked[0][0]))
        assert again.returncode == 1 and "is not parked" in again.stderr
    finally:
        output = loop.stop()
    assert output.count("PARKED") == 3
    for row_id, _attempts in parked:
        assert f"retry with `sms311 outbox retry {row_id}`" in output
