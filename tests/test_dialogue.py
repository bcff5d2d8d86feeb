"""The municipality dialogue: `gateway.rules.dialogue.step` on its own, and as scripts (EN and
FR) through the conversation driver (tests/conversation.py), which hands each text to the real
inbound flow of a gateway on a temporary SQLite store, as the webhook does."""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.rules import dialogue, prompts
from gateway.rules.dialogue import (
    MAX_ATTEMPTS,
    Deliver,
    DialogueState,
    Hold,
    Inbound,
    Reply,
    step,
)
from gateway.rules.municipalities import Directory, Municipality
from gateway.settings.directory_build import load_census_directory
from tests.conversation import Conversation
from tests.paths import data_file

MakeConversation = Callable[[Directory], Conversation]  # conftest's `conversation` fixture


def town(id: str, name: str, province: str, **kw: object) -> Municipality:
    return Municipality(id=id, name=name, province=province, mailbox=f"311@{id}.example", **kw)  # type: ignore[arg-type]


MUNICIPALITIES = [
    town(
        "ottawa",
        "Ottawa",
        "ON",
        aliases=("Kanata", "Nepean", "Orléans"),
        postal_prefixes=("K1", "K2"),
        languages=("en", "fr"),
    ),
    town("victoria-bc", "Victoria", "BC", postal_prefixes=("V8", "V9A")),
    town("victoria-pe", "Victoria", "PE", postal_prefixes=("C0A",)),
    town("richmond-bc", "Richmond", "BC", postal_prefixes=("V6X", "V6Y", "V7A")),
    town("richmond-qc", "Richmond", "QC", name_fr="Richmond", postal_prefixes=("J0B",)),
    town(
        "montreal",
        "Montreal",
        "QC",
        name_fr="Montréal",
        aliases=("Ville-Marie", "Verdun"),
        postal_prefixes=("H1", "H2", "H3", "H4"),
        languages=("fr", "en"),
    ),
    town("quebec", "Québec", "QC", name_fr="Québec", postal_prefixes=("G1", "G2")),
    town("gatineau", "Gatineau", "QC", postal_prefixes=("J8", "J9")),
    town("laval", "Laval", "QC", postal_prefixes=("H7",)),
    town("saint-jean", "Saint-Jean-sur-Richelieu", "QC", postal_prefixes=("J2W", "J3A", "J3B")),
]

ME = "+16135550100"
YOU = "+15145550199"


@pytest.fixture(scope="module")
def directory() -> Directory:
    return Directory(MUNICIPALITIES)


@pytest.fixture
def convo(conversation: MakeConversation, directory: Directory) -> Conversation:
    return conversation(directory)


# -- English scripts ----------------------------------------------------------------------------


def test_first_text_is_held_then_a_typo_answer_delivers_it(convo: Conversation) -> None:
    convo.say(ME, "There is a pothole on Bank St", expect="Which city")
    assert convo.held(ME) == ["There is a pothole on Bank St"]
    assert convo.delivered(ME) == []
    convo.say(ME, "otawa", expect="Thanks! Your messages now go to Ottawa, ON. Text CITY")
    assert convo.delivered(ME) == [("ottawa", ["There is a pothole on Bank St"])]
    assert convo.held(ME) == []
    assert convo.municipality(ME) == "ottawa"
    # From now on: straight to Ottawa, no reply.
    convo.say(ME, "Also the streetlight at Bank and Gladstone is out", silent=True)
    assert convo.delivered(ME)[-1] == (
        "ottawa",
        ["Also the streetlight at Bank and Gladstone is out"],
    )


def test_first_text_reply_says_it_was_kept(convo: Conversation) -> None:
    turn = convo.say(ME, "Garbage was not picked up this week", expect="we got your message")
    assert (turn.step, turn.replies) == ("held", (prompts.ask_city_first("en"),))
    assert convo.held(ME) == ["Garbage was not picked up this week"]


def test_ambiguous_name_then_answer_by_number(convo: Conversation) -> None:
    convo.say(ME, "The bus shelter glass is smashed", expect="Which city")
    convo.say(ME, "Victoria", expect=re.compile(r"1 Victoria, BC\n2 Victoria, PE"))
    assert convo.state(ME).stage == "choosing"
    assert convo.state(ME).candidates == ("victoria-bc", "victoria-pe")
    convo.say(ME, "2", expect="Victoria, PE")
    assert convo.delivered(ME) == [("victoria-pe", ["The bus shelter glass is smashed"])]


def test_ambiguous_name_then_answer_by_better_name(convo: Conversation) -> None:
    convo.say(ME, "Broken swing in the park", expect="Which city")
    convo.say(ME, "Richmond", expect="1 Richmond, BC")
    convo.say(ME, "Richmond, Quebec", expect="Richmond, QC")
    assert convo.delivered(ME) == [("richmond-qc", ["Broken swing in the park"])]


def test_ambiguous_name_then_answer_by_province(convo: Conversation) -> None:
    convo.say(ME, "Broken swing in the park", expect="Which city")
    convo.say(ME, "victoria", expect="Which one?")
    convo.say(ME, "B.C.", expect="Victoria, BC")
    assert convo.municipality(ME) == "victoria-bc"


def test_ambiguous_name_then_a_different_city(convo: Conversation) -> None:
    convo.say(ME, "Broken swing in the park", expect="Which city")
    convo.say(ME, "Victoria", expect="Which one?")
    convo.say(ME, "actually Kanata", expect="Ottawa, ON")
    assert convo.delivered(ME) == [("ottawa", ["Broken swing in the park"])]


def test_province_answer_narrows_a_choice(conversation: MakeConversation) -> None:
    twins = [
        town("woodstock-nb-1", "Woodstock", "NB"),
        town("woodstock-nb-2", "Woodstock", "NB"),
        town("woodstock-on", "Woodstock", "ON"),
    ]
    convo = conversation(Directory([*MUNICIPALITIES, *twins]))
    convo.say(ME, "Woodstock", expect="3 Woodstock, ON")
    convo.say(ME, "New Brunswick", expect=re.compile(r"1 Woodstock, NB\n2 Woodstock, NB\nOr"))
    assert convo.state(ME).attempts == 0
    convo.say(ME, "2", expect="Woodstock, NB")
    assert convo.municipality(ME) == "woodstock-nb-2"


def test_name_with_province_is_not_ambiguous(convo: Conversation) -> None:
    convo.say(ME, "Broken swing in the park", expect="Which city")
    convo.say(ME, "Victoria PEI", expect="Victoria, PE")


def test_wrong_number_asks_again_and_counts(convo: Conversation) -> None:
    convo.say(ME, "Broken swing in the park", expect="Which city")
    convo.say(ME, "Victoria", expect="Which one?")
    convo.say(ME, "7", expect=re.compile(r"^Sorry, please reply with one of these numbers:\n1 "))
    assert convo.state(ME).attempts == 1
    convo.say(ME, "1", expect="Victoria, BC")


def test_postal_code_answer(convo: Conversation) -> None:
    convo.say(ME, "Water main break on Elgin", expect="Which city")
    convo.say(ME, "k2p1a4", expect="Ottawa, ON")
    assert convo.delivered(ME) == [("ottawa", ["Water main break on Elgin"])]


def test_postal_code_inside_an_answer(convo: Conversation) -> None:
    convo.say(ME, "Water main break on Elgin", expect="Which city")
    convo.say(ME, "my postal code is K2P 1A4", expect="Ottawa, ON")
    assert convo.delivered(ME) == [("ottawa", ["Water main break on Elgin"])]


def test_alias_in_a_sentence(convo: Conversation) -> None:
    convo.say(ME, "Snow plow missed our street", expect="Which city")
    convo.say(ME, "I live in Kanata", expect="Ottawa, ON")
    # The answer itself is not sent to the city.
    assert convo.delivered(ME) == [("ottawa", ["Snow plow missed our street"])]


def test_an_answer_that_is_also_a_message_is_delivered_with_the_held_ones(
    convo: Conversation,
) -> None:
    convo.say(ME, "Hi", expect="Which city")
    convo.say(ME, "Pothole on Bank St in Ottawa", expect="Ottawa, ON")
    assert convo.delivered(ME) == [("ottawa", ["Hi", "Pothole on Bank St in Ottawa"])]


def test_suggestion_accepted(convo: Conversation) -> None:
    convo.say(
        ME,
        "Tree down on Carling Ave",
        expect="Are you in Ottawa, ON? Reply YES",
        from_city="OTTAWA",
        from_state="ON",
    )
    assert convo.state(ME).stage == "confirming_suggestion"
    convo.say(ME, "Yes", expect="Ottawa, ON")
    assert convo.delivered(ME) == [("ottawa", ["Tree down on Carling Ave"])]


@pytest.mark.parametrize("yes", ["y", "YES!", "1", "ok thanks", "oui", "O"])
def test_suggestion_accepted_in_many_ways(convo: Conversation, yes: str) -> None:
    convo.say(ME, "Tree down on Carling Ave", from_city="Ottawa", from_state="ON")
    convo.say(ME, yes, expect="Ottawa, ON")
    assert convo.municipality(ME) == "ottawa"


def test_suggestion_refused_then_named(convo: Conversation) -> None:
    convo.say(ME, "Tree down on Carling Ave", expect="Are you in", from_city="Ottawa",
              from_state="ON")
    convo.say(ME, "no", expect="OK. Which city or town")
    assert convo.state(ME).stage == "asking" and convo.state(ME).attempts == 0
    convo.say(ME, "Gatineau", expect="Gatineau, QC")
    assert convo.delivered(ME) == [("gatineau", ["Tree down on Carling Ave"])]


def test_suggestion_answered_with_another_name(convo: Conversation) -> None:
    convo.say(ME, "Tree down on my street", expect="Are you in", from_city="Ottawa",
              from_state="ON")
    convo.say(ME, "Laval", expect="Laval, QC")
    assert convo.delivered(ME) == [("laval", ["Tree down on my street"])]


def test_suggestion_not_understood_offers_it_again(convo: Conversation) -> None:
    convo.say(ME, "Tree down on my street", expect="Are you in", from_city="Ottawa",
              from_state="ON")
    convo.say(ME, "huh", expect="Sorry, we did not get that. Are you in Ottawa, ON?")
    convo.say(ME, "yep", expect="Ottawa, ON")


def test_unknown_from_city_gives_the_plain_question(convo: Conversation) -> None:
    convo.say(ME, "Tree down", expect="Which city", from_city="Nowhereville", from_state="ZZ")


def test_three_failures_send_everything_held_to_the_fallback(convo: Conversation) -> None:
    convo.say(ME, "Dead raccoon on my lawn", expect="Which city")
    convo.say(ME, "zzzz", expect="Sorry, we did not find that city")
    convo.say(ME, "There is also a dead skunk near the school, it smells terrible",
              expect="we will send this too")
    turn = convo.say(ME, "qwerty", expect="Text CITY to try again, or call 311")
    assert turn.step == "fallback"
    assert convo.fallback(ME) == [
        ["Dead raccoon on my lawn",
         "There is also a dead skunk near the school, it smells terrible"],
    ]
    assert convo.held(ME) == []
    state = convo.state(ME)
    assert (state.stage, state.municipality_id, state.attempts) == ("idle", None, 0)
    # A later text starts the question again.
    convo.say(ME, "Hello?", expect="Which city")
    assert convo.held(ME) == ["Hello?"]


def test_a_resident_who_never_answers_still_reaches_a_human(convo: Conversation) -> None:
    texts = [
        "The sidewalk on Main Street is cracked and someone tripped on it today",
        "Please send someone to look at it before somebody gets really hurt",
        "Hello, is anyone reading these messages? It is still broken today",
        "Fourth message about the same broken sidewalk on Main Street please",
    ]
    for text in texts[:-1]:
        convo.say(ME, text, expect="which city")
    convo.say(ME, texts[-1], expect="could not find your city")
    assert convo.fallback(ME) == [texts]


def test_media_while_asking_is_held(convo: Conversation) -> None:
    convo.say(ME, "Look at this pothole", expect="Which city")
    turn = convo.say(ME, "Ottawa", has_media=True, expect="we will send this too")
    assert turn.step == "held"
    convo.say(ME, "Ottawa", expect="Ottawa, ON")
    assert convo.delivered(ME) == [("ottawa", ["Look at this pothole", "Ottawa"])]


def test_city_restarts_the_question_and_keeps_the_old_choice_until_then(
    convo: Conversation,
) -> None:
    convo.say(ME, "Ottawa", expect="Ottawa, ON")
    convo.say(ME, "CITY", expect="Which city or town do you live in?")
    assert convo.state(ME).stage == "asking"
    assert convo.municipality(ME) == "ottawa"
    convo.say(ME, "Gatineau", expect="Your messages now go to Gatineau, QC")
    assert convo.delivered(ME) == []  # nothing was held
    convo.say(ME, "Noisy neighbours every night", silent=True)
    assert convo.delivered(ME) == [("gatineau", ["Noisy neighbours every night"])]


def test_city_then_failures_keep_the_old_city(convo: Conversation) -> None:
    convo.say(ME, "K1A 0B1", expect="Ottawa, ON")
    convo.say(ME, "city", expect="Which city")
    convo.say(ME, "Atlantis", expect="Sorry")
    convo.say(ME, "There is a big pothole on Bank Street near the school today",
              expect="send this too")
    convo.say(ME, "Narnia", expect="Your messages still go to Ottawa, ON")
    assert convo.delivered(ME) == [
        ("ottawa", ["There is a big pothole on Bank Street near the school today"])
    ]
    assert convo.fallback(ME) == []
    assert convo.state(ME).stage == "idle"


def test_first_text_that_is_a_place_is_an_answer(convo: Conversation) -> None:
    turn = convo.say(ME, "Ottawa", expect="Your messages now go to Ottawa, ON")
    assert turn.step == "answered"  # not held
    assert convo.delivered(ME) == []
    convo.say(YOU, "Victoria", expect="1 Victoria, BC")
    assert convo.held(YOU) == []
    convo.say(YOU, "Victoria, BC", expect="Victoria, BC")


@pytest.mark.parametrize(
    ("text", "municipality"),
    [("K2P 1A4", "ottawa"), ("h2x1y4", "montreal"), ("Victoria BC", "victoria-bc"),
     ("Saint-Jean-sur-Richelieu", "saint-jean"), ("st jean sur richelieu", "saint-jean")],
)
def test_first_text_places(convo: Conversation, text: str, municipality: str) -> None:
    convo.say(ME, text, expect="now go to")
    assert convo.municipality(ME) == municipality
    assert convo.held(ME) == []


@pytest.mark.parametrize(
    "text", ["Hi", "Bank St", "Pothole in Ottawa", "yes", "help me", "Ottawa sucks at plowing"]
)
def test_first_text_that_is_not_only_a_place_is_held(convo: Conversation, text: str) -> None:
    convo.say(ME, text, expect="Which city")
    assert convo.held(ME) == [text]


def test_empty_first_text_asks_without_holding(convo: Conversation) -> None:
    turn = convo.say(ME, "   ", expect="Which city")
    assert (turn.step, turn.replies) == ("answered", (prompts.ask_city("en"),))
    assert convo.held(ME) == []


def test_every_municipality_resolves_by_its_own_name(convo: Conversation) -> None:
    for i, m in enumerate(MUNICIPALITIES):
        phone = f"+1613555{i:04d}"
        convo.say(phone, "Something is broken on my street", expect="Which city")
        convo.say(phone, f"{m.name}, {m.province}", expect=prompts.label(m, "en"))
        assert convo.delivered(phone) == [(m.id, ["Something is broken on my street"])]


# -- French scripts -----------------------------------------------------------------------------


def test_french_resident_is_asked_in_french(convo: Conversation) -> None:
    convo.say(YOU, "Il y a un nid-de-poule sur la rue Sherbrooke", expect="Dans quelle ville")
    assert convo.state(YOU).language == "fr"
    convo.say(YOU, "Montréal", expect="Merci ! Vos messages vont maintenant à Montréal, QC")
    assert convo.delivered(YOU) == [("montreal", ["Il y a un nid-de-poule sur la rue Sherbrooke"])]
    assert convo.state(YOU).language == "fr"  # a place name does not switch the language


def test_french_ambiguous_then_number(convo: Conversation) -> None:
    convo.say(YOU, "Bonjour, le lampadaire devant chez moi est brisé", expect="Dans quelle ville")
    convo.say(
        YOU, "Richmond", expect=re.compile(r"^Laquelle \? .*\n1 Richmond, BC\n2 Richmond, QC")
    )
    convo.say(YOU, "2", expect="Richmond, QC")
    assert convo.municipality(YOU) == "richmond-qc"


def test_french_suggestion_refused(convo: Conversation) -> None:
    convo.say(YOU, "Bonjour, les ordures ne sont pas ramassées", from_city="MONTREAL",
              from_state="QC", expect="Votre ville est-elle Montréal, QC ? Répondez OUI")
    convo.say(YOU, "Non", expect="D'accord. Dans quelle ville")
    convo.say(YOU, "j'habite à Laval", expect="Laval, QC")
    assert convo.delivered(YOU) == [("laval", ["Bonjour, les ordures ne sont pas ramassées"])]


def test_french_failures_end_in_french(convo: Conversation) -> None:
    convo.say(YOU, "Le trottoir est brisé devant chez nous", expect="Dans quelle ville")
    convo.say(YOU, "xyz", expect="Désolé, nous n'avons pas trouvé cette ville")
    convo.say(YOU, "abc", expect="Désolé")
    convo.say(YOU, "??", expect="Envoyez VILLE pour réessayer")
    assert convo.fallback(YOU) == [["Le trottoir est brisé devant chez nous"]]


def test_ville_restarts_in_french_even_for_an_english_resident(convo: Conversation) -> None:
    convo.say(ME, "Ottawa", expect="Ottawa, ON")
    convo.say(ME, "VILLE", expect="Dans quelle ville habitez-vous ?")
    assert convo.state(ME).language == "fr"
    convo.say(ME, "Québec", expect="Vos messages vont maintenant à Québec, QC")


def test_language_switches_with_the_texts(convo: Conversation) -> None:
    convo.say(ME, "The streetlight is out on my street", expect="Which city")
    convo.say(ME, "Désolé, je ne comprends pas. Le lampadaire est brûlé.",
              expect="dans quelle ville")
    assert convo.state(ME).language == "fr"
    convo.say(ME, "Sorry, I live in Orleans", expect="Thanks! Your messages now go to Ottawa, ON")
    assert convo.state(ME).language == "en"


# -- keywords around the dialogue ---------------------------------------------------------------


def test_stop_in_the_middle_then_texts_go_to_the_fallback_silently(convo: Conversation) -> None:
    convo.say(ME, "Pothole on Bank", expect="Which city")
    convo.say(ME, "STOP", expect="no more messages")
    turn = convo.say(ME, "Another pothole on Elgin", silent=True)
    assert turn.step == "fallback"  # held, then sent on with the others: no more questions
    assert convo.fallback(ME) == [["Pothole on Bank", "Another pothole on Elgin"]]
    convo.say(ME, "HELP", expect="STOP")  # keywords are answered from anyone, even now
    convo.say(ME, "START", expect="subscribed again")
    convo.say(ME, "Ottawa", expect="Ottawa, ON")


def test_opted_out_resident_with_a_city_is_still_heard(convo: Conversation) -> None:
    convo.say(ME, "Ottawa", expect="Ottawa, ON")
    convo.say(ME, "arrêt", expect="Vous ne recevrez plus de messages")
    convo.say(ME, "CITY", silent=True)
    assert convo.state(ME).stage == "idle"
    convo.say(ME, "Garbage not picked up", silent=True)
    assert convo.delivered(ME) == [("ottawa", ["Garbage not picked up"])]


def test_help_and_info_do_not_disturb_the_dialogue(convo: Conversation) -> None:
    convo.say(YOU, "Le feu de circulation est en panne", expect="Dans quelle ville")
    convo.say(YOU, "INFO", expect="VILLE pour changer de ville")  # kept language: French
    convo.say(YOU, "HELP", expect="CITY to change city")  # English keyword: English answer
    assert convo.state(YOU).stage == "asking"
    convo.say(YOU, "Gatineau", expect="Gatineau, QC")
    assert convo.delivered(YOU) == [("gatineau", ["Le feu de circulation est en panne"])]


@pytest.mark.parametrize("word", ["STOP", "help", "Start", "INFO", "arrêt"])
def test_step_ignores_caller_keywords(directory: Directory, word: str) -> None:
    state = DialogueState(municipality_id="ottawa")
    assert step(state, Inbound(word), directory) == (state, [])


def test_a_keyword_with_media_is_a_text(directory: Directory) -> None:
    state = DialogueState(municipality_id="ottawa")
    _, actions = step(state, Inbound("CITY", has_media=True), directory)
    assert actions == [Deliver("ottawa", include_current=True)]


# -- state ---------------------------------------------------------------------------------------


def test_known_municipality_delivers_without_reply(directory: Directory) -> None:
    state = DialogueState(municipality_id="ottawa")
    new, actions = step(state, Inbound("Pothole on Bank St"), directory)
    assert actions == [Deliver("ottawa", include_current=True)]
    assert new == state


def test_blank_text_to_a_known_city_does_nothing(directory: Directory) -> None:
    state = DialogueState(municipality_id="ottawa")
    assert step(state, Inbound(""), directory) == (state, [])


def test_municipality_gone_from_the_map_asks_again(directory: Directory) -> None:
    state = DialogueState(municipality_id="atlantis")
    new, actions = step(state, Inbound("Pothole on Bank St"), directory)
    assert new.municipality_id is None and new.stage == "asking"
    assert actions[0] == Hold()


def test_state_round_trips_through_json() -> None:
    state = DialogueState(
        municipality_id="ottawa",
        language="fr",
        stage="choosing",
        attempts=2,
        candidates=("victoria-bc", "victoria-pe"),
        suggested_id="ottawa",
    )
    data = json.loads(json.dumps(state.to_dict()))
    assert DialogueState.from_dict(data) == state


@pytest.mark.parametrize(
    "data",
    [{}, None, {"v": 99, "municipality_id": "ottawa"}, {"municipality_id": "ottawa"}, [], "x"],
)
def test_unknown_state_gives_a_fresh_one(data: object) -> None:
    assert DialogueState.from_dict(data) == DialogueState()  # type: ignore[arg-type]


def test_bad_fields_fall_back_to_defaults() -> None:
    data = {
        "v": 1,
        "municipality_id": 5,
        "language": "de",
        "stage": "dancing",
        "attempts": -3,
        "candidates": "victoria",
        "suggested_id": ["x"],
    }
    assert DialogueState.from_dict(data) == DialogueState()
    assert DialogueState.from_dict({"v": 1, "attempts": True}).attempts == 0


def test_choosing_with_stale_candidates_falls_back_to_asking(directory: Directory) -> None:
    state = DialogueState(stage="choosing", candidates=("gone", "victoria-bc"))
    new, actions = step(state, Inbound("Laval"), directory)
    assert new.municipality_id == "laval"
    assert actions[-1] == Deliver("laval", include_current=False)


def test_max_attempts_is_three() -> None:
    assert MAX_ATTEMPTS == 3


# -- properties ----------------------------------------------------------------------------------

STATES = st.builds(
    DialogueState,
    municipality_id=st.sampled_from([None, "ottawa", "victoria-bc", "gone"]),
    language=st.sampled_from(prompts.LANGUAGES),
    stage=st.sampled_from(dialogue.STAGES),
    attempts=st.integers(0, MAX_ATTEMPTS - 1),
    candidates=st.sampled_from([(), ("victoria-bc", "victoria-pe"), ("gone",)]),
    suggested_id=st.sampled_from([None, "ottawa", "gone"]),
)
TEXTS = st.one_of(
    st.text(max_size=200),
    st.sampled_from(["1", "2", "9", "yes", "non", "Victoria", "CITY", "K1A", "BC", "Québec"]),
)


@settings(max_examples=300, deadline=None)
@given(state=STATES, text=TEXTS, media=st.booleans(), opted_out=st.booleans(),
       city=st.sampled_from([None, "Ottawa", "VICTORIA", ""]))
def test_step_never_fails_and_keeps_its_promises(
    state: DialogueState, text: str, media: bool, opted_out: bool, city: str | None
) -> None:
    directory = Directory(MUNICIPALITIES)
    inbound = Inbound(text, from_city=city, from_state="ON", has_media=media, opted_out=opted_out)
    new, actions = step(state, inbound, directory)
    assert DialogueState.from_dict(json.loads(json.dumps(new.to_dict()))) == new
    for action in actions:
        if isinstance(action, Reply):
            assert 0 < len(action.text) <= 160
            assert not opted_out
        if isinstance(action, Deliver):
            assert directory.get(action.municipality_id) is not None
    if new.stage == "choosing" and new is not state:
        assert len(new.candidates) >= 2
    assert new.attempts < MAX_ATTEMPTS
    assert sum(isinstance(a, Hold) for a in actions) <= 1


# -- the whole census directory -------------------------------------------------------------------

CENSUS_CSV = data_file("municipalities", "ocd_division_ids_ca", "derived_csd_with_province.csv")


@pytest.fixture(scope="module")
def census() -> Directory:
    return load_census_directory(CENSUS_CSV)


def test_census_script(conversation: MakeConversation, census: Directory) -> None:
    convo = conversation(census)
    convo.say(ME, "Il y a un nid-de-poule devant l'église", expect="Dans quelle ville")
    convo.say(ME, "Saint-Isidore", expect=re.compile(r"^Laquelle \? .*\n1 Saint-Isidore, "))
    convo.say(ME, "Saint-Isidore, Québec", expect="Laquelle")
    turn = convo.say(ME, "1", expect="Saint-Isidore, QC")
    held = ["Il y a un nid-de-poule devant l'église"]
    assert convo.delivered(ME) == [(convo.municipality(ME), held)]
    assert turn.step == "delivered"
    convo.say(YOU, "Victoria B.C.", expect="Victoria, BC")
    assert convo.municipality(YOU) == "victoria-bc"


def test_census_every_name_settles_or_asks_to_choose(census: Directory) -> None:
    """Each municipality's own name, as an answer: a confirmation of that very municipality,
    or a numbered choice that includes it when the name exists several times."""
    asking = DialogueState(stage="asking")
    for m in census.municipalities:
        new, actions = step(asking, Inbound(m.name), census)
        replies = [a.text for a in actions if isinstance(a, Reply)]
        assert len(replies) == 1 and len(replies[0]) <= 160, (m, replies)
        if new.stage == "idle":
            assert new.municipality_id == m.id, (m, new)
        else:
            assert new.stage == "choosing", (m, new)
            assert len(new.candidates) >= 2


def test_census_names_in_several_provinces_are_never_picked_silently(census: Directory) -> None:
    with CENSUS_CSV.open(encoding="utf-8") as f:
        shared = {r["name"] for r in csv.DictReader(f) if r["name_in_multiple_provinces"] == "1"}
    assert len(shared) > 50
    for name in sorted(shared):
        new, actions = step(DialogueState(), Inbound(name), census)
        assert new.stage == "choosing", (name, new, actions)
        assert Hold() not in actions
