"""gateway.rules.reading: reading an agent's reply as a whole email: routing data (tokens,
In-Reply-To, References), headers, charsets, the close command, automatic mail (never
texted), and robustness against truncated, wrongly encoded and huge mail. No servers.

Table-driven: each case is a raw email as a mail client sends it and what the gateway must read
from it. The visible-text rules on their own (quotes, signatures, HTML) are in
tests/test_replies_text.py; the builders of raw mail in tests/reply_helpers.py. The corpora
of real mail are in tests/test_reply_corpora.py.
"""

from __future__ import annotations

import base64
import os
import quopri
import random
import time
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.rules import reading
from gateway.rules.reading import (
    MalformedEmail,
    ParsedReply,
    html_to_text,
    parse_reply,
    visible_text,
)
from gateway.rules.thread import new_token
from tests.reply_helpers import (
    REPLY_TO,
    SUBJECT,
    THREAD_ID,
    TOKEN,
    TOKEN2,
    alternative,
    parse,
    raw_email,
)


@dataclass(frozen=True)
class Case:
    label: str
    raw: bytes
    text: str
    automatic: str | None = None  # expected prefix of the reason ("" = any reason)
    tokens: tuple[str, ...] = (TOKEN,)
    close: bool = False
    extra: dict[str, object] = field(default_factory=dict)


GMAIL_PLAIN = """The pothole on Elm St. is scheduled for repair on Friday.

Thanks,
Marie

On Mon, Mar 4, 2024 at 10:15 AM 311 Text <reply+abcdefghijklmnopqrstuvwxyz234567@gateway.example.ca> wrote:

> From: 613-555-0123 (Ottawa)
> received March 4, 2024 at 10:14 EST
>
> There is a huge pothole on Elm St near the school
>
"""

GMAIL_WRAPPED = """Crews are on the way.

On Mon, Mar 4, 2024 at 10:15 AM 311 Text <
reply+abcdefghijklmnopqrstuvwxyz234567@gateway.example.ca> wrote:

> There is a huge pothole on Elm St near the school
"""

GMAIL_FR = """Merci, une équipe passera demain.

Le lun. 4 mars 2024 à 10 h 15, 311 Texto <reply+abcdefghijklmnopqrstuvwxyz234567@gateway.example.ca> a
écrit :

> Il y a un nid-de-poule sur la rue des Érables
"""

GMAIL_HTML = """<div dir="ltr">The pothole on Elm St. is scheduled for repair on Friday.<div><br></div>
<div>Thanks,</div><div>Marie</div></div><br><div class="gmail_quote"><div dir="ltr" class="gmail_attr">
On Mon, Mar 4, 2024 at 10:15 AM 311 Text &lt;<a href="mailto:reply+x@gateway.example.ca">reply+x@gateway.example.ca</a>&gt; wrote:<br></div>
<blockquote class="gmail_quote" style="margin:0px 0px 0px 0.8ex;border-left:1px solid rgb(204,204,204);padding-left:1ex">
There is a huge pothole on Elm St near the school</blockquote></div>"""

OUTLOOK_EN = """Thanks for letting us know, a crew has been dispatched.

________________________________
From: 311 Text <sms@gateway.example.ca>
Sent: Monday, March 4, 2024 10:15 AM
To: 311 Ottawa <311@ottawa.example>
Subject: 311 text from 613-555-0123 — Ottawa

There is a huge pothole on Elm St near the school
"""

OUTLOOK_EN_NO_LINE = """Thanks for letting us know, a crew has been dispatched.

From: 311 Text <sms@gateway.example.ca>
Sent: Monday, March 4, 2024 10:15 AM
To: 311 Ottawa <311@ottawa.example>
Subject: 311 text from 613-555-0123 — Ottawa

There is a huge pothole on Elm St near the school
"""

OUTLOOK_FR = """Merci de nous avoir avisés, une équipe est en route.

De : 311 Texto <sms@gateway.example.ca>
Envoyé : 4 mars 2024 10:15
À : 311 Gatineau <311@gatineau.example>
Objet : Texto 311 de 819-555-0123 — Gatineau

Il y a un nid-de-poule sur la rue des Érables
"""

OUTLOOK_FR_BOLD = """Merci, c'est noté.

*De :* 311 Texto [mailto:sms@gateway.example.ca]
*Envoyé :* lundi 4 mars 2024 10:15
*À :* 311 Gatineau
*Objet :* Texto 311 de 819-555-0123 — Gatineau

Il y a un nid-de-poule
"""

OUTLOOK_ORIGINAL_MESSAGE = """We will send someone today.

-----Original Message-----
From: 311 Text [mailto:sms@gateway.example.ca]
Sent: Monday, March 4, 2024 10:15 AM
"""

OUTLOOK_MESSAGE_D_ORIGINE = """Nous enverrons quelqu'un aujourd'hui.

-----Message d'origine-----
De : 311 Texto
"""

OUTLOOK_HTML_FR = """<html><head><style>p.MsoNormal{margin:0}</style></head><body lang="FR-CA">
<div class="WordSection1"><p class="MsoNormal">Bonjour,<o:p></o:p></p>
<p class="MsoNormal"><o:p>&nbsp;</o:p></p>
<p class="MsoNormal">Le bac sera remplac&eacute; jeudi.<o:p></o:p></p>
<p class="MsoNormal"><o:p>&nbsp;</o:p></p>
<div><div style="border:none;border-top:solid #E1E1E1 1.0pt;padding:3.0pt 0cm 0cm 0cm">
<p class="MsoNormal"><b>De&nbsp;:</b> 311 Texto &lt;sms@gateway.example.ca&gt;<br>
<b>Envoy&eacute;&nbsp;:</b> 4 mars 2024 10:15<br><b>&Agrave;&nbsp;:</b> 311 Gatineau<br>
<b>Objet&nbsp;:</b> Texto 311 de 819-555-0123</p></div></div>
<p class="MsoNormal">Mon bac est bris&eacute;</p></div></body></html>"""

OWA_HTML = """<div dir="ltr"><div>We will be there tomorrow morning.</div>
<div id="Signature"><div>Marie Tremblay | 311 Ottawa</div></div>
<hr style="display:inline-block;width:98%" tabindex="-1"><div id="divRplyFwdMsg" dir="ltr">
<b>From:</b> 311 Text &lt;sms@gateway.example.ca&gt;<br><b>Sent:</b> Monday, March 4, 2024<br>
</div><div>There is a huge pothole</div></div>"""

APPLE_MAIL = """Yes, the pickup was moved to Thursday this week.

> On Mar 4, 2024, at 10:15 AM, 311 Text <reply+abcdefghijklmnopqrstuvwxyz234567@gateway.example.ca> wrote:
>
> When is garbage pickup this week?
"""

APPLE_MAIL_HTML = """<html><body dir="auto">Yes, Thursday.<br><br><div dir="ltr">Sent from my iPhone</div>
<div dir="ltr"><br><blockquote type="cite">On Mar 4, 2024, at 10:15 AM, 311 Text &lt;sms@gateway.example.ca&gt; wrote:<br><br></blockquote></div>
<blockquote type="cite"><div dir="ltr">When is garbage pickup?</div></blockquote></body></html>"""

IPHONE = """It will be fixed this week.

Sent from my iPhone

> On Mar 4, 2024, at 10:15, 311 Text <reply+abcdefghijklmnopqrstuvwxyz234567@gateway.example.ca> wrote:
>
> There is a huge pothole on Elm St near the school
"""

IPHONE_FR = """Ce sera réparé cette semaine.

Envoyé de mon iPhone

> Le 4 mars 2024 à 10:15, 311 Texto <reply+abcdefghijklmnopqrstuvwxyz234567@gateway.example.ca> a écrit :
>
> Il y a un nid-de-poule
"""

THUNDERBIRD_FLOWED = (
    "Merci, c'est noté. Le camion passera \n"
    "demain matin.\n"
    "\n"
    "Le 2024-03-04 à 10:15, 311 Texto a écrit :\n"
    "> Le bac est bris\u00e9 et il faudrait le \n"
    "> remplacer\n"
)

THUNDERBIRD_EN = """Sure, see you then.

On 2024-03-04 10:15, 311 Text wrote:
> Can someone come by?
"""

OUTLOOK_MOBILE = """Done.

Get Outlook for iOS<https://aka.ms/o0ukef>
________________________________
From: 311 Text <sms@gateway.example.ca>
"""

ANDROID_SAMSUNG = """On it.

Sent from my Samsung Galaxy smartphone.

-------- Original message --------
From: 311 Text <sms@gateway.example.ca>
"""

SIGNATURE = "The crew will be there at 9.\n\n-- \nMarie Tremblay\n311 Ottawa\n"

OUTLOOK_SIGNATURE_BLOCK = """Hello,

A crew will repair the pothole on Elm St. on Tuesday. If it gets worse before then, you can
reach the roads depot at 613-555-0100 ext 2.

Thanks,
Jane Doe
Customer Service Agent | Agente du service à la clientèle
311 Contact Centre | Centre d'appels 311
City of Ottawa | Ville d'Ottawa
Tel: 613-580-2400 ext. 12345
ottawa.ca/311

From: 311 Text <sms@gateway.example.ca>
Sent: Monday, March 4, 2024 10:15 AM
To: 311 Ottawa <311@ottawa.example>
Subject: 311 text from 613-555-0123 — Ottawa

There is a huge pothole on Elm St near the school
"""

THUNDERBIRD_SIGNATURE_BLOCK = """Bonjour,

Le bac sera remplacé jeudi.

Cordialement,

Marie Tremblay
Préposée aux renseignements, Services 311
Ville de Gatineau
819-243-2345, poste 1234
marie.tremblay@gatineau.example

Le 2024-03-04 à 10:15, 311 Texto a écrit :
> Mon bac est brisé
"""

BOTTOM_POST = """On Mon, Mar 4, 2024 at 10:15 AM 311 Text <sms@gateway.example.ca> wrote:
> When is garbage pickup this week?

Thursday this week, because of the holiday.
"""

INLINE = """On Mon, Mar 4, 2024 at 10:15 AM 311 Text <sms@gateway.example.ca> wrote:
> Is the rink open?

Yes, until 9 pm.

> And the pool?

Closed for maintenance.
"""

ONLY_QUOTE = """On Mon, Mar 4, 2024 at 10:15 AM 311 Text <sms@gateway.example.ca> wrote:
> When is garbage pickup this week?
"""

CLOSE_EN = """The permit was approved.

#close

On Mon, Mar 4, 2024 at 10:15 AM 311 Text <sms@gateway.example.ca> wrote:
> #fermer
"""

CLOSE_FR_ONLY = (
    "#FERMER\n\nLe lun. 4 mars 2024, 311 Texto <sms@gateway.example.ca> a écrit :\n> allo\n"
)

NOT_A_CLOSE = "Please don't #close this yet, we are still checking.\n"

FORWARD_STAYS = """See below from Public Works.

---------- Forwarded message ---------
From: Public Works <pw@ottawa.example>
Date: Mon, Mar 4, 2024
Subject: Elm St

Repairs start Friday.
"""

CASES = [
    Case("gmail plain top-post", raw_email(GMAIL_PLAIN),
         "The pothole on Elm St. is scheduled for repair on Friday.\n\nThanks,\nMarie"),
    Case("gmail attribution wrapped over two lines", raw_email(GMAIL_WRAPPED),
         "Crews are on the way."),
    Case("gmail french 'Le … a écrit :' wrapped", raw_email(GMAIL_FR),
         "Merci, une équipe passera demain."),
    Case("gmail multipart/alternative (plain preferred)", alternative(GMAIL_PLAIN, GMAIL_HTML),
         "The pothole on Elm St. is scheduled for repair on Friday.\n\nThanks,\nMarie"),
    Case("gmail html-only", alternative(None, GMAIL_HTML),
         "The pothole on Elm St. is scheduled for repair on Friday.\n\nThanks,\nMarie"),
    Case("outlook en header block after a line", raw_email(OUTLOOK_EN),
         "Thanks for letting us know, a crew has been dispatched."),
    Case("outlook en header block without a line", raw_email(OUTLOOK_EN_NO_LINE),
         "Thanks for letting us know, a crew has been dispatched."),
    Case("outlook fr 'De :/Envoyé :/À :/Objet :'", raw_email(OUTLOOK_FR),
         "Merci de nous avoir avisés, une équipe est en route."),
    Case("outlook fr bold asterisks", raw_email(OUTLOOK_FR_BOLD), "Merci, c'est noté."),
    Case("outlook -----Original Message-----", raw_email(OUTLOOK_ORIGINAL_MESSAGE),
         "We will send someone today."),
    Case("outlook -----Message d'origine-----", raw_email(OUTLOOK_MESSAGE_D_ORIGINE),
         "Nous enverrons quelqu'un aujourd'hui."),
    Case("outlook html-only fr (border-top header block)",
         raw_email(OUTLOOK_HTML_FR, content_type="text/html; charset=utf-8"),
         "Bonjour,\n\nLe bac sera remplacé jeudi."),
    Case("outlook web html (divRplyFwdMsg, signature div)",
         raw_email(OWA_HTML, content_type="text/html; charset=utf-8"),
         "We will be there tomorrow morning."),
    Case("apple mail quoted attribution", raw_email(APPLE_MAIL),
         "Yes, the pickup was moved to Thursday this week."),
    Case("apple mail html blockquote type=cite",
         raw_email(APPLE_MAIL_HTML, content_type="text/html; charset=utf-8"), "Yes, Thursday."),
    Case("iphone 'Sent from my iPhone'", raw_email(IPHONE), "It will be fixed this week."),
    Case("iphone 'Envoyé de mon iPhone'", raw_email(IPHONE_FR), "Ce sera réparé cette semaine."),
    Case("thunderbird format=flowed, french attribution",
         raw_email(THUNDERBIRD_FLOWED, content_type='text/plain; charset=UTF-8; format=flowed'),
         "Merci, c'est noté. Le camion passera demain matin."),
    Case("thunderbird english", raw_email(THUNDERBIRD_EN), "Sure, see you then."),
    Case("outlook mobile 'Get Outlook for iOS'", raw_email(OUTLOOK_MOBILE), "Done."),
    Case("samsung signature and original message", raw_email(ANDROID_SAMSUNG), "On it."),
    Case("'-- ' signature", raw_email(SIGNATURE), "The crew will be there at 9."),
    Case("outlook plain text, signature block with no '-- '", raw_email(OUTLOOK_SIGNATURE_BLOCK),
         "Hello,\n\nA crew will repair the pothole on Elm St. on Tuesday. If it gets worse before "
         "then, you can\nreach the roads depot at 613-555-0100 ext 2."),
    Case("thunderbird fr, signature block with no '-- '", raw_email(THUNDERBIRD_SIGNATURE_BLOCK),
         "Bonjour,\n\nLe bac sera remplacé jeudi."),
    Case("bottom-post keeps the reply below the quote", raw_email(BOTTOM_POST),
         "Thursday this week, because of the holiday."),
    Case("inline replies keep the answers, drop the quotes", raw_email(INLINE),
         "Yes, until 9 pm.\n\nClosed for maintenance."),
    Case("forwarded message is kept", raw_email(FORWARD_STAYS), FORWARD_STAYS.strip()),
    Case("empty reply after cutting", raw_email(ONLY_QUOTE), ""),
    Case("no body at all", raw_email(""), ""),
    # -- charsets and transfer encodings
    Case("quoted-printable iso-8859-1",
         raw_email(quopri.encodestring("Le bac sera remplacé jeudi, à 9 h.".encode("latin-1")),
                   content_type="text/plain; charset=iso-8859-1", cte="quoted-printable"),
         "Le bac sera remplacé jeudi, à 9 h."),
    Case("quoted-printable soft line breaks utf-8",
         raw_email("Nous passerons demain matin pour r=C3=A9parer le lampadaire bris=\n=C3=A9 "
                   "pr=C3=A8s du parc.\n", cte="quoted-printable"),
         "Nous passerons demain matin pour réparer le lampadaire brisé près du parc."),
    Case("base64 utf-8",
         raw_email(base64.encodebytes("Déneigement prévu ce soir ❄".encode()), cte="base64"),
         "Déneigement prévu ce soir ❄"),
    Case("windows-1252 smart quotes",
         raw_email("We\u2019ll be there \u2013 promise.".encode("cp1252"),
                   content_type="text/plain; charset=windows-1252"),
         "We\u2019ll be there \u2013 promise."),
    Case("iso-8859-1 label on windows-1252 bytes",
         raw_email("It\u2019s done.".encode("cp1252"), content_type="text/plain; charset=iso-8859-1"),
         "It\u2019s done."),
    Case("utf-8 label on windows-1252 bytes",
         raw_email("Réparé.".encode("cp1252"), content_type="text/plain; charset=utf-8"),
         "Réparé."),
    Case("iso-8859-1 label on utf-8 bytes",
         raw_email("Réparé à 9 h.".encode(), content_type="text/plain; charset=iso-8859-1"),
         "Réparé à 9 h."),
    Case("unknown charset falls back",
         raw_email("Réparé.".encode(), content_type="text/plain; charset=x-no-such-charset"),
         "Réparé."),
    Case("non-text codec name is not used",
         raw_email(b"Fixed.", content_type="text/plain; charset=base64"), "Fixed."),
    Case("rfc 2047 subject and 8-bit headers",
         raw_email("Ok.", headers={"Subject": "=?iso-8859-1?q?R=E9p?= : test",
                                   "From": "Ren\u00e9e <renee@ottawa.example>"}),
         "Ok.", extra={"subject": "Rép : test", "sender": "renee@ottawa.example"}),
    # -- routing data
    Case("token in Cc only",
         raw_email("Ok.", headers={"To": "311 Ottawa <311@ottawa.example>",
                                   "Cc": f"Someone <a@b.example>, {REPLY_TO}"}), "Ok."),
    # (delivery headers are added by any server, and covered by no DKIM signature: not read)
    Case("token in Delivered-To only: not read",
         raw_email("Ok.", headers={"To": "311@ottawa.example", "Delivered-To": REPLY_TO}), "Ok.",
         tokens=()),
    Case("token in X-Original-To and Envelope-To only: not read",
         raw_email("Ok.", headers={"To": "311@ottawa.example",
                                   "X-Original-To": f"REPLY+{TOKEN.upper()}@GATEWAY.EXAMPLE.CA",
                                   "Envelope-To": f"reply+{TOKEN2}@gateway.example.ca"}),
         "Ok.", tokens=()),
    Case("token in To, upper case",
         raw_email("Ok.", headers={"To": f"REPLY+{TOKEN.upper()}@GATEWAY.EXAMPLE.CA"}),
         "Ok.", tokens=(TOKEN,)),
    Case("tokens from To and Cc, unique, in order",
         raw_email("Ok.", headers={"To": f"{REPLY_TO}, reply+{TOKEN2}@gateway.example.ca",
                                   "Cc": REPLY_TO}),
         "Ok.", tokens=(TOKEN, TOKEN2)),
    Case("no token: other host, short token, other prefix",
         raw_email("Ok.", headers={"To": f"reply+{TOKEN}@evil.example, reply+abc@gateway.example.ca,"
                                         f" other+{TOKEN}@gateway.example.ca"}),
         "Ok.", tokens=()),
    Case("in-reply-to and references normalised",
         raw_email("Ok.", headers={"In-Reply-To": "<a1@gw.example>\r\n (comment)",
                                   "References": "<first@gw.example>\r\n\t<a1@gw.example> "
                                                 "bare@gw.example",
                                   "Message-ID": "no-brackets@ottawa.example"}),
         "Ok.", extra={"in_reply_to": ("<a1@gw.example>",),
                       "references": ("<first@gw.example>", "<a1@gw.example>"),
                       "message_id": "<no-brackets@ottawa.example>"}),
    # -- the close command
    Case("#close alone on a line", raw_email(CLOSE_EN), "The permit was approved.", close=True),
    Case("#FERMER alone, nothing else", raw_email(CLOSE_FR_ONLY), "", close=True),
    Case("#close inside a sentence is text", raw_email(NOT_A_CLOSE), NOT_A_CLOSE.strip()),
    Case("#close only in the quoted part",
         raw_email("Noted.\n\nOn Mon, Mar 4, 2024 at 10:15 AM X <x@y.example> wrote:\n> #close\n"),
         "Noted."),
    Case("#close in html", alternative(None, "<div>Approved.</div><div>#Close</div>"),
         "Approved.", close=True),
    # -- automatic: never texted
    Case("loop: our own X-SMS311 header",
         raw_email("x", headers={"X-SMS311-Conversation": "42"}), "x", automatic="loop"),
    Case("loop: from the gateway's own address",
         raw_email("x", headers={"From": "311 Text <SMS@gateway.example.ca>"}), "x",
         automatic="loop"),
    Case("auto-submitted auto-replied (out of office)",
         raw_email("I am away until Monday.", headers={"Auto-Submitted": "auto-replied",
                                                       "Subject": "Out of Office"}),
         "I am away until Monday.", automatic="auto-reply"),
    Case("auto-submitted: no is a person",
         raw_email("Ok.", headers={"Auto-Submitted": "no"}), "Ok."),
    Case("outlook automatic reply subject",
         raw_email("Away.", headers={"Subject": "Automatic reply: 311 text from 613-555-0123"}),
         "Away.", automatic="auto-reply"),
    Case("outlook french automatic reply subject",
         raw_email("Absente.", headers={"Subject": "Réponse automatique : Texto 311"}),
         "Absente.", automatic="auto-reply"),
    Case("lotus 'AUTO:' subject",
         raw_email("Away.", headers={"Subject": "AUTO: Marie is out of the office"}), "Away.",
         automatic="auto-reply"),
    Case("x-autoreply", raw_email("Away.", headers={"X-Autoreply": "yes"}), "Away.",
         automatic="auto-reply"),
    Case("x-autorespond", raw_email("Away.", headers={"X-Autorespond": "Vacation"}), "Away.",
         automatic="auto-reply"),
    Case("x-auto-response-suppress alone is a person (Outlook sets it on normal mail)",
         raw_email("Ok.", headers={"X-Auto-Response-Suppress": "All"}), "Ok."),
    Case("precedence bulk", raw_email("News.", headers={"Precedence": "bulk"}), "News.",
         automatic="bulk"),
    Case("precedence junk", raw_email("x", headers={"Precedence": "junk"}), "x",
         automatic="bulk"),
    Case("mailing list", raw_email("x", headers={"List-Id": "<city.lists.example>"}), "x",
         automatic="mailing-list"),
    Case("null return path", raw_email("x", headers={"Return-Path": "<>"}), "x",
         automatic="bounce", extra={"return_path": ""}),
    Case("return path kept",
         raw_email("x", headers={"Return-Path": "<Bounce@Ottawa.example>"}), "x",
         extra={"return_path": "bounce@ottawa.example"}),
    Case("from mailer-daemon",
         raw_email("x", headers={"From": "Mail Delivery System <MAILER-DAEMON@mx.example>"}), "x",
         automatic="bounce"),
    Case("undeliverable subject",
         raw_email("x", headers={"Subject": "Undeliverable: 311 text"}), "x", automatic="bounce"),
    Case("french non-delivery subject",
         raw_email("x", headers={"Subject": "Non remis : Texto 311"}), "x", automatic="bounce"),
    Case("read receipt subject", raw_email("x", headers={"Subject": "Read: 311 text"}), "x",
         automatic="read-receipt"),
    Case("french read receipt subject", raw_email("x", headers={"Subject": "Lu : Texto 311"}),
         "x", automatic="read-receipt"),
    Case("x-failed-recipients", raw_email("x", headers={"X-Failed-Recipients": "a@b.example"}),
         "x", automatic="bounce"),
    Case("a subject merely mentioning delivery is a person",
         raw_email("Ok.", headers={"Subject": "Re: delivery of the new bins"}), "Ok."),
]  # fmt: skip


def _dsn() -> bytes:
    msg = EmailMessage()
    msg["From"] = "Mail Delivery Subsystem <mailer@mx.example>"
    msg["To"] = REPLY_TO
    msg["Subject"] = "Hello"
    msg.set_content("Your message could not be delivered.")
    msg.add_attachment(
        "Reporting-MTA: dns; mx.example\n\nFinal-Recipient: rfc822; x@y\nAction: failed\n",
        subtype="delivery-status",
    )
    msg.replace_header("Content-Type", 'multipart/report; report-type="delivery-status"; '
                       f'boundary="{msg.get_boundary()}"')  # fmt: skip
    return msg.as_bytes()


def _mdn() -> bytes:
    """A read receipt inside multipart/mixed (some clients do not use multipart/report)."""
    return (
        b"From: Bob <bob@ottawa.example>\r\nTo: " + REPLY_TO.encode() + b"\r\n"
        b"Subject: Displayed: Re: 311\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n'
        b"--b1\r\nContent-Type: text/plain\r\n\r\nYour message was displayed.\r\n"
        b"--b1\r\nContent-Type: message/disposition-notification\r\n\r\n"
        b"Reporting-UA: x; Outlook\r\nFinal-Recipient: rfc822;bob@ottawa.example\r\n"
        b"Disposition: manual-action/MDN-sent-manually; displayed\r\n\r\n--b1--\r\n"
    )


CASES += [
    Case("multipart/report DSN", _dsn(), "Your message could not be delivered.",
         automatic="bounce"),
    Case("message/disposition-notification part (read receipt)", _mdn(),
         "Your message was displayed.", automatic="read-receipt"),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[c.label for c in CASES])
def test_reply(case: Case) -> None:
    parsed = parse(case.raw)
    assert parsed.text == case.text
    if case.automatic is None:
        assert parsed.automatic is None
    else:
        assert parsed.automatic is not None
        assert parsed.automatic.startswith(case.automatic)
    assert parsed.tokens == case.tokens
    assert parsed.close_requested is case.close
    for name, value in case.extra.items():
        assert getattr(parsed, name) == value, name


def test_parsed_fields() -> None:
    parsed = parse(raw_email(GMAIL_PLAIN))
    assert parsed == ParsedReply(
        message_id="<reply-1@ottawa.example>",
        sender="marie.tremblay@ottawa.example",
        return_path=None,
        subject=SUBJECT,
        tokens=(TOKEN,),
        in_reply_to=(THREAD_ID,),
        references=(THREAD_ID,),
        automatic=None,
        text="The pothole on Elm St. is scheduled for repair on Friday.\n\nThanks,\nMarie",
        close_requested=False,
    )


def test_real_token_from_new_token() -> None:
    token = new_token()
    parsed = parse(raw_email("Ok.", headers={"To": f"reply+{token}@gateway.example.ca"}))
    assert parsed.tokens == (token,)


@pytest.mark.parametrize(
    ("added", "repeated"),
    [
        (f"To: {REPLY_TO}", ("To",)),
        ("cc: a@b.example\r\nCC: c@d.example", ("Cc",)),
        ("In-Reply-To: <x@gw.example>\r\nMessage-ID: <y@ottawa.example>",
         ("Message-ID", "In-Reply-To")),
        ("In-Reply-To: <x@gw.example>\r\nReferences: <z@gw.example>\r\n"
         "References: <w@gw.example>", ("In-Reply-To", "References")),
        ("Delivered-To: a@b.example\r\nDelivered-To: c@d.example", ()),  # one per hop
    ],
)
def test_headers_allowed_once_are_reported_when_repeated(
    added: str, repeated: tuple[str, ...]
) -> None:
    """A second To, Cc, Message-ID, In-Reply-To or References (a forger's, above the copy a
    DKIM signature covers) makes the routing ambiguous: `repeated` names it."""
    assert parse(raw_email("Ok.")).repeated == ()
    parsed = parse(added.encode() + b"\r\n" + raw_email("Ok."))
    assert parsed.repeated == repeated


def test_template_without_token_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="token"):
        parse_reply(raw_email("x"), reply_address="reply@gateway.example.ca")


def test_references_are_capped_keeping_first_and_last() -> None:
    refs = " ".join(f"<r{i}@gw.example>" for i in range(500))
    parsed = parse(raw_email("x", headers={"References": refs}))
    assert len(parsed.references) == reading.MAX_IDS
    assert parsed.references[0] == "<r0@gw.example>"
    assert parsed.references[-1] == "<r499@gw.example>"


@pytest.mark.parametrize(
    "raw",
    [b"", b"   \r\n", b"hello world, this is not an email\n", b"\x00\x01\x02\xff\xfe", b"\n\nbody"],
)
def test_not_an_email(raw: bytes) -> None:
    with pytest.raises(MalformedEmail):
        parse(raw)


# -- robustness: truncated, wrongly encoded and huge mail ---------------------------------------

SAMPLES = [c.raw for c in CASES]


def _parse_or_malformed(raw: bytes) -> ParsedReply | None:
    """parse_reply raises nothing but MalformedEmail, and never its defensive "unreadable"."""
    try:
        return parse(raw)
    except MalformedEmail as exc:
        assert not str(exc).startswith("unreadable"), exc
        return None


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(SAMPLES), st.floats(min_value=0.0, max_value=1.0))
def test_truncated_anywhere(raw: bytes, where: float) -> None:
    _parse_or_malformed(raw[: int(len(raw) * where)])


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(SAMPLES), st.binary(max_size=64), st.floats(min_value=0, max_value=1))
def test_garbage_spliced_in(raw: bytes, garbage: bytes, where: float) -> None:
    cut = int(len(raw) * where)
    _parse_or_malformed(raw[:cut] + garbage + raw[cut:])


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes(raw: bytes) -> None:
    _parse_or_malformed(b"From: a@b.example\r\n" + raw)
    _parse_or_malformed(raw)


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=300))
def test_visible_text_any_text(text: str) -> None:
    out = visible_text(text)
    assert out == out.strip() or out == ""
    assert "\n\n\n" not in out
    html_to_text(text)


@pytest.mark.parametrize(
    "charset,cte",
    [("utf-8", "base64"), ("utf-16", "8bit"), ("iso-2022-jp", "7bit"), ("utf-8", "x-uuencode"),
     ("", "quoted-printable"), ("utf-7", "8bit"), ('"utf-8', "base64")],
)  # fmt: skip
def test_wrongly_encoded(charset: str, cte: str) -> None:
    body = "Réparé ✓ ".encode("cp1252", "replace") + os.urandom(64) + b"=\n=ZZ=C3"
    parsed = _parse_or_malformed(
        raw_email(body, content_type=f"text/plain; charset={charset}", cte=cte)
    )
    assert parsed is not None
    parsed.text.encode("utf-8")  # valid Unicode, no lone surrogates


def test_undecodable_header_bytes_become_valid_text() -> None:
    raw = raw_email("Ok.").replace(SUBJECT.encode(), b"R\xe9ponse \xff\xfe")
    parsed = parse(raw)
    parsed.subject.encode("utf-8")
    assert parsed.subject.startswith("Réponse")


def test_truncated_base64_and_multibyte() -> None:
    data = base64.b64encode(("é" * 50).encode())[:-5]
    assert parse(raw_email(data, cte="base64")).text.startswith("éééé")


def _huge(kind: str) -> bytes:
    rng = random.Random(7)
    if kind == "attachment":
        msg = EmailMessage()
        msg["From"] = "a@ottawa.example"
        msg["To"] = REPLY_TO
        msg["Subject"] = "Re: photo"
        msg.set_content("Here is the photo of the repair.")
        msg.add_attachment(rng.randbytes(7_500_000), maintype="image", subtype="jpeg",
                           filename="repair.jpg")  # fmt: skip
        return msg.as_bytes()
    if kind == "text":
        return raw_email(("word " * 20 + "\n") * 100_000)
    if kind == "one line":
        return raw_email(b"y" * 10_000_000)
    if kind == "html":
        return raw_email(b"<div>" * 2_000_000, content_type="text/html")
    if kind == "quote lines":
        return raw_email(b"Hi\n" + b">\n" * 5_000_000)
    if kind == "headers":
        return b"From: a@b.example\r\n" + b"X-A: b\r\n" * 1_300_000 + b"\r\nhi"
    if kind == "address list":
        return b"From: a@b.example\r\nTo: " + b"reply+abc@x.example, " * 500_000 + b"\r\n\r\nhi"
    if kind == "nesting":
        part = b"--b\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
        return b"From: a@b.example\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n" + (
            part * 200_000
        )
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind",
    ["attachment", "text", "one line", "html", "quote lines", "headers", "address list", "nesting"],
)
def test_huge_message(kind: str) -> None:
    raw = _huge(kind)
    assert len(raw) >= 9_000_000
    started = time.perf_counter()
    parsed = _parse_or_malformed(raw)
    assert time.perf_counter() - started < 3.0
    if kind == "attachment":
        assert parsed is not None
        assert parsed.text == "Here is the photo of the repair."
        assert parsed.tokens == (TOKEN,)
    if parsed is not None:
        assert len(parsed.text) <= reading.MAX_TEXT_BYTES


@pytest.mark.parametrize("newline", [b"\r\n", b"\n", b"\r"])
def test_flat_mime_parts_are_counted_before_parsing(
    newline: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seen: a 2 MB mail of 200,000 flat parts (one multipart/, so not counted) cost 23 s of
    CPU, holding up every mail behind it. Parts of any kind are now counted before the
    parser sees them: it is handed a bounded number, and the answer is still read."""
    parsed_parts: list[int] = []
    parsebytes = BytesParser.parsebytes

    def counting(self: BytesParser, text: bytes, headersonly: bool = False) -> Any:
        msg = parsebytes(self, text, headersonly)
        parsed_parts.append(sum(1 for _ in msg.walk()))
        return msg

    monkeypatch.setattr(BytesParser, "parsebytes", counting)
    lines = [b"From: Jane <jane@ottawa.example>", b"To: " + REPLY_TO.encode(),
             b"Subject: Re: pothole", b"Content-Type: multipart/mixed; boundary=b", b"",
             b"--b", b"Content-Type: text/plain", b"", b"Fixed tomorrow.", b""]
    part = b"--b" + newline * 2 + b"x" + newline
    raw = newline.join(lines) + part * (2_000_000 // len(part)) + b"--b--"
    assert len(raw) >= 2_000_000  # 200,000 to 285,714 parts
    parsed = parse(raw)
    assert parsed.text == "Fixed tomorrow."
    assert parsed.tokens == (TOKEN,)
    (count,) = parsed_parts
    assert count <= reading.MAX_DASH_LINES + 1


@pytest.mark.parametrize(
    ("label", "body", "because"),
    [
        ("answer under the dashes", "-- \nJane Doe\n\nThe crew comes Tuesday.", "below_signature"),
        ("answer under a phone signature", "Sent from my iPhone\n\nOn its way.", "below_signature"),
        ("nothing written", "", "nothing"),
        ("only a signature block", "Jane Doe\n311 Agent, City of Ottawa\nTel: 613-580-2400",
         "nothing"),
        ("an answer", "The crew comes Tuesday.", None),
    ],
)
def test_empty_because_says_where_the_writing_went(
    label: str, body: str, because: str | None
) -> None:
    raw = (
        "From: Jane <jane@ottawa.example>\r\nTo: reply+abc@gw.example\r\nSubject: Re: x\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n\r\n"
        + body.replace("\n", "\r\n")
        + "\r\n\r\nOn Sun, Nov 22, 2026 at 10:04 AM 311 <sms@gw.example> wrote:\r\n> pothole\r\n"
    ).encode()
    reply = parse_reply(raw, reply_address="reply+{token}@gw.example")
    assert reply.empty_because == because, label
    assert (reply.text == "") == (because is not None), label
