"""The console through Flask's test client over a real SQLite store: sign-in, CSRF, headers,
isolation by URL, replies on the outbox path, assignment, notes, export, audit, live refresh,
reply emails that were not texted."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyotp
import pytest

from gateway.app import Gateway
from gateway.rules.agent_notice import AgentNotice
from gateway.rules.resident_email import ResidentEmail
from gateway.settings import load_settings
from gateway.sms.base import InboundText
from gateway.store import open_store
from gateway.store.console import Scope
from gateway.store.reply_mail import list_failed_emails
from gateway.web import create_app
from gateway.web.console import CONTENT_SECURITY_POLICY
from tests.console_fixtures import PASSWORD, ConsoleClient, add_user
from tests.flow_helpers import agent_reply
from tests.flow_helpers import handle as reply_by_email
from tests.gateway_fixtures import migrated_gateway, write_settings

OTTAWA_PHONE = "+16135550123"
MONTREAL_PHONE = "+15145550199"
_sids = iter(range(1_000_000))


def make_gateway(folder: Path, **kwargs: Any) -> Gateway:
    gateway: Gateway = migrated_gateway(folder, **kwargs)
    return gateway


@pytest.fixture(params=["sqlite", "postgresql"])
def gateway_options(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The console's tests run on both stores (the scale-out one too): conftest's `gateway`
    on SQLite, and on a migrated PostgreSQL schema."""
    if request.param == "postgresql":
        return {"database": request.getfixturevalue("pg_store_url")}
    return {}


def text_in(gateway: Gateway, body: str, phone: str = OTTAWA_PHONE) -> None:
    gateway.inbound.handle(InboundText(sid=f"SM{next(_sids):032d}", phone=phone, to="31100",
                                       body=body, received_at=datetime.now(UTC)))


def conversation_of(gateway: Gateway, phone: str, first: str, city: str) -> int:
    text_in(gateway, first, phone)
    text_in(gateway, city, phone)
    with gateway.store.transaction() as tx:
        found = tx.open_conversation(phone, "ottawa" if city == "Ottawa" else "montreal")
    assert found is not None
    return found.id


def client(gateway: Gateway) -> ConsoleClient:
    return ConsoleClient(create_app(gateway).test_client())


def outbox(gateway: Gateway, kind: str) -> list[dict[str, Any]]:
    return [i.payload for i in gateway.store.list_outbox(None) if i.kind == kind]


@pytest.fixture
def ottawa(gateway: Gateway) -> int:
    return conversation_of(gateway, OTTAWA_PHONE, "Pothole on Bank St", "Ottawa")


@pytest.fixture
def montreal(gateway: Gateway) -> int:
    return conversation_of(gateway, MONTREAL_PHONE, "Nid-de-poule rue Sherbrooke", "Montréal")


@pytest.fixture
def dana(gateway: Gateway) -> ConsoleClient:
    add_user(gateway, "dana@ottawa.example", "Dana Agent")
    console = client(gateway)
    assert console.login("dana@ottawa.example").status_code == 302
    return console


# -- sign-in -------------------------------------------------------------------------------


def test_login_page_labels_in_english_and_french(gateway: Gateway) -> None:
    page = client(gateway).get("/console/login").get_data(as_text=True)
    assert re.search(r'<label for="email">Email</label>', page)
    assert re.search(r'<label for="password">Password</label>', page)
    assert ">Sign in</button>" in page and '<html lang="en">' in page
    french = client(gateway).get("/console/login", headers={"Accept-Language": "fr-CA,fr;q=0.9"})
    text = french.get_data(as_text=True)
    assert '<html lang="fr">' in text
    assert ">Courriel</label>" in text and ">Mot de passe</label>" in text
    assert ">Se connecter</button>" in text


def test_wrong_password_and_unknown_email_look_the_same(gateway: Gateway) -> None:
    add_user(gateway, "dana@ottawa.example", "Dana")
    bad = client(gateway).login("dana@ottawa.example", "wrong password here")
    unknown = client(gateway).login("nobody@ottawa.example", "wrong password here")
    assert bad.status_code == unknown.status_code == 401
    assert "Wrong email or password." in bad.get_data(as_text=True)
    assert "Wrong email or password." in unknown.get_data(as_text=True)


def test_login_attempts_are_rate_limited(gateway: Gateway) -> None:
    add_user(gateway, "dana@ottawa.example", "Dana")
    console = client(gateway)
    for _ in range(gateway.settings.console.login_max_failures):
        assert console.login("dana@ottawa.example", "not the password").status_code == 401
    # Even the right password is refused while the window lasts.
    assert console.login("dana@ottawa.example").status_code == 429


def test_session_cookie_flags(tmp_path: Path) -> None:
    gw = make_gateway(tmp_path, public_url="https://sms.example.ca")
    try:
        add_user(gw, "dana@ottawa.example", "Dana")
        console = client(gw)
        response = console.login("dana@ottawa.example")
        cookie = response.headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" in cookie
    finally:
        gw.close()


def test_security_headers_on_console_pages(gateway: Gateway) -> None:
    response = client(gateway).get("/console/login")
    assert response.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert "script-src 'self'" in CONTENT_SECURITY_POLICY and "unsafe" not in CONTENT_SECURITY_POLICY
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Cache-Control"] == "no-store"
    assert "<script>" not in response.get_data(as_text=True)  # no inline script at all


def test_pages_need_a_session(gateway: Gateway, ottawa: int) -> None:
    anonymous = client(gateway)
    response = anonymous.get(f"/console/conversations/{ottawa}")
    assert response.status_code == 302 and "/console/login" in response.headers["Location"]
    htmx = anonymous.get(f"/console/conversations/{ottawa}/live", headers={"HX-Request": "true"})
    assert htmx.status_code == 401 and "/console/login" in htmx.headers["HX-Redirect"]


def test_next_is_followed_inside_the_console_only(gateway: Gateway, ottawa: int) -> None:
    add_user(gateway, "dana@ottawa.example", "Dana")
    console = client(gateway)
    console.get("/console/login")
    good = console.client.post(f"/console/login?next=/console/conversations/{ottawa}",
                               data={"email": "dana@ottawa.example", "password": PASSWORD,
                                     "csrf_token": console.csrf})
    assert good.headers["Location"].endswith(f"/console/conversations/{ottawa}")
    other = client(gateway)
    other.get("/console/login")
    evil = other.client.post("/console/login?next=https://evil.example/console/x",
                             data={"email": "dana@ottawa.example", "password": PASSWORD,
                                   "csrf_token": other.csrf})
    assert "evil.example" not in evil.headers["Location"]


def test_csrf_is_required_on_every_form(gateway: Gateway, ottawa: int, dana: ConsoleClient) -> None:
    refused = dana.post(f"/console/conversations/{ottawa}/reply", csrf=False, text="Hello")
    assert refused.status_code == 400
    forged = dana.post(f"/console/conversations/{ottawa}/note", csrf=False,
                       csrf_token="forged", note="x")
    assert forged.status_code == 400
    assert outbox(gateway, "sms") == []
    # htmx requests carry the token in a header instead.
    ok = dana.client.post(f"/console/conversations/{ottawa}/count", data={"text": "hi"},
                          headers={"X-CSRFToken": dana.csrf, "HX-Request": "true"})
    assert ok.status_code == 200
    assert dana.client.post(f"/console/conversations/{ottawa}/count", data={"text": "hi"},
                            headers={"HX-Request": "true"}).status_code == 400


def test_webhooks_are_not_behind_csrf(gateway: Gateway) -> None:
    # Twilio's webhook is signature-checked instead: an unsigned post is 403, not 400 (CSRF).
    response = create_app(gateway).test_client().post("/sms/inbound", data={"From": "+1"})
    assert response.status_code == 403


def test_one_time_password_must_be_changed_first(gateway: Gateway) -> None:
    add_user(gateway, "new@ottawa.example", "New Agent", must_change_password=True)
    console = client(gateway)
    assert console.login("new@ottawa.example").headers["Location"].endswith("/console/password")
    assert console.get("/console/conversations").headers["Location"].endswith("/console/password")
    console.get("/console/password")
    refused = console.post("/console/password", current_password=PASSWORD,
                           new_password="short", repeat_password="short")
    assert refused.status_code == 400
    assert "The new password must be at least 12 characters." in refused.get_data(as_text=True)
    changed = console.post("/console/password", current_password=PASSWORD,
                           new_password="a much better passphrase",
                           repeat_password="a much better passphrase")
    assert changed.status_code == 302
    assert console.get("/console/conversations").status_code == 200


def test_a_new_password_ends_other_sessions(gateway: Gateway, dana: ConsoleClient) -> None:
    assert dana.get("/console/conversations").status_code == 200
    second = client(gateway)
    second.login("dana@ottawa.example")
    second.get("/console/password")
    second.post("/console/password", current_password=PASSWORD,
                new_password="another long passphrase", repeat_password="another long passphrase")
    assert second.get("/console/conversations").status_code == 200  # this session follows
    assert dana.get("/console/conversations").status_code == 302  # the old one is over


def test_disabled_accounts_are_signed_out(gateway: Gateway, dana: ConsoleClient) -> None:
    with gateway.console.transaction() as tx:
        account = tx.user_by_email("dana@ottawa.example")
        assert account is not None
        tx.set_disabled(account.id, True, datetime.now(UTC))
    assert dana.get("/console/conversations").status_code == 302
    assert client(gateway).login("dana@ottawa.example").status_code == 401


def test_totp_second_step(gateway: Gateway) -> None:
    user = add_user(gateway, "dana@ottawa.example", "Dana")
    secret = pyotp.random_base32()
    with gateway.console.transaction() as tx:
        tx.set_totp(user.id, secret, datetime.now(UTC))
    console = client(gateway)
    step = console.login("dana@ottawa.example")
    assert step.headers["Location"].split("?")[0].endswith("/console/login/code")
    assert console.get("/console/conversations").status_code == 302  # not signed in yet
    console.get("/console/login/code")
    assert console.post("/console/login/code", code="000000").status_code == 401
    done = console.post("/console/login/code", code=pyotp.TOTP(secret).now())
    assert done.status_code == 302
    assert console.get("/console/conversations").status_code == 200


def test_logout(gateway: Gateway, dana: ConsoleClient) -> None:
    dana.get("/console/conversations")
    assert dana.post("/console/logout").status_code == 302
    assert dana.get("/console/conversations").status_code == 302


# -- isolation ------------------------------------------------------------------------------


def test_agents_see_only_their_municipalities(
    gateway: Gateway, ottawa: int, montreal: int, dana: ConsoleClient
) -> None:
    listing = dana.get("/console/conversations").get_data(as_text=True)
    assert "(613) 555-0123" in listing and "(514) 555-0199" not in listing
    assert f"/console/conversations/{montreal}" not in listing
    for path in (
        f"/console/conversations/{montreal}",
        f"/console/conversations/{montreal}/live",
        f"/console/conversations/{montreal}/export",
        f"/console/conversations/{montreal}/export.csv",
        f"/console/conversations/{montreal}/media/1/0",
        f"/console/conversations/{montreal}/canned",
    ):
        assert dana.get(path).status_code == 404, path
    for path, form in (
        (f"/console/conversations/{montreal}/reply", {"text": "hi", "request_key": "k1"}),
        (f"/console/conversations/{montreal}/note", {"note": "x"}),
        (f"/console/conversations/{montreal}/assign", {"agent": "me"}),
        (f"/console/conversations/{montreal}/close", {}),
        (f"/console/conversations/{montreal}/count", {"text": "hi"}),
    ):
        assert dana.post(path, **form).status_code == 404, path
    searched = dana.get("/console/conversations?filter=all&q=Sherbrooke").get_data(as_text=True)
    assert "(514) 555-0199" not in searched
    by_number = dana.get("/console/conversations?filter=all&q=514-555-0199").get_data(as_text=True)
    assert "(514) 555-0199" not in by_number
    assert outbox(gateway, "sms") == []
    with gateway.console.reading() as tx:
        closed = tx.conversation(montreal, tx.get_user(1).scope)  # type: ignore[union-attr]
    assert closed is None


def test_admins_see_every_municipality(gateway: Gateway, ottawa: int, montreal: int) -> None:
    add_user(gateway, "root@city.example", "Admin", role="admin", municipalities=())
    admin = client(gateway)
    admin.login("root@city.example")
    listing = admin.get("/console/conversations").get_data(as_text=True)
    assert "(613) 555-0123" in listing and "(514) 555-0199" in listing
    assert admin.get(f"/console/conversations/{montreal}").status_code == 200


def test_a_garbled_cursor_shows_the_first_page(
    gateway: Gateway, ottawa: int, dana: ConsoleClient
) -> None:
    for cursor in ("None", "!!!", "eyJ4IjogMX0", "x" * 300):
        response = dana.get(f"/console/conversations?cursor={cursor}")
        assert response.status_code == 200, cursor
        assert "(613) 555-0123" in response.get_data(as_text=True)


def test_search_by_number_and_words(gateway: Gateway, ottawa: int, dana: ConsoleClient) -> None:
    conversation_of(gateway, "+16135550777", "Garbage not collected", "Ottawa")
    words = dana.get("/console/conversations?filter=all&q=pothole bank").get_data(as_text=True)
    assert "(613) 555-0123" in words and "(613) 555-0777" not in words
    number = dana.get("/console/conversations?filter=all&q=(613) 555-0777").get_data(as_text=True)
    assert "(613) 555-0777" in number and "(613) 555-0123" not in number


# -- working a conversation -----------------------------------------------------------------


def test_conversation_page_shows_the_thread(gateway: Gateway, ottawa: int, dana: ConsoleClient) -> None:
    page = dana.get(f"/console/conversations/{ottawa}").get_data(as_text=True)
    assert "Pothole on Bank St" in page
    assert "Ottawa, ON" in page and "English" in page and "Subscribed" in page
    assert 'id="segment-counter"' in page


def test_console_reply_goes_through_the_outbox_once(
    gateway: Gateway, ottawa: int, dana: ConsoleClient
) -> None:
    path = f"/console/conversations/{ottawa}"
    key = dana.request_key(path)
    first = dana.post(f"{path}/reply", text="A crew is on the way.", request_key=key)
    assert first.status_code == 302
    again = dana.post(f"{path}/reply", text="A crew is on the way.", request_key=key)  # double click
    assert again.status_code == 302
    [sms] = outbox(gateway, "sms")
    assert sms["to"] == OTTAWA_PHONE and sms["body"] == "A crew is on the way."
    copies = [AgentNotice.from_dict(p) for p in outbox(gateway, "email")
              if p.get("type") == "notice"]
    [copy] = copies
    assert copy.kind == "console_reply" and copy.to == ("311@ottawa.example",)
    assert copy.details["text"] == "A crew is on the way."
    with gateway.store.transaction() as tx:
        conversation = tx.get_conversation(ottawa)
        messages = tx.messages_of(ottawa)
    assert conversation is not None and conversation.agent_address == "dana@ottawa.example"
    assert copy.message_id in conversation.thread_message_ids
    [out] = [m for m in messages if m.direction == "out"]
    assert (out.via, out.status, out.agent_address) == ("console", "queued", "dana@ottawa.example")
    page = dana.get(path).get_data(as_text=True)
    assert "A crew is on the way." in page and "from the console" in page and "Queued" in page


def test_reply_to_an_opted_out_resident_is_not_sent(
    gateway: Gateway, ottawa: int, dana: ConsoleClient
) -> None:
    text_in(gateway, "STOP")
    path = f"/console/conversations/{ottawa}"
    page = dana.get(path).get_data(as_text=True)
    assert "Opted out" in page
    response = dana.post(f"{path}/reply", text="Hello?", request_key=dana.request_key(path))
    assert response.status_code == 302
    assert outbox(gateway, "sms") == []
    follow = dana.get(path).get_data(as_text=True)
    assert "texted STOP" in follow and "Not sent" in follow


def test_assignment_is_the_sticky_agent_of_the_email_side(
    gateway: Gateway, ottawa: int, dana: ConsoleClient
) -> None:
    add_user(gateway, "sam@ottawa.example", "Sam Agent")
    path = f"/console/conversations/{ottawa}"
    dana.get(path)
    assert dana.post(f"{path}/assign", agent="sam@ottawa.example").status_code == 302
    text_in(gateway, "Any news?")
    last = ResidentEmail.from_dict([p for p in outbox(gateway, "email")
                                    if p.get("type", "resident") == "resident"][-1])
    assert last.to == ("sam@ottawa.example",) and last.cc == ("311@ottawa.example",)
    # Not to someone outside the municipality.
    assert dana.post(f"{path}/assign", agent="mallory@evil.example").status_code == 400
    assert dana.post(f"{path}/assign", agent="me").status_code == 302
    mine = dana.get("/console/conversations?filter=mine").get_data(as_text=True)
    assert "(613) 555-0123" in mine
    assert dana.post(f"{path}/assign", agent="").status_code == 302
    unassigned = dana.get("/console/conversations?filter=unassigned").get_data(as_text=True)
    assert "(613) 555-0123" in unassigned


def test_notes_close_and_reopen(gateway: Gateway, ottawa: int, dana: ConsoleClient) -> None:
    path = f"/console/conversations/{ottawa}"
    dana.get(path)
    dana.post(f"{path}/note", note="Called the roads department")
    assert outbox(gateway, "sms") == []  # a note is never texted
    assert "Called the roads department" in dana.get(path).get_data(as_text=True)
    dana.post(f"{path}/close")
    assert "(613) 555-0123" in dana.get("/console/conversations?filter=closed").get_data(as_text=True)
    assert "(613) 555-0123" not in dana.get("/console/conversations?filter=open").get_data(as_text=True)
    dana.post(f"{path}/reopen")
    assert "(613) 555-0123" in dana.get("/console/conversations?filter=open").get_data(as_text=True)


def test_live_refresh_answers_204_until_something_changes(
    gateway: Gateway, ottawa: int, dana: ConsoleClient
) -> None:
    page = dana.get(f"/console/conversations/{ottawa}").get_data(as_text=True)
    live = re.search(r'hx-get="([^"]*/live\?v=[^"]+)"', page)
    assert live
    url = live.group(1).replace("&amp;", "&")
    assert dana.get(url).status_code == 204
    text_in(gateway, "It is getting bigger")
    changed = dana.get(url)
    assert changed.status_code == 200 and "It is getting bigger" in changed.get_data(as_text=True)
    listing = dana.get("/console/conversations").get_data(as_text=True)
    list_url = re.search(r'hx-get="([^"]*/conversations/live[^"]*)"', listing)
    assert list_url
    list_live = list_url.group(1).replace("&amp;", "&")
    assert dana.get(list_live).status_code == 204
    conversation_of(gateway, "+16135550888", "Streetlight out", "Ottawa")
    assert "(613) 555-0888" in dana.get(list_live).get_data(as_text=True)


# -- reply emails that were not texted ------------------------------------------------------

BELOW_SIGNATURE = "-- \nJane Doe, 311\n\nThe crew comes on Tuesday."
NOT_TEXTED_EN = ("Email reply from jane@ottawa.example was not texted: "
                 "the answer was below the signature line")
NOT_TEXTED_FR = ("Réponse par courriel de jane@ottawa.example non envoyée par texto : "
                 "la réponse était sous la ligne de signature")


def resident_email(gateway: Gateway, conversation_id: int) -> ResidentEmail:
    """The newest email the gateway sent the agents in this conversation (to answer)."""
    return [e for e in (ResidentEmail.from_dict(p) for p in outbox(gateway, "email")
                        if p.get("type", "resident") == "resident")
            if e.conversation_id == conversation_id][-1]


def live_url(page: str) -> str:
    found = re.search(r'hx-get="([^"]*/live\?v=[^"]+)"', page)
    assert found, "no live refresh on the page"
    return found.group(1).replace("&amp;", "&")


def test_a_reply_email_not_texted_is_in_the_timeline(
    gateway: Gateway, ottawa: int, montreal: int, dana: ConsoleClient
) -> None:
    raw = agent_reply(resident_email(gateway, ottawa), BELOW_SIGNATURE, sender="jane@ottawa.example")
    assert reply_by_email(gateway, raw).outcome == "failed"
    path = f"/console/conversations/{ottawa}"
    page = dana.get(path).get_data(as_text=True)
    assert NOT_TEXTED_EN in page and "Email reply not texted" in page
    assert 'class="item item-not-texted"' in page and 'data-why="below_signature"' in page
    assert "crew comes on Tuesday" not in page and "Jane Doe, 311" not in page  # never the email
    assert "Pothole on Bank St" in page  # the resident's texts are still there
    french = dana.get(path, headers={"Accept-Language": "fr"}).get_data(as_text=True)
    assert NOT_TEXTED_FR in french and "crew comes on Tuesday" not in french
    # Another city's agent: the conversation does not exist for them, nor the event.
    add_user(gateway, "marc@montreal.example", "Marc", municipalities=("montreal",))
    marc = client(gateway)
    marc.login("marc@montreal.example")
    assert marc.get(path).status_code == 404
    assert marc.get(f"{path}/live").status_code == 404
    theirs = marc.get(f"/console/conversations/{montreal}").get_data(as_text=True)
    assert "jane@ottawa.example" not in theirs and "not texted" not in theirs
    # The exports (supervisors) have it too, never the email's text.
    add_user(gateway, "sup@ottawa.example", "Sue Supervisor", role="supervisor")
    sue = client(gateway)
    sue.login("sup@ottawa.example")
    printable = sue.get(f"{path}/export").get_data(as_text=True)
    assert NOT_TEXTED_EN in printable and "Not texted" in printable
    assert "crew comes on Tuesday" not in printable
    exported = sue.get(f"{path}/export.csv").get_data(as_text=True)
    assert f"jane@ottawa.example,not_texted,email,not_texted,{NOT_TEXTED_EN}" in exported
    assert "crew comes on Tuesday" not in exported


def test_a_reply_not_texted_appears_live_and_so_does_its_retry(
    gateway: Gateway, ottawa: int, dana: ConsoleClient, tmp_path: Path
) -> None:
    path = f"/console/conversations/{ottawa}"
    url = live_url(dana.get(path).get_data(as_text=True))
    assert dana.get(url).status_code == 204
    raw = agent_reply(resident_email(gateway, ottawa), "Fixed on Monday.",
                      sender="contractor@roads.example")  # a stranger to Ottawa's agents
    assert reply_by_email(gateway, raw).outcome == "failed"
    changed = dana.get(url)
    assert changed.status_code == 200
    live = changed.get_data(as_text=True)
    assert ("Email reply from contractor@roads.example was not texted: the sender is not one "
            "of the agents who may answer this municipality") in live
    assert "Fixed on Monday." not in live
    url = live_url(live)
    assert dana.get(url).status_code == 204
    # The operator adds the contractor to Ottawa's agents and retries it: texted later.
    map_path = tmp_path / "municipality_map.yaml"
    map_path.write_text(
        map_path.read_text().replace('agents: ["@ottawa.example"]',
                                     'agents: ["@ottawa.example", "contractor@roads.example"]'),
        encoding="utf-8",
    )
    gateway.directory.reload()
    with gateway.store.transaction() as tx:
        [kept] = list_failed_emails(tx)
    assert gateway.replies().retry(kept.id).outcome == "processed"
    retried = dana.get(url)
    assert retried.status_code == 200
    after = retried.get_data(as_text=True)
    assert "Texted later, after a retry" in after and 'data-outcome="texted_later"' in after
    assert "Fixed on Monday." in after  # now an agent reply by email, like any other
    french = dana.get(path, headers={"Accept-Language": "fr"}).get_data(as_text=True)
    assert "Envoyée par texto plus tard, après une nouvelle tentative" in french


def test_presence_of_another_agent(gateway: Gateway, ottawa: int, dana: ConsoleClient) -> None:
    add_user(gateway, "sam@ottawa.example", "Sam Agent")
    sam = client(gateway)
    sam.login("sam@ottawa.example")
    sam.get(f"/console/conversations/{ottawa}")
    page = dana.get(f"/console/conversations/{ottawa}").get_data(as_text=True)
    assert "Sam Agent is viewing" in page
    sam.client.post(f"/console/conversations/{ottawa}/count", data={"text": "We are"},
                    headers={"X-CSRFToken": sam.csrf, "HX-Request": "true"})
    assert "Sam Agent is replying" in dana.get(f"/console/conversations/{ottawa}").get_data(as_text=True)


def test_segment_counter_says_when_accents_cost_more(
    gateway: Gateway, ottawa: int, dana: ConsoleClient
) -> None:
    dana.get(f"/console/conversations/{ottawa}")
    plain = dana.client.post(f"/console/conversations/{ottawa}/count", data={"text": "On it"},
                             headers={"X-CSRFToken": dana.csrf}).get_data(as_text=True)
    assert 'data-encoding="GSM-7"' in plain and "160 characters per message" in plain
    accent = dana.client.post(f"/console/conversations/{ottawa}/count",
                              data={"text": "Ce sera prêt à midi"},
                              headers={"X-CSRFToken": dana.csrf}).get_data(as_text=True)
    assert 'data-encoding="UCS-2"' in accent and "70 characters" in accent and "ê" in accent
    assert "GSM-7 alphabet" in accent
    # é and è are in the GSM-7 alphabet: no switch for them.
    gsm = dana.client.post(f"/console/conversations/{ottawa}/count",
                           data={"text": "Réparé, très bien"},
                           headers={"X-CSRFToken": dana.csrf}).get_data(as_text=True)
    assert 'data-encoding="GSM-7"' in gsm


def test_canned_replies_fill_the_reply_box(tmp_path: Path) -> None:
    from tests.gateway_fixtures import TEST_MAP

    with_canned = TEST_MAP.replace(
        "    languages: [en, fr]\n  - id: montreal",
        "    languages: [en, fr]\n    canned_replies:\n"
        "      - {title: Crew sent, text: A crew has been sent.}\n  - id: montreal", 1)
    gw = make_gateway(tmp_path, municipality_map=with_canned)
    try:
        conversation = conversation_of(gw, OTTAWA_PHONE, "Pothole", "Ottawa")
        add_user(gw, "dana@ottawa.example", "Dana")
        console = client(gw)
        console.login("dana@ottawa.example")
        page = console.get(f"/console/conversations/{conversation}").get_data(as_text=True)
        assert "Crew sent" in page
        box = console.get(f"/console/conversations/{conversation}/canned?canned=0")
        assert "A crew has been sent.</textarea>" in box.get_data(as_text=True)
    finally:
        gw.close()


# -- supervisors -----------------------------------------------------------------------------


def test_export_is_for_supervisors_and_audited(
    gateway: Gateway, ottawa: int, dana: ConsoleClient
) -> None:
    assert dana.get(f"/console/conversations/{ottawa}/export").status_code == 403
    assert dana.get("/console/audit").status_code == 403
    dana.get(f"/console/conversations/{ottawa}")  # a read, audited
    add_user(gateway, "sup@ottawa.example", "Sue Supervisor", role="supervisor")
    sue = client(gateway)
    sue.login("sup@ottawa.example")
    printable = sue.get(f"/console/conversations/{ottawa}/export")
    assert printable.status_code == 200 and "Pothole on Bank St" in printable.get_data(as_text=True)
    csv_export = sue.get(f"/console/conversations/{ottawa}/export.csv")
    assert csv_export.headers["Content-Type"].startswith("text/csv")
    assert "Pothole on Bank St" in csv_export.get_data(as_text=True)
    audit = sue.get("/console/audit").get_data(as_text=True)
    assert "export" in audit and "sup@ottawa.example" in audit
    assert re.search(r'dana@ottawa\.example</td>\s*<td data-action="read">read</td>', audit)
    # Sign-ins concern no municipality: only admins see them.
    add_user(gateway, "root@city.example", "Admin", role="admin", municipalities=())
    admin = client(gateway)
    admin.login("root@city.example")
    everything = admin.get("/console/audit").get_data(as_text=True)
    assert re.search(r'dana@ottawa\.example</td>\s*<td data-action="login">signed in</td>', everything)


def test_audit_records_read_reply_assign_close(
    gateway: Gateway, ottawa: int, dana: ConsoleClient
) -> None:
    path = f"/console/conversations/{ottawa}"
    dana.post(f"{path}/reply", text="Hello", request_key=dana.request_key(path))
    dana.post(f"{path}/assign", agent="me")
    dana.post(f"{path}/close")
    with gateway.console.reading() as tx:
        entries = tx.audit_log(tx.get_user(1).scope, conversation_id=ottawa)  # type: ignore[union-attr]
    actions = [e.action for e in entries]
    for action in ("read", "reply", "assign", "close"):
        assert action in actions
    assert all("Hello" not in str(e.detail) for e in entries)  # no texts in the audit log


def test_french_interface_for_a_french_user(gateway: Gateway, ottawa: int) -> None:
    add_user(gateway, "dana@ottawa.example", "Dana")
    console = client(gateway)
    console.login("dana@ottawa.example")
    console.get("/console/conversations")
    console.post("/console/language", language="fr", next="/console/conversations")
    page = console.get("/console/conversations").get_data(as_text=True)
    assert '<html lang="fr">' in page and "Conversations" in page and "Ouvertes" in page
    with gateway.console.reading() as tx:
        account = tx.user_by_email("dana@ottawa.example")
    assert account is not None and account.language == "fr"


def test_one_address_failing_for_many_accounts_is_limited_too(tmp_path: Path) -> None:
    gw = make_gateway(tmp_path, extra="console:\n  login_max_failures: 1\n")
    try:
        add_user(gw, "dana@ottawa.example", "Dana")
        console = client(gw)
        for n in range(10):  # ten times the per-account limit, each for another account
            assert console.login(f"guess{n}@ottawa.example", "not it").status_code == 401
        assert console.login("dana@ottawa.example").status_code == 429
    finally:
        gw.close()


def test_client_address_behind_a_trusted_proxy(tmp_path: Path) -> None:
    config = write_settings(tmp_path)
    config.write_text(config.read_text().replace(
        'web: {listen: "127.0.0.1:8311"}', 'web: {listen: "127.0.0.1:8311", trusted_proxies: 1}'))
    store = open_store(load_settings(config, environ={}).database)
    store.upgrade()
    store.close()
    gw = Gateway.from_settings(load_settings(config, environ={}))
    try:
        console = client(gw)
        console.get("/console/login")
        console.client.post("/console/login", data={
            "email": "x@ottawa.example", "password": "nope", "csrf_token": console.csrf},
            headers={"X-Forwarded-For": "203.0.113.7"})
        with gw.console.reading() as tx:
            since = datetime(2000, 1, 1, tzinfo=UTC)
            assert tx.failed_logins(email=None, remote_addr="203.0.113.7", since=since) == 1
            assert tx.failed_logins(email=None, remote_addr="127.0.0.1", since=since) == 0
            assert tx.audit_log(Scope(None)) == []  # a stranger's attempt is not audited
    finally:
        gw.close()


def test_waiting_until_an_agent_answers(gateway: Gateway, ottawa: int, dana: ConsoleClient) -> None:
    def waiting_cell() -> str:
        page = dana.get("/console/conversations").get_data(as_text=True)
        row = re.search(rf'<tr class="[^"]*" data-conversation="{ottawa}">(.*?)</tr>', page, re.S)
        assert row, page
        return re.findall(r"<td>(.*?)</td>", row.group(1), re.S)[2].strip()

    assert "second" in waiting_cell() or "minute" in waiting_cell()  # the held text waits
    path = f"/console/conversations/{ottawa}"
    dana.post(f"{path}/reply", text="On it", request_key=dana.request_key(path))
    assert "—" in waiting_cell()
    text_in(gateway, "Thanks, any ETA?")
    assert "second" in waiting_cell() or "minute" in waiting_cell()


@pytest.mark.parametrize("query", ["%", "_", "100%_done", "\x00", "a\x00b", "'; DROP TABLE users; --",
                                   "é" * 300, "+", "()", "1", "0" * 40, "\ud800".encode("utf-8", "surrogatepass").decode("utf-8", "replace")])
def test_hostile_searches_answer_a_page(
    gateway: Gateway, ottawa: int, dana: ConsoleClient, query: str
) -> None:
    response = dana.get("/console/conversations", query_string={"filter": "all", "q": query})
    assert response.status_code == 200, query
    live = dana.get("/console/conversations/live", query_string={"filter": "all", "q": query})
    assert live.status_code == 200, query


def test_control_characters_in_forms_do_not_break_the_store(
    gateway: Gateway, ottawa: int, dana: ConsoleClient
) -> None:
    path = f"/console/conversations/{ottawa}"
    dana.get(path)
    assert dana.post(f"{path}/note", note="Called\x00 back\r\nline two").status_code == 302
    with gateway.console.reading() as tx:
        [note] = tx.notes_of(ottawa)
    assert note.body == "Called  back\nline two"
    reply = dana.post(f"{path}/reply", text="On\x00 it", request_key="k\x00ey")
    assert reply.status_code == 302
    assert [p["body"] for p in outbox(gateway, "sms")] == ["On  it"]  # as an email reply would be
    stranger = client(gateway)
    assert stranger.login("dana\x00@ottawa.example", "x").status_code == 401


def test_odd_numbers_in_query_strings(gateway: Gateway, ottawa: int) -> None:
    add_user(gateway, "sup@ottawa.example", "Sue", role="supervisor")
    sue = client(gateway)
    sue.login("sup@ottawa.example")
    for value in ("²", "٣", "9" * 40, "-1", ""):
        assert sue.get("/console/audit", query_string={"conversation": value}).status_code == 200
        assert sue.get("/console/audit", query_string={"before": value}).status_code == 200
        canned = sue.get(f"/console/conversations/{ottawa}/canned", query_string={"canned": value})
        assert canned.status_code == 200


def test_conversation_ids_beyond_any_row_are_404(gateway: Gateway, dana: ConsoleClient) -> None:
    for conversation_id in ("0", "99999999999999999999999", "9223372036854775808"):
        assert dana.get(f"/console/conversations/{conversation_id}").status_code == 404
        assert dana.post(f"/console/conversations/{conversation_id}/note",
                         note="x").status_code == 404


def test_errors_are_console_pages(gateway: Gateway, montreal: int, dana: ConsoleClient) -> None:
    missing = dana.get(f"/console/conversations/{montreal}")
    assert missing.status_code == 404
    page = missing.get_data(as_text=True)
    assert "not one of your municipalities" in page and "Error 404" in page
    assert missing.headers["Content-Security-Policy"]
    expired = dana.post(f"/console/conversations/{montreal}/note", csrf=False, note="x")
    assert expired.status_code == 400 and "Reload the page" in expired.get_data(as_text=True)
    french = dana.get(f"/console/conversations/{montreal}", headers={"Accept-Language": "fr"})
    assert "Erreur 404" in french.get_data(as_text=True)
    htmx = dana.get(f"/console/conversations/{montreal}/live", headers={"HX-Request": "true"})
    assert htmx.status_code == 404 and htmx.get_data() == b""


def test_status_and_assignment_refresh_live(gateway: Gateway, ottawa: int, dana: ConsoleClient) -> None:
    page = dana.get(f"/console/conversations/{ottawa}").get_data(as_text=True)
    url = re.search(r'hx-get="([^"]*/live\?v=[^"]+)"', page).group(1).replace("&amp;", "&")  # type: ignore[union-attr]
    with gateway.store.transaction() as tx:  # another agent, by email, takes it and closes it
        tx.set_agent(ottawa, "jane@ottawa.example")
        tx.close_conversation(ottawa, datetime.now(UTC))
    live = dana.get(url).get_data(as_text=True)
    assert "jane@ottawa.example" in live and "Closed" in live


def test_a_locked_database_answers_a_503_page_then_recovers(tmp_path: Path) -> None:
    import sqlite3

    from gateway.app import DirectoryHolder
    from gateway.sms import make_provider

    settings = load_settings(write_settings(tmp_path), environ={})
    store = open_store(settings.database)
    store.upgrade()
    store.close()
    gw = Gateway(settings=settings, store=open_store(settings.database, busy_timeout=0.5),
                 directory=DirectoryHolder(settings.municipality_map),
                 provider=make_provider(settings.sms, settings.state_dir))
    try:
        conversation = conversation_of(gw, OTTAWA_PHONE, "Pothole", "Ottawa")
        add_user(gw, "dana@ottawa.example", "Dana")
        dana = client(gw)
        dana.login("dana@ottawa.example")
        locker = sqlite3.connect(str(tmp_path / "gateway.db"), isolation_level=None, timeout=10)
        try:
            locker.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
            down = dana.get(f"/console/conversations/{conversation}")
            assert down.status_code == 503
            assert "The database is unavailable" in down.get_data(as_text=True)
        finally:
            locker.rollback()
            locker.close()
        assert dana.get(f"/console/conversations/{conversation}").status_code == 200
    finally:
        gw.close()


def test_a_totp_code_is_good_once(gateway: Gateway) -> None:
    user = add_user(gateway, "dana@ottawa.example", "Dana")
    secret = pyotp.random_base32()
    with gateway.console.transaction() as tx:
        tx.set_totp(user.id, secret, datetime.now(UTC))
    code = pyotp.TOTP(secret).now()
    first = client(gateway)
    first.login("dana@ottawa.example")
    first.get("/console/login/code")
    assert first.post("/console/login/code", code=code).status_code == 302
    second = client(gateway)  # the same code, seen over a shoulder, within its 30 seconds
    second.login("dana@ottawa.example")
    second.get("/console/login/code")
    assert second.post("/console/login/code", code=code).status_code == 401
    assert second.get("/console/conversations").status_code == 302
    with gateway.console.transaction() as tx:  # a new secret starts afresh
        tx.set_totp(user.id, secret, datetime.now(UTC))
        assert tx.claim_totp_step(user.id, 1)
        assert not tx.claim_totp_step(user.id, 1)
        assert tx.claim_totp_step(user.id, 2)
