"""The reply corpora under tests/data/email-replies, loaded as cases with their checks, and the
approaches that are scored on them (the gateway's rules, and the reply-parsing libraries when
they are installed). Used by tests/test_reply_corpora.py and bench/compare_reply_parsers.py."""


from __future__ import annotations

import email
import email.policy
import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.iterators import typed_subpart_iterator
from email.message import EmailMessage

from gateway.rules import reading
from tests.paths import TEST_DATA, data_file

REPLIES = TEST_DATA / "email-replies"
REPLY_ADDRESS = "reply+{token}@gateway.example.ca"

# -- the cases ---------------------------------------------------------------------------------
#
# Every case is one input (plain text, an HTML body or a raw .eml) and the checks its folder's
# expectations.json implies for the VISIBLE TEXT (what would be texted). The upstream suites
# assert more than that (fragment lists, talon's internal marker strings); only what says
# something about the visible reply is used:
#
# - parse_reply_equals / reply_stripped_equals / expected_reply: equal after `norm` (every line
#   stripped, runs of blank lines collapsed: the gateway tidies whitespace, and talon's HTML
#   cases are compared without whitespace upstream too); parse_reply_not_contains /
#   reply_contains / result_not_contains / result_nonempty: as named; max_seconds: time.
# - fragment_equals / fragment_regex / fragment_contains (github and zapier "fragments"): the
#   visible text is the non-hidden fragments joined. A check on a non-hidden, non-quoted
#   fragment must be found in the visible text; a check on a HIDDEN fragment must NOT be
#   found there (except checks too generic to say anything: "On", ">", "^> ", "--", "\n");
#   a check on a non-hidden QUOTED fragment (quoted text between reply paragraphs) is not
#   used: upstream keeps it visible, an SMS gateway may drop it.
#   Which fragments are hidden comes from fragments_hidden; where upstream gives no list, it is
#   derived below (DERIVED_HIDDEN) from upstream's own rule: quoted, signature and blank
#   fragments at the bottom are hidden.
# - fragment_count == 1 and nothing else: the whole body is the reply.
# - a case none of whose assertions says anything about the visible text is not scored
#   (Corpus.not_scored, with the reason; test_corpora_are_complete pins the list).

DERIVED_HIDDEN: dict[tuple[str, str], list[bool]] = {
    # [top reply, "On … wrote:" + "> …" quote at the bottom]
    ("github_email_reply_parser", "email_1_4.txt"): [False, True],
    ("github_email_reply_parser", "email_1_6.txt"): [False, True],
    ("github_email_reply_parser", "email_1_7.txt"): [False, True],
    ("github_email_reply_parser", "email_one_is_not_on.txt"): [False, True],
    ("zapier_email_reply_parser", "email_1_4.txt"): [False, True],
    ("zapier_email_reply_parser", "email_1_6.txt"): [False, True],
    ("zapier_email_reply_parser", "email_1_7.txt"): [False, True],
}
GENERIC_PATTERNS = frozenset({"On", "^On", ">", "^> ", "--", "\n"})

Check = Callable[[str, float], bool]  # (visible text, seconds) -> met?


@dataclass(frozen=True)
class Case:
    corpus: str
    name: str
    kind: str  # "plain" | "html" | "eml"
    source: str | bytes
    checks: tuple[tuple[str, Check], ...]


@dataclass
class NotScored:
    corpus: str
    name: str
    reason: str


@dataclass
class Corpus:
    cases: list[Case] = field(default_factory=list)
    not_scored: list[NotScored] = field(default_factory=list)


def norm(text: str) -> str:
    lines = [line.strip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    out: list[str] = []
    for line in lines:
        if not line and (not out or not out[-1]):
            continue
        out.append(line)
    return "\n".join(out).strip()


def no_space(text: str) -> str:
    return re.sub(r"\s", "", text)


def _equals(expected: str) -> tuple[str, Check]:
    return (f"== {expected[:40]!r}", lambda got, _t: norm(got) == norm(expected))


def _contains(expected: str, *, present: bool = True) -> tuple[str, Check]:
    label = ("contains " if present else "lacks ") + repr(expected[:40])
    return (label, lambda got, _t: (norm(expected) in norm(got)) == present)


def _regex(pattern: str, *, present: bool = True) -> tuple[str, Check]:
    rx = re.compile(pattern, re.MULTILINE)
    label = ("matches " if present else "does not match ") + repr(pattern)

    def check(got: str, _t: float) -> bool:
        texts = (norm(got), got.replace("\r\n", "\n"))
        found = [rx.search(t) is not None for t in texts]
        return any(found) if present else not any(found)

    return (label, check)


def _within(seconds: float) -> tuple[str, Check]:
    return (f"within {seconds}s", lambda _got, t: t <= seconds)


def _reply_parser_corpus(folder: str) -> Corpus:
    spec = json.loads(data_file("email-replies", folder, "expectations.json").read_text())
    corpus = Corpus()
    for name, case in spec["cases"].items():
        body = data_file("email-replies", folder, "emails", name).read_bytes().decode("utf-8")
        assertions = case.get("assertions", [])
        hidden: list[bool] | None = None
        quoted: list[bool] | None = None
        for a in assertions:
            if a["kind"] == "fragments_hidden":
                hidden = a["expected"]
            elif a["kind"] == "fragments_quoted":
                quoted = a["expected"]
        hidden = hidden or DERIVED_HIDDEN.get((folder, name))
        checks: list[tuple[str, Check]] = []
        for a in assertions:
            kind = a["kind"]
            if kind in ("parse_reply_equals", "reply_stripped_equals"):
                checks.append(_equals(a["expected"]))
            elif kind == "parse_reply_not_contains":
                checks.append(_contains(a["expected"], present=False))
            elif kind == "reply_contains":
                checks.append(_contains(a["expected"]))
            elif kind == "max_seconds":
                checks.append(_within(float(a["expected"])))
            elif kind in ("fragment_equals", "fragment_contains", "fragment_regex"):
                index = a["index"]
                if hidden is None:
                    raise AssertionError(f"{folder}/{name}: no hidden flags for fragment {index}")
                text = a.get("pattern", a.get("expected", ""))
                if hidden[index]:
                    if text in GENERIC_PATTERNS or not text.strip():
                        continue
                    if kind == "fragment_regex":
                        checks.append(_regex(text, present=False))
                    else:
                        checks.append(_contains(text, present=False))
                elif quoted is not None and quoted[index]:
                    continue  # quoted text between reply paragraphs: either way
                elif kind == "fragment_regex":
                    checks.append(_regex(text))
                else:
                    checks.append(_contains(text))
        only_count = [a for a in assertions if a["kind"] != "note"]
        if len(only_count) == 1 and only_count[0] == {"kind": "fragment_count", "expected": 1}:
            checks.append(_equals(body))
        if checks:
            corpus.cases.append(Case(folder, name, "plain", body, tuple(checks)))
        else:
            corpus.not_scored.append(
                NotScored(folder, name, "assertions only about fragment structure")
            )
    for extra in spec.get("inline_cases", []):
        corpus.cases.append(
            Case(
                folder,
                extra["upstream_test"],
                "plain",
                extra["input"],
                (_equals(extra["parse_reply_equals"]),),
            )
        )
    return corpus


def _talon_corpus() -> Corpus:
    folder = "talon"
    spec = json.loads(data_file("email-replies", folder, "expectations.json").read_text())
    corpus = Corpus()
    fixtures = REPLIES / folder / spec["fixtures_dir"]
    for name, case in spec["cases"].items():
        path = fixtures / name
        if not path.exists():
            corpus.not_scored.append(
                NotScored(folder, name, "fixture not in the test data (talon's ML signatures)")
            )
            continue
        fmt = case["format"]
        if name.endswith(".eml") and "WHOLE raw file" in fmt:
            checks: list[tuple[str, Check]] = []
            for a in case["assertions"]:
                if a["kind"] == "result_nonempty":
                    checks.append(("non-empty", lambda got, _t: bool(got.strip())))
                elif a["kind"] == "result_not_contains":
                    checks.append(_contains(a["expected"], present=False))
            raw_text = path.read_bytes().decode("utf-8", "replace")
            corpus.cases.append(Case(folder, name, "plain", raw_text, tuple(checks)))
        elif name.endswith(".eml"):
            corpus.cases.append(
                Case(folder, name, "eml", path.read_bytes(), (_equals(case["expected_reply"]),))
            )
        else:
            expected = case.get("expected_reply") or case.get("expected_visible_text")
            if expected is None:
                expected = re.sub(r"<[^>]*>", "", case["expected_html_no_whitespace"])
            want = no_space(expected)
            check: tuple[str, Check] = (
                f"== {expected[:40]!r} (whitespace-insensitive)",
                lambda got, _t, want=want: no_space(got) == want,
            )
            html = path.read_bytes().decode("utf-8", "replace")
            corpus.cases.append(Case(folder, name, "html", html, (check,)))
    inline = json.loads(data_file("email-replies", folder, "inline_plain_cases.json").read_text())
    for case in inline["cases"]:
        corpus.cases.append(
            Case(folder, case["id"], "plain", case["input"], (_equals(case["expected_reply"]),))
        )
    return corpus


def load_corpora() -> dict[str, Corpus]:
    return {
        "github_email_reply_parser": _reply_parser_corpus("github_email_reply_parser"),
        "zapier_email_reply_parser": _reply_parser_corpus("zapier_email_reply_parser"),
        "talon": _talon_corpus(),
    }


# -- the approaches ----------------------------------------------------------------------------


def html_email(html: str) -> bytes:
    """A minimal HTML-only email around `html` (how an HTML-only reply reaches the gateway)."""
    msg = EmailMessage()
    msg["From"] = "agent@city.example"
    msg["To"] = "reply+abcdefghijklmnopqrstuvwxyz234567@gateway.example.ca"
    msg["Subject"] = "Re: test"
    msg.set_content(html, subtype="html")
    return msg.as_bytes()


def first_text_body(raw: bytes) -> str:
    """Talon's procedure: the first text/plain part, transfer encoding decoded, as UTF-8
    (the first text/html part turned into text when there is no text/plain)."""
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    for subtype in ("plain", "html"):
        for part in typed_subpart_iterator(msg, "text", subtype):
            payload = part.get_payload(decode=True)
            data = payload if isinstance(payload, bytes) else b""
            text = data.decode(part.get_content_charset() or "utf-8", "replace")
            return text if subtype == "plain" else reading.html_to_text(text)
    return ""


@dataclass(frozen=True)
class Approach:
    """A way to get the visible text from plain text; HTML and .eml inputs are turned into
    text first (by gateway.rules.reading, which every plain-text library needs)."""

    name: str
    plain: Callable[[str], str]
    eml: Callable[[bytes], str] | None = None  # default: first_text_body, then `plain`
    html: Callable[[str], str] | None = None  # default: html_to_text, then `plain`

    def run(self, case: Case) -> str:
        if case.kind == "plain":
            assert isinstance(case.source, str)
            return self.plain(case.source)
        if case.kind == "html":
            assert isinstance(case.source, str)
            if self.html is not None:
                return self.html(case.source)
            return self.plain(reading.html_to_text(case.source))
        assert isinstance(case.source, bytes)
        if self.eml is not None:
            return self.eml(case.source)
        return self.plain(first_text_body(case.source))


def _parse_text(raw: bytes) -> str:
    return reading.parse_reply(raw, reply_address=REPLY_ADDRESS).text


OURS = Approach(
    "sms311 rules (gateway.rules.reading)",
    plain=reading.visible_text,
    eml=_parse_text,
    html=lambda html: _parse_text(html_email(html)),
)


def library_approaches() -> list[Approach]:
    """The reply-parsing libraries installed here (mail-parser-reply is a test dependency)."""
    from mailparser_reply import EmailReplyParser

    parser = EmailReplyParser(languages=["en", "fr"])

    def latest_reply(text: str) -> str:
        return parser.parse_reply(text) or ""

    def latest_body(text: str) -> str:
        message = parser.read(text)
        return message.replies[0].body if message.replies else ""

    return [
        Approach("mail-parser-reply 1.36: parse_reply (latest reply)", latest_reply),
        Approach("mail-parser-reply 1.36: replies[0].body (signatures cut)", latest_body),
    ]


@dataclass
class Result:
    approach: str
    corpus: str
    met: int
    total: int
    failures: list[str]

    @property
    def score(self) -> float:
        return self.met / self.total if self.total else 1.0


def evaluate(approach: Approach, corpus_name: str, corpus: Corpus) -> Result:
    met = 0
    failures: list[str] = []
    for case in corpus.cases:
        started = time.perf_counter()
        try:
            got = approach.run(case)
        except Exception as exc:  # a library crashing on a case fails that case
            got = f"<{type(exc).__name__}: {exc}>"
        elapsed = time.perf_counter() - started
        failed = [label for label, check in case.checks if not check(got, elapsed)]
        if failed:
            failures.append(f"{case.name}: {'; '.join(failed)} -> got {got[:80]!r}")
        else:
            met += 1
    return Result(approach.name, corpus_name, met, len(corpus.cases), failures)


def iter_results(approaches: list[Approach]) -> Iterator[Result]:
    corpora = load_corpora()
    for approach in approaches:
        for name, corpus in corpora.items():
            yield evaluate(approach, name, corpus)
