"""`POST /sms/inbound` and `/sms/status` through Flask's test client, signed with the
real twilio RequestValidator, over a real SQLite store. The refusals (forged, malformed,
replayed requests) are the shared table every provider passes: tests/webhook_security.py."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient

from gateway.app import Gateway
from gateway.rules.resident_email import ResidentEmail
from gateway.web import create_app
from tests.gateway_fixtures import Resident, twiml_messages

OTTAWA_MAILBOX = "311@ottawa.example"


@pytest.fixture
def client(gateway: Gateway) -> FlaskClient:
    return create_app(gateway).test_client()


@pytest.fixture
def resident(client: FlaskClient, gateway: Gateway) -> Resident:
    return Resident(client, gateway.settings)


def queued_emails(gateway: Gateway) -> list[ResidentEmail]:
    return [
        ResidentEmail.from_dict(item.payload)
        for item in gateway.store.list_outbox("pending")
        if item.kind == "email"
    ]


# -- the dialogue, end to end through the webhook ---------------------------------------


def test_first_text_is_held_until_the_municipality_is_known(
    resident: Resident, gateway: Gateway
) -> None:
    resident.say("613-555-0100", "There is a pothole on Bank St", expect="city|town")
    assert queued_emails(gateway) == []  # held, not lost, not sent yet
    resident.say("613-555-0100", "otawa", expect="Ottawa")
    [email] = queued_emails(gateway)
    assert email.to == (OTTAWA_MAILBOX,)
    assert [t.body for t in email.texts] == ["There is a pothole on Bank St"]
    assert email.resident_e164 == "+16135550100"
    assert email.resident_national == "(613) 555-0100"


def test_known_resident_texts_go_straight_to_the_city_in_one_thread(
    resident: Resident, gateway: Gateway
) -> None:
    resident.say("+16135550101", "Garbage was not collected", expect="city|town")
    resident.say("+16135550101", "K1A 0B1", expect="Ottawa")
    resident.say("+16135550101", "Still not collected today", silent=True)
    first, second = queued_emails(gateway)
    assert first.subject == second.subject
    assert second.in_reply_to == first.message_id
    assert first.message_id in second.references
    assert first.reply_to == second.reply_to
    assert [t.body for t in second.texts] == ["Still not collected today"]


def test_ambiguous_name_gets_a_numbered_choice(resident: Resident, gateway: Gateway) -> None:
    resident.say("+12505550102", "Broken streetlight", expect="city|town")
    replies = resident.say("+12505550102", "Victoria", expect=r"1.*Victoria, BC|1.*Victoria, PE")
    assert "BC" in replies[0] and "PE" in replies[0]
    resident.say("+12505550102", "1" if replies[0].index("BC") < replies[0].index("PE") else "2",
                  expect="Victoria")
    [email] = queued_emails(gateway)
    assert email.to == ("311@victoria-bc.example",)


def test_french_resident_is_answered_in_french(resident: Resident, gateway: Gateway) -> None:
    resident.say(
        "+15145550103", "Bonjour, il y a un nid-de-poule dans ma rue", expect="ville|municipalit"
    )
    resident.say("+15145550103", "Verdun", expect="Montréal")
    [email] = queued_emails(gateway)
    assert email.to == ("311@montreal.example",)
    assert email.language == "fr"


def test_unresolvable_municipality_goes_to_the_fallback_mailbox(
    resident: Resident, gateway: Gateway
) -> None:
    resident.say("+16135550104", "Tree down on my street", expect="city|town")
    for _ in range(3):
        resident.say("+16135550104", "zzqx blorp")
    [email] = queued_emails(gateway)
    assert email.to == ("311-unrouted@gateway.example",)
    assert "Tree down on my street" in [t.body for t in email.texts]
    assert email.note


def test_city_keyword_changes_the_municipality(resident: Resident, gateway: Gateway) -> None:
    resident.say("+16135550105", "Noise complaint", expect="city|town")
    resident.say("+16135550105", "Ottawa", expect="Ottawa")
    resident.say("+16135550105", "CITY", expect="city|town")
    resident.say("+16135550105", "Montreal", expect="Montréal")
    resident.say("+16135550105", "Another noise complaint", silent=True)
    emails = queued_emails(gateway)
    assert [e.to for e in emails] == [(OTTAWA_MAILBOX,), ("311@montreal.example",)]
    assert emails[0].subject != emails[1].subject  # a new city is a new thread


# -- keywords ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("label", "text", "expect"),
    [
        ("stop", "STOP", r"START"),
        ("stop lower case", "stop", r"START"),
        ("arret accent", "Arrêt", r"START"),
        ("help", "HELP", r"STOP"),
        ("aide", "aide", r"STOP|ARRET"),
        ("start", "START", r"."),
    ],
)
def test_keywords_from_a_stranger_are_answered_never_emailed(
    resident: Resident, gateway: Gateway, label: str, text: str, expect: str
) -> None:
    replies = resident.say("+14165550106", text, expect=expect)
    assert len(replies) == 1, label
    assert queued_emails(gateway) == []


def test_after_stop_nothing_is_sent_until_start(resident: Resident, gateway: Gateway) -> None:
    resident.say("+16135550107", "Pothole", expect="city|town")
    resident.say("+16135550107", "Ottawa", expect="Ottawa")
    resident.say("+16135550107", "STOP", expect="START")
    resident.say("+16135550107", "CITY", silent=True)
    resident.say("+16135550107", "START", expect=".")
    resident.say("+16135550107", "CITY", expect="city|town")


# -- durability and dedupe -----------------------------------------------------------------


def test_a_repeated_message_sid_changes_nothing(resident: Resident, gateway: Gateway) -> None:
    resident.say("+16135550108", "Pothole", expect="city|town")
    resident.say("+16135550108", "Ottawa", expect="Ottawa")
    resident.say("+16135550108", "Second report", silent=True)
    before = queued_emails(gateway)
    response = resident.post(resident.last_form)  # Twilio retries the same MessageSid
    assert response.status_code == 200
    assert queued_emails(gateway) == before


def test_a_repeated_question_gets_the_same_answer(resident: Resident, gateway: Gateway) -> None:
    first = resident.say("+16135550109", "Pothole", expect="city|town")
    again = twiml_messages(resident.post(resident.last_form).data)
    assert again == first


def test_mms_media_are_kept_for_the_email(resident: Resident, gateway: Gateway) -> None:
    resident.say("+16135550110", "Graffiti", expect="city|town")
    resident.say("+16135550110", "Ottawa", expect="Ottawa")
    resident.say(
        "+16135550110",
        "Here is a photo",
        media_urls=[("https://api.twilio.com/2010-04-01/Accounts/AC1/Messages/MM1/Media/ME1",
                     "image/jpeg")],
    )
    email = queued_emails(gateway)[-1]
    [text] = email.texts
    assert [m.content_type for m in text.media] == ["image/jpeg"]
