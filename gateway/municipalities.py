"""The municipality directory and the matcher (no I/O).

`Directory.match(text)` turns what a resident typed into a `Match`, an `Ambiguous`
set of candidates (each with its province), or `NoMatch`.
"""

from __future__ import annotations

from dataclasses import dataclass, field


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

    @property
    def label(self) -> str:
        """Name and province as shown to residents: "Victoria, BC"."""
        return f"{self.name}, {self.province}"


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
