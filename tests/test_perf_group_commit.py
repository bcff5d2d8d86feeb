"""Group commit (gateway/store/group.py): SQLite write transactions of one process share
one BEGIN … COMMIT, and each caller returns only once ITS work is committed."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from gateway.store import DuplicateWebhook, SqlStore, StoreUnavailable, open_store
from gateway.store.group import GroupCommit


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqlStore]:
    """SQLite only (not conftest's `store` on both backends): group commit is SQLite's."""
    s = open_store(f"sqlite:///{tmp_path / 'gateway.db'}")
    s.upgrade()
    yield s
    s.close()


def _group(store: SqlStore) -> GroupCommit:
    group = store._group
    assert isinstance(group, GroupCommit)
    return group


def _committed_sids(store: SqlStore) -> set[str]:
    """What another connection (another process) sees: committed rows only."""
    database = store.engine.url.database
    assert database is not None
    with sqlite3.connect(database) as db:
        return {row[0] for row in db.execute("SELECT sid FROM webhook_log")}


def _wait_until(predicate: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


def test_every_caller_returns_only_after_its_own_commit(store: SqlStore) -> None:
    seen_after: dict[str, bool] = {}
    errors: list[BaseException] = []

    def write(i: int) -> None:
        try:
            sid = f"SM{i:04d}"
            with store.transaction() as tx:
                tx.record_webhook(sid, "")
            seen_after[sid] = sid in _committed_sids(store)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(seen_after) == 40 and all(seen_after.values())
    group = _group(store)
    assert group.transactions == 40
    assert group.groups <= 40


def _two_in_one_group(
    store: SqlStore, first: object, second: object
) -> tuple[list[BaseException | None], list[BaseException | None]]:
    """Run `first(tx)` and `second(tx)` so that they share one group: the first block
    waits until the second thread is queued for its turn."""
    group = _group(store)
    results: tuple[list[BaseException | None], list[BaseException | None]] = ([], [])

    def run(body: object, out: list[BaseException | None], hold: bool) -> None:
        try:
            with store.transaction() as tx:
                if hold:
                    _wait_until(lambda: group._waiting > 0)
                body(tx)  # type: ignore[operator]
            out.append(None)
        except BaseException as exc:
            out.append(exc)

    a = threading.Thread(target=run, args=(first, results[0], True))
    a.start()
    _wait_until(lambda: group._owner is not None)
    b = threading.Thread(target=run, args=(second, results[1], False))
    b.start()
    a.join(10)
    b.join(10)
    return results


def test_two_transactions_share_one_commit(store: SqlStore) -> None:
    group = _group(store)
    before = group.groups
    a, b = _two_in_one_group(
        store, lambda tx: tx.record_webhook("SMa", ""), lambda tx: tx.record_webhook("SMb", "")
    )
    assert a == [None] and b == [None]
    assert group.groups == before + 1
    assert _committed_sids(store) >= {"SMa", "SMb"}


def test_a_failing_member_is_rolled_back_alone(store: SqlStore) -> None:
    with store.transaction() as tx:
        tx.record_webhook("SMdup", "")

    def duplicate(tx: object) -> None:
        tx.record_webhook("SMfirst-half", "")  # type: ignore[attr-defined]
        tx.record_webhook("SMdup", "")  # type: ignore[attr-defined]

    a, b = _two_in_one_group(store, duplicate, lambda tx: tx.record_webhook("SMok", ""))
    assert isinstance(a[0], DuplicateWebhook)
    assert b == [None]
    committed = _committed_sids(store)
    assert "SMok" in committed and "SMfirst-half" not in committed


def test_a_failed_commit_fails_every_member(
    store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_commit(self: object) -> None:
        raise sa.exc.OperationalError("COMMIT", {}, sqlite3.OperationalError("disk I/O error"))

    monkeypatch.setattr(sa.engine.base.RootTransaction, "commit", broken_commit)
    a, b = _two_in_one_group(
        store, lambda tx: tx.record_webhook("SMx", ""), lambda tx: tx.record_webhook("SMy", "")
    )
    monkeypatch.undo()
    assert isinstance(a[0], StoreUnavailable) and isinstance(b[0], StoreUnavailable)
    assert not {"SMx", "SMy"} & _committed_sids(store)
    with store.transaction() as tx:  # and the store recovers
        tx.record_webhook("SMz", "")
    assert "SMz" in _committed_sids(store)


def test_a_nested_write_transaction_is_refused(store: SqlStore) -> None:
    with (
        store.transaction(),
        pytest.raises(RuntimeError, match="already open"),
        store.transaction(),
    ):
        pass
    with store.transaction() as tx:  # the turn was given back
        tx.record_webhook("SMafter", "")
    assert "SMafter" in _committed_sids(store)


# -- the writers' lock file, between processes -------------------------------------------------


def test_a_group_waits_for_the_writers_lock_of_another_process(store: SqlStore) -> None:
    """Another process's writers hold `<database>-writer.lock` (here: this test, through
    its own open file): a write waits for it, then commits at once when it is released."""
    import fcntl

    database = store.engine.url.database
    assert database is not None
    lock = open(f"{database}-writer.lock", "a+b")  # noqa: SIM115 - held across threads
    fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
    done = threading.Event()

    def write() -> None:
        with store.transaction() as tx:
            tx.record_webhook("SMwaited", "")
        done.set()

    writer = threading.Thread(target=write)
    writer.start()
    try:
        assert not done.wait(0.3)  # held off by the other process's lock
        assert "SMwaited" not in _committed_sids(store)
    finally:
        fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
        lock.close()
    assert done.wait(5)
    writer.join(5)
    assert "SMwaited" in _committed_sids(store)


def test_a_writers_lock_held_too_long_is_store_unavailable(tmp_path: Path) -> None:
    import fcntl

    store = open_store(f"sqlite:///{tmp_path / 'g.db'}")
    store.upgrade()
    store._group = GroupCommit(store.engine, lock_timeout=0.2, translate=_group(store)._translate)
    with open(f"{tmp_path / 'g.db'}-writer.lock", "a+b") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        with pytest.raises(StoreUnavailable, match="locked"), store.transaction() as tx:
            tx.record_webhook("SMnever", "")
    with store.transaction() as tx:  # released: writes go through again
        tx.record_webhook("SMlater", "")
    assert _committed_sids(store) == {"SMlater"}
    store.close()
