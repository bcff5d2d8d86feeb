"""Reply emails in the store: failed replies kept whole, and replies already seen by Message-ID.

    with store.transaction() as tx:
        failed_id = keep_failed_email(tx, key, raw, reason, origin, now=now, sender=..., ...)
    with store.transaction() as tx:
        rows = list_failed_emails(tx)              # newest first, unresolved only by default
        count_failed_emails_from(tx, "x@y.example", since=an_hour_ago)  # one sender's, lately
        mail = get_failed_email(tx, failed_id)     # with its bytes, for `show` and `retry`
        reply_seen(tx, "<id@agent.example>")       # an agent's reply already recorded?

Whichever door a reply came in by (IMAP or the SMTP/LMTP ingress), a reply filed as failed
(unroutable, sender not an agent, empty once quotes and signature are cut, unreadable,
malformed, an internal error) is kept here with its reason, so nothing is lost even when the
ingress answered the sending server 250: the operator lists them (`sms311 failed list`),
reads one (`failed show ID`), hands one to the pipeline again once the cause is fixed
(`failed retry ID`, e.g. after adding the agent to the municipality map) or deletes it.
The IMAP listener also files its copy in the Failed mailbox, as before.

`key` is the email's "sha256:<hex>" (the `processed_emails` key): the same email kept twice
is one row (its reason updated). At most `MAX_KEPT_BYTES` of the email are kept (the reply
parser reads no more; a stranger's mail is kept to a smaller `max_bytes`, chosen by the reply
flow); `truncated` says when more was cut off. The retention purge deletes kept emails older
than the retention period (`purge_failed_emails`). `count_failed_emails_from` counts the
emails kept lately from one sender (the reply flow's caps: strangers' mail per day, "not
texted" notices per hour).

Code outside `gateway/store/` reaches these through the `Tx` protocol's methods of the same
names (`tx.keep_failed_email(...)`, `tx.get_failed_email(...)`, `tx.resolve_failed_email`,
`tx.update_processed_email`, `tx.reply_seen`, `tx.count_failed_emails_from`), which call the
functions here; the functions take the store's own `SqlTx` (`gateway.store.transaction`), as
`store.transaction()` and `ConsoleTx.core` give it. The record, `FailedEmail`, is defined in
`gateway.store.base`.

Conventions are those of `gateway.store.base`: datetimes in are aware, out aware UTC.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from gateway.rules.reading import MAX_RAW_BYTES
from gateway.store.base import EMAIL_OUTCOMES, EmailOutcome, FailedEmail
from gateway.store.rows import aware
from gateway.store.schema import email_messages, failed_emails, processed_emails

if TYPE_CHECKING:  # (SqlTx's methods of the same names call these functions)
    from gateway.store.transaction import SqlTx

MAX_KEPT_BYTES = MAX_RAW_BYTES
LIST_LIMIT = 100


def _row(row: sa.RowMapping, *, with_raw: bool) -> FailedEmail:
    raw = bytes(row["raw"]) if with_raw and row.get("raw") is not None else b""
    return FailedEmail(
        id=int(row["id"]),
        key=str(row["key"]),
        received_at=row["received_at"],
        origin=dict(row["origin"] or {}),
        reason=str(row["reason"]),
        why=row["why"],
        sender=row["sender"],
        subject=row["subject"],
        conversation_id=None if row["conversation_id"] is None else int(row["conversation_id"]),
        truncated=bool(row["truncated"]),
        resolved_at=row["resolved_at"],
        resolution=row["resolution"],
        raw=raw,
        size=int(row.get("size") or len(raw)),
    )


def keep_failed_email(
    tx: SqlTx,
    key: str,
    raw: bytes,
    reason: str,
    origin: Mapping[str, Any],
    *,
    now: datetime,
    sender: str | None = None,
    subject: str | None = None,
    conversation_id: int | None = None,
    why: str | None = None,
    max_bytes: int | None = None,
) -> int:
    """Keep `raw` (at most `max_bytes`; never more than `MAX_KEPT_BYTES`, the default) as a
    failed reply; returns its id. `truncated` is set when more was cut off.

    The same `key` kept again updates the reason (and un-resolves it): one row per email."""
    if not key:
        raise ValueError("a failed-email key must be a non-empty string")
    if max_bytes is not None and max_bytes < 1:
        raise ValueError("max_bytes must be at least 1")
    now = aware(now, "now")
    data = bytes(raw)
    limit = MAX_KEPT_BYTES if max_bytes is None else min(max_bytes, MAX_KEPT_BYTES)
    values: dict[str, Any] = {
        "reason": reason[:2000],
        "why": why,
        "origin": dict(origin),
        "sender": sender[:320] if sender else None,
        "subject": subject[:998] if subject else None,
        "conversation_id": conversation_id,
        "resolved_at": None,
        "resolution": None,
    }
    existing = tx.execute(
        sa.select(failed_emails.c.id).where(failed_emails.c.key == key)
    ).scalar_one_or_none()
    if existing is not None:
        tx.execute(sa.update(failed_emails).where(failed_emails.c.id == existing).values(**values))
        return int(existing)
    result = tx.execute(
        failed_emails.insert()
        .values(
            key=key,
            received_at=now,
            raw=data[:limit],
            truncated=len(data) > limit,
            **values,
        )
        .returning(failed_emails.c.id)
    )
    return int(result.scalar_one())


#: Every column but the email's bytes, and their length as "size".
LISTED_COLUMNS = (
    *(c for c in failed_emails.c if c.name != "raw"),
    sa.func.length(failed_emails.c.raw).label("size"),
)


def list_failed_emails(
    tx: SqlTx, *, include_resolved: bool = False, limit: int = LIST_LIMIT
) -> list[FailedEmail]:
    """Kept failed replies, newest first (without their bytes; `size` is their length)."""
    stmt = sa.select(*LISTED_COLUMNS).order_by(failed_emails.c.id.desc()).limit(max(1, limit))
    if not include_resolved:
        stmt = stmt.where(failed_emails.c.resolved_at.is_(None))
    return [_row(row, with_raw=False) for row in tx.execute(stmt).mappings()]


def count_failed_emails(tx: SqlTx) -> int:
    """How many kept failed replies are unresolved."""
    stmt = sa.select(sa.func.count()).where(failed_emails.c.resolved_at.is_(None))
    return int(tx.execute(stmt.select_from(failed_emails)).scalar_one())


def count_failed_emails_from(
    tx: SqlTx, sender: str | None, *, since: datetime, whys: Collection[str] | None = None
) -> int:
    """How many emails from `sender` (compared without case; None: those kept with no
    sender) were kept since `since`, resolved or not; only those whose `why` is one of
    `whys` when given. Uses the index on `received_at`."""
    stmt = sa.select(sa.func.count()).select_from(failed_emails).where(
        failed_emails.c.received_at >= aware(since, "since")
    )
    if sender is None:
        stmt = stmt.where(failed_emails.c.sender.is_(None))
    else:
        stmt = stmt.where(sa.func.lower(failed_emails.c.sender) == sender.lower()[:320])
    if whys is not None:
        stmt = stmt.where(failed_emails.c.why.in_(list(whys)))
    return int(tx.execute(stmt).scalar_one())


def get_failed_email(tx: SqlTx, failed_id: int) -> FailedEmail | None:
    """One kept failed reply with its bytes, or None."""
    stmt = sa.select(failed_emails).where(failed_emails.c.id == failed_id)
    row = tx.execute(stmt).mappings().first()
    return None if row is None else _row(row, with_raw=True)


def resolve_failed_email(
    tx: SqlTx, failed_id: int, outcome: EmailOutcome, detail: str, *, now: datetime
) -> None:
    """Mark a kept failed reply as dealt with by a retry that ended `outcome` ("processed":
    texted, or "ignored"); `resolution` is stored as "<outcome>: <detail>"."""
    tx.execute(
        sa.update(failed_emails)
        .where(failed_emails.c.id == failed_id)
        .values(resolved_at=aware(now, "now"), resolution=f"{outcome}: {detail}"[:2000])
    )


def resolution_outcome(resolution: str | None) -> str | None:
    """The outcome a `resolve_failed_email` resolution records ("processed", "ignored"), or
    None for an unresolved email."""
    return resolution.partition(":")[0] if resolution else None


def delete_failed_email(tx: SqlTx, failed_id: int) -> bool:
    """Delete a kept failed reply; False when there was none with that id."""
    result = tx.execute(sa.delete(failed_emails).where(failed_emails.c.id == failed_id))
    return bool(result.rowcount)


def purge_failed_emails(tx: SqlTx, older_than: datetime) -> int:
    """Delete kept failed replies received before `older_than` (retention)."""
    stmt = sa.delete(failed_emails).where(
        failed_emails.c.received_at < aware(older_than, "older_than")
    )
    return int(tx.execute(stmt).rowcount)


def update_processed_email(tx: SqlTx, key: str, outcome: EmailOutcome, reason: str) -> None:
    """Change the recorded outcome of an email already handled (a retried failed reply)."""
    if outcome not in EMAIL_OUTCOMES:
        raise ValueError(f"outcome must be one of {EMAIL_OUTCOMES}, not {outcome!r}")
    tx.execute(
        sa.update(processed_emails)
        .where(processed_emails.c.key == key)
        .values(outcome=outcome, reason=reason)
    )


def reply_seen(tx: SqlTx, message_id: str) -> int | None:
    """The conversation of an agent's reply with this Message-ID already recorded in a
    thread (`Tx.record_thread_email(..., direction="in")`), or None.

    The same reply can reach the gateway twice with different bytes (one copy per
    recipient: the reply address and the From address, or IMAP and the ingress), so the
    byte hash alone does not catch it; its Message-ID does."""
    stmt = sa.select(email_messages.c.conversation_id).where(
        email_messages.c.message_id == message_id, email_messages.c.direction == "in"
    )
    found = tx.execute(stmt).scalar_one_or_none()
    return None if found is None else int(found)
