# sms311 — the two commands: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# One stamp per install: `make run` installs what running needs, `make test` also the test
# tools; each is redone only when setup.cfg or pyproject.toml change, so switching between
# the two installs nothing again.
DEPS_HASH  := $(shell cat setup.cfg pyproject.toml | sha1sum | cut -c1-12)
RUN_STAMP  := $(VENV)/.installed-run-$(DEPS_HASH)
TEST_STAMP := $(VENV)/.installed-test-$(DEPS_HASH)
SANDBOX    := var/sandbox
# An editable install (so a change to gateway/ needs no reinstall); setuptools warns at every
# editable install that a folder named like the package may shadow it, which is the point here.
PIP_INSTALL := PYTHONWARNINGS="ignore:Editable installation" $(BIN)/pip install --quiet

.PHONY: run test lint typecheck unit bench system-deps sandbox-reset clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(RUN_STAMP): setup.cfg pyproject.toml | $(BIN)/python
	$(PIP_INSTALL) -e .
	rm -f $(VENV)/.installed-run-*
	touch $(RUN_STAMP)

# The test install holds everything running needs too: it makes both stamps.
$(TEST_STAMP): setup.cfg pyproject.toml | $(BIN)/python
	$(PIP_INSTALL) -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $(TEST_STAMP) $(RUN_STAMP)

## make run: the whole gateway on the embedded sandbox (SQLite, sandbox SMS, sandbox mail).
run: $(RUN_STAMP)
	$(BIN)/sms311 sandbox run --dir $(SANDBOX)

## make sandbox-reset: start the sandbox over: removes var/sandbox/ (its database, emails,
## SMS log, settings, console accounts); keeps .venv. The next `make run` makes it anew.
sandbox-reset:
	rm -rf $(SANDBOX)

## make test: install what is missing (Python and Debian packages), then lint, type-check, test.
test: $(TEST_STAMP) system-deps
	$(BIN)/ruff check gateway tests bench
	$(BIN)/mypy
	$(BIN)/pytest -q

system-deps:
	bash .ci/install-system-deps

## make bench: every performance figure next to its baseline and target (a few minutes).
## BENCH_ARGS=--quick for shorter runs, --profile for a py-spy flame graph of `sms311 run`.
bench: $(TEST_STAMP) system-deps
	VENV_BIN=$(BIN) bash .ci/install-bench-deps
	$(BIN)/python bench/run_all.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache .hypothesis
