"""Browser tests' harness: Debian's Chromium driven by Playwright's sync API, and axe-core.

The machines have no access to Playwright's browser downloads, so Playwright drives the
Chromium that ``make test`` installs from Debian (``.ci/install-system-deps``), found on PATH.
A missing Chromium is an error, never a skip.

Chromium is started headless with the flags the machine needs: without
``--disable-background-networking`` (and the component-update and sync switches) it keeps
opening connections that the closed network refuses. Playwright's ``launch()`` gives every
browser a new, empty profile directory of its own and removes it on close (it refuses a
``--user-data-dir`` argument), which is the "new empty --user-data-dir" the machine needs.

axe-core: the copy that axe-playwright-python ships (``axe_playwright_python/axe.min.js``,
axe-core 4.12.1, MPL-2.0, © Deque Systems) is read from that package's folder; nothing of
that package's Python code is used. :func:`axe_violations` injects it with ``page.evaluate``
(the DevTools protocol's ``Runtime.evaluate``, in the page's main world), which the page's
Content-Security-Policy does not govern: no ``<script>`` element is added, so ``script-src
'self'`` without ``'unsafe-inline'``/``'unsafe-eval'`` (even with ``require-trusted-types-for
'script'``) lets it run, and axe-core itself uses no ``eval``. Hence no context here is made
with ``bypass_csp=True``: the axe checks and the CSP checks run on the same, normal pages,
and a CSP violation shows in the page's console (see :func:`watch_console`), where a test
can assert there is none. (``page.add_script_tag(content=...)`` would be blocked by such a
CSP; ``tests/test_browser_harness.py`` proves both htmx and axe under one.)
"""

from __future__ import annotations

import shutil
from collections.abc import Collection, Iterable, Iterator
from contextlib import contextmanager
from functools import cache
from importlib.resources import files
from typing import Any

from playwright.sync_api import Browser, ConsoleMessage, Error, Page, sync_playwright

__all__ = [
    "CHROMIUM_ARGS",
    "DEFAULT_TIMEOUT_MS",
    "WCAG_TAGS",
    "axe_violations",
    "browser",
    "chromium_path",
    "format_violations",
    "new_page",
    "watch_console",
]

CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
DEFAULT_TIMEOUT_MS = 10_000
# WCAG 2.0 and 2.1, levels A and AA.
WCAG_TAGS = ("wcag2a", "wcag2aa", "wcag21a", "wcag21aa")

_CHROMIUM_NAMES = ("chromium", "chromium-browser")

# Runs axe on the whole document and keeps, of each violation, what a test needs to read.
_RUN_AXE = """async ({tags, impacts}) => {
  const results = await axe.run(document, {
    runOnly: {type: "tag", values: tags},
    resultTypes: ["violations"],
  });
  return results.violations
    .filter((v) => impacts === null || impacts.includes(v.impact))
    .map((v) => ({
      id: v.id,
      impact: v.impact,
      help: v.help,
      helpUrl: v.helpUrl,
      nodes: v.nodes.map((n) => ({
        target: n.target,
        html: n.html,
        failureSummary: n.failureSummary ?? "",
      })),
    }));
}"""


def chromium_path() -> str:
    """The Chromium executable on PATH; RuntimeError if there is none (never a skip)."""
    for name in _CHROMIUM_NAMES:
        path = shutil.which(name)
        if path is not None:
            return path
    raise RuntimeError(
        "no Chromium on PATH (looked for: " + ", ".join(_CHROMIUM_NAMES) + "): the browser "
        "tests drive Debian's chromium package, which `make test` installs "
        "(bash .ci/install-system-deps)"
    )


@contextmanager
def browser() -> Iterator[Browser]:
    """Headless Debian Chromium under Playwright (sync API), closed on exit."""
    executable = chromium_path()
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=executable, headless=True, args=list(CHROMIUM_ARGS)
        )
        try:
            yield chromium
        finally:
            chromium.close()


def new_page(
    browser: Browser,
    locale: str = "en-CA",
    *,
    timeout_ms: float = DEFAULT_TIMEOUT_MS,
    **context_options: Any,
) -> Page:
    """A page in a new browser context of its own (own cookies and storage).

    ``locale`` sets ``navigator.language`` and the Accept-Language header. Every wait and
    navigation times out after ``timeout_ms``. ``context_options`` go to
    ``Browser.new_context`` (e.g. ``base_url``). Close with ``page.context.close()``; closing
    the browser closes it too.
    """
    context = browser.new_context(locale=locale, **context_options)
    context.set_default_timeout(timeout_ms)
    context.set_default_navigation_timeout(timeout_ms)
    return context.new_page()


def watch_console(page: Page) -> list[str]:
    """A list that fills, from now on, with the page's console messages and uncaught errors.

    Each entry is ``"<type>: <text>"`` (``"error: ..."``, ``"warning: ..."``, ...) or
    ``"pageerror: <message>"``. Chromium reports a Content-Security-Policy violation as a
    console error whose text names the "Content Security Policy".
    """
    lines: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        lines.append(f"{message.type}: {message.text}")

    def on_pageerror(error: Error) -> None:
        lines.append(f"pageerror: {error.message}")

    page.on("console", on_console)
    page.on("pageerror", on_pageerror)
    return lines


@cache
def _axe_source() -> str:
    return (files("axe_playwright_python") / "axe.min.js").read_text(encoding="utf-8")


def axe_violations(
    page: Page,
    impacts: Collection[str] | None = ("serious", "critical"),
    *,
    tags: Iterable[str] = WCAG_TAGS,
) -> list[dict[str, Any]]:
    """Run axe-core on the page's document (WCAG 2.0/2.1 A and AA rules by default).

    Returns the violations whose impact is in ``impacts`` (None: every impact), each as
    ``{"id", "impact", "help", "helpUrl", "nodes": [{"target", "html", "failureSummary"}]}``;
    ``target`` is axe's list of CSS selectors. An empty list means the page passed.
    """
    if not page.evaluate("() => typeof window.axe === 'object'"):
        page.evaluate(_axe_source())
    violations: list[dict[str, Any]] = page.evaluate(
        _RUN_AXE,
        {"tags": list(tags), "impacts": None if impacts is None else list(impacts)},
    )
    return violations


def format_violations(violations: Iterable[dict[str, Any]]) -> str:
    """Violations as text for an assertion message, one rule and its elements a paragraph."""
    paragraphs = []
    for v in violations:
        lines = [f"{v['id']} ({v['impact']}): {v['help']} <{v.get('helpUrl', '')}>"]
        for node in v["nodes"]:
            lines.append(f"  - {' >> '.join(map(str, node['target']))}: {node.get('html', '')}")
            summary = node.get("failureSummary", "")
            if summary:
                lines.extend(f"      {line}" for line in summary.splitlines())
        paragraphs.append("\n".join(lines))
    if not paragraphs:
        return "no accessibility violations"
    return f"{len(paragraphs)} accessibility violation(s):\n" + "\n\n".join(paragraphs)
