"""Outbox claims on PostgreSQL: a heartbeat-renewed claim (`outbox.takeover_seconds`).

- An instance killed (SIGKILL: a real `sms311 worker` process) while it holds claimed rows,
  two of them in the middle of a send: the survivor takes them over within seconds
  (`outbox.lease_seconds` left at its 120 s), looks each up at the (fake) Twilio API first,
  and so texts every one exactly once.
- A live worker whose send is slow keeps its row: the other instance never claims it, though
  the send lasts longer than a claim does without renewal.
- A worker cut off from the database (tests/tcp_proxy.py) cannot renew its claims: the other
  instance takes its rows over, and the cut-off worker starts no send on a lapsed claim.

Against a real PostgreSQL (GATEWAY_TEST_POSTGRES_URL, see tests/postgres.py), the real twilio
client and tests/fake_twilio.py.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import sqlalchemy as sa

from gateway.app import Gateway
from gateway.run.worker import Dispatcher
from gateway.settings import load_settings
from gateway.store import OutboxItem, Store
from gateway.store.pacing import SegmentPacer
from gateway.store.sql import open_store
from tests.fake_twilio import FakeTwilio
from tests.gateway_fixtures import free_port, write_settings
from tests.tcp_proxy import TcpProxy

X, Y = "+16135550141", "+16135550142"


def _config(folder: Path, database: str, api: FakeTwilio, outbox: str = "") -> Path:
    sms = (
        "sms:\n  provider: twilio\n"
        f"  account_sid: {api.account_sid}\n  auth_token: {api.auth_token}\n"
        f'  sender: "31100"\n  api_base_url: {api.base_url}\n  max_per_second: 100\n'
    )
    return write_settings(folder, database=f'"{database}"', smtp_port=free_port(), sms=sms,
                          extra=outbox)


def _enqueue(store: Store, *texts: tuple[str, str]) -> None:
    with store.transaction() as tx:
        for to, body in texts:
            tx.enqueue("sms", {"to": to, "body": body})


def _pending(store: Store) -> list[OutboxItem]:
    return store.list_outbox("pending")


@pytest.mark.slow
def test_a_killed_instance_s_claimed_rows_are_sent_by_the_survivor_within_seconds(
    tmp_path: Path, pg_store_url: str
) -> None:
    texts = [(X, "First to X"), (X, "Second to X"), (X, "Third to X"), (Y, "First to Y")]
    with FakeTwilio() as api:
        config = _config(tmp_path / "a", pg_store_url, api)  # outbox.* at their defaults
        settings = load_settings(config, environ={})
        assert (settings.outbox.lease_seconds, settings.outbox.takeover_seconds) == (120, 10)
        store = open_store(pg_store_url)
        survivor = Gateway.from_settings(settings)
        log = tmp_path / "a.log"
        # The first text to each number is accepted by Twilio, but the answer never comes
        # back before the instance dies: it cannot know whether they were sent.
        api.hang_next(2, "timeout", seconds=60)
        _enqueue(store, *texts)
        with log.open("ab") as out:
            instance = subprocess.Popen(
                [sys.executable, "-m", "gateway", "--config", str(config), "worker"],
                env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=out, stderr=subprocess.STDOUT,
            )
        try:

            async def main() -> float:
                deadline = time.monotonic() + 30
                while len(api.attempts) < 2:  # both first texts in flight
                    assert time.monotonic() < deadline, log.read_text()
                    await asyncio.sleep(0.05)
                claimants = {item.claimed_by for item in _pending(store)}
                assert len(_pending(store)) == 4 and len(claimants) == 1, claimants
                stop = asyncio.Event()
                dispatcher = Dispatcher(survivor, poll_interval=0.1, worker_id="survivor",
                                        pacer=SegmentPacer(100.0))
                task = asyncio.create_task(dispatcher.run(stop))
                try:
                    await asyncio.sleep(1.0)  # the survivor polls: nothing is its to take
                    assert {item.claimed_by for item in _pending(store)} == claimants
                    assert len(api.attempts) == 2
                    instance.send_signal(signal.SIGKILL)
                    await asyncio.to_thread(instance.wait, 10)
                    killed = time.monotonic()
                    # generous: a failure here is a missing takeover, not a slow machine
                    while _pending(store) or len(api.messages) < len(texts):
                        assert time.monotonic() < killed + 60, "rows not taken over"
                        await asyncio.sleep(0.1)
                    return time.monotonic() - killed
                finally:
                    stop.set()
                    await asyncio.wait_for(task, 10)

            took = asyncio.run(main())
        finally:
            if instance.poll() is None:
                instance.kill()
                instance.wait(10)
            survivor.close()
            store.close()
        # taken over long before the 120 s lease of old would have let anyone
        assert took < 15, f"took {took:.1f} s"
        # never twice: the two in flight were looked up (Twilio had them), the others sent
        assert Counter(m["Body"] for m in api.messages) == Counter(b for _to, b in texts)
        assert [m["Body"] for m in api.messages if m["To"] == X] == [b for t, b in texts if t == X]
        assert len(api.attempts) == 4 and api.list_requests


def test_a_live_worker_keeps_the_row_of_a_slow_send(tmp_path: Path, pg_store_url: str) -> None:
    """Claims last 2 s without renewal here; the send takes 5 s: the heartbeat keeps the
    row this worker's, so the other instance never claims it."""
    with FakeTwilio() as api:
        outbox = "outbox: {takeover_seconds: 2, base_backoff_seconds: 0.2}\n"
        settings = load_settings(_config(tmp_path, pg_store_url, api, outbox), environ={})
        slow, other = Gateway.from_settings(settings), Gateway.from_settings(settings)
        # accepted, then the connection is closed without an answer after 5 s
        api.hang_next(1, "timeout", seconds=5)
        _enqueue(slow.store, (X, "Slow to answer"))

        async def main() -> set[str]:
            stop = asyncio.Event()
            a = Dispatcher(slow, poll_interval=0.1, worker_id="slow", pacer=SegmentPacer(100.0))
            b = Dispatcher(other, poll_interval=0.1, worker_id="other", pacer=SegmentPacer(100.0))
            task_a = asyncio.create_task(a.run(stop))
            seen: set[str] = set()
            try:
                deadline = time.monotonic() + 10
                while not api.attempts:
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.02)
                task_b = asyncio.create_task(b.run(stop))
                deadline = time.monotonic() + 30
                while _pending(other.store):
                    assert time.monotonic() < deadline, "never sent"
                    # who holds it until that first (slow) attempt ends (a retry may go
                    # anywhere; a takeover would say the claim lapsed)
                    seen |= {f"{i.claimed_by}: {i.last_error or ''}" for i in _pending(other.store)
                             if not (i.last_error or "").startswith("Twilio API")}
                    await asyncio.sleep(0.05)
            finally:
                stop.set()
                await asyncio.wait_for(task_a, 10)
                if "task_b" in locals():
                    await asyncio.wait_for(task_b, 10)
            return seen

        try:
            claimed_by = asyncio.run(main())
        finally:
            slow.close()
            other.close()
        assert claimed_by == {"slow: "}, claimed_by
        assert [m["Body"] for m in api.messages] == ["Slow to answer"]
        assert len(api.attempts) == 1  # the retry (no answer: it may have gone) looked first


def test_a_worker_cut_off_from_the_database_starts_no_send_on_a_lapsed_claim(
    tmp_path: Path, pg_store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Worker "cut" reaches PostgreSQL through a proxy that is then cut, while its first
    send hangs and its second waits for a free slot (one at a time). Worker "direct" takes
    both over once the claims lapse (2 s here); when the first send ends, "cut" does not
    go on to the second: each text reaches the resident exactly once."""
    url = sa.make_url(pg_store_url)
    with FakeTwilio() as api, TcpProxy(url.port or 5432) as proxy:
        outbox = "outbox: {takeover_seconds: 2}\n"
        via_proxy = url.set(port=proxy.port).render_as_string(hide_password=False)
        cut = Gateway.from_settings(
            load_settings(_config(tmp_path / "cut", via_proxy, api, outbox), environ={})
        )
        direct = Gateway.from_settings(
            load_settings(_config(tmp_path / "direct", pg_store_url, api, outbox), environ={})
        )
        api.hang_next(1, "timeout", seconds=5)  # accepted; no answer for 5 s, then closed
        _enqueue(direct.store, (X, "First, slow"), (Y, "Second, waiting"))

        async def main() -> None:
            stop = asyncio.Event()
            a = Dispatcher(cut, poll_interval=0.1, worker_id="cut", pacer=SegmentPacer(100.0),
                           sms_concurrency=1)
            b = Dispatcher(direct, poll_interval=0.1, worker_id="direct",
                           pacer=SegmentPacer(100.0))
            tasks = [asyncio.create_task(a.run(stop))]
            try:
                deadline = time.monotonic() + 10
                while not api.attempts:
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.02)
                assert {i.claimed_by for i in _pending(direct.store)} == {"cut"}
                proxy.cut()
                tasks.append(asyncio.create_task(b.run(stop)))
                deadline = time.monotonic() + 30
                while _pending(direct.store) or len(api.messages) < 2:
                    assert time.monotonic() < deadline, "not taken over"
                    await asyncio.sleep(0.05)
                await asyncio.sleep(5)  # the hung send has ended: "cut" would send now
            finally:
                stop.set()
                await asyncio.wait_for(asyncio.gather(*tasks), 15)

        try:
            asyncio.run(main())
        finally:
            cut.close()
            direct.close()
        assert Counter(m["Body"] for m in api.messages) == {"First, slow": 1,
                                                             "Second, waiting": 1}
        assert "took over 2 outbox row(s) from cut" in caplog.text
        assert "not sent by this worker" in caplog.text
