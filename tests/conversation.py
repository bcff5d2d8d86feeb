"""A salmon-style conversation driver over the REAL inbound flow.

Each `say` hands one text to `gateway.inbound.handle` (`gateway.flows.text_in.InboundService`)
of a real `Gateway` on a temporary SQLite store: exactly what `POST /sms/inbound` runs after
the signature check and the form parsing (keywords, the dialogue, held texts, emails queued in
the outbox, all in one transaction). The municipalities are the test's own `Directory`. What
happened is read back from the store: the resident's row, the held texts, the resident emails
in the outbox. Tests read like scripts (the `conversation` fixture of conftest.py makes one):

    convo = conversation(directory)
    convo.say("+16135550100", "There is a pothole on Bank St", expect="Which city")
    convo.say("+16135550100", "otawa", expect="Ottawa")
    assert convo.delivered("+16135550100") == [("ottawa", ["There is a pothole on Bank St"])]

`expect` is a substring (case-insensitive) or a regular expression (a `re.Pattern`, or a string
that is not found as a substring but matches as a regex) checked against the replies of that turn.
`silent=True` asserts that nothing was texted back.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa

from gateway.app import DirectoryHolder, Gateway
from gateway.flows.text_in import Outcome
from gateway.rules.dialogue import DialogueState
from gateway.rules.municipalities import Directory
from gateway.rules.resident_email import MediaRef, ResidentEmail
from gateway.sms.base import InboundText
from gateway.store.schema import messages
from tests.gateway_fixtures import migrated_gateway

PICTURE = MediaRef(url="https://api.twilio.com/media/ME1", content_type="image/jpeg")


class GivenDirectory(DirectoryHolder):
    """The gateway's directory holder, holding a `Directory` built by the test (no map file)."""

    def __init__(self, directory: Directory) -> None:  # no map file to load: no super()
        self._given = directory

    def __call__(self) -> Directory:
        return self._given

    def reload(self) -> Directory:
        return self._given


@dataclass(frozen=True)
class Turn:
    """What one text caused: the flow's own `Outcome`."""

    text: str
    outcome: Outcome

    @property
    def replies(self) -> tuple[str, ...]:
        return self.outcome.replies

    @property
    def reply(self) -> str:
        """All replies of the turn, one per line ("" if none)."""
        return "\n".join(self.replies)

    @property
    def step(self) -> str:
        """What the dialogue did: held | answered | delivered | fallback | keyword."""
        return self.outcome.step

    @property
    def keyword(self) -> str | None:
        return self.outcome.keyword


class Conversation:
    """Drives texts from several phones through a real gateway's inbound flow."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self._sids = itertools.count(1)
        self._engine = sa.create_engine(gateway.settings.database)

    @classmethod
    def open(cls, folder: Path, directory: Directory) -> Conversation:
        """A gateway over a freshly migrated SQLite store in `folder` whose municipalities
        are `directory`. Close it with `close()`."""
        gateway: Gateway = migrated_gateway(folder)
        gateway.directory = GivenDirectory(directory)  # before `gateway.inbound` is built
        return cls(gateway)

    def close(self) -> None:
        self._engine.dispose()
        self.gateway.close()

    def say(
        self,
        phone: str,
        text: str,
        expect: str | re.Pattern[str] | None = None,
        from_city: str | None = None,
        from_state: str | None = None,
        *,
        has_media: bool = False,
        silent: bool = False,
    ) -> Turn:
        """Send ``text`` from ``phone``; check the replies against ``expect`` / ``silent``."""
        inbound = InboundText(
            sid=f"SM{next(self._sids):032d}",
            phone=phone,
            to="31100",
            body=text,
            received_at=datetime.now(UTC),
            media=(PICTURE,) if has_media else (),
            from_city=from_city,
            from_state=from_state,
        )
        outcome = self.gateway.inbound.handle(inbound)
        assert not outcome.duplicate, outcome
        for reply in outcome.replies:
            assert len(reply) <= 160, f"reply over 160 characters: {reply!r}"
        turn = Turn(text=text, outcome=outcome)
        _check(turn, expect, silent)
        return turn

    # -- what happened, per phone, as the store has it ---------------------------------------

    def state(self, phone: str) -> DialogueState:
        """The resident's dialogue state as stored (a fresh one for an unknown number)."""
        with self.gateway.store.transaction() as tx:
            resident = tx.get_resident(phone)
        return DialogueState.from_dict(resident.dialogue) if resident else DialogueState()

    def municipality(self, phone: str) -> str | None:
        with self.gateway.store.transaction() as tx:
            resident = tx.get_resident(phone)
        return resident.municipality_id if resident else None

    def held(self, phone: str) -> list[str]:
        """The texts kept while the municipality is asked for, oldest first."""
        query = (
            sa.select(messages.c.body)
            .where(messages.c.phone == phone, messages.c.held.is_(True))
            .order_by(messages.c.received_at, messages.c.id)
        )
        with self._engine.connect() as conn:
            return [str(body) for body in conn.execute(query).scalars()]

    def delivered(self, phone: str) -> list[tuple[str, list[str]]]:
        """Each email queued to a municipality for this phone: (municipality id, its texts)."""
        return [(m, texts) for m, texts in self._emails(phone) if m is not None]

    def fallback(self, phone: str) -> list[list[str]]:
        """The texts of each email queued to the fallback mailbox (municipality unknown)."""
        return [texts for m, texts in self._emails(phone) if m is None]

    def _emails(self, phone: str) -> list[tuple[str | None, list[str]]]:
        out: list[tuple[str | None, list[str]]] = []
        for item in self.gateway.store.list_outbox(None):  # oldest first
            if item.kind != "email" or item.payload.get("type", "resident") != "resident":
                continue
            email = ResidentEmail.from_dict(item.payload)
            if email.resident_e164 != phone:
                continue
            with self.gateway.store.transaction() as tx:
                conversation = tx.get_conversation(email.conversation_id)
            assert conversation is not None, email.conversation_id
            out.append((conversation.municipality_id, [t.body for t in email.texts]))
        return out


def _check(turn: Turn, expect: str | re.Pattern[str] | None, silent: bool) -> None:
    got = turn.reply
    if silent:
        assert not turn.replies, f"after {turn.text!r}: expected no reply, got {got!r}"
    if expect is None:
        return
    assert turn.replies, f"after {turn.text!r}: expected a reply matching {expect!r}, got none"
    if isinstance(expect, re.Pattern):
        ok = expect.search(got) is not None
    else:
        ok = expect.casefold() in got.casefold()
        if not ok:
            try:
                ok = re.search(expect, got) is not None
            except re.error:
                ok = False
    assert ok, f"after {turn.text!r}: expected a reply matching {expect!r}, got {got!r}"
