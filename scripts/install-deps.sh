#!/usr/bin/env bash
# Installs what the demo and the tests need from the distribution, if missing:
# PostgreSQL server binaries (initdb, pg_ctl, psql), a de_DE.UTF-8 locale, nats-server,
# pyarrow, and Prometheus with promtool. Safe to run again.
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

# pyarrow, the "other tool" the cold-tier test reads Parquet files with, in a virtualenv
# of its own (the tests find its interpreter through HELIOS_PYTHON, which test.sh sets).
PY_VENV="${HELIOS_PY_VENV:-$HOME/.cache/helios-repl/pyenv}"
if ! "$PY_VENV/bin/python" -c "import pyarrow.dataset" >/dev/null 2>&1; then
  echo "installing pyarrow into $PY_VENV" >&2
  python3 -m venv "$PY_VENV"
  "$PY_VENV/bin/python" -m pip install --quiet --disable-pip-version-check "pyarrow==18.1.0"
fi

# A locale whose money format differs from C's, for the test that sets the source's
# lc_monetary (the server checks a locale exists when it is set).
if ! locale -a 2>/dev/null | grep -qi '^de_DE\.utf-\?8$'; then
  echo "installing the de_DE.UTF-8 locale" >&2
  if ! [ -f /usr/share/i18n/locales/de_DE ]; then
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq locales >/dev/null
  fi
  as_root localedef -i de_DE -f UTF-8 de_DE.UTF-8
fi

# nats-server, for the access-event subscription test (and the NATS sink).
if ! command -v nats-server >/dev/null 2>&1; then
  echo "installing nats-server" >&2
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq nats-server >/dev/null
fi

# prometheus and promtool, for the tests of the alert rules (schemas/prometheus-alerts.yml):
# the two binaries taken out of Debian's package into a directory of our own (installing
# the package would also set up and start a Prometheus service). The tests find them
# through HELIOS_PROMETHEUS_DIR, which test.sh sets.
PROM_DIR="${HELIOS_PROMETHEUS_DIR:-$HOME/.cache/helios-repl/prometheus}"
if ! [ -x "$PROM_DIR/prometheus" ] || ! [ -x "$PROM_DIR/promtool" ]; then
  echo "installing prometheus and promtool into $PROM_DIR" >&2
  deb_dir="$(mktemp -d)"
  if ! (cd "$deb_dir" && apt-get download prometheus >/dev/null 2>&1); then
    as_root apt-get update -qq
    (cd "$deb_dir" && apt-get download prometheus >/dev/null 2>&1)
  fi
  dpkg-deb -x "$deb_dir"/prometheus_*.deb "$deb_dir/root"
  mkdir -p "$PROM_DIR"
  cp "$deb_dir/root/usr/bin/prometheus" "$deb_dir/root/usr/bin/promtool" "$PROM_DIR/"
  rm -rf "$deb_dir"
fi
