"""Every SMS the municipality dialogue sends, in English and French (no I/O).

Each function returns one message of at most ``MAX_CHARS`` (160) characters, so a prompt is a
single SMS. The fixed wording uses GSM-7 characters only (é, è, à are GSM-7; ê, ç, ô are not and
are avoided); a municipality name filled in may bring its own accents. Names too long to fit are
shortened with "...", and a numbered choice shows only as many municipalities as fit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from gateway.rules.language import Language
from gateway.rules.municipalities import Municipality

LANGUAGES: tuple[Language, ...] = ("en", "fr")

MAX_CHARS = 160
MAX_CHOICES = 9  # answers are a single digit
MAX_CHOICE_LABEL = 40  # one line of a numbered choice at most
_ELLIPSIS = "..."


def as_language(value: str | None, default: Language = "en") -> Language:
    """``value`` if it is "en" or "fr" (any case), else ``default``."""
    lowered = (value or "").strip().lower()
    if lowered == "fr":
        return "fr"
    if lowered == "en":
        return "en"
    return default


def label(municipality: Municipality, language: Language) -> str:
    """Name and province as shown to a resident: "Victoria, BC"; French name if there is one."""
    name = municipality.name_fr if language == "fr" and municipality.name_fr else municipality.name
    return f"{name}, {municipality.province}"


def shorten(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, ending in "..." when cut."""
    if len(text) <= limit:
        return text
    if limit <= len(_ELLIPSIS):
        return text[:limit]
    return text[: limit - len(_ELLIPSIS)].rstrip() + _ELLIPSIS


def _fill(template: str, place: str) -> str:
    """``template`` with ``{place}`` filled in, the place shortened so the whole fits 160."""
    room = MAX_CHARS - (len(template) - len("{place}"))
    return template.format(place=shorten(place, room))


_ASK = {
    "en": "Which city or town do you live in? Reply with its name or your postal code.",
    "fr": "Dans quelle ville habitez-vous ? Répondez avec son nom ou votre code postal.",
}
_THANKS = {
    "en": "Thanks, we got your message. ",
    "fr": "Merci, nous avons votre message. ",
}
_HELD_AGAIN = {
    "en": "Got it, we will send this too. But first: ",
    "fr": "Bien noté, nous l'enverrons aussi. Mais d'abord : ",
}
_SORRY = {
    "en": "Sorry, we did not get that. ",
    "fr": "Désolé, nous n'avons pas compris. ",
}
_OK = {"en": "OK. ", "fr": "D'accord. "}
_RETRY = {
    "en": (
        "Sorry, we did not find that city. Reply with the name of your city or town, "
        "or your postal code (like K1A 0B1)."
    ),
    "fr": (
        "Désolé, nous n'avons pas trouvé cette ville. Répondez avec le nom de votre ville, "
        "ou votre code postal (ex. H2X 1Y4)."
    ),
}
_SUGGEST = {
    "en": "Are you in {place}? Reply YES, or send the name of your city or your postal code.",
    "fr": (
        "Votre ville est-elle {place} ? Répondez OUI, ou envoyez le nom de votre ville "
        "ou votre code postal."
    ),
}
_CHOOSE_HEAD = {
    "en": "Which one? Reply with its number:",
    "fr": "Laquelle ? Répondez par son numéro :",
}
_CHOOSE_AGAIN_HEAD = {
    "en": "Sorry, please reply with one of these numbers:",
    "fr": "Désolé, répondez par un de ces numéros :",
}
_CHOOSE_TAIL = {
    "en": "Or send your postal code.",
    "fr": "Ou envoyez votre code postal.",
}
_CONFIRMED = {
    "en": "Thanks! Your messages now go to {place}. Text CITY to change it.",
    "fr": "Merci ! Vos messages vont maintenant à {place}. Envoyez VILLE pour la changer.",
}
_FAILED = {
    "en": (
        "Sorry, we could not find your city. Text CITY to try again, "
        "or call 311 or visit your city's website."
    ),
    "fr": (
        "Désolé, nous n'avons pas trouvé votre ville. Envoyez VILLE pour réessayer, "
        "ou appelez le 311 ou visitez le site de votre ville."
    ),
}
_KEPT = {
    "en": "Sorry, we could not find that city. Your messages still go to {place}. "
    "Text CITY to try again.",
    "fr": "Désolé, nous n'avons pas trouvé cette ville. Vos messages vont toujours à {place}. "
    "Envoyez VILLE pour réessayer.",
}


def ask_city(language: Language) -> str:
    """The plain question (also the answer to CITY / VILLE)."""
    return _ASK[language]


def ask_city_first(language: Language) -> str:
    """The question after a first text was held: says the text is kept."""
    return _THANKS[language] + _ASK[language]


def ask_city_after_no(language: Language) -> str:
    """The question after the resident turned the suggested municipality down."""
    return _OK[language] + _ASK[language]


def ask_city_held_again(language: Language) -> str:
    """The question after another text (not an answer) arrived and was held too."""
    return _HELD_AGAIN[language] + _ASK[language][0].lower() + _ASK[language][1:]


def retry(language: Language) -> str:
    """The question again, after an answer that matched nothing."""
    return _RETRY[language]


SuggestLead = Literal["thanks", "held", "again", "none"]


def suggest(language: Language, place: str, *, lead: SuggestLead = "thanks") -> str:
    """Offer Twilio's FromCity/FromState guess: "Are you in Ottawa, ON? Reply YES, or …".

    ``lead``: "thanks" (the first text was held), "held" (another text was held), "again" (the
    answer was not understood) or "none". The lead is dropped if it leaves too little room.
    """
    leads = {"thanks": _THANKS, "held": _HELD_AGAIN, "again": _SORRY}
    template = _SUGGEST[language]
    if lead != "none":
        with_lead = leads[lead][language] + template
        if len(with_lead.format(place="x" * 20)) <= MAX_CHARS:
            template = with_lead
    return _fill(template, place)


def choose(language: Language, places: Sequence[str], *, again: bool = False) -> tuple[str, int]:
    """A numbered choice ("1 Victoria, BC" one per line) and how many places it shows.

    Shows places in the given order, as many as fit in 160 characters (at most ``MAX_CHOICES``);
    the resident answers with a number from 1 to the count returned, or a better name.
    """
    head = (_CHOOSE_AGAIN_HEAD if again else _CHOOSE_HEAD)[language]
    tail = _CHOOSE_TAIL[language]
    lines: list[str] = []
    for number, place in enumerate(places[:MAX_CHOICES], start=1):
        line = f"{number} {shorten(place, MAX_CHOICE_LABEL)}"
        if len("\n".join([head, *lines, line, tail])) > MAX_CHARS:
            break
        lines.append(line)
    return "\n".join([head, *lines, tail]), len(lines)


def confirmed(language: Language, place: str) -> str:
    """The municipality is saved: "Thanks! Your messages now go to Ottawa, ON. …"."""
    return _fill(_CONFIRMED[language], place)


def failed(language: Language) -> str:
    """Given up after repeated failures, municipality still unknown."""
    return _FAILED[language]


def kept(language: Language, place: str) -> str:
    """Given up after CITY, the previous municipality kept."""
    return _fill(_KEPT[language], place)
