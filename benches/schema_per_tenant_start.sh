#!/bin/bash
# Times a schema-per-tenant job's first start: SCHEMAS schemas tenant_1 … tenant_N, each
# with TABLES small tables (10 rows each, no tenant column), a job carrying every
# tenant (`tenant_*.*`, `tenant_from = "schema"`, include "all") to a PostgreSQL target.
# Prints the seconds from `run` to the log's `streaming` (patterns resolved, publication
# and slot made, every table snapshotted), then to a change of the last schema's table
# on the target; with ONBOARD=1, then the seconds until a new tenant schema's rows are on
# the target; with CHECK=1, first the seconds `check` takes; with ADDED=N, the timed start
# is one that adds the last N tenants to a job that carried the others (their tables
# loaded by a backfill). Needs the distribution's
# PostgreSQL 15 (scripts/install-deps.sh), root
# (the clusters run as `postgres`) and a built binary (BIN, default the debug one).
# Usage: SCHEMAS=500 TABLES=2 benches/schema_per_tenant_start.sh
set -e
SCHEMAS=${SCHEMAS:-500}
TABLES=${TABLES:-2}
BIN=${BIN:-${CARGO_TARGET_DIR:-target}/debug/helios-repl}
B=/usr/lib/postgresql/15/bin
D=$(mktemp -d /tmp/spt_start.XXXXXX)
chown postgres "$D"
trap 'su postgres -c "$B/pg_ctl -D $D/src -m fast stop" >/dev/null 2>&1; su postgres -c "$B/pg_ctl -D $D/dst -m fast stop" >/dev/null 2>&1; kill $REPL 2>/dev/null; rm -rf $D' EXIT
for c in src dst; do
  su postgres -c "$B/initdb -D $D/$c -A trust >/dev/null"
done
su postgres -c "$B/pg_ctl -D $D/src -o '-p 5481 -k $D -c wal_level=logical -c max_wal_senders=10 -c max_replication_slots=10 -c max_locks_per_transaction=1024 ${SRC_OPTS:-}' -l $D/src.log start >/dev/null"
su postgres -c "$B/pg_ctl -D $D/dst -o '-p 5482 -k $D -c max_locks_per_transaction=1024 ${DST_OPTS:-}' -l $D/dst.log start >/dev/null"
P="$B/psql -h $D -U postgres -q -X -v ON_ERROR_STOP=1"
su postgres -c "$P -p 5482 -c 'CREATE DATABASE replica'"
{
  for s in $(seq 1 "$SCHEMAS"); do
    echo "CREATE SCHEMA tenant_$s;"
    for t in $(seq 1 "$TABLES"); do
      echo "CREATE TABLE tenant_$s.t$t (id int PRIMARY KEY, v text);"
      echo "INSERT INTO tenant_$s.t$t SELECT i, 'v' || i FROM generate_series(1, 10) i;"
    done
  done
} | su postgres -c "$P -p 5481 -d postgres" >/dev/null
cat > "$D/job.toml" <<TOML
name = "spt-start"
[source]
dsn = "host=$D port=5481 user=postgres dbname=postgres"
publication = "pub_spt_start"
slot = "slot_spt_start"
[tenants]
include = "all"
[[tables]]
name = "tenant_*.*"
tenant_from = "schema"
[[sinks]]
kind = "postgres"
dsn = "host=$D port=5482 user=postgres dbname=replica"
TOML
if [ -n "${CHECK:-}" ]; then
  # `check` first: what it reads of every table, timed.
  before=$(date +%s.%N)
  "$BIN" check --job "$D/job.toml" > "$D/check.log" 2>&1 || { tail -20 "$D/check.log"; exit 1; }
  printf 'check of %d tables took %.1f s\n' "$((SCHEMAS * TABLES))" "$(echo "$(date +%s.%N) - $before" | bc)"
fi
# Runs the job until its log says `streaming`.
run_until_streaming() {
  HELIOS_LOG=info "$BIN" run --job "$D/job.toml" > "$D/repl.log" 2>&1 &
  REPL=$!
  until grep -q "streaming" "$D/repl.log"; do
    if ! kill -0 $REPL 2>/dev/null; then tail -20 "$D/repl.log"; exit 1; fi
    sleep 0.2
  done
}
if [ -n "${ADDED:-}" ]; then
  # A first run carries all but the last ADDED tenants and stops in order; the timed
  # start then carries every tenant, loading the added ones' tables (a backfill).
  sed -i "s/^include = .*/include = [$(seq -s ', ' 1 $((SCHEMAS - ADDED)))]/" "$D/job.toml"
  run_until_streaming
  kill -TERM $REPL
  wait $REPL || true
  sed -i 's/^include = .*/include = "all"/' "$D/job.toml"
fi
start=$(date +%s.%N)
run_until_streaming
streaming=$(date +%s.%N)
su postgres -c "$P -p 5481 -d postgres -c \"UPDATE tenant_$SCHEMAS.t1 SET v = 'changed' WHERE id = 1\""
until [ "$(su postgres -c "$P -p 5482 -d replica -At -c \"SELECT v FROM tenant_$SCHEMAS.t1 WHERE id = 1\"" 2>/dev/null)" = changed ]; do
  sleep 0.1
done
applied=$(date +%s.%N)
printf 'schemas %d, tables %d%s: streaming after %.1f s, a change applied %.2f s later\n' \
  "$SCHEMAS" "$((SCHEMAS * TABLES))" "${ADDED:+ (a start adding the last $ADDED tenants)}" \
  "$(echo "$streaming - $start" | bc)" "$(echo "$applied - $streaming" | bc)"
if [ -n "${ONBOARD:-}" ]; then
  # A new tenant's schema created while the job runs: the seconds until its tables' rows
  # are on the target (found by the job's watch, which restarts it to load them).
  new=$((SCHEMAS + 1))
  {
    echo "CREATE SCHEMA tenant_$new;"
    for t in $(seq 1 "$TABLES"); do
      echo "CREATE TABLE tenant_$new.t$t (id int PRIMARY KEY, v text);"
      echo "INSERT INTO tenant_$new.t$t SELECT i, 'v' || i FROM generate_series(1, 10) i;"
    done
  } | su postgres -c "$P -p 5481 -d postgres" >/dev/null
  created=$(date +%s.%N)
  until [ "$(su postgres -c "$P -p 5482 -d replica -At -c \"SELECT count(*) FROM tenant_$new.t$TABLES\"" 2>/dev/null)" = 10 ]; do
    sleep 0.1
  done
  onboarded=$(date +%s.%N)
  printf 'a new tenant schema of %d tables on the target %.1f s after it was created\n' \
    "$TABLES" "$(echo "$onboarded - $created" | bc)"
fi
[ -n "${LOG:-}" ] && cp "$D/repl.log" "$LOG" && cp "$D/src.log" "$LOG.src" && cp "$D/dst.log" "$LOG.dst"
true
