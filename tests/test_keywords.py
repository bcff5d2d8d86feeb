"""keywords.classify and keywords.reply: whole-message keywords in English and French."""

from __future__ import annotations

import pytest

from gateway.rules import keywords, prompts
from gateway.rules.keywords import Keyword, classify, reply

# GSM 03.38 basic character set (one septet each) plus the extension table (two septets).
GSM7 = set(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
) | set("^{}\\[~]|€")

CASES: list[tuple[str, str, Keyword | None]] = [
    # label, text, expected
    ("stop", "STOP", Keyword("stop", "en")),
    ("stop lower", "stop", Keyword("stop", "en")),
    ("stop mixed, spaces", "  Stop \n", Keyword("stop", "en")),
    ("stop with period", "STOP.", Keyword("stop", "en")),
    ("stop with bangs", "stop!!", Keyword("stop", "en")),
    ("stop quoted", '"Stop"', Keyword("stop", "en")),
    ("stopall", "STOPALL", Keyword("stop", "en")),
    ("stop all", "stop all", Keyword("stop", "en")),
    ("unsubscribe", "Unsubscribe", Keyword("stop", "en")),
    ("unsub", "UNSUB", Keyword("stop", "en")),
    ("cancel", "cancel", Keyword("stop", "en")),
    ("end", "End", Keyword("stop", "en")),
    ("quit", "QUIT", Keyword("stop", "en")),
    ("revoke", "revoke", Keyword("stop", "en")),
    ("optout", "OPTOUT", Keyword("stop", "en")),
    ("opt-out", "opt-out", Keyword("stop", "en")),
    ("arret", "ARRET", Keyword("stop", "fr")),
    ("arrêt accent", "ARRÊT", Keyword("stop", "fr")),
    ("arrêt lower", "arrêt", Keyword("stop", "fr")),
    ("arrete", "Arrete", Keyword("stop", "fr")),
    ("arrêté", "arrêté", Keyword("stop", "fr")),
    ("arrêtez", "Arrêtez!", Keyword("stop", "fr")),
    ("arrêter", "ARRÊTER", Keyword("stop", "fr")),
    ("arreter", "arreter", Keyword("stop", "fr")),
    ("arrêt NFD", "arre\u0302t", Keyword("stop", "fr")),
    ("help", "HELP", Keyword("help", "en")),
    ("help?", "help?", Keyword("help", "en")),
    ("aide", "AIDE", Keyword("help", "fr")),
    ("aide lower", "aide", Keyword("help", "fr")),
    ("info neutral", "INFO", Keyword("help", None)),
    ("info lower", "info", Keyword("help", None)),
    ("start neutral", "START", Keyword("start", None)),
    ("start lower", "start", Keyword("start", None)),
    ("unstop", "UNSTOP", Keyword("start", None)),
    ("city", "CITY", Keyword("city", "en")),
    ("city lower", "city", Keyword("city", "en")),
    ("municipality", "Municipality", Keyword("city", "en")),
    ("ville", "VILLE", Keyword("city", "fr")),
    ("ville lower", "ville", Keyword("city", "fr")),
    ("municipalité", "municipalité", Keyword("city", "fr")),
    ("municipalite", "MUNICIPALITE", Keyword("city", "fr")),
    # Not keywords: ordinary texts, which go to the city.
    ("stop the noise", "stop the noise", None),
    ("help me", "help me with a pothole", None),
    ("please stop", "Please stop", None),
    ("stop sign", "Stop sign down at Bank and Somerset", None),
    ("arrêt sentence", "Le panneau d'arrêt est tombé", None),
    ("yes is an answer", "YES", None),
    ("oui is an answer", "oui", None),
    ("city in a sentence", "Which city is this?", None),
    ("ville in a sentence", "ma ville est Laval", None),
    ("empty", "", None),
    ("blank", "   ", None),
    ("emoji", "🛑", None),
    ("stopp", "stopp", None),
    ("starting", "starting", None),
    ("long", "STOP " * 200, None),
]


@pytest.mark.parametrize(("label", "text", "expected"), CASES, ids=[c[0] for c in CASES])
def test_classify(label: str, text: str, expected: Keyword | None) -> None:
    assert classify(text) == expected, label


def test_language_or() -> None:
    assert Keyword("help", None).language_or("fr") == "fr"
    assert Keyword("help", "en").language_or("fr") == "en"


KINDS: list[keywords.KeywordKind] = ["stop", "start", "help", "city"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("language", prompts.LANGUAGES)
def test_every_reply_is_one_gsm_sms(kind: keywords.KeywordKind, language: str) -> None:
    text = reply(kind, language)
    assert 0 < len(text) <= 160, (len(text), text)
    assert set(text) <= GSM7, set(text) - GSM7


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("language", prompts.LANGUAGES)
def test_long_service_names_never_push_past_160(kind: keywords.KeywordKind, language: str) -> None:
    assert len(reply(kind, language, short_code_name="City of Somewhere 311 Text Service")) <= 160


def test_stop_replies_say_how_to_come_back() -> None:
    en = reply("stop", "en")
    fr = reply("stop", "fr")
    assert "no more messages" in en and "START" in en
    assert "plus de messages" in fr and "START" in fr


def test_help_replies_say_what_this_is_and_how_to_stop() -> None:
    en = reply("help", "en")
    fr = reply("help", "fr")
    assert "311" in en and "STOP" in en and "CITY" in en
    assert "311" in fr and "ARRET" in fr and "VILLE" in fr
    assert "vous" in fr  # written in French


def test_start_and_city_replies() -> None:
    assert "subscribed again" in reply("start", "en")
    assert "Abonnement repris" in reply("start", "fr")
    assert reply("city", "en") == prompts.ask_city("en")
    assert reply("city", "fr") == prompts.ask_city("fr")


def test_service_name_prefix() -> None:
    assert reply("stop", "en", short_code_name="Ottawa 311").startswith("Ottawa 311: ")
    assert reply("stop", "fr").startswith("311 : ")


def test_unknown_language_answers_in_english() -> None:
    assert reply("help", "de") == reply("help", "en")
    assert reply("help", "FR") == reply("help", "fr")
