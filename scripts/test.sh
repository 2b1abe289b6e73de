#!/usr/bin/env bash
# Runs every test: unit and property tests, and the integration tests against real
# PostgreSQL clusters the harness starts on free ports.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
export HELIOS_PYTHON="${HELIOS_PY_VENV:-$HOME/.cache/helios-repl/pyenv}/bin/python"
cargo test --locked
