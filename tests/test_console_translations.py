"""The console's French catalogue covers every string of its templates and views, and the
compiled .mo that ships is the one its .po says."""

from __future__ import annotations

from babel.messages.extract import extract_from_dir
from babel.messages.mofile import read_mo
from babel.messages.pofile import read_po

from tests.gateway_fixtures import REPO

CATALOGUE = REPO / "gateway" / "web" / "translations" / "fr" / "LC_MESSAGES"
METHODS = [("gateway/web/console/**.py", "python"), ("gateway/web/templates/**.html", "jinja2")]


def _source_messages() -> set[str]:
    found: set[str] = set()
    for _file, _line, message, _comments, _context in extract_from_dir(
        str(REPO), METHODS, keywords={"_": None, "gettext": None, "ngettext": (1, 2),
                                      "lazy_gettext": None}
    ):
        found.add(message[0] if isinstance(message, tuple) else message)
    return found


def test_every_console_string_has_a_french_translation() -> None:
    with (CATALOGUE / "messages.mo").open("rb") as handle:
        compiled = read_mo(handle)
    translated = {_key(m.id) for m in compiled if m.id and _done(m.string)}
    wanted = _source_messages()
    assert len(wanted) > 100
    missing = sorted(wanted - translated)
    assert missing == [], f"untranslated (run the steps in README, Translations): {missing}"


def _key(message_id: object) -> str:
    return str(message_id[0]) if isinstance(message_id, (list, tuple)) else str(message_id)


def _done(string: object) -> bool:
    if isinstance(string, (list, tuple)):
        return all(string)
    return bool(string)


def _pairs(catalogue: object) -> set[tuple[str, str]]:
    return {(_key(m.id), repr(tuple(m.string) if isinstance(m.string, (list, tuple))
                              else m.string)) for m in catalogue if m.id}  # type: ignore[attr-defined]


def test_compiled_catalogue_matches_its_source() -> None:
    with (CATALOGUE / "messages.po").open("rb") as handle:
        source = read_po(handle, locale="fr")
    with (CATALOGUE / "messages.mo").open("rb") as handle:
        compiled = read_mo(handle)
    assert _pairs(source) == _pairs(compiled), (
        "messages.mo is stale: pybabel compile -d gateway/web/translations"
    )
