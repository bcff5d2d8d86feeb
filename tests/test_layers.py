"""The layers hold: `gateway/rules/` does no I/O, and the other layers import only downward.

The rules (dialogue, keywords, prompts, matching, segments, threading, composing and reading
emails…) take values and return values. That promise is checked here, not only written in
docstrings:

- statically: every `import` in every module under `gateway/rules/` names another rules
  module, a pure standard-library module, or one of the few pure libraries listed below —
  never the store, web, mail, SMS, flows or run layers, a database or HTTP library, or a
  standard module that reaches the network, the disk or other processes;
- at run time: importing every rules module in a fresh interpreter loads none of the
  frameworks (sqlalchemy, flask, werkzeug, aiosmtplib, aioimaplib, twilio, requests,
  psycopg), whatever the libraries import in turn.

A new dependency of the rules is a deliberate decision: add it to PURE_LIBRARIES with why.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.paths import REPO_ROOT

GATEWAY = REPO_ROOT / "gateway"
RULES = GATEWAY / "rules"

#: Third-party libraries the rules may use: computation only.
PURE_LIBRARIES = {
    "phonenumbers",  # parsing and formatting numbers, with its own metadata
    "rapidfuzz",  # string distances for forgiving matching
    "argon2",  # password hashing (CPU and memory, no I/O)
    "pyotp",  # TOTP codes
    "zxcvbn",  # password strength estimation (its word lists are Python data)
}
#: Standard-library modules that do I/O (network, disk, processes, threads, event loop).
IO_STDLIB = {
    "asyncio", "ftplib", "http", "imaplib", "io", "logging", "mmap", "multiprocessing", "os",
    "pathlib", "poplib", "select", "selectors", "shutil", "smtplib", "socket", "socketserver",
    "sqlite3", "ssl", "subprocess", "tempfile", "threading", "urllib.request", "webbrowser",
}
#: What importing the rules must never load.
FRAMEWORKS = ["sqlalchemy", "flask", "werkzeug", "aiosmtplib", "aioimaplib", "twilio",
              "requests", "psycopg", "alembic", "uvicorn", "a2wsgi"]


def rules_modules() -> list[Path]:
    return sorted(RULES.rglob("*.py"))


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_names(path: Path) -> list[tuple[int, str]]:
    """(line, dotted module) for every import in `path`, relative imports resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            if module == "__future__":
                continue
            if module in ("gateway", "gateway.rules") or (node.level and not node.module):
                found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, module))
    return found


def allowed(module: str) -> bool:
    top = module.split(".")[0]
    if top == "gateway":
        return module == "gateway.rules" or module.startswith("gateway.rules.")
    if top in PURE_LIBRARIES:
        return True
    if top not in sys.stdlib_module_names:
        return False
    return not any(module == bad or module.startswith(bad + ".") for bad in IO_STDLIB)


def test_there_are_rules_to_check() -> None:
    names = {module_name(p) for p in rules_modules()}
    assert {"gateway.rules.dialogue", "gateway.rules.keywords", "gateway.rules.segments",
            "gateway.rules.municipalities", "gateway.rules.reading"} <= names


@pytest.mark.parametrize("path", rules_modules(), ids=lambda p: module_name(p))
def test_rules_import_nothing_that_does_io(path: Path) -> None:
    bad = [f"{path.relative_to(REPO_ROOT)}:{line}: imports {name}"
           for line, name in imported_names(path) if not allowed(name)]
    assert not bad, "rules must do no I/O:\n" + "\n".join(bad)


@pytest.mark.parametrize("module, ok", [
    ("gateway.rules.segments", True), ("gateway.store", False), ("gateway.web.webhooks", False),
    ("gateway.settings", False), ("sqlalchemy", False), ("flask", False), ("twilio.rest", False),
    ("aiosmtplib", False), ("aioimaplib", False), ("re", True), ("email.message", True),
    ("socket", False), ("urllib.request", False), ("urllib.parse", True), ("os.path", False),
    ("phonenumbers", True),
])
def test_the_guard_itself(module: str, ok: bool) -> None:
    assert allowed(module) is ok


def test_importing_the_rules_loads_no_framework() -> None:
    names = [module_name(p) for p in rules_modules()]
    probe = (
        "import importlib, json, sys\n"
        f"for name in {names!r}: importlib.import_module(name)\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {FRAMEWORKS!r}"
        " or m.split('.')[0] == 'gateway' and not (m == 'gateway' or m.startswith('gateway.rules')))))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True,
                         text=True, check=True, timeout=60)
    assert json.loads(out.stdout) == []


LAYERS_BELOW = {
    # layer: the gateway packages it must not import (the layers above it)
    "gateway.rules": ("gateway.settings", "gateway.store", "gateway.sms", "gateway.mail",
                      "gateway.flows", "gateway.web", "gateway.run", "gateway.cli", "gateway.app"),
    "gateway.settings": ("gateway.store", "gateway.sms", "gateway.mail", "gateway.flows",
                         "gateway.web", "gateway.run", "gateway.cli", "gateway.app"),
    "gateway.store": ("gateway.flows", "gateway.web", "gateway.run", "gateway.cli", "gateway.app",
                      "gateway.mail", "gateway.sms"),
    "gateway.sms": ("gateway.flows", "gateway.web", "gateway.run", "gateway.cli", "gateway.app",
                    "gateway.store", "gateway.mail"),
    "gateway.mail": ("gateway.flows", "gateway.web", "gateway.run", "gateway.cli", "gateway.app",
                     "gateway.store", "gateway.sms"),
    "gateway.flows": ("gateway.web", "gateway.run", "gateway.cli", "gateway.app"),
    "gateway.web": ("gateway.run", "gateway.cli"),
}


@pytest.mark.parametrize("layer", sorted(LAYERS_BELOW))
def test_layers_import_only_downward(layer: str) -> None:
    folder = REPO_ROOT.joinpath(*layer.split("."))
    bad = []
    for path in sorted(folder.rglob("*.py")):
        for line, name in imported_names(path):
            if any(name == up or name.startswith(up + ".") for up in LAYERS_BELOW[layer]):
                bad.append(f"{path.relative_to(REPO_ROOT)}:{line}: imports {name}")
    assert not bad, f"{layer} reaches up:\n" + "\n".join(bad)
