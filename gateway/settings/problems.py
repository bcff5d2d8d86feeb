"""Problems: what is wrong with a settings file or a municipality map, and how it is worded.

Contract:

- `Problem(file, line, key, message)` prints as `file:line: key: message` (`file: key: message`
  without a line, `file:line: message` without a key). `file` is the file, or the environment
  variable, the value came from; `line` is 1-based. A warning (`warning=True`: usable, but
  worth a look) prints `warning: ` before its message; `check-config` prints warnings and
  its exit status ignores them.
- `ConfigError(problems)` carries *every* problem found; its text is one problem a line.
- `in_order(problems, first)`: the problems of file `first` in line order, then the others.
- `unknown(word, choices, what)`: "unknown setting (did you mean 'x'?)", the closest choice named.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["ConfigError", "Problem", "in_order", "suggest", "unknown"]


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the configuration: `file:line: key: message`.

    `file` is the file (or the environment variable) the value came from; `line` is 1-based,
    or None where there is no line (environment, a key that is missing altogether).
    """

    file: str
    line: int | None
    key: str
    message: str
    warning: bool = False  # usable as it is, but worth a look (never makes a ConfigError)

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        message = f"warning: {self.message}" if self.warning else self.message
        if self.key:
            return f"{where}: {self.key}: {message}"
        return f"{where}: {message}"


class ConfigError(Exception):
    """The configuration cannot be used; `problems` lists everything that is wrong."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems: list[Problem] = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))

    def __str__(self) -> str:
        return "\n".join(str(p) for p in self.problems)


def in_order(problems: list[Problem], first: str) -> list[Problem]:
    """Problems of file `first` in line order, then those of other sources (variables)."""
    return sorted(problems, key=lambda p: (p.file != first, p.file, p.line or 0))


def suggest(word: str, choices: Iterable[str]) -> str | None:
    """The choice closest to `word` (a likely typo), or None."""
    close = difflib.get_close_matches(word.lower(), list(choices), n=1, cutoff=0.6)
    return close[0] if close else None


def unknown(word: str, choices: Iterable[str], what: str = "setting") -> str:
    """The message for a key that is not one of `choices`."""
    guess = suggest(word, choices)
    return f"unknown {what} (did you mean '{guess}'?)" if guess else f"unknown {what}"
