# cdc-pipeline: the two commands are `make demo` and `make test`; both do all set-up first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: setup system-packages venv jars test unit lint demo local-up local-down clean

setup: system-packages venv jars ## everything: system packages, venv, jar cache

system-packages:
	@bash deploy/local/install-system-packages.sh

venv: $(BIN)/cdc-pipeline

$(BIN)/cdc-pipeline: pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	@touch $@

jars: venv
	$(BIN)/cdc-pipeline --log-format console local fetch

test: setup ## the whole suite (unit, integration, e2e) against a real local stack
	$(BIN)/pytest $(PYTEST_ARGS)

unit: venv
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

lint: venv ## ruff (complexity rules on), mypy --strict, import contracts (layers, no cycles)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

DEMO_ARGS ?=
demo: setup ## pgbench replicated end to end on the local stack, verified, with a summary
	$(BIN)/cdc-pipeline --log-format console demo $(DEMO_ARGS)

local-up: setup
	$(BIN)/cdc-pipeline --log-format console local up

local-down: venv
	$(BIN)/cdc-pipeline --log-format console local down

clean: local-down
	rm -rf .local-stack .local-stack-test
