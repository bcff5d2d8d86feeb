"""`/` is the staff console: the sandbox banner's first link (and a browser's first guess)
is a redirect to /console/, which asks to sign in, never a bare 404."""

from __future__ import annotations

from gateway.app import Gateway
from gateway.web import create_app


def test_the_root_sends_the_browser_to_the_console(gateway: Gateway) -> None:
    client = create_app(gateway).test_client()
    response = client.get("/")
    assert response.status_code == 302
    assert response.headers["Location"] in ("/console/", "http://localhost/console/")
    signed_out = client.get("/", follow_redirects=True)
    assert signed_out.status_code == 200
    assert signed_out.request.path == "/console/login"
    assert 'name="password"' in signed_out.text
