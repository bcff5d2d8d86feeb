"""The browser harness (tests/browser.py) itself: Debian Chromium starts, htmx 2 (vendored,
gateway/web/static) works under a strict CSP with no inline script, and axe-core runs there,
passing an accessible page and failing an inaccessible one."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from playwright.sync_api import Browser

from tests import browser as harness
from tests.browser import axe_violations, format_violations, new_page, watch_console

pytestmark = pytest.mark.slow  # headless Chromium

STATIC = Path(__file__).resolve().parent.parent / "gateway" / "web" / "static"
PIXEL = b'<svg xmlns="http://www.w3.org/2000/svg" width="1" height="1"/>'
CSP = "default-src 'self'; script-src 'self'"
NO_INDICATOR_STYLES = """<meta name="htmx-config" content='{"includeIndicatorStyles": false}'>"""


def htmx_page(head: str) -> str:
    return f"""<!doctype html>
<html lang="en-CA">
<head>
<meta charset="utf-8">
<title>htmx under CSP</title>
{head}
<script src="/htmx.min.js"></script>
</head>
<body>
<main>
<h1>Cases</h1>
<button type="button" id="load" hx-get="/fragment" hx-target="#slot" hx-swap="innerHTML">Load</button>
<div id="slot">empty</div>
</main>
</body>
</html>"""


ACCESSIBLE = """<!doctype html>
<html lang="en-CA">
<head><meta charset="utf-8"><title>Case 42</title></head>
<body>
<header><a href="#main">Skip to content</a></header>
<main id="main">
<h1>Case 42</h1>
<img src="/pixel.svg" alt="Photo of the pothole" width="10" height="10">
<form action="/notes" method="post">
<label for="note">Note</label>
<input id="note" name="note" type="text">
<button type="submit">Add note</button>
</form>
</main>
</body>
</html>"""

INACCESSIBLE = """<!doctype html>
<html lang="en-CA">
<head><meta charset="utf-8"><title>Case 43</title></head>
<body>
<main>
<h1>Case 43</h1>
<img id="photo" src="/pixel.svg" width="10" height="10">
<form action="/notes" method="post">
<input id="bare" name="note" type="text">
<button type="submit">Add note</button>
</form>
</main>
</body>
</html>"""


class _Handler(BaseHTTPRequestHandler):
    routes: dict[str, Callable[[_Handler], tuple[str, bytes]]] = {}  # noqa: RUF012

    def do_GET(self) -> None:
        route = self.routes.get(self.path)
        if route is None:
            self.send_error(404)
            return
        content_type, body = route(self)
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Security-Policy", CSP)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def _html(text: str) -> Callable[[_Handler], tuple[str, bytes]]:
    return lambda _request: ("text/html; charset=utf-8", text.encode())


_Handler.routes = {
    "/htmx.min.js": lambda _request: (
        "text/javascript; charset=utf-8",
        (STATIC / "htmx.min.js").read_bytes(),
    ),
    # Chromium asks for /favicon.ico on every page: a 404 would be a console error.
    "/favicon.ico": lambda _request: ("image/svg+xml", PIXEL),
    "/pixel.svg": lambda _request: ("image/svg+xml", PIXEL),
    "/htmx": _html(htmx_page(NO_INDICATOR_STYLES)),
    "/htmx-default-config": _html(htmx_page("")),
    "/fragment": _html('<p id="swapped">Fragment from the server</p>'),
    "/accessible": _html(ACCESSIBLE),
    "/inaccessible": _html(INACCESSIBLE),
    "/accept-language": lambda request: (
        "text/plain; charset=utf-8",
        (request.headers.get("Accept-Language") or "").encode(),
    ),
}


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_port}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    with harness.browser() as b:
        yield b


def _csp_errors(console: list[str]) -> list[str]:
    return [line for line in console if "Content Security Policy" in line]


def test_htmx_swaps_a_fragment_under_a_strict_csp(chromium: Browser, server: str) -> None:
    page = new_page(chromium)
    try:
        console = watch_console(page)
        page.goto(f"{server}/htmx")
        assert page.evaluate("() => htmx.version").startswith("2.0.")
        page.click("#load")
        page.wait_for_selector("#slot #swapped")
        assert page.inner_text("#slot") == "Fragment from the server"
        assert _csp_errors(console) == [], console
        assert [line for line in console if line.startswith(("error", "pageerror"))] == []
    finally:
        page.context.close()


def test_htmx_default_indicator_styles_break_the_csp(chromium: Browser, server: str) -> None:
    """The control: without the htmx-config meta, htmx's inline <style> is refused, and the
    console shows it (so the test above would see a violation)."""
    page = new_page(chromium)
    try:
        with page.expect_console_message(lambda m: "Content Security Policy" in m.text) as refused:
            page.goto(f"{server}/htmx-default-config")
        assert refused.value.type == "error"
        assert "Applying inline style violates" in refused.value.text, refused.value.text
    finally:
        page.context.close()


def test_axe_passes_an_accessible_page(chromium: Browser, server: str) -> None:
    page = new_page(chromium)
    try:
        console = watch_console(page)
        page.goto(f"{server}/accessible")
        violations = axe_violations(page)
        assert violations == [], format_violations(violations)
        every = axe_violations(page, impacts=None)  # axe is already there: not injected again
        assert every == [], format_violations(every)
        assert _csp_errors(console) == [], console
    finally:
        page.context.close()


def test_axe_reports_a_missing_alt_and_a_missing_label(chromium: Browser, server: str) -> None:
    page = new_page(chromium)
    try:
        page.goto(f"{server}/inaccessible")
        violations = axe_violations(page)
        by_id = {v["id"]: v for v in violations}
        assert {"image-alt", "label"} <= by_id.keys(), format_violations(violations)
        assert [n["target"] for n in by_id["image-alt"]["nodes"]] == [["#photo"]]
        assert [n["target"] for n in by_id["label"]["nodes"]] == [["#bare"]]
        assert all(v["impact"] in ("serious", "critical") for v in violations)
        text = format_violations(violations)
        assert "image-alt (critical)" in text and "#bare" in text
        assert axe_violations(page, impacts=("minor",)) == []
    finally:
        page.context.close()


@pytest.mark.parametrize("locale", ["en-CA", "fr-CA"])
def test_locale_sets_accept_language(chromium: Browser, server: str, locale: str) -> None:
    page = new_page(chromium, locale=locale)
    try:
        page.goto(f"{server}/accept-language")
        assert page.inner_text("body").startswith(locale)
        assert page.evaluate("() => navigator.language") == locale
    finally:
        page.context.close()


def test_no_chromium_is_an_error_not_a_skip(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda _name: None)
    with pytest.raises(RuntimeError, match="make test"):
        harness.chromium_path()


def test_format_violations_without_violations() -> None:
    assert format_violations([]) == "no accessibility violations"
