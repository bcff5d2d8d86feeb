"""The webhook signature check against the Twilio test vectors in tests/data
(twilio-python, twilio-ruby, twilio-node), through our wrapper."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

import pytest
from werkzeug.datastructures import MultiDict

from gateway.sms.twilio.signature import TwilioSignature, signed_url
from tests.paths import TEST_DATA

VECTORS = json.loads((TEST_DATA / "twilio" / "signature_vectors.json").read_text())


def _cases(op_prefix: str) -> list[tuple[str, str, dict[str, Any]]]:
    cases = []
    for suite in VECTORS["suites"]:
        for vector in suite["vectors"]:
            op = vector.get("op", "")
            if op.startswith(op_prefix) and not (op_prefix == "validate" and "Request" in op):
                token = vector.get("auth_token") or suite.get("auth_token")
                cases.append((f"{suite['source']}: {vector['name']}", token, vector))
    return cases


def _check(token: str, url: str, params: Any, signature: str) -> bool:
    """Split the URL the way the app sees it: public_url + path, query apart."""
    parts = urlsplit(url)
    base = f"{parts.scheme}://{parts.netloc}"
    check = TwilioSignature(token, base)
    return check.is_valid(parts.path, parts.query, params, {"X-Twilio-Signature": signature})


@pytest.mark.parametrize(("label", "token", "vector"), _cases("validate"))
def test_validate_vectors(label: str, token: str, vector: dict[str, Any]) -> None:
    if "body" in vector:
        params: Any = vector["body"]  # JSON-body webhooks: string params, bodySHA256 in query
    elif "params_multi" in vector:
        params = MultiDict(vector["params_multi"])
    else:
        params = MultiDict(vector.get("params", {}))
    assert _check(token, vector["url"], params, vector["signature"]) is vector["expected_valid"], label


@pytest.mark.parametrize(("label", "token", "vector"), _cases("compute_signature"))
def test_compute_vectors(label: str, token: str, vector: dict[str, Any]) -> None:
    params = MultiDict(vector.get("params_multi") or list(vector.get("params", {}).items()))
    parts = urlsplit(vector["url"])
    check = TwilioSignature(token, f"{parts.scheme}://{parts.netloc}")
    assert check.sign(parts.path, parts.query, params) == vector["expected_signature"], label


@pytest.mark.parametrize(("label", "token", "vector"), _cases("validateRequest"))
def test_relational_vectors(label: str, token: str, vector: dict[str, Any]) -> None:
    signer = urlsplit(vector["signed_url"])
    signature = TwilioSignature(token, f"{signer.scheme}://{signer.netloc}").sign(
        signer.path, signer.query, {}
    )
    assert _check(token, vector["target_url"], {}, signature) is vector["expected_valid"], label


def test_no_token_fails_closed() -> None:
    check = TwilioSignature("", "https://sms.example.ca")
    assert not check.is_valid("/sms/inbound", "", {}, {"X-Twilio-Signature": "x"})


def test_public_url_with_a_path_prefix() -> None:
    assert signed_url("https://x.ca/gw/", "/sms/inbound", "a=1") == "https://x.ca/gw/sms/inbound?a=1"


@pytest.mark.parametrize(
    "public_url",
    ["https://sms.example.ca", "https://sms.example.ca:8443", "http://127.0.0.1:8311"],
)
def test_a_form_signed_on_the_configured_url_costs_one_hmac(
    public_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What Twilio signs (the URL as configured, with its port when it names one) is
    recognised by one signature computation, not the library's two or three; another form
    of the URL (the port added or removed) is still accepted, through the whole check."""
    from twilio.request_validator import RequestValidator

    form = MultiDict([("From", "+16135550100"), ("Body", "Pothole on Bank St")])
    check = TwilioSignature("token-123", public_url)
    calls: list[str] = []
    original = RequestValidator.compute_signature

    def counted(self: RequestValidator, uri: str, params: Any, *args: Any) -> str:
        calls.append(uri)
        return str(original(self, uri, params, *args))

    monkeypatch.setattr(RequestValidator, "compute_signature", counted)
    signature = check.sign("/sms/inbound", "", form)
    calls.clear()
    assert check.is_valid("/sms/inbound", "", form, {"X-Twilio-Signature": signature})
    assert calls == [public_url + "/sms/inbound"]
    other = public_url + ":443" if public_url.count(":") == 1 else public_url.rsplit(":", 1)[0]
    signed_elsewhere = RequestValidator("token-123").compute_signature(
        other + "/sms/inbound", form
    )
    assert check.is_valid("/sms/inbound", "", form, {"X-Twilio-Signature": signed_elsewhere})
    assert not check.is_valid("/sms/inbound", "", form, {"X-Twilio-Signature": signature[:-2]})
