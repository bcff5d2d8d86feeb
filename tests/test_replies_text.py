"""gateway.rules.reading: the text of an agent's reply that is texted to the resident:
visible_text's plain-text rules (attributions, quotes, header blocks, phone signatures),
signature blocks with no "-- " line (cut) and endings that only look like one (kept), and
html_to_text. No servers. The whole-email cases are in tests/test_replies.py; the builders
of raw mail in tests/reply_helpers.py.
"""

from __future__ import annotations

import pytest

from gateway.rules.reading import html_to_text, visible_text
from tests.reply_helpers import alternative, parse

# -- visible_text on its own (plain text rules) -----------------------------------------------

TEXT_CASES = [
    ("attribution sharing the reply's line",
     "reply On Wed, Apr 4, 2012 at 3:59 PM, bob@example.com wrote:\n> Hi", "reply"),
    ("dashes around the attribution", "Hi\n\n------On 12/29/1987 17:32 PM, Julius wrote-----\n\nx",
     "Hi"),
    ("android '---- X wrote ----'", "Yes\n\n---- Marie wrote ----\n\n> quoted\n> text", "Yes"),
    ("date and address above a quote", "Ok\n2011/4/7 Nathan <support@example.com>\n\n> Cool",
     "Ok"),
    ("'On' starting a sentence is not an attribution",
     "On Monday the crew will come.\nOn Tuesday, the road reopens.", None),
    ("'Date:' alone is not a header block",
     "Invitation:\n\nDate: Wednesday 3, October\nTime: 7:00am\nAddress: 130 Fox St", None),
    ("'>' in the text is not a quote", "Snow > 30 cm: no pickup.\n>>> see site <<<", None),
    ("'Sent from my desk, …' is text",
     "Here it is\n\nSent from my desk, is much easier then my mobile phone.", None),
    ("'-- ' inside a line is text", "A fix -- not a signature.\n\nbye", None),
    ("'-Name' signature at the end", "Done.\n\n-Marie", "Done."),
    ("list item '- x' at the end is text", "Bring:\n- ID\n- Bill", None),
    ("underscore separator and list footer",
     "Hi\n\n_______________________________________________\nlist footer", "Hi"),
    ("blank lines tidied", "\n\n  Hello  \n\n\n\nworld\t \n\n", "Hello\n\nworld"),
    ("CRLF and CR line ends", "Hello\r\nworld\rbye", "Hello\nworld\nbye"),
    ("zero-width and nbsp", "Hel\u200blo\u00a0world\ufeff", "Hello world"),
    ("envoyé depuis mon", "Oui.\n\nEnvoyé depuis mon appareil Samsung", "Oui."),
    ("télécharger outlook pour", "Oui.\n\nTélécharger Outlook pour Android", "Oui."),
    ("blackberry", "Yes\n\nSent from my BlackBerry 10 smartphone.", "Yes"),
    ("german from block", "Ja\n\nVon: a@b.example\nGesendet: Montag\nAn: c\nBetreff: x", "Ja"),
    ("french opening hours are not a header block",
     "Heures :\nDe : 8 h 30\nÀ : 16 h 30\n\nMerci", None),
    ("a memo's To:/Subject: lines are text", "Memo\nTo: all residents\nSubject: snow\n\nOk", None),
    ("outlook internal sender without an address",
     "Hi\n\nFrom: Tremblay, Marie\nSent: Monday\nTo: 311\nSubject: x\n\nold", "Hi"),
    ("iphone: a short quote with the attribution inside it",
     "Yes.\n\n> On Mar 4, 2024, at 10:15, 311 Text <sms@gw.example> wrote:\n> Open?", "Yes."),
    ("a sentence starting 'Sent with' is text", "Ok\n\nSent with the crew today", None),
    ("'Envoyé par la poste' is text", "Ok\n\nEnvoyé par la poste", None),
    ("envoyé avec gmail", "Oui\n\nEnvoyé avec Gmail", "Oui"),
    ("an inline answer between quotes is kept", "> Hours?\n> Open when?\n24/7\n> Ok", "24/7"),
    ("3-line attribution without quotes",
     "Test reply\n\nOn Nov 30, 2011, at 12:47 PM, Somebody <\nx@y.example>\nwrote:\n\nText",
     "Test reply"),
]  # fmt: skip


@pytest.mark.parametrize("label,plain,expected", TEXT_CASES, ids=[c[0] for c in TEXT_CASES])
def test_visible_text(label: str, plain: str, expected: str | None) -> None:
    want = plain.strip() if expected is None else expected
    assert visible_text(plain) == want


# -- signature blocks with no "-- " line (gateway.rules.reading.signatures) ----------------------------

ANSWER = "The crew will fix the pothole on Elm St. on Tuesday."
REPONSE = "L'équipe réparera le nid-de-poule mardi."

# A signature block with no "-- " line under the answer: cut (see gateway.rules.reading.signatures).
SIGNATURE_BLOCKS = [
    ("en: closing, name, title, phone with extension",
     f"{ANSWER}\n\nThanks,\nJane Doe\n311 Agent\nTel: 613-580-2400 ext. 12345", ANSWER),
    ("fr: closing, name, title, city, 'poste'",
     f"{REPONSE}\n\nMerci,\nMarie Tremblay\nAgente, Centre d'appels 311\nVille de Gatineau\n"
     "T 819 243 2345 poste 223", REPONSE),
    ("fr: 'Cordialement,' a blank line, department, 'Cell. :'",
     f"{REPONSE}\n\nCordialement,\n\nJean-François Côté\nService des travaux publics\n"
     "Cell. : (819) 555-0199", REPONSE),
    ("outlook pipe line", f"{ANSWER}\n\nJane Doe | Agent | 311", ANSWER),
    ("pipe line with a phone 'x' extension",
     f"{ANSWER}\n\nJane Doe | Customer Service Agent | City of Ottawa | 613-580-2400 x 12345",
     ANSWER),
    ("name, web address and email", f"{ANSWER}\n\nJane Doe\nottawa.ca/311\njane.doe@ottawa.ca",
     ANSWER),
    ("name and a labelled phone only", f"{ANSWER}\n\nJane Doe\nTel: 613-580-2400", ANSWER),
    ("name and two bare phone lines", f"{ANSWER}\n\nJane Doe\n613-580-2400\n613-555-0199",
     ANSWER),
    ("credentials after the name",
     f"{ANSWER}\n\nRegards,\nPat Singh, P.Eng.\nProject Engineer\nInfrastructure Services",
     ANSWER),
    ("pronouns and 'poste' after a comma",
     f"{REPONSE}\n\nMarie Tremblay (elle/la)\nPréposée aux renseignements\n311 Gatineau\n"
     "819-243-2345, poste 1234", REPONSE),
    ("honorific, direction, city, web",
     f"{REPONSE}\n\nBien à vous,\nMme Marie-Ève Gagnon\nConseillère en environnement\n"
     "Direction de l'environnement\nVille de Laval\n450 978-8000, poste 1234\nlaval.ca", REPONSE),
    ("initial, 'Direct | Cell' line, email",
     f"{ANSWER}\n\nJ. Smith\nSupervisor, Roads\nDirect: 613.555.0142 | Cell: 613.555.0199\n"
     "john.smith@ottawa.ca", ANSWER),
    ("Outlook image placeholder in the block",
     f"{ANSWER}\n\nJane Doe\nCity of Ottawa\n[cid:image001.png@01DA1234.ABCD5670]", ANSWER),
    ("'Best regards,' officer, T and F lines",
     f"{ANSWER}\n\nBest regards,\n\nBob Jones\nBy-law Officer\nBy-law and Regulatory Services\n"
     "T 613-580-2424 ext 41234\nF 613-580-2400", ANSWER),
    ("toll-free and TTY lines, 'Courriel :'",
     f"{REPONSE}\n\nLuc Gagnon\nRépartiteur, Travaux publics\nSans frais : 1-866-555-0100\n"
     "ATS : 1-866-555-0101\nCourriel : luc.gagnon@gatineau.ca", REPONSE),
    ("'Thanks, Jane' on one line, then the title",
     f"{ANSWER}\n\nThanks, Jane\n311 Contact Centre", ANSWER),
    ("'Name, Title' on one line", f"{ANSWER}\n\nJane Doe, 311 Agent", ANSWER),
    ("closing right under the answer, no blank line",
     f"{ANSWER}\nThanks,\nJane Doe\n311 Agent\nTel: 613-580-2400", ANSWER),
    ("no blank line but unmistakable: name, title, phone",
     f"{ANSWER}\nJane Doe\nCustomer Service Agent\n613-580-2400 ext. 12345", ANSWER),
    ("international number", f"{ANSWER}\n\nJane Doe\nLiaison Officer\n+33 1 23 45 67 89",
     ANSWER),
    ("street address in the block",
     f"{ANSWER}\n\nJane Doe\nCity of Ottawa\n110 Laurier Ave. W.\nOttawa ON K1P 1J1\n"
     "613-580-2400", ANSWER),
    ("City of Ottawa bilingual block and disclaimers",
     f"{ANSWER}\n\nJane Doe\nCustomer Service Agent | Agente du service à la clientèle\n"
     "311 Contact Centre | Centre d'appels 311\nCity of Ottawa | Ville d'Ottawa\n"
     "110 Laurier Ave. W. | 110, av. Laurier O.\nOttawa ON K1P 1J1\n613-580-2400 ext. 12345\n"
     "ottawa.ca/311\n\nı Please consider the environment before printing this email.\n\n"
     "This e-mail originates from the City of Ottawa e-mail system. Any distribution, use or\n"
     "copying of this e-mail or the information it contains by other than the intended\n"
     "recipient(s) is unauthorized. If you are not the intended recipient, please notify me\n"
     "at the telephone number shown above or by return e-mail and delete this communication\n"
     "and any copy immediately. Thank you.\n\n"
     "Le présent courriel a été expédié par le système de courriels de la Ville d'Ottawa.\n"
     "Toute distribution, utilisation ou reproduction du courriel ou des renseignements qui\n"
     "s'y trouvent par une personne autre que son destinataire prévu est interdite.", ANSWER),
    ("a disclaimer hanging right under the block",
     f"{ANSWER}\n\nJane Doe\n311 Agent\nCONFIDENTIALITY NOTICE: This e-mail is intended only\n"
     "for the named recipient and may contain confidential information.", ANSWER),
    ("a disclaimer with no block above it",
     f"{ANSWER}\n\nAVIS DE CONFIDENTIALITÉ : Ce courriel est confidentiel et destiné\n"
     "uniquement au destinataire prévu.", ANSWER),
    ("an environment line with no block above it",
     f"{ANSWER}\n\nPlease consider the environment before printing this e-mail.", ANSWER),
    ("a block above 'Sent from my iPhone'",
     f"{ANSWER}\n\nJane Doe\n311 Agent\n\nSent from my iPhone", ANSWER),
    ("the whole text, unmistakable: nothing is left",
     "Jane Doe\n311 Agent\nTel: 613-580-2400", ""),
]  # fmt: skip

# Endings that look like a signature and are the answer (or too weak to be sure): kept.
LOOK_ALIKE_ENDINGS = [
    ("a phone number the resident should call, in a sentence",
     "You can reach the depot at 613-555-0100 ext 2."),
    ("the same as a last paragraph",
     f"{ANSWER}\n\nYou can reach the depot at 613-555-0100 ext 2."),
    ("a labelled number with no person's name", f"{ANSWER}\n\nDepot: 613-555-0100 ext 2"),
    ("'Tel:' with no person's name", f"{ANSWER}\n\nTel: 613-555-0100 ext 2"),
    ("311 in a sentence", "Call us at 311 if it gets worse."),
    ("a last paragraph and 'Thanks'", "The crew will be there Tuesday.\n\nThanks"),
    ("a sign-off with only a first name", f"{ANSWER}\n\nThanks,\nMarie"),
    ("a french sign-off with only a first name", f"{REPONSE}\n\nMerci!\nJulie"),
    ("a closing and a full name, nothing else", f"{ANSWER}\n\nRegards,\nJane Doe"),
    ("a team sign-off", f"{REPONSE}\n\nMerci,\nL'équipe 311"),
    ("a name and one bare number (too weak)", f"{ANSWER}\n\nJane Doe\n613-580-2400"),
    ("an address the resident needs", f"{ANSWER}\n\n110 Laurier Ave W\nOttawa ON K1P 1J1"),
    ("an address after 'is at:'", "The ecocentre is at:\n110 Laurier St\nGatineau QC J8X 3Y1"),
    ("a person to call, introduced by a colon",
     "Call the foreman directly:\n\nJohn Smith\nDepot Foreman\nTel: 613-555-0100 ext 2"),
    ("a person to call, introduced by 'communiquez avec'",
     "Pour toute question, communiquez avec\n\nMarc Tremblay\nInspecteur\n819-555-0100"),
    ("a person to call, introduced by 'the following'",
     "Your request was assigned to the following inspector.\n\nJane Doe\nBy-law Officer\n"
     "613-580-2424 ext. 1234"),
    ("an agency to call, no person's name",
     "That is a provincial matter.\n\nServiceOntario\n1-866-532-3161\nontario.ca"),
    ("a utility and its number", "That one is Hydro Ottawa's.\n\nHydro Ottawa\n613-738-6400"),
    ("a list of people with their titles",
     "Here are the councillors.\n\nJane Doe\nCouncillor, Ward 1\n\nJohn Smith\n"
     "Councillor, Ward 2"),
    ("a list", "Bring:\n- ID\n- Bill"),
    ("a list of numbers", "Useful numbers:\n\nBy-law: 613-580-2424\nParking: 613-580-2400"),
    ("a place with its address and number",
     "Drop it off at:\n\nCity Hall\n110 Laurier Ave W\nOttawa ON K1P 1J1\n613-580-2400"),
    ("a web address the resident needs", "For more information:\nottawa.ca/garbage"),
    ("opening hours", "The depot is open:\nMonday: 8-4\nTuesday: 8-4"),
    ("a name and a title right under the answer, no blank line",
     f"{ANSWER}\nJane Doe\n311 Agent"),
    ("a name and a title as the whole text", "Jane Doe\n311 Agent"),
    ("a person in a sentence", "Jane Doe will call you tomorrow at 613-555-0100."),
    ("'Thank you for contacting 311.'", f"{ANSWER}\n\nThank you for contacting 311."),
    ("a signature above a P.S. (the block must end the text)",
     f"{ANSWER}\n\nThanks,\nJane Doe\n311 Agent\n\nP.S. Bring your bill."),
    ("'in error' and 'delete' in an answer",
     "If you have received a second bill in error, please delete the email and call 311."),
    ("'confidential' in an answer",
     f"{ANSWER}\n\nThis information is confidential and will not be shared with your "
     "neighbour."),
]  # fmt: skip


@pytest.mark.parametrize(
    "label,plain,expected", SIGNATURE_BLOCKS, ids=[c[0] for c in SIGNATURE_BLOCKS]
)
def test_signature_block_is_cut(label: str, plain: str, expected: str) -> None:
    assert visible_text(plain) == expected


@pytest.mark.parametrize("label,plain", LOOK_ALIKE_ENDINGS, ids=[c[0] for c in LOOK_ALIKE_ENDINGS])
def test_look_alike_ending_is_kept(label: str, plain: str) -> None:
    assert visible_text(plain) == plain.strip()


def test_signature_block_in_html_only_mail() -> None:
    html = (
        "<div>A crew will repair it on Tuesday.</div><div><br></div>"
        "<div>Jane Doe</div><div>Roads Supervisor | City of Ottawa</div>"
        "<div>T 613-580-2400 ext. 12345</div>"
    )
    assert parse(alternative(None, html)).text == "A crew will repair it on Tuesday."


# -- html_to_text ------------------------------------------------------------------------------

HTML_CASES = [
    ("paragraphs, br and entities", "<p>Caf&eacute; &amp; th&eacute;</p><p>A<br>B</p>",
     "Café & thé\n\nA\nB"),
    ("head, style, script dropped",
     "<html><head><title>T</title><style>p{}</style></head><body><script>x()</script>Hi</body>",
     "Hi"),
    ("blockquote becomes quoted lines", "Yes<blockquote>Q1<br>Q2</blockquote>", "Yes\n> Q1\n> Q2"),
    ("nested blockquotes", "<blockquote>a<blockquote>b</blockquote></blockquote>", "> a\n> > b"),
    ("lists", "<ul><li>one</li><li>two</li></ul><ol><li>a</li><li>b</li></ol>",
     "- one\n- two\n1. a\n2. b"),
    ("link address kept", '<a href="https://ottawa.ca/311">our page</a>',
     "our page (https://ottawa.ca/311)"),
    ("link text that is the address", '<a href="https://ottawa.ca/311">ottawa.ca/311</a>',
     "ottawa.ca/311"),
    ("mailto link", '<a href="mailto:a@b.example">write us</a>', "write us"),
    ("outlook safelink unwrapped",
     '<a href="https://nam12.safelinks.protection.outlook.com/?url=https%3A%2F%2Fottawa.ca%2F&amp;data=x">'
     "site</a>", "site (https://ottawa.ca/)"),
    ("hidden content dropped", '<div style="display: none">preview</div><div>Body</div>', "Body"),
    ("outlook divRplyFwdMsg: the rest is quoted", 'Ok<div id="divRplyFwdMsg">From: x</div>tail',
     "Ok\n> From: x\n> tail"),
    ("gmail signature gets a delimiter", 'Ok<div class="gmail_signature">Marie</div>',
     "Ok\n--\nMarie"),
    ("pre keeps its lines", "<pre>a\n  b</pre>", "a\n  b"),
    ("table cells", "<table><tr><td>a</td><td>b</td></tr><tr><td>c</td></tr></table>", "a b\nc"),
    ("broken html", "<div><p>Unclosed <b>bold<div>next", "Unclosed bold\nnext"),
]  # fmt: skip


@pytest.mark.parametrize("label,html,expected", HTML_CASES, ids=[c[0] for c in HTML_CASES])
def test_html_to_text(label: str, html: str, expected: str) -> None:
    assert html_to_text(html) == expected
