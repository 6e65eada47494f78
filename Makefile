# st-workflow: the two commands a newcomer runs are `make demo` and `make test`; both set themselves up.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
INSTALL_HASH := $(shell cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
STAMP := $(VENV)/.installed-$(INSTALL_HASH)

# Keep all state inside the project and run offline by default (explicit environment values win).
export PREFECT_HOME ?= $(CURDIR)/.prefect
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 120
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
export WANDB_SILENT ?= true

.PHONY: install demo test test-fast lint format server clean help

help:
	@echo "make demo    - install (once) and run the whole pipeline on the embedded demo config"
	@echo "make test    - install (once) and run the test suite"
	@echo "make lint    - ruff"
	@echo "make server  - start a Prefect server with the UI at http://127.0.0.1:4200"

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# constraints.txt pins every resolved version (torch 2.13.0 CPU, openai 3.3.0, pydantic-ai-slim 2.38.0...).
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	@rm -f $(VENV)/.installed-*
	@touch $@

demo: install
	$(BIN)/st-workflow run configs/demo.yaml

test: install
	$(BIN)/python -m pytest

test-fast: install
	$(BIN)/python -m pytest -m "not slow"

lint: install
	$(BIN)/ruff check st_workflow tests benchmarks
	$(BIN)/ruff format --check st_workflow tests benchmarks

format: install
	$(BIN)/ruff check --fix st_workflow tests benchmarks
	$(BIN)/ruff format st_workflow tests benchmarks

server: install
	$(BIN)/prefect server start --host 127.0.0.1 --port 4200

clean:
	rm -rf runs .cache .pytest_cache .ruff_cache
