# halaxy-bridge: `make demo` and `make test` work on a fresh machine with Python 3.11+ and make.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip

.PHONY: test test-today test-year-ahead demo lint typecheck serve worker clean bench

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "halaxy-bridge needs Python 3.11 or newer; run: make PYTHON=python3.11 ..."; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(VENV)/.dev-installed: pyproject.toml | $(BIN)/python
	$(PIP) install --quiet -e '.[dev]'
	@touch $@

$(VENV)/.demo-installed: pyproject.toml | $(BIN)/python
	$(PIP) install --quiet -e '.[demo]'
	@touch $@

$(VENV)/.bench-installed: pyproject.toml | $(BIN)/python
	$(PIP) install --quiet -e '.[bench]'
	@touch $@

## Run the whole suite (lint, types, tests) against REDIS_URL or a throwaway redis-server,
## then the tests again with the clock a year ahead: both runs must pass.
test: $(VENV)/.dev-installed lint typecheck
	@sh scripts/ensure_tools.sh
	$(MAKE) --no-print-directory test-today test-year-ahead

test-today: $(VENV)/.dev-installed
	$(BIN)/python scripts/with_redis.py $(BIN)/pytest

## Every Python process of the run (pytest and the receiver, worker, scheduler and CLI it
## starts) reads a date a year ahead (tests/year_ahead/sitecustomize.py), and so does `date`
## in the shell commands tests run. The speed and fuzzing tests read no date and are left
## out; tests/infra/test_clock.py proves the shift took.
test-year-ahead: $(VENV)/.dev-installed
	HB_TEST_CLOCK_SHIFT_DAYS=365 PYTHONPATH=$(CURDIR)/tests/year_ahead \
	  PATH=$(CURDIR)/tests/year_ahead/bin:$$PATH \
	  $(BIN)/python scripts/with_redis.py $(BIN)/pytest -p no:cacheprovider \
	  -W ignore::pytest.PytestAssertRewriteWarning -m "not dateless"

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: $(VENV)/.dev-installed
	$(BIN)/mypy

## Benchmarks (issues 7 and 21) against REDIS_URL or a throwaway redis-server; writes docs/performance.md.
## BENCH_ARGS="--size tiny" for a quick pass, "--only P1,P3" for some, "--profile" for py-spy.
bench: $(VENV)/.bench-installed
	@sh scripts/ensure_tools.sh
	$(BIN)/python scripts/with_redis.py $(BIN)/python -m bench $(BENCH_ARGS)

## Run the demo: receiver + sandbox Halaxy, one sample webhook, then exit.
demo: $(VENV)/.demo-installed
	$(BIN)/halaxy-bridge demo

## The production processes, for local use (see Procfile).
serve: $(VENV)/.demo-installed
	$(BIN)/uvicorn services.webhook_receiver.app:app --port $${PORT:-8000}

worker: $(VENV)/.demo-installed
	$(BIN)/dramatiq services.workers

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
