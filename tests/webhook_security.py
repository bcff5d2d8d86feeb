"""The webhook security cases every SMS provider must pass: one table, every provider.

A provider's test module inherits `WebhookSecurityCases` and says only what is its own
(django-anymail's pattern): the settings section that selects it, how it signs a request,
what its inbound and status forms look like, and which of its fields are required. The
cases then run against the real app (`create_app`) over a real SQLite store:

- forged: unsigned, empty, wrong or garbage signatures; a signature made for another URL,
  another query string or the other webhook; a field changed after signing — 403, and
  nothing is stored or queued;
- malformed: a signed form that lacks or garbles what the provider always sends — 400,
  and nothing is stored or queued;
- replayed: the same signed request again — answered as the first time, nothing new stored;
- oversized: a body over `MAX_WEBHOOK_BYTES` or a form of more than `MAX_WEBHOOK_FIELDS`
  fields, signed or not — 413 before the signature is computed; the largest form a provider
  really sends (a 1,600-character text, 10 media) still passes.

    class TestTwilioWebhooks(WebhookSecurityCases):
        sms_section = "sms:\\n  provider: twilio\\n  …"
        def sign(self, settings, path, query, form): …
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pytest
from flask.testing import FlaskClient

from gateway.app import Gateway
from gateway.settings import Settings
from gateway.sms.base import MAX_MEDIA, MAX_WEBHOOK_BYTES, MAX_WEBHOOK_FIELDS
from gateway.web import create_app

NUMBER = "+16135550111"
INBOUND = "/sms/inbound"
STATUS = "/sms/status"


@dataclass(frozen=True)
class Forged:
    """A request that must be refused with 403: `forge(cases, settings, form)` returns
    (path with query, form sent, headers sent) for a valid `form` to /sms/inbound."""

    label: str
    forge: Callable[[WebhookSecurityCases, Settings, dict[str, str]],
                    tuple[str, dict[str, str], dict[str, str]]]


@dataclass(frozen=True)
class Malformed:
    """A signed form that must be refused with 400: `changes` applied to a valid form
    (None removes the field)."""

    label: str
    changes: Mapping[str, str | None] = field(default_factory=dict)
    path: str = INBOUND


def _apply(form: Mapping[str, str], changes: Mapping[str, str | None]) -> dict[str, str]:
    out = dict(form)
    for key, value in changes.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


FORGED = [
    Forged("unsigned", lambda c, s, f: (INBOUND, f, {})),
    Forged("signed for another URL",
           lambda c, s, f: (INBOUND, f, c.sign(s, "/sms/other", "", f))),
    Forged("signed for the status webhook, replayed to inbound",
           lambda c, s, f: (INBOUND, f, c.sign(s, STATUS, "", f))),
    Forged("signed without the query string it is sent with",
           lambda c, s, f: (INBOUND + "?city=ottawa", f, c.sign(s, INBOUND, "", f))),
    Forged("signed with another query string",
           lambda c, s, f: (INBOUND + "?city=montreal", f, c.sign(s, INBOUND, "city=ottawa", f))),
    Forged("a field changed after signing",
           lambda c, s, f: (INBOUND, {**f, c.body_field: "Pay the fee at https://evil.example"},
                            c.sign(s, INBOUND, "", f))),
    Forged("a field added after signing",
           lambda c, s, f: (INBOUND, {**f, "Extra": "1"}, c.sign(s, INBOUND, "", f))),
    Forged("signed with another account's token",
           lambda c, s, f: (INBOUND, f, c.sign(s, INBOUND, "", f, token="another-token-000"))),
]


class WebhookSecurityCases:
    """Inherit and fill in the provider's part; the test methods below run for it."""

    #: The settings file's `sms:` section selecting the provider (auth token included).
    sms_section: str
    #: The name of the inbound form's message-text field.
    body_field: str
    #: Headers carrying garbage instead of a signature (each must get 403).
    garbage_signatures: ClassVar[list[dict[str, str]]]
    #: Signed inbound forms missing or garbling a required field (each must get 400).
    malformed: ClassVar[list[Malformed]]

    def sign(self, settings: Settings, path: str, query: str, form: Mapping[str, str],
             token: str | None = None) -> dict[str, str]:
        """The headers the provider would send with `form` to `path` (+ `query`)."""
        raise NotImplementedError

    def inbound_form(self, settings: Settings, number: str, body: str) -> dict[str, str]:
        """A valid inbound-message form (a fresh message id every call)."""
        raise NotImplementedError

    def status_form(self, sid: str, state: str) -> dict[str, str]:
        """A valid delivery status form."""
        raise NotImplementedError

    def media_fields(self, count: int) -> dict[str, str]:
        """The fields an inbound form adds for `count` media (with realistic URLs)."""
        raise NotImplementedError

    # -- the table -------------------------------------------------------------------------

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        if "forged" in metafunc.fixturenames:
            metafunc.parametrize("forged", FORGED, ids=[f.label for f in FORGED])
        if "garbage" in metafunc.fixturenames:
            metafunc.parametrize("garbage", self.garbage_signatures,
                                 ids=[repr(h)[:40] for h in self.garbage_signatures])
        if "malformed" in metafunc.fixturenames:
            metafunc.parametrize("malformed", self.malformed, ids=[m.label for m in self.malformed])

    # -- fixtures --------------------------------------------------------------------------

    @pytest.fixture
    def gateway_options(self) -> dict[str, Any]:
        """conftest's `gateway`, with this provider's settings section."""
        return {"sms": self.sms_section}

    @pytest.fixture
    def client(self, gateway: Gateway) -> FlaskClient:
        return create_app(gateway).test_client()

    def signed_post(self, client: FlaskClient, settings: Settings, form: dict[str, str],
                    path: str = INBOUND) -> Any:
        return client.post(path, data=form, headers=self.sign(settings, path, "", form))

    @staticmethod
    def nothing_stored(gateway: Gateway) -> bool:
        with gateway.store.transaction() as tx:
            no_resident = tx.get_resident(NUMBER) is None
        return no_resident and gateway.store.list_outbox(None) == []

    # -- the cases -------------------------------------------------------------------------

    def test_a_signed_text_is_accepted(self, client: FlaskClient, gateway: Gateway) -> None:
        """The control case: without it, every refusal below could pass for a broken app."""
        form = self.inbound_form(gateway.settings, NUMBER, "Pothole on Bank St")
        response = self.signed_post(client, gateway.settings, form)
        assert response.status_code == 200
        assert not self.nothing_stored(gateway)

    def test_forged_requests_get_403_and_leave_no_trace(
        self, client: FlaskClient, gateway: Gateway, forged: Forged
    ) -> None:
        form = self.inbound_form(gateway.settings, NUMBER, "Pothole on Bank St")
        path, sent, headers = forged.forge(self, gateway.settings, form)
        response = client.post(path, data=sent, headers=headers)
        assert response.status_code == 403, forged.label
        assert self.nothing_stored(gateway)

    def test_garbage_signatures_get_403(
        self, client: FlaskClient, gateway: Gateway, garbage: dict[str, str]
    ) -> None:
        form = self.inbound_form(gateway.settings, NUMBER, "Pothole on Bank St")
        response = client.post(INBOUND, data=form, headers=garbage)
        assert response.status_code == 403
        assert self.nothing_stored(gateway)

    def test_malformed_signed_forms_get_400_and_leave_no_trace(
        self, client: FlaskClient, gateway: Gateway, malformed: Malformed
    ) -> None:
        form = _apply(self.inbound_form(gateway.settings, NUMBER, "Pothole"), malformed.changes)
        response = self.signed_post(client, gateway.settings, form, malformed.path)
        assert response.status_code == 400, malformed.label
        assert self.nothing_stored(gateway)

    def test_a_replayed_request_changes_nothing(
        self, client: FlaskClient, gateway: Gateway
    ) -> None:
        form = self.inbound_form(gateway.settings, NUMBER, "Pothole on Bank St")
        first = self.signed_post(client, gateway.settings, form)
        outbox = gateway.store.list_outbox(None)
        with gateway.store.transaction() as tx:
            resident = tx.get_resident(NUMBER)
        again = self.signed_post(client, gateway.settings, form)
        assert (again.status_code, again.data) == (first.status_code, first.data)
        assert gateway.store.list_outbox(None) == outbox
        with gateway.store.transaction() as tx:
            assert tx.get_resident(NUMBER) == resident

    def test_oversized_forms_get_413_before_the_signature_is_computed(
        self, client: FlaskClient, gateway: Gateway, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Seen: a 214 KB unsigned form cost 126 ms to refuse (4 ms for a small one)."""
        checked: list[str] = []
        authentic = gateway.webhooks.authentic
        monkeypatch.setattr(gateway.webhooks, "authentic",
                            lambda *args: checked.append("signature") or authentic(*args))
        form = self.inbound_form(gateway.settings, NUMBER, "Pothole on Bank St")
        big = {**form, **{f"F{i:05d}": "x" * 24 for i in range(6700)}}  # 214 KB
        many = {**form, **{f"F{i}": "" for i in range(MAX_WEBHOOK_FIELDS)}}  # a few KB
        chunky = {**form, self.body_field: "x" * MAX_WEBHOOK_BYTES}
        for sent in (big, many, chunky):
            for headers in ({}, self.sign(gateway.settings, INBOUND, "", sent)):
                assert client.post(INBOUND, data=sent, headers=headers).status_code == 413
                assert client.post(STATUS, data=sent, headers=headers).status_code == 413
        assert checked == []
        assert self.nothing_stored(gateway)
        assert self.signed_post(client, gateway.settings, form).status_code == 200
        assert checked == ["signature"]

    def test_the_largest_real_form_fits(self, client: FlaskClient, gateway: Gateway) -> None:
        """The caps leave room: 1,600 four-byte characters (URL-encoded: 12 bytes each) and
        the most media a message carries."""
        form = self.inbound_form(gateway.settings, NUMBER, "\U0001f6a7" * 1600)
        form.update(self.media_fields(MAX_MEDIA))
        response = self.signed_post(client, gateway.settings, form)
        assert response.status_code == 200
        assert not self.nothing_stored(gateway)

    def test_status_callbacks_are_signature_checked(
        self, client: FlaskClient, gateway: Gateway
    ) -> None:
        form = self.status_form("SM" + "3" * 32, "delivered")
        assert client.post(STATUS, data=form).status_code == 403
        assert self.signed_post(client, gateway.settings, form, STATUS).status_code == 204

    def test_a_garbled_status_callback_gets_400(
        self, client: FlaskClient, gateway: Gateway
    ) -> None:
        form = self.status_form("", "delivered")
        assert self.signed_post(client, gateway.settings, form, STATUS).status_code == 400
