"""The IMAP listener: agents' replies from the reply mailbox to the reply pipeline.

    listener = ImapListener(settings.email.imap, sink, store)
    await listener.run(stop)          # until `stop` is set; never raises on network trouble
    await listener.check()            # a one-off check: connect, log in, NOOP, log out, or raise
    listener.caught_up                # asyncio.Event: set while connected and caught up

`store` needs only `imap_checkpoint` and `save_imap_checkpoint` (`CheckpointStore`).

`record_state(ok, detail)` (optional, a plain function: it is called in a thread) is told the
listener's last known state, for /healthz (which no longer signs in to the mailbox on each
request): ok once connected, signed in and the mailbox selected, and again after each
message read and each IDLE round; not ok, with a short detail (the server's address and
what failed; never the password or a message), when connecting, signing in or a command
fails. A failure of the reply pipeline or of the checkpoint store is not the mailbox's: it
leaves the state as it was. The state is written on every change and, unchanged, every
`state_heartbeat` seconds while `run` runs, so a reader tells a listener that stopped (the
process died) by the state's age. A failing write is logged and tried again at the next
heartbeat; it never slows the listener.

What `run` does, over and over until `stop` is set:

1. Connect (`security`: none | starttls | tls; certificates verified, or `ssl_context`), LOG IN,
   create the Processed and Failed mailboxes when missing, SELECT the mailbox.
2. Catch up. The store keeps a checkpoint per mailbox: `(UIDVALIDITY, last UID handled)`.
   Same UIDVALIDITY: the messages with a higher UID; no checkpoint or another UIDVALIDITY
   (the server renumbered the mailbox): every message in it. Each one, in UID order, is
   fetched with BODY.PEEK[] (no \\Seen), handed to the sink, then moved - to Processed when
   the outcome is processed or ignored, to Failed when it failed - with UID MOVE when the
   server has MOVE (else UID COPY, \\Deleted, UID EXPUNGE / EXPUNGE), logged in one line
   (outcome and reason; never the body or an address), and the checkpoint is saved.
   If the sink raises (the store is down, …), the message stays where it is and the
   listener reconnects after a backoff and offers it again; a checkpoint store that fails
   is handled the same way (logged in one line, not as a bug). The sink deduplicates by
   content, so offering a message twice (after a crash between the sink and the move, or
   after a UIDVALIDITY change) never texts it twice.
3. IDLE until the server announces new mail (EXISTS), then leave IDLE and catch up again.
   IDLE is re-issued every `idle_timeout` (servers drop IDLE after ~30 minutes); a server
   without IDLE is polled every `poll_interval`.

Any timeout, refused command, or lost connection closes the connection; the listener
reconnects with capped exponential backoff (with jitter) and catches up again. Every command
has a timeout; a connection that dies silently is noticed by the IDLE restart (DONE gets no
answer within `command_timeout`) and sooner by TCP keepalive. Setting `stop` ends `run`
within about a second, even while idling; a message already handed to the sink is finished
first.

aioimaplib (2.0) sharp edges handled here: it never notices a closed connection (pending
commands wait forever: iroco-co/aioimaplib#110), so every call races a "connection lost"
event; only some commands have timeouts (#58), so every call has one; it has no STARTTLS
(#1), so `_Client.starttls` upgrades the transport with `loop.start_tls`; untagged EXISTS
that arrive during another command are dropped (and `wait_server_push` only returns them
when the buffer is flushed, #120), so the protocol subclass watches every untagged line for
EXISTS itself; LOGIN's debug log scrubs the raw password but sends it quoted, so LOGIN is
issued here with the quoted form scrubbed; mailbox names are quoted and modified-UTF-7
encoded here (aioimaplib sends arguments as they are).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import random
import re
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import aioimaplib

from gateway.mail.types import Disposition, MailOrigin, ReplySink
from gateway.settings import ImapSettings

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_IDLE_TIMEOUT = 25 * 60.0
STATE_HEARTBEAT = 30.0  # seconds between writes of an unchanged state (`record_state`)
STOP_GRACE = 0.5  # seconds for DONE / LOGOUT once `stop` is set

_EXISTS = re.compile(rb"^\d+ EXISTS\b", re.IGNORECASE)
_UIDVALIDITY = re.compile(rb"\[UIDVALIDITY (\d+)\]", re.IGNORECASE)
_FETCH_LINE = re.compile(rb"^\d+ FETCH \(", re.IGNORECASE)
_UID_ITEM = re.compile(rb"\bUID (\d+)", re.IGNORECASE)
_MESSAGE_DATA = re.compile(rb"^[0-9]+ ((FETCH)|(EXPUNGE))")


class CheckpointStore(Protocol):
    """The part of `gateway.store.Store` the listener uses (any `Store` will do)."""

    def imap_checkpoint(self, mailbox: str) -> tuple[int, int] | None: ...

    def save_imap_checkpoint(self, mailbox: str, uidvalidity: int, last_uid: int) -> None: ...


StateRecorder = Callable[[bool, str | None], None]


class ImapError(Exception):
    """The IMAP server refused something or the connection failed (the message says what)."""


class ConnectionLost(ImapError):
    """The server closed the connection."""


class LoginFailed(ImapError):
    """The server refused the user name or password."""


class _Stopped(Exception):
    """`stop` was set while waiting for the server."""


class _SinkFailed(Exception):
    """The reply pipeline raised for a message; it stays in the mailbox."""


class _CheckpointFailed(Exception):
    """The checkpoint store raised (the database is down, …)."""


# ------------------------------------------------------------------------------------------
# aioimaplib, with the fixes described in the module docstring


class _Protocol(aioimaplib.IMAP4ClientProtocol):  # type: ignore[misc]
    """aioimaplib's protocol that also reports a lost connection and every EXISTS."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop, None)
        self.lost = asyncio.Event()
        self.new_mail = asyncio.Event()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set()
        super().connection_lost(exc)

    def _untagged_response(self, line: bytes) -> Any:
        body = line[2:] if line.startswith(b"* ") else line
        if _EXISTS.match(body):
            self.new_mail.set()
        if self.pending_sync_command is None and not self._wanted(body):
            # An unsolicited status update no command asked for (aioimaplib would log it at
            # INFO); EXISTS has been noted above.
            log.debug("untagged response: %r", body[:80])
            return None
        return super()._untagged_response(line)

    def _wanted(self, body: bytes) -> bool:
        """Whether a pending (async) command will take this untagged line (aioimaplib's rule)."""
        match = _MESSAGE_DATA.match(body)
        name = match.group(1) if match else body.partition(b" ")[0]
        pending = self.pending_async_commands
        return name.decode("ascii", "replace").upper() in pending or "NOOP" in pending


class _Client(aioimaplib.IMAP4):  # type: ignore[misc]
    """aioimaplib's client on `_Protocol`, with STARTTLS and a properly scrubbed LOGIN."""

    protocol: _Protocol

    def create_client(
        self,
        host: str,
        port: int,
        loop: asyncio.AbstractEventLoop | None,
        conn_lost_cb: Callable[[Exception | None], None] | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        local_loop = loop if loop is not None else asyncio.get_running_loop()
        self.protocol = _Protocol(local_loop)
        self._client_task = local_loop.create_task(
            local_loop.create_connection(lambda: self.protocol, host, port, ssl=ssl_context)
        )

    async def starttls(self, context: ssl.SSLContext, server_hostname: str) -> None:
        protocol = self.protocol
        if "STARTTLS" not in protocol.capabilities:
            raise ImapError("the server does not offer STARTTLS")
        command = aioimaplib.Command("STARTTLS", protocol.new_tag(), loop=protocol.loop)
        response = await protocol.execute(command)
        if response.result != "OK":
            raise ImapError(f"STARTTLS refused: {_text(response)}")
        loop = asyncio.get_running_loop()
        transport = await loop.start_tls(
            protocol.transport, protocol, context, server_hostname=server_hostname
        )
        protocol.transport = transport
        protocol.incomplete_line = b""  # nothing sent before the handshake counts
        await protocol.capability()  # capabilities may change after STARTTLS

    async def login_scrubbed(self, user: str, password: str) -> Any:
        protocol = self.protocol
        secret = aioimaplib.quoted(password)
        command = aioimaplib.Command(
            "LOGIN", protocol.new_tag(), aioimaplib.quoted(user), secret, loop=protocol.loop
        )
        async with protocol.state_condition:
            response = await protocol.execute(command, scrub=secret)
            if response.result == "OK":
                protocol.state = aioimaplib.AUTH
            protocol.state_condition.notify_all()
        return response


def encode_mailbox(name: str) -> str:
    """A mailbox name as an IMAP quoted string, in modified UTF-7 (RFC 3501 5.1.3)."""
    out: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            data = "".join(pending).encode("utf-16-be")
            out.append("&" + base64.b64encode(data).decode().rstrip("=").replace("/", ",") + "-")
            pending.clear()

    for char in name:
        if 0x20 <= ord(char) <= 0x7E:
            flush()
            out.append("&-" if char == "&" else char)
        else:
            pending.append(char)
    flush()
    return str(aioimaplib.quoted("".join(out)))


def _text(response: Any) -> str:
    """A short printable summary of a command's response (for errors and logs)."""
    lines = [line for line in getattr(response, "lines", []) if isinstance(line, bytes)]
    text = lines[-1].decode("utf-8", "replace") if lines else ""
    return f"{getattr(response, 'result', '?')} {text}"[:200]


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | aioimaplib.CommandTimeout):
        return "timed out"
    text = str(exc).strip()
    if isinstance(exc, ImapError | _SinkFailed | _CheckpointFailed) and text:
        return text  # ours: the message says it all
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _set_keepalive(client: _Client) -> None:
    """TCP keepalive: a peer that vanished is noticed in about two minutes, even in IDLE."""
    transport = client.protocol.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for option, value in (("TCP_KEEPIDLE", 60), ("TCP_KEEPINTVL", 15), ("TCP_KEEPCNT", 4)):
            if hasattr(socket, option):
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)


def parse_fetch(lines: list[Any], uid: int) -> bytes | None:
    """The message literal of `uid` in an aioimaplib UID FETCH response, or None.

    Other FETCH responses in the same answer (flag changes of other messages, pushed by the
    server) are skipped: a literal is taken only when its FETCH line names no other UID.
    """
    for index, item in enumerate(lines):
        if not isinstance(item, bytearray | memoryview) or index == 0:
            continue
        header = lines[index - 1]
        if not isinstance(header, bytes) or not _FETCH_LINE.match(header):
            continue
        after = lines[index + 1] if index + 1 < len(lines) else b""
        around = header + (after if isinstance(after, bytes) else b"")
        found = _UID_ITEM.search(around)
        if found is not None and int(found.group(1)) != uid:
            continue
        return bytes(item)
    return None


def parse_uidvalidity(lines: list[Any]) -> int:
    """The UIDVALIDITY in an aioimaplib SELECT response."""
    for line in lines:
        if isinstance(line, bytes):
            match = _UIDVALIDITY.search(line)
            if match:
                return int(match.group(1))
    raise ImapError("the server sent no UIDVALIDITY when selecting the mailbox")


def parse_search(lines: list[Any]) -> list[int]:
    """The numbers of an aioimaplib (UID) SEARCH response (the last line is the status)."""
    numbers: list[int] = []
    for line in lines[:-1]:
        if isinstance(line, bytes):
            words = line.split()
            if words and words[0].upper() == b"SEARCH":
                words = words[1:]
            numbers.extend(int(word) for word in words if word.isdigit())
    return sorted(set(numbers))


# ------------------------------------------------------------------------------------------


class ImapListener:
    """Reads agents' replies from an IMAP mailbox; see the module docstring."""

    def __init__(
        self,
        settings: ImapSettings,
        sink: ReplySink,
        store: CheckpointStore,
        *,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        command_timeout: float = 30.0,
        check_timeout: float = 10.0,
        min_backoff: float = 1.0,
        max_backoff: float = 60.0,
        poll_interval: float = 30.0,
        use_move: bool | None = None,
        ssl_context: ssl.SSLContext | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
        record_state: StateRecorder | None = None,
        state_heartbeat: float = STATE_HEARTBEAT,
    ) -> None:
        """`use_move`: None uses UID MOVE when the server has it; False always copies and
        expunges. `ssl_context` replaces the default (system CAs, hostname checked) for
        tls/starttls. `clock` and `sleep` pace IDLE restarts and backoff pauses.
        `record_state` and `state_heartbeat`: see the module docstring."""
        if settings.security not in ("none", "starttls", "tls"):
            raise ValueError(f"unknown IMAP security {settings.security!r}")
        self.settings = settings
        self._sink = sink
        self._store = store
        self.idle_timeout = idle_timeout
        self.command_timeout = command_timeout
        self.check_timeout = check_timeout
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.poll_interval = poll_interval
        self.use_move = use_move
        self._ssl_context = ssl_context
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._idling = False  # the current session caught up and reached IDLE
        self.caught_up = asyncio.Event()  # set while a session has caught up (tests, health)
        self._record_state = record_state
        self.state_heartbeat = state_heartbeat
        self._state: tuple[bool, str | None] | None = None  # the last known state
        self._state_changed = asyncio.Event()

    @property
    def _where(self) -> str:
        return f"{self.settings.host}:{self.settings.port}/{self.settings.mailbox}"

    # --------------------------------------------------------------------------------------
    # public

    async def run(self, stop: asyncio.Event) -> None:
        """Listen until `stop` is set; reconnects on any trouble, never raises for it."""
        reporter = (
            asyncio.create_task(self._report_state(stop), name="imap-state")
            if self._record_state is not None
            else None
        )
        try:
            await self._run(stop)
        finally:
            if reporter is not None:
                reporter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reporter

    async def _run(self, stop: asyncio.Event) -> None:
        failures = 0
        while not stop.is_set():
            delay = 0.0
            client: _Client | None = None
            self._idling = False
            try:
                client, uidvalidity = await self._open(stop)
                self._set_state(True)
                await self._listen(client, uidvalidity, stop)
            except _Stopped:
                pass
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures = 1 if self._idling else failures + 1
                delay = self._backoff(failures)
                self._log_failure(exc, delay)
                if not isinstance(exc, _SinkFailed | _CheckpointFailed):  # not the mailbox's
                    self._set_state(False, self._state_detail(exc))
            finally:
                self.caught_up.clear()
                if client is not None:
                    await self._close(client, quick=stop.is_set())
            if delay and not stop.is_set():
                await self._pause(stop, delay)

    async def check(self) -> None:
        """Connect, log in, NOOP, log out within `check_timeout`; raise if anything fails."""
        client: _Client | None = None
        try:
            async with asyncio.timeout(self.check_timeout):
                client = await self._connect(None)
                response = await self._call(client, client.noop(), None)
                if response.result != "OK":
                    raise ImapError(f"NOOP refused: {_text(response)}")
        finally:
            if client is not None:
                await self._close(client, quick=True)

    # --------------------------------------------------------------------------------------
    # one session

    async def _connect(self, stop: asyncio.Event | None) -> _Client:
        """A connected, logged-in client (Processed/Failed not checked, nothing selected)."""
        s = self.settings
        context: ssl.SSLContext | None = None
        if s.security in ("tls", "starttls"):
            context = self._ssl_context or ssl.create_default_context()
        client = _Client(
            host=s.host,
            port=s.port,
            timeout=self.command_timeout,
            ssl_context=context if s.security == "tls" else None,
        )
        try:
            await self._call(client, client.wait_hello_from_server(), stop)
            if s.security == "starttls":
                assert context is not None
                await self._call(client, client.starttls(context, s.host), stop)
            _set_keepalive(client)
            response = await self._call(client, client.login_scrubbed(s.username, s.password), stop)
            if response.result != "OK":
                raise LoginFailed(f"login refused for the configured user: {_text(response)}")
            await self._call(client, client.protocol.capability(), stop)
        except BaseException:
            await self._close(client, quick=True)
            raise
        return client

    async def _open(self, stop: asyncio.Event) -> tuple[_Client, int]:
        """Connect, log in, make sure Processed and Failed exist, SELECT the mailbox.

        Returns the client and the mailbox's UIDVALIDITY."""
        s = self.settings
        client = await self._connect(stop)
        try:
            for mailbox in (s.processed_mailbox, s.failed_mailbox):
                await self._ensure_mailbox(client, mailbox, stop)
            response = await self._call(client, client.select(encode_mailbox(s.mailbox)), stop)
            if response.result != "OK":
                raise ImapError(f"SELECT {s.mailbox} refused: {_text(response)}")
            uidvalidity = parse_uidvalidity(response.lines)
        except BaseException:
            await self._close(client, quick=True)
            raise
        return client, uidvalidity

    async def _ensure_mailbox(self, client: _Client, mailbox: str, stop: asyncio.Event) -> None:
        name = encode_mailbox(mailbox)
        response = await self._call(client, client.list('""', name), stop)
        if response.result == "OK" and len(response.lines) > 1:
            return
        response = await self._call(client, client.create(name), stop)
        if response.result == "OK":
            log.info("imap %s: created mailbox %s", self._where, mailbox)
        # NO: it may exist after all (e.g. created meanwhile); a missing one fails the move.

    async def _listen(self, client: _Client, uidvalidity: int, stop: asyncio.Event) -> None:
        """Catch up, then IDLE and catch up again on new mail, until `stop`."""
        s = self.settings
        protocol = client.protocol
        checkpoint = await self._checkpoint_call(self._store.imap_checkpoint, s.mailbox)
        if checkpoint is not None and checkpoint[0] == uidvalidity:
            last_uid = checkpoint[1]
        else:
            if checkpoint is not None:
                log.warning(
                    "imap %s: UIDVALIDITY changed (%d -> %d): reading every message again",
                    self._where, checkpoint[0], uidvalidity,
                )  # fmt: skip
            else:
                log.info("imap %s: first connection: reading every message", self._where)
            last_uid = 0
            await self._checkpoint_call(
                self._store.save_imap_checkpoint, s.mailbox, uidvalidity, 0
            )
        while not stop.is_set():
            protocol.new_mail.clear()
            for uid in await self._search(client, last_uid, stop):
                if stop.is_set():
                    return
                await self._handle(client, uidvalidity, uid, stop)
                last_uid = uid
                self._set_state(True)
            if stop.is_set() or protocol.new_mail.is_set():
                continue
            self._idling = True
            self.caught_up.set()
            await self._idle(client, stop)
            self._set_state(True)

    async def _search(self, client: _Client, last_uid: int, stop: asyncio.Event) -> list[int]:
        criteria = "ALL" if last_uid == 0 else f"UID {last_uid + 1}:*"
        response = await self._call(client, client.uid_search(criteria, charset=None), stop)
        if response.result != "OK":
            raise ImapError(f"UID SEARCH refused: {_text(response)}")
        # "n:*" always includes the highest UID, even when it is below n.
        return [uid for uid in parse_search(response.lines) if uid > last_uid]

    async def _handle(
        self, client: _Client, uidvalidity: int, uid: int, stop: asyncio.Event
    ) -> None:
        """Fetch, hand to the sink, move, log, checkpoint: one message."""
        s = self.settings
        response = await self._call(
            client, client.uid("fetch", str(uid), "(UID BODY.PEEK[])"), stop, timeout=None
        )
        raw = parse_fetch(response.lines, uid) if response.result == "OK" else None
        if raw is None:
            log.info("imap %s uid %d: gone before it was read (moved or deleted)", self._where, uid)
        else:
            origin = MailOrigin(kind="imap", mailbox=s.mailbox, uidvalidity=uidvalidity, uid=uid)
            try:
                disposition: Disposition = await self._sink(raw, origin)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                raise _SinkFailed(
                    f"uid {uid}: the reply pipeline failed: {_describe(exc)}"
                ) from exc
            target = s.failed_mailbox if disposition.outcome == "failed" else s.processed_mailbox
            # Once the sink has answered, the message is finished even if `stop` is set.
            moved = await self._move(client, uid, target, None)
            log.info(
                "imap %s uid %d: %s (%s) -> %s",
                self._where, uid, disposition.outcome, disposition.reason,
                target if moved else f"left in {s.mailbox} (could not move it to {target})",
            )  # fmt: skip
        await self._checkpoint_call(self._store.save_imap_checkpoint, s.mailbox, uidvalidity, uid)

    async def _move(
        self, client: _Client, uid: int, target: str, stop: asyncio.Event | None
    ) -> bool:
        """Move one message; False (logged) when the server refuses."""
        capabilities = client.protocol.capabilities
        name = encode_mailbox(target)
        use_move = "MOVE" in capabilities if self.use_move is None else self.use_move
        if use_move:
            response = await self._call(client, client.uid("move", str(uid), name), stop)
            if response.result != "OK":
                log.warning("imap %s uid %d: MOVE refused: %s", self._where, uid, _text(response))
                return False
            return True
        response = await self._call(client, client.uid("copy", str(uid), name), stop)
        if response.result != "OK":
            log.warning("imap %s uid %d: COPY refused: %s", self._where, uid, _text(response))
            return False
        response = await self._call(
            client, client.uid("store", str(uid), "+FLAGS.SILENT", r"(\Deleted)"), stop
        )
        if response.result != "OK":
            log.warning("imap %s uid %d: STORE refused: %s", self._where, uid, _text(response))
            return False
        if "UIDPLUS" in capabilities:
            response = await self._call(client, client.uid("expunge", str(uid)), stop)
        else:
            response = await self._call(client, client.expunge(), stop)
        if response.result != "OK":
            log.warning("imap %s uid %d: EXPUNGE refused: %s", self._where, uid, _text(response))
            return False
        return True

    async def _idle(self, client: _Client, stop: asyncio.Event) -> None:
        """IDLE until new mail, `idle_timeout`, or `stop`; then leave IDLE (DONE).

        Raises when the server does not answer, refuses, or closes the connection.
        """
        protocol = client.protocol
        if "IDLE" not in protocol.capabilities:
            await self._wait_for(
                [stop.wait(), protocol.lost.wait()], min(self.poll_interval, self.idle_timeout)
            )
            if protocol.lost.is_set():
                raise ConnectionLost("the server closed the connection")
            return
        idle = asyncio.ensure_future(protocol.idle())
        ack = asyncio.ensure_future(protocol.wait_for_idle_response())
        try:
            try:  # wait for the server's "+ idling" (or a refusal)
                await self._call(
                    client, asyncio.wait({idle, ack}, return_when=asyncio.FIRST_COMPLETED), stop
                )
            finally:
                ack.cancel()
            if idle.done():
                raise ImapError(f"IDLE refused: {_text(idle.result())}")
            deadline = self._clock() + self.idle_timeout
            while not (stop.is_set() or protocol.new_mail.is_set()):
                remaining = deadline - self._clock()
                if remaining <= 0:
                    break
                await self._wait_for(
                    [stop.wait(), protocol.new_mail.wait(), protocol.lost.wait(), idle], remaining
                )
                if protocol.lost.is_set():
                    raise ConnectionLost("the server closed the connection")
                if idle.done():
                    raise ImapError(f"the server ended IDLE: {_text(idle.result())}")
            protocol.idle_done()
            timeout = STOP_GRACE if stop.is_set() else self.command_timeout
            response = await self._call(client, asyncio.shield(idle), None, timeout=timeout)
            if response.result != "OK":
                raise ImapError(f"IDLE ended badly: {_text(response)}")
        finally:
            if not idle.done():
                idle.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await idle
            while not protocol.idle_queue.empty():  # pushes were noted by _Protocol
                protocol.idle_queue.get_nowait()

    # --------------------------------------------------------------------------------------
    # the last known state (`record_state`)

    def _set_state(self, ok: bool, detail: str | None = None) -> None:
        state = (ok, None if ok else detail)
        if state != self._state:
            self._state = state
            self._state_changed.set()

    def _state_detail(self, exc: Exception) -> str:
        """What failed, for /healthz's details: the server and a summary of the error (ours
        name the command and quote the server's answer; never the password or a message)."""
        expected = (OSError, TimeoutError, ImapError, aioimaplib.AioImapException)
        what = _describe(exc) if isinstance(exc, expected) else f"unexpected {type(exc).__name__}"
        return f"{self.settings.host}:{self.settings.port}: {what}"[:300]

    async def _report_state(self, stop: asyncio.Event) -> None:
        """Write the state on every change and, unchanged, every `state_heartbeat` seconds
        (in a thread: the store is synchronous), until `stop`."""
        record = self._record_state
        assert record is not None
        loop = asyncio.get_running_loop()
        written: tuple[bool, str | None] | None = None
        next_beat = loop.time()
        failing = False
        while not stop.is_set():
            self._state_changed.clear()
            state = self._state
            if state is not None and (state != written or loop.time() >= next_beat):
                try:
                    await asyncio.to_thread(record, *state)
                except Exception as exc:  # the store is down: said by the rest of the gateway
                    level = logging.DEBUG if failing else logging.WARNING
                    log.log(level, "imap %s: state not recorded: %s", self._where, _describe(exc))
                    failing = True
                else:
                    failing = False
                written = state  # a failed write is tried again at the next heartbeat
                next_beat = loop.time() + self.state_heartbeat
            timeout = None if written is None else max(0.0, next_beat - loop.time())
            await self._wait_for([stop.wait(), self._state_changed.wait()], timeout)

    # --------------------------------------------------------------------------------------
    # plumbing

    async def _call(
        self,
        client: _Client,
        awaitable: Awaitable[T],
        stop: asyncio.Event | None,
        *,
        timeout: float | None = -1.0,
    ) -> T:
        """Await one IMAP operation, but give up when the connection is lost (aioimaplib
        would wait forever), when `stop` is set, or after `timeout` (default:
        `command_timeout`; None: no overall limit)."""
        limit = self.command_timeout if timeout is not None and timeout < 0 else timeout
        task = asyncio.ensure_future(awaitable)
        lost = asyncio.ensure_future(client.protocol.lost.wait())
        waiters: set[asyncio.Future[Any]] = {task, lost}
        stopped = asyncio.ensure_future(stop.wait()) if stop is not None else None
        if stopped is not None:
            waiters.add(stopped)
        try:
            done, _pending = await asyncio.wait(
                waiters, timeout=limit, return_when=asyncio.FIRST_COMPLETED
            )
        except asyncio.CancelledError:
            task.cancel()
            raise
        finally:
            lost.cancel()
            if stopped is not None:
                stopped.cancel()
        if task in done:
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        if lost in done:
            raise ConnectionLost("the server closed the connection")
        if stopped is not None and stopped in done:
            raise _Stopped()
        raise TimeoutError(f"no answer from the IMAP server within {limit} s")

    async def _checkpoint_call(self, call: Callable[..., T], *args: Any) -> T:
        """A checkpoint store call (in a thread); its failure (the database is down) is an
        expected trouble, logged in one line like a network one, not a bug."""
        try:
            return await asyncio.to_thread(call, *args)
        except Exception as exc:
            raise _CheckpointFailed(f"the checkpoint store failed: {_describe(exc)}") from exc

    async def _wait_for(self, awaitables: list[Awaitable[Any]], timeout: float | None) -> None:
        """Wait until one of `awaitables` is done or `timeout` passes (the others are
        cancelled, except tasks that were passed in)."""
        futures = [asyncio.ensure_future(a) for a in awaitables]
        owned = [f for f, a in zip(futures, awaitables, strict=True) if f is not a]
        try:
            await asyncio.wait(futures, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for future in owned:
                future.cancel()

    async def _pause(self, stop: asyncio.Event, delay: float) -> None:
        """The backoff pause (the injectable `sleep`), cut short by `stop`."""
        await self._wait_for([self._sleep(delay), stop.wait()], None)

    def _backoff(self, failures: int) -> float:
        """Capped exponential backoff with jitter (50-100 % of the step)."""
        step = min(self.max_backoff, self.min_backoff * 2.0 ** min(failures - 1, 30))
        return step * (0.5 + 0.5 * self._rng.random())

    def _log_failure(self, exc: Exception, delay: float) -> None:
        expected = (
            OSError, TimeoutError, ImapError, aioimaplib.AioImapException, _SinkFailed,
            _CheckpointFailed,
        )
        if isinstance(exc, expected):
            log.warning("imap %s: %s; reconnecting in %.1f s", self._where, _describe(exc), delay)
        else:  # a bug: say so loudly, but keep listening
            log.error(
                "imap %s: unexpected error; reconnecting in %.1f s",
                self._where, delay, exc_info=exc,
            )  # fmt: skip

    async def _close(self, client: _Client, *, quick: bool) -> None:
        """LOG OUT politely when the connection is idle, then close it."""
        protocol = client.protocol
        timeout = STOP_GRACE if quick else min(self.command_timeout, 5.0)
        try:
            if (
                protocol.transport is not None
                and not protocol.lost.is_set()
                and protocol.state in (aioimaplib.NONAUTH, aioimaplib.AUTH, aioimaplib.SELECTED)
                and protocol.pending_sync_command is None
                and not protocol.pending_async_commands
            ):
                await self._call(client, client.logout(), None, timeout=timeout)
        except Exception as exc:
            log.debug("imap %s: logout: %s", self._where, _describe(exc))
        finally:
            task = client._client_task
            if not task.done():
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            transport = protocol.transport
            if transport is not None and not protocol.lost.is_set():
                transport.abort()  # not close(): a TLS close waits for a peer that may be gone
                await self._wait_for([protocol.lost.wait()], 1.0)
            for leftover in list(protocol.tasks) + list(client.tasks):
                if not leftover.done():
                    leftover.cancel()
                elif not leftover.cancelled():
                    leftover.exception()  # retrieved: no "exception never retrieved" later
