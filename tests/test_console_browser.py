"""The console in headless Chromium (Debian's, driven by Playwright) against `sms311 run` as a
subprocess, with the fake Twilio API, an aiosmtpd mail server and the SMTP reply ingress.

One gateway for the module (starting it is the slow part); each test signs in its own
browser context. What is checked is what an agent sees and what reaches the far side: the
SMS at the fake API, the email in the aiosmtpd server."""

from __future__ import annotations

import base64
import smtplib
import subprocess
import sys
from collections.abc import Iterator
from email.message import EmailMessage
from typing import Any

import pytest
import requests
from playwright.sync_api import Browser, Page, expect

from gateway.run.sandbox import twilio_form
from gateway.sms.twilio.signature import TwilioSignature
from tests.browser import axe_violations, browser, format_violations, new_page, watch_console
from tests.gateway_fixtures import free_port, twiml_messages
from tests.loop import Loop, agent_reply, body_text, wait_for

pytestmark = pytest.mark.slow

PASSWORD = "a long test passphrase"
# A 1×1 PNG: what the resident's MMS carries.
PIXEL = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)
USERS = (
    ("dana@ottawa.example", "Dana Agent", "agent", "ottawa"),
    ("sam@ottawa.example", "Sam Agent", "agent", "ottawa"),
    ("sue@ottawa.example", "Sue Supervisor", "supervisor", "ottawa"),
    ("marc@montreal.example", "Marc Agent", "agent", "montreal"),
)


class RunningGateway:
    """The running gateway and what surrounds it."""

    def __init__(self, loop: Loop, ingress_port: int) -> None:
        self.loop = loop
        self.ingress_port = ingress_port
        self.url = f"http://127.0.0.1:{loop.web_port}"

    def text(self, number: str, body: str, media: list[tuple[str, str]] | None = None) -> list[str]:
        settings = self.loop.settings
        form = twilio_form(settings, number, body, media_urls=media or [])
        signature = TwilioSignature(settings.sms.auth_token, settings.public_url)
        response = requests.post(
            f"{self.url}/sms/inbound", data=form, timeout=10,
            headers={"X-Twilio-Signature": signature.sign("/sms/inbound", "", form)},
        )
        assert response.status_code == 200, response.text
        return twiml_messages(response.content)

    def emails_to(self, address: str) -> list[EmailMessage]:
        return [m for m in self.loop.collector.messages if address in str(m["To"])]

    def mail_reply(self, to: EmailMessage, body: str, sender: str = "jane@ottawa.example") -> None:
        with smtplib.SMTP("127.0.0.1", self.ingress_port, timeout=10) as client:
            client.sendmail(sender, [to["Reply-To"].addresses[0].addr_spec],
                            agent_reply(to, body, sender=sender))


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    """`sms311 run` as a subprocess for the whole module (not conftest's in-process `gateway`)."""
    ingress_port = free_port()
    loop = Loop(tmp_path_factory.mktemp("console"), None, ingress_port)
    try:
        for email, name, role, municipality in USERS:
            added = subprocess.run(
                [sys.executable, "-m", "gateway", "--config", str(loop.config), "user", "add",
                 email, "--name", name, "--role", role, "--municipality", municipality,
                 "--password-stdin"],
                input=PASSWORD + "\n", capture_output=True, text=True, timeout=60,
                env=loop.env, check=False,
            )
            assert added.returncode == 0, added.stdout + added.stderr
        yield RunningGateway(loop, ingress_port)
    finally:
        output = loop.stop()
    assert "555-01" not in output.replace("***", "")  # numbers masked in the gateway's log


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    with browser() as b:
        yield b


def sign_in(chromium: Browser, running: RunningGateway, email: str, locale: str = "en-CA") -> Page:
    page = new_page(chromium, locale=locale, base_url=running.url)
    page.goto("/console/login")
    page.get_by_label("Email" if locale.startswith("en") else "Courriel").fill(email)
    page.get_by_label("Password" if locale.startswith("en") else "Mot de passe").fill(PASSWORD)
    page.get_by_role("button", name="Sign in" if locale.startswith("en") else "Se connecter").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Conversations")  # en and fr
    return page


def new_resident(running: RunningGateway, number: str, text: str, media: Any = None,
                 city: str = "Ottawa") -> EmailMessage:
    before = len(running.loop.collector.messages)
    running.text(number, text, media)  # the gateway asks for the municipality
    running.text(number, city)
    wait_for(lambda: len(running.loop.collector.messages) > before, "the resident's email")
    return running.loop.collector.messages[before]


def open_conversation(page: Page, number_shown: str) -> None:
    page.get_by_role("link", name=number_shown).click()
    expect(page.get_by_role("heading", level=1)).to_contain_text(number_shown)


def test_an_agent_answers_a_resident_from_the_browser(
    chromium: Browser, running: RunningGateway,
) -> None:
    page = sign_in(chromium, running, "dana@ottawa.example")
    console = watch_console(page)
    # A resident's text appears in the list without a reload.
    picture = running.loop.api.add_media("image/png", PIXEL)
    first_email = new_resident(running, "613-555-0101", "Pothole on Bank St at Gladstone",
                               media=[(picture, "image/png")])
    row = page.get_by_role("link", name="(613) 555-0101")
    expect(row).to_be_visible(timeout=15_000)
    expect(page.locator("tr", has=row)).to_contain_text("New")
    open_conversation(page, "(613) 555-0101")
    expect(page.get_by_text("Pothole on Bank St at Gladstone")).to_be_visible()
    image = page.get_by_role("img", name="Picture sent by the resident")
    expect(image).to_be_visible()
    wait_for(lambda: image.evaluate("img => img.complete && img.naturalWidth") == 1,
             "the MMS picture to load through the console")

    # The live segment counter: a French accent switches to 70 characters a message.
    reply = page.get_by_label("Reply", exact=True)
    reply.fill("A crew is on the way.")
    counter = page.locator("#segment-counter")
    expect(counter).to_have_attribute("data-encoding", "GSM-7")
    expect(counter).to_contain_text("160 characters per message")
    reply.fill("Une équipe est en route, ça sera réglé.")
    expect(counter).to_have_attribute("data-encoding", "UCS-2")
    expect(counter).to_contain_text("70")
    reply.fill("A crew is on the way.")
    page.get_by_role("button", name="Send text").click()
    expect(page.get_by_role("status")).to_contain_text("Reply queued")

    # The SMS reaches the provider once; a copy goes into the email thread.
    wait_for(lambda: [m["Body"] for m in running.loop.api.messages
                      if m["To"] == "+16135550101"] == ["A crew is on the way."], "the SMS")
    wait_for(lambda: any("A crew is on the way." in body_text(m)
                         for m in running.emails_to("311@ottawa.example")), "the email copy")
    copy = next(m for m in running.emails_to("311@ottawa.example")
                if "A crew is on the way." in body_text(m))
    assert copy["Subject"].endswith(first_email["Subject"])
    assert first_email["Message-ID"] in copy["References"]

    # Its delivery status appears live.
    sms = next(m for m in running.loop.api.messages if m["To"] == "+16135550101")
    running.loop.api.send_status(sms["_sid"], "delivered")
    out = page.locator(".item-out", has_text="A crew is on the way.")
    expect(out).to_contain_text("Delivered", timeout=15_000)

    # An agent's email reply appears in the console without a reload.
    running.mail_reply(first_email, "Second answer, by email.", sender="jane@ottawa.example")
    expect(page.locator(".item-out", has_text="Second answer, by email.")).to_contain_text(
        "by email", timeout=15_000)
    # And a new text from the resident.
    running.text("613-555-0101", "Thank you!")
    expect(page.locator(".item-in", has_text="Thank you!")).to_be_visible(timeout=15_000)
    assert not [line for line in console if "Content Security Policy" in line], console
    page.context.close()


def test_assignment_sends_the_next_text_to_that_agent(
    chromium: Browser, running: RunningGateway,
) -> None:
    new_resident(running, "613-555-0102", "Streetlight out on Elgin")
    page = sign_in(chromium, running, "dana@ottawa.example")
    open_conversation(page, "(613) 555-0102")
    page.get_by_label("Assign to", exact=True).select_option(label="Sam Agent (sam@ottawa.example)")
    page.get_by_role("button", name="Assign", exact=True).click()
    expect(page.get_by_role("status")).to_contain_text("Assigned to")
    before = len(running.emails_to("sam@ottawa.example"))
    running.text("613-555-0102", "Still dark tonight")
    wait_for(lambda: len(running.emails_to("sam@ottawa.example")) > before, "the email to Sam")
    email = running.emails_to("sam@ottawa.example")[-1]
    assert "Still dark tonight" in body_text(email)
    assert "311@ottawa.example" in str(email["Cc"])
    page.context.close()


def test_presence_shows_who_else_is_on_the_conversation(
    chromium: Browser, running: RunningGateway,
) -> None:
    new_resident(running, "613-555-0103", "Graffiti on the bridge")
    dana = sign_in(chromium, running, "dana@ottawa.example")
    sam = sign_in(chromium, running, "sam@ottawa.example")
    open_conversation(dana, "(613) 555-0103")
    open_conversation(sam, "(613) 555-0103")
    expect(dana.locator("#presence")).to_contain_text("Sam Agent is viewing", timeout=15_000)
    sam.get_by_label("Reply", exact=True).fill("Looking into it")
    expect(dana.locator("#presence")).to_contain_text("Sam Agent is replying", timeout=15_000)
    dana.context.close()
    sam.context.close()


def test_another_municipality_is_not_there(chromium: Browser, running: RunningGateway) -> None:
    new_resident(running, "613-555-0104", "Noise complaint")
    dana = sign_in(chromium, running, "dana@ottawa.example")
    open_conversation(dana, "(613) 555-0104")
    url = dana.url
    dana.context.close()
    marc = sign_in(chromium, running, "marc@montreal.example")
    expect(marc.get_by_role("link", name="(613) 555-0104")).to_have_count(0)
    response = marc.goto(url)
    assert response is not None and response.status == 404
    marc.context.close()


def test_csrf_refusal_and_logout(chromium: Browser, running: RunningGateway) -> None:
    new_resident(running, "613-555-0105", "Broken bench")
    page = sign_in(chromium, running, "dana@ottawa.example")
    open_conversation(page, "(613) 555-0105")
    reply_url = page.url + "/reply"
    # A forged form (a page elsewhere posting with the agent's cookie) carries no token.
    forged = page.request.post(reply_url, form={"text": "forged", "request_key": "x"})
    assert forged.status == 400
    sent = page.evaluate(
        """async (url) => (await fetch(url, {method: "POST",
             headers: {"Content-Type": "application/x-www-form-urlencoded"},
             body: "text=forged"})).status""", reply_url)
    assert sent == 400
    assert not [m for m in running.loop.api.messages if m["Body"] == "forged"]
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Sign in")
    page.goto("/console/conversations")
    expect(page.get_by_role("heading", level=1)).to_have_text("Sign in")
    page.context.close()


def test_french_interface(chromium: Browser, running: RunningGateway) -> None:
    page = new_page(chromium, locale="fr-CA", base_url=running.url)
    page.goto("/console/login")
    expect(page.locator("html")).to_have_attribute("lang", "fr")
    expect(page.get_by_role("button", name="Se connecter")).to_be_visible()
    page.context.close()
    signed_in = sign_in(chromium, running, "marc@montreal.example", locale="fr-CA")
    expect(signed_in.get_by_role("link", name="Ouvertes", exact=False)).to_be_visible()
    expect(signed_in.get_by_role("button", name="Se déconnecter")).to_be_visible()
    signed_in.context.close()


def test_accessibility_with_axe(chromium: Browser, running: RunningGateway) -> None:
    email = new_resident(running, "613-555-0106", "Accessible pothole")
    # an email reply that is not texted (the answer below the signature): an event in the timeline
    running.mail_reply(email, "-- \nJane Doe, 311\n\nFixed tomorrow.")
    page = new_page(chromium, base_url=running.url)
    console = watch_console(page)
    page.goto("/console/login")
    problems = axe_violations(page)
    assert problems == [], "login: " + format_violations(problems)
    page.close()
    page = sign_in(chromium, running, "sue@ottawa.example")
    problems = axe_violations(page)
    assert problems == [], "list: " + format_violations(problems)
    open_conversation(page, "(613) 555-0106")
    page.get_by_role("button", name="Send text")  # the page is fully there
    expect(page.get_by_text("Email reply from jane@ottawa.example was not texted")).to_be_visible(
        timeout=15_000)  # (live refresh brings it if it was not kept yet)
    problems = axe_violations(page)
    assert problems == [], "conversation: " + format_violations(problems)
    page.get_by_role("link", name="Printable export").click()
    problems = axe_violations(page)
    assert problems == [], "export: " + format_violations(problems)
    page.goto("/console/audit")
    problems = axe_violations(page)
    assert problems == [], "audit: " + format_violations(problems)
    page.goto("/console/password")
    problems = axe_violations(page)
    assert problems == [], "password: " + format_violations(problems)
    new_resident(running, "514-555-0107", "Nid-de-poule sur la rue Sherbrooke", city="Montréal")
    french = sign_in(chromium, running, "marc@montreal.example", locale="fr-CA")
    problems = axe_violations(french)
    assert problems == [], "list (fr): " + format_violations(problems)
    open_conversation(french, "(514) 555-0107")
    expect(french.get_by_role("button", name="Envoyer le texto")).to_be_visible()
    problems = axe_violations(french)
    assert problems == [], "conversation (fr): " + format_violations(problems)
    assert not [line for line in console if "Content Security Policy" in line], console
    page.context.close()
    french.context.close()


class Marker:
    """A loopback HTTP server that records every request: a script that ran would call it."""

    def __init__(self) -> None:
        import http.server
        import threading

        self.hits: list[str] = []
        hits = self.hits

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                hits.append(self.path)
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_an_svg_media_part_does_not_run_script(chromium: Browser, running: RunningGateway) -> None:
    """Issue 15: an MMS SVG whose script (inline, onload, and a second part served as
    text/javascript that it loads) would call a marker server, raise a dialog and set a
    global. Opened in the console and at its own URL, nothing of it runs."""
    marker = Marker()
    try:
        script = (f"fetch('{marker.url}/script-part');alert('script part');"
                  "window.top.sms311Pwned='script part';").encode()
        javascript = running.loop.api.add_media("text/javascript", script)
        svg = (
            '<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10" '
            f"onload=\"fetch('{marker.url}/onload');alert('onload');window.sms311Pwned='onload'\">"
            f"<script>fetch('{marker.url}/inline');alert('inline');window.sms311Pwned='inline';"
            "</script>"
            # "1": relative to .../media/<message>/0, the second part (the script) in the console
            f'<script href="1"/><image href="{marker.url}/image" width="1" height="1"/>'
            "</svg>"
        )
        picture = running.loop.api.add_media("image/svg+xml", svg.encode())
        new_resident(running, "613-555-0177", "See the attached drawing",
                     media=[(picture, "image/svg+xml"), (javascript, "text/javascript")])
        page = sign_in(chromium, running, "dana@ottawa.example")
        dialogs: list[str] = []
        page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
        open_conversation(page, "(613) 555-0177")
        links = page.get_by_role("link", name="Attachment (image/svg+xml)")
        expect(links).to_have_count(1)
        expect(page.get_by_role("link", name="Attachment (text/javascript)")).to_have_count(1)
        assert page.get_by_role("img", name="Picture sent by the resident").count() == 0
        href = links.get_attribute("href")
        assert href is not None
        media_url = running.url + href
        script_url = running.url + (page.get_by_role(
            "link", name="Attachment (text/javascript)").get_attribute("href") or "")

        # Served as a download with the sandbox policy, never as the declared type.
        for url in (media_url, script_url):
            served = page.request.get(url)
            assert served.status == 200
            assert served.headers["content-security-policy"] == "sandbox; default-src 'none'"
            assert served.headers["content-type"] == "application/octet-stream"
            assert served.headers["content-disposition"].startswith("attachment")
            assert served.headers["x-content-type-options"] == "nosniff"

        # Following the link in the console: a download, the page stays.
        with page.expect_download() as download:
            links.click()
        assert download.value.url == media_url
        # The media URL itself, opened as a page: a download too, nothing rendered.
        with page.expect_download():
            try:
                page.goto(media_url)
            except Exception as exc:  # Chromium aborts a navigation that becomes a download
                assert "Download is starting" in str(exc) or "ERR_ABORTED" in str(exc), exc
        page.wait_for_timeout(1500)
        assert page.evaluate("() => window.sms311Pwned === undefined")
        assert dialogs == []
        assert marker.hits == []
        page.context.close()
    finally:
        marker.close()
