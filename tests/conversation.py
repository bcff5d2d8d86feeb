"""A salmon-style conversation driver over keywords + dialogue (pure: no store, no HTTP).

It plays the webhook's part the way `gateway/inbound.py` does: keywords first (STOP marks the
number opted out and answers; START clears it; HELP/INFO answer; CITY/VILLE go to the dialogue),
then `dialogue.step`, whose actions it carries out in memory. Tests read like scripts:

    convo = Conversation(directory)
    convo.say("+16135550100", "There is a pothole on Bank St", expect="Which city")
    convo.say("+16135550100", "otawa", expect="Ottawa")
    assert convo.delivered("+16135550100") == [("ottawa", ["There is a pothole on Bank St"])]

`expect` is a substring (case-insensitive) or a regular expression (a `re.Pattern`, or a string
that is not found as a substring but matches as a regex) checked against the replies of that turn.
`silent=True` asserts that nothing was texted back.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from gateway.rules import dialogue, keywords
from gateway.rules.dialogue import Action, DialogueState, DirectoryView, Inbound
from gateway.rules.keywords import Keyword


@dataclass(frozen=True)
class Turn:
    """What one text caused."""

    text: str
    replies: tuple[str, ...]
    actions: tuple[Action, ...]
    keyword: Keyword | None

    @property
    def reply(self) -> str:
        """All replies of the turn, one per line ("" if none)."""
        return "\n".join(self.replies)


@dataclass
class Resident:
    """What the gateway would store for one phone number."""

    state: DialogueState = field(default_factory=DialogueState)
    opted_out: bool = False
    held: list[str] = field(default_factory=list)
    delivered: list[tuple[str, list[str]]] = field(default_factory=list)
    fallback: list[list[str]] = field(default_factory=list)
    suppressed: list[str] = field(default_factory=list)  # replies not sent (opted out)
    turns: list[Turn] = field(default_factory=list)


class Conversation:
    """Drives texts from several phones through keywords and the dialogue."""

    def __init__(self, directory: DirectoryView, *, round_trip_state: bool = True) -> None:
        self.directory = directory
        self.round_trip_state = round_trip_state  # store the state as JSON between turns
        self.residents: dict[str, Resident] = {}

    def resident(self, phone: str) -> Resident:
        return self.residents.setdefault(phone, Resident())

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
        resident = self.resident(phone)
        keyword = None if has_media else keywords.classify(text)
        if keyword is not None and keyword.kind != "city":
            turn = self._keyword(resident, text, keyword)
        else:
            turn = self._dialogue(resident, text, from_city, from_state, has_media)
        resident.turns.append(turn)
        _check(turn, expect, silent)
        return turn

    def _keyword(self, resident: Resident, text: str, keyword: Keyword) -> Turn:
        language = keyword.language_or(resident.state.language)
        resident.state = replace(resident.state, language=language)
        if keyword.kind == "stop":
            resident.opted_out = True
            replies = [keywords.reply("stop", language)]  # the one message after STOP
        elif keyword.kind == "start":
            resident.opted_out = False
            replies = [keywords.reply("start", language)]
        elif resident.opted_out:
            resident.suppressed.append(keywords.reply(keyword.kind, language))
            replies = []
        else:
            replies = [keywords.reply(keyword.kind, language)]
        return Turn(text=text, replies=tuple(replies), actions=(), keyword=keyword)

    def _dialogue(
        self,
        resident: Resident,
        text: str,
        from_city: str | None,
        from_state: str | None,
        has_media: bool,
    ) -> Turn:
        state = resident.state
        if self.round_trip_state:
            state = DialogueState.from_dict(state.to_dict())
        inbound = Inbound(
            text=text,
            from_city=from_city,
            from_state=from_state,
            has_media=has_media,
            opted_out=resident.opted_out,
        )
        state, actions = dialogue.step(state, inbound, self.directory)
        replies: list[str] = []
        for action in actions:
            if isinstance(action, dialogue.Hold):
                resident.held.append(text)
            elif isinstance(action, dialogue.Reply):
                assert len(action.text) <= 160, f"reply over 160 characters: {action.text!r}"
                if resident.opted_out:
                    resident.suppressed.append(action.text)
                else:
                    replies.append(action.text)
            elif isinstance(action, dialogue.Deliver):
                assert self.directory.get(action.municipality_id) is not None, action
                texts = [*resident.held, *([text] if action.include_current else [])]
                resident.held.clear()
                if texts:
                    resident.delivered.append((action.municipality_id, texts))
            elif isinstance(action, dialogue.Fallback):
                if resident.held:
                    resident.fallback.append(list(resident.held))
                resident.held.clear()
        resident.state = state
        return Turn(text=text, replies=tuple(replies), actions=tuple(actions), keyword=None)

    # -- what happened, per phone ----------------------------------------------------------

    def state(self, phone: str) -> DialogueState:
        return self.resident(phone).state

    def held(self, phone: str) -> list[str]:
        return list(self.resident(phone).held)

    def delivered(self, phone: str) -> list[tuple[str, list[str]]]:
        return list(self.resident(phone).delivered)

    def fallback(self, phone: str) -> list[list[str]]:
        return list(self.resident(phone).fallback)

    def municipality(self, phone: str) -> str | None:
        return self.resident(phone).state.municipality_id


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
