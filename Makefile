# Developer entry points. From a fresh clone, `make dev` and `make test` do
# everything: create .venv, install the client and the server (editable, with
# the dev tools), make sure PostgreSQL server binaries exist, then run.
#
#   make dev [ADDR=127.0.0.1:50051]   throwaway clusters + demo data, serve
#   make test [PYTEST_ARGS='-k …']    the test suite (real PostgreSQL, real gRPC)
#   make proto | proto-check | lint | bench | bench-instructions | clean

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The install step reruns only when a pyproject changes (or .venv is new).
STAMP  := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help install postgres dev test test-unit proto proto-check lint format typecheck bench bench-instructions clean

help:
	@echo "make dev          throwaway PostgreSQL clusters with demo data, split on, serve on"
	@echo "                  127.0.0.1:50051 (override with ADDR=host:port); Ctrl-C removes them"
	@echo "make test         run the tests (PYTEST_ARGS='...' to pass pytest arguments)"
	@echo "make test-unit    only tests/unit: no database, a few seconds"
	@echo "make proto        regenerate client/controlplane_resolver_client/_gen from protos/"
	@echo "make proto-check  fail if the generated code is stale"
	@echo "make lint         buf lint the protos; ruff check and ruff format --check the Python"
	@echo "make format       ruff: fix what can be fixed, format every Python file"
	@echo "make typecheck    mypy over the server, the client and scripts/"
	@echo "make bench        run the benchmark (bench/run.py; BENCH_ARGS='...')"
	@echo "make bench-instructions  instructions per call under callgrind (bench/instructions.py)"
	@echo "make install      create .venv and install everything (the other targets do this)"
	@echo "make clean        remove .venv and caches"

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10))' || \
		{ echo "Python 3.10+ is required; '$(PYTHON)' is $$($(PYTHON) --version 2>&1). Use PYTHON=python3.11 (or newer)." >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	@# Editable installs of pyproject-only packages need pip >= 21.3 (PEP 660).
	$(BIN)/python -m pip install --quiet 'pip>=23'

$(STAMP): pyproject.toml client/pyproject.toml | $(BIN)/python
	$(BIN)/pip install -e ./client -e '.[dev]'
	@touch $@

install: $(STAMP)

postgres:
	@bash scripts/ensure-postgres.sh

dev: $(STAMP) postgres
	$(BIN)/controlplane-resolver dev $(if $(ADDR),--addr $(ADDR))

# pytest's exit code is make's verdict; 5 ("no tests collected") fails too.
test-unit: $(STAMP)
	@$(BIN)/pytest -q tests/unit $(PYTEST_ARGS)

test: $(STAMP) postgres
	@$(BIN)/pytest -q $(PYTEST_ARGS); status=$$?; \
		if [ $$status -eq 5 ]; then echo "make test: pytest collected no tests" >&2; fi; \
		exit $$status

proto: $(STAMP)
	$(BIN)/python scripts/genproto.py

proto-check: $(STAMP)
	$(BIN)/python scripts/genproto.py --check

lint: $(STAMP)
	$(BIN)/buf lint
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

typecheck: $(STAMP)
	$(BIN)/mypy

bench: $(STAMP) postgres
	$(BIN)/python bench/run.py $(BENCH_ARGS)

bench-instructions: $(STAMP) postgres
	$(BIN)/python bench/instructions.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .mypy_cache build dist client/build
	find . -path ./.git -prune -o \( -name __pycache__ -o -name '*.egg-info' -o -name .mypy_cache \) \
		-type d -prune -exec rm -rf {} +
