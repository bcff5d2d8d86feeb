"""The municipality map (`municipality_map.yaml`): its keys, and reading it with every problem.

Contract:

- `MAP_KEYS` are the keys of one entry, in the order they are written; this module is their
  one home (`directory_build` writes entries in this order, the reader accepts exactly these).
- `load_municipality_map(path) -> list[Municipality]`: read and validate the map, or raise
  `ConfigError` with every problem (`file:line: municipalities[3].mailbox: missing`).
- `read_map(path) -> (municipalities, problems)`: the same without raising (`check_config`).
- `map_warnings(path) -> [Problem(warning=True)]`: what is valid but worth a look, for
  `sms311 check-config`: every bare "@domain" agent entry, the default one included (anyone
  whose mail that domain authenticates may answer the municipality's residents).
- Ids, aliases and postal prefixes each belong to one municipality; postal prefixes come back
  upper case without spaces and must belong to the entry's province; `agents` defaults to the
  mailbox's "@domain", `languages` to ("en",); `canned_replies` (optional) become `CannedReply`s.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Mapping
from pathlib import Path

from gateway.rules.municipalities import CannedReply, Municipality
from gateway.settings.checks import DOMAIN_RE, check_email_address, one_of, shown
from gateway.settings.problems import ConfigError, Problem, in_order, unknown
from gateway.settings.yaml_lines import Node, parse_yaml, read_text

__all__ = [
    "CANNED_KEYS",
    "CANNED_REPLY_MAX_CHARS",
    "FSA_PROVINCES",
    "LANGUAGES",
    "MAP_KEYS",
    "PROVINCES",
    "load_municipality_map",
    "map_warnings",
    "read_map",
]

PROVINCES = ("AB", "BC", "MB", "NB", "NL", "NS", "NT", "NU", "ON", "PE", "QC", "SK", "YT")
LANGUAGES = ("en", "fr")

# First letter of a Canadian postal code (FSA) -> the province(s) it serves.
FSA_PROVINCES: Mapping[str, tuple[str, ...]] = {
    "A": ("NL",),
    "B": ("NS",),
    "C": ("PE",),
    "E": ("NB",),
    "G": ("QC",),
    "H": ("QC",),
    "J": ("QC",),
    "K": ("ON",),
    "L": ("ON",),
    "M": ("ON",),
    "N": ("ON",),
    "P": ("ON",),
    "R": ("MB",),
    "S": ("SK",),
    "T": ("AB",),
    "V": ("BC",),
    "X": ("NT", "NU"),
    "Y": ("YT",),
}
# 1-3 characters: a valid first letter, then a digit, then a letter (D F I O Q U are never used).
_FSA_RE = re.compile(r"[ABCEGHJKLMNPRSTVXY](?:[0-9](?:[ABCEGHJKLMNPRSTVWXYZ])?)?")
_SLUG_RE = re.compile(r"[a-z0-9-]+")


def _check_agent(value: str) -> str:
    value = value.strip()
    if value.startswith("@"):
        if not DOMAIN_RE.fullmatch(value[1:]):
            raise ValueError("is not a valid @domain")
        return value
    try:
        return check_email_address(value)
    except ValueError:
        raise ValueError("must be an email address or an @domain") from None


MAP_KEYS = (
    "id",
    "name",
    "name_fr",
    "province",
    "aliases",
    "postal_prefixes",
    "mailbox",
    "agents",
    "languages",
    "canned_replies",
)
"""Keys of one municipality entry, in the order `sms311 directory build` writes them."""
CANNED_KEYS = ("title", "text", "language")
CANNED_REPLY_MAX_CHARS = 1600  # the longest SMS body Twilio takes (about 10 segments)


def _fold(text: str) -> str:
    """Compare names loosely: case, accents, punctuation and spacing ignored."""
    decomposed = unicodedata.normalize("NFKD", text)
    plain = "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()
    return " ".join(re.sub(r"[^\w]+", " ", plain).split())


def _normalize_fsa(text: str) -> str:
    """Upper case without spaces: "k1a" or "K1 A" -> "K1A" (not validated)."""
    return "".join(text.split()).upper()


class _MapReader:
    """Validates one municipality_map.yaml, collecting problems."""

    def __init__(self, src: str) -> None:
        self.src = src
        self.problems: list[Problem] = []
        self.warnings: list[Problem] = []

    def problem(self, node: Node, key: str, message: str) -> None:
        self.problems.append(Problem(self.src, node.line, key, message))

    def read(self, root: Node | None) -> list[Municipality]:
        if root is None or root.kind != "map":
            line = root.line if root is not None else None
            self.problems.append(
                Problem(self.src, line, "municipalities", "missing (a list of municipalities)")
            )
            return []
        for key, child in root.keys.items():
            if key != "municipalities":
                self.problem(child, key, unknown(key, ["municipalities"], "key"))
        entries = root.keys.get("municipalities")
        if entries is None:
            self.problems.append(Problem(self.src, None, "municipalities", "missing"))
            return []
        if entries.kind != "seq":
            self.problem(entries, "municipalities", "must be a list of municipalities")
            return []
        if not entries.items:
            self.problem(entries, "municipalities", "must list at least one municipality")
        result: list[Municipality] = []
        for i, entry in enumerate(entries.items):
            municipality = self.entry(entry, f"municipalities[{i}]")
            if municipality is not None:
                result.append(municipality)
        self.check_unique(entries.items)
        return result

    def string(self, node: Node, key: str) -> str | None:
        if node.kind != "scalar" or node.is_null:
            self.problem(node, key, "must be a string")
            return None
        if not node.text.strip():
            self.problem(node, key, "must not be empty")
            return None
        return node.text.strip()

    def strings(self, node: Node, key: str) -> list[tuple[Node, str]] | None:
        if node.kind != "seq":
            self.problem(node, key, "must be a list, e.g. [a, b]")
            return None
        result = []
        for j, item in enumerate(node.items):
            text = self.string(item, f"{key}[{j}]")
            if text is not None:
                result.append((item, text))
        return result

    def entry(self, node: Node, path: str) -> Municipality | None:
        if node.kind != "map":
            self.problem(node, path, "must be a mapping (id: …, name: …, …)")
            return None
        before = len(self.problems)
        keys = node.keys
        for key, extra in keys.items():
            if key not in MAP_KEYS:
                self.problem(extra, f"{path}.{key}", unknown(key, MAP_KEYS, "key"))
        fields: dict[str, str | None] = {}
        for key in ("id", "name", "province", "mailbox", "name_fr"):
            child = keys.get(key)
            if child is None or child.is_null:
                if key != "name_fr":
                    self.problem(node, f"{path}.{key}", "missing")
                fields[key] = None
                continue
            fields[key] = self.string(child, f"{path}.{key}")
        ident, province, mailbox = fields["id"], fields["province"], fields["mailbox"]
        if ident is not None and not _SLUG_RE.fullmatch(ident):
            self.problem(keys["id"], f"{path}.id", "must be a slug of a-z, 0-9 and -")
        if province is not None:
            province = province.upper()
            if province not in PROVINCES:
                self.problem(
                    keys["province"],
                    f"{path}.province",
                    f"must be a province or territory code: {' '.join(PROVINCES)}",
                )
                province = None
        if mailbox is not None:
            try:
                mailbox = check_email_address(mailbox)
            except ValueError as exc:
                self.problem(keys["mailbox"], f"{path}.mailbox", str(exc))
                mailbox = None

        aliases = self.list_of(keys, "aliases", path, lambda text: text) or []
        prefixes = self.postal_prefixes(keys, path, province)
        agents = self.list_of(keys, "agents", path, _check_agent)
        if agents == []:
            self.problem(
                keys["agents"], f"{path}.agents", "must name at least one address or @domain"
            )
        if agents is None and mailbox is not None:
            agents = ["@" + mailbox.rpartition("@")[2]]
            where = keys.get("mailbox", node)
            self.domain_warning(where, f"{path}.agents", agents[0], default=True)
        elif agents:
            for j, item in enumerate(keys["agents"].items):
                text = item.text.strip().lower() if item.kind == "scalar" else ""
                if text.startswith("@") and DOMAIN_RE.fullmatch(text[1:]):
                    self.domain_warning(item, f"{path}.agents[{j}]", text)
        languages = self.list_of(keys, "languages", path, one_of(LANGUAGES))
        if languages == []:
            self.problem(keys["languages"], f"{path}.languages", "must list en, fr or both")
        canned = self.canned_replies(keys, path)
        if len(self.problems) > before:
            return None
        assert ident is not None and fields["name"] is not None
        assert province is not None and mailbox is not None
        return Municipality(
            id=ident,
            name=fields["name"],
            province=province,
            mailbox=mailbox,
            name_fr=fields["name_fr"],
            aliases=tuple(dict.fromkeys(aliases)),
            postal_prefixes=tuple(dict.fromkeys(prefixes)),
            agents=tuple(dict.fromkeys(agents or ())),
            languages=tuple(dict.fromkeys(languages or ("en",))),
            canned_replies=tuple(canned),
        )

    def domain_warning(self, node: Node, key: str, domain: str, *, default: bool = False) -> None:
        """Warn that a bare "@domain" lets anyone at that domain answer residents."""
        how = (
            f"not set, so it is the mailbox's domain, {domain}: "
            if default
            else f"{domain} is a whole domain: "
        )
        self.warnings.append(Problem(
            self.src, node.line, key,
            f"{how}anyone whose mail {domain[1:]} authenticates can answer residents; "
            "list the agents' full addresses instead",
            warning=True,
        ))  # fmt: skip

    def list_of(
        self, keys: Mapping[str, Node], key: str, path: str, check: Callable[[str], str]
    ) -> list[str] | None:
        """The checked strings of list `key`; None when absent (or broken)."""
        node = keys.get(key)
        if node is None or node.is_null:
            return None
        items = self.strings(node, f"{path}.{key}")
        if items is None:
            return None
        result = []
        for j, (item, text) in enumerate(items):
            try:
                result.append(check(text))
            except ValueError as exc:
                self.problem(item, f"{path}.{key}[{j}]", str(exc))
        return result

    def canned_replies(self, keys: Mapping[str, Node], path: str) -> list[CannedReply]:
        """`canned_replies: [{title: …, text: …, language: en|fr}, …]` (optional)."""
        node = keys.get("canned_replies")
        if node is None or node.is_null:
            return []
        key = f"{path}.canned_replies"
        if node.kind != "seq":
            self.problem(node, key, "must be a list of {title: …, text: …}")
            return []
        result: list[CannedReply] = []
        seen: dict[tuple[str, str | None], tuple[int, int | None]] = {}
        for j, item in enumerate(node.items):
            item_key = f"{key}[{j}]"
            if item.kind != "map":
                self.problem(item, item_key, "must be a mapping {title: …, text: …}")
                continue
            before = len(self.problems)
            for name, extra in item.keys.items():
                if name not in CANNED_KEYS:
                    self.problem(extra, f"{item_key}.{name}", unknown(name, CANNED_KEYS, "key"))
            values: dict[str, str | None] = {}
            for name in CANNED_KEYS:
                child = item.keys.get(name)
                if child is None or child.is_null:
                    if name != "language":
                        self.problem(item, f"{item_key}.{name}", "missing")
                    values[name] = None
                    continue
                values[name] = self.string(child, f"{item_key}.{name}")
            text, language = values["text"], values["language"]
            if text is not None and len(text) > CANNED_REPLY_MAX_CHARS:
                self.problem(
                    item.keys["text"],
                    f"{item_key}.text",
                    f"is {len(text)} characters; at most {CANNED_REPLY_MAX_CHARS}",
                )
            if language is not None:
                try:
                    language = one_of(LANGUAGES)(language)
                except ValueError as exc:
                    self.problem(item.keys["language"], f"{item_key}.language", str(exc))
            title = values["title"]
            if title is not None:
                first = seen.setdefault((_fold(title), language), (j, item.keys["title"].line))
                if first[0] != j:
                    self.problem(
                        item.keys["title"],
                        f"{item_key}.title",
                        f"duplicate title {title!r} (also on line {first[1]})",
                    )
            if len(self.problems) > before:
                continue
            assert title is not None and text is not None
            result.append(CannedReply(title=title, text=text, language=language))
        return result

    def postal_prefixes(
        self, keys: Mapping[str, Node], path: str, province: str | None
    ) -> list[str]:
        node = keys.get("postal_prefixes")
        if node is None or node.is_null:
            return []
        items = self.strings(node, f"{path}.postal_prefixes")
        result = []
        for j, (item, text) in enumerate(items or []):
            key = f"{path}.postal_prefixes[{j}]"
            prefix = _normalize_fsa(text)
            if not _FSA_RE.fullmatch(prefix):
                self.problem(
                    item,
                    key,
                    f"{shown(text)} is not a postal code prefix (FSA, e.g. K1A, K1 or K)",
                )
                continue
            provinces = FSA_PROVINCES[prefix[0]]
            if province is not None and province not in provinces:
                self.problem(
                    item,
                    key,
                    f"{prefix} is a postal prefix of {' or '.join(provinces)}, not {province}",
                )
                continue
            result.append(prefix)
        return result

    def check_unique(self, entries: list[Node]) -> None:
        """Ids, aliases and postal prefixes each belong to one municipality."""
        ids: dict[str, int | None] = {}
        claims: dict[tuple[str, str], tuple[tuple[int, str], int | None]] = {}
        for i, entry in enumerate(entries):
            if entry.kind != "map":
                continue
            path = f"municipalities[{i}]"
            id_node = entry.keys.get("id")
            ident = id_node.text.strip() if id_node is not None and id_node.kind == "scalar" else ""
            if id_node is not None and ident:
                if ident in ids:
                    self.problem(
                        id_node, f"{path}.id", f"duplicate id {ident!r} (also on line {ids[ident]})"
                    )
                else:
                    ids[ident] = id_node.line
            owner = (i, ident or path)
            for key, what, norm in (
                ("aliases", "alias", _fold),
                ("postal_prefixes", "postal prefix", _normalize_fsa),
            ):
                node = entry.keys.get(key)
                if node is None or node.kind != "seq":
                    continue
                seen_here: set[str] = set()
                for j, item in enumerate(node.items):
                    if item.kind != "scalar" or item.is_null or not item.text.strip():
                        continue
                    value = norm(item.text)
                    if value in seen_here:
                        continue
                    seen_here.add(value)
                    other = claims.setdefault((key, value), (owner, item.line))
                    if other[0] != owner:
                        self.problem(
                            item,
                            f"{path}.{key}[{j}]",
                            f"{what} {item.text.strip()!r} is also claimed by "
                            f"{other[0][1]!r} (line {other[1]})",
                        )


def read_map(path: Path) -> tuple[list[Municipality], list[Problem]]:
    src = str(path)
    problems: list[Problem] = []
    text = read_text(path, problems)
    if text is None:
        return [], problems
    root = parse_yaml(src, text, problems)
    if problems:
        return [], problems
    reader = _MapReader(src)
    municipalities = reader.read(root)
    return municipalities, in_order(reader.problems, src)


def map_warnings(path: Path) -> list[Problem]:
    """What is valid in the map but worth a look (`Problem`s with `warning=True`), in line
    order: each bare "@domain" agent entry, and each `agents` left to default to the
    mailbox's @domain. Empty when the map cannot be read (`read_map` says why)."""
    src = str(path)
    problems: list[Problem] = []
    text = read_text(path, problems)
    if text is None:
        return []
    root = parse_yaml(src, text, problems)
    if problems:
        return []
    reader = _MapReader(src)
    reader.read(root)
    return in_order(reader.warnings, src)


def load_municipality_map(path: Path) -> list[Municipality]:
    """Read and validate municipality_map.yaml (format in DESIGN.md).

    Postal prefixes come back upper case without spaces; `agents` defaults to the mailbox's
    "@domain", `languages` to ("en",); `canned_replies` (optional: a list of `{title, text,
    language}`, text at most 1600 characters, language en|fr or absent) become
    `CannedReply`s. Raises ConfigError with every problem found.
    """
    municipalities, problems = read_map(path)
    if problems:
        raise ConfigError(problems)
    return municipalities
