# SmartTasks: `make run` starts the platform in embedded mode, `make test` checks everything.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
export XDG_RUNTIME_DIR ?= $(HOME)/.cache/smarttasks/run

.PHONY: help venv run test lint typecheck contracts unit integration k8s services controlplane bench clean

help:
	@echo "make run    - set up and start SmartTasks in embedded mode on http://127.0.0.1:8000"
	@echo "make test   - set up (venv, RabbitMQ, test control plane) and run lint, types, contracts, tests"
	@echo "make bench  - run the benchmarks under bench/ (figures go to docs/benchmarks.md)"

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is required"'
	@[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

run: venv
	@mkdir -p $(XDG_RUNTIME_DIR)
	$(BIN)/smarttasks up

lint: venv
	$(BIN)/ruff check services operator tests bench
	$(BIN)/ruff format --check services operator tests bench

typecheck: venv
	$(BIN)/mypy services operator

contracts: venv
	$(BIN)/lint-imports

services:
	bash scripts/ensure-services.sh

controlplane:
	bash tests/controlplane/build.sh

unit: venv
	$(BIN)/pytest tests/unit

integration: venv services
	$(BIN)/pytest tests/integration

k8s: venv controlplane
	$(BIN)/pytest tests/k8s

test: venv services controlplane lint typecheck contracts
	@mkdir -p $(XDG_RUNTIME_DIR)
	$(BIN)/pytest

bench: venv services
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
