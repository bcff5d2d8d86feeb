"""Every dialogue prompt, in English and French, fits one SMS (160 characters)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from test_keywords import GSM7

from gateway.rules import prompts
from gateway.rules.language import Language
from gateway.rules.municipalities import Municipality

# The longest census subdivision name (80 characters) with its province.
LONGEST = "Resort Municipality of Stanley Bridge-Hope River-Bayview-Cavendish-North Rustico, PE"
SHORT = "Ottawa, ON"
# The most ambiguous census names, and long ones, as a resident would see them.
MANY = [
    "Saint-Isidore, QC",
    "Saint-Isidore, NB",
    "Saint-Isidore-de-Clifton, QC",
    "Saint-Isidore-de-Laprairie, QC",
    "Woodstock, NB",
    "Woodstock, ON",
    "Woodstock, NL",
    "Woodstock, NB",
    "Municipality of Northeastern Manitoulin and the Islands, ON",
    "Victoria, BC",
    "Victoria, PE",
]

Prompt = Callable[[Language, str], str]
PROMPTS: dict[str, Prompt] = {
    "ask_city": lambda lang, place: prompts.ask_city(lang),
    "ask_city_first": lambda lang, place: prompts.ask_city_first(lang),
    "ask_city_after_no": lambda lang, place: prompts.ask_city_after_no(lang),
    "ask_city_held_again": lambda lang, place: prompts.ask_city_held_again(lang),
    "retry": lambda lang, place: prompts.retry(lang),
    "suggest": lambda lang, place: prompts.suggest(lang, place),
    "suggest held": lambda lang, place: prompts.suggest(lang, place, lead="held"),
    "suggest again": lambda lang, place: prompts.suggest(lang, place, lead="again"),
    "suggest none": lambda lang, place: prompts.suggest(lang, place, lead="none"),
    "choose": lambda lang, place: prompts.choose(lang, [place] * 9)[0],
    "choose many": lambda lang, place: prompts.choose(lang, MANY)[0],
    "choose again": lambda lang, place: prompts.choose(lang, MANY, again=True)[0],
    "confirmed": lambda lang, place: prompts.confirmed(lang, place),
    "failed": lambda lang, place: prompts.failed(lang),
    "kept": lambda lang, place: prompts.kept(lang, place),
}


@pytest.mark.parametrize("name", list(PROMPTS))
@pytest.mark.parametrize("language", prompts.LANGUAGES)
@pytest.mark.parametrize("place", [SHORT, LONGEST, "x" * 500])
def test_every_prompt_fits_one_sms(name: str, language: Language, place: str) -> None:
    text = PROMPTS[name](language, place)
    assert 0 < len(text) <= prompts.MAX_CHARS, (name, language, len(text), text)


@pytest.mark.parametrize("name", list(PROMPTS))
@pytest.mark.parametrize("language", prompts.LANGUAGES)
def test_fixed_wording_is_gsm7(name: str, language: Language) -> None:
    text = PROMPTS[name](language, SHORT)
    assert set(text) <= GSM7, (name, language, set(text) - GSM7)


@pytest.mark.parametrize("name", list(PROMPTS))
def test_english_and_french_differ(name: str) -> None:
    assert PROMPTS[name]("en", SHORT) != PROMPTS[name]("fr", SHORT)


def test_short_places_are_never_shortened() -> None:
    for language in prompts.LANGUAGES:
        assert SHORT in prompts.confirmed(language, SHORT)
        assert SHORT in prompts.suggest(language, SHORT)
        assert SHORT in prompts.suggest(language, SHORT, lead="held") or language == "fr"
        assert SHORT in prompts.kept(language, SHORT)


def test_long_places_end_in_an_ellipsis() -> None:
    text = prompts.kept("fr", LONGEST)
    assert len(text) == 160 and "..." in text and text.endswith("Envoyez VILLE pour réessayer.")
    text = prompts.confirmed("en", "x" * 500)
    assert "..." in text and text.endswith("Text CITY to change it.")


def test_numbered_choice() -> None:
    text, count = prompts.choose("en", ["Victoria, BC", "Victoria, PE"])
    assert count == 2
    assert text == "Which one? Reply with its number:\n1 Victoria, BC\n2 Victoria, PE\n" \
        "Or send your postal code."
    text, count = prompts.choose("fr", ["Richmond, BC", "Richmond, QC"], again=True)
    assert count == 2 and "1 Richmond, BC\n2 Richmond, QC" in text and text.startswith("Désolé")


def test_numbered_choice_is_limited_to_what_fits() -> None:
    text, count = prompts.choose("en", MANY)
    assert 2 <= count < len(MANY)
    assert f"\n{count} " in text and f"\n{count + 1} " not in text
    assert text.endswith("Or send your postal code.")
    _, count = prompts.choose("en", ["A, ON"] * 20)
    assert count == prompts.MAX_CHOICES


def test_label_uses_the_french_name_in_french() -> None:
    montreal = Municipality(
        id="montreal", name="Montreal", name_fr="Montréal", province="QC", mailbox="a@b.example"
    )
    assert prompts.label(montreal, "en") == "Montreal, QC"
    assert prompts.label(montreal, "fr") == "Montréal, QC"


def test_as_language() -> None:
    assert prompts.as_language("FR") == "fr"
    assert prompts.as_language(None) == "en"
    assert prompts.as_language("es", default="fr") == "fr"


def test_shorten() -> None:
    assert prompts.shorten("abcdef", 6) == "abcdef"
    assert prompts.shorten("abcdefgh", 6) == "abc..."
    assert prompts.shorten("abcdefgh", 2) == "ab"
