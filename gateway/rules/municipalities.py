"""The municipality directory and the matcher (no I/O).

`Directory.match(text)` turns what a resident typed into a `Match`, an `Ambiguous`
set of candidates (each with its province), or `NoMatch`.

How a text is matched, in order (the first step that finds something wins):

1. A postal code ("K1A 0B1", "k1a0b1", a bare FSA "K1A") is looked up by the longest
   prefix among the municipalities' `postal_prefixes`; a prefix shared by several
   municipalities gives `Ambiguous`. An unknown postal code falls through to the names
   ("Victoria BC V8W 1P6" still finds Victoria).
2. Exact lookup of the normalized text (see `normalize`), then of the text without its
   lead-in ("I live in", "city of", "j'habite à", "ville de", …) and trailing filler
   ("please", "merci", "Canada", …), then of the name before a trailing province
   ("Victoria BC", "Victoria, B.C.", "Richmond Colombie-Britannique"), restricted to that
   province. Keys are names, French names and aliases; a key shared by several
   municipalities gives `Ambiguous` with all of them, never a silent pick.
   Derived keys (a name without its parenthesised part, each part of "A/B" or "A—B",
   "Greater X" as "X") are only used when no real name or alias matches.
3. Typo-tolerant lookup with rapidfuzz: candidates whose `fuzz.ratio` with the query is
   at least 80 *and* whose OSA edit distance (a transposition counts as one edit) is
   within a length-dependent budget: 0 edits up to 3 characters, 1 up to 7, 2 up to 14,
   3 beyond. The candidates at the smallest distance are kept; one municipality is a
   `Match`, several are `Ambiguous` (at most `MAX_FUZZY_CANDIDATES`, best first).
   If the resident named a province and nothing fits in it, the out-of-province
   candidates come back `Ambiguous`, to be confirmed.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from rapidfuzz import fuzz, process
from rapidfuzz.distance import OSA


@dataclass(frozen=True)
class CannedReply:
    """A ready-made answer the console offers a municipality's agents (`canned_replies:`)."""

    title: str  # what the agent picks it by
    text: str  # the SMS text (at most 1600 characters)
    language: str | None = None  # "en" | "fr"; None: offered whatever the resident's language


DEFAULT_TIMEZONE = "America/Toronto"
# Where a municipality's times (emails, console) are shown, by province.
PROVINCE_TIMEZONES = {
    "BC": "America/Vancouver",
    "AB": "America/Edmonton",
    "SK": "America/Regina",
    "MB": "America/Winnipeg",
    "ON": "America/Toronto",
    "QC": "America/Toronto",
    "NB": "America/Moncton",
    "NS": "America/Halifax",
    "PE": "America/Halifax",
    "NL": "America/St_Johns",
    "YT": "America/Whitehorse",
    "NT": "America/Yellowknife",
    "NU": "America/Iqaluit",
}


@dataclass(frozen=True)
class Municipality:
    """One municipality of the directory, as in `municipality_map.yaml`."""

    id: str
    name: str
    province: str  # two-letter code: ON, QC, BC, …
    mailbox: str
    name_fr: str | None = None
    aliases: tuple[str, ...] = ()
    postal_prefixes: tuple[str, ...] = ()  # FSA prefixes, upper case, no space: "K1", "K4A"
    agents: tuple[str, ...] = ()  # addresses or "@domain"
    languages: tuple[str, ...] = ("en",)
    canned_replies: tuple[CannedReply, ...] = ()  # the console's ready-made answers

    @property
    def label(self) -> str:
        """Name and province as shown to residents: "Victoria, BC"."""
        return f"{self.name}, {self.province}"

    @property
    def timezone(self) -> str:
        """The IANA time zone its times are shown in (by province; Toronto's if unknown)."""
        return PROVINCE_TIMEZONES.get(self.province, DEFAULT_TIMEZONE)


@dataclass(frozen=True)
class Match:
    municipality: Municipality
    via: str = "name"  # name | alias | postal | suggestion | number


@dataclass(frozen=True)
class Ambiguous:
    candidates: tuple[Municipality, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class NoMatch:
    pass


MatchResult = Match | Ambiguous | NoMatch

# --------------------------------------------------------------------------- tuning

FUZZY_MIN_RATIO = 80.0
"""Minimum `rapidfuzz.fuzz.ratio` (0-100) of a typo candidate."""

MAX_FUZZY_CANDIDATES = 5
"""At most this many candidates in an `Ambiguous` that comes from typo matching."""


def allowed_edits(length: int) -> int:
    """Edit budget (OSA distance) of a typo match for a query of `length` characters."""
    if length <= 3:
        return 0
    if length <= 7:
        return 1
    if length <= 14:
        return 2
    return 3


# --------------------------------------------------------------------------- normalize

_APOSTROPHES = re.compile("['\u2019\u2018\u02bc\u0060\u00b4]")
_NON_WORD = re.compile(r"[\W_]+")
_LIGATURES = str.maketrans({"œ": "oe", "æ": "ae", "ø": "o", "ł": "l", "đ": "d", "ı": "i"})
_TOKEN_MAP = {
    "saint": "st",
    "sainte": "st",
    "ste": "st",
    "st": "st",
    "mt": "mount",
}


def _fold(text: str) -> str:
    """Casefold and strip accents: "Montréal" -> "montreal"."""
    decomposed = unicodedata.normalize("NFKD", text.casefold().translate(_LIGATURES))
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def _tokens(folded: str) -> str:
    words = _NON_WORD.sub(" ", folded).split()
    return " ".join(_TOKEN_MAP.get(w, w) for w in words)


def normalize(text: str) -> str:
    """The matching form of a name or of what a resident typed.

    Casefolds, strips accents, turns apostrophes, hyphens and other punctuation into
    single spaces, and unifies St/St./Ste/Ste./Saint/Sainte into one token ("st"):
    ``normalize("Sainte-Catharines") == normalize("St. Catharines") == "st catharines"``.
    """
    return _tokens(_APOSTROPHES.sub(" ", _fold(text)))


def _normalize_joined(text: str) -> str:
    """Like `normalize`, but apostrophes join their neighbours: "St. Mary's" -> "st marys"."""
    return _tokens(_APOSTROPHES.sub("", _fold(text)))


# --------------------------------------------------------------------------- postal codes

_FSA = r"[ABCEGHJKLMNPRSTVXY][0-9][ABCEGHJKLMNPRSTVWXYZ]"
_LDU = r"[0-9][ABCEGHJKLMNPRSTVWXYZ][0-9]"
_POSTAL_WHOLE = re.compile(rf"({_FSA})(?:[\s-]*{_LDU})?")
_POSTAL_INSIDE = re.compile(rf"(?<![A-Z0-9])({_FSA})[\s-]?{_LDU}(?![A-Z0-9])")
_POSTAL_ANYWHERE = re.compile(rf"(?<![A-Z0-9]){_FSA}(?:[\s-]*{_LDU})?(?![A-Z0-9])", re.IGNORECASE)


def parse_postal_code(text: str) -> str | None:
    """The FSA ("K1A") of a Canadian postal code, or None.

    Accepts a whole text that is an FSA or a full code, with or without the space, in
    any case ("K1A 0B1", "k1a0b1", "K1A"), or a full code inside a longer text
    ("my postal code is K2P 1L4"). A bare FSA inside a longer text is not taken.
    """
    upper = text.strip().upper()
    whole = _POSTAL_WHOLE.fullmatch(upper)
    if whole:
        return whole.group(1)
    inside = _POSTAL_INSIDE.search(upper)
    return inside.group(1) if inside else None


# --------------------------------------------------------------------------- provinces

PROVINCES: dict[str, tuple[str, ...]] = {
    # code: English name, French name, other spellings and abbreviations (EN/FR)
    "AB": ("Alberta", "Alta", "Alb"),
    "BC": ("British Columbia", "Colombie-Britannique", "B.C.", "C.-B."),
    "MB": ("Manitoba", "Man"),
    "NB": ("New Brunswick", "Nouveau-Brunswick", "N.B.", "N.-B."),
    "NL": (
        "Newfoundland and Labrador",
        "Terre-Neuve-et-Labrador",
        "Newfoundland & Labrador",
        "Newfoundland",
        "Terre-Neuve",
        "Labrador",
        "Nfld",
        "NF",
        "N.L.",
        "T.-N.-L.",
    ),
    "NS": ("Nova Scotia", "Nouvelle-Écosse", "N.S.", "N.-É."),
    "NT": ("Northwest Territories", "Territoires du Nord-Ouest", "N.W.T.", "T.N.-O."),
    "NU": ("Nunavut", "Nvt"),
    "ON": ("Ontario", "Ont"),
    "PE": ("Prince Edward Island", "Île-du-Prince-Édouard", "P.E.I.", "Î.-P.-É."),
    "QC": ("Quebec", "Québec", "Que", "PQ"),
    "SK": ("Saskatchewan", "Sask"),
    "YT": ("Yukon", "Yukon Territory", "Y.T.", "YK"),
}
"""Province codes and their spellings; an abbreviation with dots is also read without them."""


def _province_phrases() -> dict[tuple[str, ...], str]:
    phrases: dict[tuple[str, ...], str] = {}
    for code, names in PROVINCES.items():
        for spelling in (code, *names):
            phrases[tuple(normalize(spelling).split())] = code
            if "." in spelling:  # "P.E.I." is also written "PEI"
                phrases[(normalize(re.sub(r"[.\-\s]", "", spelling)),)] = code
    return phrases


_PROVINCE_PHRASES = _province_phrases()
_PROVINCE_MAX_TOKENS = max(len(p) for p in _PROVINCE_PHRASES)


def parse_province(text: str | None) -> str | None:
    """The two-letter code of a province written as a code or an EN/FR name, or None."""
    if not text:
        return None
    return _PROVINCE_PHRASES.get(tuple(normalize(text).split()))


# --------------------------------------------------------------------------- lead-ins

_LEAD_INS = (
    # greetings and acknowledgements
    "hi", "hello", "hey", "good morning", "good afternoon", "good evening", "yes", "ok", "okay",
    "bonjour", "bonsoir", "salut", "allo", "oui",
    # English
    "i live in", "i live at", "i am in", "i'm in", "im in", "i am from", "i'm from", "im from",
    "i am at", "i'm at", "im at", "we live in", "we are in", "we're in", "i reside in",
    "i am living in", "i'm living in", "living in", "live in", "located in", "i am located in",
    "i'm located in", "my city is", "my town is", "my municipality is", "the city is", "city is",
    "it is", "it's", "its", "in", "from", "at", "the city of", "city of", "the town of", "town of",
    "the township of", "township of", "the municipality of", "municipality of", "the village of",
    "village of", "county of", "district of", "region of", "regional municipality of",
    "rural municipality of", "rm of", "city", "town",
    "my postal code is", "postal code is", "postal code", "my postcode is", "postcode",
    # French
    "j'habite à", "j'habite au", "j'habite en", "j'habite dans", "j'habite", "jhabite à",
    "jhabite", "je vis à", "je vis", "je demeure à", "je demeure", "je reste à", "je reste",
    "je suis à", "je suis de", "je suis", "je viens de", "nous habitons à", "nous habitons",
    "on habite à", "on reste à", "ma ville est", "ma ville c'est", "ma ville",
    "ma municipalité est",
    "c'est", "cest", "la ville de", "la ville d'", "ville de", "ville d'", "ville",
    "la municipalité de", "municipalité de", "municipalité d'", "village de", "canton de",
    "paroisse de", "mon code postal est", "mon code postal", "code postal",
    "à", "au", "en", "dans", "de", "d'",
)  # fmt: skip

_TRAILERS = (
    "please", "pls", "plz", "thanks", "thank you", "thx", "ty", "merci", "merci beaucoup",
    "svp", "s'il vous plaît", "s'il te plaît", "stp", "canada", "city",
)  # fmt: skip


def _phrase_table(phrases: Iterable[str]) -> tuple[tuple[str, ...], ...]:
    """Phrases as token tuples, longest first."""
    table = {tuple(normalize(p).split()) for p in phrases}
    return tuple(sorted(table, key=lambda p: (-len(p), p)))


_LEAD_IN_TABLE = _phrase_table(_LEAD_INS)
_TRAILER_TABLE = _phrase_table(_TRAILERS)


def _strip_lead_ins(tokens: list[str]) -> list[str]:
    changed = True
    while changed:
        changed = False
        for phrase in _LEAD_IN_TABLE:
            n = len(phrase)
            if len(tokens) > n and tuple(tokens[:n]) == phrase:
                tokens = tokens[n:]
                changed = True
                break
    return tokens


def _strip_trailers(tokens: list[str]) -> list[str]:
    changed = True
    while changed:
        changed = False
        for phrase in _TRAILER_TABLE:
            n = len(phrase)
            if len(tokens) > n and tuple(tokens[-n:]) == phrase:
                tokens = tokens[:-n]
                changed = True
                break
    return tokens


def _split_province(tokens: list[str]) -> tuple[list[str], str] | None:
    """("victoria", "b", "c") -> (["victoria"], "BC"); None without a trailing province."""
    for n in range(min(_PROVINCE_MAX_TOKENS, len(tokens) - 1), 0, -1):
        code = _PROVINCE_PHRASES.get(tuple(tokens[-n:]))
        if code:
            return tokens[:-n], code
    return None


@dataclass(frozen=True)
class _Query:
    """What the resident typed, read three ways (see the module docstring)."""

    full: str  # normalize(text)
    core: str  # without lead-ins and trailers
    name: str | None  # the name before a trailing province
    province: str | None


def _read_query(text: str) -> _Query:
    full = normalize(text)
    tokens = _strip_trailers(_strip_lead_ins(full.split()))
    core = " ".join(tokens)
    split = _split_province(tokens)
    if split is None:
        return _Query(full, core, None, None)
    name_tokens, province = split
    name_tokens = _strip_trailers(_strip_lead_ins(name_tokens))
    return _Query(full, core, " ".join(name_tokens), province)


# --------------------------------------------------------------------------- derived keys

_PARENTHESIS = re.compile(r"\(([^)]*)\)")
_PART_SEPARATORS = re.compile("[/\u2014\u2013]")


def _derived_names(name: str) -> set[str]:
    """Secondary spellings of a census-style name, used only when nothing else matches."""
    derived: set[str] = set()
    if "(" in name:
        derived.add(_PARENTHESIS.sub(" ", name))
        derived.update(_PARENTHESIS.findall(name))
    if _PART_SEPARATORS.search(name):
        derived.update(_PART_SEPARATORS.split(name))
    if name.startswith("Greater ") and len(normalize(name[8:])) >= 4:
        derived.add(name[8:])  # "Greater Sudbury" -> "Sudbury"
    return {d for d in derived if normalize(d)}


# --------------------------------------------------------------------------- directory

_Hit = tuple[Municipality, str]  # (municipality, via)


def _unique(municipalities: Iterable[Municipality]) -> tuple[Municipality, ...]:
    seen: dict[str, Municipality] = {}
    for m in municipalities:
        seen.setdefault(m.id, m)
    return tuple(seen.values())


@dataclass(frozen=True, slots=True)
class _Fuzzy:
    key: str
    ratio: float
    distance: int


class Directory:
    """The municipalities a gateway serves, indexed for `match` and `suggest`.

    Built once from the map (about 0.1 s for the 5,162 census subdivisions); every lookup
    is then a few dict accesses, plus a rapidfuzz scan of the keys of similar length
    when nothing matches exactly.
    Duplicate ids are a `ValueError`.
    """

    def __init__(self, municipalities: Iterable[Municipality]) -> None:
        self.municipalities: tuple[Municipality, ...] = tuple(municipalities)
        self._by_id: dict[str, Municipality] = {}
        for m in self.municipalities:
            if m.id in self._by_id:
                raise ValueError(f"duplicate municipality id: {m.id!r}")
            self._by_id[m.id] = m
        primary: dict[str, list[_Hit]] = {}
        secondary: dict[str, list[_Hit]] = {}
        postal: dict[str, list[Municipality]] = {}
        for m in self.municipalities:
            spellings = [(m.name, "name")]
            if m.name_fr:
                spellings.append((m.name_fr, "name"))
            spellings.extend((alias, "alias") for alias in m.aliases)
            for spelling, via in spellings:
                for key in {normalize(spelling), _normalize_joined(spelling)}:
                    if key:
                        primary.setdefault(key, []).append((m, via))
                for derived in _derived_names(spelling):
                    for key in {normalize(derived), _normalize_joined(derived)}:
                        secondary.setdefault(key, []).append((m, via))
            for prefix in m.postal_prefixes:
                postal.setdefault(prefix.replace(" ", "").upper(), []).append(m)
        self._primary = {k: self._dedupe(v) for k, v in primary.items()}
        self._secondary = {k: self._dedupe(v) for k, v in secondary.items() if k not in primary}
        self._postal = {k: _unique(v) for k, v in postal.items()}
        self._postal_lengths = sorted({len(k) for k in self._postal}, reverse=True)
        # Fuzzy choices: per province (None = all), per key length.
        buckets: dict[str | None, dict[int, list[str]]] = {}
        for key, hits in (*self._primary.items(), *self._secondary.items()):
            for province in {None, *(m.province for m, _ in hits)}:
                buckets.setdefault(province, {}).setdefault(len(key), []).append(key)
        self._buckets = buckets

    @staticmethod
    def _dedupe(hits: list[_Hit]) -> tuple[_Hit, ...]:
        seen: dict[str, _Hit] = {}
        for m, via in hits:
            if m.id not in seen or (seen[m.id][1] == "alias" and via == "name"):
                seen[m.id] = (m, via)
        return tuple(seen.values())

    def __len__(self) -> int:
        return len(self.municipalities)

    def get(self, id: str) -> Municipality | None:
        """The municipality with this id, or None."""
        return self._by_id.get(id)

    # ----------------------------------------------------------------- match

    def match(self, text: str) -> MatchResult:
        """What the resident typed -> `Match`, `Ambiguous` (with provinces) or `NoMatch`."""
        query = _read_query(text)
        fsa = parse_postal_code(text) or (parse_postal_code(query.core) if query.core else None)
        if fsa is not None:
            postal = self._match_postal(fsa)
            if not isinstance(postal, NoMatch):
                return postal
            query = _read_query(_POSTAL_ANYWHERE.sub(" ", text))
        if not query.full:
            return NoMatch()
        for key in dict.fromkeys((query.full, query.core)):
            result = self._exact(key, None)
            if result is not None:
                return result
        if query.name:
            result = self._exact(query.name, query.province)
            if result is not None:
                return result
            result = self._fuzzy(query.name, query.province)
            if result is not None:
                return result
        for key in dict.fromkeys((query.core, query.full)):
            result = self._fuzzy(key, None)
            if result is not None:
                return result
        return NoMatch()

    def _match_postal(self, fsa: str) -> MatchResult:
        for n in self._postal_lengths:
            found = self._postal.get(fsa[:n])
            if found:
                return Match(found[0], via="postal") if len(found) == 1 else Ambiguous(found)
        return NoMatch()

    def _hits(self, key: str) -> tuple[_Hit, ...]:
        return self._primary.get(key) or self._secondary.get(key) or ()

    @staticmethod
    def _result(hits: Sequence[_Hit], limit: int | None = None) -> MatchResult:
        candidates = _unique(m for m, _ in hits)
        if len(candidates) == 1:
            via = next(v for m, v in hits if m.id == candidates[0].id)
            return Match(candidates[0], via=via)
        return Ambiguous(candidates[:limit] if limit else candidates)

    def _exact(self, key: str, province: str | None) -> MatchResult | None:
        """Exact key lookup; with a province, restricted to it (see the module docstring)."""
        hits = self._hits(key)
        if not hits:
            return None
        if province is None:
            return self._result(hits)
        inside = [h for h in hits if h[0].province == province]
        if inside:
            return self._result(inside)
        return Ambiguous(_unique(m for m, _ in hits))

    def _fuzzy(self, query: str, province: str | None) -> MatchResult | None:
        found = self._fuzzy_keys(query, province)
        if not found and province is not None:
            outside = self._fuzzy_keys(query, None)
            if outside:
                hits = [h for f in outside for h in self._hits(f.key)]
                return Ambiguous(_unique(m for m, _ in hits)[:MAX_FUZZY_CANDIDATES])
        if not found:
            return None
        hits = [h for f in found for h in self._hits(f.key)]
        if province is not None:
            hits = [h for h in hits if h[0].province == province]
        return self._result(hits, MAX_FUZZY_CANDIDATES)

    def _fuzzy_keys(self, query: str, province: str | None) -> list[_Fuzzy]:
        """Keys within the edit budget of `query`, the closest ones only, best first."""
        length = len(query)
        budget = allowed_edits(length)
        buckets = self._buckets.get(province)
        if budget == 0 or not buckets:
            return []
        found: list[_Fuzzy] = []
        for n in range(length - budget, length + budget + 1):
            choices = buckets.get(n)
            if not choices:
                continue
            for key, ratio, _ in process.extract(
                query,
                choices,
                scorer=fuzz.ratio,
                processor=None,
                score_cutoff=FUZZY_MIN_RATIO,
                limit=None,
            ):
                distance = OSA.distance(query, key)
                if distance <= allowed_edits(min(length, len(key))):
                    found.append(_Fuzzy(key, ratio, distance))
        if not found:
            return []
        best = min(f.distance for f in found)
        closest = [f for f in found if f.distance == best]
        closest.sort(key=lambda f: (-f.ratio, f.key))
        return closest

    # ----------------------------------------------------------------- suggest

    def suggest(self, city: str | None, province: str | None) -> Municipality | None:
        """Twilio's FromCity/FromState ("OTTAWA", "ON") -> the one municipality it names.

        Exact names and aliases only (no typo matching), within the province when one
        is given; a province that is not Canadian gives None. When the whole city does
        not match, each part of a hyphenated or slashed rate-centre name is tried
        ("OTTAWA-HULL", "ON" -> Ottawa). Anything ambiguous gives None.
        """
        if not city or not city.strip():
            return None
        code: str | None = None
        if province and province.strip():
            code = parse_province(province)
            if code is None:
                return None
        parts = [city, *re.split(r"[-/]", city)]
        for part in dict.fromkeys(normalize(p) for p in parts):
            if not part:
                continue
            hits = self._primary.get(part, ())
            candidates = _unique(m for m, _ in hits if code is None or m.province == code)
            if len(candidates) == 1:
                return candidates[0]
            if candidates:
                return None
        return None
