# halaxy-bridge: `make demo` and `make test` work on a fresh machine with Python 3.11+ and make.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip

.PHONY: test demo lint typecheck serve worker clean bench

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

## Run the whole suite (lint, types, tests) against REDIS_URL or a throwaway redis-server.
test: $(VENV)/.dev-installed lint typecheck
	@sh scripts/ensure_tools.sh
	$(BIN)/python scripts/with_redis.py $(BIN)/pytest

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.dev-installed
	$(BIN)/mypy

## Benchmarks (issue 7) against REDIS_URL or a throwaway redis-server; writes docs/performance.md.
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
