"""Hostile or malformed input never produces a 5xx (hypothesis, signed and unsigned)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.app import Gateway
from gateway.store import open_store
from gateway.web import create_app
from tests.gateway_fixtures import Resident, settings_in

FIELDS = ["MessageSid", "SmsMessageSid", "From", "To", "Body", "NumMedia", "MediaUrl0",
          "MediaContentType0", "FromCity", "FromState", "AccountSid"]

text = st.text(st.characters(codec="utf-8"), max_size=300)
numberish = st.from_regex(r"\+?[0-9 ()\-]{0,20}", fullmatch=True)
forms = st.dictionaries(
    st.sampled_from(FIELDS) | st.text(max_size=20),
    st.one_of(text, numberish, st.sampled_from(["0", "1", "10", "-1", "99999999999999999999"])),
    max_size=12,
)
bodies = st.sampled_from(["STOP", "Arrêt", "help", "CITY", "Ottawa", "1", "Victoria", "K1A 0B1",
                          "", " ", "\u200b", "x" * 2000, "é" * 200]) | text


@pytest.fixture(scope="module")
def app_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FlaskClient, Resident]]:
    folder = tmp_path_factory.mktemp("fuzz")
    cfg = settings_in(folder)
    store = open_store(cfg.database)
    store.upgrade()
    store.close()
    gateway = Gateway.from_settings(cfg)
    client = create_app(gateway).test_client()
    yield client, Resident(client, cfg)
    gateway.close()


FUZZ = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(form=forms, signature=st.one_of(st.none(), text))
def test_unsigned_garbage_is_refused_never_5xx(
    app_client: tuple[FlaskClient, Resident], form: dict[str, str], signature: str | None
) -> None:
    client, _ = app_client
    headers = {} if signature is None else {"X-Twilio-Signature": signature}
    try:
        response = client.post("/sms/inbound", data=form, headers=headers)
    except ValueError:
        return  # werkzeug's test client refuses to build the request (e.g. NUL in a header)
    assert response.status_code == 403


@FUZZ
@given(form=forms)
def test_signed_garbage_never_5xx(app_client: tuple[FlaskClient, Resident],
                                  form: dict[str, str]) -> None:
    _, resident = app_client
    response = resident.post(form)
    assert response.status_code in (200, 400), response.data


@FUZZ
@given(phone=st.sampled_from(["+16135550190", "+15145550191", "613-555-0192"]), body=bodies,
       city=st.none() | text, state=st.none() | st.sampled_from(["ON", "QC", "BC", "", "zz"]))
def test_signed_well_formed_texts_always_answer_200(
    app_client: tuple[FlaskClient, Resident], phone: str, body: str, city: Any, state: Any
) -> None:
    _, resident = app_client
    extra = {"from_city": city, "from_state": state}
    from gateway.run.sandbox import twilio_form

    form = twilio_form(resident.settings, phone, body, **extra)
    response = resident.post(form)
    assert response.status_code in (200, 400), response.data
    if response.status_code == 200:
        assert response.mimetype == "application/xml"
