"""Types shared by the reply readers (IMAP listener, SMTP/LMTP ingress) and the reply pipeline.

A reader hands each raw email to a `ReplySink` together with a `MailOrigin` saying where it came
from; the sink answers with a `Disposition`, which the reader acts on (the IMAP listener moves
the message to Processed or Failed; the SMTP/LMTP ingress answers the sending server).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

Outcome = Literal["processed", "ignored", "failed"]


@dataclass(frozen=True)
class MailOrigin:
    """Where a raw email came from (for the log line and the processed-email record)."""

    kind: Literal["imap", "smtp", "lmtp"]
    mailbox: str | None = None  # IMAP mailbox name
    uidvalidity: int | None = None
    uid: int | None = None
    peer: str | None = None  # SMTP/LMTP client address


@dataclass(frozen=True)
class Disposition:
    """What the pipeline did with an email: `outcome`, and `reason` (for the log and Failed).

    `kept`: the email is answered as handled (the SMTP/LMTP ingress accepts it, the IMAP
    listener files it): a failed email is then in the store's Failed list (an agent's whole;
    a stranger's cut to a size, or — past the per-sender daily count — deliberately not kept,
    with "not kept" in `reason`); False when it could not be recorded at all (the ingress then
    answers 451 and the sending server keeps it)."""

    outcome: Outcome
    reason: str
    kept: bool = False


class ReplySink(Protocol):
    """The reply pipeline: takes one raw email, returns its disposition.

    Idempotent by content: handing it the same email again returns the earlier disposition.
    Raises when it could not decide (e.g. the store is unavailable): the reader must keep the
    email and offer it again later.
    """

    async def __call__(self, raw: bytes, origin: MailOrigin) -> Disposition: ...
