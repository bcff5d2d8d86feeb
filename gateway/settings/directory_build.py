"""Build a municipality directory from the Canadian census subdivisions.

`sms311 directory build --census CSV --output FILE [--merge municipality_map.yaml]`
writes a `municipality_map.yaml` with one entry per census subdivision (5,162 in the
2021 file), so that a national short code can serve every town. With `--merge`, the
hand-curated entries of an existing map (aliases, postal prefixes, real mailboxes) are
kept as they are and replace the census entries they stand for; every other census
subdivision is added after them.

The census file is the "derived" CSV of the Open Civic Data division ids
(`derived_csd_with_province.csv`: csd_code, name, name_fr, csd_type, province_code, …).
The product does not ship it; the command takes its path.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from gateway.rules.municipalities import Directory, Municipality, normalize
from gateway.settings.municipality_map import MAP_KEYS, load_municipality_map
from gateway.settings.problems import ConfigError

__all__ = [
    "CENSUS_COLUMNS",
    "ID_NAME_MAX",
    "MAP_KEYS",
    "CensusSubdivision",
    "MergeReport",
    "build_census_directory",
    "build_directory_command",
    "census_ids",
    "dump_map",
    "load_census_directory",
    "main",
    "map_entry",
    "merge_with_census",
    "read_census",
    "slugify",
]

CENSUS_COLUMNS = ("csd_code", "name", "name_fr", "province_code")
"""Columns `build_census_directory` needs in the census CSV."""


@dataclass(frozen=True)
class CensusSubdivision:
    """One row of the census CSV."""

    csd_code: str
    name: str
    name_fr: str
    province: str


def slugify(text: str) -> str:
    """ASCII, lower case, words joined by hyphens: "Saint-Jérôme" -> "saint-jerome"."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    plain = "".join(c for c in decomposed if not unicodedata.combining(c))
    return re.sub(r"[^a-z0-9]+", "-", plain).strip("-")


ID_NAME_MAX = 40
"""Longest name part of a census id, so that `311@<id>.example` stays a valid domain label."""


def _short_slug(name: str) -> str:
    """`slugify(name)` cut to `ID_NAME_MAX` characters at a word boundary."""
    slug = slugify(name) or "csd"
    if len(slug) <= ID_NAME_MAX:
        return slug
    cut = slug[: ID_NAME_MAX + 1].rsplit("-", 1)[0]
    return cut if cut else slug[:ID_NAME_MAX]


def read_census(csv_path: Path | str) -> list[CensusSubdivision]:
    """The rows of the census CSV, in file order. A missing column is a `ValueError`."""
    path = Path(csv_path)
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in CENSUS_COLUMNS if c not in (reader.fieldnames or ())]
        if missing:
            raise ValueError(f"{path}: missing column(s): {', '.join(missing)}")
        rows = []
        for line, row in enumerate(reader, start=2):
            name = (row["name"] or "").strip()
            province = (row["province_code"] or "").strip().upper()
            code = (row["csd_code"] or "").strip()
            if not name or not province or not code:
                raise ValueError(f"{path}:{line}: empty csd_code, name or province_code")
            rows.append(CensusSubdivision(code, name, (row["name_fr"] or "").strip(), province))
    return rows


def census_ids(rows: Sequence[CensusSubdivision], taken: Iterable[str] = ()) -> list[str]:
    """One unique id per row: "victoria-bc"; "hamilton-on-3525005" when a slug repeats.

    The name part is cut to `ID_NAME_MAX` characters at a word boundary, so that the
    example mailbox domain `<id>.example` stays valid. A slug of name + province that
    several rows share (the same name twice in one
    province, or two spellings that slugify alike), or that is in `taken`, gets the
    census code appended, for every row that shares it (ids do not depend on row order).
    """
    bases = [f"{_short_slug(r.name)}-{r.province.lower()}" for r in rows]
    counts = Counter(bases)
    reserved = set(taken)
    return [
        f"{base}-{r.csd_code}" if counts[base] > 1 or base in reserved else base
        for base, r in zip(bases, rows, strict=True)
    ]


def _languages(province: str) -> tuple[str, ...]:
    if province == "QC":
        return ("fr",)
    if province == "NB":
        return ("en", "fr")
    return ("en",)


def _census_municipalities(
    rows: Sequence[CensusSubdivision],
    ids: Sequence[str],
    mailbox_template: str,
    agents_template: str,
) -> list[Municipality]:
    return [
        Municipality(
            id=id_,
            name=r.name,
            province=r.province,
            mailbox=mailbox_template.format(id=id_),
            name_fr=r.name_fr if r.name_fr and r.name_fr != r.name else None,
            agents=(agents_template.format(id=id_),) if agents_template else (),
            languages=_languages(r.province),
        )
        for id_, r in zip(ids, rows, strict=True)
    ]


def build_census_directory(
    csv_path: Path | str,
    mailbox_template: str = "311@{id}.example",
    agents_template: str = "@{id}.example",
) -> list[Municipality]:
    """One `Municipality` per census subdivision, in file order.

    Ids are slugs of name + province ("victoria-bc", see `census_ids`); `name_fr` is set
    where the French name differs; languages are [fr] in Quebec, [en, fr] in New
    Brunswick, [en] elsewhere; mailbox and agents come from the templates (`{id}`).
    """
    rows = read_census(csv_path)
    return _census_municipalities(rows, census_ids(rows), mailbox_template, agents_template)


def load_census_directory(csv_path: Path | str) -> Directory:
    """A `Directory` of every census subdivision (example mailboxes)."""
    return Directory(build_census_directory(csv_path))


# --------------------------------------------------------------------------- YAML


def map_entry(m: Municipality) -> dict[str, Any]:
    """One municipality as a map entry: keys in `MAP_KEYS` order, empty optional keys left out."""
    values: dict[str, Any] = {
        "id": m.id,
        "name": m.name,
        "name_fr": m.name_fr if m.name_fr != m.name else None,
        "province": m.province,
        "aliases": list(m.aliases),
        "postal_prefixes": list(m.postal_prefixes),
        "mailbox": m.mailbox,
        "agents": list(m.agents),
        "languages": list(m.languages),
        "canned_replies": [
            {"title": c.title, "text": c.text} | ({"language": c.language} if c.language else {})
            for c in m.canned_replies
        ],
    }
    required = ("id", "name", "province", "mailbox")
    return {key: values[key] for key in MAP_KEYS if key in required or values[key]}


def dump_map(municipalities: Iterable[Municipality]) -> str:
    """`municipality_map.yaml` text (`municipalities:` list, lists of scalars in flow style)."""
    data = {"municipalities": [map_entry(m) for m in municipalities]}
    # yaml.safe_dump's dumper, from libyaml when available (same output, 5x faster)
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    text: str = yaml.dump(
        data, Dumper=dumper, sort_keys=False, allow_unicode=True, default_flow_style=None, width=100
    )
    return text


# --------------------------------------------------------------------------- merge


def _evidence_codes(evidence_json: Path) -> dict[tuple[str, str], set[str]]:
    """(province, normalized name) -> census codes, from canada_311_evidence.json."""
    data = json.loads(evidence_json.read_text(encoding="utf-8"))
    codes: dict[tuple[str, str], set[str]] = {}
    for entry in data.get("municipalities", []):
        key = (str(entry["province_code"]).upper(), normalize(str(entry["name"])))
        for match in entry.get("csd_matches", []):
            codes.setdefault(key, set()).add(str(match[0]))
    return codes


@dataclass(frozen=True)
class MergeReport:
    municipalities: list[Municipality]
    curated: int
    from_census: int
    unlinked: list[str]  # ids of curated entries that no census row stands for
    undecided: list[str]  # ids of curated entries whose name fits several census rows


def merge_with_census(
    base: Sequence[Municipality],
    rows: Sequence[CensusSubdivision],
    evidence: dict[tuple[str, str], set[str]] | None = None,
    mailbox_template: str = "311@{id}.example",
    agents_template: str = "@{id}.example",
) -> MergeReport:
    """The curated entries first, unchanged, then every census row none of them stands for.

    A curated entry stands for the census rows of its province whose name or French name
    is its name or French name (normalized), or for the census codes that `evidence`
    lists for it. When its name fits several rows of the province and no evidence
    decides, none of them is dropped (the entry is reported as undecided).
    """
    by_name: dict[tuple[str, str], list[CensusSubdivision]] = {}
    for r in rows:
        for spelling in {normalize(r.name), normalize(r.name_fr or r.name)}:
            by_name.setdefault((r.province, spelling), []).append(r)
    linked: set[str] = set()
    unlinked: list[str] = []
    undecided: list[str] = []
    for m in base:
        spellings = {normalize(m.name), normalize(m.name_fr or m.name)}
        codes = set().union(*((evidence or {}).get((m.province, s), set()) for s in spellings))
        if codes:
            linked |= codes
            continue
        candidates = {r.csd_code for s in spellings for r in by_name.get((m.province, s), [])}
        if len(candidates) == 1:
            linked |= candidates
        elif candidates:
            undecided.append(m.id)
        else:
            unlinked.append(m.id)
    rest = [r for r in rows if r.csd_code not in linked]
    ids = census_ids(rest, taken={m.id for m in base})
    added = _census_municipalities(rest, ids, mailbox_template, agents_template)
    return MergeReport(list(base) + added, len(base), len(added), unlinked, undecided)


_HEADER = """\
# sms311 municipality directory, generated by `sms311 directory build`
# from {census}{merged}: {total} municipalities,
# {curated} hand-curated and {census_count} census subdivisions. The census entries have
# example mailboxes (311@<id>.example): replace them with real addresses before use.
# The format is described in the header of the repository's municipality_map.yaml.
"""


def build_directory_command(
    census_csv: Path,
    output: Path,
    evidence_json: Path | None = None,
    base_map: Path | None = None,
) -> int:
    """`sms311 directory build`: write the directory; 0 on success, 2 on a bad input file."""
    try:
        rows = read_census(census_csv)
        base = load_municipality_map(base_map) if base_map else []
        evidence = _evidence_codes(evidence_json) if evidence_json else None
    except (OSError, ValueError, KeyError, TypeError, ConfigError) as exc:
        print(f"sms311 directory build: error: {exc}", file=sys.stderr)
        return 2
    report = merge_with_census(base, rows, evidence)
    ids = Counter(m.id for m in report.municipalities)
    assert max(ids.values(), default=1) == 1, "census_ids() keeps ids unique"
    header = _HEADER.format(
        census=census_csv.name,
        merged=f" merged with {base_map.name}" if base_map else "",
        total=len(report.municipalities),
        curated=report.curated,
        census_count=report.from_census,
    )
    output.write_text(header + dump_map(report.municipalities), encoding="utf-8")
    for id_ in report.undecided:
        print(
            f"sms311 directory build: warning: {id_}: its name fits several census "
            "subdivisions; all of them were kept",
            file=sys.stderr,
        )
    for id_ in report.unlinked:
        print(
            f"sms311 directory build: note: {id_}: no census subdivision has its name",
            file=sys.stderr,
        )
    print(
        f"wrote {len(report.municipalities)} municipalities to {output} "
        f"({report.curated} hand-curated, {report.from_census} from the census)"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m gateway.settings.directory_build --census CSV --output FILE [--merge MAP]`."""
    parser = argparse.ArgumentParser(
        prog="sms311 directory build",
        description="Build municipality_map.yaml from the census subdivisions.",
    )
    parser.add_argument("--census", type=Path, required=True, help="derived_csd_with_province.csv")
    parser.add_argument("--output", type=Path, required=True, help="the YAML file to write")
    parser.add_argument("--merge", type=Path, help="a hand-curated municipality_map.yaml to keep")
    parser.add_argument("--evidence", type=Path, help="canada_311_evidence.json (census codes)")
    args = parser.parse_args(argv)
    return build_directory_command(args.census, args.output, args.evidence, args.merge)


if __name__ == "__main__":
    raise SystemExit(main())
