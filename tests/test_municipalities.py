"""The matcher: normalize, postal codes, provinces, and Directory on the hand map and census."""

from __future__ import annotations

import csv
import json
import re
from collections import defaultdict
from pathlib import Path

import pytest

from gateway.rules.municipalities import (
    Ambiguous,
    Directory,
    Match,
    MatchResult,
    Municipality,
    NoMatch,
    normalize,
    parse_postal_code,
    parse_province,
)
from gateway.settings import load_municipality_map
from gateway.settings.directory_build import build_census_directory
from tests.paths import REPO_ROOT, data_file

CENSUS_CSV = data_file("municipalities", "ocd_division_ids_ca", "derived_csd_with_province.csv")
EVIDENCE_JSON = data_file("municipalities", "canada_311_evidence.json")
HAND_MAP = REPO_ROOT / "municipality_map.yaml"


def census_rows() -> list[dict[str, str]]:
    with CENSUS_CSV.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


ROWS = census_rows()


@pytest.fixture(scope="module")
def hand() -> Directory:
    return Directory(load_municipality_map(HAND_MAP))


@pytest.fixture(scope="module")
def census() -> Directory:
    return Directory(build_census_directory(CENSUS_CSV))


def town(id: str, name: str, province: str = "ON", **extra: object) -> Municipality:
    return Municipality(id=id, name=name, province=province, mailbox=f"311@{id}.example", **extra)  # type: ignore[arg-type]


def matched_id(result: MatchResult) -> str | None:
    return result.municipality.id if isinstance(result, Match) else None


def describe(result: MatchResult) -> str:
    if isinstance(result, Match):
        return f"Match({result.municipality.id}, via={result.via})"
    if isinstance(result, Ambiguous):
        return f"Ambiguous({', '.join(m.id for m in result.candidates)})"
    return "NoMatch"


# --------------------------------------------------------------------------- normalize


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Ottawa", "ottawa"),
        ("  MONTRÉAL  ", "montreal"),
        ("Sainte-Catharines", "st catharines"),
        ("St. Catharines", "st catharines"),
        ("ST CATHARINES", "st catharines"),
        ("Ste. Anne", "st anne"),
        ("Saint-Jean-sur-Richelieu", "st jean sur richelieu"),
        ("St-Jérôme", "st jerome"),
        ("Trois–Rivières!!", "trois rivieres"),
        ("L'Ange-Gardien", "l ange gardien"),
        ("St. John’s", "st john s"),
        ("Saint-Louis-du-Ha! Ha!", "st louis du ha ha"),
        ("Cœur-de-Lion", "coeur de lion"),
        ("Edwardsburgh/Cardinal", "edwardsburgh cardinal"),
        ("Mt. Pearl", "mount pearl"),
        ("", ""),
        ("?!…", ""),
    ],
)
def test_normalize(text: str, expected: str) -> None:
    assert normalize(text) == expected


def test_normalize_unifies_st_ste_saint() -> None:
    spellings = ["St", "St.", "Ste", "Ste.", "Saint", "Sainte", "SAINT", "ste"]
    assert {normalize(f"{s} Anne") for s in spellings} == {"st anne"}


# --------------------------------------------------------------------------- postal codes


@pytest.mark.parametrize(
    ("text", "fsa"),
    [
        ("K1A 0B1", "K1A"),
        ("k1a0b1", "K1A"),
        ("K1A", "K1A"),
        (" h7n-2k3 ", "H7N"),
        ("m5v  3l9", "M5V"),
        ("my postal code is K2P 1L4", "K2P"),
        ("code postal: G1R4S9 merci", "G1R"),
        ("D1A 0B1", None),  # D is never the first letter of a postal code
        ("K1O", None),  # O is never a letter of a postal code
        ("K1A 0B", None),
        ("K1", None),
        ("i am near K1A", None),  # a bare FSA inside a sentence is not taken
        ("hello", None),
        ("123 Main St", None),
        ("", None),
    ],
)
def test_parse_postal_code(text: str, fsa: str | None) -> None:
    assert parse_postal_code(text) == fsa


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("ON", "ON"),
        ("on", "ON"),
        ("Ontario", "ON"),
        ("Ont.", "ON"),
        ("Qc", "QC"),
        ("Québec", "QC"),
        ("B.C.", "BC"),
        ("Colombie-Britannique", "BC"),
        ("N.-B.", "NB"),
        ("Nouveau-Brunswick", "NB"),
        ("Î.-P.-É.", "PE"),
        ("PEI", "PE"),
        ("Terre-Neuve-et-Labrador", "NL"),
        ("Territoires du Nord-Ouest", "NT"),
        ("Nouvelle-Écosse", "NS"),
        ("Yukon", "YT"),
        ("NY", None),
        ("Narnia", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_province(text: str | None, code: str | None) -> None:
    assert parse_province(text) == code


# --------------------------------------------------------------------------- hand map


@pytest.mark.parametrize(
    ("text", "id", "via"),
    [
        # names, case, accents, French names
        ("Ottawa", "ottawa", "name"),
        ("OTTAWA", "ottawa", "name"),
        ("montréal", "montreal", "name"),
        ("MONTREAL", "montreal", "name"),
        ("Québec", "quebec", "name"),
        ("quebec city", "quebec", "name"),
        ("Halton-Hills", "halton-hills", "name"),
        # typos
        ("Otawa", "ottawa", "name"),
        ("monreal", "montreal", "name"),
        ("Torotno", "toronto", "name"),
        ("Missisauga", "mississauga", "name"),
        ("Winipeg", "winnipeg", "name"),
        ("Edmonten", "edmonton", "name"),
        ("Calgery", "calgary", "name"),
        ("Vancover", "vancouver", "name"),
        ("Halifx", "halifax", "name"),
        ("Lavel", "laval", "name"),
        ("Gatinau", "gatineau", "name"),
        ("Burlingtn", "burlington", "name"),
        # aliases, with St/Ste/Saint and accents forgiven
        ("Nepean", "ottawa", "alias"),
        ("Orleans", "ottawa", "alias"),
        ("orléans", "ottawa", "alias"),
        ("Rockcliffe Park", "ottawa", "alias"),
        ("Scarborough", "toronto", "alias"),
        ("north york", "toronto", "alias"),
        ("Ste-Foy", "quebec", "alias"),
        ("Sainte Foy", "quebec", "alias"),
        ("St-Émile", "quebec", "alias"),
        ("ville de québec", "quebec", "alias"),
        ("St. Boniface", "winnipeg", "alias"),
        ("Saint-Boniface", "winnipeg", "alias"),
        ("st vital", "winnipeg", "alias"),
        ("Plateau Mont Royal", "montreal", "alias"),
        ("cote des neiges notre dame de grace", "montreal", "alias"),
        ("Montreal-Nord", "montreal", "alias"),
        ("Ile Bizard", "montreal", "alias"),  # two edits from "L'Île-Bizard"
        ("L'Île-Bizard", "montreal", "alias"),
        ("Hull", "gatineau", "alias"),
        ("Chomedey", "laval", "alias"),
        ("Dartmouth", "halifax", "alias"),
        ("Georgetown", "halton-hills", "alias"),
        ("Streetsville", "mississauga", "alias"),
        ("Nepaen", "ottawa", "alias"),
        # lead-ins and trailers in English and French
        ("I live in Ottawa", "ottawa", "name"),
        ("i'm in the city of Toronto", "toronto", "name"),
        ("City of Burlington", "burlington", "name"),
        ("Town of Oakville please", "oakville", "name"),
        ("j'habite à Montréal", "montreal", "name"),
        ("J'habite a Laval merci", "laval", "name"),
        ("Ville de Gatineau", "gatineau", "name"),
        ("je suis de Québec", "quebec", "name"),
        ("Hi, I live in Kanata", "ottawa", "alias"),
        # a province after the name
        ("Vancouver BC", "vancouver", "name"),
        ("Surrey, B.C.", "surrey", "name"),
        ("Toronto, Ont.", "toronto", "name"),
        ("Halifax, Nova Scotia", "halifax", "name"),
        ("Gatineau (Québec)", "gatineau", "name"),
        ("Ottawa, Ontario, Canada", "ottawa", "name"),
        ("Edmonten AB", "edmonton", "name"),
        # postal codes, with and without the space
        ("K1A 0B1", "ottawa", "postal"),
        ("k1a0b1", "ottawa", "postal"),
        ("K2P", "ottawa", "postal"),
        ("K4A 1A1", "ottawa", "postal"),
        ("M5V 3L9", "toronto", "postal"),
        ("H2X 1Y4", "montreal", "postal"),
        ("H7N", "laval", "postal"),
        ("G1R 4S9", "quebec", "postal"),
        ("J8X", "gatineau", "postal"),
        ("T2P 1J9", "calgary", "postal"),
        ("T5J", "edmonton", "postal"),
        ("V6B 1A1", "vancouver", "postal"),
        ("V3S", "surrey", "postal"),
        ("R3C", "winnipeg", "postal"),
        ("B3H 4R2", "halifax", "postal"),
        ("L7L", "burlington", "postal"),
        ("L6H", "oakville", "postal"),
        ("L9T", "milton", "postal"),
        ("L7G", "halton-hills", "postal"),
        ("L5B 1M2", "mississauga", "postal"),
        ("my postal code is K1A 0B1", "ottawa", "postal"),
        ("mon code postal est H3A 0G4", "montreal", "postal"),
    ],
)
def test_hand_map_match(hand: Directory, text: str, id: str | None, via: str | None) -> None:
    result = hand.match(text)
    if id is None:
        assert isinstance(result, NoMatch), describe(result)
    else:
        assert isinstance(result, Match), describe(result)
        assert (result.municipality.id, result.via) == (id, via)


@pytest.mark.parametrize(
    "text",
    [
        "hello",
        "pothole on main st",
        "Pothole on Main St.",
        "the garbage truck never came",
        "il y a un nid de poule",
        "yes",
        "no",
        "ok",
        "help",
        "bonjour",
        "merci",
        "1",
        "",
        "   ",
        "?!",
        "🙂",
        "x" * 500,
        "Ontario",  # a province alone is not a municipality
        "H4X 1A1",  # Montréal-Ouest: not in the hand map
        "A1A 1A1",  # St. John's, NL
        "K0A 1A0",  # rural eastern Ontario, shared by many towns
    ],
)
def test_hand_map_no_match(hand: Directory, text: str) -> None:
    assert isinstance(hand.match(text), NoMatch), describe(hand.match(text))


def test_province_that_contradicts_the_name_asks(hand: Directory) -> None:
    result = hand.match("Ottawa QC")
    assert isinstance(result, Ambiguous)
    assert [m.id for m in result.candidates] == ["ottawa"]


def test_hand_map_covers_the_311_evidence(hand: Directory) -> None:
    evidence = json.loads(EVIDENCE_JSON.read_text(encoding="utf-8"))["municipalities"]
    assert len(hand) == len(evidence) == 17
    for entry in evidence:
        result = hand.match(f"{entry['name']} {entry['province_code']}")
        assert isinstance(result, Match), entry["name"]
        assert result.municipality.province == entry["province_code"]


def test_hand_map_names_and_aliases_belong_to_one_entry(hand: Directory) -> None:
    owners: dict[str, set[str]] = defaultdict(set)
    for m in hand.municipalities:
        for spelling in (m.name, m.name_fr or m.name, *m.aliases):
            owners[normalize(spelling)].add(m.id)
    assert {k: v for k, v in owners.items() if len(v) > 1} == {}


def test_hand_map_postal_prefixes_never_overlap(hand: Directory) -> None:
    claimed = [(p, m.id) for m in hand.municipalities for p in m.postal_prefixes]
    for prefix, owner in claimed:
        assert re.fullmatch(r"[A-Z][0-9][A-Z]?", prefix), prefix
        overlapping = {
            o for p, o in claimed if o != owner and (p.startswith(prefix) or prefix.startswith(p))
        }
        assert not overlapping, (prefix, owner, overlapping)


def test_hand_map_entries(hand: Directory) -> None:
    for m in hand.municipalities:
        assert m.mailbox == f"311@{m.id}.example"
        assert m.agents == (f"@{m.id}.example",)
        assert m.postal_prefixes and m.aliases, m.id
        expected = (
            ("fr", "en") if m.province == "QC" else ("en", "fr") if m.id == "ottawa" else ("en",)
        )
        assert m.languages == expected, m.id


# --------------------------------------------------------------------------- Directory rules


def test_get_len_and_duplicate_ids() -> None:
    directory = Directory([town("a", "Alpha"), town("b", "Beta")])
    assert len(directory) == 2
    assert directory.get("b") == town("b", "Beta")
    assert directory.get("c") is None
    with pytest.raises(ValueError, match="duplicate"):
        Directory([town("a", "Alpha"), town("a", "Other")])


def test_exact_hit_wins_over_typo_matches() -> None:
    directory = Directory([town("milton", "Milton"), town("hilton", "Hilton")])
    assert matched_id(directory.match("Milton")) == "milton"
    assert matched_id(directory.match("Hilton")) == "hilton"
    assert matched_id(directory.match("Miltn")) == "milton"  # one edit from Milton only


def test_typos_equally_close_to_several_names_are_ambiguous_best_first() -> None:
    directory = Directory([town("milton", "Milton"), town("hilton", "Hilton")])
    result = directory.match("Xilton")
    assert isinstance(result, Ambiguous)
    assert {m.id for m in result.candidates} == {"milton", "hilton"}


def test_typo_candidates_are_capped_at_five() -> None:
    names = ["Barkton", "Darkton", "Farkton", "Larkton", "Markton", "Parkton", "Sarkton"]
    directory = Directory([town(n.lower(), n) for n in names])
    result = directory.match("Zarkton")
    assert isinstance(result, Ambiguous)
    assert len(result.candidates) == 5


def test_shared_name_and_alias_is_ambiguous_never_picked() -> None:
    directory = Directory(
        [
            town("halifax", "Halifax", "NS", aliases=("Bedford",)),
            town("bedford-qc", "Bedford", "QC"),
        ]
    )
    result = directory.match("Bedford")
    assert isinstance(result, Ambiguous)
    assert [m.id for m in result.candidates] == ["halifax", "bedford-qc"]
    assert matched_id(directory.match("Bedford, N.S.")) == "halifax"
    assert matched_id(directory.match("Bedford Québec")) == "bedford-qc"


def test_postal_prefix_longest_wins_and_shared_is_ambiguous() -> None:
    directory = Directory(
        [
            town("a", "Alpha", postal_prefixes=("K1",)),
            town("b", "Beta", postal_prefixes=("K1A",)),
            town("c", "Gamma", postal_prefixes=("K2B",)),
            town("d", "Delta", postal_prefixes=("K2B",)),
        ]
    )
    assert directory.match("K1A 0B1") == Match(directory.get("b"), via="postal")  # type: ignore[arg-type]
    assert matched_id(directory.match("k1p1j1")) == "a"
    shared = directory.match("K2B 1A1")
    assert isinstance(shared, Ambiguous)
    assert [m.id for m in shared.candidates] == ["c", "d"]
    assert isinstance(directory.match("K3A 1A1"), NoMatch)


@pytest.mark.parametrize(
    ("city", "state", "id"),
    [
        ("OTTAWA", "ON", "ottawa"),
        ("Ottawa", "Ontario", "ottawa"),
        ("OTTAWA-HULL", "ON", "ottawa"),
        ("OTTAWA-HULL", "QC", "gatineau"),
        ("MONTREAL", "QC", "montreal"),
        ("QUEBEC", "QC", "quebec"),
        ("NEPEAN", "ON", "ottawa"),
        ("TORONTO", None, "toronto"),
        ("TORONTO", "", "toronto"),
        ("OTTAWA", "QC", None),
        ("OTAWA", "ON", None),  # suggestions are exact, never typo matches
        ("BUFFALO", "NY", None),
        ("TORONTO", "NY", None),
        (None, "ON", None),
        ("", "ON", None),
    ],
)
def test_suggest_on_hand_map(
    hand: Directory, city: str | None, state: str | None, id: str | None
) -> None:
    suggestion = hand.suggest(city, state)
    assert (suggestion.id if suggestion else None) == id


# --------------------------------------------------------------------------- census directory

MULTI_PROVINCE: dict[str, set[str]] = defaultdict(set)
WITHIN_PROVINCE: dict[tuple[str, str], list[str]] = defaultdict(list)
for _row in ROWS:
    if _row["name_in_multiple_provinces"] == "1":
        MULTI_PROVINCE[_row["name"]].add(_row["province_code"])
    if _row["name_repeated_within_province"] == "1":
        WITHIN_PROVINCE[(_row["name"], _row["province_code"])].append(_row["csd_code"])


def test_census_flags_are_what_the_data_readme_says() -> None:
    assert len(ROWS) == 5162
    assert len(MULTI_PROVINCE) == 83
    assert len(WITHIN_PROVINCE) == 131


@pytest.mark.parametrize("name", sorted(MULTI_PROVINCE))
def test_census_name_in_several_provinces_is_ambiguous(census: Directory, name: str) -> None:
    result = census.match(name)
    assert isinstance(result, Ambiguous), describe(result)
    assert MULTI_PROVINCE[name] <= {m.province for m in result.candidates}
    named = [m for m in result.candidates if m.name == name or m.name_fr == name]
    assert {m.province for m in named} == MULTI_PROVINCE[name]


def test_census_name_with_its_province_is_decided(census: Directory) -> None:
    wrong = {}
    for name, provinces in MULTI_PROVINCE.items():
        for province in provinces:
            result = census.match(f"{name}, {province}")
            inside = [r for r in ROWS if r["name"] == name and r["province_code"] == province]
            if len(inside) == 1:
                ok = isinstance(result, Match) and result.municipality.province == province
            else:
                ok = isinstance(result, Ambiguous) and {m.province for m in result.candidates} == {
                    province
                }
            if not ok:
                wrong[f"{name}, {province}"] = describe(result)
    assert wrong == {}


def test_census_name_repeated_within_a_province_is_ambiguous(census: Directory) -> None:
    wrong = {}
    for (name, province), codes in WITHIN_PROVINCE.items():
        for text in (name, f"{name} {province}"):
            result = census.match(text)
            ids = {m.id for m in result.candidates} if isinstance(result, Ambiguous) else set()
            if not all(any(i.endswith(code) for i in ids) for code in codes):
                wrong[text] = describe(result)
    assert wrong == {}


def test_census_unique_names_match_their_subdivision(census: Directory) -> None:
    def spellings(row: dict[str, str]) -> set[str]:
        names = (row["name"], row["name_fr"])
        # "St. George's" is also read as "St Georges" (= Saint-Georges)
        return {normalize(n) for n in names} | {normalize(re.sub("['’]", "", n)) for n in names}

    keys: dict[str, set[str]] = defaultdict(set)
    for row in ROWS:
        for key in spellings(row):
            keys[key].add(row["csd_code"])
    unique = [r for r in ROWS if all(len(keys[k]) == 1 for k in spellings(r))]
    assert len(unique) > 4500
    by_code = {m.id: m for m in census.municipalities}
    wrong = {}
    for row in unique:
        for spelling in {row["name"], row["name_fr"]}:
            result = census.match(spelling)
            if not isinstance(result, Match) or result.municipality.name != row["name"]:
                wrong[spelling] = describe(result)
    assert wrong == {}
    assert len(by_code) == len(ROWS)


@pytest.mark.parametrize(
    ("text", "name", "province"),
    [
        ("Otawa", "Ottawa", "ON"),
        ("monreal", "Montréal", "QC"),
        ("Sainte-Catharines", "St. Catharines", "ON"),
        ("st catharines", "St. Catharines", "ON"),
        ("trois rivieres", "Trois-Rivières", "QC"),
        ("Trois-Rivieres", "Trois-Rivières", "QC"),
        ("Quebec City", "Québec", "QC"),
        ("sherbrooke qc", "Sherbrooke", "QC"),
        ("Sherbrooke, Î.-P.-É.", "Sherbrooke", "PE"),
        ("Victoria BC", "Victoria", "BC"),
        ("Victoria, B.C.", "Victoria", "BC"),
        ("Richmond Colombie-Britannique", "Richmond", "BC"),
        ("Saskatoon", "Saskatoon", "SK"),
        ("saskatoun", "Saskatoon", "SK"),
        ("Sudbury", "Greater Sudbury", "ON"),
        ("Grand Sudbury", "Greater Sudbury", "ON"),
        ("st johns", "St. John's", "NL"),
        ("Saint John", "Saint John", "NB"),
        ("lassomption", "L'Assomption", "QC"),
        ("Edwardsburgh", "Edwardsburgh/Cardinal", "ON"),
        ("j'habite à Rimouski", "Rimouski", "QC"),
        ("Rivière-du-Loup", "Rivière-du-Loup", "QC"),
        ("riviere du loup", "Rivière-du-Loup", "QC"),
        ("Kitchner", "Kitchener", "ON"),
        ("Victoria BC V8W 1P6", "Victoria", "BC"),  # no postal prefixes in the census
        ("Labrador City", "Labrador City", "NL"),  # ends with a province name
        ("Happy Valley-Goose Bay, Labrador", "Happy Valley-Goose Bay", "NL"),
    ],
)
def test_census_match(census: Directory, text: str, name: str, province: str) -> None:
    result = census.match(text)
    assert isinstance(result, Match), describe(result)
    assert (result.municipality.name, result.municipality.province) == (name, province)


@pytest.mark.parametrize(
    ("text", "provinces"),
    [
        ("Victoria", {"BC", "MB", "NL", "PE"}),
        ("victoira", {"BC", "MB", "NL", "PE"}),
        ("Kingston", {"NB", "ON"}),
        ("St. Albert", {"AB", "QC"}),  # St. Albert and Saint-Albert
        ("Seal Cove", {"NL"}),  # Seal Cove (Fortune Bay), Seal Cove (White Bay)
        ("Hamilton", {"ON"}),  # the city and the township
    ],
)
def test_census_ambiguous(census: Directory, text: str, provinces: set[str]) -> None:
    result = census.match(text)
    assert isinstance(result, Ambiguous), describe(result)
    assert {m.province for m in result.candidates} == provinces
    assert len(result.candidates) >= 2


@pytest.mark.parametrize(
    "text",
    [
        "hello",
        "pothole on main st",
        "the streetlight is out",
        "nid de poule",
        "merci",
        "yes",
        "K1A 0B1",
    ],
)
def test_census_no_match(census: Directory, text: str) -> None:
    assert isinstance(census.match(text), NoMatch), describe(census.match(text))


@pytest.mark.parametrize(
    ("city", "state", "expected"),
    [
        ("VICTORIA", "BC", ("Victoria", "BC")),
        ("ST CATHARINES", "ON", ("St. Catharines", "ON")),
        ("SASKATOON", "SK", ("Saskatoon", "SK")),
        ("VICTORIA", None, None),  # in four provinces
        ("HAMILTON", "ON", None),  # twice in Ontario
    ],
)
def test_suggest_on_census(
    census: Directory, city: str, state: str | None, expected: tuple[str, str] | None
) -> None:
    suggestion = census.suggest(city, state)
    assert ((suggestion.name, suggestion.province) if suggestion else None) == expected


def test_paths_point_at_the_test_data() -> None:
    assert CENSUS_CSV.is_file() and isinstance(CENSUS_CSV, Path)
