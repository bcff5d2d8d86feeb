"""Compare reply parsers on the shared reply corpora: gateway.rules.reading against the libraries.

    .venv/bin/python bench/compare_reply_parsers.py [--failures]

Prints one row per approach and corpus: cases whose visible text meets the corpus's
expectation (tests/test_reply_corpora.py says how each expectations.json is read). Always
compares mail-parser-reply (a test dependency); also email-reply-parser (zapier) and talon
(mailgun) when they are importable. Neither is a dependency; to measure them, install them in a
scratch virtualenv (with this project's dependencies) and run this script with its python.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.rules import reading
from tests.reply_corpora import (
    OURS,
    Approach,
    library_approaches,
    load_corpora,
)
from tests.reply_corpora import evaluate as evaluate_approach


def optional_approaches() -> list[Approach]:
    found: list[Approach] = []
    try:
        from email_reply_parser import EmailReplyParser
    except ImportError:
        print("(email-reply-parser not installed: skipped)")
    else:
        found.append(
            Approach("email-reply-parser 0.5 (zapier)", lambda t: EmailReplyParser.parse_reply(t))
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from talon import quotations
    except ImportError:
        print("(talon not installed: skipped)")
    else:
        found.append(
            Approach(
                "talon 1.4 (mailgun)",
                quotations.extract_from_plain,
                html=lambda h: reading.html_to_text(quotations.extract_from_html(h)),
            )
        )
    return found


def main() -> None:
    show_failures = "--failures" in sys.argv
    corpora = load_corpora()
    approaches = [OURS, *library_approaches(), *optional_approaches()]
    names = list(corpora)
    print(f"{'approach':58} " + " ".join(f"{n.split('_')[0]:>14}" for n in names) + "       all")
    for approach in approaches:
        cells = []
        met = total = 0
        failures: list[str] = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for name in names:
                result = evaluate_approach(approach, name, corpora[name])
                cells.append(f"{result.met:>3}/{result.total:<3} {result.score:6.1%}")
                met += result.met
                total += result.total
                failures += [f"{name}: {f}" for f in result.failures]
        print(f"{approach.name[:58]:58} " + " ".join(cells) + f"  {met / total:6.1%}")
        if show_failures:
            for failure in failures:
                print(f"    {failure}")
    for name, corpus in corpora.items():
        for skipped in corpus.not_scored:
            print(f"not scored: {name}/{skipped.name}: {skipped.reason}")


if __name__ == "__main__":
    main()
