#!/usr/bin/env bash
# The one lint entry point shared by developers (`make lint`) and CI.
set -euo pipefail
cd "$(dirname "$0")/.."
ruff check stigmer_kernel tests examples scripts
ruff format --check stigmer_kernel tests examples scripts
mypy
