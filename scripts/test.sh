#!/usr/bin/env bash
# Runs every test: unit and property tests, and the integration tests against real
# PostgreSQL clusters the harness starts on free ports.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
export HELIOS_PYTHON="${HELIOS_PY_VENV:-$HOME/.cache/helios-repl/pyenv}/bin/python"
export HELIOS_PROMETHEUS_DIR="${HELIOS_PROMETHEUS_DIR:-$HOME/.cache/helios-repl/prometheus}"
cargo test --locked
