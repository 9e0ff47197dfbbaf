# cdc-pipeline: the two commands are `make demo` and `make test`; both do all set-up first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: setup system-packages venv jars tools test unit lint demo local-up local-down clean

setup: system-packages venv jars tools ## everything: system packages, venv, jar cache, deploy-check tools

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

# Tools the deploy tests need, from the Go module proxy into ~/.cache (built once per machine,
# ~3 min on 2 cores; later runs find them): helm (lint and render deploy/helm) and the
# compose-spec JSON schema shipped in the compose-go module (validates docker-compose.yml).
TOOLS ?= $(HOME)/.cache/cdc-pipeline/bin
HELM_VERSION := v3.21.4
COMPOSE_GO_VERSION := v2.16.2
tools: $(TOOLS)/helm $(TOOLS)/compose-spec.json

$(TOOLS)/helm:
	@mkdir -p $(TOOLS)
	GOBIN=$(TOOLS) GOFLAGS=-buildvcs=false go install helm.sh/helm/v3/cmd/helm@$(HELM_VERSION)

$(TOOLS)/compose-spec.json:
	@mkdir -p $(TOOLS)
	cp "$$(go mod download -json github.com/compose-spec/compose-go/v2@$(COMPOSE_GO_VERSION) \
	  | $(PYTHON) -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')/schema/compose-spec.json" $@

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
