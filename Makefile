# Developer entry points. From a fresh clone, `make dev` and `make test` do
# everything: create .venv, install what they need (pinned by constraints.txt),
# make sure PostgreSQL server binaries exist, then run.
#
#   make dev [ADDR=127.0.0.1:50051] [METRICS_ADDR=127.0.0.1:9090]
#                                     throwaway clusters + demo data, serve
#   make test [PYTEST_ARGS='-k …']    the test suite (real PostgreSQL, real gRPC)
#   make test-faults                  the fault suite at full scale (docs/faults.md)
#   make proto | proto-check | lint | typecheck | breaking | lock | bench | clean

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The lock (scripts/lock.py writes it) pins every install below when .venv is
# the Python it was resolved for (3.11: CI's and the image's); another Python
# installs unpinned, with a warning, since some pins may not exist for it.
LOCK   := constraints.txt
LOCK_PYTHON := 3.11
define pip_install
	@if [ "$$($(BIN)/python -c 'import sys; print("%d.%d" % sys.version_info[:2])')" = $(LOCK_PYTHON) ]; then \
		echo "$(BIN)/python -m pip install --constraint $(LOCK) $(1)"; \
		$(BIN)/python -m pip install --constraint $(LOCK) $(1); \
	else \
		echo "make: $(LOCK) pins Python $(LOCK_PYTHON) and .venv is another: installing unpinned" >&2; \
		echo "$(BIN)/python -m pip install $(1)"; \
		$(BIN)/python -m pip install $(1); \
	fi
endef
# Two install levels, each rerun only when a pyproject or the lock changes (or
# .venv is new): the runtime (the server, which ships the client, and grpcurl
# for the calls `make dev` prints), and everything (plus the dev tools).
RUNTIME_STAMP := $(VENV)/.installed-runtime
STAMP         := $(VENV)/.installed
INSTALL_DEPS  := pyproject.toml client/pyproject.toml $(LOCK)
# `make image`: the base image, pinned by digest where a registry is reachable
# (docs/operations.md#pinning-the-base-image), and the version for the labels.
PYTHON_IMAGE ?= python:3.11-slim
IMAGE        ?= controlplane-resolver
VERSION       = $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)

.DEFAULT_GOAL := help
.PHONY: help install install-runtime postgres dev test test-unit test-slow test-faults proto proto-check \
	lint format typecheck breaking lock lock-check image bench bench-instructions clean

help:
	@echo "make dev          throwaway PostgreSQL clusters with demo data, split on, serve on"
	@echo "                  127.0.0.1:50051 (ADDR=host:port; METRICS_ADDR=host:port serves"
	@echo "                  /metrics); Ctrl-C removes them. Installs the runtime and grpcurl only"
	@echo "make test         run the tests (PYTEST_ARGS='...' to pass pytest arguments)"
	@echo "make test-unit    only tests/unit: no database, a few seconds"
	@echo "make test-slow    the tests marked slow: pip installs into fresh environments"
	@echo "make test-faults  the fault suite at full scale (kill, hang, lock, 120 s outage, SIGTERM,"
	@echo "                  hostile callers; a few minutes); prints the table, writes FAULTS_REPORT"
	@echo "make proto        regenerate client/controlplane_resolver_client/_gen from protos/"
	@echo "make proto-check  fail if the generated code is stale"
	@echo "make lint         buf lint the protos, hadolint the Dockerfile, ruff the Python"
	@echo "make format       ruff: fix what can be fixed, format every Python file"
	@echo "make typecheck    mypy over the server, the client and scripts/"
	@echo "make breaking     buf breaking: protos/ against every earlier version of it in git"
	@echo "                  (AGAINST=ref compares with that git ref only)"
	@echo "make lock         re-resolve constraints.txt, the pins of every dependency (Python 3.11)"
	@echo "make lock-check   fail if .venv differs from constraints.txt"
	@echo "make image        docker build, labelled (PYTHON_IMAGE=python:3.11-slim@sha256:... pins)"
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

# The server distribution ships the client package too (pyproject.toml), so
# one editable install gives both; docs/development.md#installing says why.
# (In variables: a comma inside $(call …)'s arguments would split them.)
RUNTIME_REQ := -e '.[grpcurl]'
ALL_REQ     := -e '.[dev,grpcurl]'

$(RUNTIME_STAMP): $(INSTALL_DEPS) | $(BIN)/python
	$(call pip_install,$(RUNTIME_REQ))
	@touch $@

$(STAMP): $(INSTALL_DEPS) | $(BIN)/python
	$(call pip_install,$(ALL_REQ))
	@touch $@ $(RUNTIME_STAMP)

install: $(STAMP)

install-runtime: $(RUNTIME_STAMP)

postgres:
	@bash scripts/ensure-postgres.sh

# Runtime dependencies and grpcurl only: the dev tools come with the targets
# that use them (test, lint, typecheck, proto, breaking).
dev: $(RUNTIME_STAMP) postgres
	$(BIN)/controlplane-resolver dev $(if $(ADDR),--addr $(ADDR)) \
		$(if $(METRICS_ADDR),--metrics-addr $(METRICS_ADDR)) $(if $(SHARDS),--shards $(SHARDS))

# pytest's exit code is make's verdict; 5 ("no tests collected") fails too.
test-unit: $(STAMP)
	@$(BIN)/pytest -q tests/unit $(PYTEST_ARGS)

test: $(STAMP) postgres
	@$(BIN)/pytest -q $(PYTEST_ARGS); status=$$?; \
		if [ $$status -eq 5 ]; then echo "make test: pytest collected no tests" >&2; fi; \
		exit $$status

# The fault suite at full scale (tests/faults; the default suite runs it
# shorter): every scenario, the 120 s outage included, and the table printed
# at the end and written to $(FAULTS_REPORT) for docs/faults.md.
FAULTS_REPORT ?= $(VENV)/faults-report.md
test-faults: $(STAMP) postgres
	@RESOLVER_FAULTS_FULL=1 RESOLVER_FAULTS_REPORT=$(FAULTS_REPORT) \
		$(BIN)/pytest -q -o timeout=600 tests/faults $(PYTEST_ARGS)

# Fresh virtual environments installed from the package index (pip's cache
# helps): what users type, `pip install .` and `pip install ./client`.
test-slow: $(STAMP)
	@$(BIN)/pytest -q -m slow $(PYTEST_ARGS); status=$$?; \
		if [ $$status -eq 5 ]; then echo "make test-slow: pytest collected no tests" >&2; fi; \
		exit $$status

proto: $(STAMP)
	$(BIN)/python scripts/genproto.py

proto-check: $(STAMP)
	$(BIN)/python scripts/genproto.py --check

lint: $(STAMP)
	$(BIN)/buf lint
	$(BIN)/hadolint Dockerfile
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

typecheck: $(STAMP)
	$(BIN)/mypy

# The contract gate (CI): scripts/breaking.py says what it compares against.
breaking: $(STAMP)
	$(BIN)/python scripts/breaking.py --buf $(BIN)/buf $(if $(AGAINST),--against $(AGAINST))

# Needs only a CPython 3.11 (found on PATH) and the package index; not .venv.
lock:
	$(PYTHON) scripts/lock.py

lock-check: $(STAMP)
	$(BIN)/python scripts/lock.py --check

# Needs a Docker engine (none in CI). Without a digest in PYTHON_IMAGE the
# base image is whatever the tag points at today.
image:
	@case "$(PYTHON_IMAGE)" in *@sha256:*) ;; *) echo "make image: PYTHON_IMAGE=$(PYTHON_IMAGE) is not pinned by digest (docs/operations.md#pinning-the-base-image)" >&2;; esac
	docker build --build-arg PYTHON_IMAGE=$(PYTHON_IMAGE) --build-arg VERSION=$(VERSION) \
		--build-arg REVISION=$$(git rev-parse HEAD 2>/dev/null || echo unknown) \
		$(if $(SOURCE_URL),--build-arg SOURCE_URL=$(SOURCE_URL)) \
		-t $(IMAGE):$(VERSION) -t $(IMAGE):latest .

bench: $(STAMP) postgres
	$(BIN)/python bench/run.py $(BENCH_ARGS)

bench-instructions: $(STAMP) postgres
	$(BIN)/python bench/instructions.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .mypy_cache build dist client/build
	find . -path ./.git -prune -o \( -name __pycache__ -o -name '*.egg-info' -o -name .mypy_cache \) \
		-type d -prune -exec rm -rf {} +
