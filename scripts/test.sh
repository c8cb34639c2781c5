#!/usr/bin/env bash
# Lint, type-check and run the test suite (assumes scripts/setup.sh has run).
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check src tests benchmarks
.venv/bin/ruff format --check src tests benchmarks
.venv/bin/mypy src
.venv/bin/python -m pytest -q -rs --durations=15 "$@"
