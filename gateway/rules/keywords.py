"""SMS keywords (STOP/ARRET, HELP/AIDE/INFO, START, CITY/VILLE) and their replies (no I/O).

A keyword is a *whole* message: ``classify`` strips surrounding whitespace and punctuation
("stop.", " Stop! ", "«ARRÊT»"), ignores case, accents and inner spaces or hyphens ("stop all",
"opt-out"), and compares with the lists below. Anything longer ("stop the noise", "help me with a
pothole") is an ordinary text and goes to the city.

Lists (CWTA requires STOP, ARRET, HELP, AIDE and INFO on Canadian short codes; the English opt-out
words are Twilio's defaults):

- stop, English: STOP, STOPALL, UNSUBSCRIBE, UNSUB, CANCEL, END, QUIT, REVOKE, OPTOUT
- stop, French:  ARRET, ARRETE, ARRETEZ, ARRETER (accents optional: ARRÊT, ARRÊTER…)
- help: HELP (en), AIDE (fr), INFO (no language: answered in the resident's language)
- start: START, UNSTOP (no language). YES is deliberately *not* an opt-in word here, although
  Twilio's defaults include it: YES/OUI are answers in the municipality dialogue. There is no
  French opt-in word; the French STOP reply says "envoyez START".
- city: CITY, MUNICIPALITY (en), VILLE, MUNICIPALITE (fr). The dialogue owns what CITY does;
  ``reply("city", …)`` is simply the dialogue's question.

``Keyword.language`` is None for language-neutral words (INFO, START); callers answer those in the
resident's kept language (``Keyword.language_or(kept)``).

``reply(kind, language)`` returns the answer in the keyword's language, always 160 characters or
fewer and written with GSM-7 characters only (one SMS segment).
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Literal

from gateway.rules import prompts
from gateway.rules.language import Language

KeywordKind = Literal["stop", "start", "help", "city"]

MAX_REPLY_CHARS = 160

_WORDS: dict[str, tuple[KeywordKind, Language | None]] = {}


def _add(kind: KeywordKind, language: Language | None, *words: str) -> None:
    for word in words:
        _WORDS[word] = (kind, language)


_add("stop", "en", "STOP", "STOPALL", "UNSUBSCRIBE", "UNSUB", "CANCEL", "END", "QUIT", "REVOKE",
     "OPTOUT")
_add("stop", "fr", "ARRET", "ARRETE", "ARRETEZ", "ARRETER")
_add("help", "en", "HELP")
_add("help", "fr", "AIDE")
_add("help", None, "INFO")
_add("start", None, "START", "UNSTOP")
_add("city", "en", "CITY", "MUNICIPALITY")
_add("city", "fr", "VILLE", "MUNICIPALITE")

# Longest keyword; anything clearly longer cannot be one (cheap early exit for ordinary texts).
_MAX_LEN = max(len(w) for w in _WORDS)


@dataclass(frozen=True)
class Keyword:
    """A recognised keyword. ``language`` is None for language-neutral words (INFO, START)."""

    kind: KeywordKind
    language: Language | None

    def language_or(self, fallback: Language) -> Language:
        """The language to answer in: the keyword's own, else the resident's (``fallback``)."""
        return self.language if self.language is not None else fallback


def _squash(text: str) -> str:
    """Upper case, no accents, no whitespace/hyphens/punctuation: "Arrêt !" -> "ARRET"."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in decomposed if ch.isalnum()).upper()


def classify(text: str) -> Keyword | None:
    """Return the keyword this whole message is, or None for an ordinary text."""
    if len(text) > 4 * _MAX_LEN:
        return None
    stripped = text.strip()
    # Inner words are allowed ("stop all", "opt-out") but not sentences: at most two words.
    if len(stripped.split()) > 2:
        return None
    found = _WORDS.get(_squash(stripped))
    if found is None:
        return None
    return Keyword(kind=found[0], language=found[1])


_REPLIES: dict[tuple[KeywordKind, Language], str] = {
    ("stop", "en"): (
        "{name}: You are unsubscribed and will get no more messages from this number. "
        "Text START to subscribe again."
    ),
    ("stop", "fr"): (
        "{name} : Vous ne recevrez plus de messages de ce numéro. "
        "Envoyez START pour vous réabonner."
    ),
    ("help", "en"): (
        "{name}: Text your request and we send it to your city's 311 by email. "
        "Help: call 311. CITY to change city, STOP to opt out. Msg&data rates may apply."
    ),
    ("help", "fr"): (
        "{name} : Textez votre demande, nous l'envoyons au 311 de votre ville. "
        "Aide : appelez le 311. VILLE pour changer de ville, ARRET pour vous désabonner."
    ),
    ("start", "en"): (
        "{name}: You are subscribed again. Text your request any time. "
        "Text HELP for help, STOP to opt out."
    ),
    ("start", "fr"): (
        "{name} : Abonnement repris. Textez votre demande quand vous voulez. "
        "AIDE pour de l'aide, ARRET pour vous désabonner."
    ),
}


def reply(kind: KeywordKind, language: str, *, short_code_name: str = "311") -> str:
    """The SMS answering keyword ``kind`` in ``language`` (<= 160 characters).

    ``language`` is "en" or "fr"; anything else is answered in English. ``short_code_name``
    prefixes the message ("311: …"); if a long name would push the reply over 160 characters,
    the prefix is left out rather than the message cut.
    """
    language = prompts.as_language(language)
    if kind == "city":
        return prompts.ask_city(language)
    template = _REPLIES[(kind, language)]
    text = template.format(name=short_code_name)
    if len(text) > MAX_REPLY_CHARS:
        text = template.split(":", 1)[1].strip()
    return text
