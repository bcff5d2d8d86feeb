"""The municipality map: loading, every kind of problem (and canned replies' own), check_config
over the settings and the map they name, and the example settings file and the map in the
repository. The shared settings texts and helpers are in tests/config_helpers.py.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from gateway.rules.municipalities import CannedReply, Municipality
from gateway.settings import (
    ConfigError,
    Problem,
    check_config,
    load_municipality_map,
    load_settings,
)
from tests.config_helpers import BASE, EXAMPLE, EXAMPLE_SECRETS, problems_of, write
from tests.paths import REPO_ROOT

REAL_MAP = REPO_ROOT / "municipality_map.yaml"

MAP = """\
municipalities:
  - id: ottawa
    name: Ottawa
    name_fr: Ottawa
    province: ON
    aliases: [Nepean, Kanata, Orléans]
    postal_prefixes: [K1, k2, "K4 A"]
    mailbox: 311@ottawa.example
    agents: ["@ottawa.example", lead@ottawa.example]
    languages: [en, fr]
  - id: gatineau
    name: Gatineau
    province: QC
    postal_prefixes: [J8, J9]
    mailbox: 311@gatineau.example
"""

OTTAWA = Municipality(
    id="ottawa",
    name="Ottawa",
    name_fr="Ottawa",
    province="ON",
    aliases=("Nepean", "Kanata", "Orléans"),
    postal_prefixes=("K1", "K2", "K4A"),
    mailbox="311@ottawa.example",
    agents=("@ottawa.example", "lead@ottawa.example"),
    languages=("en", "fr"),
)
GATINEAU = Municipality(
    id="gatineau",
    name="Gatineau",
    province="QC",
    postal_prefixes=("J8", "J9"),
    mailbox="311@gatineau.example",
    agents=("@gatineau.example",),
    languages=("en",),
)


def map_problems_of(path: Path) -> list[Problem]:
    with pytest.raises(ConfigError) as caught:
        load_municipality_map(path)
    return caught.value.problems


# ------------------------------------------------------------------------------------------
# The municipality map


def test_map_loads(tmp_path: Path) -> None:
    assert load_municipality_map(write(tmp_path, MAP, "map.yaml")) == [OTTAWA, GATINEAU]


def test_map_province_on_is_not_a_boolean(tmp_path: Path) -> None:
    # YAML 1.1 reads an unquoted ON as true; the map's string keys take the text as written.
    municipalities = load_municipality_map(write(tmp_path, MAP, "map.yaml"))
    assert municipalities[0].province == "ON"


THIRD = """\
  - id: kanata
    name: Kanata
    province: ON
    postal_prefixes: [K2K, K1]
    mailbox: 311@kanata.example
"""

MAP_CASES = [
    ("duplicate id", MAP + THIRD.replace("id: kanata", "id: ottawa"), 16, "municipalities[2].id",
     "duplicate id 'ottawa' (also on line 2)"),
    ("duplicate postal prefix", MAP + THIRD, 19, "municipalities[2].postal_prefixes[1]",
     "postal prefix 'K1' is also claimed by 'ottawa' (line 7)"),
    ("duplicate alias", MAP.replace("[J8, J9]\n", "[J8, J9]\n    aliases: [orleans]\n"), 15,
     "municipalities[1].aliases[0]", "alias 'orleans' is also claimed by 'ottawa' (line 6)"),
    ("bad prefix letter", MAP.replace("[J8, J9]", "[J8, D9]"), 14,
     "municipalities[1].postal_prefixes[1]",
     "'D9' is not a postal code prefix (FSA, e.g. K1A, K1 or K)"),
    ("bad prefix third letter", MAP.replace("[J8, J9]", "[J8, J9O]"), 14,
     "municipalities[1].postal_prefixes[1]", "'J9O' is not a postal code prefix"),
    ("prefix too long", MAP.replace("[J8, J9]", "[J8 0A1]"), 14,
     "municipalities[1].postal_prefixes[0]", "is not a postal code prefix"),
    ("prefix letter twice", MAP.replace("[J8, J9]", "[JJ]"), 14,
     "municipalities[1].postal_prefixes[0]", "is not a postal code prefix"),
    ("prefix of another province", MAP.replace("[J8, J9]", "[J8, K9]"), 14,
     "municipalities[1].postal_prefixes[1]", "K9 is a postal prefix of ON, not QC"),
    ("prefix of the territories", MAP.replace("[J8, J9]", "[X1A]"), 14,
     "municipalities[1].postal_prefixes[0]", "X1A is a postal prefix of NT or NU, not QC"),
    ("missing mailbox", MAP.replace("    mailbox: 311@gatineau.example\n", ""), 11,
     "municipalities[1].mailbox", "missing"),
    ("missing id", MAP.replace("  - id: gatineau\n    name", "  - name"), 11,
     "municipalities[1].id", "missing"),
    ("missing name", MAP.replace("    name: Gatineau\n", ""), 11, "municipalities[1].name",
     "missing"),
    ("bad mailbox", MAP.replace("311@gatineau.example", "311 at gatineau"), 15,
     "municipalities[1].mailbox", "is not a valid email address"),
    ("bad id", MAP.replace("id: gatineau", "id: Gatineau City"), 11, "municipalities[1].id",
     "must be a slug"),
    ("bad province", MAP.replace("province: QC", "province: PQ"), 13,
     "municipalities[1].province", "must be a province or territory code"),
    ("bad agent", MAP.replace('"@ottawa.example"', "ottawa"), 9, "municipalities[0].agents[0]",
     "must be an email address or an @domain"),
    ("bad agent domain", MAP.replace('"@ottawa.example"', '"@-x"'), 9,
     "municipalities[0].agents[0]", "is not a valid @domain"),
    ("no agents", MAP.replace('["@ottawa.example", lead@ottawa.example]', "[]"), 9,
     "municipalities[0].agents", "must name at least one"),
    ("bad language", MAP.replace("[en, fr]", "[en, de]"), 10, "municipalities[0].languages[1]",
     "must be one of en, fr (not 'de')"),
    ("aliases not a list", MAP.replace("[Nepean, Kanata, Orléans]", "Nepean"), 6,
     "municipalities[0].aliases", "must be a list"),
    ("alias not a string", MAP.replace("[Nepean, Kanata, Orléans]", "[Nepean, [Kanata]]"), 6,
     "municipalities[0].aliases[1]", "must be a string"),
    ("unknown key", MAP.replace("    mailbox: 311@gatineau", "    mailbx: 311@gatineau"), 15,
     "municipalities[1].mailbx", "unknown key (did you mean 'mailbox'?)"),
    ("entry not a mapping", MAP + "  - just a name\n", 16, "municipalities[2]",
     "must be a mapping"),
    ("unknown top-level key", MAP + "municipality: []\n", 16, "municipality",
     "unknown key (did you mean 'municipalities'?)"),
    ("not a list", "municipalities: {ottawa: {}}\n", 1, "municipalities", "must be a list"),
    ("empty list", "municipalities: []\n", 1, "municipalities", "at least one"),
    ("no municipalities", "cities: []\n", None, "municipalities", "missing"),
    ("yaml syntax", MAP.replace("[J8, J9]", "[J8, J9"), 15, "", "invalid YAML"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "line", "key", "message"),
    [case[1:] for case in MAP_CASES],
    ids=[case[0] for case in MAP_CASES],
)
def test_map_problem(tmp_path: Path, text: str, line: int | None, key: str, message: str) -> None:
    path = write(tmp_path, text, "municipality_map.yaml")
    problems = map_problems_of(path)
    relevant = [p for p in problems if p.key == key]
    assert relevant, problems
    assert relevant[0].file == str(path)
    assert relevant[0].line == line
    assert message in relevant[0].message, relevant[0].message


def test_map_problem_text(tmp_path: Path) -> None:
    third = THIRD.replace("id: kanata", "id: ottawa").replace(", K1]", "]")
    path = write(tmp_path, MAP + third, "municipality_map.yaml")
    assert [str(p) for p in map_problems_of(path)] == [
        f"{path}:16: municipalities[2].id: duplicate id 'ottawa' (also on line 2)"
    ]


def test_map_reports_every_problem(tmp_path: Path) -> None:
    text = MAP.replace("province: QC", "province: ZZ").replace("311@ottawa.example", "nope")
    text += THIRD
    path = write(tmp_path, text, "municipality_map.yaml")
    assert [(p.line, p.key) for p in map_problems_of(path)] == [
        (8, "municipalities[0].mailbox"),
        (13, "municipalities[1].province"),
        (19, "municipalities[2].postal_prefixes[1]"),
    ]


def test_map_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "municipality_map.yaml"
    assert [str(p) for p in map_problems_of(path)] == [f"{path}: file not found"]


# ------------------------------------------------------------------------------------------
# check_config: the settings and the map they name


def test_check_config_ok(tmp_path: Path) -> None:
    write(tmp_path, MAP, "municipality_map.yaml")
    assert check_config(write(tmp_path, BASE), {}) == []


def test_check_config_missing_map_names_the_setting(tmp_path: Path) -> None:
    path = write(tmp_path, BASE)
    assert [str(p) for p in check_config(path, {})] == [
        f"{path}: municipality_map: file not found: {tmp_path / 'municipality_map.yaml'}"
    ]
    path = write(tmp_path, BASE + "municipality_map: maps/m.yaml\n")
    assert [str(p) for p in check_config(path, {})] == [
        f"{path}:10: municipality_map: file not found: {tmp_path / 'maps' / 'm.yaml'}"
    ]


def test_check_config_reports_settings_and_map_problems(tmp_path: Path) -> None:
    write(tmp_path, MAP.replace("[J8, J9]", "[J8, K9]"), "maps/cities.yaml")
    text = BASE.replace("provider: sandbox", "provider: twillio")
    path = write(tmp_path, text + "municipality_map: maps/cities.yaml\n")
    assert [str(p) for p in check_config(path, {})] == [
        f"{path}:4: sms.provider: must be one of twilio, sandbox (not 'twillio')",
        f"{tmp_path / 'maps' / 'cities.yaml'}:14: municipalities[1].postal_prefixes[1]: "
        "K9 is a postal prefix of ON, not QC",
    ]


def test_check_config_map_from_environment(tmp_path: Path) -> None:
    write(tmp_path, MAP, "elsewhere/m.yaml")
    path = write(tmp_path, BASE)
    assert check_config(path, {"GATEWAY_MUNICIPALITY_MAP": "elsewhere/m.yaml"}) == []
    assert [str(p) for p in check_config(path, {"GATEWAY_MUNICIPALITY_MAP": "gone.yaml"})] == [
        f"GATEWAY_MUNICIPALITY_MAP: municipality_map: file not found: {tmp_path / 'gone.yaml'}"
    ]


# ------------------------------------------------------------------------------------------
# The files in the repository


def test_example_settings_file_loads(tmp_path: Path) -> None:
    settings = load_settings(EXAMPLE, EXAMPLE_SECRETS)
    assert settings.sms.provider == "twilio"
    assert settings.sms.auth_token == "token"
    assert settings.email.imap is not None
    assert settings.email.imap.password == "imap-password"
    assert settings.municipality_map == EXAMPLE.parent / "municipality_map.yaml"
    # without the secrets it says which variables to set
    messages = [str(p) for p in problems_of(EXAMPLE, {})]
    assert any("GATEWAY_SMS__AUTH_TOKEN" in m for m in messages)
    assert any("GATEWAY_EMAIL__IMAP__PASSWORD" in m for m in messages)


def test_example_settings_file_documents_every_key() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    for key in (
        "database", "municipality_map", "public_url", "web", "listen", "sms", "provider",
        "account_sid", "auth_token", "sender", "api_base_url", "max_per_second",
        "default_region", "email", "from_address", "reply_address", "smtp", "host", "port",
        "username", "password", "security", "timeout", "imap", "mailbox", "processed_mailbox",
        "failed_mailbox", "ingress", "fallback_mailbox", "log_level", "state_dir", "outbox",
        "max_attempts", "base_backoff_seconds", "max_backoff_seconds", "lease_seconds",
        "takeover_seconds", "console", "secret_key", "session_hours", "login_max_failures", "login_window_minutes",
        "poll_seconds", "presence_seconds",
    ):  # fmt: skip
        assert f"{key}:" in text, key


def test_example_checks_clean_beside_a_map(tmp_path: Path) -> None:
    shutil.copy(EXAMPLE, tmp_path / "sms311.yaml")
    write(tmp_path, MAP, "municipality_map.yaml")
    assert check_config(tmp_path / "sms311.yaml", EXAMPLE_SECRETS) == []


def test_repository_municipality_map_is_valid() -> None:
    municipalities = load_municipality_map(REAL_MAP)
    assert len(municipalities) >= 17
    assert len({m.id for m in municipalities}) == len(municipalities)


def test_example_checks_clean_with_the_repository_map(tmp_path: Path) -> None:
    shutil.copy(EXAMPLE, tmp_path / "sms311.yaml")
    shutil.copy(REAL_MAP, tmp_path / "municipality_map.yaml")
    assert check_config(tmp_path / "sms311.yaml", EXAMPLE_SECRETS) == []


# ------------------------------------------------------------------------------------------
# Canned replies in the municipality map

CANNED = MAP.replace(
    "    languages: [en, fr]\n",
    "    languages: [en, fr]\n"
    "    canned_replies:\n"
    "      - title: Pothole logged\n"
    "        text: Thank you, a crew will fill it within 5 days.\n"
    "        language: en\n"
    "      - title: Nid-de-poule\n"
    "        language: FR\n"
    "        text: >-\n"
    "          Merci, une équipe le bouchera\n"
    "          d'ici 5 jours.\n"
    "      - {title: Any language, text: See ottawa.ca/311}\n",
)


def test_map_canned_replies_load(tmp_path: Path) -> None:
    ottawa, gatineau = load_municipality_map(write(tmp_path, CANNED, "map.yaml"))
    assert ottawa.canned_replies == (
        CannedReply("Pothole logged", "Thank you, a crew will fill it within 5 days.", "en"),
        CannedReply("Nid-de-poule", "Merci, une équipe le bouchera d'ici 5 jours.", "fr"),
        CannedReply("Any language", "See ottawa.ca/311", None),
    )
    assert gatineau.canned_replies == ()
    assert OTTAWA.canned_replies == ()  # the default


def test_map_canned_reply_of_1600_characters_is_fine(tmp_path: Path) -> None:
    text = CANNED.replace("See ottawa.ca/311", "x" * 1600)
    ottawa = load_municipality_map(write(tmp_path, text, "map.yaml"))[0]
    assert ottawa.canned_replies[-1].text == "x" * 1600


# CANNED's canned_replies start on line 11; the items on lines 12, 15 and 20.
CANNED_CASES = [
    ("not a list", MAP.replace("    languages: [en, fr]\n",
                               "    languages: [en, fr]\n    canned_replies: hello\n"), 11,
     "municipalities[0].canned_replies", "must be a list"),
    ("item not a mapping", CANNED.replace("      - {title: Any language, text: See ottawa.ca/311}",
                                          "      - just text"), 20,
     "municipalities[0].canned_replies[2]", "must be a mapping"),
    ("missing title", CANNED.replace("title: Any language, ", ""), 20,
     "municipalities[0].canned_replies[2].title", "missing"),
    ("missing text", CANNED.replace("        text: Thank you, a crew will fill it within 5 days.\n",
                                    ""), 12,
     "municipalities[0].canned_replies[0].text", "missing"),
    ("empty title", CANNED.replace("title: Pothole logged", "title: ''"), 12,
     "municipalities[0].canned_replies[0].title", "must not be empty"),
    ("empty text", CANNED.replace("text: See ottawa.ca/311", "text: '  '"), 20,
     "municipalities[0].canned_replies[2].text", "must not be empty"),
    ("text not a string", CANNED.replace("text: See ottawa.ca/311", "text: [a, b]"), 20,
     "municipalities[0].canned_replies[2].text", "must be a string"),
    ("text too long", CANNED.replace("See ottawa.ca/311", "x" * 1601), 20,
     "municipalities[0].canned_replies[2].text", "is 1601 characters; at most 1600"),
    ("bad language", CANNED.replace("language: FR", "language: de"), 16,
     "municipalities[0].canned_replies[1].language", "must be one of en, fr (not 'de')"),
    ("unknown key", CANNED.replace("        language: en\n", "        langage: en\n"), 14,
     "municipalities[0].canned_replies[0].langage", "unknown key (did you mean 'language'?)"),
    ("duplicate title", CANNED.replace("title: Nid-de-poule", "title: pothole  LOGGED")
     .replace("language: FR", "language: en"), 15,
     "municipalities[0].canned_replies[1].title",
     "duplicate title 'pothole  LOGGED' (also on line 12)"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "line", "key", "message"),
    [case[1:] for case in CANNED_CASES],
    ids=[case[0] for case in CANNED_CASES],
)
def test_map_canned_reply_problem(
    tmp_path: Path, text: str, line: int | None, key: str, message: str
) -> None:
    path = write(tmp_path, text, "municipality_map.yaml")
    problems = map_problems_of(path)
    assert len(problems) == 1, problems
    assert (problems[0].file, problems[0].line, problems[0].key) == (str(path), line, key)
    assert message in problems[0].message, problems[0].message
    assert str(problems[0]).startswith(f"{path}:{line}: {key}: ")


def test_map_same_title_in_two_languages_is_fine(tmp_path: Path) -> None:
    text = CANNED.replace("title: Nid-de-poule", "title: Pothole logged")
    ottawa = load_municipality_map(write(tmp_path, text, "map.yaml"))[0]
    assert [c.title for c in ottawa.canned_replies][:2] == ["Pothole logged"] * 2


def test_repository_map_has_canned_replies_in_both_languages() -> None:
    by_id = {m.id: m for m in load_municipality_map(REAL_MAP)}
    for ident in ("ottawa", "montreal"):
        replies = by_id[ident].canned_replies
        assert {c.language for c in replies} == {"en", "fr"}, ident
        assert all(0 < len(c.text) <= 1600 for c in replies)


# ------------------------------------------------------------------------------------------
# Warnings (issue 15): a bare "@domain" lets anyone whose mail that domain authenticates
# answer residents; `check-config` says so, and its exit status does not change.


def test_map_warnings_name_every_bare_domain_the_default_too(tmp_path: Path) -> None:
    from gateway.settings.municipality_map import map_warnings

    path = write(tmp_path, MAP, "municipality_map.yaml")
    advice = "can answer residents; list the agents' full addresses instead"
    assert [str(w) for w in map_warnings(path)] == [
        f"{path}:9: municipalities[0].agents[0]: warning: @ottawa.example is a whole domain: "
        f"anyone whose mail ottawa.example authenticates {advice}",
        f"{path}:15: municipalities[1].agents: warning: not set, so it is the mailbox's "
        f"domain, @gatineau.example: anyone whose mail gatineau.example authenticates {advice}",
    ]
    assert all(w.warning for w in map_warnings(path))
    full = MAP.replace('["@ottawa.example", lead@ottawa.example]', "[lead@ottawa.example]")
    full = full.replace("    mailbox: 311@gatineau.example\n",
                        "    mailbox: 311@gatineau.example\n    agents: [ana@gatineau.example]\n")
    assert map_warnings(write(tmp_path, full, "municipality_map.yaml")) == []
    # Warnings are not problems: the map loads, check_config finds nothing wrong.
    write(tmp_path, MAP, "municipality_map.yaml")
    assert load_municipality_map(path) == [OTTAWA, GATINEAU]
    assert check_config(write(tmp_path, BASE), {}) == []


def test_check_config_prints_warnings_and_still_exits_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from gateway.cli import main

    write(tmp_path, MAP, "municipality_map.yaml")
    config = write(tmp_path, BASE)
    assert main(["--config", str(config), "check-config"]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == f"{config}: OK"
    assert err.count("warning: ") == 2 and "@ottawa.example is a whole domain" in err
    assert "@gatineau.example" in err
    # With a problem too: exit 2, the problem on stdout, the warnings still said.
    write(tmp_path, MAP.replace("[J8, J9]", "[J8, K9]"), "municipality_map.yaml")
    assert main(["--config", str(config), "check-config"]) == 2
    out, err = capsys.readouterr()
    assert "K9 is a postal prefix of ON" in out and "warning: " not in out
