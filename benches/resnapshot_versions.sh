#!/bin/bash
# Times a re-snapshot's history-table SQL on 1M rows (6 columns, jsonb and timestamptz
# among them), with no row and with 1 % of the rows changed since the open versions:
# `old` closes every open version and opens one per row (before 2026-12-06), `new` is
# the statements `sinks::pg_apply::history::record_snapshot_versions` builds (copied here
# for this table: keep them in step). Prints seconds, history rows and the history
# table's size. Needs the distribution's PostgreSQL 15 (scripts/install-deps.sh) and
# root (the cluster runs as `postgres`). Usage: benches/resnapshot_versions.sh
set -e
B=/usr/lib/postgresql/15/bin
D=$(mktemp -d /tmp/resnap.XXXXXX)
chown postgres $D
su postgres -c "$B/initdb -D $D/data -A trust >/dev/null"
su postgres -c "$B/pg_ctl -D $D/data -o '-p ${PORT:-5499} -k $D -c shared_buffers=256MB -c synchronous_commit=off' -l $D/log start >/dev/null"
P="$B/psql -h $D -p ${PORT:-5499} -U postgres -q -X -v ON_ERROR_STOP=1"
setup() {
su postgres -c "$P" <<SQL
DROP TABLE IF EXISTS t, t_history;
CREATE TABLE t (tenant_id int NOT NULL, id int NOT NULL, price numeric, note text, doc jsonb, at timestamptz, PRIMARY KEY (tenant_id, id));
INSERT INTO t SELECT i % 50, i, i * 1.5, 'note ' || i, jsonb_build_object('k', i), '2026-01-01'::timestamptz + i * interval '1 s' FROM generate_series(1, 1000000) i;
CREATE TABLE t_history (tenant_id int, id int, price numeric, note text, doc jsonb, at timestamptz,
  valid_from timestamptz, valid_to timestamptz, system_from timestamptz, system_to timestamptz,
  system_from_lsn pg_lsn, system_to_lsn pg_lsn, op text, tombstone boolean NOT NULL DEFAULT false);
INSERT INTO t_history (tenant_id, id, price, note, doc, at, valid_from, system_from, system_from_lsn, op)
  SELECT tenant_id, id, price, note, doc, at, at, now(), '0/100', 'insert' FROM t;
UPDATE t SET price = price + 1 WHERE id % 100 = $1;
VACUUM ANALYZE t; VACUUM ANALYZE t_history;
SQL
}
old="UPDATE t_history SET system_to = now(), system_to_lsn = '0/200' WHERE system_to_lsn IS NULL;
INSERT INTO t_history (tenant_id, id, price, note, doc, at, valid_from, system_from, system_from_lsn, op)
  SELECT tenant_id, id, price, note, doc, at, at, now(), '0/200', 'insert' FROM t;"
same="h.tenant_id = s.tenant_id AND h.id = s.id AND (h.tenant_id::text, h.id::text, h.price::text, h.note::text, h.doc::text, h.at::text) IS NOT DISTINCT FROM (s.tenant_id::text, s.id::text, s.price::text, s.note::text, s.doc::text, s.at::text)"
new="UPDATE t_history AS h SET system_to = now(), system_to_lsn = '0/200' WHERE system_to_lsn IS NULL AND CASE WHEN tombstone THEN EXISTS (SELECT 1 FROM t AS s WHERE h.tenant_id = s.tenant_id AND h.id = s.id) ELSE NOT EXISTS (SELECT 1 FROM t AS s WHERE $same) END;
INSERT INTO t_history (tenant_id, id, price, note, doc, at, valid_from, system_from, system_from_lsn, op)
  SELECT tenant_id, id, price, note, doc, at, at, now(), '0/200', 'insert' FROM t AS s WHERE NOT EXISTS (SELECT 1 FROM t_history AS h WHERE h.system_to_lsn IS NULL AND NOT h.tombstone AND $same);"
for changed in none 1pct; do
  for variant in old new; do
    if [ $changed = none ]; then setup -1; else setup 7; fi
    sql=${!variant}
    s=$(date +%s.%N)
    su postgres -c "$P" <<<"$sql"
    e=$(date +%s.%N)
    rows=$(su postgres -c "$P -At -c 'SELECT count(*) FROM t_history'")
    size=$(su postgres -c "$P -At -c \"SELECT pg_size_pretty(pg_total_relation_size('t_history'))\"")
    printf "changed=%s variant=%s seconds=%.2f history_rows=%s size=%s\n" $changed $variant $(echo "$e - $s" | bc) $rows "$size"
  done
done
su postgres -c "$B/pg_ctl -D $D/data stop >/dev/null"
rm -rf $D
