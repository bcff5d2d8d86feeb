"""The webhook's form parser (gateway/web/webhooks.py, `parse_form`) reads every body as the
standard library's `parse_qsl(keep_blank_values=True)` does (no I/O)."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode

from hypothesis import given
from hypothesis import strategies as st

from gateway.web.webhooks import parse_form

_PIECES = st.sampled_from(["&", "=", "+", "%", "%2B", "%26", "%3D", "%C3%A9", "%E2", "%zz", ";", " "])
_RAW = st.lists(st.one_of(_PIECES, st.text(max_size=6)), max_size=20).map("".join)


@given(_RAW)
def test_any_body_parses_as_the_standard_library_parses_it(body: str) -> None:
    assert parse_form(body) == parse_qsl(body, keep_blank_values=True)


@given(st.lists(st.tuples(st.text(max_size=12), st.text(max_size=40)), max_size=25))
def test_an_encoded_form_reads_back_field_for_field(fields: list[tuple[str, str]]) -> None:
    body = urlencode(fields)
    assert parse_form(body) == parse_qsl(body, keep_blank_values=True)
    assert parse_form(body) == fields  # ("", "") is written "=", a field of its own


def test_a_twilio_form() -> None:
    body = "Body=Nid-de-poule+rue+Sainte-Catherine+%C3%A0+l%27angle&From=%2B15145550100&NumMedia=0&ToZip="
    assert parse_form(body) == [
        ("Body", "Nid-de-poule rue Sainte-Catherine à l'angle"),
        ("From", "+15145550100"),
        ("NumMedia", "0"),
        ("ToZip", ""),
    ]
