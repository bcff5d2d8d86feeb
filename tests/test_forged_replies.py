"""Issue 15, tests: one table of forged (and genuine) agents' replies, through BOTH doors.

A real gateway worker runs in process (`gateway.run.worker.run_worker` in a thread of its
own: the dispatcher, the IMAP listener on a real Dovecot, the SMTP reply ingress), sending
SMS through the real twilio client to the fake Twilio API and email through SMTP to an
aiosmtpd sink. It runs in process, not as `sms311 run`, for one reason: the gateway's own
DKIM check must look its keys up in a stub DNS (`Gateway.dkim_dns`), and signatures are
made with test keys published there.

Every case is run twice, once per door, each door with a gateway of its own (started once
for all of that door's runs): APPENDed to the replies mailbox on Dovecot (the IMAP listener
picks it up under IDLE), and handed to the SMTP ingress with smtplib. Each run has its own
resident (a new phone number, so a new conversation and reply token) and its own agent
address (the Failed list caps a stranger's mail per claimed sender). Rows that show a bug
that is a known limit are strict xfails naming it (README, Known limits).
What is checked, at the far ends and in the store:

- texted: the SMS at the fake Twilio API, the sticky agent set (and the conversation
  closed when the reply said `#close`), nothing in the Failed list;
- not texted: no SMS at the API nor queued, the conversation still open with no sticky
  agent (the forged replies all carry `#close`), the mail in the store's Failed list with
  its `why` and reason, filed in Dovecot's Failed mailbox (IMAP door), and no email at all
  queued by it: the SMTP sink never gets a "not texted" notice for the claimed sender.

Then the MIME flat-parts mail (~2 MB of ~200,000 empty parts) through the ingress, and a
good reply right behind it that must reach the fake Twilio API within seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import smtplib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from gateway.app import Gateway
from gateway.rules.resident_email import ResidentEmail
from gateway.run.worker import Dispatcher, run_worker
from gateway.settings import load_settings
from gateway.sms.base import InboundText
from gateway.store import Conversation, FailedEmail, open_store
from gateway.store.reply_mail import list_failed_emails
from gateway.store.transaction import SqlTx
from tests.dovecot import Dovecot
from tests.fake_twilio import FakeTwilio
from tests.flow_helpers import twilio_sms
from tests.forgery import Keys, agent_mail, flat_parts_mail, reply, stamped
from tests.gateway_fixtures import TEST_AUTHSERV_ID, free_port, write_settings
from tests.loop import MailServer, wait_for

pytestmark = pytest.mark.slow

CITY_MAILBOX = "311@ottawa.example"
OWN_ADDRESS = "sms@gateway.example"  # email.from_address (write_settings)
GOOD = "A crew is on the way."
# Every forged reply also asks to close the conversation: it must not.
FORGED = "Pay the $50 fee at https://evil.example/pay today.\n#close"

PASS = f"{TEST_AUTHSERV_ID}; dmarc=pass header.from=ottawa.example"
DMARC_FAIL = (
    f"{TEST_AUTHSERV_ID}; spf=fail smtp.mailfrom=x@evil.example; dkim=none; "
    "dmarc=fail (p=reject) header.from=ottawa.example"
)
# The refusal reasons (a prefix of the Failed list's reason)
NOT_AUTHENTICATED = "sender not authenticated: ottawa.example not authenticated"
NO_TRUSTED = NOT_AUTHENTICATED + " (no trusted Authentication-Results)"
ONE_TRUSTED = NOT_AUTHENTICATED + " (1 trusted Authentication-Results)"
# the From's shape: refused before any check
BAD_FROM = "sender not authenticated: From does not parse unambiguously"
TWO_NAMES = "sender not authenticated: From's display name names another address"
SEVERAL = "sender not authenticated: From holds several addresses"
BAD_FROM_COUNT = "sender not authenticated: 2 From headers"
UNROUTABLE = "unroutable: no reply token and no known thread"


@dataclass(frozen=True)
class Run:
    """What one run of a case forges with: the resident's email it answers, the test keys,
    and this run's agent address (a new one per run, at ottawa.example whose whole domain
    are agents: the Failed list keeps at most 20 of a stranger's mails per claimed sender a
    day, and the runs must not depend on one another)."""

    email: ResidentEmail
    keys: Keys
    agent: str
    other: ResidentEmail | None = None  # another resident's email (`Case.other`)

    def reply(
        self, body: str, *, from_values: Sequence[str] = ("Jane Doe <{agent}>",),
        token: bool = True,
    ) -> bytes:  # fmt: skip
        """`from_values`: each may name this run's agent as "{agent}"."""
        values = [v.format(agent=self.agent) for v in from_values]
        return reply(self.email, body, from_values=values, token=token)


Build = Callable[[Run], bytes]


@dataclass(frozen=True)
class Case:
    """One row of the table: how the raw mail is built, and what must come of it."""

    label: str
    build: Build
    texted: str | None = None  # the SMS the resident gets; None: not texted
    why: str | None = "not_authenticated"  # the Failed list's `why` (None: any)
    reason: str = NO_TRUSTED  # the Failed list's reason (its beginning)
    closed: bool = False  # (texted) the conversation is closed by the reply's #close
    token: bool = True  # sent to the reply address; False: to the gateway's From address
    # who the From claims to be ("{agent}": this run's agent): never sent any email by us
    claimed: tuple[str, ...] = ("{agent}",)
    looked_up: str | None = None  # a DKIM key the gateway must look up in the stub DNS
    xfail: str | None = None  # a known bug or limit, not fixed: why (strict: must fail)
    other: bool = False  # the build needs another resident's conversation (`Run.other`)
    # The From is genuinely authenticated (a replay of the agent's own mail): the agent, and
    # only the agent, gets one "not texted" notice (so they learn their mail was re-sent).
    told: bool = False


def plain(body: str, **kwargs: Any) -> Build:
    return lambda run: run.reply(body, **kwargs)


def with_results(*values: str, body: str = FORGED, **kwargs: Any) -> Build:
    """A reply with these Authentication-Results on top (top first)."""
    return lambda run: stamped(run.reply(body, **kwargs), *values)


def signed(domain: str, body: str = FORGED, selector: str = "sel1", **kwargs: Any) -> Build:
    """A reply signed (DKIM, test key) by `domain`, with no Authentication-Results."""
    return lambda run: run.keys.sign(run.reply(body, **kwargs), domain, selector)


def injected(result: str) -> str:
    """The trusted server's own header for a forged mail (SPF softfail, no DKIM, DMARC fail),
    written as a server that copies the envelope sender into its comment unescaped: the
    sender's address, chosen by the forger, ends the comment and adds `result`."""
    sender = f'"a); {result}; x=("@evil.example'
    return (
        f"{TEST_AUTHSERV_ID}; spf=softfail ({TEST_AUTHSERV_ID}: domain of {sender} does not "
        f"designate 192.0.2.7 as permitted sender) smtp.mailfrom={sender}; dkim=none; "
        "dmarc=fail (p=none dis=none) header.from=ottawa.example"
    )


def tampered(run: Run) -> bytes:
    """An agent's genuinely signed reply, its text changed afterwards (a replay)."""
    genuine = run.keys.sign(run.reply(GOOD), "ottawa.example")
    assert GOOD.encode() in genuine
    return genuine.replace(GOOD.encode(), b"Pay the $50 fee at https://evil.example/pay")


def body_length_signed(run: Run) -> bytes:
    """A reply signed with `l=` (only the body's first bytes signed), text appended."""
    genuine = run.keys.sign(run.reply(GOOD), "ottawa.example", length=True)
    return genuine + b"\r\nPay the $50 fee at https://evil.example/pay\r\n"


UNSIGNED_CC = (
    "known limit (README, Known limits): a Cc naming a conversation's reply address, added to a "
    "genuinely signed mail that had no Cc, is not covered by a signature that does not list Cc "
    "(oversigning it is the signer's job), and the mail answers no thread, so nothing tells it "
    "from a fresh mail by the agent"
)
MS365_HEADERS = ("from", "subject", "message-id", "date")  # what Microsoft 365 signs (no To)


FEE = "Yes, there is a $50 fee. Pay it at https://evil.example/pay"


def outsider_mail(run: Run) -> bytes:
    """A mail the agent genuinely wrote and signed, to an outsider who asked about fees."""
    return run.keys.sign(agent_mail(run.agent, "someone@evil.example", FEE), "ottawa.example")


def replayed(run: Run) -> bytes:
    """DKIM replay: `outsider_mail`, re-sent to the gateway with a Delivered-To naming this
    conversation's reply address above it (no signature covers Delivered-To: mail servers
    add it on delivery)."""
    return f"Delivered-To: {run.email.reply_to}\r\n".encode() + outsider_mail(run)


def second_to(run: Run) -> bytes:
    """DKIM replay: `outsider_mail` with a second To, naming this conversation's reply
    address, above the signed one (DKIM verifiers read the last copy: the signature holds)."""
    return f"To: {run.email.reply_to}\r\n".encode() + outsider_mail(run)


def cc_added(run: Run) -> bytes:
    """DKIM replay: `outsider_mail` with a Cc naming this conversation's reply address (the
    signature lists no Cc, so it still holds)."""
    return f"Cc: {run.email.reply_to}\r\n".encode() + outsider_mail(run)


def readdressed(run: Run) -> bytes:
    """DKIM replay: the agent's genuine reply in ANOTHER conversation, signed as Microsoft
    365 signs (no To), its To rewritten to this conversation's reply address."""
    assert run.other is not None
    genuine = reply(run.other, FEE, from_values=[f"Jane Doe <{run.agent}>"])
    signed_mail = run.keys.sign(genuine, "ottawa.example", headers=MS365_HEADERS)
    assert run.other.reply_to.encode() in signed_mail
    return signed_mail.replace(run.other.reply_to.encode(), run.email.reply_to.encode())


EVIL_PASS = f"{TEST_AUTHSERV_ID}; dmarc=pass header.from=evil.example"
OTTAWA_KEY = "sel1._domainkey.ottawa.example"

CASES: list[Case] = [
    # -- the controls: genuine replies are texted (so each forged row can fail) -----------------
    Case("control: trusted Authentication-Results, dmarc=pass",
         with_results(PASS, body=GOOD), texted=GOOD),
    Case("control: DKIM signature of ottawa.example, verified against the stub DNS",
         signed("ottawa.example", body=GOOD), texted=GOOD, looked_up=OTTAWA_KEY),
    Case("control: no token, routed by In-Reply-To, authenticated, with #close",
         with_results(PASS, body=GOOD + "\n#close", token=False), texted=GOOD, closed=True,
         token=False),
    # -- From tricks: refused for the From's shape, whatever the results say -------------------
    Case("From: display name is the agent's address <evil@evil.example>",
         with_results(EVIL_PASS, from_values=["{agent} <evil@evil.example>"]),
         reason=BAD_FROM, claimed=("{agent}", "evil@evil.example")),
    Case("From: quoted display name is the agent's address",
         with_results(EVIL_PASS, from_values=['"{agent}" <evil@evil.example>']),
         reason=TWO_NAMES, claimed=("{agent}", "evil@evil.example")),
    Case("From: <agent@ottawa.example>@evil.example",
         with_results(EVIL_PASS, from_values=["<{agent}>@evil.example"]),
         reason=BAD_FROM, claimed=("{agent}", "{agent}@evil.example")),
    Case("From: two From headers, the agent's first",
         with_results(PASS, from_values=["Jane Doe <{agent}>", "evil@evil.example"]),
         reason=BAD_FROM_COUNT, claimed=("{agent}", "evil@evil.example")),
    Case("From: two From headers, the agent's second",
         with_results(EVIL_PASS, from_values=["evil@evil.example", "Jane Doe <{agent}>"]),
         reason=BAD_FROM_COUNT, claimed=("{agent}", "evil@evil.example")),
    Case("From: two addresses in one From",
         with_results(PASS, from_values=["Jane Doe <{agent}>, evil@evil.example"]),
         reason=SEVERAL, claimed=("{agent}", "evil@evil.example")),
    Case("From: a group holding the agent",
         with_results(PASS, from_values=["City: {agent};"]),
         reason="sender not authenticated: From is a group"),
    # -- Authentication-Results that are not believed -------------------------------------------
    Case("no Authentication-Results, no DKIM signature", plain(FORGED)),
    Case("dmarc=pass from an untrusted authserv-id",
         with_results("mx.evil.example; dmarc=pass header.from=ottawa.example")),
    Case("dmarc=pass with no authserv-id (Microsoft 365's shape)",
         with_results("spf=pass smtp.mailfrom=ottawa.example; dkim=pass "
                      "header.d=ottawa.example; dmarc=pass action=none "
                      "header.from=ottawa.example;compauth=pass reason=100")),
    Case("trusted dmarc=pass below an untrusted header (it came with the message)",
         with_results("mx.evil.example; none", PASS)),
    Case("forged trusted dmarc=pass below the trusted server's own dmarc=fail",
         with_results(DMARC_FAIL, PASS), reason=ONE_TRUSTED),
    Case("trusted dmarc=fail", with_results(DMARC_FAIL), reason=ONE_TRUSTED),
    Case("trusted dmarc=pass, but for another From domain", with_results(EVIL_PASS),
         reason=ONE_TRUSTED),
    Case("trusted dkim=pass, header.d another domain (not aligned)",
         with_results(f"{TEST_AUTHSERV_ID}; dkim=pass header.d=evil.example header.s=sel1; "
                      "dmarc=none header.from=ottawa.example"), reason=ONE_TRUSTED),
    Case("trusted dkim=pass, header.d a look-alike domain (evilottawa.example)",
         with_results(f"{TEST_AUTHSERV_ID}; dkim=pass header.d=evilottawa.example"),
         reason=ONE_TRUSTED),
    # -- results injected into the trusted server's header through the envelope sender ---------
    Case("injected dmarc=pass: a ')' in the envelope sender ends the server's comment",
         with_results(injected("dmarc=pass header.from=ottawa.example")), reason=ONE_TRUSTED),
    Case("injected dkim=pass header.d=ottawa.example beside the server's own dmarc=fail",
         with_results(injected("dkim=pass header.d=ottawa.example")), reason=ONE_TRUSTED),
    Case("dmarc=pass inside a quoted envelope sender (a server that quotes it)",
         with_results(f'{TEST_AUTHSERV_ID}; spf=softfail smtp.mailfrom="a;dmarc=pass '
                      'header.from=ottawa.example"@evil.example; dkim=none; '
                      "dmarc=fail header.from=ottawa.example"), reason=ONE_TRUSTED),
    Case("trusted header about another From (dmarc for evil.example), dkim=pass ottawa",
         with_results(f"{TEST_AUTHSERV_ID}; dkim=pass header.d=ottawa.example; "
                      "dmarc=pass header.from=evil.example"), reason=ONE_TRUSTED),
    # -- routed by In-Reply-To alone, unauthenticated, #close ------------------------------------
    Case("no token, routed by In-Reply-To alone, not authenticated, #close",
         plain(FORGED, token=False), token=False),
    # -- DKIM checked by the gateway itself -------------------------------------------------------
    Case("valid DKIM signature of evil.example", signed("evil.example"),
         reason=NO_TRUSTED[:-1] + "; DKIM verified for evil.example)",
         looked_up="sel1._domainkey.evil.example"),
    Case("DKIM signature of ottawa.example with a key DNS does not publish",
         signed("ottawa.example", selector="unpublished"),
         looked_up="unpublished._domainkey.ottawa.example"),
    Case("genuine DKIM-signed reply, its text changed afterwards", tampered),
    Case("DKIM signature with l= (body length), text appended", body_length_signed,
         looked_up=OTTAWA_KEY),
    # -- DKIM replay: a genuinely signed mail re-sent into a conversation ------------------------
    Case("DKIM replay: an agent's signed mail to an outsider, re-sent with Delivered-To "
         "naming this conversation's reply address", replayed, why="unroutable",
         reason=UNROUTABLE, looked_up=OTTAWA_KEY, told=True),
    Case("DKIM replay through the trusted server (its dmarc=pass, by DKIM alignment)",
         lambda run: stamped(replayed(run), PASS), why="unroutable", reason=UNROUTABLE, told=True),
    Case("DKIM replay: a second To naming this conversation, above the signed To",
         second_to, why="unroutable", reason="unroutable: To given more than once"),
    Case("DKIM replay: another conversation's signed reply (To unsigned, as Microsoft 365), "
         "its To rewritten to this conversation", readdressed, why="unroutable",
         reason="unroutable: the reply address is conversation", looked_up=OTTAWA_KEY,
         other=True),
    Case("DKIM replay: a Cc naming this conversation added to a signed mail with none",
         cc_added, why=None, looked_up=OTTAWA_KEY, xfail=UNSIGNED_CC),
    # -- authenticated, but not an agent: not texted, and no notice to a stranger ----------------
    Case("authenticated evil.example sender (not an agent)",
         with_results(EVIL_PASS, from_values=["Evil <evil@evil.example>"]),
         why="not_agent", reason="sender is not an agent", claimed=("evil@evil.example",)),
]  # fmt: skip

DOORS = ("imap", "smtp")
_sids = itertools.count(1)


# -- the running gateway ---------------------------------------------------------------------------


class World:
    """The fake Twilio API, the SMTP sink and a gateway worker running in a thread, with one
    door open: "imap" (the listener on `dovecot`) or "smtp" (the ingress on `ingress_port`).
    One per door, shared by that door's runs; see the module docstring."""

    def __init__(self, folder: Path, door: str, dovecot: Dovecot | None = None) -> None:
        self.door = door
        self.dovecot = dovecot
        self.keys = Keys()
        self.keys.add("ottawa.example")
        self.keys.add("evil.example")
        self.keys.add("ottawa.example", "unpublished", publish=False)
        self.api = FakeTwilio().start()
        self.mail = MailServer().start()
        self.ingress_port = free_port()
        config = write_settings(folder, smtp_port=self.mail.port, sms=twilio_sms(self.api))
        environ: dict[str, str] = {}
        if dovecot is not None:
            door_settings = (
                f"  imap: {{host: 127.0.0.1, port: {dovecot.port}, username: {dovecot.user},"
                " security: none}\n"
            )
            environ["GATEWAY_EMAIL__IMAP__PASSWORD"] = dovecot.password
        else:
            door_settings = f'  ingress: {{listen: "127.0.0.1:{self.ingress_port}"}}\n'
        text = config.read_text().replace("  smtp: {host", door_settings + "  smtp: {host")
        config.write_text(text)
        settings = load_settings(config, environ=environ)
        assert settings.email.sender_authentication == "required"  # the default
        assert settings.email.trusted_authserv_ids == (TEST_AUTHSERV_ID,)
        store = open_store(settings.database)
        store.upgrade()
        store.close()
        self.gateway = Gateway.from_settings(settings)
        self.gateway.dkim_dns = self.keys.dns
        self._phones = iter(range(100, 200))
        self._agents = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="gateway-worker", daemon=True)
        self._thread.start()
        if dovecot is None:
            wait_for(self._ingress_up, "the SMTP ingress to listen", 15)

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            dispatcher = Dispatcher(self.gateway, poll_interval=0.05)
            await run_worker(self.gateway, self._stop, dispatcher)

        try:
            asyncio.run(main())
        except BaseException as exc:  # reported by the tests (`alive`) and at close
            self._error = exc

    def _ingress_up(self) -> bool:
        assert self._thread.is_alive(), f"the worker ended: {self._error!r}"
        try:
            with smtplib.SMTP("127.0.0.1", self.ingress_port, timeout=2) as client:
                return client.noop()[0] == 250
        except OSError:
            return False

    def close(self) -> None:
        try:
            if self._loop is not None and self._stop is not None:
                with contextlib.suppress(RuntimeError):
                    self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(20)
            assert not self._thread.is_alive(), "the worker did not stop"
            assert self._error is None, f"the worker failed: {self._error!r}"
        finally:
            self.gateway.close()
            self.api.stop()
            self.mail.stop()

    # -- a resident, a reply, what came of it ---------------------------------------------------

    def resident(self) -> ResidentEmail:
        """A new resident of Ottawa texts: the email their conversation starts with."""
        phone = f"+1613555{next(self._phones):04d}"
        for body in ("Pothole on Bank St at Gladstone", "Ottawa"):
            self.gateway.inbound.handle(InboundText(
                sid=f"SM{next(_sids):032x}", phone=phone, to="31100", body=body,
                received_at=datetime.now(UTC),
            ))  # fmt: skip
        [item] = [
            i for i in self.gateway.store.list_outbox(None)
            if i.kind == "email" and i.payload.get("type", "resident") == "resident"
            and i.payload.get("resident_e164") == phone
        ]  # fmt: skip
        return ResidentEmail.from_dict(item.payload)

    def new_agent(self) -> str:
        """An agent address of Ottawa (whose map lists "@ottawa.example") not used before."""
        return f"agent{next(self._agents)}@ottawa.example"

    def deliver(self, raw: bytes, rcpt: str) -> None:
        """Through this world's door: APPENDed to the replies mailbox on Dovecot, or handed
        to the SMTP ingress (which must answer 250)."""
        if self.dovecot is not None:
            self.dovecot.append(raw)
            return
        with smtplib.SMTP("127.0.0.1", self.ingress_port, timeout=30) as client:
            refused = client.sendmail("bounces@evil.example", [rcpt], raw)
        assert refused == {}

    def conversation(self, email: ResidentEmail) -> Conversation:
        token = email.reply_to.partition("+")[2].partition("@")[0]
        with self.gateway.store.transaction() as tx:
            found = tx.conversation_by_token(token)
        assert found is not None
        return found

    def failed_with(self, message_id: str) -> list[FailedEmail]:
        """The Failed list's entries for the mail whose Message-ID is `message_id`."""
        found = []
        with self.gateway.store.transaction() as tx:
            assert isinstance(tx, SqlTx)
            for row in list_failed_emails(tx):
                kept = tx.get_failed_email(row.id)
                if kept is not None and message_id.encode() in kept.raw:
                    found.append(kept)
        return found

    def sms_to(self, phone: str) -> list[str]:
        return [m["Body"] for m in self.api.messages if m["To"] == phone]

    def sms_queued_for(self, phone: str) -> list[dict[str, Any]]:
        return [i.payload for i in self.gateway.store.list_outbox(None)
                if i.kind == "sms" and i.payload.get("to") == phone]  # fmt: skip

    def last_outbox_id(self) -> int:
        return max((i.id for i in self.gateway.store.list_outbox(None)), default=0)

    def emails_queued_after(self, outbox_id: int) -> list[dict[str, Any]]:
        return [i.payload for i in self.gateway.store.list_outbox(None)
                if i.kind == "email" and i.id > outbox_id]  # fmt: skip

    def emails_drained(self) -> bool:
        return all(i.status != "pending" for i in self.gateway.store.list_outbox(None)
                   if i.kind == "email")  # fmt: skip

    def mail_sent(self) -> list[EmailMessage]:
        return list(self.mail.collector.messages)

    def filed_in(self, mailbox: str, message_id: str) -> bool:
        assert self.dovecot is not None
        return any(message_id.encode() in raw for raw in self.dovecot.messages(mailbox))


@pytest.fixture(scope="module", params=DOORS)
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[World]:  # fmt: skip
    """A running gateway with one door open: "imap" (a real Dovecot) or "smtp"."""
    door = str(request.param)
    folder = tmp_path_factory.mktemp(f"forged-{door}")
    with contextlib.ExitStack() as stack:
        dovecot = stack.enter_context(Dovecot(folder)) if door == "imap" else None
        running = World(folder, door, dovecot)
        stack.callback(running.close)
        yield running


def message_id_of(raw: bytes) -> str:
    head = raw.split(b"\r\n\r\n", 1)[0]
    found = re.search(rb"(?im)^message-id:\s*(<[^>\r\n]+>)", head)
    assert found is not None
    return found[1].decode()


def decided(world: World, phone: str, message_id: str) -> None:
    """Wait until the gateway has decided on the reply: an SMS queued, or the Failed list."""
    wait_for(lambda: world.sms_queued_for(phone) or world.failed_with(message_id),
             "the reply to be texted or kept in the Failed list", 15)  # fmt: skip


# -- the table, through both doors -----------------------------------------------------------------


TABLE = [
    pytest.param(c, id=c.label,
                 marks=[pytest.mark.xfail(reason=c.xfail, strict=True)] if c.xfail else [])
    for c in CASES
]  # fmt: skip


@pytest.mark.parametrize("case", TABLE)
def test_a_forged_reply_is_never_texted_and_a_genuine_one_is(world: World, case: Case) -> None:
    door = world.door
    email = world.resident()
    phone = email.resident_e164
    agent = world.new_agent()
    other = world.resident() if case.other else None
    raw = case.build(Run(email, world.keys, agent, other))
    message_id = message_id_of(raw)
    rcpt = email.reply_to if case.token else OWN_ADDRESS
    assert (email.reply_to.encode() in raw) is case.token  # token-less: In-Reply-To alone
    before_outbox = world.last_outbox_id()
    before_mail = len(world.mail_sent())
    lookups = world.keys.lookups.count(case.looked_up or "")

    world.deliver(raw, rcpt)

    if case.texted is not None:
        decided(world, phone, message_id)
        wait_for(lambda: world.sms_to(phone), f"the SMS to {phone} at the fake Twilio API", 15)
        if case.looked_up:  # the gateway verified the signature itself, against the stub
            assert world.keys.lookups.count(case.looked_up) > lookups
        assert world.sms_to(phone) == [case.texted]
        conversation = world.conversation(email)
        assert conversation.agent_address == agent  # the agent who answered: sticky
        assert conversation.status == ("closed" if case.closed else "open")
        assert world.failed_with(message_id) == []
        if door == "imap":
            wait_for(lambda: world.filed_in("Processed", message_id), "the reply in Processed")
        return

    decided(world, phone, message_id)
    assert world.sms_queued_for(phone) == [], "texted"
    [kept] = world.failed_with(message_id)
    if case.why is not None:  # (None: not texted, whatever the reason)
        assert kept.why == case.why, kept.reason
        assert kept.reason.startswith(case.reason), kept.reason
    assert kept.origin["kind"] == door
    if case.looked_up:  # the gateway did check the signature (and found it wanting)
        assert world.keys.lookups.count(case.looked_up) > lookups
    # nothing texted or queued for the resident...
    assert world.sms_queued_for(phone) == []
    # ...no sticky agent, no #close
    conversation = world.conversation(email)
    assert (conversation.agent_address, conversation.status) == (None, "open")
    # ...and nobody told (no backscatter to a forged From), but a genuine agent whose own
    # signed mail was re-sent: one notice, to that agent
    notices = world.emails_queued_after(before_outbox)
    if case.told:
        assert [(n["kind"], n["to"]) for n in notices] == [("not_texted", [agent])], notices
    else:
        assert notices == []
    told = {agent} if case.told else set()
    if door == "imap":
        wait_for(lambda: world.filed_in("Failed", message_id), "the reply in Dovecot's Failed")
    wait_for(world.emails_drained, "every queued email sent")
    for sent in world.mail_sent()[before_mail:]:
        to = [a.addr_spec.lower() for a in sent["To"].addresses]
        if to == [CITY_MAILBOX]:
            assert sent["X-SMS311-Notice"] is None
            continue
        assert set(to) <= told, sent["To"]
        claimed = {c.format(agent=agent) for c in case.claimed} - told
        assert not set(to) & claimed
    assert world.sms_to(phone) == []


# -- the MIME flat-parts mail, then a good reply ----------------------------------------------------


@pytest.mark.parametrize("world", ["smtp"], indirect=True)
def test_a_flat_parts_mail_does_not_hold_up_the_good_reply_behind_it(world: World) -> None:
    email = world.resident()
    agent = world.new_agent()
    bomb = flat_parts_mail(email.reply_to, sender=agent)
    assert 1_900_000 < len(bomb) < 2_500_000 and bomb.count(b"\r\n--b\r\n") >= 199_999
    good = stamped(reply(email, GOOD, from_values=[f"Jane Doe <{agent}>"]), PASS)

    start = time.monotonic()
    with smtplib.SMTP("127.0.0.1", world.ingress_port, timeout=60) as client:
        client.ehlo()
        client.mail("bounces@evil.example")
        assert client.rcpt(email.reply_to)[0] == 250
        code, text = client.data(bomb)  # refused, or taken and failed: quickly either way
        bomb_seconds = time.monotonic() - start
        assert code in (250, 552, 554), (code, text)
        sent_good = time.monotonic()
        assert client.sendmail(agent, [email.reply_to], good) == {}
    wait_for(lambda: world.sms_to(email.resident_e164), "the good reply's SMS", 10)
    texted_after = time.monotonic() - sent_good
    assert world.sms_to(email.resident_e164) == [GOOD]
    assert bomb_seconds < 5, f"the flat-parts mail took {bomb_seconds:.1f} s"
    assert texted_after < 10, f"the good reply was texted {texted_after:.1f} s after sending"
    if code == 250:  # taken: then not texted, and kept in the Failed list
        assert world.failed_with(message_id_of(bomb)) != []
