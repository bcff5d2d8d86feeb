"""The web half as one ASGI app, served by uvicorn (`gateway/run/web_server.py`).

`POST /sms/inbound` with a urlencoded form — what providers send — is answered on the
server's event loop, with the same checks in the same order as the WSGI path
(`gateway.web.webhooks`: size 413, signature 403, form 400, store 503). A checked text goes
to the `IngestBatcher`, one thread that commits together every text that arrived while the
previous commit was being written (`InboundService.accept_queueable`: one durable commit for
many texts, measured in issue 16), and the webhook answers 200 only once that commit
succeeded. A text that needs an answer — the dialogue, a keyword, a number never seen — is
then processed by `InboundService.accept` in a small pool of threads, a resident's texts one
after the other in the order they arrived. Everything else (the console, health, status
callbacks, a webhook with another encoding) goes to the Flask app through a2wsgi's WSGI
bridge, in its own pool of threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from a2wsgi import WSGIMiddleware

from gateway.app import Gateway
from gateway.flows.text_in import Outcome
from gateway.sms.base import MAX_WEBHOOK_BYTES, InboundText
from gateway.store import StoreUnavailable
from gateway.web.webhooks import (
    Answer,
    answer_text,
    check_text,
    refuse_bad_request,
    refuse_too_large,
    store_down,
    urlencoded_form,
)

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

PATH = "/sms/inbound"
MAX_BATCH = 64  # texts in one commit
WSGI_THREADS = 8  # the console and the other endpoints
SLOW_PATH_THREADS = 4  # texts that need an answer
_FORM = b"application/x-www-form-urlencoded"
_ERROR = Answer("500 Internal Server Error", "text/plain", "Internal Server Error\n")

_Item = tuple[InboundText, "asyncio.Future[Outcome | None]", asyncio.AbstractEventLoop]


class IngestBatcher:
    """Commits the webhook's texts in batches, in one thread (see the module docstring).

    `receive(text)` (on an event loop) resolves to the text's `Outcome` once it is
    committed: queued for the worker in a batch, or processed at once through
    `InboundService.accept`. Raises `StoreUnavailable` when the store is down."""

    def __init__(self, gateway: Gateway, *, max_batch: int = MAX_BATCH) -> None:
        self._gateway = gateway
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._busy: Counter[str] = Counter()  # residents with texts on the slow path
        self._tails: dict[str, asyncio.Future[None]] = {}  # (touched on the loop only)
        self._thread: threading.Thread | None = None
        self._slow = ThreadPoolExecutor(SLOW_PATH_THREADS, thread_name_prefix="inbound")
        # what happened, for tests and the benchmark
        self.batches = 0
        self.texts = 0

    async def receive(self, text: InboundText) -> Outcome:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Outcome | None] = loop.create_future()
        self._start()
        self._queue.put((text, future, loop))
        outcome = await future
        if outcome is not None:
            return outcome
        try:  # needs an answer: after the resident's texts before it, in order
            return await self._in_order(text, loop)
        finally:
            with self._lock:
                self._busy[text.phone] -= 1
                if self._busy[text.phone] <= 0:
                    del self._busy[text.phone]

    async def _in_order(self, text: InboundText, loop: asyncio.AbstractEventLoop) -> Outcome:
        previous = self._tails.get(text.phone)
        mine: asyncio.Future[None] = loop.create_future()
        self._tails[text.phone] = mine
        try:
            if previous is not None:
                await previous
            return await loop.run_in_executor(self._slow, self._gateway.inbound.accept, text)
        finally:
            mine.set_result(None)
            if self._tails.get(text.phone) is mine:
                del self._tails[text.phone]

    def _start(self) -> None:
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="ingest", daemon=True)
                    self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            stopping = False
            while len(batch) < self._max_batch:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stopping = True
                    break
                batch.append(more)
            self._commit(batch)
            if stopping:
                return

    def _commit(self, batch: list[_Item]) -> None:
        texts = [text for text, _, _ in batch]
        results: list[Outcome | None] | BaseException
        with self._lock:
            busy = set(self._busy)
        try:
            results = self._gateway.inbound.accept_queueable(texts, busy)
        except StoreUnavailable as exc:
            results = exc
        except Exception:  # one bad text must not fail the others: each on its own
            log.exception("a batch of %d texts failed; accepting them one by one", len(batch))
            results = [None] * len(batch)
        if not isinstance(results, BaseException):
            with self._lock:  # before any later batch reads it: their order is kept
                for text, result in zip(texts, results, strict=True):
                    if result is None:
                        self._busy[text.phone] += 1
        self.batches += 1
        self.texts += len(batch)
        for loop in {loop for _, _, loop in batch}:
            mine = [(future, i) for i, (_, future, lp) in enumerate(batch) if lp is loop]
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
                loop.call_soon_threadsafe(_resolve, mine, results)

    def close(self) -> None:
        """Commit what is queued, then stop the thread and the slow path's pool."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=10)
        self._slow.shutdown(wait=True, cancel_futures=False)


def _resolve(
    futures: list[tuple[asyncio.Future[Outcome | None], int]],
    results: list[Outcome | None] | BaseException,
) -> None:
    for future, i in futures:
        if future.done():
            continue
        if isinstance(results, BaseException):
            future.set_exception(results)
        else:
            future.set_result(results[i])


class _Headers(dict[str, str]):
    """A request's headers by lower-case name (the first of each), read case-insensitively
    with `get` (what the signature check reads; werkzeug's Headers cost more to build)."""

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        super().__init__()
        for name, value in raw:
            self.setdefault(name.decode("latin-1"), value.decode("latin-1"))

    def get(self, key: str, default: Any = None) -> Any:
        return super().get(key.lower(), default)


class InboundFront:
    """The ASGI app: `POST /sms/inbound` here, everything else to `fallback`."""

    def __init__(self, gateway: Gateway, fallback: ASGIApp, batcher: IngestBatcher) -> None:
        self._gateway = gateway
        self._fallback = fallback
        self.batcher = batcher

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != PATH or scope["method"] != "POST":
            return await self._fallback(scope, receive, send)
        content_type = length = b""
        chunked = False
        for name, value in scope["headers"]:
            if name == b"content-type":
                content_type = value
            elif name == b"content-length":
                length = value
            elif name == b"transfer-encoding":
                chunked = True
        if content_type.partition(b";")[0].strip().lower() != _FORM or chunked:
            return await self._fallback(scope, receive, send)  # Flask's checks, same order
        await _send(send, await self._answer(scope, receive, length))

    async def _answer(self, scope: Scope, receive: Receive, length: bytes) -> Answer | None:
        gateway = self._gateway
        started = time.perf_counter()
        try:
            size = int(length) if length else 0
        except ValueError:
            size = -1
        if size < 0:  # as the WSGI path answers it (counted and logged)
            return _close(refuse_bad_request(gateway, PATH, "bad Content-Length"))
        if size > MAX_WEBHOOK_BYTES:
            return _close(refuse_too_large(gateway, PATH, f"{size} bytes"))
        data = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            data += message.get("body", b"")
            if len(data) > MAX_WEBHOOK_BYTES:  # (the parser holds the body to its length)
                return _close(refuse_too_large(gateway, PATH, "body over its length"))
            if not message.get("more_body"):
                break
        form = urlencoded_form(gateway, PATH, data)
        if isinstance(form, Answer):
            return form
        query = scope["query_string"].decode("utf-8", "replace")
        headers = _Headers(scope["headers"])
        try:
            checked = check_text(gateway, PATH, query, form, headers)
            if isinstance(checked, Answer):
                return checked
            try:
                outcome = await self.batcher.receive(checked)
            except StoreUnavailable as exc:
                return store_down(checked, exc)
            return answer_text(gateway, outcome, started)
        except Exception:
            log.exception("webhook %s failed", PATH)
            return _ERROR

    @property
    def flask_app(self) -> Any:
        """The Flask app behind the bridge (tests reach the gateway through it)."""
        return getattr(self._fallback, "app", None)

    def close(self) -> None:
        self.batcher.close()
        close = getattr(self._fallback, "close", None)
        if close is not None:
            close()


class _Closing(Answer):
    """An answer after which the connection is closed (the body may not have been read)."""


def _close(answer: Answer) -> Answer:
    return _Closing(*answer)


async def _send(send: Send, answer: Answer | None) -> None:
    if answer is None:  # the client went away
        return
    body = answer.body.encode("utf-8")
    headers = [
        (b"content-type", f"{answer.content_type}; charset=utf-8".encode("latin-1")),
        (b"content-length", str(len(body)).encode("ascii")),
    ]
    if isinstance(answer, _Closing):
        headers.append((b"connection", b"close"))
    status = int(answer.status.partition(" ")[0])
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class WsgiBridge:
    """a2wsgi's WSGI bridge over a Flask app, with a `close()` for its threads."""

    def __init__(self, app: Any, threads: int) -> None:
        self.app = app
        self._middleware = WSGIMiddleware(app, workers=threads)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._middleware(scope, receive, send)  # type: ignore[arg-type]

    def close(self) -> None:
        self._middleware.executor.shutdown(wait=False, cancel_futures=True)


def create_asgi_app(gateway: Gateway, *, internal: bool = False) -> ASGIApp:
    """The public web half (`create_app`'s Flask app behind the inbound front), or, with
    `internal`, the app of `web.metrics_listen`."""
    from gateway.web import create_app

    bridge = WsgiBridge(create_app(gateway, internal=internal), 2 if internal else WSGI_THREADS)
    if internal:
        return bridge
    return InboundFront(gateway, bridge, IngestBatcher(gateway))
