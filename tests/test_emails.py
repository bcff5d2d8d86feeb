"""Email composition (gateway.rules.thread, resident_email, agent_notice, email_payload): threading,
tokens, formats, safety. No servers."""

from __future__ import annotations

import email
import email.policy
import json
import re
from dataclasses import replace
from datetime import UTC, datetime
from email.message import EmailMessage

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.rules.agent_notice import NOTICE_KINDS, AgentNotice, compose_notice
from gateway.rules.email_payload import from_payload
from gateway.rules.resident_email import (
    Attachment,
    MediaRef,
    ResidentEmail,
    ResidentText,
    compose,
    media_filename,
    safe_content_type,
)
from gateway.rules.thread import (
    format_national,
    is_token,
    local_name,
    new_message_id,
    new_token,
    next_thread_headers,
    reply_address,
    reply_subject,
    thread_subject,
)
from gateway.sms.twilio import errors as twilio_errors

NOV = datetime(2026, 11, 22, 15, 4, tzinfo=UTC)  # 10:04 EST in Ottawa
JULY = datetime(2026, 7, 2, 13, 30, tzinfo=UTC)  # 09:30 EDT in Montréal


def parse(message: EmailMessage) -> EmailMessage:
    """What the receiving side sees: the message serialised for SMTP, parsed back."""
    parsed = email.message_from_bytes(message.as_bytes(), policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def body_of(message: EmailMessage) -> str:
    part = message.get_body(("plain",))
    assert part is not None
    return str(part.get_content()).replace("\r\n", "\n")


def make_email(
    texts: tuple[ResidentText, ...] = (ResidentText(NOV, "Pothole on Bank St at Gladstone"),),
    *,
    token: str | None = None,
    thread: tuple[str, ...] = (),
    language: str = "en",
    municipality: str = "Ottawa",
    e164: str = "+16135550123",
    note: str | None = None,
    timezone: str = "America/Toronto",
    conversation_id: int = 42,
) -> ResidentEmail:
    national = format_national(e164)
    in_reply_to, references = next_thread_headers(thread)
    return ResidentEmail(
        conversation_id=conversation_id,
        from_address="311 Text <sms@gateway.example.ca>",
        to=("311@ottawa.example",),
        cc=("agent@ottawa.example",),
        reply_to=reply_address("reply+{token}@gateway.example.ca", token or new_token()),
        subject=thread_subject(municipality, national, language),
        message_id=new_message_id("gateway.example.ca"),
        in_reply_to=in_reply_to,
        references=references,
        resident_e164=e164,
        resident_national=national,
        municipality_name=municipality,
        language=language,
        texts=texts,
        note=note,
        timezone=timezone,
    )


# -- tokens, ids ------------------------------------------------------------------------


def test_tokens_are_long_lowercase_base32_and_unique() -> None:
    tokens = {new_token() for _ in range(2000)}
    assert len(tokens) == 2000
    for token in tokens:
        assert re.fullmatch(r"[a-z2-7]+", token)
        assert len(token) * 5 >= 128  # at least 128 bits of entropy
        assert is_token(token)
    # every base32 symbol shows up: the bits are really random, not a narrow alphabet
    assert set("".join(tokens)) == set("abcdefghijklmnopqrstuvwxyz234567")


def test_reply_address_carries_the_token() -> None:
    token = new_token()
    assert reply_address("reply+{token}@gw.example", token) == f"reply+{token}@gw.example"
    with pytest.raises(ValueError):
        reply_address("reply@gw.example", token)
    with pytest.raises(ValueError):
        reply_address("reply+{token}@gw.example", "Not A Token\r\nBcc: x@y")


def test_message_ids_are_rfc5322_and_unique() -> None:
    ids = {new_message_id("gateway.example.ca") for _ in range(1000)}
    assert len(ids) == 1000
    for message_id in ids:
        assert re.fullmatch(r"<[a-z0-9.]+@gateway\.example\.ca>", message_id)
    with pytest.raises(ValueError):
        new_message_id("")
    with pytest.raises(ValueError):
        new_message_id("a@b")


def test_references_chain_is_capped_to_first_and_last_twenty() -> None:
    assert next_thread_headers([]) == (None, ())
    assert next_thread_headers(["<a@x>"]) == ("<a@x>", ("<a@x>",))
    ids = [f"<m{i}@x>" for i in range(50)]
    in_reply_to, references = next_thread_headers(ids)
    assert in_reply_to == "<m49@x>"
    assert references == (ids[0], *ids[-20:])
    assert len(references) == 21
    # exactly 21 ids: nothing to trim
    assert next_thread_headers(ids[:21])[1] == tuple(ids[:21])


# -- numbers, subjects ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("e164", "expected"),
    [
        ("+16135550123", "(613) 555-0123"),
        ("+15145550199", "(514) 555-0199"),
        ("+12125550123", "(212) 555-0123"),  # NANP, not Canadian: still national
        ("+33123456789", "+33 1 23 45 67 89"),  # elsewhere: international format
        ("+442071838750", "+44 20 7183 8750"),
        ("31100", "31100"),  # a short code stays as it is
        ("not a number\r\n", "not a number"),
    ],
)
def test_format_national(e164: str, expected: str) -> None:
    assert format_national(e164) == expected


def test_subject_is_stable_and_in_the_residents_language() -> None:
    assert (
        thread_subject("Ottawa", "(613) 555-0123", "en") == "311 text from (613) 555-0123 — Ottawa"
    )
    assert (
        thread_subject("Montréal", "(514) 555-0199", "fr")
        == "Texto 311 de (514) 555-0199 — Montréal"
    )
    assert thread_subject("Ottawa", "(613) 555-0123", "en", 42).endswith(" [#42]")
    assert thread_subject("Ottawa", "(613) 555-0123", "xx") == thread_subject(
        "Ottawa", "(613) 555-0123", "en"
    )


def test_subject_names_the_municipality_in_the_residents_language() -> None:
    # The map's Montréal is {name: Montreal, name_fr: Montréal}: in French, the French name.
    assert thread_subject("Montreal", "(514) 555-0199", "fr", "abc123", name_fr="Montréal") == (
        "Texto 311 de (514) 555-0199 — Montréal [#abc123]"
    )
    assert thread_subject("Montreal", "(514) 555-0199", "en", name_fr="Montréal").endswith(
        "— Montreal"
    )
    assert thread_subject("Ottawa", "(613) 555-0123", "fr", name_fr=None).endswith("— Ottawa")
    assert local_name("Quebec City", "Québec", "fr") == "Québec"
    assert local_name("Quebec City", "Québec", "en") == "Quebec City"


def test_an_accented_subject_goes_as_encoded_words_and_comes_back_intact() -> None:
    subject = thread_subject("Montreal", "(514) 555-0199", "fr", "abc123", name_fr="Montréal")
    message = compose(replace(make_email(language="fr"), subject=subject))
    raw = message.as_bytes()
    header = re.search(rb"^Subject:.*(?:\r\n[ \t].*)*", raw, re.MULTILINE)
    assert header is not None and header.group(0).isascii() and b"=?utf-8?" in header.group(0)
    assert parse(message)["Subject"] == "Texto 311 de (514) 555-0199 — Montréal [#abc123]"
    # The SMTPUTF8 flavour (8-bit headers) decodes to the same subject.
    utf8 = message.as_bytes(policy=email.policy.SMTPUTF8)
    assert "Montréal".encode() in utf8
    parsed = email.message_from_bytes(utf8, policy=email.policy.default)
    assert parsed["Subject"] == "Texto 311 de (514) 555-0199 — Montréal [#abc123]"


# -- the thread --------------------------------------------------------------------------


def test_three_emails_of_a_conversation_form_one_thread() -> None:
    token = new_token()
    thread: list[str] = []
    received: list[EmailMessage] = []
    for n, text in enumerate(["Pothole on Bank St", "It is getting bigger", "Thanks!"]):
        resident_email = make_email(
            (ResidentText(NOV.replace(minute=n), text),), token=token, thread=tuple(thread)
        )
        received.append(parse(compose(resident_email)))
        thread.append(resident_email.message_id)
    first, second, third = received
    assert first["Subject"] == second["Subject"] == third["Subject"]
    assert str(first["Subject"]) == "311 text from (613) 555-0123 — Ottawa"
    assert first["In-Reply-To"] is None and first["References"] is None
    assert second["In-Reply-To"] == first["Message-ID"]
    assert second["References"] == first["Message-ID"]
    assert third["In-Reply-To"] == second["Message-ID"]
    assert third["References"].split() == [first["Message-ID"], second["Message-ID"]]
    assert len({m["Message-ID"] for m in received}) == 3
    for message in received:
        assert message["Reply-To"] == f"reply+{token}@gateway.example.ca"
        assert message["X-SMS311-Conversation"] == "42"
        assert message["To"] == "311@ottawa.example"
        assert message["Cc"] == "agent@ottawa.example"
        assert message["From"].addresses[0].addr_spec == "sms@gateway.example.ca"
        assert message["Auto-Submitted"] is None  # a resident's text is not automatic
    assert "Pothole on Bank St" in body_of(first)
    assert "It is getting bigger" in body_of(second)


def test_body_shows_the_text_first_then_a_footer_in_local_time() -> None:
    resident_email = make_email(
        (ResidentText(NOV, "Pothole on Bank St at Gladstone\nnear the café"),)
    )
    message = parse(compose(resident_email))
    assert message.get_content_type() == "text/plain"
    assert message.get_content_charset() == "utf-8"
    body = body_of(message)
    assert body.startswith("Pothole on Bank St at Gladstone\nnear the café\n")
    text, _, footer = body.partition("\n-- \n")
    assert "Pothole" in text and "Pothole" not in footer
    assert footer.strip() == (
        "From: (613) 555-0123 (Ottawa) — received 2026-11-22 10:04 EST — "
        "reply to this email to answer by text message"
    )
    assert message["Date"].datetime == NOV
    assert str(message["Date"]).endswith("-0500")


def test_french_footer_with_summer_time() -> None:
    resident_email = make_email(
        (ResidentText(JULY, "Nid-de-poule rue Sherbrooke"),),
        language="fr",
        municipality="Montréal",
        e164="+15145550199",
    )
    message = parse(compose(resident_email))
    assert str(message["Subject"]) == "Texto 311 de (514) 555-0199 — Montréal"
    footer = body_of(message).partition("\n-- \n")[2].strip()
    assert footer == (
        "De : (514) 555-0199 (Montréal) — reçu le 2026-07-02 09:30 HAE — "
        "répondez à ce courriel pour répondre par texto"
    )


def test_several_held_texts_and_a_note() -> None:
    texts = (
        ResidentText(NOV, "Broken streetlight"),
        ResidentText(NOV.replace(minute=9), "On Elgin St"),
    )
    note = "The resident's municipality could not be determined; held for the fallback mailbox"
    resident_email = make_email(texts, note=note, timezone="America/Vancouver")
    body = body_of(parse(compose(resident_email)))
    assert body.index(note) < body.index("Broken streetlight") < body.index("On Elgin St")
    assert "2 texts received 2026-11-22 07:04 to 07:09 PST" in body


def test_media_become_typed_attachments_and_failures_are_listed() -> None:
    jpeg = MediaRef(
        "https://api.twilio.com/2010-04-01/Accounts/AC1/Messages/MM1/Media/ME1", "image/jpeg"
    )
    png = MediaRef(
        "https://api.twilio.com/2010-04-01/Accounts/AC1/Messages/MM1/Media/ME2", "image/png"
    )
    resident_email = make_email((ResidentText(NOV, "", (jpeg, png)),))
    data = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4
    attachment = Attachment(media_filename(1, "image/jpeg"), "image/jpeg", data)
    message = parse(compose(resident_email, [attachment], failed_media=[png]))
    assert message.get_content_type() == "multipart/mixed"
    attachments = list(message.iter_attachments())
    assert len(attachments) == 1
    assert attachments[0].get_content_type() == "image/jpeg"
    assert attachments[0].get_filename() == "media-1.jpg"
    assert attachments[0].get_content() == data
    body = body_of(message)
    assert body.startswith("(no text)")
    assert png.url in body and jpeg.url not in body
    assert "media-1.jpg" in body


def test_media_filenames_and_content_types() -> None:
    assert media_filename(1, "image/jpeg") == "media-1.jpg"
    assert media_filename(2, "image/PNG; charset=binary") == "media-2.png"
    assert media_filename(3, "video/3gpp") == "media-3.3gp"
    assert media_filename(4, "application/x-unknown") == "media-4.bin"
    assert media_filename("media-1-2", "image/heic") == "media-1-2.heic"
    assert media_filename("../x\r\n", "image/gif") == "x.gif"
    assert safe_content_type("image/jpeg\r\nX-Evil: 1") == "application/octet-stream"
    assert safe_content_type("nonsense") == "application/octet-stream"
    message = compose(make_email(), [Attachment("../../etc/passwd\r\n", "bad\ntype", b"x")])
    (attachment,) = parse(message).iter_attachments()
    assert attachment.get_content_type() == "application/octet-stream"
    assert attachment.get_filename() == "passwd"


def test_round_trip_through_json() -> None:
    resident_email = make_email(
        (
            ResidentText(NOV, "one", (MediaRef("https://x.example/1", "image/gif"),)),
            ResidentText(NOV.replace(minute=7), "deux é"),
        ),
        thread=("<a@x>", "<b@x>"),
        note="a note",
    )
    payload = json.loads(json.dumps(resident_email.to_dict()))
    again = ResidentEmail.from_dict(payload)
    assert again == resident_email
    assert compose(again).as_bytes() == compose(resident_email).as_bytes()


def test_composing_is_deterministic_for_retries() -> None:
    resident_email = make_email()
    assert compose(resident_email).as_bytes() == compose(resident_email).as_bytes()


# -- header injection --------------------------------------------------------------------

EVIL = "Ottawa\r\nBcc: victim@evil.example\r\n\r\nInjected body"


def test_crlf_in_resident_values_cannot_inject_headers() -> None:
    resident_email = make_email(municipality=EVIL, e164="+1613\r\nBcc: x@evil.example")
    resident_email = ResidentEmail.from_dict(
        {
            **resident_email.to_dict(),
            "subject": "Hi\nBcc: victim@evil.example",
            "to": ["311@ottawa.example\r\nBcc: victim@evil.example"],
            "message_id": "<a@x>\r\nBcc: victim@evil.example",
            "references": ["<r@x>\nBcc: victim@evil.example"],
            "in_reply_to": "<r@x>\u2028Bcc: victim@evil.example",
            "reply_to": "reply@x\x85Bcc: victim@evil.example",
        }
    )
    raw = compose(resident_email).as_bytes()
    head = raw.split(b"\r\n\r\n", 1)[0]
    for line in head.split(b"\r\n"):
        assert not line.lower().startswith(b"bcc:"), line
    parsed = parse(compose(resident_email))
    assert parsed["Bcc"] is None
    assert "\n" not in str(parsed["Subject"]) and "\r" not in str(parsed["Subject"])
    assert body_of(parsed).startswith("Pothole on Bank St")


header_text = st.text(alphabet=st.characters(codec="utf-8"), max_size=60)


@settings(max_examples=150, deadline=None)
@given(municipality=header_text, number=header_text, subject=header_text, body=header_text)
def test_any_resident_input_gives_the_same_header_set(
    municipality: str, number: str, subject: str, body: str
) -> None:
    resident_email = ResidentEmail.from_dict(
        {
            **make_email((ResidentText(NOV, body),)).to_dict(),
            "municipality_name": municipality,
            "resident_national": number,
            "subject": subject,
            "note": subject,
        }
    )
    parsed = parse(compose(resident_email))
    assert sorted(parsed.keys()) == sorted(
        [
            "From", "To", "Cc", "Reply-To", "Subject", "Date", "Message-ID",
            "X-SMS311-Conversation", "MIME-Version", "Content-Type", "Content-Transfer-Encoding",
        ]
    )  # fmt: skip
    assert "\n" not in str(parsed["Subject"]) and "\r" not in str(parsed["Subject"])
    assert " ".join(body.split()) in " ".join(body_of(parsed).split())


# -- notices to the agent ------------------------------------------------------------------

AGENT = "jane.doe@ottawa.example"
REPLY = "We will fill the pothole on Bank St by Friday. Thank you for letting us know!"


def make_notice(
    kind: str = "opted_out",
    details: dict[str, object] | None = None,
    *,
    language: str = "en",
    subject: str | None = None,
    thread: tuple[str, ...] = ("<first@gateway.example.ca>", "<second@gateway.example.ca>"),
) -> AgentNotice:
    in_reply_to, references = next_thread_headers(thread)
    return AgentNotice(
        conversation_id=42,
        from_address="311 Text <sms@gateway.example.ca>",
        to=(AGENT,),
        reply_to=reply_address("reply+{token}@gateway.example.ca", new_token()),
        subject=subject or thread_subject("Ottawa", "(613) 555-0123", "en"),
        message_id=new_message_id("gateway.example.ca"),
        in_reply_to=in_reply_to,
        references=references,
        language=language,
        kind=kind,
        details={"reply_excerpt": REPLY, **(details or {})},
        date=NOV,
    )


def notice_text(notice: AgentNotice) -> tuple[EmailMessage, str]:
    """The notice as the worker composes it for a Twilio gateway (Twilio's code texts)."""
    parsed = parse(compose_notice(notice, twilio_errors.describe))
    return parsed, " ".join(body_of(parsed).split())


@pytest.mark.parametrize(
    ("kind", "details", "english", "french"),
    [
        (
            "shortened",
            {"sent_chars": 7995, "original_chars": 23000},
            "too long for text messages: the resident received the first 7995 of its 23000",
            "trop longue pour des textos : la personne en a reçu les 7995 premiers caractères sur 23000",
        ),
        (
            "opted_out",
            {},
            "NOT texted: the resident has opted out of text messages (they texted STOP)",
            "la personne s'est désabonnée (elle a texté ARRET ou STOP)",
        ),
        (
            "delivery_failed",
            {"status": "undelivered", "error_code": 30003},
            "could not be delivered to the resident's phone (undelivered, error 30003: the phone is unreachable",
            "n'a pas pu être livrée au téléphone de la personne (non livré, erreur 30003 : le téléphone est injoignable",
        ),
        (
            "not_sent",
            {"reason": "the number is not a mobile number", "error_code": 21614},
            "Your reply was not texted: the number is not a mobile number.",
            "Votre réponse n'a pas été envoyée par texto : pas un numéro de cellulaire.",
        ),
    ],
)
def test_each_notice_kind(kind: str, details: dict[str, object], english: str, french: str) -> None:
    notice = make_notice(kind, details)
    parsed, text = notice_text(notice)
    assert parsed["X-SMS311-Notice"] == kind
    assert parsed["Auto-Submitted"] == "auto-generated"
    assert parsed["X-Auto-Response-Suppress"] == "All"
    assert parsed["X-SMS311-Conversation"] == "42"
    assert parsed["From"] == "311 Text <sms@gateway.example.ca>"
    assert parsed["To"] == AGENT and parsed["Cc"] is None
    assert parsed["Reply-To"] == notice.reply_to
    # in the thread
    assert parsed["Subject"] == "Re: 311 text from (613) 555-0123 — Ottawa"
    assert parsed["Message-ID"] == notice.message_id
    assert parsed["In-Reply-To"] == "<second@gateway.example.ca>"
    assert parsed["References"] == "<first@gateway.example.ca> <second@gateway.example.ca>"
    assert parsed["Date"] == "Sun, 22 Nov 2026 10:04:00 -0500"
    assert english in text
    assert french in text
    assert text.index(english) < text.index(french)  # English first for an English notice
    assert f"> {REPLY}" in body_of(parsed)
    assert len(body_of(parsed)) < 1200  # short


def test_french_notice_puts_french_first() -> None:
    _, text = notice_text(make_notice("opted_out", language="fr"))
    assert text.index("Votre réponse n'a PAS été envoyée") < text.index("Your reply was NOT texted")
    assert "Votre réponse / Your reply:" in text


def test_re_is_never_doubled() -> None:
    for subject in ("RE: Pothole", "Re: Pothole", "re : Pothole", " Re:Pothole"):
        parsed, _ = notice_text(make_notice(subject=subject))
        assert str(parsed["Subject"]).lower().count("re") == 1, subject
    assert reply_subject("Pothole") == "Re: Pothole"
    assert reply_subject("Réparation") == "Re: Réparation"  # "Ré…" is not "Re:"


def test_first_notice_of_a_thread_and_cc() -> None:
    notice = make_notice(thread=())
    notice = AgentNotice.from_dict({**notice.to_dict(), "cc": ["311@ottawa.example"]})
    parsed, _ = notice_text(notice)
    assert parsed["In-Reply-To"] is None and parsed["References"] is None
    assert parsed["Cc"] == "311@ottawa.example"


def test_delivery_failed_with_unknown_or_missing_codes() -> None:
    _, text = notice_text(
        make_notice(
            "delivery_failed",
            {"status": "failed", "error_code": 39999, "error_message": "Carrier says no"},
        )
    )
    assert "(failed, error 39999: Carrier says no)" in text
    assert "(échec, erreur 39999 : Carrier says no)" in text
    _, text = notice_text(make_notice("delivery_failed", {"status": "undelivered"}))
    assert "phone (undelivered)." in text
    _, text = notice_text(make_notice("delivery_failed", {"error_code": "30007"}))
    assert "(error 30007: filtered by the carrier as spam)" in text
    _, text = notice_text(make_notice("delivery_failed", {"error_code": 21610}))
    assert "opted out (texted STOP)" in text


def test_a_provider_without_descriptions_shows_the_bare_code() -> None:
    notice = make_notice("delivery_failed", {"status": "undelivered", "error_code": 30003})
    text = " ".join(body_of(parse(compose_notice(notice))).split())
    assert "(undelivered, error 30003)." in text
    assert "unreachable" not in text


def test_not_sent_without_a_reason() -> None:
    _, text = notice_text(make_notice("not_sent", {}))
    assert "Your reply was not texted." in text
    assert "Votre réponse n'a pas été envoyée par texto." in text


def test_excerpt_is_the_start_of_the_reply_quoted() -> None:
    long_reply = "Line one of the answer.\r\n\r\n" + "word " * 100
    parsed, _ = notice_text(make_notice(details={"reply_excerpt": long_reply}))
    body = body_of(parsed)
    assert "> Line one of the answer.\n>\n> word word" in body
    quoted = "".join(line[2:] for line in body.splitlines() if line.startswith("> "))
    assert quoted.endswith("word…") and len(quoted) <= 200
    _, text = notice_text(make_notice(details={"reply_excerpt": ""}))
    assert "Your reply /" not in text


def test_notice_round_trip_and_retry_is_the_same_email() -> None:
    notice = make_notice("shortened", {"sent_chars": 10, "original_chars": 20})
    payload = json.loads(json.dumps(notice.to_dict()))
    assert payload["type"] == "notice"
    again = AgentNotice.from_dict(payload)
    assert again == notice
    assert from_payload(payload) == notice
    assert compose_notice(again).as_bytes() == compose_notice(notice).as_bytes()


def test_notice_date_is_fixed_when_made() -> None:
    notice = AgentNotice.from_dict(
        {k: v for k, v in make_notice().to_dict().items() if k != "date"}
    )
    assert notice.date.tzinfo is not None
    assert abs((datetime.now(UTC) - notice.date).total_seconds()) < 60
    again = AgentNotice.from_dict(json.loads(json.dumps(notice.to_dict())))
    assert compose_notice(again).as_bytes() == compose_notice(notice).as_bytes()


def test_unknown_notice_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown notice kind"):
        make_notice("postcard")
    with pytest.raises(ValueError):
        AgentNotice.from_dict({**make_notice().to_dict(), "kind": "postcard"})


def test_resident_payloads_are_typed_and_old_ones_still_read() -> None:
    resident_email = make_email()
    payload = json.loads(json.dumps(resident_email.to_dict()))
    assert payload["type"] == "resident"
    assert ResidentEmail.from_dict(payload) == resident_email
    assert from_payload(payload) == resident_email
    del payload["type"]  # a payload queued before issue 3
    assert from_payload(payload) == resident_email


def test_crlf_in_notice_values_cannot_inject_headers() -> None:
    notice = AgentNotice.from_dict(
        {
            **make_notice("not_sent").to_dict(),
            "subject": "Hi\r\nBcc: victim@evil.example",
            "to": ["jane@ottawa.example\r\nBcc: victim@evil.example"],
            "reply_to": "reply@x\nBcc: victim@evil.example",
            "in_reply_to": "<r@x>\u2028Bcc: victim@evil.example",
            "details": {"reason": "bad\r\nBcc: victim@evil.example", "reply_excerpt": "x"},
        }
    )
    raw = compose_notice(notice).as_bytes()
    head = raw.split(b"\r\n\r\n", 1)[0]
    for line in head.split(b"\r\n"):
        assert not line.lower().startswith(b"bcc:"), line
    assert parse(compose_notice(notice))["Bcc"] is None


@settings(max_examples=100, deadline=None)
@given(
    kind=st.sampled_from(NOTICE_KINDS),
    language=st.sampled_from(["en", "fr", "es"]),
    excerpt=header_text,
    reason=header_text,
    code=st.one_of(st.none(), st.integers(-5, 99999), st.text(max_size=6)),
)
def test_any_notice_composes(
    kind: str, language: str, excerpt: str, reason: str, code: object
) -> None:
    notice = make_notice(
        kind,
        {"reply_excerpt": excerpt, "reason": reason, "error_code": code, "status": reason,
         "sent_chars": code, "original_chars": code},
        language=language,
    )  # fmt: skip
    parsed, text = notice_text(notice)
    assert parsed["X-SMS311-Notice"] == kind and parsed["Auto-Submitted"] == "auto-generated"
    assert text


# -- the copy of a console reply ---------------------------------------------------------


def console_copy(details: dict[str, object], *, language: str = "en") -> AgentNotice:
    notice = make_notice("console_reply", language=language)
    return AgentNotice.from_dict(
        {**notice.to_dict(), "to": ["311@ottawa.example"], "cc": [AGENT], "details": details}
    )


COPY = {
    "agent_name": "Sam Tremblay",
    "agent_email": "sam.tremblay@ottawa.example",
    "text": "A crew will fix it this week.\n\nThank you!",
    "outcome": "texted",
    "parts": 1,
    "shortened": False,
}


def test_console_reply_copy_shows_who_answered_and_the_whole_reply() -> None:
    parsed, text = notice_text(console_copy(COPY))
    body = body_of(parsed)
    assert parsed["X-SMS311-Notice"] == "console_reply"
    assert parsed["To"] == "311@ottawa.example" and parsed["Cc"] == AGENT
    assert parsed["Subject"] == "Re: 311 text from (613) 555-0123 — Ottawa"
    assert parsed["In-Reply-To"] == "<second@gateway.example.ca>"
    english = (
        "Sam Tremblay (sam.tremblay@ottawa.example) answered from the 311 web console. "
        "The reply was texted to the resident."
    )
    french = (
        "Sam Tremblay (sam.tremblay@ottawa.example) a répondu depuis la console web 311. "
        "La réponse a été envoyée par texto à la personne."
    )
    assert text.index(english) < text.index(french)
    assert "Reply / Réponse :\n> A crew will fix it this week.\n>\n> Thank you!\n\n-- \n" in body
    assert body.endswith(
        "-- \nAutomatic copy from the 311 text gateway — reply to this email to answer by "
        "text message\nCopie automatique de la passerelle texto 311 — répondez à ce courriel "
        "pour répondre par texto\n"
    )
    assert "Automatic notice" not in body  # it is a copy, not a notice about the agent's reply


def test_console_reply_copy_in_french_several_parts_and_shortened() -> None:
    details = {**COPY, "parts": 5, "shortened": True}
    parsed, text = notice_text(console_copy(details, language="fr"))
    french = (
        "La réponse a été envoyée par texto à la personne en 5 textos "
        "(raccourcie : elle était trop longue)."
    )
    english = "The reply was texted to the resident in 5 messages (shortened: it was too long)."
    assert text.index(french) < text.index(english)
    assert "Réponse / Reply:\n> A crew" in body_of(parsed)
    assert body_of(parsed).partition("\n-- \n")[2].startswith("Copie automatique")


def test_console_reply_copy_when_the_resident_opted_out() -> None:
    _, text = notice_text(console_copy({**COPY, "outcome": "opted_out", "parts": 0}))
    assert (
        "answered from the 311 web console. The reply was NOT texted: the resident has "
        "opted out of text messages (they texted STOP). Nothing can be sent to them until "
        "they text START." in text
    )
    assert (
        "a répondu depuis la console web 311. La réponse n'a PAS été envoyée par texto : la "
        "personne s'est désabonnée (elle a texté ARRET ou STOP)." in text
    )
    assert "texted to the resident" not in text and "envoyée par texto à la personne" not in text


def test_console_reply_copy_names_whoever_is_known() -> None:
    _, text = notice_text(console_copy({**COPY, "agent_name": None}))
    assert "sam.tremblay@ottawa.example answered from the 311 web console." in text
    _, text = notice_text(console_copy({**COPY, "agent_name": "Sam\r\nBcc: x@evil.example"}))
    assert "Sam Bcc: x@evil.example (sam.tremblay@ottawa.example) answered" in text
    _, text = notice_text(console_copy({"text": "Hi"}))  # a payload with almost nothing
    assert "An agent answered from the 311 web console." in text
    assert "Un agent a répondu depuis la console web 311." in text
    assert "> Hi" in text


def test_console_reply_copy_quotes_a_long_reply_whole() -> None:
    long_reply = "Line one.\n\n" + "word " * 1000
    parsed, _ = notice_text(console_copy({**COPY, "text": long_reply}))
    quoted = [line for line in body_of(parsed).splitlines() if line.startswith(">")]
    assert quoted[0] == "> Line one." and quoted[1] == ">"
    assert " ".join(q[2:] for q in quoted[2:]).split() == ["word"] * 1000  # not cut


def test_console_reply_copy_round_trips() -> None:
    notice = console_copy(COPY)
    payload = json.loads(json.dumps(notice.to_dict()))
    assert from_payload(payload) == notice
    assert compose_notice(AgentNotice.from_dict(payload)).as_bytes() == (
        compose_notice(notice).as_bytes()
    )
