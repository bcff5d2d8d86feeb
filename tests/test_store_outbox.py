"""The store's outbox, on both backends: enqueueing, claims and their leases (renewed,
lapsed, taken over, released), retries, parking, requeueing, stats, and concurrent claimers
that never share an item. See test_store.py for the PostgreSQL test server; the constants
and helpers are in tests/store_helpers.py.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest

from gateway.store import SqlStore
from tests.store_helpers import LEASE, PHONE, T0, in_threads


def test_outbox_lifecycle(store: SqlStore) -> None:
    with store.transaction() as tx:
        email = tx.enqueue("email", {"to": ["311@ottawa.example"], "subject": "Nid-de-poule"}, T0)
        later = tx.enqueue("sms", {"to": PHONE, "body": "hi"}, T0 + timedelta(minutes=5))

    claimed = store.claim_due(["email", "sms"], 10, T0, LEASE, "w1")
    assert [item.id for item in claimed] == [email]
    item = claimed[0]
    assert item.kind == "email" and item.status == "pending" and item.attempts == 0
    assert item.payload == {"to": ["311@ottawa.example"], "subject": "Nid-de-poule"}
    assert item.claimed_by == "w1" and item.claimed_until == T0 + LEASE
    assert item.next_attempt_at == T0

    # the lease holds against other workers, then expires (the worker died): taken over
    # as an attempt that may have been made
    assert store.claim_due(["email"], 10, T0 + timedelta(seconds=30), LEASE, "w2") == []
    expired = T0 + LEASE + timedelta(seconds=1)
    reclaimed = store.claim_due(["email"], 10, expired, LEASE, "w2")
    assert [(i.id, i.claimed_by, i.attempts, i.maybe_sent) for i in reclaimed] == [
        (email, "w2", 1, True)
    ]
    assert "claim of w1 lapsed" in (reclaimed[0].last_error or "")
    assert [(i.attempts, i.maybe_sent) for i in store.list_outbox("pending")] == [
        (1, True), (0, False)
    ]

    store.mark_retry(email, "SMTP 451 try again", expired + timedelta(minutes=1))
    (row,) = store.list_outbox("pending")[:1]
    assert (row.id, row.attempts, row.last_error) == (email, 2, "SMTP 451 try again")
    assert row.maybe_sent is False
    assert row.claimed_by is None and row.claimed_until is None
    assert row.next_attempt_at == expired + timedelta(minutes=1)
    assert store.claim_due(["email"], 10, expired, LEASE, "w2") == []  # not due yet
    again = store.claim_due(["email"], 10, expired + timedelta(minutes=1), LEASE, "w2")
    assert [i.id for i in again] == [email]

    store.mark_parked(email, "SMTP 550 no such mailbox", maybe_sent=True)
    (parked,) = store.list_outbox("parked")
    assert (parked.id, parked.status, parked.attempts) == (email, "parked", 3)
    assert parked.maybe_sent is True
    assert parked.last_error == "SMTP 550 no such mailbox" and parked.claimed_by is None
    assert store.claim_due(["email"], 10, expired + timedelta(hours=9), LEASE, "w3") == []

    stats = store.outbox_stats(now=datetime.now(UTC) + timedelta(minutes=10))
    assert stats["depth"] == 1 and stats["parked"] == 1
    assert stats["oldest_age_seconds"] >= 600  # ages count from created_at (the clock)

    assert store.requeue(email, now=T0 + timedelta(hours=1)) is True
    assert store.requeue(email) is False  # no longer parked
    assert store.requeue(later) is False  # never parked
    (back,) = [i for i in store.list_outbox("pending") if i.id == email]
    assert back.attempts == 0 and back.next_attempt_at == T0 + timedelta(hours=1)
    assert back.maybe_sent is True  # kept: its last attempt may have gone

    sms = store.claim_due(["sms"], 10, T0 + timedelta(minutes=5), LEASE, "w1")
    assert [i.id for i in sms] == [later]
    store.mark_sent(later)
    assert [i.id for i in store.list_outbox("sent")] == [later]
    store.mark_retry(later, "stale worker", T0)  # a sent item stays sent
    assert store.list_outbox("sent")[0].attempts == 0
    assert [i.id for i in store.list_outbox()] == [email, later]
    assert store.outbox_stats()["depth"] == 1


def test_renewed_claims_hold_until_their_renewal_lapses(store: SqlStore) -> None:
    with store.transaction() as tx:
        a, b, c = (tx.enqueue("sms", {"n": n}, T0 + timedelta(seconds=n)) for n in range(3))
    assert [i.id for i in store.claim_due(["sms"], 2, T0 + timedelta(seconds=1), LEASE, "w1")
            ] == [a, b]
    renewed_to = T0 + 2 * LEASE
    assert store.renew_claims([a, b], "w1", renewed_to) == {a, b}  # the heartbeat
    assert store.renew_claims([a, c], "w2", T0 + 9 * LEASE) == set()  # not w2's claims
    assert store.renew_claims([], "w1", renewed_to) == set()
    with pytest.raises(ValueError):
        store.renew_claims([a], "w1", datetime(2026, 1, 1))  # naive
    store.mark_sent(b)
    assert store.renew_claims([a, b], "w1", renewed_to) == {a}  # b is done

    # past the first lease, the renewed claim still holds: only c can be claimed
    past_first = T0 + LEASE + timedelta(seconds=5)
    assert [i.id for i in store.claim_due(["sms"], 10, past_first, LEASE, "w2")] == [c]
    # past the renewal (w1 stopped renewing: it died): taken over, to be looked up
    (taken,) = store.claim_due(["sms"], 10, renewed_to + timedelta(seconds=1), LEASE, "w2")
    assert (taken.id, taken.claimed_by, taken.attempts, taken.maybe_sent) == (a, "w2", 1, True)
    assert store.renew_claims([a], "w1", T0 + 9 * LEASE) == set()  # w1 lost it
    (row,) = [i for i in store.list_outbox("pending") if i.id == a]
    assert row.claimed_until == renewed_to + timedelta(seconds=1) + LEASE

    # a failure that may have been sent is remembered; a released claim counts as one
    store.mark_retry(c, "Twilio API unreachable: ReadTimeout", T0, maybe_sent=True)
    store.mark_retry(a, "Twilio API 429 code 20429", T0)
    assert {i.id: i.maybe_sent for i in store.list_outbox("pending")} == {a: False, c: True}
    store.claim_due(["sms"], 10, T0, LEASE, "w3")
    assert store.release_claims("w3", "w3 stopped") == 2
    assert {i.id: (i.maybe_sent, i.attempts) for i in store.list_outbox("pending")} == {
        a: (True, 3), c: (True, 2)
    }


def test_outbox_stats_empty_and_ages(store: SqlStore) -> None:
    assert store.outbox_stats() == {"depth": 0, "oldest_age_seconds": 0.0, "parked": 0}
    with store.transaction() as tx:
        tx.enqueue("sms", {})
    stats = store.outbox_stats(now=datetime.now(UTC) + timedelta(seconds=90))
    assert stats["depth"] == 1 and 89 < stats["oldest_age_seconds"] < 120


def test_claim_due_kinds_limit_and_order(store: SqlStore) -> None:
    with store.transaction() as tx:
        ids = [tx.enqueue("email", {"i": i}, T0 - timedelta(seconds=i)) for i in range(5)]
        sms = tx.enqueue("sms", {}, T0 - timedelta(hours=1))
    first = store.claim_due(["email"], 2, T0, LEASE, "w")
    assert [i.id for i in first] == [ids[4], ids[3]]  # oldest due first
    rest = store.claim_due(["email"], 10, T0, LEASE, "w")
    assert [i.id for i in rest] == [ids[2], ids[1], ids[0]]
    assert store.claim_due(["sms"], 0, T0, LEASE, "w") == []
    assert store.claim_due([], 5, T0, LEASE, "w") == []
    assert [i.id for i in store.claim_due(["sms", "email"], 5, T0, LEASE, "w")] == [sms]
    with pytest.raises(ValueError):
        store.claim_due(["fax"], 5, T0, LEASE, "w")  # type: ignore[list-item]
    with pytest.raises(ValueError):
        store.list_outbox("lost")  # type: ignore[arg-type]
    with pytest.raises(ValueError), store.transaction() as tx:
        tx.enqueue("fax", {})  # type: ignore[arg-type]


def test_concurrent_claimers_never_share_an_item(store: SqlStore) -> None:
    total = 120
    with store.transaction() as tx:
        for i in range(total):
            tx.enqueue("sms" if i % 2 else "email", {"i": i}, T0)
    start = threading.Barrier(4)

    def worker(n: int) -> list[int]:
        start.wait()
        got: list[int] = []
        while batch := store.claim_due(["email", "sms"], 7, T0, LEASE, f"worker-{n}"):
            got.extend(item.id for item in batch)
        return got

    results = in_threads(4, worker)
    claimed = [i for ids in results for i in ids]
    assert len(claimed) == total
    assert len(set(claimed)) == total
    owners = {item.id: item.claimed_by for item in store.list_outbox("pending")}
    for n, ids in enumerate(results):
        assert all(owners[i] == f"worker-{n}" for i in ids)
