"""The sandbox mail server: an SMTP server (aiosmtpd) that keeps each email as a file.

Every message is saved once per recipient, as
`<directory>/<recipient address>/<UTC timestamp>-<n>.eml`, so each city's mailbox is a
folder you can open in any mail client. One INFO line per saved copy names the mailbox
and the subject (phone numbers masked), never the body.

Runs on the caller's asyncio loop: `await server.start()` … `await server.stop()`
(or `async with SandboxMailServer(...) as server:`); `server.port` is the bound port.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import re
from datetime import UTC, datetime
from email.parser import BytesHeaderParser
from email.policy import default as default_policy
from pathlib import Path
from types import TracebackType
from typing import Any

from aiosmtpd.smtp import SMTP

from gateway.mail.loopserver import LoopSmtpServer

log = logging.getLogger(__name__)

DATA_SIZE_LIMIT = 32 * 1024 * 1024

_UNSAFE = re.compile(r"[^a-z0-9@._+-]+")
_PHONE = re.compile(r"\+?\(?\d[\d ().-]{5,}\d")


def mailbox_folder(address: str) -> str:
    """The folder name for a recipient address: lower case, only [a-z0-9@._+-],
    never empty, never "." or ".." (so it can't leave the sandbox directory)."""
    name = _UNSAFE.sub("_", address.strip().strip("<>").lower()).strip(".")
    return name or "_"


def mailbox_messages(directory: Path, address: str) -> list[Path]:
    """The .eml files saved for `address`, oldest first."""
    folder = directory / mailbox_folder(address)
    if not folder.is_dir():
        return []
    return sorted(folder.glob("*.eml"))


def _mask_numbers(text: str) -> str:
    def mask(match: re.Match[str]) -> str:
        digits = re.sub(r"\D", "", match.group(0))
        return f"***{digits[-4:]}" if len(digits) >= 7 else match.group(0)

    return _PHONE.sub(mask, text)


class SaveToFolders:
    """aiosmtpd handler: accept every recipient, save one .eml per recipient."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._counter = itertools.count(1)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        data: bytes = envelope.original_content or envelope.content or b""
        mail_from: str = envelope.mail_from or ""
        recipients: list[str] = list(envelope.rcpt_tos)
        subject = _subject(data)
        for recipient in recipients:
            path = await asyncio.to_thread(self._save, recipient, mail_from, data)
            log.info(
                "sandbox mail: saved for %s: %s (%s)",
                recipient,
                _mask_numbers(subject),
                path.name,
            )
        return "250 Message accepted for delivery"

    def _save(self, recipient: str, mail_from: str, data: bytes) -> Path:
        folder = self.directory / mailbox_folder(recipient)
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)  # (the owner's only)
        newline = b"\r\n" if b"\r\n" in data[:4096] else b"\n"
        trace = (
            b"Return-Path: <" + _header_safe(mail_from) + b">" + newline
            + b"Delivered-To: " + _header_safe(recipient) + newline
        )  # fmt: skip
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        while True:
            path = folder / f"{stamp}-{next(self._counter)}.eml"
            temporary = folder / f".{path.name}.tmp"
            try:
                fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                continue
            with os.fdopen(fd, "wb") as file:
                file.write(trace + data)
            if path.exists():  # another server wrote this name: try the next one
                temporary.unlink()
                continue
            temporary.replace(path)  # readers never see half a message
            return path


def _header_safe(value: str) -> bytes:
    return re.sub(r"[\x00-\x1f\x7f]", "", value).encode("utf-8", "replace")


def _subject(data: bytes) -> str:
    try:
        headers = BytesHeaderParser(policy=default_policy).parsebytes(data)
        return " ".join(str(headers.get("Subject", "")).split()) or "(no subject)"
    except Exception:  # a broken header must not lose the message
        return "(unreadable subject)"


class SandboxMailServer(LoopSmtpServer):
    """An SMTP server on `host:port` (port 0: any free port) saving mail under `directory`."""

    name = "sandbox mail server"

    def __init__(self, directory: Path, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(host, port)
        self.directory = Path(directory)
        self.handler = SaveToFolders(self.directory)

    def make_protocol(self, loop: asyncio.AbstractEventLoop) -> SMTP:
        return SMTP(
            self.handler,
            hostname="sandbox.sms311.invalid",
            data_size_limit=DATA_SIZE_LIMIT,
            loop=loop,
        )

    async def start(self) -> None:
        """Bind and serve on the running loop."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        if await self._listen():
            log.info(
                "sandbox mail server on %s:%d, saving to %s", self.host, self.port, self.directory
            )

    async def __aenter__(self) -> SandboxMailServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()
