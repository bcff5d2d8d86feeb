"""Durability: the gateway killed with SIGKILL in the middle of a stream of texts and
replies, then restarted (`sms311 run` end to end, Dovecot, FakeTwilio, aiosmtpd).

Every text the webhook acknowledged (200) is emailed, every reply appended to the mailbox is
texted; a message may be sent twice only if it was in flight when the process died (one
email, one SMS at most: the resident's texts and replies go one after the other).
"""

from __future__ import annotations

import os
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.run.worker import is_dead_worker, worker_identity
from tests.dovecot import Dovecot
from tests.loop import Loop, agent_reply, first_email, wait_for

pytestmark = pytest.mark.slow

PHONE = "613-555-0188"


@pytest.fixture
def dovecot(tmp_path: Path) -> Iterator[Dovecot]:
    with Dovecot(tmp_path) as server:
        yield server


class Stream(threading.Thread):
    """Calls `send(n)` for n = 0, 1, 2… every `pause` seconds until stopped; `results`
    holds (n, what send returned) in order."""

    def __init__(self, send: object, pause: float) -> None:
        super().__init__(daemon=True)
        self.send = send
        self.pause = pause
        self.results: list[tuple[int, object]] = []
        self.stopping = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        n = 0
        try:
            while not self.stopping.is_set():
                self.results.append((n, self.send(n)))  # type: ignore[operator]
                n += 1
                self.stopping.wait(self.pause)
        except BaseException as exc:  # reported by stop()
            self.error = exc

    def count(self, value: object) -> int:
        return sum(1 for _n, result in list(self.results) if result == value)

    def stop(self) -> None:
        self.stopping.set()
        self.join(30)
        assert not self.is_alive()
        if self.error is not None:
            raise self.error


def test_sigkill_mid_stream_loses_nothing_and_repeats_at_most_the_one_in_flight(
    tmp_path: Path, dovecot: Dovecot
) -> None:
    loop = Loop(
        tmp_path, dovecot, max_per_second=50,
        outbox={"base_backoff_seconds": 0.2, "max_backoff_seconds": 1},
    )
    try:
        to_city = first_email(loop, PHONE, "stream text start")

        def text(n: int) -> int:
            return loop.post_text(PHONE, f"stream text {n:03d}", timeout=5)

        def reply(n: int) -> bool:
            dovecot.append(agent_reply(to_city, f"stream reply {n:03d}"))
            return True

        texts, replies = Stream(text, 0.02), Stream(reply, 0.05)
        texts.start()
        replies.start()

        def texted() -> int:
            return len(loop.api.messages)

        # In the middle of the stream: texts accepted and emailed, replies texted.
        wait_for(lambda: texts.count(200) >= 20 and texted() >= 5
                 and len(loop.collector.messages) >= 10, "the stream to be flowing")
        loop.kill()
        killed_at = len(texts.results), len(replies.results)
        # While it is down: webhooks get no answer; replies pile up in the mailbox.
        wait_for(lambda: len(texts.results) >= killed_at[0] + 5
                 and len(replies.results) >= killed_at[1] + 5, "the stream to go on")
        assert texts.results[-1][1] == 0  # no answer: the gateway is down
        loop.start()
        restarted_at = texts.count(200)
        wait_for(lambda: texts.count(200) >= restarted_at + 20, "texts accepted again")
        texts.stop()
        replies.stop()

        accepted = {f"stream text {n:03d}" for n, status in texts.results if status == 200}
        refused = {f"stream text {n:03d}" for n, status in texts.results if status != 200}
        appended = {f"stream reply {n:03d}" for n, _ok in replies.results}
        assert {status for _n, status in texts.results} <= {200, 0}

        def emailed() -> Counter[str]:
            found: Counter[str] = Counter()
            for body in loop.collector.bodies():
                found.update(re.findall(r"stream text \d{3}", body))
            return found

        def sms() -> Counter[str]:
            return Counter(m["Body"] for m in loop.api.messages)

        wait_for(lambda: accepted <= set(emailed()), "every accepted text emailed", 30)
        wait_for(lambda: appended <= set(sms()), "every reply texted", 30)
        time.sleep(1)  # anything still on its way (a duplicate) has arrived
    finally:
        output = loop.stop()

    emails, texts_out = emailed(), sms()
    # Nothing that was not sent: an email for a text the webhook did not answer is fine
    # (committed just before the kill), a text nobody sent is not.
    assert set(emails) <= accepted | refused
    assert set(texts_out) == appended
    # Repeated at most: an SMS, the one in flight; an email, the one in flight and the one
    # sent just before it, whose "sent" mark was being committed (marks are committed in
    # batches while the next email of the conversation goes out: README, "The drain").
    for what, counts, in_flight in (("emailed", emails, 2), ("texted", texts_out, 1)):
        assert max(counts.values()) <= 2, f"{what} more than twice: {counts.most_common(3)}"
        twice = [body for body, n in counts.items() if n == 2]
        assert len(twice) <= in_flight, f"{what} twice (only those in flight may be): {twice}"
        numbers = sorted(int(body.rsplit(" ", 1)[1]) for body in twice)
        assert numbers == list(range(numbers[0], numbers[0] + len(numbers))) if numbers else True
    assert len(emails) >= 40 and len(appended) >= 10  # the stream was a stream
    assert output.count("dispatcher started") == 2  # one kill, one restart
    assert "Traceback" not in output


def test_only_workers_known_to_be_gone_are_released() -> None:
    me = worker_identity()
    host, pid, namespace = me.rsplit(":", 2)
    assert (host, pid) == (socket.gethostname(), str(os.getpid()))
    assert is_dead_worker(me, me)  # at start-up: an earlier process with our pid
    assert not is_dead_worker(f"{host}:1:{namespace}", me)  # alive (init)
    dead = 2**22 + 1  # above the kernel's pid_max: no such process
    assert is_dead_worker(f"{host}:{dead}:{namespace}", me)
    assert not is_dead_worker(f"other-host:{dead}:{namespace}", me)  # cannot tell
    assert not is_dead_worker(f"{host}:{dead}:another-namespace", me)  # cannot tell
    assert not is_dead_worker(f"{host}:{dead}", me)  # an older format: wait for the lease
    assert not is_dead_worker("w1", me)
