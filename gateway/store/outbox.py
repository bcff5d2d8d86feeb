"""The outbox half of `SqlStore`: claiming due rows, leases, and their outcomes.

Contract
    `SqlOutbox` holds the `Store` protocol's outbox methods (`claim_due`, `renew_claims`,
    `claimants`, `release_claims`, `mark_sent`, `mark_sent_many`, `mark_retry`, `postpone`,
    `mark_parked`, `list_outbox`, `requeue`, `outbox_stats`; see `gateway.store.base.Store`
    for what each promises). Each runs in its own short transaction, on the connections the
    class it is mixed into (`SqlStore`) gives: `_write()` (SQLite: `BEGIN IMMEDIATE`, through
    the group commit) and `_read()` (a deferred read). Rows are added by `Tx.enqueue`, in the
    caller's transaction (`gateway.store.transaction`).

    Concurrent claimers (threads, processes, hosts) never get the same row while its lease
    lasts: on SQLite the write lock serialises claims; on PostgreSQL the claim reads with
    `FOR UPDATE SKIP LOCKED`. `last_error` is truncated to `rows.MAX_ERROR_CHARS`.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable
from contextlib import AbstractContextManager
from dataclasses import replace
from datetime import datetime, timedelta

import sqlalchemy as sa

from gateway.store.base import (
    OUTBOX_KINDS,
    OUTBOX_STATUSES,
    OutboxItem,
    OutboxKind,
    OutboxStats,
    OutboxStatus,
)
from gateway.store.rows import MAX_ERROR_CHARS, aware, outbox_item, utcnow
from gateway.store.schema import outbox

log = logging.getLogger(__name__)


class SqlOutbox:
    """The outbox methods of `SqlStore` (mixed into it; see the module docstring)."""

    postgresql: bool  # PostgreSQL (else SQLite)

    def _write(self) -> AbstractContextManager[sa.Connection]:
        """A write transaction's connection (defined by `SqlStore`)."""
        raise NotImplementedError

    def _read(self) -> AbstractContextManager[sa.Connection]:
        """A read transaction's connection (defined by `SqlStore`)."""
        raise NotImplementedError

    def claim_due(
        self,
        kinds: Iterable[OutboxKind],
        limit: int,
        now: datetime,
        lease: timedelta,
        worker_id: str,
    ) -> list[OutboxItem]:
        wanted = tuple(kinds)
        for kind in wanted:
            if kind not in OUTBOX_KINDS:
                raise ValueError(f"kind must be one of {OUTBOX_KINDS}, not {kind!r}")
        if lease <= timedelta(0):
            raise ValueError("the lease must be positive")
        now = aware(now, "now")
        if limit <= 0 or not wanted:
            return []
        until = now + lease
        stmt = (
            sa.select(outbox)
            .where(
                outbox.c.status == "pending",
                outbox.c.kind.in_(wanted),
                outbox.c.next_attempt_at <= now,
                sa.or_(outbox.c.claimed_until.is_(None), outbox.c.claimed_until < now),
            )
            .order_by(outbox.c.next_attempt_at, outbox.c.id)
            .limit(limit)
        )
        if self.postgresql:
            stmt = stmt.with_for_update(skip_locked=True)
        with self._write() as conn:
            items = [outbox_item(row) for row in conn.execute(stmt)]
            if items:
                conn.execute(
                    outbox.update()
                    .where(outbox.c.id.in_([item.id for item in items]))
                    .values(claimed_by=worker_id, claimed_until=until, updated_at=utcnow())
                )
            # Still claimed by someone, lease past: that worker stopped (or stopped renewing)
            # while it held them. Taken over as attempts that may have been made.
            lapsed: dict[str, list[int]] = {}
            for item in items:
                if item.claimed_by is not None:
                    lapsed.setdefault(item.claimed_by, []).append(item.id)
            errors: dict[int, str] = {}
            for claimant, ids in lapsed.items():
                error = f"the claim of {claimant} lapsed while it held it (it may have been sent)"
                conn.execute(
                    outbox.update()
                    .where(outbox.c.id.in_(ids))
                    .values(
                        attempts=outbox.c.attempts + 1,
                        maybe_sent=True,
                        last_error=error[:MAX_ERROR_CHARS],
                    )
                )
                errors.update(dict.fromkeys(ids, error[:MAX_ERROR_CHARS]))
                log.warning(
                    "took over %d outbox row(s) from %s, whose claim lapsed: %s",
                    len(ids), claimant, ", ".join(map(str, ids)),
                )
        return [
            replace(item, claimed_by=worker_id, claimed_until=until)
            if item.id not in errors
            else replace(
                item, claimed_by=worker_id, claimed_until=until, attempts=item.attempts + 1,
                maybe_sent=True, last_error=errors[item.id],
            )
            for item in items
        ]

    def renew_claims(self, ids: Collection[int], worker_id: str, until: datetime) -> set[int]:
        until = aware(until, "until")
        if not ids:
            return set()
        with self._write() as conn:
            rows = conn.execute(
                outbox.update()
                .where(
                    outbox.c.id.in_(sorted(ids)),
                    outbox.c.status == "pending",
                    outbox.c.claimed_by == worker_id,
                )
                .values(claimed_until=until)
                .returning(outbox.c.id)
            )
            return {int(row[0]) for row in rows}

    def claimants(self) -> list[str]:
        stmt = (
            sa.select(outbox.c.claimed_by)
            .where(outbox.c.status == "pending", outbox.c.claimed_by.is_not(None))
            .distinct()
        )
        with self._read() as conn:
            return sorted(str(row[0]) for row in conn.execute(stmt))

    def release_claims(self, worker_id: str, error: str) -> int:
        with self._write() as conn:
            result = conn.execute(
                outbox.update()
                .where(outbox.c.status == "pending", outbox.c.claimed_by == worker_id)
                .values(
                    attempts=outbox.c.attempts + 1,
                    maybe_sent=True,
                    last_error=error[:MAX_ERROR_CHARS],
                    claimed_by=None,
                    claimed_until=None,
                    updated_at=utcnow(),
                )
            )
            return int(result.rowcount)

    def mark_sent(self, id: int) -> None:
        with self._write() as conn:
            conn.execute(
                outbox.update()
                .where(outbox.c.id == id)
                .values(status="sent", claimed_by=None, claimed_until=None, updated_at=utcnow())
            )

    def mark_sent_many(self, ids: Collection[int]) -> None:
        if not ids:
            return
        with self._write() as conn:
            conn.execute(
                outbox.update()
                .where(outbox.c.id.in_(sorted(ids)))
                .values(status="sent", claimed_by=None, claimed_until=None, updated_at=utcnow())
            )

    def mark_retry(
        self, id: int, error: str, next_attempt_at: datetime, *, maybe_sent: bool = False
    ) -> None:
        due = aware(next_attempt_at, "next_attempt_at")
        with self._write() as conn:
            conn.execute(
                outbox.update()
                .where(outbox.c.id == id, outbox.c.status == "pending")
                .values(
                    attempts=outbox.c.attempts + 1,
                    maybe_sent=maybe_sent,
                    next_attempt_at=due,
                    last_error=error[:MAX_ERROR_CHARS],
                    claimed_by=None,
                    claimed_until=None,
                    updated_at=utcnow(),
                )
            )

    def postpone(self, id: int, next_attempt_at: datetime) -> None:
        due = aware(next_attempt_at, "next_attempt_at")
        with self._write() as conn:
            conn.execute(
                outbox.update()
                .where(outbox.c.id == id, outbox.c.status == "pending")
                .values(
                    next_attempt_at=due, claimed_by=None, claimed_until=None,
                    updated_at=utcnow(),
                )
            )

    def mark_parked(self, id: int, error: str, *, maybe_sent: bool = False) -> None:
        with self._write() as conn:
            conn.execute(
                outbox.update()
                .where(outbox.c.id == id, outbox.c.status == "pending")
                .values(
                    status="parked",
                    attempts=outbox.c.attempts + 1,
                    maybe_sent=maybe_sent,
                    last_error=error[:MAX_ERROR_CHARS],
                    claimed_by=None,
                    claimed_until=None,
                    updated_at=utcnow(),
                )
            )

    def list_outbox(
        self, status: OutboxStatus | None = None, limit: int = 1000
    ) -> list[OutboxItem]:
        if status is not None and status not in OUTBOX_STATUSES:
            raise ValueError(f"status must be one of {OUTBOX_STATUSES}, not {status!r}")
        stmt = sa.select(outbox).order_by(outbox.c.id).limit(limit)
        if status is not None:
            stmt = stmt.where(outbox.c.status == status)
        with self._read() as conn:
            return [outbox_item(row) for row in conn.execute(stmt)]

    def requeue(self, id: int, now: datetime | None = None) -> bool:
        due = utcnow() if now is None else aware(now, "now")
        with self._write() as conn:
            result = conn.execute(
                outbox.update()
                .where(outbox.c.id == id, outbox.c.status == "parked")
                .values(
                    status="pending",
                    attempts=0,
                    next_attempt_at=due,
                    claimed_by=None,
                    claimed_until=None,
                    updated_at=utcnow(),
                )
            )
            return result.rowcount == 1

    def outbox_stats(self, now: datetime | None = None) -> OutboxStats:
        at = utcnow() if now is None else aware(now, "now")
        with self._read() as conn:
            rows = conn.execute(
                sa.select(outbox.c.status, sa.func.count())
                .where(outbox.c.status.in_(("pending", "parked")))
                .group_by(outbox.c.status)
            )
            counts = {str(status): int(count) for status, count in rows}
            oldest = conn.execute(
                sa.select(sa.func.min(outbox.c.created_at)).where(outbox.c.status == "pending")
            ).scalar_one_or_none()
        age = 0.0 if oldest is None else max(0.0, (at - oldest).total_seconds())
        return OutboxStats(
            depth=int(counts.get("pending", 0)),
            oldest_age_seconds=age,
            parked=int(counts.get("parked", 0)),
        )
