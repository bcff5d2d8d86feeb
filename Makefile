# sms311 — the two commands: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat setup.cfg pyproject.toml | sha1sum | cut -c1-12)

.PHONY: run test lint typecheck unit bench system-deps clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

## make run: the whole gateway on the embedded sandbox (SQLite, sandbox SMS, sandbox mail).
run: $(STAMP)
	$(BIN)/sms311 sandbox run

## make test: install what is missing (Python and Debian packages), then lint, type-check, test.
test: $(STAMP) system-deps
	$(BIN)/ruff check gateway tests bench
	$(BIN)/mypy
	$(BIN)/pytest -q

system-deps:
	bash .ci/install-system-deps

## make bench: every performance figure next to its baseline and target (a few minutes).
## BENCH_ARGS=--quick for shorter runs, --profile to py-spy the webhook.
bench: $(STAMP) system-deps
	VENV_BIN=$(BIN) bash .ci/install-bench-deps
	$(BIN)/python bench/run_all.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache .hypothesis
