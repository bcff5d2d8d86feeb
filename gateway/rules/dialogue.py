"""The resident state machine: which municipality does this phone number live in? (no I/O)

``step(state, inbound, directory) -> (new_state, actions)`` decides what one inbound text does.
The caller stores the state (``to_dict``/``from_dict``, JSON-safe) per phone number and carries
out the actions, in order:

- ``Hold()``: keep this text; its municipality is not known yet.
- ``Reply(text)``: send this SMS back (always <= 160 characters, in the resident's language).
- ``Deliver(municipality_id, include_current)``: send every held text, and this one if
  ``include_current``, to that municipality. Emitted whenever the municipality is settled, even
  if nothing is held (then only the current text, or nothing, goes out).
- ``Fallback()``: send every held text to the fallback mailbox (a ``Hold()`` earlier in the same
  step has already added the current text to them).

Behaviour (the rules of DESIGN.md, "Resident side"):

- Known municipality, nothing asked: a text is delivered there at once, without a reply.
- Unknown municipality: the first text is held and the resident is asked for their city or
  postal code; when Twilio's FromCity/FromState give ``directory.suggest`` a municipality, the
  question offers it instead ("Are you in Ottawa, ON? Reply YES, or …"; YES/Y/1/OUI/O accept,
  NO/N/NON refuse, a name or postal code answers directly).
  Exception: a first text that *is* an answer — exactly a municipality name or alias, or a postal
  code, optionally with a province ("Ottawa", "Victoria BC", "K1A 0B1") — is taken as the answer,
  not held.
- An answer that matches saves the municipality, confirms it ("Thanks! Your messages now go to
  Ottawa, ON. Text CITY to change it.") and delivers the held texts. An ambiguous answer gets a
  numbered choice; the resident answers by number, by province ("BC", "Québec") or by a better
  name. A wrong answer is asked again; after ``MAX_ATTEMPTS`` unsuccessful turns the resident
  gets a helpful message and the held texts go to the fallback mailbox; the state returns to idle
  without a municipality, so a later text starts the question again.
- Texts are never lost while asking: a text that is not an answer (with media, longer than
  ``MAX_ANSWER_WORDS`` words or ``MAX_ANSWER_CHARS`` characters, or with two or more words that
  are neither part of the matched names nor filler such as "I live in" / "j'habite à") is held
  too (or delivered with the answer that settles the municipality). Each such text also counts as
  an unsuccessful turn, so a resident who never answers still reaches a human.
- CITY / VILLE (whole message) at any time starts the question again, in the keyword's language.
  The saved municipality stays until a new one is chosen; if the new question fails
  ``MAX_ATTEMPTS`` times, the old one is kept (and any texts held meanwhile go there).
- STOP/START/HELP/INFO belong to the caller (``gateway.rules.keywords``); given one, ``step``
  changes nothing and returns no action.
- The language ("en"/"fr") is detected from every text (``language.detect``, the kept language
  as default, so names and numbers do not switch it) and kept in the state; CITY/VILLE set it.
- ``Inbound.opted_out``: after STOP nothing may be sent, so no question can be asked. A text from
  an opted-out resident goes to the saved municipality, or else (with any held texts) to the
  fallback mailbox; there is never a ``Reply``.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, Protocol

from rapidfuzz import fuzz

from gateway.rules import keywords, prompts
from gateway.rules.language import Language, detect
from gateway.rules.municipalities import (
    PROVINCES,
    Ambiguous,
    Match,
    MatchResult,
    Municipality,
    NoMatch,
    normalize,
)

Stage = Literal["idle", "asking", "choosing", "confirming_suggestion"]
STAGES: tuple[Stage, ...] = ("idle", "asking", "choosing", "confirming_suggestion")

STATE_VERSION = 1
MAX_ATTEMPTS = 3  # unsuccessful turns before giving up
MAX_ANSWER_WORDS = 12  # longer texts are messages, never tried as answers
MAX_ANSWER_CHARS = 100
_MAX_NAME_TOKENS = 5  # longest run of words tried as a place inside an answer
_FUZZY_NAME_WORD = 80  # rapidfuzz ratio from which a misspelt word counts as part of a name


class DirectoryView(Protocol):
    """What the dialogue needs of ``gateway.rules.municipalities.Directory``."""

    def get(self, municipality_id: str, /) -> Municipality | None: ...

    def match(self, text: str, /) -> MatchResult: ...

    def suggest(self, city: str | None, province: str | None, /) -> Municipality | None: ...


# -- state, input, actions -----------------------------------------------------------------


@dataclass(frozen=True)
class DialogueState:
    """One resident's dialogue state (stored as JSON per phone number)."""

    municipality_id: str | None = None  # the saved choice
    language: Language = "en"
    stage: Stage = "idle"
    attempts: int = 0  # unsuccessful turns of the current question
    candidates: tuple[str, ...] = ()  # ids of the numbered choice, in the order shown
    suggested_id: str | None = None  # the municipality offered from FromCity/FromState

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict; ``from_dict`` reads it back."""
        return {
            "v": STATE_VERSION,
            "municipality_id": self.municipality_id,
            "language": self.language,
            "stage": self.stage,
            "attempts": self.attempts,
            "candidates": list(self.candidates),
            "suggested_id": self.suggested_id,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> DialogueState:
        """Read ``to_dict``'s output. Anything else ({} / None / another version / garbage)
        gives a fresh state; a bad field on its own falls back to its default."""
        if not isinstance(data, Mapping) or data.get("v") != STATE_VERSION:
            return cls()
        municipality_id = data.get("municipality_id")
        stage = data.get("stage")
        attempts = data.get("attempts")
        candidates = data.get("candidates")
        suggested_id = data.get("suggested_id")
        language = data.get("language")
        return cls(
            municipality_id=municipality_id if isinstance(municipality_id, str) else None,
            language=prompts.as_language(language if isinstance(language, str) else None),
            stage=stage if stage in STAGES else "idle",
            attempts=(
                attempts
                if isinstance(attempts, int) and not isinstance(attempts, bool) and attempts >= 0
                else 0
            ),
            candidates=(
                tuple(c for c in candidates if isinstance(c, str))
                if isinstance(candidates, list)
                else ()
            ),
            suggested_id=suggested_id if isinstance(suggested_id, str) else None,
        )


@dataclass(frozen=True)
class Inbound:
    """One text from the resident, as the dialogue sees it."""

    text: str
    from_city: str | None = None  # Twilio FromCity / FromState: a hint, often absent or wrong
    from_state: str | None = None
    has_media: bool = False
    opted_out: bool = False  # the resident sent STOP: nothing may be texted back


@dataclass(frozen=True)
class Hold:
    """Keep the current text until the municipality is known."""


@dataclass(frozen=True)
class Reply:
    """Text this back to the resident."""

    text: str


@dataclass(frozen=True)
class Deliver:
    """Send the held texts (and the current one if ``include_current``) to this municipality."""

    municipality_id: str
    include_current: bool = True


@dataclass(frozen=True)
class Fallback:
    """Send the held texts to the fallback mailbox: the municipality stays unknown."""


Action = Hold | Reply | Deliver | Fallback


# -- words ------------------------------------------------------------------------------------


def _fold(text: str) -> str:
    """Lower case without accents: "Î.-P.-É." -> "i.-p.-e."."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def _words(text: str) -> list[str]:
    """Words, hyphens and apostrophes splitting too: "J'habite à St-Jérôme" -> [j, habite, a, st,
    jerome]."""
    return [w for w in re.split(r"[\W_]+", _fold(text)) if w]


def _set(words: str) -> frozenset[str]:
    return frozenset(words.split())


def _province_table() -> dict[tuple[str, ...], str]:
    """Ways to write each province (as ``normalize`` words) -> its two-letter code."""
    return {
        tuple(normalize(spelling).split()): code
        for code, spellings in PROVINCES.items()
        for spelling in (code, *spellings)
    }


_PROVINCES = _province_table()
_LONGEST_PROVINCE = max(len(k) for k in _PROVINCES)

# Words that may surround an answer without making it a message.
_FILLER = _set(
    """
    i im i'm am m live living lives in at from to my our the of is its it s a an near
    city town village municipality township county district region area province canada
    postal code zip number yes yeah yep y ok okay no nope n please thanks thank you thx hi hello
    hey and or actually meant mean sorry oops oh well sure think
    j je habite demeure reste suis vis vit vivons nous sommes a au aux en dans de du des d la le
    les l ville municipalite village canton province code postal numero oui ouais o non merci
    svp stp bonjour allo salut c est ca et ou ma mon notre plutot fait desole pardon oups
    st ste saint sainte mount mt
    """
)
_PROVINCE_WORDS = frozenset(w for key in _PROVINCES for part in key for w in _words(part))
_POSTAL_WORD = re.compile(r"^(?:[a-z]\d[a-z]|\d[a-z]\d|[a-z]\d[a-z]\d[a-z]\d)$")
_BARE_POSTAL = re.compile(r"^\s*[A-Za-z]\d[A-Za-z](?:[ -]?\d[A-Za-z]\d)?\s*$")

_YES = _set("yes y yeah yep yup ok okay sure correct right 1 oui o ouais ouin exact exactement")
_NO = _set("no n nope nah non pas")
_POLITE = _set("please thanks thank you thx merci svp stp c est ca that s it")


def _provinces_in(text: str) -> tuple[set[str], list[str]]:
    """Province codes mentioned in ``text`` and its other (``normalize``d) words.

    Short spellings that are also words ("on", "que", "ont", "man") count only when nothing but
    filler follows them: "Ottawa ON" names Ontario, "Pothole on Bank" does not."""
    tokens = normalize(text).split()
    found: set[str] = set()
    rest: list[str] = []
    i = 0
    while i < len(tokens):
        for size in range(min(_LONGEST_PROVINCE, len(tokens) - i), 0, -1):
            code = _PROVINCES.get(tuple(tokens[i : i + size]))
            if code is None:
                continue
            at_end = all(t in _FILLER for t in tokens[i + size :])
            if size == 1 and len(tokens[i]) <= 3 and not at_end:
                continue
            found.add(code)
            i += size
            break
        else:
            rest.append(tokens[i])
            i += 1
    return found, rest


def _answer_word(text: str) -> Literal["yes", "no"] | None:
    words = _words(text)
    if not words or not all(w in _YES | _NO | _POLITE for w in words):
        return None
    yes = any(w in _YES for w in words)
    no = any(w in _NO for w in words)
    if yes == no:
        return None
    return "yes" if yes else "no"


def _name_words(municipalities: Iterable[Municipality]) -> set[str]:
    names: set[str] = set()
    for m in municipalities:
        for name in (m.name, m.name_fr or "", *m.aliases):
            names.update(_words(name))
    return names


def _leftover(text: str, municipalities: Iterable[Municipality], *, fuzzy: bool) -> list[str]:
    """The words of ``text`` that are neither part of these municipalities' names (misspelt
    ones too if ``fuzzy``), nor a province, postal code, number or filler."""
    names = _name_words(municipalities)
    rest = []
    for word in _words(text):
        if (
            word in names
            or word in _FILLER
            or word in _PROVINCE_WORDS
            or word.isdigit()
            or _POSTAL_WORD.match(word)
        ):
            continue
        if fuzzy and len(word) >= 4 and any(
            fuzz.ratio(word, name) >= _FUZZY_NAME_WORD for name in names
        ):
            continue
        rest.append(word)
    return rest


def _is_pure_answer(text: str, municipalities: Sequence[Municipality]) -> bool:
    """Only a place: a postal code, or these municipalities' exact names (with a province or
    filler words around them), nothing else. Decides whether a first text is an answer."""
    if _BARE_POSTAL.match(text):
        return True
    names = _name_words(municipalities)
    words = _words(text)
    has_name = any(w in names and w not in _FILLER for w in words)
    return has_name and not _leftover(text, municipalities, fuzzy=False)


def _is_message(text: str, has_media: bool) -> bool:
    """Clearly a message, not an answer: media, or too long to be a place."""
    return has_media or len(text) > MAX_ANSWER_CHARS or len(text.split()) > MAX_ANSWER_WORDS


# -- matching an answer ---------------------------------------------------------------------


def _lookup(text: str, directory: DirectoryView) -> MatchResult:
    """``directory.match``; if it finds nothing, a place named inside the answer ("actually
    Kanata"); an ambiguous result narrowed by a province named anywhere in the text."""
    provinces, rest = _provinces_in(text)
    result = directory.match(text)
    if isinstance(result, NoMatch):
        result = _lookup_within(rest, directory)
    if isinstance(result, Ambiguous) and provinces:
        narrowed = tuple(c for c in result.candidates if c.province in provinces)
        if len(narrowed) == 1:
            return Match(narrowed[0], via="name")
        if narrowed:
            return Ambiguous(narrowed)
    return result


def _lookup_within(tokens: Sequence[str], directory: DirectoryView) -> MatchResult:
    """A place named inside a short answer ("actually Kanata", "oops, Laval please"): the
    longest run of words that the directory matches *exactly* by name, alias or postal code."""
    for size in range(min(len(tokens), _MAX_NAME_TOKENS), 0, -1):
        for start in range(len(tokens) - size + 1):
            run = tokens[start : start + size]
            if all(t in _FILLER for t in run):
                continue
            phrase = " ".join(run)
            result = directory.match(phrase)
            involved = _involved(result)
            if involved and _is_pure_answer(phrase, involved):
                return result
    return NoMatch()


# -- the machine ------------------------------------------------------------------------------


Step = tuple[DialogueState, list[Action]]


def step(state: DialogueState, inbound: Inbound, directory: DirectoryView) -> Step:
    """Decide what one inbound text does; see the module docstring for the rules."""
    text = inbound.text or ""
    keyword = None if inbound.has_media else keywords.classify(text)
    if keyword is not None:
        if keyword.kind != "city":
            return state, []
        language = keyword.language_or(state.language)
        if inbound.opted_out:  # nothing may be asked: drop any question in progress
            idle = replace(
                state, language=language, stage="idle", attempts=0, candidates=(), suggested_id=None
            )
            return idle, []
        asking = replace(
            state, language=language, stage="asking", attempts=0, candidates=(), suggested_id=None
        )
        return asking, [Reply(prompts.ask_city(language))]

    if text.strip():
        state = replace(state, language=detect(text, state.language))
    saved = directory.get(state.municipality_id) if state.municipality_id else None
    if state.municipality_id and saved is None:  # gone from the map: ask again
        state = replace(state, municipality_id=None, stage="idle")

    if inbound.opted_out:
        return _opted_out(state, saved)
    if state.stage == "idle":
        if saved is not None:
            if not text.strip() and not inbound.has_media:
                return state, []
            return state, [Deliver(saved.id, include_current=True)]
        return _first_text(state, inbound, directory)
    if state.stage == "confirming_suggestion":
        return _confirming(state, inbound, directory)
    if state.stage == "choosing":
        return _choosing(state, inbound, directory)
    return _asking(state, inbound, directory)


def _opted_out(state: DialogueState, saved: Municipality | None) -> Step:
    idle = replace(state, stage="idle", attempts=0, candidates=(), suggested_id=None)
    if saved is not None:
        return idle, [Deliver(saved.id, include_current=True)]
    return idle, [Hold(), Fallback()]


def _first_text(state: DialogueState, inbound: Inbound, directory: DirectoryView) -> Step:
    """Unknown municipality, nothing asked yet."""
    text = inbound.text or ""
    language = state.language
    fresh = replace(state, attempts=0, candidates=(), suggested_id=None)
    if not text.strip() and not inbound.has_media:
        return replace(fresh, stage="asking"), [Reply(prompts.ask_city(language))]
    if not _is_message(text, inbound.has_media):
        result = _lookup(text, directory)
        involved = _involved(result)
        if involved and _is_pure_answer(text, involved):
            return _answered(replace(fresh, stage="asking"), result, directory, inbound)
    actions: list[Action] = [Hold()]
    suggestion = (
        directory.suggest(inbound.from_city, inbound.from_state)
        if (inbound.from_city or inbound.from_state)
        else None
    )
    if suggestion is not None:
        asking = replace(fresh, stage="confirming_suggestion", suggested_id=suggestion.id)
        actions.append(Reply(prompts.suggest(language, prompts.label(suggestion, language))))
        return asking, actions
    actions.append(Reply(prompts.ask_city_first(language)))
    return replace(fresh, stage="asking"), actions


def _involved(result: MatchResult) -> tuple[Municipality, ...]:
    if isinstance(result, Match):
        return (result.municipality,)
    if isinstance(result, Ambiguous):
        return result.candidates
    return ()


def _confirming(state: DialogueState, inbound: Inbound, directory: DirectoryView) -> Step:
    """We asked "Are you in Ottawa, ON?"."""
    suggested = directory.get(state.suggested_id) if state.suggested_id else None
    if suggested is None:
        return _asking(replace(state, stage="asking", suggested_id=None), inbound, directory)
    text = inbound.text or ""
    if not _is_message(text, inbound.has_media):
        answer = _answer_word(text)
        if answer == "yes":
            return _settle(state, suggested, include_current=False)
        if answer == "no":
            asking = replace(state, stage="asking", suggested_id=None)
            return asking, [Reply(prompts.ask_city_after_no(state.language))]
    return _asking(state, inbound, directory, reoffer=suggested)


def _choosing(state: DialogueState, inbound: Inbound, directory: DirectoryView) -> Step:
    """We sent a numbered choice; ``state.candidates`` are the ids in the order shown."""
    shown = [m for m in (directory.get(c) for c in state.candidates) if m is not None]
    if len(shown) != len(state.candidates) or not shown:
        return _asking(replace(state, stage="asking", candidates=()), inbound, directory)
    text = (inbound.text or "").strip()
    if not _is_message(text, inbound.has_media):
        number = re.fullmatch(r"#?\s*(\d{1,2})\s*[.)]?", text)
        if number:
            index = int(number.group(1))
            if 1 <= index <= len(shown):
                return _settle(state, shown[index - 1], include_current=False)
            return _fail(state, inbound, directory, held=False, choices=shown)
        provinces, rest = _provinces_in(text)
        if provinces and not [t for t in rest if t not in _FILLER]:
            picked = tuple(m for m in shown if m.province in provinces)
            if len(picked) == 1:
                return _settle(state, picked[0], include_current=False)
            if 1 < len(picked) < len(shown):  # "NB" among NB, NB, ON: a shorter choice
                return _answered(state, Ambiguous(picked), directory, inbound)
    return _asking(state, inbound, directory, choices=shown)


def _asking(
    state: DialogueState,
    inbound: Inbound,
    directory: DirectoryView,
    *,
    reoffer: Municipality | None = None,
    choices: Sequence[Municipality] = (),
) -> Step:
    """Treat the text as an answer to the question (or to the offer / the choice)."""
    text = inbound.text or ""
    if _is_message(text, inbound.has_media):
        return _fail(state, inbound, directory, held=True, reoffer=reoffer, choices=choices)
    result = _lookup(text, directory)
    if isinstance(result, Ambiguous) and choices:
        # Restricted to the choice shown first: "Victoria" again keeps the same list.
        ids = {m.id for m in result.candidates}
        narrowed = [m for m in choices if m.id in ids]
        if len(narrowed) == 1:
            result = Match(narrowed[0], via="name")
        elif narrowed and len(narrowed) < len(choices):
            result = Ambiguous(tuple(narrowed))
        elif narrowed:
            return _fail(state, inbound, directory, held=False, choices=choices)
    return _answered(state, result, directory, inbound, reoffer=reoffer, choices=choices)


def _answered(
    state: DialogueState,
    result: MatchResult,
    directory: DirectoryView,
    inbound: Inbound,
    *,
    reoffer: Municipality | None = None,
    choices: Sequence[Municipality] = (),
) -> Step:
    text = inbound.text or ""
    involved = _involved(result)
    is_message = len(_leftover(text, involved, fuzzy=True)) >= 2
    if isinstance(result, Match):
        return _settle(state, result.municipality, include_current=is_message)
    if isinstance(result, Ambiguous) and len(result.candidates) > 1:
        language = state.language
        places = [prompts.label(m, language) for m in result.candidates]
        message, count = prompts.choose(language, places)
        choosing = replace(
            state,
            stage="choosing",
            candidates=tuple(m.id for m in result.candidates[:count]),
            suggested_id=None,
        )
        actions: list[Action] = [Hold()] if is_message else []
        return choosing, [*actions, Reply(message)]
    if isinstance(result, Ambiguous) and result.candidates:
        return _settle(state, result.candidates[0], include_current=is_message)
    return _fail(state, inbound, directory, held=is_message, reoffer=reoffer, choices=choices)


def _settle(state: DialogueState, municipality: Municipality, *, include_current: bool) -> Step:
    """The municipality is known: save it, confirm, deliver what was held."""
    settled = replace(
        state,
        municipality_id=municipality.id,
        stage="idle",
        attempts=0,
        candidates=(),
        suggested_id=None,
    )
    confirm = prompts.confirmed(state.language, prompts.label(municipality, state.language))
    return settled, [Reply(confirm), Deliver(municipality.id, include_current=include_current)]


def _fail(
    state: DialogueState,
    inbound: Inbound,
    directory: DirectoryView,
    *,
    held: bool,
    reoffer: Municipality | None = None,
    choices: Sequence[Municipality] = (),
) -> Step:
    """An unsuccessful turn: hold the text if it is a message, ask again or give up."""
    language = state.language
    attempts = state.attempts + 1
    actions: list[Action] = [Hold()] if held else []
    if attempts >= MAX_ATTEMPTS:
        idle = replace(state, stage="idle", attempts=0, candidates=(), suggested_id=None)
        saved = directory.get(state.municipality_id) if state.municipality_id else None
        if saved is not None:
            kept = prompts.kept(language, prompts.label(saved, language))
            return idle, [*actions, Reply(kept), Deliver(saved.id, include_current=False)]
        return idle, [*actions, Reply(prompts.failed(language)), Fallback()]
    again = replace(state, attempts=attempts)
    if reoffer is not None:
        place = prompts.label(reoffer, language)
        offer = prompts.suggest(language, place, lead="held" if held else "again")
        return again, [*actions, Reply(offer)]
    if choices:
        places = [prompts.label(m, language) for m in choices]
        message, count = prompts.choose(language, places, again=True)
        again = replace(again, candidates=tuple(m.id for m in choices[:count]))
        return again, [*actions, Reply(message)]
    question = prompts.ask_city_held_again(language) if held else prompts.retry(language)
    return replace(again, stage="asking"), [*actions, Reply(question)]
