#!/usr/bin/env bash
# Installs what the demo and the tests need from the distribution, if missing:
# PostgreSQL server binaries (initdb, pg_ctl, psql). Safe to run again.
set -euo pipefail

have_pg() {
  [ -n "${HELIOS_PG_BIN:-}" ] && [ -x "$HELIOS_PG_BIN/initdb" ] && return 0
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1
}

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

if ! have_pg; then
  echo "installing PostgreSQL server binaries (postgresql)" >&2
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq postgresql >/dev/null
fi
# The clusters run as the `postgres` system user when we are root; the package creates it.
if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
  echo "the postgres system user is missing; reinstall the postgresql package" >&2
  exit 1
fi
