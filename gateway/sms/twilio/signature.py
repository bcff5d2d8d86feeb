"""Twilio webhook signatures, checked with the twilio library's `RequestValidator`.

Fails closed: no token, no header, an unsupported algorithm or any error in the
validator means "not valid". The comparison inside the validator is constant-time.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Mapping

from twilio.request_validator import (
    SIGNATURE_HEADER,
    SIGNATURE_SETTINGS_HEADER,
    RequestValidator,
    get_signature_algorithm,
)
from werkzeug.datastructures import Headers

log = logging.getLogger(__name__)


def signed_url(public_url: str, path: str, query: str) -> str:
    """The URL Twilio signed: the configured public base URL + the request path (+ query).

    `path` is relative to the application root, so a `public_url` with a path prefix
    (a reverse proxy serving the gateway under /sms311) works.
    """
    full = public_url.rstrip("/") + path
    return f"{full}?{query}" if query else full


def _quote_variants(url: str) -> list[str]:
    """Twilio escapes an apostrophe in some places and not in others (see twilio-node)."""
    variants = [url]
    if "'" in url:
        variants.append(url.replace("'", "%27"))
    if "%27" in url:
        variants.append(url.replace("%27", "'"))
    return variants


class TwilioSignature:
    """Check `X-Twilio-Signature` for requests to `public_url`."""

    def __init__(self, auth_token: str, public_url: str) -> None:
        self._validator = RequestValidator(auth_token) if auth_token else None
        self._public_url = public_url

    def is_valid(
        self,
        path: str,
        query: str,
        params: object,
        headers: Mapping[str, str] | Headers,
    ) -> bool:
        """True only when the signature matches the URL and the form parameters."""
        signature = headers.get(SIGNATURE_HEADER)
        if self._validator is None or not signature:
            return False
        algorithm = get_signature_algorithm(headers.get(SIGNATURE_SETTINGS_HEADER))
        url = signed_url(self._public_url, path, query)
        validator = self._validator
        try:
            for candidate in _quote_variants(url):
                # What Twilio signs almost always, for a form: the URL as it was configured
                # there — `public_url` + path, with its port when it names one, without when
                # not — which is one of the two `validate` computes (without the port, and
                # with it). Checked alone first: one HMAC instead of validate's two, or, for a
                # `public_url` with a port, instead of three (measured: the signature was 30 %
                # of the webhook's CPU with three). Anything else (another port form, a JSON
                # body, bodySHA256) gets the library's whole check.
                if not isinstance(params, str):
                    usual = validator.compute_signature(candidate, params, algorithm)
                    if hmac.compare_digest(usual.encode(), signature.encode()):
                        return True
                if validator.validate(candidate, params, signature, algorithm):
                    return True
            return False
        except (TypeError, ValueError, UnicodeError) as exc:  # malformed input: fail closed
            log.info("signature check failed on malformed request: %s", type(exc).__name__)
            return False

    def sign(self, path: str, query: str, params: Mapping[str, str]) -> str:
        """The signature Twilio would send (for the sandbox helper and tests)."""
        if self._validator is None:
            raise ValueError("no auth_token configured")
        url = signed_url(self._public_url, path, query)
        return str(self._validator.compute_signature(url, params))
