# stigmer-kernel developer tasks. `make help` lists them.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.DEFAULT_GOAL := help
.PHONY: load help install run test test-image test-local-mode test-sandbox-mode lint format bench \
	server stop clean sandbox-build-basic sandbox-build-full sandbox-test sandbox-clean dev-full

# Base image of the sandbox tiers. Empty: python:3.11-slim (the Dockerfiles' default). Where no
# registry is reachable and the offline test image exists, that image is used instead.
SANDBOX_BASE_IMAGE ?= $(shell docker image inspect python:3.11-slim >/dev/null 2>&1 || \
	{ docker image inspect stigmer-test-base:bookworm >/dev/null 2>&1 && \
	  echo stigmer-test-base:bookworm; })
SANDBOX_BASIC_IMAGE ?= ghcr.io/stigmer/agent-sandbox-basic:latest
SANDBOX_FULL_IMAGE ?= stigmer-sandbox-full:latest
BASE_FLAG = $(if $(SANDBOX_BASE_IMAGE),--base-image $(SANDBOX_BASE_IMAGE))

help: ## List every target with what it does
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | \
	  awk 'BEGIN {FS = ":.*## "}; {printf "  make %-20s %s\n", $$1, $$2}'

# Editable in compat mode: a plain path in a .pth, where the default mode imports a finder module
# at every interpreter start (25-60 ms of each `stigmer run`); a new module is seen without a
# reinstall (strict mode needs one). Byte-compiled once, so that a process started with
# PYTHONDONTWRITEBYTECODE does not compile the package each time (a source edited since is
# compiled again by the interpreter, as always).
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]' --config-settings editable_mode=compat
	$(BIN)/python -m compileall -q stigmer_kernel
	@touch $(STAMP)

install: $(STAMP) ## Create .venv and install stigmer-kernel with its dev tools
	@echo "installed: $(BIN)/stigmer ($$($(BIN)/stigmer --version))"

run: install ## Set up, then run commands through a local kernel (starts a server if none runs)
	$(BIN)/python examples/quickstart.py

test: install test-image ## Set up (venv, Docker engine, offline test image), run every test
	$(BIN)/pytest

test-local-mode: install ## Run the tests that need no Docker engine
	$(BIN)/pytest --ignore=tests/sandbox

test-sandbox-mode: install test-image ## Run the sandbox and auto-mode tests (real Docker engine)
	$(BIN)/pytest tests/sandbox

sandbox-build-basic: install ## Build the basic sandbox tier (Python, Node.js LTS, git; ~390 MB here, see sandbox/README.md)
	$(BIN)/stigmer sandbox build basic --tag $(SANDBOX_BASIC_IMAGE) $(BASE_FLAG)

sandbox-build-full: install ## Build the full reference tier (cloud CLIs, kubectl, terraform...)
	$(BIN)/stigmer sandbox build full --tag $(SANDBOX_FULL_IMAGE) $(BASE_FLAG)

sandbox-test: install ## Check python, node and git in the basic tier image
	$(BIN)/stigmer sandbox test $(SANDBOX_BASIC_IMAGE)

sandbox-clean: install ## Remove stigmer's sandbox images and dead servers' containers
	$(BIN)/stigmer sandbox clean

dev-full: install test-image sandbox-build-basic ## Everything for development: venv, engine, images, kernelspecs
	$(BIN)/stigmer kernelspec install --sys-prefix --mode local
	$(BIN)/stigmer kernelspec install --sys-prefix --mode sandbox
	$(BIN)/stigmer kernelspec install --sys-prefix --mode auto

test-image: ## Start a Docker engine and build the offline sandbox test image (needs root)
	@bash scripts/provision-test-deps.sh || { [ -z "$$CI" ] || exit 1; }
	@if bash scripts/provision-docker.sh && bash scripts/build-test-image.sh; then :; \
	elif [ -n "$$CI" ]; then echo "CI needs the Docker engine and the test image" >&2; exit 1; \
	else echo "warning: no Docker engine here: the sandbox tests will be skipped" >&2; fi

lint: install ## ruff (lint + format check) and mypy --strict, as CI runs them
	PATH="$(abspath $(BIN)):$$PATH" bash scripts/lint.sh

format: install ## Rewrite code with ruff's formatter and safe fixes
	$(BIN)/ruff format stigmer_kernel tests examples scripts
	$(BIN)/ruff check --fix stigmer_kernel tests examples scripts

bench: install test-image ## Every benchmark of issue 17's targets (round trip, CLI, streaming, sandbox, load), one table and docs/performance.png
	@# Bytecode of what was edited since the install: a process started with
	@# PYTHONDONTWRITEBYTECODE would compile it at each start (~2 ms a module for stigmer run).
	$(BIN)/python -m compileall -q stigmer_kernel
	$(BIN)/python scripts/bench.py

load: install test-image ## Load: 50 clients x 200 commands for 60 s (p99, commands/s targets), then 200 kernels alive at once
	$(BIN)/python scripts/load.py

server: install ## Start a server in the background (stigmer server start)
	$(BIN)/stigmer server start

stop: install ## Stop the background server and its kernels
	$(BIN)/stigmer server stop

clean: ## Remove the virtualenv and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
