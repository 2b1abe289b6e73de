#!/usr/bin/env bash
# The embedded default: throwaway source and target clusters, a multi-tenant workload
# replicated for 5 of 24 tenants, verification and a summary.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo run --locked --bin helios-repl -- demo "$@"
