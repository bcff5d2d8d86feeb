"""Building municipality_map.yaml from the census subdivisions (gateway.settings.directory_build)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from gateway.rules.municipalities import Ambiguous, Directory, Match, Municipality
from gateway.settings import load_municipality_map
from gateway.settings.directory_build import (
    MAP_KEYS,
    CensusSubdivision,
    build_census_directory,
    build_directory_command,
    census_ids,
    dump_map,
    main,
    map_entry,
    read_census,
    slugify,
)
from tests.paths import REPO_ROOT, data_file

CENSUS_CSV = data_file("municipalities", "ocd_division_ids_ca", "derived_csd_with_province.csv")
EVIDENCE_JSON = data_file("municipalities", "canada_311_evidence.json")
HAND_MAP = REPO_ROOT / "municipality_map.yaml"


@pytest.fixture(scope="module")
def census() -> list[Municipality]:
    return build_census_directory(CENSUS_CSV)


def by_name(municipalities: list[Municipality], name: str, province: str) -> list[Municipality]:
    return [m for m in municipalities if m.name == name and m.province == province]


# --------------------------------------------------------------------------- ids


@pytest.mark.parametrize(
    ("text", "slug"),
    [
        ("Victoria", "victoria"),
        ("Saint-Jérôme", "saint-jerome"),
        ("St. John's", "st-john-s"),
        ("Port-Daniel—Gascons", "port-daniel-gascons"),
        ("Division No. 1, Subd. V", "division-no-1-subd-v"),
        ("Îles-de-la-Madeleine", "iles-de-la-madeleine"),
        ("!!!", ""),
    ],
)
def test_slugify(text: str, slug: str) -> None:
    assert slugify(text) == slug


def test_census_ids_get_the_code_only_when_a_slug_repeats() -> None:
    rows = [
        CensusSubdivision("1", "Victoria", "Victoria", "BC"),
        CensusSubdivision("2", "Victoria", "Victoria", "PE"),
        CensusSubdivision("3", "Hamilton", "Hamilton", "ON"),
        CensusSubdivision("4", "Hamilton", "Hamilton", "ON"),
        CensusSubdivision("5", "Saint-André", "Saint-André", "NB"),
        CensusSubdivision("6", "Saint-Andre", "Saint-Andre", "NB"),
        CensusSubdivision("7", "Ottawa", "Ottawa", "ON"),
    ]
    assert census_ids(rows, taken={"ottawa-on"}) == [
        "victoria-bc",
        "victoria-pe",
        "hamilton-on-3",
        "hamilton-on-4",
        "saint-andre-nb-5",
        "saint-andre-nb-6",
        "ottawa-on-7",
    ]


# --------------------------------------------------------------------------- census directory


def test_every_census_subdivision_has_one_entry(census: list[Municipality]) -> None:
    assert len(census) == 5162
    ids = [m.id for m in census]
    assert len(set(ids)) == len(ids)
    for m in census:
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", m.id), m.id
        assert len(m.id) <= 63, m.id  # the example mailbox's domain label
        assert m.mailbox == f"311@{m.id}.example"
        assert m.agents == (f"@{m.id}.example",)


def test_census_entries(census: list[Municipality]) -> None:
    (victoria,) = by_name(census, "Victoria", "BC")
    assert victoria.id == "victoria-bc"
    assert victoria.name_fr is None
    assert victoria.languages == ("en",)
    (sudbury,) = by_name(census, "Greater Sudbury", "ON")
    assert sudbury.name_fr == "Grand Sudbury"
    (montreal,) = by_name(census, "Montréal", "QC")
    assert montreal.languages == ("fr",)
    moncton = by_name(census, "Moncton", "NB")  # the city and the parish
    assert len(moncton) == 2
    for m in moncton:
        assert re.fullmatch(r"moncton-nb-\d{7}", m.id)
        assert m.languages == ("en", "fr")
    assert sum(1 for m in census if m.name_fr) == 6


def test_mailbox_and_agents_templates() -> None:
    municipalities = build_census_directory(
        CENSUS_CSV, mailbox_template="city+{id}@gw.example", agents_template=""
    )
    assert municipalities[0].mailbox == f"city+{municipalities[0].id}@gw.example"
    assert municipalities[0].agents == ()


def test_census_file_with_a_missing_column_is_an_error(tmp_path: Path) -> None:
    broken = tmp_path / "broken.csv"
    broken.write_text("csd_code,name\n1,Somewhere\n", encoding="utf-8")
    with pytest.raises(ValueError, match="name_fr, province_code"):
        read_census(broken)


# --------------------------------------------------------------------------- YAML


def test_dump_map_format(census: list[Municipality]) -> None:
    hand = load_municipality_map(HAND_MAP)
    text = dump_map([*hand[:3], *census[:3]])
    data = yaml.safe_load(text)
    assert list(data) == ["municipalities"]
    for entry in data["municipalities"]:
        keys = list(entry)
        assert keys == [k for k in MAP_KEYS if k in keys]  # the documented order
        assert {"id", "name", "province", "mailbox"} <= set(keys)
        assert all(entry[k] for k in keys)  # empty optional keys are left out
    assert "province: 'ON'" in text  # quoted: YAML 1.1 reads a bare ON as true
    assert "languages: [en, fr]" in text  # lists in flow style, as in DESIGN.md
    ottawa = data["municipalities"][2]
    assert ottawa["id"] == "ottawa" and "Orléans" in ottawa["aliases"]  # unicode kept


def test_dump_map_round_trips_through_the_config_loader(tmp_path: Path) -> None:
    hand = load_municipality_map(HAND_MAP)
    out = tmp_path / "map.yaml"
    out.write_text(dump_map(hand), encoding="utf-8")
    assert load_municipality_map(out) == hand


def test_map_entry_leaves_out_what_is_empty() -> None:
    m = Municipality(id="x-on", name="X", province="ON", mailbox="311@x.example", languages=())
    assert map_entry(m) == {"id": "x-on", "name": "X", "province": "ON", "mailbox": "311@x.example"}


# --------------------------------------------------------------------------- the command


def test_build_census_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "national.yaml"
    assert build_directory_command(CENSUS_CSV, out, None, None) == 0
    text = out.read_text(encoding="utf-8")
    assert text.startswith("# sms311 municipality directory")
    municipalities = load_municipality_map(out)
    assert len(municipalities) == 5162
    assert "wrote 5162 municipalities" in capsys.readouterr().out


@pytest.fixture(scope="module")
def merged_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("directory") / "national.yaml"
    assert build_directory_command(CENSUS_CSV, out, EVIDENCE_JSON, HAND_MAP) == 0
    return out


def test_build_merged_with_the_hand_map(merged_file: Path) -> None:
    merged = load_municipality_map(merged_file)
    hand = load_municipality_map(HAND_MAP)
    assert merged[: len(hand)] == hand  # curated entries kept as they are, first
    assert len(merged) == 5162  # each curated entry replaced its census subdivision
    ids = {m.id for m in merged}
    assert "ottawa" in ids and "ottawa-on" not in ids and "montreal-qc" not in ids
    assert "victoria-bc" in ids
    directory = Directory(merged)
    assert directory.match("Nepean") == Match(directory.get("ottawa"), via="alias")  # type: ignore[arg-type]
    assert directory.match("k1a0b1") == Match(directory.get("ottawa"), via="postal")  # type: ignore[arg-type]
    assert directory.match("Montréal") == Match(directory.get("montreal"), via="name")  # type: ignore[arg-type]
    bedford = directory.match("Bedford")  # a Halifax alias and two census subdivisions in QC
    assert isinstance(bedford, Ambiguous)
    assert {m.province for m in bedford.candidates} == {"NS", "QC"}


def test_merge_links_by_name_without_the_evidence(tmp_path: Path, merged_file: Path) -> None:
    out = tmp_path / "national.yaml"
    assert build_directory_command(CENSUS_CSV, out, None, HAND_MAP) == 0
    assert out.read_text(encoding="utf-8") == merged_file.read_text(encoding="utf-8")


def test_evidence_links_every_311_municipality_to_its_census_code() -> None:
    evidence = json.loads(EVIDENCE_JSON.read_text(encoding="utf-8"))["municipalities"]
    codes = {row.csd_code: row for row in read_census(CENSUS_CSV)}
    for entry in evidence:
        (code, name, _type) = entry["csd_matches"][0]
        assert codes[code].name == name and codes[code].province == entry["province_code"]


def test_main_parses_the_cli_arguments(tmp_path: Path, merged_file: Path) -> None:
    out = tmp_path / "national.yaml"
    argv = ["--census", str(CENSUS_CSV), "--output", str(out), "--merge", str(HAND_MAP)]
    assert main([*argv, "--evidence", str(EVIDENCE_JSON)]) == 0
    assert out.read_text(encoding="utf-8") == merged_file.read_text(encoding="utf-8")


def test_bad_inputs_exit_2_with_a_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "national.yaml"
    assert build_directory_command(tmp_path / "missing.csv", out, None, None) == 2
    assert "missing.csv" in capsys.readouterr().err
    bad_map = tmp_path / "bad.yaml"
    bad_map.write_text("municipalities:\n  - id: Not A Slug\n    name: X\n", encoding="utf-8")
    assert build_directory_command(CENSUS_CSV, out, None, bad_map) == 2
    assert "bad.yaml:2" in capsys.readouterr().err
    assert not out.exists()
