# stigmer-kernel developer tasks. `make help` lists them.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.DEFAULT_GOAL := help
.PHONY: help install run test test-image lint format bench server stop clean

help: ## List every target with what it does
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | \
	  awk 'BEGIN {FS = ":.*## "}; {printf "  make %-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP) ## Create .venv and install stigmer-kernel with its dev tools
	@echo "installed: $(BIN)/stigmer ($$($(BIN)/stigmer --version))"

run: install ## Set up, then run commands through a local kernel (starts a server if none runs)
	$(BIN)/python examples/quickstart.py

test: install test-image ## Set up (venv, Docker engine, offline test image), run every test
	$(BIN)/pytest

test-image: ## Start a Docker engine and build the offline sandbox test image (needs root)
	@if bash scripts/provision-docker.sh && bash scripts/build-test-image.sh; then :; \
	elif [ -n "$$CI" ]; then echo "CI needs the Docker engine and the test image" >&2; exit 1; \
	else echo "warning: no Docker engine here: the sandbox tests will be skipped" >&2; fi

lint: install ## ruff (lint + format check) and mypy --strict, as CI runs them
	PATH="$(abspath $(BIN)):$$PATH" bash scripts/lint.sh

format: install ## Rewrite code with ruff's formatter and safe fixes
	$(BIN)/ruff format stigmer_kernel tests examples scripts
	$(BIN)/ruff check --fix stigmer_kernel tests examples scripts

bench: install test-image ## Latency: native vs subprocess, Jupyter vs bash_kernel, sandbox vs docker exec
	$(BIN)/python scripts/bench_roundtrip.py
	$(BIN)/python scripts/bench_jupyter.py
	$(BIN)/python scripts/bench_sandbox.py

server: install ## Start a server in the background (stigmer server start)
	$(BIN)/stigmer server start

stop: install ## Stop the background server and its kernels
	$(BIN)/stigmer server stop

clean: ## Remove the virtualenv and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
