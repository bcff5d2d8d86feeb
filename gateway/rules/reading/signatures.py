"""Signatures at the end of a reply (no I/O): marked ones, blocks with no marker, disclaimers.

`cut_signature(lines)` keeps the lines of a reply (quoted history already cut) above its
signature, in two steps:

- `cut_marked_signature(lines)`: everything from the first signature marker down — a "-- "
  line (RFC 3676, or "--" / "—" without the space), a device or app signature alone on a
  short line ("Sent from my iPhone", "Envoyé de mon iPhone", "Get Outlook for iOS",
  "Von meinem … gesendet", …) — or a last line "-Name";
- `signature_start(lines)`: where a trailing signature block with no marker, or a mail
  disclaimer, begins: the index of the first line to drop, or None to keep every line.

What `signature_start` cuts:

- a signature block: the last lines of the text (at most `MAX_BLOCK_LINES` non-blank ones,
  blank lines between them allowed), every one of them a signature line — a person's name,
  a job title or an organisation ("Agent, 311 Contact Centre", "Ville de Gatineau",
  "Service des travaux publics"), a phone, fax or cell number with or without a label or an
  extension ("Tel: 613-580-2400 ext. 12345", "T 613 555 0100 poste 223", "Cell. : (819)
  555-0199"), an email address, a web address, a street address or postal code, pronouns,
  an image placeholder — or several of these on one line between "|", "•" or "·"
  ("Jane Doe | Agent | 311"). The block must start with a person's name (maybe after a
  closing such as "Thanks," "Regards," "Merci," "Cordialement,") and say who the person is:
  a title or organisation, or — when the name has two words or more — a labelled contact
  line ("Tel:", "Courriel :", an extension, an email address) or two contact lines.
  It must also stand apart from the answer: after a blank line, or starting with a closing.
  A block directly under the answer, or one that is the whole text, is cut only when it is
  unmistakable: a name, a title or organisation, and a contact line (a whole text cut that
  way leaves nothing: the reply counts as empty, like one with only quoted history).
  The closing on top of the block is cut with it (an SMS ending in "Thanks," reads as cut
  off); a closing with only a first name under it ("Thanks,\\nMarie") is no block: it stays.
- mail disclaimers at the very end: paragraphs that open like one ("This e-mail originates
  from…", "Confidentiality notice", "Le présent courriel…", "Avis de confidentialité") and
  say the message is confidential or meant for its intended recipient ("destinataire
  prévu"), and "Please consider the environment before printing" lines; cut with the block
  above them, or on their own.

What is kept (cutting a real answer is worse than texting a signature):

- a phone number, address or web address inside a sentence ("You can reach the depot at
  613-555-0100 ext 2.", "Drop it off at 110 Laurier Ave W."), and contact lines with no
  person's name on top ("Depot: 613-555-0100", "ServiceOntario / 1-866-532-3161");
- a block introduced by the line above it ("Call the foreman:", "…communiquez avec", "the
  following inspector", "voici"): that is whom the resident must call;
- a signature that does not end the text: a "P.S." under it keeps it;
- a name with one bare number and nothing else ("Jane Doe / 613-580-2400"): too weak;
- a list of several people (two names in the trailing lines), lists ("- ID"), a sign-off
  with only a first name, an ordinary last paragraph ("Call us at 311 if it gets worse.",
  "The crew will be there Tuesday.\\n\\nThanks").

Limits: without knowing who the agent is, a referral written as a bare block after a blank
line ("John Smith / Depot Foreman / Tel: 613-555-0100") is taken for a signature; write such
a referral in a sentence, or after a line ending with ":". Phone numbers are found with the
maintained `phonenumbers` library (numbers without a country code are read as North
American); the line shapes around them are this module's rules. No maintained library does
the rest: mail-parser-reply cuts everything from "Thanks,"/"Best regards" down (a P.S. and
any answer below the closing with it), talon's signature extraction is unmaintained (2017)
and needs numpy, scipy and scikit-learn.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import phonenumbers

MAX_BLOCK_LINES = 10  # non-blank lines of a signature block, its closing aside
MAX_LINE = 100  # characters of one signature line
MAX_PIECES = 6  # "|"-separated pieces of one signature line
MAX_DISCLAIMERS = 3  # trailing disclaimer paragraphs looked at
MAX_DISCLAIMER_CHARS = 5_000  # of one disclaimer paragraph
MAX_DISCLAIMER_LINES = 60  # of one disclaimer paragraph
PHONE_REGION = "CA"  # numbers without a country code are read as North American (NANP)


def _words_of(text: str) -> frozenset[str]:
    return frozenset(text.split())


_UPPER = "A-ZÀ-ÖØ-Þ"
_LETTER = "A-Za-zÀ-ÖØ-öø-ÿ"

# Words that make a line a sentence, never a name, title or address.
_SENTENCE_WORDS = _words_of(
    """
    i i'm i'll i've i'd you you're you'll your yours we we're we'll our us me my he she they
    them it it's its is are was were be been being will would can could should shall may
    might must has have had do does did please if when because not no yes this
    that these those there here today tomorrow tonight soon now then just also still who what
    which where why how
    je j'ai tu vous votre vos nous notre nos il elle ils elles est sont sera seront était a
    ont peut peuvent pouvez veuillez si quand parce pas ne ce cet cette ces c'est aujourd'hui
    demain ici qui que quoi où
    """
)
# Words that are no part of a person's name.
_NOT_NAME_WORDS = _words_of(
    """
    thanks thank merci regards cordialement cheers best sincerely salutations respectfully
    hi hello hey dear bonjour bonsoir allo salut cher chère ok okay oui non done noted sure
    fixed great good perfect parfait
    monday tuesday wednesday thursday friday saturday sunday lundi mardi mercredi jeudi
    vendredi samedi dimanche january february march july september october november december
    janvier février mars avril mai juin juillet août septembre octobre novembre décembre
    street st avenue ave road rd boulevard blvd drive dr crescent cres court ct lane way
    parkway highway hwy rue chemin boul montée rang promenade route
    hall park parc library bibliothèque arena aréna pool piscine rink patinoire depot dépôt
    station school école church église hospital hôpital clinic clinique market marché plaza
    mall bridge pont garage yard site ecocentre écocentre inc ltd ltée corp group groupe
    society société association foundation fondation club company compagnie gas energy
    énergie waste recycling garbage compost snow neige water eau hydro transpo post poste
    canada ontario québec quebec ottawa gatineau montréal montreal toronto laval
    the le la les un une des an
    """
)
_HONORIFICS = _words_of("mr mrs ms mx dr m mme mlle me prof")
_PARTICLES = _words_of("de du des la le van von der den di da dos del st ste")
_NAME_WORD_RE = re.compile(rf"[{_UPPER}](?:[{_LETTER}]*(?:['’-][{_LETTER}]+)*|[a-z]?\.)")
_ELIDED_RE = re.compile(rf"[dl]['’][{_UPPER}][{_LETTER}]*(?:-[{_LETTER}]+)*")  # d'Amour
_CREDENTIALS_RE = re.compile(r"(?:[A-Za-z]{1,5}\.?){1,4}(?:\s*,\s*(?:[A-Za-z]{1,5}\.?){1,4}){0,3}")
_NAME_TAIL_RE = re.compile(r",\s+|\s+[-–—]\s+")
_PRONOUNS = r"(?:she|her|hers|he|him|his|they|them|theirs|elle|il|iel|lui|la|le)"
_PRONOUNS_RE = re.compile(
    rf"\(?(?:(?:pronouns?|pronoms?)\s*:\s*)?{_PRONOUNS}(?:\s*/\s*{_PRONOUNS}){{1,2}}\)?",
    re.IGNORECASE,
)
_PRONOUNS_TAIL_RE = re.compile(rf"\s*\({_PRONOUNS}(?:\s*/\s*{_PRONOUNS}){{1,2}}\)$", re.I)

_TITLE_RE = re.compile(
    r"\b(?:"
    # titles
    r"agent|officer|coordinator|co-ordinator|manager|supervisor|director|clerk|representative|"
    r"rep|specialist|analyst|advisor|adviser|administrator|admin|assistant|associate|"
    r"technician|technologist|inspector|engineer|foreman|forewoman|operator|dispatcher|"
    r"planner|councillor|councilor|mayor|chief|lead|liaison|consultant|secretary|"
    r"receptionist|superintendent|president|vice-president|commissioner|ombudsman|team|"
    r"staff|crew|"
    r"agente|préposée?|conseill(?:er|ère)|coordonnat(?:eur|rice)|coordinat(?:eur|rice)|"
    r"gestionnaire|direct(?:eur|rice)|superviseure?|technicienne?|inspect(?:eur|rice)|"
    r"ingénieure?|contremaître(?:sse)?|répartit(?:eur|rice)|adjointe?|secrétaire|"
    r"réceptionniste|chef|responsable|analyste|commis|maire|mairesse|équipe|"
    # organisations
    r"services?|department|dept|division|branch|unit|section|office|city|town|township|"
    r"village|county|region|regional|municipality|municipal|borough|ward|works|operations|"
    r"by-law|bylaw|parks|recreation|transit|infrastructure|planning|utilities|centre|center|"
    r"direction|bureau|ville|municipalité|arrondissement|district|travaux|voirie|loisirs|"
    r"urbanisme|citoyens|clientèle|311"
    r")\b",
    re.IGNORECASE,
)

_EMAIL_RE = re.compile(r"(?:mailto:)?[\w.+'-]+@[\w-]+(?:\.[\w-]+)+", re.IGNORECASE)
_URL_RE = re.compile(
    r"(?:https?://|www\.)[^\s<>]+|"
    r"\b[\w-]+(?:\.[\w-]+)*\.(?:ca|com|org|net|gov|gouv|info|quebec|city)\b(?:/[^\s<>]*)?",
    re.IGNORECASE,
)
_SOCIAL_RE = re.compile(
    r"\b(?:twitter|facebook|instagram|linkedin|bluesky|threads|x|fb|ig)\s*:?\s*@[\w.]+", re.I
)
_EXTENSION_RE = re.compile(r"(?:\b(?:ext|extn|extension|x|poste|p)\.?|#)\s*\d{1,6}\b", re.I)
_SHORT_CODE_RE = re.compile(r"\b3-?1-?1\b")  # a contact only with a label ("Tel: 311")
_CONTACT_LABEL_RE = re.compile(
    r"(?<![\w@])(?:tel|tél|téléphone|telephone|phone|ph|p|t|o|off|office|bureau|direct|"
    r"ligne directe|desk|work|main|cell|cel|cellulaire|cellular|mobile|mob|m|c|fax|f|téléc|"
    r"télécopieur|télécopie|toll-free|toll free|sans frais|sans-frais|tty|ats|tdd|teletype|"
    r"pager|text|texto|sms|email|e-mail|courriel|mail|e|web|website|site web|"
    r"site internet|site|internet|url|w)(?![\w@])\.?",
    re.IGNORECASE,
)
_CONNECTOR_RE = re.compile(r"\b(?:or|ou|and|et)\b", re.IGNORECASE)
_PUNCTUATION_RE = re.compile(r"[\s:.,;()\[\]/|<>*+•·–—-]*")

_STREET_RE = re.compile(
    r"\b(?:street|st|avenue|ave|av|road|rd|boulevard|blvd|boul|drive|dr|crescent|cres|court|"
    r"ct|place|pl|lane|ln|way|parkway|pkwy|highway|hwy|terrace|circle|square|sq|rue|chemin|"
    r"ch|montée|rang|promenade|allée|route|rte|côte|impasse|croissant|carré)\b",
    re.IGNORECASE,
)
_STREET_NUMBER_RE = re.compile(r"\d{1,6}[A-Za-z]?(?:[-–]\d{1,6})?,?\s")
_POSTAL_CODE_RE = re.compile(r"\b[A-Z]\d[A-Z][ -]?\d[A-Z]\d\b")
_BOX_RE = re.compile(
    r"(?:p\.?\s?o\.?\s?box|c\.?\s?p\.?|case postale|suite|unit|room|floor|local|pièce)\s*#?\d+\b"
    r"|\d+(?:st|nd|rd|th|e|er)\s+(?:floor|étage)\b",
    re.IGNORECASE,
)
_IMAGE_RE = re.compile(r"\[(?:cid:|image|description|logo)[^\]]{0,200}\]", re.IGNORECASE)
_PIECE_SPLIT_RE = re.compile(r"\s*\|\s*|\s+[•·]\s+|\s{3,}")
_WORD_RE = re.compile(r"[\w']+")

_CLOSING = (
    r"(?:many |a big )?(?:thanks|thank you)(?: (?:again|so much|a lot|very much))?"
    r"(?: for (?:your|the) (?:patience|understanding|help|message|e-?mail|cooperation|"
    r"co-operation|collaboration|time|inquiry|enquiry|request|report|note))?|"
    r"(?:best|kind|warm|warmest|kindest|with) regards|regards|best(?: wishes)?|all the best|"
    r"cheers|sincerely(?: yours)?|yours (?:truly|sincerely)|respectfully(?: yours)?|take care|"
    r"have a (?:good|great|nice) (?:day|evening|weekend)|"
    r"merci(?: beaucoup| encore| bien| à l'avance)?(?: (?:de|pour) (?:votre|la|ta) "
    r"(?:patience|compréhension|collaboration|message|courriel|signalement|demande|aide))?|"
    r"cordialement|bien cordialement|bien à vous|salutations(?: distinguées)?|"
    r"(?:meilleures|sincères) salutations|bonne (?:journée|soirée|fin de semaine)|"
    r"au plaisir|à bientôt|amicalement"
)
_CLOSING_RE = re.compile(rf"(?:{_CLOSING})\s*[,.!]*\s*(?:[-–—]\s*)?(?P<rest>.*)", re.IGNORECASE)

# The line above a block that makes the block what it announces ("Call the foreman:").
_INTRODUCING_WORDS = _words_of(
    "with to at contact call reach is are avec à au aux de joindre contacter appeler est sont"
)
_INTRODUCING_RE = re.compile(
    r"\b(?:following|below|here (?:is|are)|ci-dessous|suivante?s?|voici)\b", re.IGNORECASE
)

_DISCLAIMER_START_RE = re.compile(
    r"(?:\S{1,2}\s+)?\W{0,3}(?:"
    r"(?:confidentiality|privacy)(?: notice| statement| warning)?\b|confidential\b|"
    r"disclaimer\b|"
    r"(?:this|the) (?:e-?mail|message|communication|transmission|information)\b|"
    r"if you (?:are not|have received)\b|"
    r"avis de confidentialit[ée]|confidentialit[ée]\b|avertissement\b|"
    r"(?:le présent|ce) (?:courriel|message|communiqué)\b|cette (?:communication|transmission)|"
    r"les renseignements (?:contenus|figurant)|l'information (?:contenue|figurant)|"
    r"si vous (?:n'[êe]tes pas|avez reçu)"
    r")",
    re.IGNORECASE,
)
_DISCLAIMER_MESSAGE_RE = re.compile(
    r"\b(?:e-?mail|message|courriel|communication|transmission)", re.IGNORECASE
)
_DISCLAIMER_RECIPIENT_RE = re.compile(
    r"confidenti|privileged|privilégi|intended (?:recipient|addressee|solely|only)|"
    r"destinataires? (?:prévus?|visés?|désignés?|autorisés?)|seule?s? destinataires?|"
    r"unauthori[sz]ed (?:use|distribution|disclosure|review|copying)|strictement interdite?",
    re.IGNORECASE,
)
_DISCLAIMER_OPENING_RE = re.compile(  # a line a disclaimer may start with (a quick filter)
    r"(?:\S{1,2}\s+)?\W{0,3}(?:confidential\w*|privacy|disclaimer|this|the|if|avis|"
    r"confidentialit\w*|avertissement|le présent|ce|cette|les|l'information|si|please|"
    r"merci|veuillez|consider|think|pensez|songez|penser|avant)\b",
    re.IGNORECASE,
)
_ENVIRONMENT_RE = re.compile(
    r"(?:\S{1,2}\s+)?\W{0,3}(?:please |merci de |veuillez )?"
    r"(?:consider|think of|pensez|songez|penser)\b.{0,40}environ.{0,60}(?:print|imprim)|"
    r"\W{0,3}(?:think before you print|avant d'imprimer).{0,80}",
    re.IGNORECASE,
)

_DEVICES = (
    r"(?:outlook|gmail|yahoo|aol|mail|samsung|galaxy|blackberry|iphone|ipad|android|proton|"
    r"mobile|phone|smartphone|tablet|verizon|bell|rogers|telus|huawei|pixel|motorola|nokia|"
    r"xiaomi|windows|bluemail|spark|edison|airmail|superhuman|newton|zoho|hotmail)\b"
)
# Device and app signatures ("Sent from my iPhone", "Envoyé de mon iPhone", "Get Outlook for
# iOS", …): the whole line, short, no sentence after it.
_MOBILE_SIGNATURE_RE = re.compile(
    r"^\s*(?:"
    r"sent from my [\w.'’&-]+(?: [\w.'’&()-]+){0,5}|"
    rf"sent (?:from|with|via|using|on) (?:the |a |an )?{_DEVICES}(?: [\w.'’&()-]+){{0,5}}|"
    r"get outlook for (?:ios|android|mac|windows)\S*|"
    r"(?:envoy[ée]|exp[ée]di[ée]) (?:de|depuis|à partir de|a partir de) (?:mon|ma) "
    r"[\w.'’&-]+(?: [\w.'’&()-]+){0,5}|"
    rf"(?:envoy[ée]|exp[ée]di[ée]) (?:avec|par|via|depuis|de) (?:l'application |l'appli |un |une )?"
    rf"{_DEVICES}(?: [\w.'’&()-]+){{0,5}}|"
    r"t[ée]l[ée]charger outlook pour (?:ios|android|mac|windows)\S*|"
    r"obtenir outlook pour (?:ios|android|mac|windows)\S*|"
    r"von meinem [\w .-]{1,40} gesendet"
    r")\s*\.?\s*$",
    re.IGNORECASE,
)
_DASH_NAME_RE = re.compile(r"^\s*-{1,2}\s?[A-ZÀ-Ý][\w.'’-]*(?: [A-ZÀ-Ý][\w.'’-]*){0,2}\s*$")


@dataclass(frozen=True)
class _Line:
    """What one non-blank line is, as a signature line."""

    closing: bool = False  # "Thanks,", "Cordialement," (maybe with a name after it)
    name_words: int = 0  # the line starts with a person's name of this many words
    title: bool = False  # a job title or an organisation is on the line
    contacts: int = 0  # phone, email and web pieces on the line
    labelled: bool = False  # a contact piece has a label or an extension, or is an email


def cut_signature(lines: list[str]) -> list[str]:
    """The lines above the signature: the marked ones first ("-- ", "Sent from my iPhone",
    a last "-Name" line), then a trailing signature block with no marker or a mail
    disclaimer (the rules, and what is deliberately kept: the module docstring)."""
    lines = cut_marked_signature(lines)
    start = signature_start(lines)
    return lines if start is None else lines[:start]


def cut_marked_signature(lines: list[str]) -> list[str]:
    """The lines above the first signature marker ("-- ", "Sent from my iPhone", …), or
    above a last "-Name" line; all of `lines` when there is none."""
    for idx, line in enumerate(lines):
        stripped = line.strip()
        if line.rstrip() in ("--", "—"):  # "-- " (RFC 3676), or without its space
            return lines[:idx]
        if len(stripped) <= 80 and _MOBILE_SIGNATURE_RE.match(stripped):
            return lines[:idx]
    # "-Name" as the last line (github's "^-\w" signature)
    last = len(lines) - 1
    while last >= 0 and _blank(lines[last]):
        last -= 1
    if last > 0 and _DASH_NAME_RE.match(lines[last]) and not lines[last].lstrip().startswith("- "):
        return lines[:last]
    return lines


def signature_start(lines: Sequence[str]) -> int | None:
    """The index of the first line of the trailing signature block or disclaimer of `lines`
    (see the module docstring), or None when nothing at the end is a signature."""
    end = _disclaimers_start(lines)
    block = _block_start(lines, end)
    if block is not None:
        return block
    return end if end < len(lines) else None


def _blank(line: str) -> bool:
    return not line.strip()


def _block_start(lines: Sequence[str], end: int) -> int | None:
    run: list[tuple[int, _Line]] = []  # the trailing signature lines, bottom up
    i = end - 1
    while i >= 0 and len(run) <= MAX_BLOCK_LINES:  # one more: a closing on top
        if _blank(lines[i]):
            i -= 1
            continue
        info = _classify(lines[i])
        if info is None:
            break
        run.append((i, info))
        i -= 1
    run.reverse()
    for k, (idx, info) in enumerate(run):
        if not (info.closing or info.name_words):
            continue
        if any(other.name_words for _, other in run[:k]):
            return None  # several people: a list, not a signature
        body = run[k:]
        if info.closing and not info.name_words:
            if len(body) < 2 or not body[1][1].name_words or body[1][1].closing:
                continue
            body = body[1:]
        name = body[0][1]
        rest = [line for _, line in body[1:]]
        if len(body) > MAX_BLOCK_LINES or any(line.closing or line.name_words for line in rest):
            continue
        title = any(line.title for _, line in body)
        contacts = sum(line.contacts for _, line in body)
        labelled = any(line.labelled for _, line in body)
        strong = title or (name.name_words >= 2 and contacts > 0 and (labelled or contacts >= 2))
        if not strong:
            continue
        unmistakable = title and contacts > 0
        prev = idx - 1
        while prev >= 0 and _blank(lines[prev]):
            prev -= 1
        if prev >= 0 and _introduces(lines[prev]):
            continue
        separated = prev >= 0 and (prev < idx - 1 or info.closing)
        if separated or unmistakable:
            return idx
    return None


def _introduces(line: str) -> bool:
    """`line` announces what follows it ("Call the foreman:", "…communiquez avec")."""
    text = line.strip()
    if text.endswith(":") or _INTRODUCING_RE.search(text):
        return True
    words = _WORD_RE.findall(text.lower().replace("’", "'"))
    return bool(words) and words[-1] in _INTRODUCING_WORDS and not text.endswith((".", "!", "?"))


def _classify(line: str) -> _Line | None:
    """`line` as a signature line, or None when it is no signature line."""
    text = line.strip()
    if len(text) > 2 and text[0] in "*_" and text[-1] == text[0]:  # *bold*, _underlined_
        text = text.strip(text[0]).strip()
    if not text or len(text) > MAX_LINE:
        return None
    closing = _CLOSING_RE.fullmatch(text)
    if closing:
        rest = closing.group("rest").strip()
        if not rest:
            return _Line(closing=True)
        words = _name_words(rest)
        if words:
            return _Line(closing=True, name_words=words)
    pieces = [p for p in _PIECE_SPLIT_RE.split(text) if p.strip()]
    if not pieces or len(pieces) > MAX_PIECES:
        return None
    name_words = 0
    title = False
    contacts = 0
    labelled = False
    for k, piece in enumerate(p.strip() for p in pieces):
        contact = _contact(piece)
        if contact is not None:
            contacts += 1
            labelled = labelled or contact
            continue
        if _address(piece) or _PRONOUNS_RE.fullmatch(piece) or _IMAGE_RE.fullmatch(piece):
            continue
        head, tail = _split_name(piece)
        words = _name_words(head)
        if words and (not tail or _title(tail) or _CREDENTIALS_RE.fullmatch(tail)):
            if k == 0:
                name_words = words
            title = title or (bool(tail) and _title(tail))
            continue
        if _title(piece):
            title = True
            continue
        return None
    return _Line(name_words=name_words, title=title, contacts=contacts, labelled=labelled)


def _words(text: str) -> list[str]:
    return _WORD_RE.findall(text.lower().replace("’", "'"))


def _has_sentence_word(text: str) -> bool:
    return any(word in _SENTENCE_WORDS for word in _words(text))


def _split_name(piece: str) -> tuple[str, str]:
    """("Jane Doe", "Agent") from "Jane Doe, Agent" or "Jane Doe - Agent"; (piece, "")."""
    match = _NAME_TAIL_RE.search(piece)
    if match is None:
        return piece, ""
    return piece[: match.start()], piece[match.end() :].strip()


def _name_words(piece: str) -> int:
    """How many words the person's name `piece` has (0: it is no person's name)."""
    piece = _PRONOUNS_TAIL_RE.sub("", piece).strip()
    if not piece or len(piece) > 50 or _TITLE_RE.search(piece):
        return 0
    tokens = piece.split()
    if len(tokens) > 1 and tokens[0].rstrip(".").lower() in _HONORIFICS:
        tokens = tokens[1:]
    words = 0
    for k, token in enumerate(tokens):
        if k > 0 and (token in _PARTICLES or _ELIDED_RE.fullmatch(token)):
            if token not in _PARTICLES:
                words += 1
            continue
        lower = token.lower().replace("’", "'").rstrip(".")
        if (
            not _NAME_WORD_RE.fullmatch(token)
            or lower in _NOT_NAME_WORDS
            or lower in _SENTENCE_WORDS
        ):
            return 0
        words += 1
    return words if 1 <= words <= 4 else 0


def _title(piece: str) -> bool:
    """`piece` is a job title or an organisation ("Agent, 311 Contact Centre")."""
    words = piece.split()
    if not words or len(piece) > 80 or len(words) > 10:
        return False
    if not (piece[0].isupper() or piece[0].isdigit()) or re.search(r"[?!;:]", piece):
        return False
    if piece.endswith(".") and len(words[-1]) > 5:  # a sentence, not "Inc." or "Ltée."
        return False
    return bool(_TITLE_RE.search(piece)) and not _has_sentence_word(piece)


def _address(piece: str) -> bool:
    """`piece` is (a line of) a postal address."""
    if len(piece) > 80 or re.search(r"[?!;]", piece) or _has_sentence_word(piece):
        return False
    if _STREET_NUMBER_RE.match(piece) and _STREET_RE.search(piece):
        return True
    return bool(
        _POSTAL_CODE_RE.search(piece) or _BOX_RE.fullmatch(piece) or piece.lower() == "canada"
    )


def _contact(piece: str) -> bool | None:
    """None unless `piece` is only phone numbers, email, web addresses and their labels;
    else whether it is labelled ("Tel:", "Courriel :", an extension, an email address)."""
    rest, emails = _EMAIL_RE.subn(" ", piece)
    rest, urls = _URL_RE.subn(" ", rest)
    rest, social = _SOCIAL_RE.subn(" ", rest)
    found = emails + urls + social
    labelled = emails > 0 or social > 0
    if any(ch.isdigit() for ch in rest):
        matcher = phonenumbers.PhoneNumberMatcher(
            rest, PHONE_REGION, leniency=phonenumbers.Leniency.POSSIBLE
        )
        spans = [(m.start, m.end, m.number.extension) for m in matcher]
        for start, stop, extension in reversed(spans):
            rest = rest[:start] + " " + rest[stop:]
            labelled = labelled or bool(extension)
        found += len(spans)
        rest, extensions = _EXTENSION_RE.subn(" ", rest)
        labelled = labelled or extensions > 0
    rest, labels = _CONTACT_LABEL_RE.subn(" ", rest)
    if labels:
        labelled = True
        rest, short_codes = _SHORT_CODE_RE.subn(" ", rest)
        found += short_codes
    rest = _CONNECTOR_RE.sub(" ", rest)
    if not found or not _PUNCTUATION_RE.fullmatch(rest):
        return None
    return labelled


def _disclaimers_start(lines: Sequence[str]) -> int:
    """Where the trailing mail disclaimers of `lines` begin (len(lines) if there are none)."""
    end = len(lines)
    for _ in range(MAX_DISCLAIMERS):
        stop = end
        while stop > 0 and _blank(lines[stop - 1]):
            stop -= 1
        start = stop
        chars = 0
        while start > 0 and not _blank(lines[start - 1]) and chars <= MAX_DISCLAIMER_CHARS:
            start -= 1
            chars += len(lines[start])
        if start == stop or chars > MAX_DISCLAIMER_CHARS:
            break
        first = next(
            (
                j
                for j in range(max(start, stop - MAX_DISCLAIMER_LINES), stop)
                if _DISCLAIMER_OPENING_RE.match(lines[j]) and _disclaimer(" ".join(lines[j:stop]))
            ),
            None,
        )
        if first is None:
            break
        end = first
        if first > start:  # the disclaimer hangs under the signature: nothing above it
            break
    return end


def _disclaimer(text: str) -> bool:
    text = " ".join(text.split())
    if _ENVIRONMENT_RE.match(text) and len(text) <= 250:
        return True
    return bool(
        _DISCLAIMER_START_RE.match(text)
        and _DISCLAIMER_MESSAGE_RE.search(text)
        and _DISCLAIMER_RECIPIENT_RE.search(text)
    )
