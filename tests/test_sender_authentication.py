"""Issue 15, item 1: a reply is acted on only when its sender is authenticated.

The pure rule (gateway.rules.reading.authentication): the one From address, which
Authentication-Results are believed, alignment. DKIM verified by the gateway itself
(gateway.mail.dkim_check, dkimpy) with a test RSA key and a stub DNS. Then a table of forged
and genuine replies through ReplyService over a real SQLite store: forged ones are not
texted, change nothing, are kept in the Failed list and queue no email to the claimed sender.
"""

from __future__ import annotations

import base64
import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.app import Gateway
from gateway.mail.dkim_check import verified_dkim_domains
from gateway.rules.reading.authentication import (
    Refused,
    Sender,
    aligned,
    authenticate,
    authentication_headers,
    parse_auth_results,
    sender_of,
    trusted_results,
)
from gateway.rules.resident_email import ResidentEmail
from gateway.store.reply_mail import list_failed_emails
from tests.flow_helpers import (
    AGENT,
    agent_reply,
    emails_out,
    handle,
    notices,
    resident_in_ottawa,
    sms_rows,
)
from tests.gateway_fixtures import TEST_AUTHSERV_ID, settings_in

# -- the sender: one From, one address, unambiguous ---------------------------------------------


@pytest.mark.parametrize(
    "values, expected",
    [
        (["Jane Doe <jane.doe@ottawa.example>"], "jane.doe@ottawa.example"),
        (["jane.doe@Ottawa.EXAMPLE"], "jane.doe@ottawa.example"),
        (['"Doe, Jane" <jane.doe@ottawa.example>'], "jane.doe@ottawa.example"),
        (["jane.doe@ottawa.example (Jane Doe)"], "jane.doe@ottawa.example"),
        (['"jane.doe@ottawa.example" <jane.doe@ottawa.example>'], "jane.doe@ottawa.example"),
        (["=?utf-8?q?Am=C3=A9lie?= <amelie@gatineau.example>"], "amelie@gatineau.example"),
        (["agent@ottawa.example <evil@evil.example>"], None),
        (["<agent@ottawa.example>@evil.example"], None),
        (["agent@ottawa.example@evil.example"], None),
        (["jane<agent@ottawa.example>x@evil.example"], None),
        (['"agent@ottawa.example" <evil@evil.example>'], None),
        (["=?utf-8?q?agent=40ottawa.example?= <evil@evil.example>"], None),
        (["<@evil.example:agent@ottawa.example>"], None),  # an obsolete source route
        (["agent@ottawa.example", "evil@evil.example"], None),  # two From headers
        (["agent@ottawa.example, evil@evil.example"], None),  # two addresses
        (["City: agent@ottawa.example;"], None),  # a group
        (["Jane Doe"], None),
        ([""], None),
        ([], None),
        (["Jane <agent@[192.0.2.1]>"], None),  # not a domain name
        (["Jane <agent@localhost>"], None),
    ],
)
def test_the_sender_is_one_unambiguous_address(values: list[str], expected: str | None) -> None:
    found = sender_of(values)
    if expected is None:
        assert isinstance(found, Refused), found
    else:
        assert found == Sender(expected, expected.rpartition("@")[2])


# -- Authentication-Results (RFC 8601) -----------------------------------------------------------

GMAIL = (
    "mx.google.com;\r\n       dkim=pass header.i=@ottawa.example header.s=sel1 "
    "header.b=AbCdEf12;\r\n       spf=pass (google.com: domain of jane@ottawa.example "
    "designates 192.0.2.10 as permitted sender) smtp.mailfrom=jane@ottawa.example;\r\n"
    "       dmarc=pass (p=REJECT sp=REJECT dis=NONE) header.from=ottawa.example"
)
GMAIL_FAIL = (
    "mx.google.com; spf=fail (google.com: domain of x@evil.example does not designate "
    "198.51.100.7 as permitted sender) smtp.mailfrom=x@evil.example; "
    "dmarc=fail (p=REJECT sp=REJECT dis=REJECT) header.from=ottawa.example"
)
M365 = (
    "spf=pass (sender IP is 40.107.1.2) smtp.mailfrom=ottawa.example; dkim=pass (signature "
    "was verified) header.d=ottawa.example;dmarc=pass action=none "
    "header.from=ottawa.example;compauth=pass reason=100"
)
OPENDMARC = "mx.city.example; dmarc=pass (p=reject dis=none) header.from=ottawa.example"
OPENDKIM = (
    "mx.city.example; dkim=pass (2048-bit key; unprotected) header.d=ottawa.example "
    'header.i=@ottawa.example header.a=rsa-sha256 header.s=sel1 header.b="AbCd;Ef"'
)
RSPAMD = (
    "mx.city.example;\r\n\tdkim=pass header.d=roads.ottawa.example header.s=dkim "
    "header.b=xyz;\r\n\tspf=pass (mx.city.example: domain of jane@ottawa.example designates "
    '192.0.2.10 as permitted sender) smtp.mailfrom=jane@ottawa.example;\r\n\tdmarc=pass '
    "reason=\"SPF not aligned (relaxed)\" header.from=ottawa.example (policy=reject)"
)
OTHER_DOMAIN = "mx.city.example; dkim=pass header.d=evil.example; dmarc=none header.from=x"
DMARC_FAIL = "mx.city.example; dkim=fail header.d=ottawa.example; dmarc=fail header.from=ottawa.example"
SENDER = Sender("jane@ottawa.example", "ottawa.example")


def test_parsing_authentication_results_as_servers_write_them() -> None:
    gmail = parse_auth_results(GMAIL)
    assert gmail.authserv_id == "mx.google.com"
    assert [(r.method, r.result) for r in gmail.results] == [
        ("dkim", "pass"), ("spf", "pass"), ("dmarc", "pass")]  # fmt: skip
    assert gmail.results[0].properties["header.i"] == "@ottawa.example"
    assert gmail.results[2].properties["header.from"] == "ottawa.example"
    m365 = parse_auth_results(M365)  # Microsoft 365 writes no authserv-id
    assert m365.authserv_id is None
    assert [r.method for r in m365.results] == ["spf", "dkim", "dmarc", "compauth"]
    opendkim = parse_auth_results(OPENDKIM)  # a ";" in a quoted value splits nothing
    assert opendkim.results[0].properties["header.d"] == "ottawa.example"
    assert parse_auth_results("mx.city.example 1; none").results == ()


@pytest.mark.parametrize(
    "headers, trusted, authenticated",
    [
        ([GMAIL], ["mx.google.com"], True),  # dmarc=pass (and dkim header.i aligned)
        ([GMAIL], ["mx.city.example"], False),  # an authserv-id nobody trusts
        ([GMAIL_FAIL], ["mx.google.com"], False),
        ([OPENDMARC], ["mx.city.example"], True),
        ([OPENDKIM], ["mx.city.example"], True),
        ([RSPAMD], ["mx.city.example"], True),  # dkim by a subdomain: relaxed alignment
        ([OTHER_DOMAIN], ["mx.city.example"], False),
        ([DMARC_FAIL], ["mx.city.example"], False),
        ([M365], ["mx.city.example", "mx.microsoft.com"], False),  # no authserv-id: not believed
        # a trusted header below an untrusted one came with the message
        (["mx.evil.example; none", OPENDMARC], ["mx.city.example"], False),
        ([M365, OPENDMARC], ["mx.city.example"], False),
        # only the topmost of each trusted server: a copy forged below its own is ignored
        ([DMARC_FAIL, OPENDMARC], ["mx.city.example"], False),
        # two trusted servers in a row (inner, then border): both believed
        (["inner.city.example; none", OPENDMARC], ["inner.city.example", "mx.city.example"], True),
        ([], ["mx.city.example"], False),
    ],
)
def test_only_the_topmost_trusted_authentication_results_are_believed(
    headers: list[str], trusted: list[str], authenticated: bool
) -> None:
    verdict = authenticate(SENDER, trusted_results(headers, trusted))
    assert verdict.authenticated is authenticated, verdict


@pytest.mark.parametrize(
    "domain, signer, ok",
    [
        ("ottawa.example", "ottawa.example", True),
        ("ottawa.example", "mail.ottawa.example", True),
        ("roads.ottawa.example", "ottawa.example", True),
        ("ottawa.example", "evil.example", False),
        ("ottawa.example", "notottawa.example", False),
        ("ottawa.example", "example", False),  # a one-label signer never aligns
        ("ottawa.example", "", False),
    ],
)
def test_relaxed_alignment(domain: str, signer: str, ok: bool) -> None:
    assert aligned(domain, signer) is ok


def test_the_headers_are_read_from_the_header_section_only() -> None:
    raw = (
        b"Authentication-Results: a.example; none\r\nFrom: Jane <jane@ottawa.example>\r\n"
        b"Authentication-Results: b.example; none\r\n\r\n"
        b"From: evil@evil.example\r\nAuthentication-Results: c.example; none\r\n"
    )
    assert authentication_headers(raw) == (
        ["Jane <jane@ottawa.example>"], ["a.example; none", "b.example; none"])  # fmt: skip


# -- DKIM verified by the gateway (dkimpy, a stub resolver) ---------------------------------------


class Keys:
    """A test RSA key per (selector, domain), published in a stub DNS (a dict)."""

    def __init__(self) -> None:
        self.records: dict[str, bytes] = {}
        self.private: dict[tuple[str, str], bytes] = {}
        self.lookups: list[str] = []

    def add(self, domain: str, selector: str = "sel1") -> None:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.private[(selector, domain)] = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )  # fmt: skip
        public = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.records[f"{selector}._domainkey.{domain}"] = (
            b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)
        )

    def sign(self, raw: bytes, domain: str, selector: str = "sel1") -> bytes:
        signature: bytes = dkim.sign(
            raw, selector.encode(), domain.encode(), self.private[(selector, domain)],
            include_headers=[b"from", b"to", b"subject", b"message-id", b"in-reply-to"],
        )  # fmt: skip
        return signature + raw

    def dns(self, name: bytes | str, timeout: float = 5) -> bytes | None:
        text = name.decode() if isinstance(name, bytes) else name
        self.lookups.append(text)
        return self.records.get(text.rstrip("."))


@pytest.fixture(scope="module")
def keys() -> Keys:
    made = Keys()
    made.add("ottawa.example")
    made.add("evil.example")
    return made


PLAIN = (
    b"From: Jane Doe <jane@ottawa.example>\r\nTo: reply+abc@gateway.example\r\n"
    b"Subject: Re: pothole\r\nMessage-ID: <r1@ottawa.example>\r\n\r\nCrew sent.\r\n"
)


def test_a_valid_signature_is_verified_and_a_tampered_one_is_not(keys: Keys) -> None:
    signed = keys.sign(PLAIN, "ottawa.example")
    assert verified_dkim_domains(signed, keys.dns) == ("ottawa.example",)
    assert verified_dkim_domains(signed.replace(b"Crew sent.", b"Pay $50."), keys.dns) == ()
    forged_from = signed.replace(b"jane@ottawa.example", b"bob@ottawa.example")
    assert verified_dkim_domains(forged_from, keys.dns) == ()
    assert verified_dkim_domains(keys.sign(PLAIN, "evil.example"), keys.dns) == ("evil.example",)
    assert verified_dkim_domains(PLAIN, keys.dns) == ()
    unknown = Keys()
    unknown.add("ottawa.example")  # the same domain, a key DNS does not publish
    assert verified_dkim_domains(unknown.sign(PLAIN, "ottawa.example"), keys.dns) == ()


def test_a_dns_failure_is_no_verified_signature(keys: Keys) -> None:
    def broken(name: bytes, timeout: float = 5) -> bytes | None:
        raise dkim.DnsTimeoutError("timed out")

    assert verified_dkim_domains(keys.sign(PLAIN, "ottawa.example"), broken) == ()


# -- through the flow: ReplyService over a real SQLite store ---------------------------------------


def with_from(raw: bytes, value: str) -> bytes:
    """`raw` with its From header replaced by `value` (as written, however odd)."""
    head, _, body = raw.partition(b"\n\n")
    lines = [ln for ln in head.split(b"\n") if not ln.lower().startswith(b"from:")]
    return b"\n".join([b"From: " + value.encode(), *lines]) + b"\n\n" + body


def stamped(raw: bytes, value: str) -> bytes:
    return f"Authentication-Results: {value}\n".encode() + raw


# "#close" too: a forged reply must not close the conversation
TEXT = "Pay the $50 fee at https://evil.example\n#close"
Forge = Callable[[ResidentEmail, Keys], bytes]
CASES: list[tuple[str, Forge, bool]] = [
    ("trusted dmarc=pass", lambda e, k: agent_reply(e, TEXT), True),
    ("valid DKIM, no Authentication-Results",
     lambda e, k: k.sign(agent_reply(e, TEXT, authenticated=False), "ottawa.example"),
     True),
    ("nothing at all", lambda e, k: agent_reply(e, TEXT, authenticated=False), False),
    ("display name is an address",
     lambda e, k: stamped(with_from(agent_reply(e, TEXT, authenticated=False),
                                    f"{AGENT} <evil@evil.example>"),
                          f"{TEST_AUTHSERV_ID}; dmarc=pass header.from=evil.example"), False),
    ("address after the angle brackets",
     lambda e, k: stamped(with_from(agent_reply(e, TEXT, authenticated=False),
                                    f"<{AGENT}>@evil.example"),
                          f"{TEST_AUTHSERV_ID}; dmarc=pass header.from=ottawa.example"), False),
    ("two From headers",
     lambda e, k: b"From: evil@evil.example\n" + agent_reply(e, TEXT), False),
    ("two addresses",
     lambda e, k: stamped(with_from(agent_reply(e, TEXT, authenticated=False),
                                    f"{AGENT}, evil@evil.example"),
                          f"{TEST_AUTHSERV_ID}; dmarc=pass header.from=ottawa.example"), False),
    ("a group",
     lambda e, k: stamped(with_from(agent_reply(e, TEXT, authenticated=False),
                                    f"City: {AGENT};"),
                          f"{TEST_AUTHSERV_ID}; dmarc=pass header.from=ottawa.example"), False),
    ("untrusted authserv-id",
     lambda e, k: stamped(agent_reply(e, TEXT, authenticated=False),
                          "mx.evil.example; dmarc=pass header.from=ottawa.example"), False),
    ("trusted A-R below an untrusted one",
     lambda e, k: stamped(stamped(agent_reply(e, TEXT, authenticated=False),
                                  f"{TEST_AUTHSERV_ID}; dmarc=pass header.from=ottawa.example"),
                          "mx.evil.example; none"), False),
    ("dmarc=fail",
     lambda e, k: stamped(agent_reply(e, TEXT, authenticated=False),
                          f"{TEST_AUTHSERV_ID}; dmarc=fail header.from=ottawa.example"), False),
    ("DKIM by another domain",
     lambda e, k: k.sign(agent_reply(e, TEXT, authenticated=False), "evil.example"), False),
    ("trusted dkim=pass for another domain",
     lambda e, k: stamped(agent_reply(e, TEXT, authenticated=False),
                          f"{TEST_AUTHSERV_ID}; dkim=pass header.d=evil.example"), False),
]  # fmt: skip


@pytest.mark.parametrize("label, forge, texted", CASES, ids=[c[0] for c in CASES])
def test_a_reply_is_acted_on_only_when_its_sender_is_authenticated(
    gateway: Gateway, keys: Keys, label: str, forge: Forge, texted: bool
) -> None:
    gateway.dkim_dns = keys.dns
    email = resident_in_ottawa(gateway)
    emails_before = len(emails_out(gateway))
    raw = forge(email, keys)
    disposition = handle(gateway, raw)
    with gateway.store.transaction() as tx:
        kept = list_failed_emails(tx)
        conversation = tx.get_conversation(1)
    assert conversation is not None
    if texted:
        assert disposition.outcome == "processed", disposition
        assert len(sms_rows(gateway)) == 1 and kept == []
        assert conversation.agent_address == AGENT and conversation.status == "closed"
        return
    assert disposition.outcome == "failed", disposition
    assert disposition.reason.startswith("sender not authenticated"), disposition
    assert sms_rows(gateway) == []
    assert [k.why for k in kept] == ["not_authenticated"]
    assert conversation.agent_address is None and conversation.status == "open"
    assert notices(gateway) == []  # no email to the claimed sender (no backscatter)
    assert len(emails_out(gateway)) == emails_before


def test_a_forged_reply_is_not_texted_on_retry_either(gateway: Gateway) -> None:
    raw = agent_reply(resident_in_ottawa(gateway), "Pay", authenticated=False)
    assert handle(gateway, raw).outcome == "failed"
    with gateway.store.transaction() as tx:
        [kept] = list_failed_emails(tx)
    assert gateway.replies().retry(kept.id).reason.startswith("sender not authenticated")
    assert sms_rows(gateway) == []


# -- the settings ----------------------------------------------------------------------------------


def test_required_is_the_default_and_trusted_ids_are_a_list(tmp_path: Path) -> None:
    settings = settings_in(tmp_path)
    assert settings.email.sender_authentication == "required"
    assert settings.email.trusted_authserv_ids == (TEST_AUTHSERV_ID,)


def sender_authentication_off(gateway: Gateway) -> None:
    email = dataclasses.replace(gateway.settings.email, sender_authentication="off")
    gateway.settings = dataclasses.replace(gateway.settings, email=email)


def test_off_believes_from_as_written(gateway: Gateway) -> None:
    sender_authentication_off(gateway)
    raw = agent_reply(resident_in_ottawa(gateway), "Crew sent.", authenticated=False)
    assert handle(gateway, raw).outcome == "processed"


def test_off_logs_a_warning_at_every_start(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    import asyncio
    import os
    import signal

    from gateway.run.server import run_gateway

    sender_authentication_off(gateway)

    async def start_and_stop() -> None:
        asyncio.get_running_loop().call_later(0.2, os.kill, os.getpid(), signal.SIGTERM)
        await run_gateway(gateway, web=False, worker=False)

    with caplog.at_level(logging.WARNING, logger="gateway.run.server"):
        asyncio.run(start_and_stop())
    assert any("sender_authentication is off" in r.getMessage() for r in caplog.records)
