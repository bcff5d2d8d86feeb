"""Console test helpers: accounts, a signed-in Flask test client that carries the CSRF token.

    console = ConsoleClient(create_app(gateway).test_client())
    console.login("dana@ottawa.example", PASSWORD)
    console.post("/console/conversations/1/reply", text="On our way")
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from gateway.app import Gateway
from gateway.rules import accounts
from gateway.store.console import Role, User

PASSWORD = "correct horse battery staple"

_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def add_user(
    gateway: Gateway,
    email: str,
    name: str,
    role: Role = "agent",
    municipalities: Sequence[str] = ("ottawa",),
    *,
    password: str = PASSWORD,
    must_change_password: bool = False,
) -> User:
    with gateway.console.transaction() as tx:
        return tx.add_user(email, name, role, list(municipalities),
                           accounts.hash_password(password),
                           must_change_password=must_change_password, at=datetime.now(UTC))


class ConsoleClient:
    """A Flask test client that signs in and sends the CSRF token like the browser does."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.csrf = ""

    def get(self, path: str, **kwargs: Any) -> Any:
        response = self.client.get(path, **kwargs)
        self._remember(response)
        return response

    def _remember(self, response: Any) -> None:
        found = _CSRF.search(response.get_data(as_text=True))
        if found:
            self.csrf = found.group(1)

    def post(self, path: str, *, csrf: bool = True, headers: dict[str, str] | None = None,
             **form: Any) -> Any:
        if csrf:
            if not self.csrf:
                self.get("/console/login")
            form.setdefault("csrf_token", self.csrf)
        response = self.client.post(path, data=form, headers=headers or {})
        self._remember(response)
        return response

    def login(self, email: str, password: str = PASSWORD, *, follow: bool = False) -> Any:
        self.get("/console/login")
        response = self.post("/console/login", email=email, password=password)
        if response.status_code == 302:  # a new session: a new CSRF token on the next page
            self.get(response.headers["Location"])
        return response

    def request_key(self, path: str) -> str:
        page = self.get(path).get_data(as_text=True)
        found = re.search(r'name="request_key" value="([^"]+)"', page)
        assert found, "no request key on the conversation page"
        return found.group(1)
