"""The console holds (issue 15, section 3): MMS media never run in the console's origin,
CSV exports never carry a formula, a control character in `next` is refused cleanly."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

import pytest

from gateway.app import Gateway
from gateway.rules.resident_email import MediaRef
from gateway.sms.base import InboundText
from gateway.store import StoredMessage
from gateway.store.console import Note
from gateway.web import create_app
from gateway.web.console import CONTENT_SECURITY_POLICY, display
from gateway.web.console.auth import _safe_next
from tests.console_fixtures import PASSWORD, ConsoleClient, add_user

PHONE = "+16135550123"
SANDBOXED = "sandbox; default-src 'none'"
SVG = (b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)">'
       b'<script href="/console/conversations/1/media/1/1"/></svg>')
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16
_sids = iter(range(1_000_000))


def text_in(gateway: Gateway, body: str, media: tuple[MediaRef, ...] = ()) -> None:
    gateway.inbound.handle(InboundText(sid=f"SM{next(_sids):032d}", phone=PHONE, to="31100",
                                       body=body, received_at=datetime.now(UTC), media=media))


def client(gateway: Gateway) -> ConsoleClient:
    return ConsoleClient(create_app(gateway).test_client())


@pytest.fixture
def ottawa(gateway: Gateway) -> int:
    text_in(gateway, "Pothole on Bank St")
    text_in(gateway, "Ottawa")
    with gateway.store.transaction() as tx:
        found = tx.open_conversation(PHONE, "ottawa")
    assert found is not None
    return found.id


@pytest.fixture
def dana(gateway: Gateway) -> ConsoleClient:
    add_user(gateway, "dana@ottawa.example", "Dana Agent")
    console = client(gateway)
    assert console.login("dana@ottawa.example").status_code == 302
    return console


# -- media ------------------------------------------------------------------------------------


# (declared by the resident's MMS, served by the provider, inline?)
PARTS = [
    ("image/png", "image/png", True),
    ("image/jpeg", "image/jpeg", True),
    ("image/gif", "image/gif", True),
    ("image/webp", "image/webp", True),
    ("image/heic", "image/heic", True),
    ("image/svg+xml", "image/svg+xml", False),
    ("text/javascript", "text/javascript", False),
    ("text/html", "text/html; charset=utf-8", False),
    ("application/pdf", "application/pdf", False),
    ("image/png", "image/svg+xml", False),  # the provider's type is the one that counts
]


def test_only_raster_images_are_inline_and_every_media_is_sandboxed(
    gateway: Gateway, ottawa: int, dana: ConsoleClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    served = {f"https://api.example/media/{i}": (kind, SVG) for i, (_, kind, _) in
              enumerate(PARTS)}
    monkeypatch.setattr(gateway.provider, "fetch_media", lambda url: served[url])
    refs = tuple(MediaRef(f"https://api.example/media/{i}", declared)
                 for i, (declared, _, _) in enumerate(PARTS))
    text_in(gateway, "Look at this", refs)
    with gateway.console.reading() as tx:
        message = next(m for m in tx.messages(ottawa) if m.media)
    base = f"/console/conversations/{ottawa}/media/{message.id}"
    for index, (declared, kind, inline) in enumerate(PARTS):
        response = dana.get(f"{base}/{index}")
        assert response.status_code == 200, (declared, kind)
        assert response.headers["Content-Security-Policy"] == SANDBOXED, (declared, kind)
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        disposition = response.headers["Content-Disposition"]
        if inline:
            assert response.headers["Content-Type"] == kind
            assert disposition == "inline"
        else:
            assert response.headers["Content-Type"] == "application/octet-stream", (declared, kind)
            assert disposition.startswith("attachment"), (declared, kind)
        assert response.get_data() == SVG
    # The page shows only raster images as pictures; the rest are links to download.
    page = dana.get(f"/console/conversations/{ottawa}").get_data(as_text=True)
    assert page.count(f'<img src="{base}/') == 6  # five rasters + the PNG served as SVG
    assert f'<a href="{base}/5">' in page and f'<img src="{base}/5"' not in page
    # The console's pages keep their own policy.
    assert dana.get(f"/console/conversations/{ottawa}").headers[
        "Content-Security-Policy"] == CONTENT_SECURITY_POLICY


def test_sandbox_media_route_serves_like_the_console(gateway: Gateway) -> None:
    folder = gateway.settings.state_dir / "media"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "evil.svg").write_bytes(SVG)
    (folder / "evil.html").write_bytes(b"<script>alert(1)</script>")
    (folder / "photo.png").write_bytes(PNG)
    web = create_app(gateway).test_client()
    for name in ("evil.svg", "evil.html"):
        response = web.get(f"/sandbox/media/{name}")
        assert response.status_code == 200
        assert response.headers["Content-Type"] == "application/octet-stream"
        assert response.headers["Content-Disposition"].startswith("attachment")
        assert response.headers["Content-Security-Policy"] == SANDBOXED
        assert response.headers["X-Content-Type-Options"] == "nosniff"
    picture = web.get("/sandbox/media/photo.png")
    assert picture.headers["Content-Type"] == "image/png"
    assert picture.headers["Content-Disposition"] == "inline"
    assert picture.headers["Content-Security-Policy"] == SANDBOXED
    assert picture.get_data() == PNG


# -- CSV export ------------------------------------------------------------------------------

T0 = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
FORMULAS = ["=1+1", "+1", "-2", "@SUM(A1)", "\tTAB", "\rCR"]


def test_csv_export_neutralises_formulas_in_every_column() -> None:
    def message(id: int, direction: str, body: str, **kw: object) -> StoredMessage:
        return StoredMessage(id=id, phone=PHONE, conversation_id=1, direction=direction,  # type: ignore[arg-type]
                             body=body, media=(), provider_sid=None,
                             received_at=T0 + timedelta(minutes=id), **kw)  # type: ignore[arg-type]

    for formula in FORMULAS:
        items = display.timeline(
            [message(1, "in", formula),
             message(2, "out", formula, status=formula, agent_address="a@ottawa.example",
                     via=formula)],
            [Note(id=1, conversation_id=1, user_id=1, user_name=formula, body=formula,
                  created_at=T0 + timedelta(minutes=3))],
        )
        rows = list(csv.reader(io.StringIO(display.export_csv(
            items, resident=formula, names={"a@ottawa.example": formula}), newline="")))
        for row in rows[1:]:
            for cell in row[1:]:
                assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), (formula, row)
        assert rows[1][1:] == ["'" + formula, "in", "sms", "", "'" + formula]
        assert rows[2][1:] == ["'" + formula, "out", "'" + formula, "'" + formula,
                               "'" + formula]
        assert rows[3][1:] == ["'" + formula, "note", "note", "", "'" + formula]


def test_csv_export_of_a_staff_name_that_is_a_formula(gateway: Gateway, ottawa: int) -> None:
    add_user(gateway, "sup@ottawa.example", '=HYPERLINK("https://evil.example","x")',
             role="supervisor")
    sue = client(gateway)
    assert sue.login("sup@ottawa.example").status_code == 302
    path = f"/console/conversations/{ottawa}"
    assert sue.post(f"{path}/note", note="Called the roads department").status_code == 302
    rows = list(csv.reader(io.StringIO(sue.get(f"{path}/export.csv").get_data(as_text=True))))
    [note] = [row for row in rows if row[2] == "note"]
    assert note[1] == "'=HYPERLINK(\"https://evil.example\",\"x\")"
    assert note[5] == "Called the roads department"
    assert rows[1][1] == "(613) 555-0123"  # a plain cell is left as it is


# -- next --------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["\r\n", "\n", "\r", "\x00", "\t", "\x7f", "\x85", "\u2028",
                                 "\u202e"])
def test_next_with_a_control_character_goes_to_the_console_home(
    gateway: Gateway, ottawa: int, bad: str
) -> None:
    add_user(gateway, "dana@ottawa.example", "Dana")
    console = client(gateway)
    console.get("/console/login")
    target = f"/console/conversations/{ottawa}{bad}Set-Cookie: x=1"
    response = console.client.post(
        f"/console/login?next={quote(target, safe='/')}",
        data={"email": "dana@ottawa.example", "password": PASSWORD, "csrf_token": console.csrf},
    )
    assert response.status_code == 302
    assert response.headers["Location"].endswith("/console/conversations")
    assert "Set-Cookie: x=1" not in str(response.headers)
    assert console.get(response.headers["Location"]).status_code == 200  # signed in


def test_next_with_a_control_character_in_the_language_form(
    gateway: Gateway, dana: ConsoleClient
) -> None:
    response = dana.post("/console/language", language="fr",
                         next="/console/conversations\r\nX-Evil: 1")
    assert response.status_code == 302
    assert response.headers["Location"].endswith("/console/conversations")
    assert "X-Evil" not in response.headers


def test_safe_next() -> None:
    assert _safe_next("/console/conversations/1?filter=mine") == (
        "/console/conversations/1?filter=mine")
    for bad in ("/console/x\r\nLocation: https://evil.example", "/console/x\x00",
                "/console/x\u2028", "https://evil.example/console/x", "//evil.example/console/",
                "/console/login?next=/console/x", "/elsewhere"):
        assert _safe_next(bad) is None, bad
